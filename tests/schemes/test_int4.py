"""The int4 scheme: W4A4 with INT8 edges, percentile calibration, packed weights."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.models import SmallResNet
from lowbit.nn import IntegerLayer


def _model():
    torch.manual_seed(0)
    return SmallResNet(10, 1, (8, 16, 16), (1, 1, 1), norm="batch").eval()


def _calib(n=2):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(8, 1, 28, 28, generator=g) for _ in range(n)]


def test_layer_policy_keeps_the_edges_int8():
    q = lowbit.quantize(_model(), "int4", _calib())
    layers = dict(lowbit.nn.quantized_layers(q))
    names = list(layers)
    first, last, middle = layers[names[0]], layers[names[-1]], layers[names[1]]
    assert names[0] == "conv1" and names[-1] == "fc"
    assert first.weight_spec.fmt.name == "s8" and first.input_spec.fmt.name == "s8" and not first.packed
    assert last.weight_spec.fmt.name == "s8" and last.input_spec.fmt.name == "u7"  # after ReLU + pooling
    assert middle.weight_spec.fmt.name == "s4" and middle.packed and middle.qweight.dtype == torch.uint8
    assert middle.input_spec.fmt.name == "u4"  # after a ReLU
    assert all(layers[n].info["calibrator"] == "percentile" for n in names)
    assert int(middle.weight_codes().abs().max()) == 7


def test_overrides_win_over_the_policy_and_the_policy_can_be_dropped():
    q = lowbit.quantize(_model(), "int4", _calib(), overrides={"fc": {"weight_bits": 4, "act_bits": 4}})
    assert q.fc.weight_spec.fmt.bits == 4 and q.conv1.weight_spec.fmt.bits == 8
    q = lowbit.quantize(_model(), "int4", _calib(), int8_edges=False)
    assert q.conv1.weight_spec.fmt.bits == 4 and q.fc.weight_spec.fmt.bits == 4
    with pytest.raises(ConfigError, match="int8_edges"):
        lowbit.quantize(_model(), "int4", _calib(), int8_edges="yes")


def test_default_calibrator_is_percentile_99_999():
    model = _model()
    q = lowbit.quantize(model, "int4", _calib())
    p = lowbit.quantize(model, "int4", _calib(), "percentile", calibrator_options={"percentile": 99.999})
    e = lowbit.quantize(model, "int4", _calib(), "max")
    assert torch.equal(q.layer1[0].conv2.input_scale, p.layer1[0].conv2.input_scale)
    assert not torch.equal(q.layer1[0].conv2.input_scale, e.layer1[0].conv2.input_scale)


def test_packed_weights_halve_checkpoint_and_memory(tmp_path):
    model = _model()
    q8 = lowbit.quantize(model, "int8", _calib(), "max")
    q4 = lowbit.quantize(model, "int4", _calib(), "max", int8_edges=False)
    w8 = sum(m.qweight.numel() * m.qweight.element_size() for _, m in lowbit.nn.quantized_layers(q8))
    w4 = sum(m.qweight.numel() * m.qweight.element_size() for _, m in lowbit.nn.quantized_layers(q4))
    assert w4 <= w8 / 2 + 8 * len(list(lowbit.nn.quantized_layers(q4)))  # odd K rounds up by at most a byte/row
    lowbit.save(q8, tmp_path / "q8.safetensors")
    lowbit.save(q4, tmp_path / "q4.safetensors")
    s8, s4 = (tmp_path / "q8.safetensors").stat().st_size, (tmp_path / "q4.safetensors").stat().st_size
    assert s8 - s4 >= 0.45 * w8  # the saved bytes are the weight bytes
    loaded = lowbit.load(tmp_path / "q4.safetensors", _model())
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), q4(x))
    assert isinstance(loaded.layer2[0].conv1, IntegerLayer) and loaded.layer2[0].conv1.packed


def test_packed_codes_compute_what_unpacked_ones_do():
    """An odd reduction size (3x3x3 = 27) pads the last nibble; the reference uses the unpacked codes."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 5, 3), nn.ReLU(), nn.Flatten(), nn.Linear(5 * 4 * 4, 7))
    calib = [torch.randn(4, 3, 6, 6)]
    q = lowbit.quantize(model, "int4", calib, "max", int8_edges=False)
    conv = q[0]
    assert conv.qweight.shape == (5, 14) and conv.weight_codes().shape == (5, 3, 3, 3)
    fake = lowbit.prepare(model, "int4", calib, "max", int8_edges=False)
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.allclose(q(x), fake.eval()(x), rtol=1e-4, atol=1e-4)
