"""Calibration: one histogram collector and four calibrators that pick a range."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from ..config import check_bits
from ..errors import CalibrationError
from .calibrators import CALIBRATOR_OPTIONS, CALIBRATORS, check_calibrator, check_options_type
from .histogram import DEFAULT_NUM_BINS, HistogramCollector


def amax_from_collector(collector: HistogramCollector, method: str, num_bits: int = 8, unsigned: bool = False,
                        **options) -> float:
    """The amax a calibrator picks for what ``collector`` has seen."""
    check_calibrator(method, options)
    options.pop("num_bins", None)
    counts, edges = collector.histogram()
    return CALIBRATORS[method](counts, edges, collector.amax, num_bits=num_bits, unsigned=unsigned, **options)


def compute_amax(samples, method: str, num_bits: int = 8, unsigned: bool = False, **options) -> float:
    """Return the range [-amax, amax] (or [0, amax] when ``unsigned``) that calibrator
    ``method`` ("max", "percentile", "mse" or "entropy") picks for ``samples``: a
    tensor or an iterable of tensors, all collected into one histogram of |x|.

    Options: ``percentile`` (percentile calibrator, default 99.99), ``start_bin``
    (mse and entropy, default 128), ``num_bins`` (histogram bins, default 2048).
    """
    check_bits(num_bits, "num_bits")
    check_calibrator(method, options)
    collector = HistogramCollector(options.pop("num_bins", DEFAULT_NUM_BINS), name="samples")
    for t in [samples] if isinstance(samples, torch.Tensor) else _iter(samples):
        collector.update(torch.as_tensor(t))
    if collector.empty:
        raise CalibrationError("compute_amax got no samples (an empty tensor or iterable)")
    return amax_from_collector(collector, method, num_bits, unsigned, **options)


def _iter(samples) -> Iterable:
    if not isinstance(samples, Iterable):
        raise CalibrationError(f"samples must be a tensor or an iterable of tensors, got {type(samples).__name__}")
    return samples


__all__ = ["CALIBRATORS", "CALIBRATOR_OPTIONS", "HistogramCollector", "amax_from_collector", "check_calibrator",
           "check_options_type", "compute_amax"]
