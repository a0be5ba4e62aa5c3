"""Deployed Linear layers whose arithmetic is floating point: INT4-group weights with bf16 activations
(W4A16), INT4-group weights turned into FP8 with FP8 activations (W4A8), and FP8 weights with FP8
activations (FP8). Their forward is the reference the GPU kernels must match:

  W4A16: w = bf16((c - z) * s);                 y = bf16(x) @ w^T + bias
  W4A8:  w = e4m3((c - z) * s);  xq = e4m3(x * (1 / sx));  y = (xq @ w^T) * (sx * s8) + bias
  FP8:   w = e4m3 codes;         xq as W4A8;               y = (xq @ w^T) * (sx * sw[n]) + bias

with float32 accumulation. The products of FP8 (or bf16) values are exact in float32, so a kernel and
this reference differ only by the order of the float32 sums. ``sx`` is the calibrated per-tensor scale,
or with ``activation="dynamic"`` each row's own max / 448, taken at run time.

On CUDA the layers run lowbit's kernels (kernels/cuda/int4_group.cu for the INT4 ones; the Triton
float GEMM for FP8) and fall back to this reference, with one warning, where they cannot.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..numerics import fp8_activation_grid, fp8_format, pack_int4, per_token_fp8_scale, unpack_int4
from ..numerics.fp8 import e4m3_grid
from ..numerics.groupwise import SCALE_BITS, dequantize_groups, num_groups, scales_on_grid
from ..kernels.cuda.int4_group import W4A8, W4A16
from .geometry import LayerGeometry
from .registry import DeployedLayer, register_layer

ACTIVATION_MODES = ("static", "dynamic")
_FALLBACK_WARNED: set = set()


def _warn_fallback(layer_type: str, why: str) -> None:
    if layer_type not in _FALLBACK_WARNED:
        _FALLBACK_WARNED.add(layer_type)
        warnings.warn(f"{layer_type} layers run the reference path here: {why}", stacklevel=4)


class _CodedLinear(DeployedLayer, nn.Module):
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
        self._calls = 0
        self._cache: dict = {}

    def _cached(self, slot: str, key: tuple, build):
        """``build()``, kept in ``slot`` while ``key`` (the versions and places of the tensors it reads)
        stays the same."""
        if slot not in self._cache or self._cache[slot][0] != key:
            self._cache[slot] = (key, build())
        return self._cache[slot][1]

    def _rows(self, x: torch.Tensor) -> torch.Tensor:
        """x as [M, K], or a clear error when it is not a float tensor whose last dimension is the layer's K."""
        self.geometry.check_input(x, self.name)
        return x.reshape(-1, self.geometry.in_channels)

    def _uses_kernel(self, x: torch.Tensor) -> bool:
        """Whether x goes to the GPU kernels: False for CPU tensors, and (with one warning per layer type)
        on a GPU they cannot serve, where the reference runs."""
        if not x.is_cuda:
            return False
        why = self._kernel_unavailable(x.device)
        if why:
            _warn_fallback(self.layer_type, why)
        return not why

    def _kernel_unavailable(self, device: torch.device) -> str | None:
        raise NotImplementedError

    def _add_bias(self, y: torch.Tensor) -> torch.Tensor:
        return y if self.bias is None else y + self.bias.float()

    def _fp8_input(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(FP8 values of x as float32, their scale: per tensor, or [..., 1] per token)."""
        self.geometry.check_input(x, self.name)
        scale = per_token_fp8_scale(x) if self.options["activation"] == "dynamic" else self.input_scale
        return fp8_activation_grid(x, scale, name=f"layer {self.name!r} input"), scale

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

    def _kernel_unavailable(self, device: torch.device) -> str | None:
        from ..kernels.cuda.int4_group import group_unsupported, kernels_supported

        if not kernels_supported(device, self.kernel_mode):
            cc = "8.9" if self.kernel_mode == W4A8 else "8.0"
            return f"the kernel needs compute capability {cc} or newer and cuda-bindings (NVRTC)"
        if reason := group_unsupported(self.options["group_size"], self.geometry.in_channels):
            return reason
        if not self._cached("scales_fit", (self.group_scale._version, self.group_scale.data_ptr()),
                            lambda: scales_on_grid(self.group_scale)):
            return (f"the kernel converts scales of at most {SCALE_BITS} significant bits exactly (a checkpoint "
                    f"from before lowbit rounded them so): quantize the model again")
        return None

    def kernel_weights(self):
        """The weights in the GPU kernel's layout (kernels/cuda/int4_group.py), built on first use and kept
        while the codes, scales and zero points stay the same."""
        from ..kernels.cuda.int4_group import kernel_layout

        key = tuple((t._version, t.data_ptr(), t.device) for t in (self.qweight, self.group_scale, self.group_zero))
        return self._cached("kernel_weights", key, lambda: kernel_layout(self.weight_codes(), self.group_scale, self.group_zero,
                                                       self.options["group_size"], self.kernel_mode, self.qweight))

    def _gpu_forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        from ..kernels.cuda.int4_group import int4_group_linear

        bias = None if self.bias is None else self.bias.float()
        y = int4_group_linear(x, self.kernel_weights(), self.kernel_mode, bias=bias,
                              out_dtype=torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32, **kwargs)
        return y.to(x.dtype)


@register_layer
class W4A16Linear(Int4GroupLinear):
    layer_type = "w4a16"
    kernel_mode = W4A16

    def weight_values(self) -> torch.Tensor:
        return self.group_values().to(torch.bfloat16).float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_kernel(x):
            return self._gpu_forward(self._rows(x)).reshape(*x.shape[:-1], self.geometry.out_channels)
        y = self._add_bias(F.linear(self._rows(x).to(torch.bfloat16).float(), self.weight_values()))
        return y.to(x.dtype).reshape(*x.shape[:-1], self.geometry.out_channels)


@register_layer
class W4A8Linear(Int4GroupLinear):
    """``options`` add activation ("static" or "dynamic"); ``weight_scale`` is the protective s8."""

    layer_type = "w4a8"
    kernel_mode = W4A8

    def __init__(self, geometry: LayerGeometry, options: dict, info: dict | None = None):
        super().__init__(geometry, options, info)
        self.register_buffer("weight_scale", torch.ones(()))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("nan_count", torch.zeros(1, dtype=torch.int32), persistent=False)

    def set_codes(self, codes) -> None:
        super().set_codes(codes)
        self.weight_scale.copy_(codes.tensor_scale)

    def weight_values(self) -> torch.Tensor:
        """The FP8 weight, e4m3((c - z) * s), as float32 (without s8)."""
        return e4m3_grid(self.group_values())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_kernel(x):
            y = self._gpu_forward(self._rows(x), input_scale=self.input_scale, tensor_scale=self.weight_scale,
                                  per_token=self.options["activation"] == "dynamic", nan_count=self.nan_count)
            if self._flags_due():
                self._check_nan_count()
            return y.reshape(*x.shape[:-1], self.geometry.out_channels)
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
        self.register_buffer("nan_count", torch.zeros(1, dtype=torch.int32), persistent=False)

    def _kernel_unavailable(self, device: torch.device) -> str | None:
        from ..kernels import triton_available
        from ..kernels.cuda.int4_group import kernels_supported

        if not (triton_available() and kernels_supported(device, W4A8)):
            return "the kernels need compute capability 8.9 or newer, Triton and cuda-bindings (NVRTC)"
        return None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._uses_kernel(x):
            from ..kernels.cuda.int4_group import prepare_input
            from ..kernels.triton import float_gemm

            k = self.geometry.in_channels
            dynamic = self.options["activation"] == "dynamic"
            xq, sx = prepare_input(self._rows(x), W4A8, -(-k // 64) * 64, self.input_scale, dynamic, self.nan_count)
            bias = None if self.bias is None else self.bias.float()
            y = float_gemm(xq[:, :k], self.qweight, sx, self.weight_scale.float(), bias,
                           out_dtype=torch.bfloat16 if x.dtype == torch.bfloat16 else torch.float32)
            if self._flags_due():
                self._check_nan_count()
            return y.to(x.dtype).reshape(*x.shape[:-1], self.geometry.out_channels)
        xq, sx = self._fp8_input(x)
        y = F.linear(xq, self.qweight.float()) * (sx * self.weight_scale)
        return self._add_bias(y).to(x.dtype)
