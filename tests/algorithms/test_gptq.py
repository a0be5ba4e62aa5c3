import warnings

import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms.gptq import gar_permutation, gptq_quantize, gptq_quantize_stacked
from lowbit.errors import CalibrationError, ConfigError
from lowbit.nn.weight_quantizer import Int4GroupWeightQuantizer
from lowbit.numerics.groupwise import dequantize_groups

GEN = torch.Generator().manual_seed(0)


def _correlated_inputs(rows=2048, k=256):
    mix = torch.randn(k, k, generator=GEN) / k ** 0.5
    return torch.randn(rows, k, generator=GEN) @ mix * 2 + torch.randn(rows, k, generator=GEN) * 0.3


def _output_error(x, w, q):
    return float(((x @ (w - q).t()) ** 2).mean())


@pytest.mark.parametrize("group", [64, 0, 96])
def test_gptq_beats_rtn_and_dpq_beats_gptq_on_the_fp8_weights(group):
    x = _correlated_inputs()
    w = torch.randn(128, 256, generator=GEN)
    h = 2 * x.t() @ x / len(x)
    wq = Int4GroupWeightQuantizer(group or 256, symmetric=False, fp8=True)
    rtn = _output_error(x, w, wq.rtn(w).values(fp8=True))
    gptq = gptq_quantize(w, h, wq.column_quantizer(w, composed=False))
    dpq = gptq_quantize(w, h, wq.column_quantizer(w, composed=True))
    dpq_gar = gptq_quantize(w, h, wq.column_quantizer(w, composed=True), gar=True)
    e_gptq, e_dpq, e_gar = (_output_error(x, w, r.codes.values(fp8=True)) for r in (gptq, dpq, dpq_gar))
    assert e_gptq < 0.8 * rtn
    assert e_dpq < e_gptq
    assert e_gar < 1.05 * e_dpq
    for r in (gptq, dpq, dpq_gar):
        assert r.codes.codes.shape == w.shape and int(r.codes.codes.max()) <= 15 and r.damp == 0.01


def test_gar_keeps_columns_in_their_group_and_a_short_last_group_last():
    d = torch.rand(200, generator=GEN)
    perm = gar_permutation(d, 64)
    assert sorted(perm.tolist()) == list(range(200))
    for start in range(0, 192, 64):  # each block of 64 positions holds one whole group
        assert len({int(c) // 64 for c in perm[start:start + 64]}) == 1
    assert sorted(perm[192:].tolist()) == list(range(192, 200))
    first = perm[:64]
    assert torch.all(d[first][:-1] >= d[first][1:])  # by decreasing diag(H)
    assert int(first[0]) == int(d[:192].argmax())  # the group holding the largest diag goes first


def test_an_indefinite_hessian_gets_more_damping_with_a_warning():
    w = torch.randn(16, 64, generator=GEN)
    h = -torch.eye(64) * 0.5 + 0.01 * torch.ones(64, 64)  # negative definite, mean diagonal -0.49
    h[0, 0] = 60.0
    wq = Int4GroupWeightQuantizer(64, symmetric=True, fp8=False)
    with pytest.warns(UserWarning, match="not positive definite; damping raised"):
        result = gptq_quantize(w, h, wq.column_quantizer(w, composed=False), name="layer 'x'")
    assert result.damp > 0.01


def test_a_hessian_that_stays_singular_is_a_clear_error():
    w = torch.randn(8, 32, generator=GEN)
    h = torch.full((32, 32), float("nan"))
    wq = Int4GroupWeightQuantizer(32, symmetric=True, fp8=False)
    with pytest.raises(CalibrationError, match="layer 'x'.*singular"):
        gptq_quantize(w, h, wq.column_quantizer(w, composed=False), name="layer 'x'")


def test_inputs_that_are_always_zero_leave_a_usable_hessian():
    x = _correlated_inputs(512, 64)
    x[:, :5] = 0
    w = torch.randn(8, 64, generator=GEN)
    wq = Int4GroupWeightQuantizer(32, symmetric=False, fp8=False)
    result = gptq_quantize(w, 2 * x.t() @ x / len(x), wq.column_quantizer(w, composed=False))
    assert torch.isfinite(result.codes.values(fp8=False)).all()


class Block(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.q, self.k, self.o = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.up, self.down = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x, temperature=1.0, past_key_values=None, use_cache=False):
        assert past_key_values is None and not use_cache  # the driver replays blocks without a KV cache
        att = torch.softmax(self.q(x) @ self.k(x).transpose(-1, -2) / temperature, -1) @ x
        x = x + self.o(att)
        return (x + self.down(torch.relu(self.up(x))),)  # a tuple, as older Hugging Face layers return


class TinyLM(nn.Module):
    def __init__(self, d=64, blocks=2):
        super().__init__()
        torch.manual_seed(0)
        self.inp = nn.Linear(16, d)
        self.layers = nn.ModuleList(Block(d) for _ in range(blocks))
        self.lm_head = nn.Linear(d, 30)

    def forward(self, x, use_cache=True):
        x = self.inp(x)
        for block in self.layers:
            x = block(x, temperature=8.0, past_key_values=None, use_cache=False)[0]
        return self.lm_head(x)


def _calib():
    return [torch.randn(2, 24, 16, generator=GEN) for _ in range(4)]


def test_each_layer_is_quantized_from_inputs_through_the_quantized_layers_before_it():
    """Block by block, the driver must give the same codes as doing it by hand, layer after layer."""
    model, calib = TinyLM(blocks=2), _calib()
    auto = lowbit.prepare(model, "w4a16", calib, algorithm="gptq", group_size=32, progress=False)

    manual = lowbit.prepare(model, "w4a16", calib, group_size=32, progress=False)
    order = [["inp"]] + [[f"layers.{i}.{n}" for n in names] for i in range(2)
                         for names in (["q", "k"], ["o"], ["up"], ["down"])]
    layers = dict(manual.named_modules())
    for names in order:
        seen = []
        hook = layers[names[0]].register_forward_pre_hook(lambda m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
        with torch.no_grad():
            for x in calib:
                manual(x)
        hook.remove()
        xs = [x.bfloat16().float() for x in seen]
        hessian = 2 * sum(x.t() @ x for x in xs) / sum(len(x) for x in xs)
        for name in names:
            layer = layers[name]
            result = gptq_quantize(layer.weight, hessian,
                                   layer.weight_quantizer.column_quantizer(layer.weight, composed=False))
            layer.weight_quantizer.frozen = result.codes
    auto_layers = dict(auto.named_modules())
    for names in order:
        for name in names:
            assert torch.equal(auto_layers[name].weight_quantizer.frozen.codes, layers[name].weight_quantizer.frozen.codes), name


def test_gptq_on_a_model_lowers_the_output_error_and_reports_itself():
    model, calib = TinyLM(), _calib()
    test = torch.randn(4, 24, 16, generator=GEN)
    ref = model(test)
    errors = {}
    for algorithm, gar in (("rtn", False), ("gptq", False), ("dpq", False), ("dpq", True)):
        q = lowbit.quantize(model, "w4a8", calib, algorithm=algorithm, gar=gar, group_size=32, progress=False)
        errors[algorithm, gar] = float((q(test) - ref).norm() / ref.norm())
        assert type(q.lm_head) is nn.Linear  # kept in high precision by default
        assert q.layers[1].up.info["algorithm"] == algorithm + ("+gar" if gar else "")
    assert errors["gptq", False] < errors["rtn", False]
    assert errors["dpq", False] < errors["rtn", False]


def test_layers_share_a_hessian_only_when_they_read_the_very_same_tensor():
    """b's input is made right after a's input is freed, so Python may give it a's input's id (as it did
    with SmolLM2's o_proj and gate/up): b must still get its own Hessian."""
    class Chain(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 32, bias=False), nn.Linear(32, 32, bias=False)
            self.c = nn.Linear(32, 32, bias=False)

        def forward(self, x):
            y = self.a(x * 2.0)  # a's input is freed on return ...
            return self.c(self.b(y + 1.0))  # ... and b's, made next, may take its place

    from lowbit.algorithms import gptq

    model = Chain()
    x = torch.randn(8, 32, generator=GEN)
    groups = gptq._execution_groups(model, x, dict(a=model.a, b=model.b, c=model.c))
    assert groups == [["a"], ["b"], ["c"]]

    prepared = lowbit.prepare(model, "w4a16", [x], algorithm="gptq", group_size=16, progress=False)
    seen = []
    hook = prepared.b.register_forward_pre_hook(lambda m, a: seen.append(a[0].bfloat16().float()))
    with torch.no_grad():
        prepared(x)  # b's input through a's frozen codes, as GPTQ saw it
    hook.remove()
    b = prepared.b
    expected = gptq_quantize(b.weight, 2 * seen[0].t() @ seen[0] / len(x),
                             b.weight_quantizer.column_quantizer(b.weight, composed=False))
    assert torch.equal(b.weight_quantizer.frozen.codes, expected.codes.codes)


def test_a_weight_shared_by_two_layers_is_quantized_once():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(32, 32, bias=False), nn.Linear(32, 32, bias=False)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(torch.relu(self.a(x)))

    prepared = lowbit.prepare(Tied(), "w4a8", [torch.randn(8, 32, generator=GEN) for _ in range(2)],
                              algorithm="dpq", group_size=16, progress=False)
    assert prepared.a.weight_quantizer.frozen is prepared.b.weight_quantizer.frozen


def test_algorithm_mistakes_are_clear_errors():
    model, calib = TinyLM(), _calib()
    with pytest.raises(CalibrationError, match="needs calib_data"):
        lowbit.quantize(model, "w4a8", None, algorithm="dpq", activation="dynamic")
    with pytest.raises(ConfigError, match="'dpq' does not apply to layer 'inp' \\(scheme 'w4a16'"):
        lowbit.quantize(model, "w4a16", calib, algorithm="dpq")
    with pytest.raises(ConfigError, match="'gptq' does not apply.*scheme 'int8'"):
        lowbit.quantize(model, "int8", calib, algorithm="gptq")
    with pytest.raises(ConfigError, match="gar=True.*needs algorithm"):
        lowbit.quantize(model, "w4a8", calib, gar=True)
    with pytest.raises(ConfigError, match="algorithm='awq' is invalid"):
        lowbit.quantize(model, "w4a8", calib, algorithm="awq")
    with pytest.raises(ConfigError, match="damp=0 is invalid"):
        lowbit.quantize(model, "w4a8", calib, algorithm="gptq", damp=0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lowbit.quantize(model, "w4a8", iter(calib), algorithm="gptq", progress=False)  # a one-shot iterator works


def test_fine_tuning_refuses_codes_that_gptq_froze_but_trains_a_w4a8_model():
    model, calib = TinyLM(), _calib()
    prepared = lowbit.prepare(model, "w4a8", calib, algorithm="gptq", group_size=32, progress=False).train()
    data = [(x, torch.randn(2, 24, 30, generator=GEN)) for x in calib]
    with pytest.raises(ConfigError, match="hold codes chosen by GPTQ/DPQ.*algorithm='rtn'"):
        lowbit.finetune(prepared, data, epochs=1, loss_fn=nn.functional.mse_loss, progress=False)
    prepared = lowbit.prepare(model, "w4a8", calib, group_size=32, progress=False).train()
    before = prepared.layers[0].up.weight.detach().clone()
    lowbit.finetune(prepared, data, epochs=1, lr=1e-2, loss_fn=nn.functional.mse_loss, progress=False)
    assert not torch.equal(before, prepared.layers[0].up.weight)


@pytest.mark.parametrize("composed,gar", [(False, False), (True, True)])
def test_weights_sharing_a_hessian_get_alone_codes_when_stacked(composed, gar):
    """GPTQ's rows are independent: weights stacked under one Hessian (q / k / v) get the codes they get alone,
    each with its own tensor scale (the three differ by powers of two here)."""
    x = _correlated_inputs(k=192)
    h = 2 * x.t() @ x / len(x)
    weights = [torch.randn(n, 192, generator=GEN) * amp for n, amp in ((40, 1.0), (24, 37.0), (8, 0.01))]
    wq = Int4GroupWeightQuantizer(64, symmetric=False, fp8=True)
    quantizers = [wq.column_quantizer(w, composed) for w in weights]
    assert len({q.tensor_scale for q in quantizers}) == 3
    stacked = gptq_quantize_stacked(weights, h, quantizers, gar=gar)
    for w, q, together in zip(weights, quantizers, stacked):
        alone = gptq_quantize(w, h, q, gar=gar)
        for part in ("codes", "scale", "zero"):
            assert torch.equal(getattr(together.codes, part), getattr(alone.codes, part))
        assert float(together.codes.tensor_scale) == q.tensor_scale
        assert together.loss == pytest.approx(alone.loss, rel=1e-5)
    other_groups = Int4GroupWeightQuantizer(32, symmetric=False, fp8=True).column_quantizer(weights[1], composed)
    with pytest.raises(ValueError, match="one group size, symmetry and quantizer"):
        gptq_quantize_stacked(weights[:2], h, [quantizers[0], other_groups])


@pytest.mark.parametrize("composed", [False, True])
def test_a_column_rounds_as_round_to_nearest_does(composed):
    """GPTQ's per-column rounding (ColumnQuantizer.round) gives RTN's codes, and their values as GPTQ sees them:
    the INT4 grid alone, or through E4M3 as the kernel converts it (DPQ)."""
    w = torch.randn(24, 128, generator=GEN) * 500  # past the protective range: a tensor scale above 1
    wq = Int4GroupWeightQuantizer(64, symmetric=False, fp8=True)
    rtn = wq.rtn(w)
    s8 = float(rtn.tensor_scale)
    assert s8 > 1
    expected = rtn.values(fp8=True) if composed else dequantize_groups(rtn.codes, rtn.scale, rtn.zero, 64) * s8
    cq = wq.column_quantizer(w, composed)
    for j in range(128):
        codes, values = cq.round(w[:, j], rtn.scale[:, j // 64], rtn.zero[:, j // 64].float())
        assert torch.equal(codes.to(torch.uint8), rtn.codes[:, j]) and torch.equal(values, expected[:, j])
