"""Models defined in the project."""

from .default import default_model
from .small_resnet import SmallResNet

__all__ = ["SmallResNet", "default_model"]
