"""The four calibrators: each picks amax for a histogram of |x| (design.md 2.1).

Every function takes (counts, edges, running_max) from a HistogramCollector plus
the target format (num_bits, unsigned) and returns amax as a Python float.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import ConfigError
from .histogram import DEFAULT_NUM_BINS


def _levels(num_bits: int, unsigned: bool) -> int:
    """Magnitude levels of the quantized grid including 0: 128 for s8, 256 for u8."""
    return 1 << (num_bits - 1 + int(unsigned))


def max_amax(counts, edges, running_max, num_bits=8, unsigned=False) -> float:
    """The running max of |x|."""
    return float(running_max)


def _check_percentile(percentile) -> None:
    if not isinstance(percentile, (int, float)) or isinstance(percentile, bool) or not 0 < percentile <= 100:
        raise ConfigError(f"percentile={percentile!r} is invalid: expected a number in (0, 100]")


def percentile_amax(counts, edges, running_max, num_bits=8, unsigned=False, percentile=99.99) -> float:
    """The p-th percentile of |x|: where the cumulative histogram reaches p% of the
    mass, interpolated linearly inside the bin it crosses (mass is taken as uniform
    within a bin), never above the running max."""
    _check_percentile(percentile)
    if percentile == 100:
        return float(running_max)
    cdf = np.cumsum(counts)
    target = cdf[-1] * percentile / 100.0
    i = int(np.searchsorted(cdf, target, side="left"))  # first bin whose cumulative count reaches target
    before = cdf[i - 1] if i > 0 else 0.0
    frac = (target - before) / counts[i]
    amax = edges[i] + frac * (edges[i + 1] - edges[i])
    return float(min(amax, running_max))


def _expected_sq_error_cdf(u: np.ndarray, qmax: int) -> np.ndarray:
    """F(u) = integral_0^u (fq(t) - t)^2 dt in units of the step (fq rounds to the
    nearest of 0..qmax, clipping above qmax). With k = min(round(u), qmax):
    F(u) = (2k - 1)/24 + ((u - k)^3 + 1/8) / 3 (full cells of error 1/12 below k,
    half a cell at 0, and the partial cell, which past qmax is the clipping error)."""
    k = np.minimum(np.floor(u + 0.5), qmax)
    return (2 * k - 1) / 24.0 + ((u - k) ** 3 + 0.125) / 3.0


def mse_amax(counts, edges, running_max, num_bits=8, unsigned=False, start_bin=128) -> float:
    """The bin edge (searched from bin ``start_bin`` upward) minimising the expected
    squared error of fake-quantizing the histogram's mass, each bin's mass spread
    uniformly over the bin (the error integral is exact, not a bin-centre sample).
    Ties: the smallest threshold."""
    qmax = _levels(num_bits, unsigned) - 1
    n = len(counts)
    if n <= start_bin:
        return float(edges[-1])
    lo, hi = edges[:-1], edges[1:]
    width = hi - lo
    best, best_amax = np.inf, float(edges[-1])
    for i in range(start_bin, n + 1):
        amax = edges[i]
        step = amax / qmax
        err = (_expected_sq_error_cdf(hi / step, qmax) - _expected_sq_error_cdf(lo / step, qmax)) * step**3 / width
        total = float(np.dot(counts, err))
        if total < best:
            best, best_amax = total, float(amax)
    return best_amax


def entropy_amax(counts, edges, running_max, num_bits=8, unsigned=False, start_bin=128) -> float:
    """TensorRT's KL-divergence calibration, as design.md 2.1 states it.

    bins[0] is set to bins[1] (the spike of exact zeros says nothing about the
    range). For each candidate i from start_bin to the number of bins: P is bins[0:i]
    with the mass of every bin >= i added to P[i-1]; Q merges bins[0:i] into L levels
    (source bin j -> level floor(j*L/i)), each level's count spread evenly over its
    non-empty source bins (empty ones stay 0). Both are normalised and the i with the
    smallest KL(P||Q) wins (ties: the last); amax = edges[i], the upper edge of the
    last bin kept in P.
    """
    levels = _levels(num_bits, unsigned)
    bins = np.array(counts, dtype=np.float64)
    n = len(bins)
    if n <= start_bin:
        return float(edges[-1])
    if n > 1:
        bins[0] = bins[1]
    tail = np.concatenate((np.cumsum(bins[::-1])[::-1], [0.0]))  # tail[i] = sum(bins[i:])
    best_kl, best_i = np.inf, n
    for i in range(start_bin, n + 1):
        p = bins[:i].copy()
        p[-1] += tail[i]
        src = bins[:i]
        nonempty = src > 0
        level = (np.arange(i) * levels) // i
        level_mass = np.bincount(level, weights=src, minlength=levels)
        level_nonempty = np.bincount(level, weights=nonempty, minlength=levels)
        q = np.where(nonempty, level_mass[level] / np.maximum(level_nonempty[level], 1), 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if p_sum == 0 or q_sum == 0:
            continue
        p, q = p / p_sum, q / q_sum
        support = p > 0
        if np.any(q[support] == 0):
            kl = np.inf
        else:
            kl = float(np.sum(p[support] * np.log(p[support] / q[support])))
        if kl <= best_kl:
            best_kl, best_i = kl, i
    return float(edges[best_i])


CALIBRATORS = {
    "max": max_amax,
    "percentile": percentile_amax,
    "mse": mse_amax,
    "entropy": entropy_amax,
}
# Options each calibrator accepts besides the format.
CALIBRATOR_OPTIONS = {"max": (), "percentile": ("percentile",), "mse": ("start_bin",), "entropy": ("start_bin",)}


def check_options_type(options) -> None:
    """calibrator_options must be None or a mapping (checked before it is merged with a scheme's defaults)."""
    if options is not None and not isinstance(options, Mapping):
        raise ConfigError(f"calibrator_options={options!r} is invalid: expected a dict such as {{'percentile': 99.9}}")


def check_calibrator(method: str, options: dict | None = None) -> None:
    """Raise ConfigError for an unknown calibrator, an option it does not take, or a value out of range
    (checked before calibration runs, not after it)."""
    if not isinstance(method, str) or method not in CALIBRATORS:
        raise ConfigError(f"unknown calibrator {method!r}: expected one of {', '.join(CALIBRATORS)}")
    check_options_type(options)
    unknown = set(options or ()) - set(CALIBRATOR_OPTIONS[method]) - {"num_bins"}
    if unknown:
        valid = ", ".join(("num_bins",) + CALIBRATOR_OPTIONS[method])
        raise ConfigError(f"calibrator {method!r} takes no option {', '.join(sorted(unknown))}: valid options: {valid}")
    options = options or {}
    num_bins = options.get("num_bins", DEFAULT_NUM_BINS)
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 128:
        raise ConfigError(f"num_bins={num_bins!r} is invalid: expected an integer >= 128")
    if "start_bin" in options:
        start = options["start_bin"]
        if isinstance(start, bool) or not isinstance(start, int) or not 1 <= start < num_bins:
            raise ConfigError(f"start_bin={start!r} is invalid: expected an integer from 1 to num_bins - 1 "
                              f"({num_bins - 1}), the first histogram bin {method} tries as the range")
    if "percentile" in options:
        _check_percentile(options["percentile"])
