"""Quantization arithmetic: integer formats, FP8 casts, bit packing."""

from .fp8 import (FP8_FORMATS, fake_fp8, fp8_activation_grid, fp8_format, fp8_scale, from_fp8, per_token_fp8_scale,
                  to_fp8)
from .intquant import (count_nan, dequantize, fake_quantize, qparams_for, qparams_from_amax, qparams_from_range,
                       quantize, tensor_range)
from .packing import pack_bitplanes, pack_int4, unpack_bitplanes, unpack_int4

__all__ = [
    "FP8_FORMATS", "fake_fp8", "fp8_activation_grid", "fp8_format", "per_token_fp8_scale", "fp8_scale", "from_fp8", "to_fp8",
    "count_nan", "dequantize", "fake_quantize", "qparams_for", "qparams_from_amax", "qparams_from_range",
    "quantize", "tensor_range", "pack_bitplanes", "pack_int4", "unpack_bitplanes", "unpack_int4",
]
