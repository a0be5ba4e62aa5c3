"""Quantization schemes, one module each, registered by name."""

from . import int8  # noqa: F401  (registers the scheme)
from .base import SCHEMES, Scheme, get_scheme, register_scheme

__all__ = ["SCHEMES", "Scheme", "get_scheme", "register_scheme"]
