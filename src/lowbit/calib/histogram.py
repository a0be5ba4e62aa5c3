"""One histogram collector for every calibrator.

It counts |x| in bins of one fixed width over [0, running max]: the first batch
with a non-zero value sets the width to max|x| / num_bins; a later batch with a
larger max appends bins of the same width. Counts are exact integers, so the
histogram does not depend on batch order or device. It also keeps the running
signed min and max (for asymmetric ranges and to detect non-negative tensors).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ..errors import CalibrationError

DEFAULT_NUM_BINS = 2048
# An outlier thousands of times larger than the first batch's max would need
# millions of bins; past this many, adjacent bins merge in pairs (width doubles).
MAX_BINS = 1 << 16


class HistogramCollector:
    def __init__(self, num_bins: int = DEFAULT_NUM_BINS, name: str = "tensor"):
        if not isinstance(num_bins, int) or num_bins < 128:
            raise CalibrationError(f"num_bins={num_bins!r} is invalid: expected an integer >= 128")
        self.num_bins = num_bins
        self.name = name
        self.counts: torch.Tensor | None = None  # int64 [bins]
        self.width = 0.0
        self.amax = 0.0
        self.min = math.inf
        self.max = -math.inf
        self.zeros_before_width = 0  # values seen while every value so far was 0
        self.count = 0

    def update(self, x: torch.Tensor) -> None:
        x = x.detach()
        if x.numel() == 0:
            return
        if not x.dtype.is_floating_point:
            x = x.float()
        lo, hi = torch.aminmax(x.reshape(-1))
        lo, hi = float(lo), float(hi)
        if not (math.isfinite(lo) and math.isfinite(hi)):
            bad = int((~torch.isfinite(x)).sum())
            raise CalibrationError(f"{self.name}: {bad} of {x.numel()} calibration values are NaN or Inf")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.numel()
        amax = max(-lo, hi)
        self.amax = max(self.amax, amax)
        if self.counts is None:
            if amax == 0.0:
                self.zeros_before_width += x.numel()
                return
            self.width = amax / self.num_bins
            self.counts = torch.zeros(self.num_bins, dtype=torch.int64)
            self.counts[0] += self.zeros_before_width
        needed = math.ceil(amax / self.width)
        while needed > MAX_BINS:
            self._merge_pairs()
            needed = math.ceil(amax / self.width)
        if needed > len(self.counts):
            self.counts = torch.cat((self.counts, torch.zeros(needed - len(self.counts), dtype=torch.int64)))
        nbins = len(self.counts)
        idx = torch.clamp((x.abs().float() / self.width).long(), max=nbins - 1).reshape(-1)
        self.counts += torch.bincount(idx, minlength=nbins).cpu()

    def _merge_pairs(self) -> None:
        c = self.counts
        if len(c) % 2:
            c = torch.cat((c, c.new_zeros(1)))
        self.counts = c.reshape(-1, 2).sum(1)
        self.width *= 2

    @property
    def empty(self) -> bool:
        return self.count == 0

    def histogram(self) -> tuple[np.ndarray, np.ndarray]:
        """(counts float64 [n], bin edges float64 [n+1]); an all-zero tensor gives one bin [0, 0]."""
        if self.empty:
            raise CalibrationError(f"{self.name}: no calibration data was collected")
        if self.counts is None:
            return np.array([float(self.zeros_before_width)]), np.zeros(2)
        counts = self.counts.numpy().astype(np.float64)
        return counts, np.arange(len(counts) + 1, dtype=np.float64) * self.width
