import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.numerics.fp8 import e4m3_grid
from lowbit.numerics.groupwise import (PROTECTIVE_RANGE, check_group_size, dequantize_groups, group_qparams, num_groups,
                                       protective_scale, quantize_groups)


@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("k,group", [(256, 64), (576, 128), (100, 100), (37, 8)])
def test_codes_cover_each_group_and_dequantize_exactly(symmetric, k, group):
    w = torch.randn(17, k, generator=torch.Generator().manual_seed(k)) * 3 + (0 if symmetric else 1)
    scale, zero = group_qparams(w, group, symmetric)
    assert scale.shape == zero.shape == (17, num_groups(k, group))
    assert torch.equal(scale, scale.half().float())  # stored as float16
    codes = quantize_groups(w, scale, zero, group)
    assert codes.shape == w.shape and codes.dtype == torch.uint8 and int(codes.max()) <= 15
    values = dequantize_groups(codes, scale, zero, group)
    # exact: the same products in float64
    padded = torch.nn.functional.pad(codes.double(), (0, num_groups(k, group) * group - k)).reshape(17, -1, group)
    exact = ((padded - zero.double()[..., None]) * scale.double()[..., None]).reshape(17, -1)[:, :k]
    assert torch.equal(values.double(), exact)
    # round to nearest: every weight within half a step of its value (symmetric: inside the range)
    step = scale.repeat_interleave(group, 1)[:, :k]
    assert ((w - values).abs() <= step / 2 + 1e-6 * w.abs()).all()
    if symmetric:
        assert torch.equal(zero, torch.full_like(zero, 8))


def test_a_shorter_last_group_takes_its_range_from_its_own_columns():
    w = torch.ones(1, 576)
    w[0, 512:] = 0.5  # the last group, 64 columns
    scale, _ = group_qparams(w, 128, symmetric=True)
    assert scale.shape == (1, 5)
    assert scale[0, -1] == pytest.approx(0.5 / 7, rel=2 ** -6) and scale[0, 0] == pytest.approx(1 / 7, rel=2 ** -6)


def test_group_size_values():
    assert check_group_size(0, 576) == 576 and check_group_size(128, 576) == 128 and check_group_size(1024, 576) == 576
    for bad in (-1, 1.5, True, "128"):
        with pytest.raises(ConfigError, match="group_size"):
            check_group_size(bad)


def test_protective_scale_is_a_power_of_two_that_keeps_weights_under_the_range():
    for amax in (1e-3, 0.3, 1.0, 415.9, 416.0, 417.0, 5e4):
        w = torch.tensor([[amax, -amax / 3]])
        s8 = float(protective_scale(w))
        assert s8 == 2.0 ** round(torch.log2(torch.tensor(s8)).item())
        assert PROTECTIVE_RANGE / 2 < amax / s8 <= PROTECTIVE_RANGE
    assert float(protective_scale(torch.zeros(3, 3))) == 1.0
    with pytest.raises(ValueError, match="inf or NaN"):
        protective_scale(torch.tensor([[float("nan")]]))


@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_values_after_the_protective_scale_fit_e4m3_without_saturating(symmetric):
    w = torch.randn(64, 512, generator=torch.Generator().manual_seed(1)) ** 3
    s8 = protective_scale(w)
    scale, zero = group_qparams(w / s8, 128, symmetric)
    values = dequantize_groups(quantize_groups(w / s8, scale, zero, 128), scale, zero, 128)
    assert values.abs().max() <= PROTECTIVE_RANGE + scale.max() / 2
    assert e4m3_grid(values).abs().max() < 448


def test_e4m3_grid_saturates_and_rounds_to_nearest_even():
    x = torch.tensor([1e6, -1e6, 448.0, 464.0, 1.0625, 1.1875, 0.0])
    assert e4m3_grid(x).tolist() == [448.0, -448.0, 448.0, 448.0, 1.0, 1.25, 0.0]
    assert torch.isfinite(e4m3_grid(torch.tensor([float("inf"), -float("inf")]))).all()
