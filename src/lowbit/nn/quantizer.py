"""Activation quantizer: calibrates a range, then fake-quantizes with it."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from ..calib import HistogramCollector, amax_from_collector
from ..config import IntFormat, QuantSpec
from ..errors import ConfigError
from ..numerics import fake_quantize, fp8_activation_grid, fp8_scale, per_token_fp8_scale, qparams_from_range


def straight_through(x: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``q`` in the forward pass, the identity for gradients (the straight-through estimator)."""
    return x + (q.to(x.dtype) - x).detach()


class _CalibratedQuantizer(nn.Module):
    """While calibrating, records a histogram of what passes and returns its input unchanged (so
    calibration sees the float model); :meth:`finish_calibration` fixes the range with the calibrator,
    after which forward quantizes. Without ``collect`` there is nothing to calibrate."""

    def __init__(self, calibrator: str, calibrator_options: dict | None, name: str, collect: bool = True):
        super().__init__()
        self.calibrator = calibrator
        self.calibrator_options = dict(calibrator_options or {})
        self.name = name
        self.collector: HistogramCollector | None = (
            HistogramCollector(self.calibrator_options.get("num_bins", 2048), name=name) if collect else None)
        self.amax: float | None = None

    @property
    def calibrating(self) -> bool:
        return self.collector is not None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.collector is not None:
            self.collector.update(x)
            return x
        return self.quantize(x)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def finish_calibration(self) -> None:
        c = self.collector
        if c is None:
            return
        if c.empty:
            raise RuntimeError(f"{self.name}: no data reached this layer during calibration")
        self.set_range(c)
        self.collector = None
        if self.amax == 0.0:
            warnings.warn(f"{self.name}: every calibration value was 0; the range falls back to scale 1",
                          stacklevel=2)

    def set_range(self, collector: HistogramCollector) -> None:
        """Fix ``amax`` and the scale from what calibration recorded."""
        raise NotImplementedError


class ActivationQuantizer(_CalibratedQuantizer):
    """Per-tensor activation quantizer with a range chosen by a calibrator.

    While calibrating it only records a histogram of what passes and returns its
    input unchanged (calibration sees the float model). :meth:`finish_calibration`
    fixes the range; from then on forward fake-quantizes.

    ``unsigned="auto"`` switches to an unsigned format of the same bits when every
    calibration value was >= 0 (e.g. after a ReLU), doubling the resolution.
    Asymmetric specs take [max(min, -amax), amax]: the calibrator's amax bounds the
    larger side and the running min the other.
    """

    def __init__(self, spec: QuantSpec, calibrator: str = "entropy", calibrator_options: dict | None = None,
                 unsigned: bool | str = False, name: str = "input"):
        super().__init__(calibrator, calibrator_options, name)
        self.spec = spec
        self.unsigned = unsigned
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("zero_point", torch.zeros((), dtype=torch.int32))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, self.spec, self.scale, self.zero_point)

    def set_range(self, c: HistogramCollector) -> None:
        nonnegative = c.min >= 0
        if self.unsigned is True or (self.unsigned == "auto" and nonnegative):
            self.spec = QuantSpec(IntFormat(self.spec.fmt.bits, signed=False), self.spec.symmetric,
                                  self.spec.granularity, self.spec.axis, self.spec.group_size)
        fmt = self.spec.fmt
        # The calibrator models the grid the range is cut into: 2^bits levels when the
        # format is unsigned, or asymmetric over data that never goes below 0.
        levels_unsigned = not fmt.signed or (not self.spec.symmetric and nonnegative)
        amax = amax_from_collector(c, self.calibrator, fmt.bits, unsigned=levels_unsigned, **self.calibrator_options)
        lo = -amax if self.spec.symmetric else max(c.min, -amax)
        scale, zero_point = qparams_from_range(self.spec, torch.tensor(lo), torch.tensor(amax))
        self.scale.copy_(scale)
        self.zero_point.copy_(zero_point)
        self.amax = amax

    def extra_repr(self) -> str:
        state = "calibrating" if self.calibrating else f"amax={self.amax:.6g}"
        return f"{self.spec.describe()}, calibrator={self.calibrator}, {state}"


FP8_CALIBRATORS = ("max", "percentile")


class FP8ActivationQuantizer(_CalibratedQuantizer):
    """FP8 E4M3 activations: a static per-tensor scale (amax / 448, amax from the max or percentile
    calibrator) or, with ``dynamic``, a scale per token (row) computed at run time from its own max."""

    def __init__(self, dynamic: bool, calibrator: str = "max", calibrator_options: dict | None = None,
                 name: str = "input"):
        if not dynamic and calibrator not in FP8_CALIBRATORS:
            raise ConfigError(f"{name}: FP8 activations take the {' or '.join(FP8_CALIBRATORS)} calibrator, not "
                              f"{calibrator!r} (mse and entropy model an integer grid)")
        super().__init__("dynamic" if dynamic else calibrator, None if dynamic else calibrator_options, name,
                         collect=not dynamic)
        self.dynamic = dynamic
        self.register_buffer("scale", torch.ones(()))

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        scale = per_token_fp8_scale(x) if self.dynamic else self.scale
        return straight_through(x, fp8_activation_grid(x, scale, name=self.name) * scale)

    def set_range(self, c: HistogramCollector) -> None:
        self.amax = amax_from_collector(c, self.calibrator, 8, **self.calibrator_options)
        self.scale.copy_(fp8_scale(self.amax, "e4m3"))

    def extra_repr(self) -> str:
        state = "per-token" if self.dynamic else ("calibrating" if self.calibrating else f"amax={self.amax:.6g}")
        return f"e4m3, {state}"


class BF16ActivationRounding(_CalibratedQuantizer):
    """Weight-only schemes' activations: rounded to bfloat16, as the kernel reads them; nothing to calibrate."""

    def __init__(self, name: str = "input"):
        super().__init__("none", None, name, collect=False)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        return straight_through(x, x.to(torch.bfloat16))
