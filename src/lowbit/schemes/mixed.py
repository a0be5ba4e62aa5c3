"""Schemes for the float tensor cores (design.md 2.3): W4A16, W4A8 and FP8, for Linear layers.

- ``"w4a16"``: INT4 weights per group (weight-only), bf16 activations.
- ``"w4a8"``: the same INT4 weights, turned into FP8 E4M3 inside the kernel (after a power-of-two
  protective scale), FP8 activations, FP8 tensor cores, bf16 output.
- ``"fp8"``: W8A8 in FP8: E4M3 weights per output channel, E4M3 activations.

Activations are FP8 with a calibrated per-tensor scale (``activation="static"``, the max calibrator by
default) or a scale per token taken at run time (``"dynamic"``). The group scales are applied before
the FP8 conversion, as in the DPQ paper: the kernel's weight is ``e4m3((c - z) * s)``. (Scales in the
epilogue were measured: more accurate and faster at few rows, but slower from 128 rows and without the
plain FP8 GEMM for many; benchmarks/RESULTS.md, session 29.) The INT4 schemes
take ``algorithm="gptq"`` (and W4A8 ``"dpq"``) in :func:`lowbit.quantize`.

``lm_head`` stays in high precision by default, as LLM quantizers keep it (it is the most sensitive
layer and, in models like SmolLM2, shares its weight with the embedding); an override quantizes it.
"""

from __future__ import annotations

import fnmatch

from torch import nn

from ..errors import ConfigError
from ..nn.geometry import LayerGeometry
from ..nn.mixed_linear import ACTIVATION_MODES, FP8Linear, W4A8Linear, W4A16Linear
from ..nn.quantizer import BF16ActivationRounding, FP8ActivationQuantizer
from ..nn.fake import fake_quant_layer
from ..nn.weight_quantizer import FP8WeightQuantizer, Int4GroupWeightQuantizer
from ..numerics.groupwise import check_group_size
from .base import Scheme, register_scheme

HIGH_PRECISION_LAYERS = ("lm_head", "*.lm_head")


def _check_bool(options: dict, key: str) -> None:
    if not isinstance(options[key], bool):
        raise ConfigError(f"{key}={options[key]!r} is invalid: expected True or False")


class _LinearScheme(Scheme):
    """Linear layers only; lm_head kept in float by default."""

    default_calibrator = ("max", {})

    def supports(self, module: nn.Module) -> bool:
        return isinstance(module, nn.Linear)

    def layer_policy(self, names: list[str]) -> dict[str, dict | None]:
        return {n: None for n in names if any(fnmatch.fnmatchcase(n, p) for p in HIGH_PRECISION_LAYERS)}

    def validate(self) -> None:
        if "activation" in self.options and self.options["activation"] not in ACTIVATION_MODES:
            raise ConfigError(f"activation={self.options['activation']!r} is invalid: expected "
                              f"{' or '.join(map(repr, ACTIVATION_MODES))}")

    @property
    def needs_calibration(self) -> bool:
        return self.options.get("activation") == "static"

    def _input_quantizer(self, name: str, calibrator: str, calibrator_options: dict) -> nn.Module:
        if "activation" not in self.options:  # weight-only
            return BF16ActivationRounding()
        return FP8ActivationQuantizer(self.options["activation"] == "dynamic", calibrator, calibrator_options,
                                      name=f"layer {name!r} input")

    def _info(self, prepared: nn.Module, name: str) -> dict:
        iq, wq = prepared.input_quantizer, prepared.weight_quantizer
        info = {"scheme": self.name, "name": name, "calibrator": iq.calibrator, "amax": iq.amax,
                "algorithm": getattr(wq, "algorithm", "rtn")}  # FP8 weights have no algorithm
        if getattr(wq, "report", None):
            info["gptq"] = wq.report
        return info


@register_scheme
class W4A16Scheme(_LinearScheme):
    name = "w4a16"
    summary = "INT4 weights per group (128; RTN or GPTQ), bf16 activations and arithmetic"
    defaults = {"group_size": 128, "symmetric": False}
    algorithms = ("rtn", "gptq")
    fp8 = False
    layer_class = W4A16Linear

    def validate(self) -> None:
        super().validate()
        check_group_size(self.options["group_size"])
        _check_bool(self.options, "symmetric")

    def weight_quantizer(self, module: nn.Module, name: str) -> Int4GroupWeightQuantizer:
        group = check_group_size(self.options["group_size"], module.in_features)
        return Int4GroupWeightQuantizer(group, self.options["symmetric"], fp8=self.fp8)

    def prepare(self, module: nn.Module, name: str, calibrator: str, calibrator_options: dict) -> nn.Module:
        return fake_quant_layer(module, self.weight_quantizer(module, name),
                                self._input_quantizer(name, calibrator, calibrator_options))

    def convert(self, prepared: nn.Module, name: str) -> nn.Module:
        wq = prepared.weight_quantizer
        options = {"group_size": wq.group_size, "symmetric": wq.symmetric}
        if "activation" in self.options:
            options["activation"] = self.options["activation"]
        layer = self.layer_class(LayerGeometry.of(prepared), options, self._info(prepared, name))
        layer.to(prepared.weight.device)
        layer.set_codes(wq.codes_for(prepared.weight))
        if hasattr(layer, "input_scale"):
            layer.input_scale.copy_(prepared.input_quantizer.scale)
        if prepared.bias is not None:
            layer.bias.copy_(prepared.bias.detach().float())
        return layer


@register_scheme
class W4A8Scheme(W4A16Scheme):
    name = "w4a8"
    summary = "INT4 weights per group turned into FP8 in the kernel, FP8 activations, FP8 tensor cores (RTN/GPTQ/DPQ)"
    defaults = {**W4A16Scheme.defaults, "activation": "static"}
    algorithms = ("rtn", "gptq", "dpq")
    fp8 = True
    layer_class = W4A8Linear


@register_scheme
class FP8Scheme(_LinearScheme):
    name = "fp8"
    summary = "W8A8 in FP8 E4M3: per-channel weights, per-tensor (or per-token) activations"
    defaults = {"activation": "static"}
    algorithms = ("rtn",)

    def prepare(self, module: nn.Module, name: str, calibrator: str, calibrator_options: dict) -> nn.Module:
        return fake_quant_layer(module, FP8WeightQuantizer(), self._input_quantizer(name, calibrator,
                                                                                    calibrator_options))

    def convert(self, prepared: nn.Module, name: str) -> nn.Module:
        layer = FP8Linear(LayerGeometry.of(prepared), dict(self.options), self._info(prepared, name))
        layer.to(prepared.weight.device)
        codes, scale = prepared.weight_quantizer.codes_for(prepared.weight)
        layer.qweight.copy_(codes)
        layer.weight_scale.copy_(scale)
        layer.input_scale.copy_(prepared.input_quantizer.scale)
        if prepared.bias is not None:
            layer.bias.copy_(prepared.bias.detach().float())
        return layer
