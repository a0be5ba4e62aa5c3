import pytest
import torch

from lowbit.config import IntFormat, QuantSpec
from lowbit.errors import ConfigError
from lowbit.numerics import (count_nan, dequantize, fake_quantize, qparams_for, qparams_from_amax, quantize,
                             tensor_range)


@pytest.mark.parametrize("bits,signed,narrow,lo,hi", [
    (8, True, True, -127, 127), (8, True, False, -128, 127), (8, False, True, 0, 255),
    (4, True, True, -7, 7), (1, False, True, 0, 1), (16, True, True, -32767, 32767), (16, False, True, 0, 65535)])
def test_format_ranges(bits, signed, narrow, lo, hi):
    fmt = IntFormat(bits, signed, narrow)
    assert (fmt.qmin, fmt.qmax) == (lo, hi)
    info = torch.iinfo(fmt.storage_dtype)
    assert info.min <= lo and hi <= info.max


@pytest.mark.parametrize("bits", [0, 17, -3, 8.0, True, "8"])
def test_bits_out_of_range(bits):
    with pytest.raises(ConfigError, match="expected an integer from 1 to 16"):
        IntFormat(bits)


def test_signed_one_bit_is_rejected():
    with pytest.raises(ConfigError, match="at least 2 bits"):
        IntFormat(1, signed=True)


def test_symmetric_per_tensor_matches_definition():
    x = torch.randn(50, 7) * 3
    spec = QuantSpec(IntFormat(8))
    scale, zp = qparams_for(x, spec)
    assert torch.allclose(scale, x.abs().max() / 127)
    q = quantize(x, spec, scale, zp)
    assert q.dtype == torch.int8
    assert torch.equal(q, torch.clamp(torch.round(x / scale), -127, 127).to(torch.int8))
    assert int(q.abs().max()) == 127
    assert (dequantize(q, spec, scale, zp) - x).abs().max() <= scale / 2 + 1e-6


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_per_channel_any_axis(axis):
    x = torch.randn(5, 6, 7)
    spec = QuantSpec(IntFormat(6), granularity="channel", axis=axis)
    scale, _ = qparams_for(x, spec)
    assert scale.shape == (x.shape[axis],)
    expected = x.abs().movedim(axis, 0).reshape(x.shape[axis], -1).amax(1) / 31
    assert torch.allclose(scale, expected)
    q = quantize(x, spec, scale, torch.zeros_like(scale, dtype=torch.int32))
    # every channel reaches the top code
    assert torch.equal(q.abs().movedim(axis, 0).reshape(x.shape[axis], -1).amax(1), torch.full((x.shape[axis],), 31,
                                                                                              dtype=torch.int8))


@pytest.mark.parametrize("k,group", [(128, 32), (100, 32), (7, 4), (5, 8)])
def test_per_group_pads_the_last_group(k, group):
    x = torch.randn(3, k)
    spec = QuantSpec(IntFormat(4), granularity="group", axis=1, group_size=group)
    scale, zp = qparams_for(x, spec)
    groups = -(-k // group)
    assert scale.shape == (3, groups)
    for g in range(groups):
        chunk = x[:, g * group:(g + 1) * group]
        assert torch.allclose(scale[:, g], chunk.abs().amax(1) / 7)
    q = quantize(x, spec, scale, zp)
    assert q.shape == x.shape
    back = dequantize(q, spec, scale, zp)
    assert back.shape == x.shape
    assert ((back - x).abs() <= scale.repeat_interleave(group, 1)[:, :k] / 2 + 1e-6).all()


def test_asymmetric_zero_is_exact_and_range_covered():
    x = torch.rand(1000) * 5 - 0.5  # [-0.5, 4.5]
    spec = QuantSpec(IntFormat(8, signed=False), symmetric=False)
    scale, zp = qparams_for(x, spec)
    lo, hi = tensor_range(x, spec)
    assert torch.allclose(scale, (hi - lo) / 255)
    assert int(zp) == round(float(-lo / scale))
    q = quantize(x, spec, scale, zp)
    assert q.dtype == torch.uint8 and int(q.min()) == 0 and int(q.max()) == 255
    assert float(dequantize(torch.tensor(int(zp), dtype=torch.uint8), spec, scale, zp)) == 0.0


def test_zero_tensor_gets_unit_scale():
    spec = QuantSpec(IntFormat(8), granularity="channel")
    x = torch.zeros(3, 4)
    x[1] = 1.0
    scale, zp = qparams_for(x, spec)
    assert scale.tolist() == [1.0, torch.tensor(1 / 127).item(), 1.0]
    assert torch.equal(quantize(x, spec, scale, zp)[1], torch.full((4,), 127, dtype=torch.int8))


def test_rounding_is_half_to_even():
    spec = QuantSpec(IntFormat(8))
    x = torch.tensor([0.5, 1.5, 2.5, -0.5, -2.5])
    q = quantize(x, spec, torch.tensor(1.0), torch.tensor(0, dtype=torch.int32))
    assert q.tolist() == [0, 2, 2, 0, -2]


def test_fake_quant_clipped_ste_gradient():
    spec = QuantSpec(IntFormat(8))
    scale, zp = qparams_from_amax(spec, 2.0)
    x = torch.tensor([-3.0, -2.0, -0.3, 0.0, 1.7, 2.0, 2.5], requires_grad=True)
    y = fake_quantize(x, spec, scale, zp)
    y.backward(torch.arange(1.0, 8.0))
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 6.0, 0.0]
    assert torch.allclose(y.detach(), torch.clamp(torch.round(x.detach() / scale), -127, 127) * scale)


def test_fake_quant_equals_quantize_dequantize_per_group():
    spec = QuantSpec(IntFormat(3), granularity="group", axis=0, group_size=4)
    x = torch.randn(10, 3)
    scale, zp = qparams_for(x, spec)
    assert torch.equal(fake_quantize(x, spec, scale, zp), dequantize(quantize(x, spec, scale, zp), spec, scale, zp))


def test_spec_json_round_trip_and_validation():
    spec = QuantSpec(IntFormat(4, signed=False), symmetric=False, granularity="group", axis=1, group_size=64)
    assert QuantSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(ConfigError, match="granularity"):
        QuantSpec(IntFormat(8), granularity="row")
    with pytest.raises(ConfigError, match="group_size"):
        QuantSpec(IntFormat(8), granularity="group", group_size=0)


def test_count_nan_counts_exactly_and_is_not_fooled_by_infinities():
    inf = float("inf")
    assert count_nan(torch.tensor([1.0, inf, -inf])) == 0  # the sum is NaN, the count says none
    assert count_nan(torch.tensor([[float("nan"), 2.0], [inf, float("nan")]])) == 2
    assert count_nan(torch.zeros(0, 3)) == 0 and count_nan(torch.randn(50, 7)) == 0
    assert count_nan(torch.full((3,), float("nan"), dtype=torch.bfloat16)) == 3
