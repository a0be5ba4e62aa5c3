"""INT4 (W4A4) with the layer policy of NVIDIA's INT4 ResNet-50 v1.5 (design.md 2.2).

Every conv and linear layer: signed 4-bit weights per output channel (max range, narrow [-7, 7]),
4-bit activations per tensor from the 99.999th percentile, unsigned (u4, [0, 15]) where calibration
saw no negative value (after a ReLU) and signed elsewhere. The first layer stays INT8 (s8 input,
s8 weights) and the last one INT8 with a u7 input (s7 where it can be negative), as NVIDIA's model
keeps its first conv and final FC: they hold few weights and cost the most accuracy. ``int8_edges=False``
drops that policy; ``overrides`` change any layer by name.

Weights of 4 bits or fewer are stored packed, two per byte (lowbit.numerics.pack_int4). Hopper has
no INT4 tensor cores, so the GPU kernels unpack them to int8 in registers: INT4 pays on the H100
through memory (bytes on disk and in HBM, bandwidth at small batch), not through arithmetic.
The accuracy lost here is won back by quantization-aware fine-tuning (lowbit.finetune).
"""

from __future__ import annotations

from ..errors import ConfigError
from .base import register_scheme
from .int8 import Int8Scheme

# NVIDIA's edges: s8s8 first conv; u7s8 final FC (7 bits keep unsigned codes inside int8).
FIRST_LAYER = {"weight_bits": 8, "act_bits": 8, "act_unsigned": False}
LAST_LAYER = {"weight_bits": 8, "act_bits": 7, "act_unsigned": "auto"}


@register_scheme
class Int4Scheme(Int8Scheme):
    name = "int4"
    summary = ("W4A4: per-channel s4 weights (packed), u4/s4 percentile-calibrated activations; "
               "first and last layer INT8")
    defaults = {**Int8Scheme.defaults, "weight_bits": 4, "act_bits": 4, "act_unsigned": "auto", "int8_edges": True}
    default_calibrator = ("percentile", {"percentile": 99.999})

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.options["int8_edges"], bool):
            raise ConfigError(f"int8_edges={self.options['int8_edges']!r} is invalid: expected True or False")

    def layer_policy(self, names: list[str]) -> dict[str, dict]:
        if not self.options["int8_edges"] or not names:
            return {}
        return {names[-1]: LAST_LAYER, names[0]: FIRST_LAYER}  # one layer alone is the first
