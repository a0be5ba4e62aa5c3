"""Kernels: reference.py (exact integer semantics, any device) and triton/ (NVIDIA GPUs)."""

import functools
import importlib.util


def rows_16_byte_aligned(t) -> bool:
    """Rows of unit stride that start on 16-byte boundaries, as the GPU kernels' 16-byte loads (and TMA
    descriptors) need."""
    return t.stride(-1) == 1 and t.stride(0) * t.element_size() % 16 == 0 and t.data_ptr() % 16 == 0


@functools.cache
def triton_available() -> bool:
    """Whether Triton can be imported (it ships with CUDA builds of PyTorch)."""
    return importlib.util.find_spec("triton") is not None
