"""Triton kernels for NVIDIA GPUs (imported only where CUDA and Triton are present)."""

from .conv import conv_weight_nhwc, int8_conv2d
from .gemm import float_gemm, int8_gemm
from .lstm import lstm_cell, lstm_cell_fits
from .pool import int8_max_pool2d
from .quantize import quantize_int8

__all__ = ["conv_weight_nhwc", "int8_conv2d", "float_gemm", "int8_gemm", "int8_max_pool2d", "lstm_cell",
           "lstm_cell_fits", "quantize_int8"]
