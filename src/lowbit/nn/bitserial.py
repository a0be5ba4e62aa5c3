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
it literally); here, on the CPU, the same integers come from one exact matmul. On the GPU a layer takes
two kernels (its input's planes, the binary GEMM); where another bit-serial layer follows it in an
nn.Sequential (:meth:`BitSerialLinear.link_next`), the GEMM's epilogue also writes that layer's input
planes, which then needs one kernel.
"""

from __future__ import annotations

import fnmatch
import warnings
import weakref

import torch
from torch import nn

from ..config import IntFormat
from ..errors import ConfigError, InputError
from ..kernels.cuda.bitserial import (InputPlanes, binary_gemm, bitserial_linear, bitserial_supported,
                                      empty_input_planes, input_planes, layer_kernels, lstm_sequence)
from ..kernels.reference import integer_matmul, rescale
from ..numerics import count_nan
from ..numerics.bitlayers import bitlayer_values, check_active, padded_words, to_bitlayers
from .geometry import LayerGeometry
from .mixed_linear import _CodedLinear
from .registry import quantized_layers, register_layer




@register_layer
class BitSerialLinear(_CodedLinear):
    """``bitlayers`` int32 [n, out, padded_words(in)] (the stored planes), ``weight_scale`` float32 [out],
    ``input_scale`` float32 [], ``bias``. ``options``: weight_bits, act_bits, act_signed."""

    layer_type = "bitserial"
    folds_relu = True  # nn/registry.py fold_relus: the ReLU after it runs in the GEMM's epilogue

    def __init__(self, geometry: LayerGeometry, options: dict, info: dict | None = None):
        super().__init__(geometry, options, info)
        n, out, k = options["weight_bits"], geometry.out_channels, geometry.in_channels
        self.input_format = IntFormat(options["act_bits"], signed=options["act_signed"])
        self.register_buffer("bitlayers", torch.zeros(n, out, padded_words(k), dtype=torch.int32))
        self.register_buffer("weight_scale", torch.ones(out))
        self.register_buffer("input_scale", torch.ones(()))
        self.active = self.info.pop("active_bitlayers", n)
        self.relu = self.info.pop("relu", False)  # max(y, 0) on the output (a ReLU folded in)
        # Inputs clamped to the fixed-point range, and NaN inputs, counted by the GPU kernel (read back
        # every CHECK_EVERY calls, not every call: a read waits for the GPU) and by the CPU path.
        self.register_buffer("input_flags", torch.zeros(2, dtype=torch.int64), persistent=False)
        self._saturated_reported = 0
        # The bit-serial layer fed by this one's output (link_next): on the GPU this layer's epilogue also
        # writes that one's input planes, and hands them over (_handoff) with the output they were made from.
        self.__dict__["_next_layer"] = None  # (not a submodule)
        self._handoff = None

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

    def _decoded_weight(self) -> torch.Tensor:
        """weight_values() as float32 (exact: |values| < 2^16), kept for the current k while the planes
        stay the same: the reference path would otherwise unpack them on every call (an LSTM step)."""
        key = (self.active, self.bitlayers._version, self.bitlayers.data_ptr(), self.bitlayers.device)
        return self._cached("decoded", key, lambda: self.weight_values().float())

    @property
    def saturated(self) -> int:
        """How many inputs saturated since the layer was built (reads the GPU's count: a sync)."""
        self._check_input_flags()
        return int(self.input_flags[0])

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        """Fixed-point codes of x (int32), counting (and warning once about) values that saturate."""
        fmt = self.input_format
        q = torch.round(x.float() / self.input_scale)
        self.input_flags[0] += ((q < fmt.qmin) | (q > fmt.qmax)).sum()
        self.input_flags[1] += count_nan(q)
        self._check_input_flags()
        return torch.clamp(q, fmt.qmin, fmt.qmax).to(torch.int32)

    def _check_input_flags(self) -> None:
        over, nans = (int(v) for v in self.input_flags.tolist())
        if nans:
            self.input_flags[1] = 0
            raise InputError(f"layer {self.name!r}: {nans} NaN input value(s)")
        if over and not self._saturated_reported:
            fmt = self.input_format
            warnings.warn(f"layer {self.name!r}: {over} input values fell outside the {fmt.bits}-bit fixed-point "
                          f"range [{fmt.qmin}, {fmt.qmax}] x scale {float(self.input_scale):.4g} and saturated "
                          "(counted in .saturated; warned once)", stacklevel=4)
        self._saturated_reported = over

    def _scale(self) -> torch.Tensor:
        """input_scale * weight_scale [N], as the reference's rescale computes it; kept between calls."""
        key = (self.input_scale._version, self.weight_scale._version, self.input_scale.data_ptr(),
               self.weight_scale.data_ptr())
        return self._cached("scale", key, lambda: (self.input_scale * self.weight_scale).float().contiguous())

    def _kernel_unavailable(self, device: torch.device) -> str | None:
        if bitserial_supported(device):
            return None
        return "the kernel needs binary tensor cores (compute capability 8.0 or newer) and cuda-bindings (NVRTC)"

    def link_next(self, layer: nn.Module | None) -> bool:
        """Note the layer that takes this one's output as its input (nn.registry.link_layers): a bit-serial
        layer of as many inputs as this one has outputs is fed its input planes by this layer's GPU kernel.
        Whether it was taken."""
        fits = isinstance(layer, BitSerialLinear) and layer.geometry.in_channels == self.geometry.out_channels
        self.__dict__["_next_layer"] = layer if fits else None
        return fits

    def input_buffers(self, m: int, device: torch.device) -> InputPlanes:
        """Empty buffers for m rows of this layer's input as its GEMM reads them, with what a kernel that
        writes them must know (kernels/cuda/bitserial.py: InputPlanes)."""
        fmt = self.input_format
        cfg, _ = layer_kernels(m, self.bitlayers, fmt.bits, device)
        return InputPlanes(self.input_scale, fmt.qmin, fmt.qmax, fmt.bits,
                           *empty_input_planes(m, self.bitlayers.shape[-1], cfg, device), self.input_flags, cfg["A8"],
                           bool(cfg["RING"]))

    def _take_handoff(self, x: torch.Tensor) -> InputPlanes | None:
        """The input planes the layer before made for x: only for that very tensor, unchanged since (its
        version), with this layer's input scale unchanged too."""
        handoff, self._handoff = self._handoff, None
        if handoff is None:
            return None
        made_from, version, scale_version, planes = handoff
        same = made_from() is x and x._version == version and self.input_scale._version == scale_version
        return planes if same else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead, given = x.shape[:-1], x
        x = self._rows(x)
        if self._uses_kernel(x):
            fmt = self.input_format
            following = self.__dict__["_next_layer"]
            # The kernel writes the next layer's input planes from its float32 output: only where that
            # output is what the next layer gets (half-precision callers get a rounded copy).
            if following is not None and (following.bitlayers.device != x.device or given.dtype != torch.float32):
                following = None
            made_next = following.input_buffers(x.shape[0], x.device) if following is not None else None
            y = bitserial_linear(x.float().contiguous(), self.bitlayers, self.active, self.input_scale, fmt.bits,
                                 fmt.qmin, fmt.qmax, fmt.signed, self._scale(), self.bias, self.input_flags, self.relu,
                                 made=self._take_handoff(given), next_input=made_next)
            if self._flags_due():
                self._check_input_flags()
            y = y.reshape(*lead, self.geometry.out_channels).to(given.dtype)
            if following is not None:
                following._handoff = (weakref.ref(y), y._version, following.input_scale._version, made_next)
            return y
        xq = self.quantize_input(x)
        n = self.stored_bitlayers
        w_bound = ((1 << self.active) - 1) << (n - self.active)
        x_bound = max(-self.input_format.qmin, self.input_format.qmax)
        acc = integer_matmul(xq, self._decoded_weight().t(), x_bound, w_bound)
        y = rescale(acc, self.input_scale, self.weight_scale, self.bias, channel_dim=1)
        if self.relu:
            y = torch.relu(y)
        return y.reshape(*lead, self.geometry.out_channels).to(given.dtype)

    def _runs_recurrence(self, gates_in: torch.Tensor, h: torch.Tensor, c: torch.Tensor) -> bool:
        """Whether this layer can run as an LSTM's hidden product on the GPU kernels: float32 CUDA
        tensors on the current device, no gradients."""
        return not (h.dim() != 2 or not all(t.dtype == torch.float32 for t in (gates_in, h, c))
                    or not (gates_in.is_contiguous() and c.is_contiguous())
                    or (torch.is_grad_enabled() and (h.requires_grad or c.requires_grad or gates_in.requires_grad))
                    or not self._uses_kernel(h) or h.device.index != torch.cuda.current_device())

    def lstm_sequence(self, gates_in: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """As an LSTM's hidden product (nn/lstm.py), on the GPU: the whole recurrence over the input
        projections ``gates_in`` [T, B, 4H] in one kernel (kernels/cuda/bitserial_lstm.cu), returning
        (h of every step [T, B, H], the last h, the last c) with the numbers of :meth:`recurrence`'s
        steps. None where it does not apply (then :meth:`recurrence`)."""
        if self.relu or gates_in.dim() != 3 or not self._runs_recurrence(gates_in, h, c):
            return None
        fmt = self.input_format
        done = lstm_sequence(gates_in, h.contiguous(), c, self.bitlayers, self.active, self.input_scale, fmt.bits,
                             fmt.qmin, fmt.qmax, fmt.signed, self._scale(), self.bias, self.input_flags)
        if done is None:
            return None
        if self._flags_due():
            self._check_input_flags()
        hs, c_last = done
        return hs, hs[-1], c_last

    def recurrence(self, gates_in: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
        """As an LSTM's hidden product (nn/lstm.py), on the GPU: a function ``step(gates_in[t], c) -> (h, c)``
        that runs this layer on the planes of h and then the cell kernel, which writes the new h's planes
        for the next step (kernels/triton/lstm.py): two kernels a step instead of three, the same numbers.
        None where it does not apply (CPU, no kernel here, float32 only, no gradients)."""
        if not self._runs_recurrence(gates_in, h, c):
            return None
        from ..kernels.triton.lstm import lstm_cell  # triton: on CUDA machines only

        fmt, words, m = self.input_format, self.bitlayers.shape[-1], h.shape[0]
        cfg, module = layer_kernels(m, self.bitlayers, fmt.bits, h.device)
        current = list(input_planes(self._rows(h).contiguous(), self.input_scale, fmt.bits, fmt.qmin, fmt.qmax, words,
                                    self.input_flags, cfg, module))

        def step(gates_in_t: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            xplanes, xsum = current
            gates_hidden = binary_gemm(xplanes, xsum, self.bitlayers, self.active, fmt.bits, fmt.signed, self._scale(),
                                       self.bias, self.relu, cfg, module)
            planes = self.input_buffers(m, h.device)
            current[:] = planes.xplanes, planes.xsum
            h_new, c_new = lstm_cell(gates_in_t, gates_hidden, c, planes)
            if self._flags_due():
                self._check_input_flags()
            return h_new, c_new

        return step

    def describe(self) -> dict:
        return {**super().describe(), "active_bitlayers": self.active, "relu": self.relu}

    def extra_repr(self) -> str:
        g = self.geometry
        return (f"{g.in_channels}->{g.out_channels}, bitlayers={self.active}/{self.stored_bitlayers}, "
                f"act={self.input_format}" + (", relu" if self.relu else ""))


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
