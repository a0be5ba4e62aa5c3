"""Kernels: reference.py (exact integer semantics, any device) and triton/ (NVIDIA GPUs)."""

import functools
import importlib.util


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it ships with CUDA builds of PyTorch)."""
    return importlib.util.find_spec("triton") is not None
