"""The Triton implicit-GEMM INT8 convolution and int8 max pool against the integer reference (GPU only)."""

import pytest
import torch
import torch.nn.functional as F

from lowbit.kernels.reference import epilogue, integer_conv_acc
from lowbit.nn import LayerGeometry

pytestmark = pytest.mark.gpu

# (B, C, H, W, O, (KH, KW), stride, pads (left, right, top, bottom), dilation)
CASES = [
    (2, 3, 17, 19, 20, (7, 7), (2, 2), (3, 3, 3, 3), (1, 1)),     # the stem: C not a multiple of BLOCK_K
    (1, 64, 9, 9, 64, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)),      # contiguous taps
    (3, 48, 10, 7, 33, (3, 3), (2, 2), (1, 0, 2, 1), (1, 1)),     # uneven pads, odd output channels
    (2, 128, 8, 8, 256, (1, 1), (2, 2), (0, 0, 0, 0), (1, 1)),    # downsample shortcut
    (2, 64, 12, 12, 40, (3, 3), (1, 1), (2, 2, 2, 2), (2, 2)),    # dilation
    (5, 256, 7, 7, 130, (1, 1), (1, 1), (0, 0, 0, 0), (1, 1)),
    (1, 64, 11, 6, 17, (5, 1), (1, 2), (0, 0, 2, 2), (1, 1)),     # non-square kernel and stride
    (4, 32, 5, 5, 8, (3, 3), (3, 3), (0, 0, 0, 0), (1, 1)),       # output 1x1
    (1, 512, 14, 14, 512, (3, 3), (2, 2), (1, 1, 1, 1), (1, 1)),
]


def _case(b, c, h, w, o, k, stride, pads, dilation, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randint(-127, 128, (b, c, h, w), dtype=torch.int8, device="cuda", generator=g)
    wt = torch.randint(-127, 128, (o, c, *k), dtype=torch.int8, device="cuda", generator=g)
    geo = LayerGeometry("conv2d", c, o, True, k, stride, dilation, pads)
    return x.contiguous(memory_format=torch.channels_last), wt, geo


def _acc_ref(x, wt, geo):
    return integer_conv_acc(x.cpu().contiguous(), 0, wt.cpu(), geo)


@pytest.mark.parametrize("case", CASES, ids=[f"c{c[1]}k{c[5][0]}x{c[5][1]}s{c[6][0]}" for c in CASES])
def test_accumulators_exact(case):
    from lowbit.kernels.triton import conv_weight_nhwc, int8_conv2d

    x, wt, geo = _case(*case, seed=sum(case[:5]))
    o = geo.out_channels
    acc = int8_conv2d(x, conv_weight_nhwc(wt), torch.ones((), device="cuda"), torch.ones(o, device="cuda"),
                      stride=geo.stride, pads=geo.pads, dilation=geo.dilation, out_dtype=torch.int32)
    assert acc.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(acc.cpu(), _acc_ref(x, wt, geo))


@pytest.mark.parametrize("residual_kind", [None, "int8", "bfloat16", "float32"])
@pytest.mark.parametrize("relu", [False, True])
def test_fused_epilogue_is_bit_exact(residual_kind, relu):
    from lowbit.kernels.triton import conv_weight_nhwc, int8_conv2d

    x, wt, geo = _case(2, 64, 10, 9, 72, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), seed=7)
    g = torch.Generator(device="cuda").manual_seed(8)
    o = geo.out_channels
    sx = torch.tensor(0.02, device="cuda")
    sw = torch.rand(o, device="cuda", generator=g) * 1e-3 + 1e-4
    bias = torch.randn(o, device="cuda", generator=g)
    out_shape = (2, o, 10, 9)
    residual, rscale = None, None
    if residual_kind == "int8":
        residual = torch.randint(-127, 128, out_shape, dtype=torch.int8, device="cuda", generator=g)
        rscale = torch.tensor(0.05, device="cuda")
    elif residual_kind is not None:
        residual = (torch.randn(out_shape, device="cuda", generator=g) * 3).to(getattr(torch, residual_kind))
    out_scale = torch.tensor(0.07, device="cuda")
    args = dict(stride=geo.stride, pads=geo.pads, dilation=geo.dilation, residual=residual, residual_scale=rscale,
                relu=relu)
    q = int8_conv2d(x, conv_weight_nhwc(wt), sx, sw, bias, out_dtype=torch.int8, out_scale=out_scale, **args)
    y = int8_conv2d(x, conv_weight_nhwc(wt), sx, sw, bias, out_dtype=torch.float32, **args)
    y_bf16 = int8_conv2d(x, conv_weight_nhwc(wt), sx, sw, bias, out_dtype=torch.bfloat16, **args)
    acc = _acc_ref(x, wt, geo)
    ref_args = dict(residual=None if residual is None else residual.cpu(),
                    residual_scale=None if rscale is None else rscale.cpu(), relu=relu)
    ref_y = epilogue(acc, sx.cpu(), sw.cpu(), bias.cpu(), 1, **ref_args)
    ref_q = epilogue(acc, sx.cpu(), sw.cpu(), bias.cpu(), 1, out_scale=out_scale.cpu(), **ref_args)
    assert torch.equal(y.cpu(), ref_y)
    assert torch.equal(y_bf16.cpu(), ref_y.to(torch.bfloat16))  # both round to nearest even
    assert torch.equal(q.cpu(), ref_q)
    assert 0 < (q != 0).float().mean() and (q.abs() == 127).float().mean() < 0.5  # a real test of rounding


@pytest.mark.parametrize("case", [CASES[0], (3, 5, 13, 11, 70, (3, 5), (2, 1), (2, 0, 1, 3), (2, 1))],
                         ids=["stem", "c5_dilated"])
def test_few_channels_run_im2col_and_the_gemm_bit_exact(case, monkeypatch):
    """Fewer than 16 input channels: an im2col matrix and the GEMM, with the same sums and epilogue."""
    from lowbit.kernels.triton import conv, conv_weight_nhwc, int8_conv2d

    calls = []
    real = conv._conv_by_im2col
    monkeypatch.setattr(conv, "_conv_by_im2col", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, wt, geo = _case(*case, seed=5)
    g = torch.Generator(device="cuda").manual_seed(6)
    o = geo.out_channels
    sx = torch.tensor(0.02, device="cuda")
    sw = torch.rand(o, device="cuda", generator=g) * 1e-3 + 1e-4
    bias = torch.randn(o, device="cuda", generator=g)
    out_scale = torch.tensor(0.03, device="cuda")
    args = dict(stride=geo.stride, pads=geo.pads, dilation=geo.dilation, relu=True)
    acc = int8_conv2d(x, conv_weight_nhwc(wt), torch.ones((), device="cuda"), torch.ones(o, device="cuda"),
                      stride=geo.stride, pads=geo.pads, dilation=geo.dilation, out_dtype=torch.int32)
    q = int8_conv2d(x, conv_weight_nhwc(wt), sx, sw, bias, out_dtype=torch.int8, out_scale=out_scale, **args)
    y = int8_conv2d(x, conv_weight_nhwc(wt), sx, sw, bias, out_dtype=torch.float32, **args)
    assert len(calls) == 3
    ref_acc = _acc_ref(x, wt, geo)
    assert acc.is_contiguous(memory_format=torch.channels_last) and q.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(acc.cpu(), ref_acc)
    assert torch.equal(y.cpu(), epilogue(ref_acc, sx.cpu(), sw.cpu(), bias.cpu(), 1, relu=True))
    assert torch.equal(q.cpu(), epilogue(ref_acc, sx.cpu(), sw.cpu(), bias.cpu(), 1, relu=True,
                                         out_scale=out_scale.cpu()))
    assert 0 < (q != 0).float().mean() and (q == 127).float().mean() < 0.5


def test_layouts_and_bad_inputs():
    from lowbit.kernels.triton import conv_weight_nhwc, int8_conv2d

    x, wt, geo = _case(2, 16, 6, 6, 8, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1), seed=1)
    w = conv_weight_nhwc(wt)
    one, ones = torch.ones((), device="cuda"), torch.ones(8, device="cuda")
    nchw = int8_conv2d(x.contiguous(), w, one, ones, pads=geo.pads, out_dtype=torch.int32)  # copied to NHWC
    assert torch.equal(nchw.cpu(), _acc_ref(x, wt, geo))
    empty = int8_conv2d(x[:0], w, one, ones, pads=geo.pads, out_dtype=torch.int32)
    assert empty.shape == (0, 8, 6, 6)
    with pytest.raises(ValueError, match="CUDA"):
        int8_conv2d(x.cpu(), w, one, ones)
    with pytest.raises(TypeError, match="x must be torch.int8"):
        int8_conv2d(x.float(), w, one, ones)
    with pytest.raises(ValueError, match="w has shape"):
        int8_conv2d(x, wt, one, ones)
    with pytest.raises(ValueError, match="out_scale"):
        int8_conv2d(x, w, one, ones, pads=geo.pads, out_dtype=torch.int8)
    with pytest.raises(ValueError, match="residual has shape"):
        int8_conv2d(x, w, one, ones, residual=torch.zeros(2, 8, 5, 5, device="cuda"), out_dtype=torch.float32)
    with pytest.raises(ValueError, match="smaller than"):
        int8_conv2d(x[:, :, :2, :2], w, one, ones, out_dtype=torch.int32)


@pytest.mark.parametrize("shape", [(2, 64, 15, 16), (1, 3, 7, 5), (3, 200, 9, 9)])
def test_max_pool_exact(shape):
    from lowbit.kernels.triton import int8_max_pool2d

    g = torch.Generator(device="cuda").manual_seed(shape[1])
    x = torch.randint(-127, 128, shape, dtype=torch.int8, device="cuda", generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    out = int8_max_pool2d(x, (3, 3), (2, 2), (1, 1))
    ref = F.max_pool2d(x.cpu().float(), 3, 2, 1).to(torch.int8)
    assert torch.equal(out.cpu(), ref)
    with pytest.raises(ValueError, match="exceeds half"):
        int8_max_pool2d(x, (3, 3), (2, 2), (2, 2))


def test_static_quantize_keeps_layout():
    from lowbit.config import IntFormat, QuantSpec
    from lowbit.kernels.triton import quantize_int8
    from lowbit.numerics import quantize

    x = (torch.randn(3, 3, 9, 10, device="cuda") * 2).contiguous(memory_format=torch.channels_last)
    scale = torch.tensor(0.013, device="cuda")
    q, _ = quantize_int8(x, scale)
    assert q.is_contiguous(memory_format=torch.channels_last)
    ref = quantize(x.cpu(), QuantSpec(IntFormat(8)), scale.cpu(), torch.zeros((), dtype=torch.int32))
    assert torch.equal(q.cpu(), ref)


@pytest.mark.parametrize("case", [(2, 20, 9, 8, 24, (3, 3), (1, 1), (1, 1, 1, 1), (1, 1)), CASES[2],
                                  (2, 128, 9, 7, 200, (3, 3), (2, 1), (1, 1, 1, 1), (1, 1))],
                         ids=["c20", "c48", "aligned"])
@pytest.mark.parametrize("int4", [False, True], ids=["int8", "int4"])
def test_every_config_is_exact(case, int4, pinned_config):
    """Tests run one config per shape (LOWBIT_AUTOTUNE=0); here each candidate runs alone."""
    from lowbit.kernels.triton import conv, conv_weight_nhwc, int8_conv2d
    from lowbit.numerics import pack_int4

    x, wt, geo = _case(*case, seed=11)
    if int4:
        if geo.in_channels % 2:
            pytest.skip("packed INT4 needs an even channel count")
        wt = torch.clamp(wt, -8, 7)
    ref = _acc_ref(x, wt, geo)
    w = pack_int4(conv_weight_nhwc(wt)) if int4 else conv_weight_nhwc(wt)
    one, ones = torch.ones((), device="cuda"), torch.ones(geo.out_channels, device="cuda")
    for config in conv.conv_configs():
        with pinned_config(conv._int8_conv_kernel, config):
            acc = int8_conv2d(x, w, one, ones, stride=geo.stride, pads=geo.pads, dilation=geo.dilation,
                              out_dtype=torch.int32)
        assert torch.equal(acc.cpu(), ref), config


@pytest.mark.parametrize("case", [CASES[1], CASES[2], CASES[3], CASES[6], CASES[8]],
                         ids=["c64k3", "c48", "c128k1", "c64k5x1", "c512k3"])
def test_packed_int4_weights_exact(case):
    from lowbit.kernels.triton import conv_weight_nhwc, int8_conv2d
    from lowbit.numerics import pack_int4

    x, _, geo = _case(*case, seed=5)
    g = torch.Generator(device="cuda").manual_seed(6)
    wt = torch.randint(-8, 8, (geo.out_channels, geo.in_channels, *geo.kernel_size), dtype=torch.int8,
                       device="cuda", generator=g)
    packed = pack_int4(conv_weight_nhwc(wt))
    one, ones = torch.ones((), device="cuda"), torch.ones(geo.out_channels, device="cuda")
    acc = int8_conv2d(x, packed, one, ones, stride=geo.stride, pads=geo.pads, dilation=geo.dilation,
                      out_dtype=torch.int32)
    assert torch.equal(acc.cpu(), _acc_ref(x, wt, geo))
    codes = int8_conv2d(x, packed, torch.tensor(0.01, device="cuda"), ones * 0.01, relu=True, stride=geo.stride,
                        pads=geo.pads, dilation=geo.dilation, out_scale=0.02, out_range=(0, 15))
    ref = epilogue(_acc_ref(x, wt, geo), torch.tensor(0.01), torch.ones(geo.out_channels) * 0.01, None, 1,
                   relu=True, out_scale=torch.tensor(0.02), out_range=(0, 15))
    assert torch.equal(codes.cpu(), ref)
    with pytest.raises(ValueError, match="even channel count"):
        int8_conv2d(x[:, :1], packed[..., :1], one, ones, stride=geo.stride, pads=geo.pads, dilation=geo.dilation)
