"""Models defined in the project."""

from .default import default_model
from .resnet import ResNet, resnet50
from .small_resnet import SmallResNet

__all__ = ["ResNet", "SmallResNet", "default_model", "resnet50"]
