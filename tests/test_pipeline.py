"""lowbit.quantize: swapping, calibration input forms, overrides, bad input."""

import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import CalibrationError, ConfigError
from lowbit.nn import IntegerLayer


class TwoInputs(nn.Module):
    """Not traceable by torch.fx (data-dependent control flow), takes keyword inputs."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(8, 16)
        self.b = nn.Linear(8, 16)
        self.head = nn.Sequential(nn.ReLU(), nn.Linear(16, 4))

    def forward(self, x, y=None):
        h = self.a(x)
        if y is not None and float(y.sum()) > -1e9:
            h = h + self.b(y)
        return self.head(h)


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def _batches(n=4, shape=(8, 10)):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def test_swaps_every_layer_and_keeps_the_original():
    model = _mlp()
    q = lowbit.quantize(model, "int8", calib_data=_batches())
    assert all(isinstance(q[i], IntegerLayer) for i in (0, 2, 4))
    assert isinstance(model[0], nn.Linear) and not isinstance(model[0], IntegerLayer)
    x = torch.randn(5, 10)
    assert (q(x) - model(x)).norm() / model(x).norm() < 0.05


def test_inplace():
    model = _mlp()
    q = lowbit.quantize(model, calib_data=_batches(), inplace=True)
    assert q is model and isinstance(model[0], IntegerLayer)


def test_batch_forms_tuple_dict_and_labelled_pairs():
    model = TwoInputs()
    xs = _batches(3, (4, 8))
    as_tuples = [(x, x * 2) for x in xs]
    as_dicts = [{"x": x, "y": x * 2} for x in xs]
    q1 = lowbit.quantize(model, calib_data=as_tuples, calibrator="max")
    q2 = lowbit.quantize(model, calib_data=as_dicts, calibrator="max")
    assert torch.equal(q1.b.input_scale, q2.b.input_scale)  # both calibrated b from the same y
    mlp = _mlp()
    labelled = [(x, torch.zeros(8, dtype=torch.long)) for x in _batches()]  # (input, label) from a DataLoader
    q3 = lowbit.quantize(mlp, calib_data=labelled, calibrator="max")
    q4 = lowbit.quantize(mlp, calib_data=_batches(), calibrator="max")
    assert torch.equal(q3[0].input_scale, q4[0].input_scale)


def test_dataloader_and_calib_batches_limit():
    ds = torch.utils.data.TensorDataset(torch.randn(64, 10), torch.zeros(64, dtype=torch.long))
    loader = torch.utils.data.DataLoader(ds, batch_size=16)
    q = lowbit.quantize(_mlp(), calib_data=loader, calib_batches=2, calibrator="max")
    first_two = torch.cat([ds.tensors[0][:32]])
    assert float(q[0].input_scale) == pytest.approx(float(first_two.abs().max()) / 127)


def test_skip_and_overrides():
    model = _mlp()
    q = lowbit.quantize(model, calib_data=_batches(), skip=["4"], overrides={"2": {"weight_bits": 4}})
    assert isinstance(q[4], nn.Linear) and not isinstance(q[4], IntegerLayer)
    assert q[2].weight_spec.fmt.bits == 4 and int(q[2].weight_codes().abs().max()) <= 7
    assert q[0].weight_spec.fmt.bits == 8
    q = lowbit.quantize(model, calib_data=_batches(), overrides={"[02]": "float"})
    assert [type(q[i]).__name__ for i in (0, 2, 4)] == ["Linear", "Linear", "IntegerLayer"]


def test_asymmetric_and_unsigned_activations():
    model = _mlp()
    q = lowbit.quantize(model, calib_data=_batches(), act_symmetric=False)
    assert q[2].input_spec.fmt.signed is False and q[2].input_spec.symmetric is False
    assert int(q[2].input_zero_point) == 0  # after ReLU the range starts at 0
    q = lowbit.quantize(model, calib_data=_batches(), act_unsigned="auto")
    assert q[0].input_spec.fmt.signed and not q[2].input_spec.fmt.signed


def test_unknown_scheme_lists_valid_names():
    with pytest.raises(ConfigError, match=r"unknown scheme 'int3'.*int8"):
        lowbit.quantize(_mlp(), "int3", calib_data=_batches())


def test_unknown_calibrator_lists_valid_names():
    with pytest.raises(ConfigError, match="max, percentile, mse, entropy"):
        lowbit.quantize(_mlp(), calib_data=_batches(), calibrator="kl")


@pytest.mark.parametrize("bits", [0, 17])
def test_bits_out_of_range(bits):
    with pytest.raises(ConfigError, match=f"weight_bits={bits} is invalid: expected an integer from 1 to 16"):
        lowbit.quantize(_mlp(), calib_data=_batches(), weight_bits=bits)
    with pytest.raises(ConfigError, match=f"act_bits={bits}"):
        lowbit.quantize(_mlp(), calib_data=_batches(), overrides={"2": {"act_bits": bits}})


def test_unknown_option():
    with pytest.raises(ConfigError, match="no option group_size; valid options: weight_bits"):
        lowbit.quantize(_mlp(), calib_data=_batches(), group_size=128)


def test_empty_and_missing_calib_data():
    with pytest.raises(CalibrationError, match="yielded no batches"):
        lowbit.quantize(_mlp(), calib_data=[])
    with pytest.raises(CalibrationError, match="calib_data is required"):
        lowbit.quantize(_mlp())


def test_nan_in_calibration_names_the_layer():
    class Blowup(nn.Module):
        def __init__(self):
            super().__init__()
            self.first = nn.Linear(4, 4)
            self.second = nn.Linear(4, 4)

        def forward(self, x):
            return self.second(self.first(x) * float("inf"))

    with pytest.raises(CalibrationError, match=r"layer 'second' input: .* NaN or Inf"):
        lowbit.quantize(Blowup(), calib_data=[torch.randn(2, 4)])


def test_layer_that_never_runs():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.used = nn.Linear(4, 4)
            self.unused = nn.Linear(4, 4)

        def forward(self, x):
            return self.used(x)

    with pytest.raises(CalibrationError, match="layer 'unused' never ran"):
        lowbit.quantize(Unused(), calib_data=[torch.randn(2, 4)])


def test_no_quantizable_layer_warns():
    model = nn.Sequential(nn.ReLU(), nn.LayerNorm(4))
    with pytest.warns(UserWarning, match="no quantizable layer"):
        out = lowbit.quantize(model, calib_data=[torch.randn(2, 4)])
    assert isinstance(out[1], nn.LayerNorm)


def test_pattern_that_matches_nothing():
    with pytest.raises(ConfigError, match=r"skip pattern 'fc\*' matches no quantizable layer; layers: 0, 2, 4"):
        lowbit.quantize(_mlp(), calib_data=_batches(), skip=["fc*"])


def test_custom_forward_subclass_is_left_alone():
    class Odd(nn.Linear):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(Odd(4, 4), nn.Linear(4, 2))
    assert [n for n, _ in lowbit.quantizable_layers(model)] == ["1"]


def test_group_size_that_does_not_divide_is_padded():
    # per-group scales pad the reduction axis (documented in QuantSpec); the result keeps the shape
    from lowbit.config import IntFormat, QuantSpec
    from lowbit.numerics import fake_quantize, qparams_for

    spec = QuantSpec(IntFormat(4), granularity="group", axis=1, group_size=128)
    w = torch.randn(4, 200)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        y = fake_quantize(w, spec, *qparams_for(w, spec))
    assert y.shape == w.shape and (y - w).abs().max() < w.abs().max() / 7


def test_prepare_then_convert_is_quantize():
    model = _mlp()
    calib = list(_batches())
    prepared = lowbit.prepare(model, "int8", calib, "max")
    assert [n for n, _ in lowbit.pipeline.prepared_layers(prepared)] == ["0", "2", "4"]
    assert isinstance(prepared[0], lowbit.nn.FakeQuantLinear) and not isinstance(model[0], lowbit.nn.FakeQuantLinear)
    x = torch.randn(5, 10)
    with torch.no_grad():
        assert torch.equal(lowbit.convert(prepared)(x), lowbit.quantize(model, "int8", calib, "max")(x))
    with pytest.raises(lowbit.ConfigError, match="no fake-quantized layer to convert"):
        lowbit.convert(model)


def _mlp13():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(13, 37), nn.ReLU(), nn.Linear(37, 19), nn.ReLU(), nn.Linear(19, 5)).eval()


def test_a_failed_inplace_quantize_gives_the_model_its_layers_back():
    model = _mlp13()
    layers = list(model)
    with pytest.raises(CalibrationError, match=r"calibration batch 0 \(float32 tensor of shape \(4, 12\)\) failed in "
                                               "Sequential.forward: RuntimeError: mat1 and mat2"):
        lowbit.quantize(model, "int8", calib_data=[torch.randn(4, 12)], inplace=True)  # wrong width
    assert list(model) == layers
    with pytest.raises(ConfigError, match="percentile"):
        lowbit.quantize(model, "int8", calib_data=[torch.randn(4, 13)], calibrator="percentile",
                        calibrator_options={"percentile": 150}, inplace=True)
    assert list(model) == layers


@pytest.mark.parametrize("options, message", [
    ({"inplace": "no"}, "inplace='no' is invalid"),
    ({"calib_batches": -1}, "calib_batches=-1 is invalid"),
    ({"calib_batches": 1.5}, "calib_batches=1.5 is invalid"),
    ({"calib_batches": 2, "scheme": "w4a16", "algorithm": "gptq", "group_size": 0}, None),
])
def test_calib_batches_and_inplace_are_checked(options, message):
    options = {"scheme": "int8", **options}
    if message is None:
        assert lowbit.quantize(_mlp13(), calib_data=[torch.randn(4, 13)] * 3, **options) is not None
        return
    with pytest.raises(ConfigError, match=message):
        lowbit.quantize(_mlp13(), calib_data=[torch.randn(4, 13)], **options)


def test_calibration_takes_no_batch_past_calib_batches():
    taken = []

    def batches():
        for i in range(5):
            taken.append(i)
            yield torch.randn(4, 13)

    lowbit.quantize(_mlp13(), "int8", calib_data=batches(), calib_batches=2)
    assert taken == [0, 1]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
@pytest.mark.parametrize("scheme", ["int8", "int4", "w4a16", "w4a8", "fp8", "bitserial"])
def test_weights_that_are_not_finite_are_refused(scheme, value):
    model = _mlp13()
    with torch.no_grad():
        model[4].weight[0, 0] = value
    with pytest.raises(ConfigError, match=r"layer '4': its weight holds [01] NaN and [01] infinite value"):
        lowbit.quantize(model, scheme, calib_data=[torch.randn(4, 13)])


@pytest.mark.parametrize("scheme", ["int8", "int4", "w4a8", "fp8", "bitserial"])
def test_an_input_that_was_zero_in_every_calibration_batch_is_reported(scheme):
    with pytest.warns(UserWarning, match="layer '0' input: every calibration value was 0"):
        lowbit.quantize(_mlp13(), scheme, calib_data=[torch.zeros(4, 13)])


def test_a_calibrator_for_a_scheme_that_calibrates_nothing_is_reported():
    with pytest.warns(UserWarning, match="calibrator 'entropy' and calibrator_options {} are not used: scheme 'w4a16'"):
        lowbit.quantize(_mlp(), "w4a16", _batches(), "entropy", progress=False)
    with pytest.warns(UserWarning, match="are not used: scheme 'w4a8'"):  # per-token FP8 activations
        lowbit.quantize(_mlp(), "w4a8", _batches(), calibrator_options={"num_bins": 512}, activation="dynamic",
                        group_size=0, progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lowbit.quantize(_mlp(), "w4a8", _batches(), "max", group_size=0, progress=False)  # static: calibrated


def test_a_gru_left_in_float_is_named(first_output):
    model = nn.Sequential(first_output(nn.GRU(6, 8, batch_first=True)), nn.Flatten(), nn.Linear(24, 3))
    with pytest.warns(UserWarning, match=r"'0.inner' \(GRU / RNN\) stay\(s\) in float: lowbit has no quantized GRU"):
        lowbit.quantize(model, "int8", calib_data=[torch.randn(2, 3, 6)], progress=False)
