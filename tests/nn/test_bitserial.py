import copy
import warnings

import pytest
import torch

import lowbit
from lowbit.errors import ConfigError
from lowbit.kernels.reference import bitserial_acc, popcount32
from lowbit.nn.bitserial import BitSerialLinear
from lowbit.numerics.bitlayers import input_planes


def _model(k_in=77, hidden=130, out=9, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(k_in, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, out))


def _quantized(weight_bits=6, act_bits=8, seed=0):
    model = _model(seed=seed)
    data = [torch.randn(32, 77, generator=torch.Generator().manual_seed(i)) for i in range(4)]
    return model, lowbit.quantize(model, "bitserial", calib_data=data, weight_bits=weight_bits, act_bits=act_bits)


def test_popcount32():
    words = torch.tensor([0, 1, -1, 0x0F0F0F0F, -(1 << 31), 12345], dtype=torch.int32)
    assert popcount32(words).tolist() == [0, 1, 32, 16, 1, bin(12345).count("1")]


@pytest.mark.parametrize("weight_bits,act_bits,k", [(6, 8, 6), (6, 8, 2), (1, 8, 1), (4, 16, 3), (9, 5, 7)])
def test_layer_equals_the_literal_popcount_arithmetic(weight_bits, act_bits, k):
    """The layer's integers (one exact matmul) = the AND + popcount + shift-and-add of the kernels."""
    _, q = _quantized(weight_bits, act_bits)
    layer = q[0]
    layer.set_bitlayers(k)
    x = torch.randn(6, 77, generator=torch.Generator().manual_seed(9))
    xq = layer.quantize_input(x)
    planes = input_planes(xq, act_bits, signed=layer.input_format.signed)
    literal = bitserial_acc(layer.bitlayers, planes, layer.input_format.signed, k)
    expected = (xq.double() @ layer.weight_values().double().t()).long()
    assert torch.equal(literal, expected)
    y = literal.float() * (layer.input_scale * layer.weight_scale) + layer.bias
    assert layer.relu  # the model's ReLU after it, folded in
    assert torch.equal(layer(x), torch.relu(y))


def test_a_relu_after_a_bit_serial_layer_is_folded_into_it_and_stays_folded_through_a_checkpoint(tmp_path):
    model, q = _quantized()
    assert q[0].relu and isinstance(q[1], torch.nn.Identity) and not q[2].relu
    assert "relu" in repr(q[0])
    x = torch.randn(5, 77, generator=torch.Generator().manual_seed(3))
    unfolded = torch.nn.Sequential(q[0], torch.nn.ReLU(), q[2])
    expected = unfolded(x)  # ReLU after a layer that applies it: the same (idempotent)
    assert torch.equal(q(x), expected)
    lowbit.save(q, tmp_path / "mlp.safetensors")
    loaded = lowbit.load(tmp_path / "mlp.safetensors", _model(seed=1))
    assert loaded[0].relu and isinstance(loaded[1], torch.nn.Identity)
    assert torch.equal(loaded(x), expected)


def test_a_bit_serial_layer_is_linked_to_the_one_after_it_through_copies_and_checkpoints(tmp_path):
    """The link lets the GPU kernel of q[0] write q[2]'s input planes (tested on the GPU in
    tests/kernels/cuda/test_bitserial.py); it is no submodule, and the CPU path leaves nothing behind."""
    _, q = _quantized()
    assert q[0]._next_layer is q[2] and q[2]._next_layer is None
    assert [name for name, _ in q[0].named_modules()] == [""]
    copied = copy.deepcopy(q)
    assert copied[0]._next_layer is copied[2]
    x = torch.randn(3, 77)
    assert torch.equal(q(x), copied(x)) and q[2]._handoff is None
    lowbit.save(q, tmp_path / "mlp.safetensors")
    loaded = lowbit.load(tmp_path / "mlp.safetensors", _model(seed=1))
    assert loaded[0]._next_layer is loaded[2]
    # Anything but nn.Identity between them (here a Tanh), or another layer type after: no link.
    apart = torch.nn.Sequential(q[0], torch.nn.Tanh(), q[2])
    assert lowbit.nn.link_layers(apart) == [] and q[0]._next_layer is None
    assert lowbit.nn.link_layers(torch.nn.Sequential(q[0], torch.nn.Identity(), q[2])) == ["0"]
    assert not q[2].link_next(torch.nn.Linear(9, 4)) and not q[0].link_next(copied[0])  # 130 outputs, 77 inputs


def test_all_bitlayers_match_the_fake_quantized_model_and_fewer_cost_accuracy():
    model, q = _quantized(8, 16)
    fake = lowbit.prepare(model, "bitserial", calib_data=[torch.randn(32, 77, generator=torch.Generator().manual_seed(i))
                                                           for i in range(4)], weight_bits=8, act_bits=16)
    x = torch.randn(20, 77, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(q(x), fake(x), rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        ref = model(x)
    errors = []
    for k in (8, 4, 2, 1):
        lowbit.set_bitlayers(q, k)
        errors.append(float((q(x) - ref).norm() / ref.norm()))
    assert errors == sorted(errors) and errors[0] < 0.01 < errors[-1]


def test_set_bitlayers_per_layer_changes_no_weights_and_rejects_bad_requests():
    _, q = _quantized(6, 8)
    stored = q[0].bitlayers.clone()
    assert lowbit.set_bitlayers(q, {"2": 3}) == {"0": 6, "2": 3}
    assert q[0].bitlayers.data_ptr() == q[0].bitlayers.data_ptr() and torch.equal(q[0].bitlayers, stored)
    with pytest.raises(ConfigError, match="layer '0': 7 bitlayers asked for, but the layer stores 6"):
        lowbit.set_bitlayers(q, 7)
    assert q[2].active == 3  # a refused request changes nothing
    with pytest.raises(ConfigError, match="matches no bit-serial layer"):
        lowbit.set_bitlayers(q, {"fc*": 2})
    with pytest.raises(ConfigError, match="no bit-serial layers"):
        lowbit.set_bitlayers(_model(), 2)


def test_saturation_is_counted_and_warned_once_naming_the_layer():
    _, q = _quantized(4, 8)
    x = torch.full((3, 77), 1000.0)
    with pytest.warns(UserWarning, match="layer '0': 231 input values fell outside the 8-bit .* saturated"):
        q(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        q(x)
    assert q[0].saturated == 462
    with pytest.raises(ValueError, match="layer '0': 1 NaN input value"):
        q(torch.where(torch.arange(77) == 5, float("nan"), 0.0)[None])


def test_checkpoint_keeps_bitlayers_and_the_active_count(tmp_path):
    model, q = _quantized(5, 8)
    lowbit.set_bitlayers(q, {"0": 2})
    path = tmp_path / "bs.safetensors"
    lowbit.save(q, path)
    loaded = lowbit.load(path, _model())
    assert isinstance(loaded[0], BitSerialLinear) and loaded[0].active == 2 and loaded[2].active == 5
    x = torch.randn(4, 77, generator=torch.Generator().manual_seed(1))
    assert torch.equal(loaded(x), q(x))


def test_bad_options_are_clear_errors():
    model = _model()
    with pytest.raises(ConfigError, match="weight_bits=0"):
        lowbit.quantize(model, "bitserial", calib_data=[torch.randn(4, 77)], weight_bits=0)
    with pytest.raises(ConfigError, match="act_bits=1"):
        lowbit.quantize(model, "bitserial", calib_data=[torch.randn(4, 77)], act_bits=1)
    _, q = _quantized()
    with pytest.raises(ValueError, match="expects inputs of 77 features"):
        q(torch.randn(2, 76))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_the_output_keeps_a_half_precision_inputs_dtype(device):
    """As the other schemes' layers: fp16 / bf16 in, the same dtype out (float32 inside, then rounded). On
    the GPU the first layer then does not write the second's input planes: the second layer quantizes the
    rounded values it is given, as on the CPU, so both devices give the same numbers."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    _, q = _quantized()
    x = torch.randn(5, 77, generator=torch.Generator().manual_seed(7))
    for dtype in (torch.float16, torch.bfloat16):
        xh = x.to(dtype)
        expected = q[2](q[0](xh.float()).to(dtype).float()).to(dtype)  # q[1], the ReLU, is folded into q[0]
        got = copy.deepcopy(q).to(device)(xh.to(device))
        assert got.dtype == dtype and torch.equal(got.cpu(), expected)
