"""Each calibrator is checked by its own objective, computed here independently."""

import math

import numpy as np
import pytest
import torch

from lowbit.calib import HistogramCollector, compute_amax
from lowbit.errors import CalibrationError, ConfigError


def _data(seed=0, n=200_000):
    g = torch.Generator().manual_seed(seed)
    # heavy-tailed: a Laplace body (inverse CDF of seeded uniforms) plus rare large outliers
    u = torch.rand(n, generator=g, dtype=torch.float64) - 0.5
    body = (-torch.sign(u) * torch.log1p(-2 * u.abs())).float()
    spikes = torch.randn(n // 1000, generator=g) * 40
    return torch.cat([body, spikes])


def test_max_is_running_max():
    a, b = torch.randn(100), torch.randn(50) * 3
    assert compute_amax([a, b], "max") == pytest.approx(float(torch.cat([a, b]).abs().max()))


@pytest.mark.parametrize("p", [90.0, 99.0, 99.9, 99.99])
def test_percentile_coverage(p):
    x = _data(1)
    amax = compute_amax(x, "percentile", percentile=p)
    coverage = float((x.abs() <= amax).float().mean()) * 100
    # within the mass of a fraction of one bin of the 2048
    assert coverage == pytest.approx(p, abs=0.02)


def test_percentile_100_is_max_and_bad_values_rejected():
    x = torch.randn(1000)
    assert compute_amax(x, "percentile", percentile=100) == pytest.approx(float(x.abs().max()))
    for bad in (0, -1, 100.5, "99"):
        with pytest.raises(ConfigError, match="percentile"):
            compute_amax(x, "percentile", percentile=bad)


def _hist(x, bins=2048):
    c = HistogramCollector(bins)
    c.update(x)
    return c.histogram()


def _kl_objective(counts, i, levels):
    """KL(P||Q) for candidate i, written out plainly (design.md 2.1)."""
    bins = counts.copy()
    bins[0] = bins[1]
    p = list(bins[:i])
    p[-1] += bins[i:].sum()
    q = [0.0] * i
    for level in range(levels):
        members = [j for j in range(i) if j * levels // i == level]
        nonempty = [j for j in members if bins[j] > 0]
        for j in nonempty:
            q[j] = sum(bins[j] for j in members) / len(nonempty)
    p, q = np.array(p) / sum(p), np.array(q) / sum(q)
    total = 0.0
    for pj, qj in zip(p, q):
        if pj > 0:
            if qj == 0:
                return math.inf
            total += pj * math.log(pj / qj)
    return total


@pytest.mark.parametrize("unsigned", [False, True])
def test_entropy_minimises_kl(unsigned):
    x = _data(2, 50_000).abs() if unsigned else _data(2, 50_000)
    counts, edges = _hist(x, bins=256)  # few bins keep the plain objective fast
    levels = 256 if unsigned else 128
    amax = compute_amax(x, "entropy", unsigned=unsigned, num_bins=256)
    chosen = int(round(amax / edges[1]))
    kls = {i: _kl_objective(counts, i, levels) for i in range(128, 257)}
    best = min(kls.values())
    assert kls[chosen] == pytest.approx(best, rel=1e-9, abs=1e-12)
    assert chosen == max(i for i, v in kls.items() if v <= best * (1 + 1e-9) + 1e-15)  # ties: the last


def test_entropy_clips_outliers_on_real_histogram():
    x = _data(3)
    amax = compute_amax(x, "entropy")
    assert amax < 0.5 * float(x.abs().max())


def _empirical_mse(x, amax, qmax=127):
    s = amax / qmax
    return float(((torch.clamp(torch.round(x / s), -qmax, qmax) * s - x) ** 2).mean())


@pytest.mark.parametrize("unsigned", [False, True])
def test_mse_minimises_expected_squared_error(unsigned):
    x = _data(4)
    if unsigned:
        x = x.abs()
    qmax = 255 if unsigned else 127
    counts, edges = _hist(x)
    amax = compute_amax(x, "mse", unsigned=unsigned)
    candidates = edges[128::32]
    best = min(_empirical_mse(x.double(), float(a), qmax) for a in candidates)
    assert _empirical_mse(x.double(), amax, qmax) <= best * 1.01
    assert amax < float(x.abs().max())


def test_histogram_extends_with_same_width():
    c = HistogramCollector(2048)
    c.update(torch.tensor([1.0, -0.5]))
    width = c.width
    c.update(torch.tensor([3.0]))
    counts, edges = c.histogram()
    assert c.width == width and len(counts) == 6144
    assert edges[1] == pytest.approx(1 / 2048)
    assert counts.sum() == 3 and counts[-1] == 1


def test_histogram_counts_leading_zero_batches():
    c = HistogramCollector(2048)
    c.update(torch.zeros(10))
    c.update(torch.tensor([2.0, 0.0]))
    counts, _ = c.histogram()
    assert counts[0] == 11 and counts.sum() == 12


def test_histogram_merges_bins_past_the_limit():
    c = HistogramCollector(2048)
    c.update(torch.tensor([1.0]))
    c.update(torch.tensor([1e6]))
    counts, edges = c.histogram()
    assert len(counts) <= 1 << 16 and counts.sum() == 2 and edges[-1] >= 1e6


def test_deterministic():
    x = _data(5)
    assert [compute_amax(x, m) for m in ("percentile", "mse", "entropy")] == \
           [compute_amax(x.clone(), m) for m in ("percentile", "mse", "entropy")]


def test_bad_input():
    with pytest.raises(CalibrationError, match="NaN or Inf"):
        compute_amax(torch.tensor([1.0, float("nan")]), "max")
    with pytest.raises(CalibrationError, match="no samples"):
        compute_amax([], "entropy")
    with pytest.raises(ConfigError, match="max, percentile, mse, entropy"):
        compute_amax(torch.ones(3), "kl")
    with pytest.raises(ConfigError, match="num_bits=9.5"):
        compute_amax(torch.ones(3), "max", num_bits=9.5)
    with pytest.raises(ConfigError, match="takes no option percentile"):
        compute_amax(torch.ones(3), "entropy", percentile=99.0)


def test_all_zero_data():
    assert compute_amax(torch.zeros(100), "entropy") == 0.0
    assert compute_amax(torch.zeros(100), "percentile") == 0.0


@pytest.mark.parametrize("method, options, message", [
    ("mse", {"start_bin": -1}, "start_bin=-1 is invalid: expected an integer from 1 to num_bins - 1 \\(2047\\)"),
    ("entropy", {"start_bin": 5000}, "start_bin=5000 is invalid"),
    ("entropy", {"start_bin": 300, "num_bins": 256}, "start_bin=300 is invalid: .* \\(255\\)"),
    ("entropy", {"start_bin": "x"}, "start_bin='x' is invalid"),
    ("percentile", {"percentile": 150}, "percentile=150 is invalid"),
    ("max", {"num_bins": True}, "num_bins=True is invalid"),
    ("max", [1], "calibrator_options=\\[1\\] is invalid"),
])
def test_option_values_are_checked_before_calibration(method, options, message):
    from lowbit.calib import check_calibrator

    with pytest.raises(ConfigError, match=message):
        check_calibrator(method, options)
