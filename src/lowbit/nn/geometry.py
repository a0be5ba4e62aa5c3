"""What a Linear / Conv1d / Conv2d layer computes, apart from its numbers.

Quantized layers keep a :class:`LayerGeometry` so that one integer GEMM (with
im2col for convolutions) serves every layer kind, and so that a checkpoint can
check a layer against the architecture it is loaded into.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..errors import CheckpointError, InputError

QUANTIZABLE_TYPES = (nn.Linear, nn.Conv1d, nn.Conv2d)


@dataclass(frozen=True)
class LayerGeometry:
    kind: str  # "linear", "conv1d" or "conv2d"
    in_channels: int
    out_channels: int
    bias: bool
    kernel_size: tuple = ()
    stride: tuple = ()
    dilation: tuple = ()
    pads: tuple = ()  # F.pad order: (last-dim left, last-dim right, previous dim left, ...)
    groups: int = 1
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, module: nn.Module) -> "LayerGeometry":
        if isinstance(module, nn.Linear):
            return cls("linear", module.in_features, module.out_features, module.bias is not None)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            if getattr(module, "transposed", False):
                raise TypeError("transposed convolutions are not quantizable yet")
            return cls(
                "conv1d" if isinstance(module, nn.Conv1d) else "conv2d",
                module.in_channels, module.out_channels, module.bias is not None,
                tuple(module.kernel_size), tuple(module.stride), tuple(module.dilation),
                _pads(module.padding, module.kernel_size, module.dilation), module.groups, module.padding_mode)
        raise TypeError(f"{type(module).__name__} is not a quantizable layer type")

    @property
    def reduction_size(self) -> int:
        """K of the layer's GEMM: inputs that contribute to one output."""
        k = self.in_channels // self.groups
        for size in self.kernel_size:
            k *= size
        return k

    @property
    def weight_shape(self) -> tuple:
        if self.kind == "linear":
            return (self.out_channels, self.in_channels)
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    def check_input(self, x: torch.Tensor, layer: str) -> None:
        """A clear error naming ``layer`` when ``x`` cannot be its input (shapes float PyTorch refuses, some
        of which integer arithmetic would otherwise take silently, such as extra channels)."""
        if not x.dtype.is_floating_point:
            raise InputError(f"layer {layer!r} takes floating-point inputs, got a {x.dtype} tensor")
        if self.kind == "linear":
            if x.dim() == 0 or x.shape[-1] != self.in_channels:
                raise InputError(f"layer {layer!r} expects inputs of {self.in_channels} features, "
                                 f"got shape {tuple(x.shape)}")
            return
        dims = len(self.kernel_size)
        layout = "(N, C, L)" if dims == 1 else "(N, C, H, W)"
        if x.dim() != dims + 2:
            raise InputError(f"layer {layer!r} ({self}) expects inputs of shape {layout}, got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise InputError(f"layer {layer!r} ({self}) expects {self.in_channels} input channels, got shape "
                             f"{tuple(x.shape)}")
        for i, size in enumerate(x.shape[2:]):
            padded = size + self.pads[2 * (dims - 1 - i)] + self.pads[2 * (dims - 1 - i) + 1]
            if padded < self.dilation[i] * (self.kernel_size[i] - 1) + 1:
                raise InputError(f"layer {layer!r} ({self}): input of shape {tuple(x.shape)} is smaller than "
                                 "its kernel")

    def __str__(self) -> str:
        if self.kind == "linear":
            return f"linear {self.in_channels}->{self.out_channels}"
        extras = [f"k{'x'.join(map(str, self.kernel_size))}"]
        extras += [f"{name}={value}" for name, value, default in (
            ("stride", self.stride, (1,) * len(self.kernel_size)), ("dilation", self.dilation, (1,) * len(self.kernel_size)),
            ("pads", self.pads, None), ("groups", self.groups, 1), ("padding_mode", self.padding_mode, "zeros"))
            if value != default and not (name == "pads" and not any(value))]
        return f"{self.kind} {self.in_channels}->{self.out_channels} {' '.join(extras)}"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "LayerGeometry":
        try:
            return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})
        except TypeError as exc:
            raise CheckpointError(f"invalid layer geometry {data!r}: {exc}") from None


def _pads(padding, kernel_size, dilation) -> tuple:
    if padding == "valid":
        padding = (0,) * len(kernel_size)
    pads = []
    for i in reversed(range(len(kernel_size))):
        if padding == "same":
            total = dilation[i] * (kernel_size[i] - 1)
            pads += [total // 2, total - total // 2]
        else:
            pads += [padding[i], padding[i]]
    return tuple(pads)
