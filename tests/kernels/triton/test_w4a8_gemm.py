"""The Triton W4A8 GEMM (kernels/triton/w4a8_gemm.py): every configuration gives each weight exactly
(one-hot inputs) and sums within the FP8 tensor cores' error of float64 on awkward shapes; its input
comes deinterleaved from the input kernel; W4A8 layers take it from 33 to 256 rows."""

import pytest
import torch

from lowbit.kernels.cuda.int4_group import (MAX_ROWS, W4A8, W4A8_GEMM_MAX_ROWS, W4A16, kernel_layout, uses_w4a8_gemm,
                                            w4a8_gemm_takes)
from lowbit.nn.geometry import LayerGeometry
from lowbit.nn.mixed_linear import W4A8Linear
from lowbit.nn.weight_quantizer import Int4GroupCodes
from lowbit.numerics.groupwise import group_qparams, quantize_groups

# (N, K, group): N no multiple of the tiles and 3 steps of K (a 4-way split leaves one program none); one
# group per row; groups of two steps; groups of 64 and 32 columns, several to a step
SHAPES = [(200, 384, 128), (130, 1280, 1280), (520, 2048, 256), (200, 384, 64), (136, 640, 32)]


def _layer(n, k, group, seed, activation="static"):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    scale, zero = group_qparams(w, group, symmetric=False)
    layer = W4A8Linear(LayerGeometry.of(torch.nn.Linear(k, n)),
                       {"group_size": group, "symmetric": False, "activation": activation})
    layer.set_codes(Int4GroupCodes(quantize_groups(w, scale, zero, group), scale, zero, torch.tensor(0.5), group))
    layer.bias.copy_(torch.randn(n, generator=g))
    layer.input_scale.fill_(0.02)
    return layer


def _deinterleaved(x):
    """Each 128 columns' even ones, then their odd ones (the GEMM's input order)."""
    m, k = x.shape
    return x.reshape(m, k // 128, 64, 2).transpose(-1, -2).reshape(m, k).contiguous()


def _gemm_args(layer):
    return (layer.qweight.cuda(), layer.group_scale.cuda(), layer.group_zero.cuda(), layer.options["group_size"])


@pytest.mark.gpu
@pytest.mark.parametrize("n,k,group", SHAPES)
def test_every_config_gives_each_weight_exactly(n, k, group, pinned_config):
    """x = unit rows (E4M3 1.0), unit scales: y[i, n] = w[n, i], one product each."""
    from lowbit.kernels.triton import w4a8_gemm

    layer = _layer(n, k, group, seed=n)
    ref = layer.weight_values()
    one, ones = torch.ones((), device="cuda"), torch.ones(n, device="cuda")
    for config in w4a8_gemm._configs():
        with pinned_config(w4a8_gemm._KERNEL, config):
            for start in range(0, k, W4A8_GEMM_MAX_ROWS):
                rows = torch.eye(k)[start:start + W4A8_GEMM_MAX_ROWS]
                x = _deinterleaved(rows).to(torch.float8_e4m3fn).cuda()
                out = w4a8_gemm.w4a8_gemm(x, *_gemm_args(layer), one, ones, None, torch.float32)
                assert torch.equal(out.cpu(), ref[:, start:start + len(rows)].t()), (config, start)


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k,group", [(m, *shape) for m in (37, 256) for shape in SHAPES] + [(256, 4096, 2048, 128)])
def test_every_config_matches_float64(m, n, k, group, pinned_config):
    """Random E4M3 inputs, per-token input scales, per-channel output scales and a bias, in bf16 out too;
    4096 x 2048 at 256 rows is where tiles of 64 input rows with K split went wrong (w4a8_gemm._configs)."""
    from lowbit.kernels.triton import w4a8_gemm

    layer = _layer(n, k, group, seed=m + n)
    g = torch.Generator().manual_seed(m)
    x = (torch.randn(m, k, generator=g) * 40).to(torch.float8_e4m3fn)
    sa, sw, bias = torch.rand(m, generator=g) + 0.5, torch.rand(n, generator=g), torch.randn(n, generator=g)
    w = layer.weight_values().double()
    scale = sa.double()[:, None] * sw.double()
    ref = (x.double() @ w.t()) * scale + bias.double()
    size = ((x.double().abs() @ w.abs().t()) * scale).max()
    for config in w4a8_gemm._configs():
        with pinned_config(w4a8_gemm._KERNEL, config):
            for out_dtype in (torch.float32, torch.bfloat16):
                out = w4a8_gemm.w4a8_gemm(_deinterleaved(x).cuda(), *_gemm_args(layer), sa.cuda(), sw.cuda(),
                                          bias.cuda(), out_dtype)
                assert out.dtype == out_dtype and out.shape == (m, n)
                # float32 sums in another order, with Hopper's ~14 bits inside a tile (as float_gemm)
                bound = 2e-3 * size + (ref.abs() * 2 ** -8 if out_dtype == torch.bfloat16 else 1e-6)
                err = (out.double().cpu() - ref).abs()
                assert (err <= bound).all(), (config, out_dtype, float(err.max() / size))


@pytest.mark.gpu
def test_input_kernel_deinterleaves_the_codes():
    from lowbit.kernels.cuda.int4_group import prepare_input

    x = torch.randn(37, 384, device="cuda") * 10
    x[3, 7] = 1e6  # saturates
    sx = torch.tensor(0.02, device="cuda")
    plain, _ = prepare_input(x, W4A8, 384, sx)
    split, _ = prepare_input(x, W4A8, 384, sx, deinterleave=True)
    assert split.dtype == torch.float8_e4m3fn
    assert torch.equal(split.view(torch.uint8), _deinterleaved(plain.view(torch.uint8)))
    with pytest.raises(ValueError, match="multiple of 128"):
        prepare_input(x[:, :320], W4A8, 320, sx, deinterleave=True)


@pytest.mark.gpu
@pytest.mark.parametrize("activation", ["static", "dynamic"])
@pytest.mark.parametrize("m", [MAX_ROWS, MAX_ROWS + 1, 100, W4A8_GEMM_MAX_ROWS, W4A8_GEMM_MAX_ROWS + 1])
def test_w4a8_layers_take_it_from_33_to_256_rows(m, activation, monkeypatch):
    """Same results as the float64 reference whichever path runs, and the Triton GEMM runs exactly there
    (on a layer smaller than the GEMM takes by default)."""
    from lowbit.kernels.cuda import int4_group
    from lowbit.kernels.triton import w4a8_gemm

    monkeypatch.setattr(int4_group, "W4A8_GEMM_MIN_WEIGHTS", 0)

    layer = _layer(*SHAPES[2], seed=m, activation=activation)
    calls = []
    real = w4a8_gemm.w4a8_gemm
    monkeypatch.setattr(w4a8_gemm, "w4a8_gemm", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    x = torch.randn(m, layer.geometry.in_channels)
    xq, sx = layer._fp8_input(x)
    w = layer.weight_values().double()
    scale = sx.double().reshape(-1, 1) * layer.weight_scale.double()
    ref = (xq.double() @ w.t()) * scale + layer.bias.double()
    size = ((xq.double().abs() @ w.abs().t()) * scale).max()
    out = layer.cuda()(x.cuda())
    assert bool(calls) == (MAX_ROWS < m <= W4A8_GEMM_MAX_ROWS)
    assert ((out.double().cpu() - ref).abs() <= 2e-3 * size + 1e-6).all()


def test_w4a8_gemm_takes_whole_steps_within_groups(monkeypatch):
    """The rule, on the CPU: K whole 128-column steps, each within one group or holding whole groups of 32
    or 64 columns; only W4A8 layer weights that keep their packed codes, from 33 to 256 rows, on layers of
    W4A8_GEMM_MIN_WEIGHTS weights or more."""
    from lowbit.kernels.cuda import int4_group

    assert w4a8_gemm_takes(384, 128) and w4a8_gemm_takes(1280, 1280) and w4a8_gemm_takes(2048, 256)
    assert w4a8_gemm_takes(1024, 64) and w4a8_gemm_takes(1024, 32)
    assert not w4a8_gemm_takes(576, 128) and not w4a8_gemm_takes(576, 64)  # K no multiple of 128 (SmolLM2's)
    assert not w4a8_gemm_takes(1024, 192) and not w4a8_gemm_takes(1024, 16)  # groups split a step; too narrow
    layer = _layer(*SHAPES[0], seed=0)
    codes, scale, zero = layer.weight_codes(), layer.group_scale, layer.group_zero
    kept = kernel_layout(codes, scale, zero, 128, W4A8, layer.qweight)
    assert kept.packed is layer.qweight
    assert not uses_w4a8_gemm(100, kept, W4A8)  # 200 x 384: too small a layer
    monkeypatch.setattr(int4_group, "W4A8_GEMM_MIN_WEIGHTS", 200 * 384)
    assert [uses_w4a8_gemm(m, kept, W4A8) for m in (MAX_ROWS, MAX_ROWS + 1, W4A8_GEMM_MAX_ROWS,
                                                   W4A8_GEMM_MAX_ROWS + 1)] == [False, True, True, False]
    assert not uses_w4a8_gemm(100, kernel_layout(codes, scale, zero, 128, W4A8), W4A8)  # no packed codes
    assert kernel_layout(codes, scale, zero, 128, W4A16, layer.qweight).packed is None
    narrow = _layer(40, 576, 64, seed=1)
    assert kernel_layout(narrow.weight_codes(), narrow.group_scale, narrow.group_zero, 64, W4A8,
                         narrow.qweight).packed is None
