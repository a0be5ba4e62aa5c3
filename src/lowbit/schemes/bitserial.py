"""Bit-serial PrecisionBatching (design.md 2.4) for Linear layers.

Weights: ``weight_bits`` (1..16) bitlayers on the odd grid, one scale per output row from a clipping
search (lowbit.numerics.bitlayers). Activations: ``act_bits`` (2..16) fixed point with a calibrated
per-tensor scale (the max calibrator by default), unsigned when calibration saw no negative input. All
bitlayers are kept; :func:`lowbit.set_bitlayers` chooses how many of the most significant to use.
"""

from __future__ import annotations

from torch import nn

from ..config import IntFormat, QuantSpec, check_bits
from ..errors import ConfigError
from ..nn import ActivationQuantizer, fake_quant_layer
from ..nn.bitserial import BitSerialLinear
from ..nn.geometry import LayerGeometry
from ..nn.weight_quantizer import BitLayerWeightQuantizer
from .base import Scheme, register_scheme


@register_scheme
class BitSerialScheme(Scheme):
    name = "bitserial"
    summary = "PrecisionBatching: 1-16 weight bitlayers (k most significant used, set at run time) x fixed-point activations"
    defaults = {"weight_bits": 8, "act_bits": 8}
    default_calibrator = ("max", {})

    def validate(self) -> None:
        check_bits(self.options["weight_bits"], "weight_bits")
        if check_bits(self.options["act_bits"], "act_bits") < 2:
            raise ConfigError("act_bits=1 is invalid for bitserial: signed fixed-point activations need at least 2 bits")

    def supports(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def prepare(self, module: nn.Module, name: str, calibrator: str, calibrator_options: dict) -> nn.Module:
        spec = QuantSpec(IntFormat(self.options["act_bits"]))
        quantizer = ActivationQuantizer(spec, calibrator, calibrator_options, unsigned="auto",
                                        name=f"layer {name!r} input")
        return fake_quant_layer(module, BitLayerWeightQuantizer(self.options["weight_bits"]), quantizer)

    def convert(self, prepared: nn.Module, name: str) -> nn.Module:
        iq = prepared.input_quantizer
        options = {**self.options, "act_signed": iq.spec.fmt.signed}
        info = {"scheme": self.name, "name": name, "calibrator": iq.calibrator, "amax": iq.amax}
        layer = BitSerialLinear(LayerGeometry.of(prepared), options, info).to(prepared.weight.device)
        layer.set_codes(*prepared.weight_quantizer.codes_for(prepared.weight))
        layer.input_scale.copy_(iq.scale)
        if prepared.bias is not None:
            layer.bias.copy_(prepared.bias.detach().float())
        return layer
