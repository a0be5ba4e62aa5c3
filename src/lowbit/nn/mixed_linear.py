"""Deployed Linear layers whose arithmetic is floating point: INT4-group weights with bf16 activations
(W4A16), INT4-group weights turned into FP8 with FP8 activations (W4A8), and FP8 weights with FP8
activations (FP8). Their forward is the reference the GPU kernels must match:

  W4A16: w = bf16((c - z) * s);                 y = bf16(x) @ w^T + bias
  W4A8:  w = e4m3((c - z) * s);  xq = e4m3(x * (1 / sx));  y = (xq @ w^T) * (sx * s8) + bias
  FP8:   w = e4m3 codes;         xq as W4A8;               y = (xq @ w^T) * (sx * sw[n]) + bias

with float32 accumulation. The products of FP8 (or bf16) values are exact in float32, so a kernel and
this reference differ only by the order of the float32 sums. ``sx`` is the calibrated per-tensor scale,
or with ``activation="dynamic"`` each row's own max / 448, taken at run time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..numerics import fp8_activation_grid, fp8_format, pack_int4, per_token_fp8_scale, unpack_int4
from ..numerics.fp8 import e4m3_grid
from ..numerics.groupwise import dequantize_groups, num_groups
from .geometry import LayerGeometry
from .registry import register_layer

ACTIVATION_MODES = ("static", "dynamic")


class _CodedLinear(nn.Module):
    """Geometry, options, bias and the checkpoint description shared by these layers (and the bit-serial
    one); the FP8 input for those with an activation mode."""

    layer_type: str

    def __init__(self, geometry: LayerGeometry, options: dict, info: dict | None = None):
        super().__init__()
        if geometry.kind != "linear":
            raise ValueError(f"{type(self).__name__} is a Linear layer, got a {geometry.kind}")
        self.geometry = geometry
        self.options = dict(options)
        self.info = dict(info or {})
        self.register_buffer("bias", torch.zeros(geometry.out_channels) if geometry.bias else None)

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias.float()

    def _fp8_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(FP8 values of x as float32, their scale: per tensor, or [..., 1] per token)."""
        scale = per_token_fp8_scale(x) if self.options["activation"] == "dynamic" else self.input_scale
        return fp8_activation_grid(x, scale, name=f"{self.layer_type} input"), scale

    def describe(self) -> dict:
        return {"type": self.layer_type, "geometry": self.geometry.to_dict(), "options": self.options, **self.info}

    @classmethod
    def from_description(cls, desc: dict):
        info = {k: v for k, v in desc.items() if k not in ("type", "geometry", "options")}
        return cls(LayerGeometry.from_dict(desc["geometry"]), desc["options"], info)

    def extra_repr(self) -> str:
        g = self.geometry
        return f"{g.in_channels}->{g.out_channels}, " + ", ".join(f"{k}={v}" for k, v in self.options.items())


class Int4GroupLinear(_CodedLinear):
    """INT4 codes (uint8, two per byte along K), float16 scales and uint8 zero points per group.
    ``options``: group_size (K for per channel), symmetric."""

    def __init__(self, geometry: LayerGeometry, options: dict, info: dict | None = None):
        super().__init__(geometry, options, info)
        n, k = geometry.out_channels, geometry.in_channels
        groups = num_groups(k, options["group_size"])
        self.register_buffer("qweight", torch.zeros(n, (k + 1) // 2, dtype=torch.uint8))
        self.register_buffer("group_scale", torch.ones(n, groups, dtype=torch.float16))
        self.register_buffer("group_zero", torch.zeros(n, groups, dtype=torch.uint8))

    def set_codes(self, codes) -> None:
        """Store an :class:`~lowbit.nn.weight_quantizer.Int4GroupCodes`."""
        self.qweight.copy_(pack_int4(codes.codes, signed=False))
        self.group_scale.copy_(codes.scale.to(torch.float16))
        self.group_zero.copy_(codes.zero)

    def weight_codes(self) -> torch.Tensor:
        return unpack_int4(self.qweight, self.geometry.in_channels, signed=False)

    def group_values(self) -> torch.Tensor:
        """(c - z) * s, float32 [N, K] (exact)."""
        return dequantize_groups(self.weight_codes(), self.group_scale.float(), self.group_zero,
                                 self.options["group_size"])


@register_layer
class W4A16Linear(Int4GroupLinear):
    layer_type = "w4a16"

    def weight_values(self) -> torch.Tensor:
        return self.group_values().to(torch.bfloat16).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xb = x.to(torch.bfloat16).float()
        return self._add_bias(F.linear(xb, self.weight_values())).to(x.dtype)


@register_layer
class W4A8Linear(Int4GroupLinear):
    """``options`` add activation ("static" or "dynamic"); ``weight_scale`` is the protective s8."""

    layer_type = "w4a8"

    def __init__(self, geometry: LayerGeometry, options: dict, info: dict | None = None):
        super().__init__(geometry, options, info)
        self.register_buffer("weight_scale", torch.ones(()))
        self.register_buffer("input_scale", torch.ones(()))

    def set_codes(self, codes) -> None:
        super().set_codes(codes)
        self.weight_scale.copy_(codes.tensor_scale)

    def weight_values(self) -> torch.Tensor:
        """The FP8 weight, e4m3((c - z) * s), as float32 (without s8)."""
        return e4m3_grid(self.group_values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, sx = self._fp8_input(x)
        y = F.linear(xq, self.weight_values()) * (sx * self.weight_scale)
        return self._add_bias(y).to(x.dtype)


@register_layer
class FP8Linear(_CodedLinear):
    """E4M3 weights with a float32 scale per output channel. ``options``: activation."""

    layer_type = "fp8"

    def __init__(self, geometry: LayerGeometry, options: dict, info: dict | None = None):
        super().__init__(geometry, options, info)
        n, k = geometry.out_channels, geometry.in_channels
        self.register_buffer("qweight", torch.zeros(n, k, dtype=fp8_format("e4m3").dtype))
        self.register_buffer("weight_scale", torch.ones(n))
        self.register_buffer("input_scale", torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xq, sx = self._fp8_input(x)
        y = F.linear(xq, self.qweight.float()) * (sx * self.weight_scale)
        return self._add_bias(y).to(x.dtype)
