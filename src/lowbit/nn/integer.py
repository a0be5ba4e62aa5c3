"""Integer layers: integer codes in memory, integer arithmetic in forward."""

from __future__ import annotations

import torch
from torch import nn

from ..config import IntFormat, QuantSpec
from ..kernels import triton_available
from ..kernels.reference import integer_conv_acc, integer_linear_acc, rescale
from ..numerics import pack_int4, qparams_for, quantize, unpack_int4
from .geometry import LayerGeometry
from .registry import DeployedLayer, register_layer


def codes_fit_int8(fmt: IntFormat) -> bool:
    """Whether every code of ``fmt`` fits an int8 tensor (s2..s8, u1..u7): the GPU kernels' operands."""
    return fmt.qmin >= -128 and fmt.qmax <= 127


@register_layer
class IntegerLayer(DeployedLayer, nn.Module):
    """A Linear / Conv1d / Conv2d computed in integers: the input is quantized with a
    calibrated per-tensor scale (and zero point), multiplied with integer weight codes
    (per-channel or per-tensor scales) into exact integer accumulators, then rescaled
    and the float bias added (kernels/reference.py states the exact order).

    Weights of 4 bits or fewer are stored packed, two codes per byte along the flattened
    reduction axis: ``qweight`` is uint8 [O, ceil(K/2)] (lowbit.numerics.pack_int4), half
    the bytes of int8 in memory and in checkpoints; :meth:`weight_codes` unpacks them."""

    layer_type = "integer"
    folds_relu = True  # nn/registry.py fold_relus: the ReLU after it runs in the layer (the GEMM's epilogue)

    def __init__(self, geometry: LayerGeometry, weight_spec: QuantSpec, input_spec: QuantSpec, info: dict | None = None):
        super().__init__()
        if weight_spec.granularity == "group" or input_spec.granularity != "tensor":
            raise ValueError("IntegerLayer takes per-channel or per-tensor weights and per-tensor inputs")
        self.geometry = geometry
        self.weight_spec = weight_spec
        self.input_spec = input_spec
        self.info = dict(info or {})  # scheme, calibrator, amax: carried into checkpoints
        self.relu = self.info.pop("relu", False)  # max(y, 0) on the output (a ReLU folded in)
        scale_shape = (geometry.out_channels,) if weight_spec.granularity == "channel" else ()
        self.packed = weight_spec.fmt.bits <= 4
        if self.packed:
            qweight = torch.zeros(geometry.out_channels, (geometry.reduction_size + 1) // 2, dtype=torch.uint8)
        else:
            qweight = torch.zeros(geometry.weight_shape, dtype=weight_spec.fmt.storage_dtype)
        self.register_buffer("qweight", qweight)
        self.register_buffer("weight_scale", torch.ones(scale_shape))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("input_zero_point", torch.zeros((), dtype=torch.int32))
        self.register_buffer("bias", torch.zeros(geometry.out_channels) if geometry.bias else None)
        # NaN inputs have no code: the GPU GEMM path counts them (read back every CHECK_EVERY calls).
        self.register_buffer("nan_count", torch.zeros(1, dtype=torch.int32), persistent=False)
        self._calls = 0

    @classmethod
    def from_fake(cls, fake: nn.Module, info: dict) -> "IntegerLayer":
        """Freeze a calibrated fake-quant layer into integer codes."""
        iq = fake.input_quantizer
        layer = cls(LayerGeometry.of(fake), fake.weight_spec, iq.spec, {**info, "amax": iq.amax})
        w = fake.weight.detach()
        scale, zero = qparams_for(w, fake.weight_spec)
        layer.to(w.device)
        codes = quantize(w, fake.weight_spec, scale, zero)
        if layer.packed:
            codes = pack_int4(codes.reshape(len(codes), -1), fake.weight_spec.fmt.signed)
        layer.qweight.copy_(codes)
        layer.weight_scale.copy_(scale)
        layer.input_scale.copy_(iq.scale)
        layer.input_zero_point.copy_(iq.zero_point)
        if fake.bias is not None:
            layer.bias.copy_(fake.bias.detach().float())
        return layer

    def weight_codes(self) -> torch.Tensor:
        """The weight codes in the layer's weight shape (unpacked when stored packed)."""
        if not self.packed:
            return self.qweight
        codes = unpack_int4(self.qweight, self.geometry.reduction_size, signed=self.weight_spec.fmt.signed)
        return codes.reshape(self.geometry.weight_shape)

    def _uses_gemm_kernel(self, x: torch.Tensor) -> bool:
        """On CUDA a linear layer with int8 (or packed signed int4) weights and a symmetric input whose
        codes fit int8 runs the Triton GEMM (kernels/triton), which computes the same integers and epilogue."""
        return (x.is_cuda and self.geometry.kind == "linear" and self.weight_spec.fmt.signed
                and self.qweight.dtype in (torch.int8, torch.uint8) and self.input_spec.symmetric
                and codes_fit_int8(self.input_spec.fmt)
                and x.dtype in (torch.float32, torch.bfloat16, torch.float16) and triton_available())

    def _gemm_kernel_forward(self, x: torch.Tensor) -> torch.Tensor:
        from ..kernels.triton import int8_gemm, quantize_int8

        x2 = x.reshape(-1, x.shape[-1])
        fmt = self.input_spec.fmt
        qx, _ = quantize_int8(x2, self.input_scale, qmin=fmt.qmin, qmax=fmt.qmax, nan_count=self.nan_count)
        w_scale = self.weight_scale.expand(self.geometry.out_channels).contiguous()
        y = int8_gemm(qx, self.qweight, self.input_scale, w_scale, self.bias, activation="relu" if self.relu else None,
                      out_dtype=x.dtype)
        if self._flags_due():
            self._check_nan_count()
        return y.reshape(*x.shape[:-1], self.geometry.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.geometry.check_input(x, self.name)
        if self._uses_gemm_kernel(x):
            return self._gemm_kernel_forward(x)
        self._refuse_nan(x)
        qx = quantize(x, self.input_spec, self.input_scale, self.input_zero_point)
        zx = int(self.input_zero_point)
        qw = self.weight_codes()
        if self.geometry.kind == "linear":
            acc, channel_dim = integer_linear_acc(qx, zx, qw), -1
        else:
            acc, channel_dim = integer_conv_acc(qx, zx, qw, self.geometry), 1
        y = rescale(acc, self.input_scale, self.weight_scale, self.bias, channel_dim).to(x.dtype)
        return torch.relu(y) if self.relu else y

    def describe(self) -> dict:
        return {
            "type": self.layer_type,
            "geometry": self.geometry.to_dict(),
            "weight": self.weight_spec.to_dict(),
            "input": self.input_spec.to_dict(),
            "input_scale": float(self.input_scale),
            "input_zero_point": int(self.input_zero_point),
            "relu": self.relu,
            **self.info,
        }

    @classmethod
    def from_description(cls, desc: dict) -> "IntegerLayer":
        info = {k: v for k, v in desc.items()
                if k not in ("type", "geometry", "weight", "input", "input_scale", "input_zero_point")}
        return cls(LayerGeometry.from_dict(desc["geometry"]), QuantSpec.from_dict(desc["weight"]),
                   QuantSpec.from_dict(desc["input"]), info)

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"{g.kind} {g.in_channels}->{g.out_channels}, weight={self.weight_spec.describe()}, "
                f"input={self.input_spec.describe()}" + (", relu" if self.relu else ""))
