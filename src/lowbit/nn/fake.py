"""Fake-quantized Linear / Conv layers: float arithmetic on quantized values.

They serve calibration (while the input quantizer calibrates, the layer is
exactly the float layer), simulation (the float reference an integer layer is
checked against) and quantization-aware training (gradients by the clipped STE).
They share the float layer's parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QuantSpec


class _FakeQuantMixin:
    weight_quantizer: nn.Module  # nn/weight_quantizer.py
    input_quantizer: nn.Module  # nn/quantizer.py

    @property
    def weight_spec(self) -> QuantSpec:
        """The integer weight spec (integer schemes)."""
        return self.weight_quantizer.spec

    def fake_weight(self) -> torch.Tensor:
        """The weight on its quantization grid, recomputed from the current weight."""
        return self.weight_quantizer(self.weight)

    def _quantized_operands(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.input_quantizer(x)
        return x, self.weight if self.input_quantizer.calibrating else self.fake_weight()

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, weight={self.weight_quantizer.describe()}"


class FakeQuantLinear(_FakeQuantMixin, nn.Linear):
    def forward(self, x):
        x, w = self._quantized_operands(x)
        return F.linear(x, w, self.bias)


class FakeQuantConv1d(_FakeQuantMixin, nn.Conv1d):
    def forward(self, x):
        x, w = self._quantized_operands(x)
        return self._conv_forward(x, w, self.bias)


class FakeQuantConv2d(_FakeQuantMixin, nn.Conv2d):
    def forward(self, x):
        x, w = self._quantized_operands(x)
        return self._conv_forward(x, w, self.bias)


_FAKE_FOR = {nn.Linear: FakeQuantLinear, nn.Conv1d: FakeQuantConv1d, nn.Conv2d: FakeQuantConv2d}


def fake_quant_layer(module: nn.Module, weight_quantizer: nn.Module, input_quantizer: nn.Module) -> nn.Module:
    """A fake-quantized twin of a float Linear/Conv1d/Conv2d that shares its parameters."""
    base = next(b for b in _FAKE_FOR if isinstance(module, b))
    cls = _FAKE_FOR[base]
    if base is nn.Linear:
        new = cls(module.in_features, module.out_features, bias=module.bias is not None, device="meta")
    else:
        new = cls(module.in_channels, module.out_channels, module.kernel_size, module.stride, module.padding,
                  module.dilation, module.groups, module.bias is not None, module.padding_mode, device="meta")
    new.weight = module.weight
    new.bias = module.bias
    new.train(module.training)
    new.weight_quantizer = weight_quantizer
    new.input_quantizer = input_quantizer
    return new
