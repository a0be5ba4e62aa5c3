import pytest
import torch
from torch import nn

import lowbit
from lowbit.nn.mixed_linear import FP8Linear, W4A8Linear, W4A16Linear
from lowbit.numerics import unpack_int4

GEN = torch.Generator().manual_seed(0)


def _mlp(k=200, hidden=96, out=40):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(k, hidden), nn.ReLU(), nn.Linear(hidden, out))


def _calib(k=200):
    return [torch.randn(16, k, generator=GEN) for _ in range(3)]


def _independent_w4a8(layer: W4A8Linear, x: torch.Tensor) -> torch.Tensor:
    """W4A8 written out again from the stored tensors, in float64 where exact."""
    k = layer.geometry.in_channels
    g = layer.options["group_size"]
    codes = unpack_int4(layer.qweight, k, signed=False).double()
    col_group = torch.arange(k) // g
    values = (codes - layer.group_zero.double()[:, col_group]) * layer.group_scale.double()[:, col_group]
    w8 = values.float().to(torch.float8_e4m3fn).double()
    if layer.options["activation"] == "dynamic":
        sx = (x.abs().amax(-1, keepdim=True) / 448).double()
    else:
        sx = layer.input_scale.double()
    xq = (x.float() * (1 / sx.float())).clamp(-448, 448).to(torch.float8_e4m3fn).double()
    y = (xq @ w8.t()) * (sx * layer.weight_scale.double())
    return (y + layer.bias.double()).float()


@pytest.mark.parametrize("options", [{}, {"activation": "dynamic"}, {"symmetric": False, "group_size": 64},
                                     {"group_size": 0}, {"group_size": 48}])
def test_w4a8_layer_computes_its_stated_formula(options):
    q = lowbit.quantize(_mlp(), "w4a8", _calib(), progress=False, **options)
    assert isinstance(q[0], W4A8Linear) and isinstance(q[2], W4A8Linear)
    x = torch.randn(9, 200, generator=GEN)
    torch.testing.assert_close(q[0](x), _independent_w4a8(q[0], x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("scheme,cls", [("w4a16", W4A16Linear), ("w4a8", W4A8Linear), ("fp8", FP8Linear)])
def test_fake_quantized_model_equals_the_deployed_one_and_survives_a_checkpoint(tmp_path, scheme, cls):
    model = _mlp()
    prepared = lowbit.prepare(model, scheme, _calib(), progress=False)
    deployed = lowbit.convert(prepared)
    assert isinstance(deployed[2], cls)
    x = torch.randn(7, 200, generator=GEN)
    torch.testing.assert_close(prepared(x), deployed(x), rtol=1e-5, atol=1e-5)
    ref = model(x)
    assert float((deployed(x) - ref).norm() / ref.norm()) < (0.08 if scheme == "fp8" else 0.15)
    lowbit.save(deployed, tmp_path / "m.safetensors")
    again = lowbit.load(tmp_path / "m.safetensors", _mlp())
    assert torch.equal(again(x), deployed(x))


def test_int4_weights_take_a_quarter_of_bf16_bytes():
    q = lowbit.quantize(_mlp(k=512, hidden=1024), "w4a8", _calib(512), progress=False)
    layer = q[0]
    assert layer.qweight.numel() * layer.qweight.element_size() == 1024 * 512 // 2
    assert layer.group_scale.dtype == torch.float16 and layer.group_scale.shape == (1024, 4)


def test_fp8_activations_saturate_instead_of_overflowing():
    q = lowbit.quantize(_mlp(), "w4a8", _calib(), progress=False)
    x = torch.randn(4, 200, generator=GEN)
    x[0, 0] = 1e30  # far beyond the calibrated range
    y = q(x)
    assert torch.isfinite(y).all()
    x[1, 1] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        q(x)
    fp8 = lowbit.quantize(_mlp(), "fp8", _calib(), progress=False)
    assert torch.isfinite(fp8(torch.full((2, 200), 3e38))).all()
