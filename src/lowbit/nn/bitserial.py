"""Bit-serial Linear layers (PrecisionBatching, design.md 2.4) and the live bitlayer knob.

A layer stores its n-bit weights as n bitlayers (lowbit.numerics.bitlayers) and uses the k most
significant of them, k set at run time by :func:`set_bitlayers` (no re-quantization, no copy). Its
arithmetic, which the GPU kernel reproduces exactly:

  xq[m, :]  = clamp(round(x / sx), qmin, qmax)       fixed point, act_bits (signed, or unsigned when
                                                     calibration saw no negative input); values
                                                     outside the range saturate and are counted
  acc[m, n] = sum_K xq[m, K] * Wk[n, K]              exact integers; Wk = 2^(N-k) * (k-bit odd codes)
  y[m, n]   = float32(acc) * (sx * sw[n]) + bias[n]  float32, in this order

The kernel forms ``acc`` from popcounts of ANDed bitplanes (kernels/reference.py:bitserial_acc states
it literally); here, on the CPU, the same integers come from one exact matmul.
"""

from __future__ import annotations

import fnmatch
import warnings

import torch
from torch import nn

from ..config import IntFormat
from ..errors import ConfigError
from ..kernels.reference import integer_matmul, rescale
from ..numerics.bitlayers import bitlayer_values, check_active, to_bitlayers
from .geometry import LayerGeometry
from .registry import quantized_layers, register_layer


@register_layer
class BitSerialLinear(nn.Module):
    """``bitlayers`` int32 [n, out, ceil(in/32)] (the stored planes), ``weight_scale`` float32 [out],
    ``input_scale`` float32 [], ``bias``. ``options``: weight_bits, act_bits, act_signed."""

    layer_type = "bitserial"

    def __init__(self, geometry: LayerGeometry, options: dict, info: dict | None = None):
        super().__init__()
        if geometry.kind != "linear":
            raise ValueError(f"BitSerialLinear is a Linear layer, got a {geometry.kind}")
        self.geometry = geometry
        self.options = dict(options)
        self.info = dict(info or {})
        n, out, k = options["weight_bits"], geometry.out_channels, geometry.in_channels
        self.input_format = IntFormat(options["act_bits"], signed=options["act_signed"])
        self.register_buffer("bitlayers", torch.zeros(n, out, (k + 31) // 32, dtype=torch.int32))
        self.register_buffer("weight_scale", torch.ones(out))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("bias", torch.zeros(out) if geometry.bias else None)
        self.active = self.info.pop("active_bitlayers", n)
        self.saturated = 0  # inputs clamped to the fixed-point range since the layer was built
        self._warned = False

    @property
    def name(self) -> str:
        return self.info.get("name", "bitserial layer")

    @property
    def stored_bitlayers(self) -> int:
        return self.bitlayers.shape[0]

    def set_bitlayers(self, k: int) -> None:
        """Use the ``k`` most significant stored bitlayers from now on."""
        self.active = check_active(k, self.stored_bitlayers, f"layer {self.name!r}")

    def set_codes(self, u: torch.Tensor, scale: torch.Tensor) -> None:
        """Store unsigned odd-grid codes u [out, in] and their row scales."""
        self.bitlayers.copy_(to_bitlayers(u, self.stored_bitlayers))
        self.weight_scale.copy_(scale)

    def weight_values(self) -> torch.Tensor:
        """The integer weights [out, in] the active bitlayers represent (int32; times weight_scale)."""
        return bitlayer_values(self.bitlayers, self.geometry.in_channels, self.active)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Fixed-point codes of x (int32), counting (and warning once about) values that saturate."""
        fmt = self.input_format
        q = torch.round(x.float() / self.input_scale)
        over = int(((q < fmt.qmin) | (q > fmt.qmax)).sum())
        if over:
            self._count_saturated(over, x.numel())
        return torch.clamp(q, fmt.qmin, fmt.qmax).to(torch.int32)

    def _count_saturated(self, over: int, total: int) -> None:
        self.saturated += over
        if not self._warned:
            self._warned = True
            fmt = self.input_format
            warnings.warn(f"layer {self.name!r}: {over} of {total} input values fall outside the "
                          f"{fmt.bits}-bit fixed-point range [{fmt.qmin}, {fmt.qmax}] x scale "
                          f"{float(self.input_scale):.4g} and saturate (counted in .saturated; warned once)",
                          stacklevel=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k_in = self.geometry.in_channels
        if x.shape[-1] != k_in:
            raise ValueError(f"layer {self.name!r} expects inputs of {k_in} features, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        xq = self.quantize_input(x.reshape(-1, k_in))
        n = self.stored_bitlayers
        w_bound = ((1 << self.active) - 1) << (n - self.active)
        x_bound = max(-self.input_format.qmin, self.input_format.qmax)
        acc = integer_matmul(xq, self.weight_values().t(), x_bound, w_bound)
        y = rescale(acc, self.input_scale, self.weight_scale, self.bias, channel_dim=1)
        return y.reshape(*lead, -1)

    def describe(self) -> dict:
        return {"type": self.layer_type, "geometry": self.geometry.to_dict(), "options": self.options,
                **self.info, "active_bitlayers": self.active}

    @classmethod
    def from_description(cls, desc: dict):
        info = {k: v for k, v in desc.items() if k not in ("type", "geometry", "options")}
        return cls(LayerGeometry.from_dict(desc["geometry"]), desc["options"], info)

    def extra_repr(self) -> str:
        g, o = self.geometry, self.options
        return (f"{g.in_channels}->{g.out_channels}, bitlayers={self.active}/{self.stored_bitlayers}, "
                f"act={self.input_format}")


def bitserial_layers(model: nn.Module) -> dict[str, BitSerialLinear]:
    return {name: m for name, m in quantized_layers(model) if isinstance(m, BitSerialLinear)}


def set_bitlayers(model: nn.Module, k) -> dict[str, int]:
    """Use the k most significant stored bitlayers in the bit-serial layers of ``model``: ``k`` an int
    (every layer) or a dict of layer-name patterns (fnmatch) to ints, the first matching pattern
    winning (layers no pattern matches keep their setting). Returns each layer's setting. Nothing is
    re-quantized or copied; a k above what a layer stores is an error and changes nothing."""
    layers = bitserial_layers(model)
    if not layers:
        raise ConfigError("the model has no bit-serial layers: quantize it with the 'bitserial' scheme first")
    if isinstance(k, dict):
        for pattern in k:
            if not any(fnmatch.fnmatchcase(name, pattern) for name in layers):
                raise ConfigError(f"bitlayer pattern {pattern!r} matches no bit-serial layer; layers: "
                                  f"{', '.join(layers)}")
        chosen = {}
        for name in layers:
            pattern = next((p for p in k if fnmatch.fnmatchcase(name, p)), None)
            if pattern is not None:
                chosen[name] = k[pattern]
    else:
        chosen = dict.fromkeys(layers, k)
    for name, value in chosen.items():  # validate all before changing any
        check_active(value, layers[name].stored_bitlayers, f"layer {name!r}")
    for name, value in chosen.items():
        layers[name].set_bitlayers(value)
    return {name: m.active for name, m in layers.items()}
