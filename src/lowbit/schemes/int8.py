"""INT8 post-training quantization, TensorRT style (design.md 2.1).

Weights: symmetric per output channel, amax = max|w|, narrow range [-127, 127].
Activations: per tensor, range from a calibrator; symmetric int8 by default,
unsigned after a ReLU with ``act_unsigned="auto"``, or TF-style asymmetric uint8
with a zero point (``act_symmetric=False``). Other bit widths (1..16) per layer
through overrides, e.g. ``overrides={"fc": {"weight_bits": 6}}``.
"""

from __future__ import annotations

from torch import nn

from ..config import IntFormat, QuantSpec, check_bits
from ..errors import ConfigError
from ..nn import ActivationQuantizer, IntegerLayer, fake_quant_layer
from ..nn.weight_quantizer import IntWeightQuantizer
from .base import Scheme, register_scheme


@register_scheme
class Int8Scheme(Scheme):
    name = "int8"
    summary = "W8A8: per-channel int8 weights, per-tensor calibrated int8 activations, int32 accumulation"
    defaults = {"weight_bits": 8, "act_bits": 8, "per_channel": True, "act_symmetric": True, "act_unsigned": False}

    def validate(self) -> None:
        o = self.options
        check_bits(o["weight_bits"], "weight_bits")
        check_bits(o["act_bits"], "act_bits")
        if o["weight_bits"] < 2:
            raise ConfigError(f"weight_bits=1 is invalid for {self.name}: symmetric signed weights need at least "
                              "2 bits")
        for key in ("per_channel", "act_symmetric"):
            if not isinstance(o[key], bool):
                raise ConfigError(f"{key}={o[key]!r} is invalid: expected True or False")
        if o["act_unsigned"] not in (True, False, "auto"):
            raise ConfigError(f"act_unsigned={o['act_unsigned']!r} is invalid: expected True, False or 'auto'")
        if o["act_symmetric"] and o["act_unsigned"] is False and o["act_bits"] < 2:
            raise ConfigError("act_bits=1 needs act_unsigned=True or act_symmetric=False")

    def weight_spec(self) -> QuantSpec:
        o = self.options
        return QuantSpec(IntFormat(o["weight_bits"]), granularity="channel" if o["per_channel"] else "tensor", axis=0)

    def input_spec(self) -> QuantSpec:
        o = self.options
        if o["act_symmetric"]:
            return QuantSpec(IntFormat(o["act_bits"], signed=o["act_unsigned"] is not True))
        return QuantSpec(IntFormat(o["act_bits"], signed=False), symmetric=False)

    def prepare(self, module: nn.Module, name: str, calibrator: str, calibrator_options: dict) -> nn.Module:
        o = self.options
        quantizer = ActivationQuantizer(self.input_spec(), calibrator, calibrator_options,
                                        unsigned=o["act_unsigned"] if o["act_symmetric"] else False,
                                        name=f"layer {name!r} input")
        return fake_quant_layer(module, IntWeightQuantizer(self.weight_spec()), quantizer)

    def convert(self, prepared: nn.Module, name: str) -> nn.Module:
        return IntegerLayer.from_fake(prepared, {"scheme": self.name, "name": name,
                                                "calibrator": prepared.input_quantizer.calibrator})
