"""Every deployed layer refuses, naming itself, an input it cannot take (float PyTorch would refuse it too,
or the integer arithmetic would take it silently: extra channels, NaN values)."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import InputError

SCHEMES = ["int8", "int4", "w4a16", "w4a8", "fp8", "bitserial"]


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(13, 37), nn.ReLU(), nn.Linear(37, 19), nn.ReLU(), nn.Linear(19, 5)).eval()


@pytest.fixture(scope="module", params=SCHEMES)
def quantized_mlp(request):
    return request.param, lowbit.quantize(_mlp(), request.param, calib_data=[torch.randn(8, 13)])


def test_wrong_width_and_integer_inputs_are_named(quantized_mlp):
    _, q = quantized_mlp
    with pytest.raises(InputError, match=r"layer '0' expects inputs of 13 features, got shape \(4, 12\)"):
        q(torch.randn(4, 12))
    with pytest.raises(InputError, match="layer '0' takes floating-point inputs, got a torch.int64 tensor"):
        q(torch.randint(0, 3, (4, 13)))


def test_no_rows_give_no_rows(quantized_mlp):
    _, q = quantized_mlp
    assert q(torch.randn(0, 13)).shape == (0, 5) and q(torch.randn(2, 0, 13)).shape == (2, 0, 5)


def test_nan_inputs_are_an_error_where_they_have_no_code(quantized_mlp):
    scheme, q = quantized_mlp
    x = torch.randn(4, 13)
    x[1, 2] = float("nan")
    if scheme == "w4a16":  # bf16 activations carry the NaN, as the float model does
        assert torch.isnan(q(x)[1]).all() and not torch.isnan(q(x)[0]).any()
        return
    with pytest.raises(InputError, match="layer '0'.* NaN"):
        q(x)


@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_convolutions_check_channels_layout_and_size(scheme):
    torch.manual_seed(0)
    cnn = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, groups=2),
                        nn.Flatten(), nn.Unflatten(1, (4, 9)), nn.Conv1d(4, 2, 3, dilation=2))
    q = lowbit.quantize(cnn.eval(), scheme, calib_data=[torch.randn(2, 3, 5, 5)])
    assert q(torch.randn(2, 3, 5, 5)).shape == (2, 2, 5)
    with pytest.raises(InputError, match=r"layer '0' \(conv2d 3->8 k3x3 pads=\(1, 1, 1, 1\)\) expects 3 input "
                                         r"channels, got shape \(2, 4, 5, 5\)"):
        q(torch.randn(2, 4, 5, 5))
    with pytest.raises(InputError, match=r"expects inputs of shape \(N, C, H, W\), got shape \(3, 5, 5\)"):
        q(torch.randn(3, 5, 5))
    with pytest.raises(InputError, match=r"layer '2' \(conv2d 8->4 k3x3 groups=2\): input of shape \(2, 8, 2, 2\) "
                                         "is smaller than its kernel"):
        q(torch.randn(2, 3, 2, 2))
    with pytest.raises(InputError, match=r"layer '5' \(conv1d 4->2 k3 dilation=\(2,\)\): input of shape "
                                         r"\(1, 4, 4\) is smaller"):
        q[5](torch.randn(1, 4, 4))
