"""INT8 ResNets that stay in int8 from layer to layer, as TensorRT builds them.

``lowbit.quantize(model, "int8")`` gives a per-layer model: each conv quantizes its float input,
multiplies in integers and returns float, so BatchNorm, ReLU and the residual add run in float
between them. :func:`fuse_resnet` turns such a model, if it is a ResNet (lowbit's or torchvision's
layout), into :class:`Int8ResNet`, where each conv's epilogue does the rest in one step:

    y = float32(acc) * (sx * sw') + bias'     BN folded into the weight scales and the bias
    y += residual                             the block's shortcut
    y = relu(y)
    q = clamp(round(y / s_next), qmin, qmax)  codes at the next conv's calibrated input scale and format

(exactly ``kernels.reference.epilogue``). Codes travel in int8 tensors whatever their format (s8,
or u4 / s4 with the int4 scheme); weights of 4 bits or fewer stay packed two per byte and the
kernels unpack them in registers. The max pool works on codes (quantization is monotonic,
so that is exact). The identity shortcut is the block's int8 input; a downsample conv's output is
kept in bf16 (no scale was calibrated for it, and bf16 halves its traffic against float32). The
last block returns float32 for the average pool and the FC. On CUDA every step runs a Triton
kernel; elsewhere the integer reference, which gives the same int8 codes.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..config import QuantSpec
from ..errors import ConfigError
from ..kernels import triton_available
from ..kernels.reference import epilogue, integer_conv_acc
from ..numerics import pack_int4, quantize, unpack_int4
from .geometry import LayerGeometry
from .integer import IntegerLayer, codes_fit_int8
from .registry import DeployedLayer


def _on_gpu_kernels(x: torch.Tensor) -> bool:
    return x.is_cuda and triton_available()


class Int8Conv2d(nn.Module):
    """A convolution from int8-held codes to ``out_dtype``: codes in ``out_range`` at ``output_scale``,
    or the float epilogue rounded to bf16 / float32; the fused epilogue of the module docstring.
    Weights are kept [O, KH, KW, C], the layout the GPU kernel reads: int8, or with ``packed`` signed
    INT4 two per byte along C (uint8 [O, KH, KW, C/2]). Grouped convolutions and non-zero padding
    modes run the reference on any device."""

    def __init__(self, geometry: LayerGeometry, relu: bool, out_dtype: torch.dtype, has_residual_scale: bool,
                 packed: bool = False, out_range: tuple[int, int] = (-127, 127)):
        super().__init__()
        if geometry.kind != "conv2d":
            raise ConfigError(f"Int8Conv2d takes a conv2d geometry, got {geometry}")
        if out_dtype not in (torch.int8, torch.bfloat16, torch.float32):
            raise ConfigError(f"Int8Conv2d out_dtype must be int8, bfloat16 or float32, got {out_dtype}")
        channels = geometry.in_channels // geometry.groups
        if packed and channels % 2:
            raise ConfigError(f"packed INT4 weights need an even number of input channels per group, got {channels}")
        self.geometry = geometry
        self.relu = relu
        self.out_dtype = out_dtype
        self.packed = packed
        self.out_range = tuple(out_range)
        o = geometry.out_channels
        shape = (o, *geometry.kernel_size, channels // 2 if packed else channels)
        self.register_buffer("qweight", torch.zeros(shape, dtype=torch.uint8 if packed else torch.int8))
        self.register_buffer("weight_scale", torch.ones(o))
        self.register_buffer("bias", torch.zeros(o))
        self.register_buffer("input_scale", torch.ones(()))
        self.register_buffer("output_scale", torch.ones(()) if out_dtype == torch.int8 else None)
        self.register_buffer("residual_scale", torch.ones(()) if has_residual_scale else None)

    @classmethod
    def from_integer(cls, layer: IntegerLayer, norm: nn.Module | None, name: str, *, relu: bool,
                     output_scale: torch.Tensor | None, residual_scale: torch.Tensor | None = None,
                     float_dtype: torch.dtype = torch.float32,
                     out_range: tuple[int, int] = (-127, 127)) -> "Int8Conv2d":
        """Fold ``norm`` (eval statistics) into ``layer``'s per-channel scales and bias: a channel's
        factor a goes into |a| * sw and its sign into the codes, so the codes need no requantizing.
        Codes in ``out_range`` with an ``output_scale``, else ``float_dtype``. The folding is
        computed on the CPU in float64, so a model fused on any device gets the same float32 numbers.
        Weights of 4 bits or fewer stay packed where the channel count is even."""
        _check_fusable(layer, name)
        out_dtype = torch.int8 if output_scale is not None else float_dtype
        channels = layer.geometry.in_channels // layer.geometry.groups
        packed = layer.weight_spec.fmt.bits <= 4 and channels % 2 == 0
        conv = cls(layer.geometry, relu, out_dtype, residual_scale is not None, packed,
                   out_range).to(layer.qweight.device)
        o = layer.geometry.out_channels
        a, shift = norm_affine(norm, o, name)
        sign = torch.where(a < 0, -1, 1).to(torch.int8).to(layer.qweight.device)
        codes = (layer.weight_codes() * sign.view(-1, 1, 1, 1)).permute(0, 2, 3, 1)  # narrow range: -q fits
        conv.qweight.copy_(pack_int4(codes) if packed else codes)
        conv.weight_scale.copy_(layer.weight_scale.cpu().double().expand(o) * a.abs())
        bias = layer.bias.cpu().double() if layer.bias is not None else torch.zeros_like(a)
        conv.bias.copy_(a * bias + shift)
        conv.input_scale.copy_(layer.input_scale)
        if output_scale is not None:
            conv.output_scale.copy_(output_scale)
        if residual_scale is not None:
            conv.residual_scale.copy_(residual_scale)
        return conv

    def weight_codes(self) -> torch.Tensor:
        """int8 weight codes [O, KH, KW, C], unpacked when stored packed."""
        if not self.packed:
            return self.qweight
        return unpack_int4(self.qweight, 2 * self.qweight.shape[-1])

    def _uses_kernel(self, q: torch.Tensor) -> bool:
        g = self.geometry
        return _on_gpu_kernels(q) and g.groups == 1 and g.padding_mode == "zeros"

    def forward(self, q: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        out_scale = self.output_scale
        if self._uses_kernel(q):
            from ..kernels.triton import int8_conv2d

            g = self.geometry
            return int8_conv2d(q, self.qweight, self.input_scale, self.weight_scale, self.bias, stride=g.stride,
                               pads=g.pads, dilation=g.dilation, residual=residual, residual_scale=self.residual_scale,
                               relu=self.relu, out_dtype=self.out_dtype, out_scale=out_scale,
                               out_range=self.out_range)
        acc = integer_conv_acc(q, 0, self.weight_codes().permute(0, 3, 1, 2), self.geometry)
        y = epilogue(acc, self.input_scale, self.weight_scale, self.bias, 1, residual=residual,
                     residual_scale=self.residual_scale, relu=self.relu, out_scale=out_scale,
                     out_range=self.out_range)
        return y.to(self.out_dtype)

    def extra_repr(self) -> str:
        out = f"codes in {list(self.out_range)}" if self.out_dtype == torch.int8 else str(self.out_dtype)
        weights = "packed int4" if self.packed else "int8"
        return f"{self.geometry}, weights {weights}, relu={self.relu}, out={out.removeprefix('torch.')}"


class Int8ResidualBlock(nn.Module):
    """A basic (2 convs) or bottleneck (3 convs) block on int8 codes; the last conv adds the shortcut."""

    def __init__(self, convs: list[Int8Conv2d], shortcut: Int8Conv2d | None):
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.shortcut = shortcut

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        residual = q if self.shortcut is None else self.shortcut(q)
        y = q
        for conv in self.convs[:-1]:
            y = conv(y)
        return self.convs[-1](y, residual)


class Int8ResNet(DeployedLayer, nn.Module):
    """float images -> int8 codes -> stem -> int8 max pool -> int8 blocks -> average pool -> FC (logits).

    Its input is the stem's (``conv1``): checked as a deployed layer checks its own, NaN pixels included
    (they have no code; the GPU quantizer counts them, read back every CHECK_EVERY calls)."""

    layer_type = "int8"  # for messages only: the fused model is not a checkpoint layer type

    def __init__(self, stem: Int8Conv2d, input_spec: QuantSpec, maxpool: nn.MaxPool2d | None,
                 blocks: list[Int8ResidualBlock], fc: IntegerLayer):
        super().__init__()
        self.stem = stem
        self.input_spec = input_spec  # the format the images are quantized to (the stem's input)
        self.maxpool = maxpool
        self.blocks = nn.Sequential(*blocks)
        self.fc = fc
        self.info = {"name": "conv1"}
        self.register_buffer("nan_count", torch.zeros(1, dtype=torch.int32, device=stem.qweight.device),
                             persistent=False)
        self._calls = 0

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        self.stem.geometry.check_input(x, self.name)
        scale, spec = self.stem.input_scale, self.input_spec
        if _on_gpu_kernels(x):
            from ..kernels.triton import quantize_int8

            codes = quantize_int8(x, scale, qmin=spec.fmt.qmin, qmax=spec.fmt.qmax, nan_count=self.nan_count)[0]
            if self._flags_due():
                self._check_nan_count()
            return codes.contiguous(memory_format=torch.channels_last)
        self._refuse_nan(x)
        return quantize(x, spec, scale, torch.zeros((), dtype=torch.int32)).to(torch.int8)

    def pool(self, q: torch.Tensor) -> torch.Tensor:
        p = self.maxpool
        args = [_pair(v) for v in (p.kernel_size, p.stride, p.padding, p.dilation)]
        if _on_gpu_kernels(q):
            from ..kernels.triton import int8_max_pool2d

            return int8_max_pool2d(q, *args)
        return F.max_pool2d(q.float(), *args).to(torch.int8)  # codes are exact in float32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = self.stem(self.quantize_input(x))
        if self.maxpool is not None:
            q = self.pool(q)
        y = self.blocks(q)  # float32 out of the last block
        # Summed in float64, the mean rounds to the same float32 in any summation order, so the FC's
        # input codes do not depend on the device (torch's CUDA and CPU reductions add in different orders).
        return self.fc(y.double().mean((2, 3)).float())


def _pair(v) -> tuple:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def norm_affine(norm: nn.Module | None, channels: int, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (a, shift) with norm(y) = a * y + shift in eval mode: float64 on the CPU."""
    if norm is None or isinstance(norm, nn.Identity):
        return torch.ones(channels, dtype=torch.float64), torch.zeros(channels, dtype=torch.float64)
    if isinstance(norm, nn.BatchNorm2d):
        if norm.running_var is None:
            raise ConfigError(f"{name}: BatchNorm2d without running statistics cannot be folded")
        a = torch.rsqrt(norm.running_var.detach().cpu().double() + norm.eps)
        if norm.weight is not None:
            a = a * norm.weight.detach().cpu().double()
        shift = -norm.running_mean.detach().cpu().double() * a
        if norm.bias is not None:
            shift = shift + norm.bias.detach().cpu().double()
        return a, shift
    if hasattr(norm, "folded_affine"):
        a, shift = norm.folded_affine()
        return a.detach().cpu().double(), shift.detach().cpu().double()
    raise ConfigError(f"{name}: cannot fold a {type(norm).__name__} into the convolution before it "
                      "(BatchNorm2d, or a module with folded_affine() -> (scale, shift), can be folded)")


def _check_fusable(layer, name: str, codes_in: bool = True) -> None:
    """``layer`` must be an IntegerLayer with signed weights of at most 8 bits; with ``codes_in``,
    one whose input codes are symmetric and fit int8 (s2..s8, u1..u7)."""
    if not isinstance(layer, IntegerLayer):
        raise ConfigError(f"{name} is a {type(layer).__name__}, not an integer layer: fuse_resnet takes a model "
                          "returned by lowbit.quantize(model, 'int8' or 'int4', ...) with every conv and the FC "
                          "quantized")
    spec = layer.input_spec
    if codes_in and not (spec.symmetric and codes_fit_int8(spec.fmt)):
        raise ConfigError(f"{name}: fused layers pass symmetric codes that fit int8 (s2..s8, u1..u7) between "
                          f"them, but this layer's input is {spec.describe()} (quantize with act_symmetric=True, "
                          "and act_bits=7 where act_unsigned applies)")
    if layer.relu:  # a ReLU folded in before the norm that fusing puts first
        raise ConfigError(f"{name} applies a ReLU to its output (folded from the model), which fuse_resnet's "
                          "conv + norm + ReLU pattern does not take")
    w = layer.weight_spec.fmt
    if not w.signed or w.bits > 8:
        raise ConfigError(f"{name}: weights need signed codes of at most 8 bits, got {layer.weight_spec.describe()}")


def _stages(qmodel: nn.Module) -> list[nn.Module]:
    stages, i = [], 1
    while isinstance(getattr(qmodel, f"layer{i}", None), nn.Sequential):
        stages.append(getattr(qmodel, f"layer{i}"))
        i += 1
    return stages


def _block_parts(block: nn.Module, name: str):
    """[(conv, norm, conv name)] of a basic or bottleneck block, and its (conv, norm) shortcut or None."""
    n = 3 if hasattr(block, "conv3") else 2
    parts = []
    for i in range(1, n + 1):
        if not hasattr(block, f"conv{i}"):
            raise ConfigError(f"{name} is not a ResNet block: it has no conv{i}")
        parts.append((getattr(block, f"conv{i}"), getattr(block, f"bn{i}", None), f"{name}.conv{i}"))
    down = getattr(block, "downsample", None)
    if down is None:
        return parts, None
    if not (isinstance(down, nn.Sequential) and 1 <= len(down) <= 2):
        raise ConfigError(f"{name}.downsample must be Sequential(conv, norm), got {type(down).__name__}")
    return parts, (down[0], down[1] if len(down) == 2 else None, f"{name}.downsample.0")


def fuse_resnet(qmodel: nn.Module) -> Int8ResNet:
    """An :class:`Int8ResNet` computing ``qmodel`` (an int8-quantized ResNet: stem ``conv1``/``bn1``,
    optional ``maxpool``, stages ``layer1``, ``layer2``... of basic or bottleneck blocks, ``fc``) in
    int8 from layer to layer. The scales are the calibrated input scales of ``qmodel``'s convs, so
    no data is needed; ``qmodel`` itself is left unchanged."""
    stages = _stages(qmodel)
    if not hasattr(qmodel, "conv1") or not hasattr(qmodel, "fc") or not stages:
        raise ConfigError(f"{type(qmodel).__name__} does not have a ResNet's layout "
                          "(conv1, bn1, layer1, layer2, ..., fc): fuse_resnet cannot fuse it")
    blocks = [(f"layer{i + 1}.{j}", block) for i, stage in enumerate(stages) for j, block in enumerate(stage)]
    parts = [_block_parts(block, name) for name, block in blocks]
    _check_fusable(qmodel.fc, "fc", codes_in=False)  # the FC quantizes its float input itself
    # every conv before any is read: the chain below reads the next conv's input scale and format
    for conv, _, name in [(qmodel.conv1, None, "conv1")] + [c for p, s in parts for c in p + ([s] if s else [])]:
        _check_fusable(conv, name)

    def reader(conv: IntegerLayer) -> dict:
        """How a conv's producer must write codes for it: at its input scale, in its input format."""
        return {"output_scale": conv.input_scale, "out_range": (conv.input_spec.fmt.qmin, conv.input_spec.fmt.qmax)}

    fused_blocks = []
    for i, (convs, shortcut) in enumerate(parts):
        first = convs[0][0]
        after = reader(parts[i + 1][0][0][0]) if i + 1 < len(parts) else {"output_scale": None}
        fused_convs = [Int8Conv2d.from_integer(conv, norm, name, relu=True, **reader(convs[j + 1][0]))
                       for j, (conv, norm, name) in enumerate(convs[:-1])]
        conv, norm, name = convs[-1]
        fused_convs.append(Int8Conv2d.from_integer(conv, norm, name, relu=True, **after,
                                                   residual_scale=first.input_scale if shortcut is None else None))
        fused_shortcut = None
        if shortcut is not None:
            conv, norm, name = shortcut
            if (not torch.allclose(conv.input_scale, first.input_scale, rtol=1e-6, atol=0)
                    or conv.input_spec != first.input_spec):
                raise ConfigError(f"{name} and {convs[0][2]} read the same tensor but were calibrated to different "
                                  f"scales or formats ({float(conv.input_scale)} {conv.input_spec.describe()} and "
                                  f"{float(first.input_scale)} {first.input_spec.describe()}); the fused block reads "
                                  "one copy of its codes: quantize both the same way")
            fused_shortcut = Int8Conv2d.from_integer(conv, norm, name, relu=False, output_scale=None,
                                                     float_dtype=torch.bfloat16)
        fused_blocks.append(Int8ResidualBlock(fused_convs, fused_shortcut))
    stem = Int8Conv2d.from_integer(qmodel.conv1, getattr(qmodel, "bn1", None), "conv1", relu=True,
                                   **reader(parts[0][0][0][0]))
    maxpool = getattr(qmodel, "maxpool", None)
    if maxpool is not None and (not isinstance(maxpool, nn.MaxPool2d) or maxpool.ceil_mode):
        raise ConfigError("qmodel.maxpool must be an nn.MaxPool2d with ceil_mode=False")
    return Int8ResNet(stem, qmodel.conv1.input_spec, copy.deepcopy(maxpool), fused_blocks,
                      copy.deepcopy(qmodel.fc)).eval()
