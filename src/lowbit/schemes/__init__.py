"""Quantization schemes, one module each, registered by name."""

from . import bitserial, int4, int8, mixed  # noqa: F401  (register the schemes)
from .base import SCHEMES, Scheme, get_scheme, register_scheme

__all__ = ["SCHEMES", "Scheme", "get_scheme", "register_scheme"]
