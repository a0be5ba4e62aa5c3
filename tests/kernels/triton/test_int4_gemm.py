"""The Triton INT4 GEMM (kernels/triton/int4_gemm.py), W4A8 (E4M3) and W4A16 (bf16): every configuration
gives each weight exactly (one-hot inputs) and sums within the tensor cores' error of float64 on awkward
shapes; its input comes deinterleaved from the input kernel; W4A8 layers take it from 33 to 256 rows,
W4A16 layers from 97."""

import pytest
import torch

from lowbit.kernels.cuda.int4_group import (INT4_GEMM_MAX_ROWS, MAX_ROWS, W4A8, W4A8_INT4_GEMM_ANY_LAYER_ROWS, W4A16,
                                            W4A16_INT4_GEMM_MIN_ROWS, int4_gemm_takes, kernel_layout, uses_int4_gemm)
from lowbit.nn.geometry import LayerGeometry
from lowbit.nn.mixed_linear import W4A8Linear, W4A16Linear
from lowbit.nn.weight_quantizer import Int4GroupCodes
from lowbit.numerics.groupwise import group_qparams, quantize_groups

# (N, K, group): N no multiple of the tiles and 3 steps of K (a 4-way split leaves one program none); one
# group per row; groups of two steps; groups of 64 and 32 columns, several to a step
SHAPES = [(200, 384, 128), (130, 1280, 1280), (520, 2048, 256), (200, 384, 64), (136, 640, 32)]
# each mode's layer and the input dtype its GEMM reads
MODES = {W4A8: (W4A8Linear, torch.float8_e4m3fn), W4A16: (W4A16Linear, torch.bfloat16)}


def _layer(n, k, group, seed, mode=W4A8, activation="static"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    scale, zero = group_qparams(w, group, symmetric=False)
    options = {"group_size": group, "symmetric": False}
    if mode == W4A8:
        options["activation"] = activation
    layer = MODES[mode][0](LayerGeometry.of(torch.nn.Linear(k, n)), options)
    s8 = torch.tensor(0.5 if mode == W4A8 else 1.0)
    layer.set_codes(Int4GroupCodes(quantize_groups(w, scale, zero, group), scale, zero, s8, group))
    layer.bias.copy_(torch.randn(n, generator=g))
    if mode == W4A8:
        layer.input_scale.fill_(0.02)
    return layer


def _deinterleaved(x):
    """Each 128 columns' even ones, then their odd ones (the GEMM's input order)."""
    m, k = x.shape
    return x.reshape(m, k // 128, 64, 2).transpose(-1, -2).reshape(m, k).contiguous()


def _gemm_args(layer):
    return (layer.qweight.cuda(), layer.group_scale.cuda(), layer.group_zero.cuda(), layer.options["group_size"])


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [W4A8, W4A16])
@pytest.mark.parametrize("n,k,group", SHAPES)
def test_every_config_gives_each_weight_exactly(mode, n, k, group, pinned_config):
    """x = unit rows (1.0), unit scales: y[i, n] = w[n, i], one product each."""
    from lowbit.kernels.triton import int4_gemm

    layer = _layer(n, k, group, seed=n, mode=mode)
    ref = layer.weight_values()
    one, ones = torch.ones((), device="cuda"), torch.ones(n, device="cuda")
    for config in int4_gemm._configs():
        with pinned_config(int4_gemm._KERNEL, config):
            for start in range(0, k, INT4_GEMM_MAX_ROWS):
                rows = torch.eye(k)[start:start + INT4_GEMM_MAX_ROWS]
                x = _deinterleaved(rows).to(MODES[mode][1]).cuda()
                out = int4_gemm.int4_gemm(x, *_gemm_args(layer), one, ones, None, torch.float32)
                assert torch.equal(out.cpu(), ref[:, start:start + len(rows)].t()), (config, start)


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [W4A8, W4A16])
@pytest.mark.parametrize("m,n,k,group", [(m, *shape) for m in (37, 256) for shape in SHAPES]
                         + [(256, 4096, 2048, 128), (64, 8192, 4096, 128)])
def test_every_config_matches_float64(mode, m, n, k, group, pinned_config):
    """Random inputs, per-token input scales, per-channel output scales and a bias, in bf16 out too;
    4096 x 2048 at 256 rows and 8192 x 4096 at 64 are where tiles of 64 input rows with K split went wrong
    when the splits met by atomic adds (int4_gemm._configs)."""
    from lowbit.kernels.triton import int4_gemm

    layer = _layer(n, k, group, seed=m + n, mode=mode)
    g = torch.Generator().manual_seed(m)
    x = (torch.randn(m, k, generator=g) * 40).to(MODES[mode][1])
    sa, sw, bias = torch.rand(m, generator=g) + 0.5, torch.rand(n, generator=g), torch.randn(n, generator=g)
    w = layer.weight_values().double()
    scale = sa.double()[:, None] * sw.double()
    ref = (x.double() @ w.t()) * scale + bias.double()
    size = ((x.double().abs() @ w.abs().t()) * scale).max()
    for config in int4_gemm._configs():
        with pinned_config(int4_gemm._KERNEL, config):
            for out_dtype in (torch.float32, torch.bfloat16):
                out = int4_gemm.int4_gemm(_deinterleaved(x).cuda(), *_gemm_args(layer), sa.cuda(), sw.cuda(),
                                          bias.cuda(), out_dtype)
                assert out.dtype == out_dtype and out.shape == (m, n)
                # float32 sums in another order, with Hopper's ~14 bits inside an FP8 tile (as float_gemm)
                bound = 2e-3 * size + (ref.abs() * 2 ** -8 if out_dtype == torch.bfloat16 else 1e-6)
                err = (out.double().cpu() - ref).abs()
                assert (err <= bound).all(), (config, out_dtype, float(err.max() / size))


@pytest.mark.gpu
@pytest.mark.parametrize("mode", [W4A8, W4A16])
def test_split_sums_do_not_depend_on_arrival(mode, pinned_config):
    """Every config that splits K gives the same bits call after call: the splits' partial sums meet in split
    order (with float atomic adds, 128-row tiles split 4 ways differed from call to call here)."""
    from lowbit.kernels.triton import int4_gemm

    n, k, m = 4096, 2048, 64
    layer = _layer(n, k, 128, seed=3, mode=mode)
    x = _deinterleaved((torch.randn(m, k, generator=torch.Generator().manual_seed(3)) * 40).to(MODES[mode][1])).cuda()
    one, ones = torch.ones((), device="cuda"), torch.ones(n, device="cuda")
    split = [c for c in int4_gemm._configs() if c.kwargs["SPLIT_K"] > 1]
    assert split
    for config in split:
        with pinned_config(int4_gemm._KERNEL, config):
            outs = [int4_gemm.int4_gemm(x, *_gemm_args(layer), one, ones, None, torch.float32) for _ in range(4)]
            assert all(torch.equal(outs[0], out) for out in outs[1:]), config


@pytest.mark.gpu
def test_input_kernel_deinterleaves_the_input():
    from lowbit.kernels.cuda.int4_group import prepare_input

    x = torch.randn(37, 384, device="cuda") * 10
    x[3, 7] = 1e6  # saturates
    sx = torch.tensor(0.02, device="cuda")
    plain, _ = prepare_input(x, W4A8, 384, sx)
    split, _ = prepare_input(x, W4A8, 384, sx, deinterleave=True)
    assert split.dtype == torch.float8_e4m3fn
    assert torch.equal(split.view(torch.uint8), _deinterleaved(plain.view(torch.uint8)))
    plain, _ = prepare_input(x[:, :300], W4A16, 384)
    split, _ = prepare_input(x[:, :300], W4A16, 384, deinterleave=True)
    assert split.dtype == torch.bfloat16 and torch.equal(split, _deinterleaved(plain))
    with pytest.raises(ValueError, match="multiple of 128"):
        prepare_input(x[:, :320], W4A8, 320, sx, deinterleave=True)


@pytest.mark.gpu
@pytest.mark.parametrize("mode,activation,m", [(W4A8, a, m) for a in ("static", "dynamic")
                                               for m in (MAX_ROWS, MAX_ROWS + 1, 100, INT4_GEMM_MAX_ROWS,
                                                         INT4_GEMM_MAX_ROWS + 1)]
                         + [(W4A16, None, m) for m in (W4A16_INT4_GEMM_MIN_ROWS - 1, W4A16_INT4_GEMM_MIN_ROWS,
                                                       INT4_GEMM_MAX_ROWS, INT4_GEMM_MAX_ROWS + 1)])
def test_layers_take_it_within_their_rows(mode, activation, m, monkeypatch):
    """Same results as the float64 reference whichever path runs, and the Triton GEMM runs exactly there:
    W4A8 from 33 to 256 rows (on a layer smaller than it takes by default), W4A16 from 97 to 256."""
    from lowbit.kernels.cuda import int4_group
    from lowbit.kernels.triton import int4_gemm

    monkeypatch.setattr(int4_group, "W4A8_INT4_GEMM_MIN_WEIGHTS", 0)
    layer = _layer(*SHAPES[2], seed=m, mode=mode, activation=activation)
    calls = []
    real = int4_gemm.int4_gemm
    monkeypatch.setattr(int4_gemm, "int4_gemm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(m, layer.geometry.in_channels)
    w = layer.weight_values().double()
    if mode == W4A8:
        xq, sx = layer._fp8_input(x)
        scale = sx.double().reshape(-1, 1) * layer.weight_scale.double()
    else:
        xq, scale = x.to(torch.bfloat16), torch.ones(())
    ref = (xq.double() @ w.t()) * scale + layer.bias.double()
    size = ((xq.double().abs() @ w.abs().t()) * scale).max()
    out = layer.cuda()(x.cuda())
    first = MAX_ROWS + 1 if mode == W4A8 else W4A16_INT4_GEMM_MIN_ROWS
    assert bool(calls) == (first <= m <= INT4_GEMM_MAX_ROWS)
    assert ((out.double().cpu() - ref).abs() <= 2e-3 * size + 1e-6).all()


def test_int4_gemm_takes_whole_steps_within_groups(monkeypatch):
    """The rule, on the CPU: K whole 128-column steps, each within one group or holding whole groups of 32
    or 64 columns; only layer weights that keep their packed codes; W4A8 from 33 to 64 rows, and to 256 on
    layers of W4A8_INT4_GEMM_MIN_WEIGHTS weights or more; W4A16 from 97 to 256 rows."""
    from lowbit.kernels.cuda import int4_group

    assert int4_gemm_takes(384, 128) and int4_gemm_takes(1280, 1280) and int4_gemm_takes(2048, 256)
    assert int4_gemm_takes(1024, 64) and int4_gemm_takes(1024, 32)
    assert not int4_gemm_takes(576, 128) and not int4_gemm_takes(576, 64)  # K no multiple of 128 (SmolLM2's)
    assert not int4_gemm_takes(1024, 192) and not int4_gemm_takes(1024, 16)  # groups split a step; too narrow
    layer = _layer(*SHAPES[0], seed=0)
    codes, scale, zero = layer.weight_codes(), layer.group_scale, layer.group_zero
    kept = {mode: kernel_layout(codes, scale, zero, 128, mode, layer.qweight) for mode in (W4A8, W4A16)}
    assert kept[W4A8].packed is layer.qweight and kept[W4A16].packed is layer.qweight
    small = (MAX_ROWS, MAX_ROWS + 1, W4A8_INT4_GEMM_ANY_LAYER_ROWS, W4A8_INT4_GEMM_ANY_LAYER_ROWS + 1, 100)
    assert [uses_int4_gemm(m, kept[W4A8], W4A8) for m in small] == [False, True, True, False, False]  # 200 x 384
    monkeypatch.setattr(int4_group, "W4A8_INT4_GEMM_MIN_WEIGHTS", 200 * 384)
    rows = (MAX_ROWS, MAX_ROWS + 1, 96, 97, INT4_GEMM_MAX_ROWS, INT4_GEMM_MAX_ROWS + 1)
    assert [uses_int4_gemm(m, kept[W4A8], W4A8) for m in rows] == [False, True, True, True, True, False]
    assert [uses_int4_gemm(m, kept[W4A16], W4A16) for m in rows] == [False, False, False, True, True, False]
    assert not uses_int4_gemm(100, kernel_layout(codes, scale, zero, 128, W4A8), W4A8)  # no packed codes
    narrow = _layer(40, 576, 64, seed=1)
    assert kernel_layout(narrow.weight_codes(), narrow.group_scale, narrow.group_zero, 64, W4A8,
                         narrow.qweight).packed is None
