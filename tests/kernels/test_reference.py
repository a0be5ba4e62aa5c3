"""The integer reference equals exact integer math and the fake-quant float simulation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowbit.config import IntFormat, QuantSpec
from lowbit.kernels.reference import integer_conv_acc, integer_linear_acc, integer_matmul
from lowbit.nn import ActivationQuantizer, IntegerLayer, LayerGeometry, fake_quant_layer
from lowbit.nn.weight_quantizer import IntWeightQuantizer


@pytest.mark.parametrize("m,k,n", [(1, 1, 1), (3, 17, 5), (40, 129, 33), (17, 8, 8)])
def test_integer_matmul_exact(m, k, n):
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8)
    b = torch.randint(-128, 128, (k, n), dtype=torch.int8)
    out = integer_matmul(a, b, 128, 128)
    assert out.dtype == torch.int32
    assert torch.equal(out.long(), a.long() @ b.long())


def test_integer_matmul_wide_codes_use_int64():
    a = torch.randint(-30000, 30000, (5, 300), dtype=torch.int16)
    b = torch.randint(-30000, 30000, (300, 4), dtype=torch.int16)
    out = integer_matmul(a, b, 32767, 32767)
    assert out.dtype == torch.int64 and torch.equal(out, a.long() @ b.long())


def _direct_conv_acc(qx, zx, qw, module):
    """Exact accumulators by float64 convolution of integer-valued tensors (an independent route)."""
    x = qx.double() - zx
    if module.padding_mode != "zeros":
        x = F.pad(x, module._reversed_padding_repeated_twice, mode=module.padding_mode)
        padding = 0
    else:
        padding = module.padding
    conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
    return conv(x, qw.double(), None, module.stride, padding, module.dilation, module.groups)


CONVS = [
    lambda: nn.Conv2d(3, 8, 3),
    lambda: nn.Conv2d(4, 6, (3, 2), stride=(2, 1), padding=(1, 2), dilation=(1, 2)),
    lambda: nn.Conv2d(6, 9, 3, padding="same", dilation=2, groups=3),
    lambda: nn.Conv2d(5, 5, 3, padding=1, groups=5),
    lambda: nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"),
    lambda: nn.Conv2d(3, 4, 2, padding=1, padding_mode="circular"),
    lambda: nn.Conv1d(5, 7, 4, stride=3, padding=2),
    lambda: nn.Conv1d(4, 6, 3, padding="same", groups=2, padding_mode="replicate"),
]


# Padding modes other than zeros copy codes, so the zero point plays no part there.
CONV_CASES = [(make, zx) for make in CONVS for zx in (0, 3, -7) if zx == 0 or make().padding_mode == "zeros"]


@pytest.mark.parametrize("make,zx", CONV_CASES)
def test_integer_conv_acc_exact(make, zx):
    torch.manual_seed(0)
    module = make()
    spatial = (11, 9) if isinstance(module, nn.Conv2d) else (13,)
    qx = torch.randint(-127, 128, (2, module.in_channels, *spatial), dtype=torch.int8)
    qw = torch.randint(-127, 128, module.weight.shape, dtype=torch.int8)
    acc = integer_conv_acc(qx, zx, qw, LayerGeometry.of(module))
    assert torch.equal(acc.double(), _direct_conv_acc(qx, zx, qw, module))


def test_unsigned_codes_shifted_exactly():
    qx = torch.randint(0, 256, (6, 40), dtype=torch.int16).to(torch.uint8)
    qw = torch.randint(-127, 128, (5, 40), dtype=torch.int8)
    acc = integer_linear_acc(qx, 131, qw)
    assert torch.equal(acc.long(), (qx.long() - 131) @ qw.long().t())


LAYERS = [
    lambda: nn.Linear(37, 19),
    lambda: nn.Linear(1, 3, bias=False),
    lambda: nn.Conv2d(3, 5, 3, stride=2, padding=1),
    lambda: nn.Conv2d(6, 4, (1, 3), padding="same", groups=2, bias=False),
    lambda: nn.Conv1d(3, 8, 5, dilation=2, padding=3),
]
SPECS = [
    (QuantSpec(IntFormat(8), granularity="channel"), QuantSpec(IntFormat(8)), False),
    (QuantSpec(IntFormat(8)), QuantSpec(IntFormat(8, signed=False), symmetric=False), False),
    (QuantSpec(IntFormat(5), granularity="channel"), QuantSpec(IntFormat(6)), "auto"),
    (QuantSpec(IntFormat(12), granularity="channel"), QuantSpec(IntFormat(10)), False),
]


@pytest.mark.parametrize("make", LAYERS)
@pytest.mark.parametrize("wspec,ispec,unsigned", SPECS)
def test_integer_layer_matches_fake_quant_simulation(make, wspec, ispec, unsigned):
    torch.manual_seed(1)
    float_layer = make()
    if isinstance(float_layer, nn.Linear):
        shape = (4, 3, float_layer.in_features)
    elif isinstance(float_layer, nn.Conv2d):
        shape = (2, float_layer.in_channels, 9, 7)
    else:
        shape = (2, float_layer.in_channels, 15)
    data = [torch.randn(shape) + 0.3 for _ in range(3)]
    if unsigned == "auto":
        data = [d.relu() for d in data]
    quantizer = ActivationQuantizer(ispec, "percentile", {"percentile": 99.0}, unsigned=unsigned)
    fake = fake_quant_layer(float_layer, IntWeightQuantizer(wspec), quantizer)
    for d in data:
        fake(d)
    quantizer.finish_calibration()
    layer = IntegerLayer.from_fake(fake, {"scheme": "test"})
    x = torch.randn(shape) * 1.5 + 0.3  # beyond the calibrated range too: saturation must agree
    if unsigned == "auto":
        x = x.relu()
    with torch.no_grad():
        ref = fake(x)
        out = layer(x)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    err = (out - ref).norm() / ref.norm()
    assert err < 1e-5, f"relative error {err}"
