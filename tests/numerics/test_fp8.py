import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.numerics import fake_fp8, fp8_scale, from_fp8, to_fp8


@pytest.mark.parametrize("fmt,top", [("e4m3", 448.0), ("e5m2", 57344.0)])
def test_saturates_never_inf_or_nan(fmt, top):
    x = torch.tensor([1e30, -1e30, float("inf"), float("-inf"), 3 * top, -3 * top, 1.0])
    q = to_fp8(x, 1.0, fmt)
    back = from_fp8(q, 1.0)
    assert torch.isfinite(back).all()
    assert back.tolist()[:6] == [top, -top, top, -top, top, -top]
    assert back[6] == 1.0


def test_nan_input_is_an_error():
    with pytest.raises(ValueError, match="weights has NaN"):
        to_fp8(torch.tensor([1.0, float("nan")]), 1.0, "e4m3", name="weights")


def test_scale_maps_amax_to_format_max():
    x = torch.randn(1000) * 7
    scale = fp8_scale(x.abs().max(), "e4m3")
    q = from_fp8(to_fp8(x, scale), scale)
    assert torch.isclose(q.abs().max(), x.abs().max(), rtol=1e-6)
    # e4m3 has 3 mantissa bits: relative error of a normal value <= 2^-4
    normal = x.abs() / scale > 2 ** -6
    assert ((q - x).abs()[normal] <= x.abs()[normal] * 2 ** -4 + 1e-7).all()


def test_fake_fp8_rounds_to_grid_and_keeps_dtype():
    x = torch.tensor([1.0, 1.0625, 1.124, 1.126, 17.0], dtype=torch.bfloat16)
    y = fake_fp8(x, 1.0)
    assert y.dtype == torch.bfloat16
    assert y.float().tolist() == [1.0, 1.0, 1.125, 1.125, 16.0]


def test_unknown_format():
    with pytest.raises(ConfigError, match="e4m3, e5m2"):
        to_fp8(torch.ones(2), 1.0, "e3m4")
