import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ConfigError
from lowbit.nn.mixed_linear import W4A8Linear

GEN = torch.Generator().manual_seed(0)


class ConvThenHead(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(1, 4, 3)
        self.fc = nn.Linear(4 * 6 * 6, 32)
        self.lm_head = nn.Linear(32, 10)

    def forward(self, x):
        return self.lm_head(torch.relu(self.fc(self.conv(x).flatten(1))))


def _calib():
    return [torch.randn(8, 1, 8, 8, generator=GEN)]


def test_linear_schemes_leave_convolutions_and_lm_head_in_float():
    q = lowbit.quantize(ConvThenHead(), "w4a8", _calib(), group_size=16, progress=False)
    assert type(q.conv) is nn.Conv2d and type(q.lm_head) is nn.Linear and isinstance(q.fc, W4A8Linear)
    q = lowbit.quantize(ConvThenHead(), "w4a8", _calib(), overrides={"lm_head": {"group_size": 0}}, progress=False)
    assert isinstance(q.lm_head, W4A8Linear) and q.lm_head.options["group_size"] == 32


def test_asking_a_linear_scheme_for_a_convolution_is_an_error():
    with pytest.raises(ConfigError, match="'w4a16' on layer 'conv', a Conv2d; 'w4a16' quantizes Linear layers only"):
        lowbit.quantize(ConvThenHead(), "int8", _calib(), overrides={"conv": "w4a16"}, progress=False)


@pytest.mark.parametrize("scheme,options,message", [
    ("w4a8", {"group_size": -1}, "group_size=-1 is invalid"),
    ("w4a16", {"group_size": 12.5}, "group_size=12.5 is invalid"),
    ("w4a8", {"activation": "per-row"}, "activation='per-row' is invalid"),
    ("w4a16", {"symmetric": "yes"}, "symmetric='yes' is invalid"),
    ("fp8", {"group_size": 128}, "scheme 'fp8' has no option group_size"),
    ("w4a16", {"activation": "static"}, "scheme 'w4a16' has no option activation"),
])
def test_bad_options_are_named(scheme, options, message):
    with pytest.raises(ConfigError, match=message):
        lowbit.quantize(ConvThenHead(), scheme, _calib(), progress=False, **options)


def test_fp8_activations_refuse_integer_grid_calibrators():
    with pytest.raises(ConfigError, match="FP8 activations take the max or percentile calibrator, not 'entropy'"):
        lowbit.quantize(ConvThenHead(), "fp8", _calib(), calibrator="entropy", progress=False)
    q = lowbit.quantize(ConvThenHead(), "fp8", _calib(), calibrator="percentile", progress=False)
    assert q.fc.info["calibrator"] == "percentile"


def test_dynamic_activations_and_weight_only_need_no_calibration_data():
    lowbit.quantize(ConvThenHead(), "w4a8", None, activation="dynamic", group_size=16)
    lowbit.quantize(ConvThenHead(), "w4a16", None, group_size=16)
    with pytest.raises(lowbit.CalibrationError, match="calib_data is required"):
        lowbit.quantize(ConvThenHead(), "w4a8", None, group_size=16)


def test_group_sizes_that_do_not_divide_k_leave_a_shorter_last_group():
    q = lowbit.quantize(ConvThenHead(), "w4a16", None, group_size=100)  # fc has K = 144
    assert q.fc.group_scale.shape == (32, 2)
    x = torch.randn(3, 1, 8, 8, generator=GEN)
    assert torch.isfinite(q(x)).all()
