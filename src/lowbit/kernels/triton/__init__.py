"""Triton kernels for NVIDIA GPUs (imported only where CUDA and Triton are present)."""

from .gemm import int8_gemm
from .quantize import quantize_int8

__all__ = ["int8_gemm", "quantize_int8"]
