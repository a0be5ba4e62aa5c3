"""INT8 convolution as an implicit GEMM on channels-last int8 tensors (Triton, Hopper tensor cores).

GEMM view: M = B*OH*OW output pixels, N = output channels, K = KH*KW*C ordered (kh, kw, c), with the
weight stored [O, KH, KW, C] (:func:`conv_weight_nhwc`), int8 or signed INT4 packed along C into
[O, KH, KW, C/2] bytes (C even), whose nibbles meet the even and odd channels in two int8 dots, as in
the GEMM. Each A tile is gathered straight from the
input, no im2col in memory: when C is a multiple of BLOCK_K a k block lies inside one (kh, kw) tap and
is contiguous; otherwise each element's tap is decoded. Convolutions of fewer than 16 input channels
without a residual (the 3-channel stem) write an im2col matrix instead and run the GEMM on it.
Padding reads code 0, which is real 0 for the symmetric activations this kernel takes. The epilogue is
the GEMM's (gemm._epilogue): scales, bias, residual, ReLU, then int8 for the next layer or float.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .autotune import candidate_configs
from .gemm import (_OUT_KINDS, _check, _epilogue, _grouped_tile, _dot_weights, check_int32_accumulation,
                   check_int32_indexable, check_out_range, int8_gemm, scale_arg)


def conv_configs():
    return [triton.Config({"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8}, num_stages=s, num_warps=w)
            for bm, bn, bk, s, w in [(128, 128, 64, 4, 8), (256, 128, 64, 4, 8), (128, 256, 64, 4, 8),
                                     (128, 64, 64, 4, 4), (256, 64, 64, 4, 8), (128, 128, 128, 3, 8),
                                     (256, 128, 128, 3, 8), (64, 64, 64, 4, 4)]]


def _keep_aligned_configs(configs, named_args, **kwargs):
    """Where some config's BLOCK_K divides C, the contiguous path is the fast one: drop the others."""
    aligned = [c for c in configs if named_args["C"] % c.kwargs["BLOCK_K"] == 0]
    return aligned or configs


@triton.jit
def _gather_taps(row_ptr, ih0, iw0, k, row_ok, C, KW, dil_h, dil_w, H, W, sxh, sxw):
    """[rows, k] input codes: output pixel i (its image at row_ptr[i], its window's corner at ih0[i],
    iw0[i]) meets k = (kh * KW + kw) * C + c at input pixel (ih0 + kh dil_h, iw0 + kw dil_w), channel c;
    0 in the padding and where row_ok is false."""
    c = k % C
    tap = k // C
    kh = tap // KW
    ih = ih0[:, None] + (kh * dil_h)[None, :]
    iw = iw0[:, None] + ((tap - kh * KW) * dil_w)[None, :]
    inside = row_ok & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    return tl.load(row_ptr[:, None] + ih * sxh + iw * sxw + c[None, :], mask=inside, other=0)


@triton.autotune(configs=candidate_configs(conv_configs()),
                 key=["M", "N", "K", "C", "KW", "OUT_KIND", "RES_KIND", "W_PACKED"],
                 prune_configs_by={"early_config_prune": _keep_aligned_configs})
@triton.heuristics({"C_ALIGNED": lambda args: args["C"] % args["BLOCK_K"] == 0})
@triton.jit
def _int8_conv_kernel(x_ptr, w_ptr, out_ptr, sa_ptr, sw_ptr, bias_ptr, out_scale_ptr, res_ptr, res_scale_ptr,
                      M, N, K, C, H, W, OH, OW, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                      sxb, sxh, sxw, stride_om, stride_on, stride_rm, stride_rn,
                      HAS_BIAS: tl.constexpr, ACT: tl.constexpr, OUT_KIND: tl.constexpr, RES_KIND: tl.constexpr,
                      QMIN: tl.constexpr, QMAX: tl.constexpr, W_PACKED: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
                      C_ALIGNED: tl.constexpr):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), M, N, BLOCK_M, BLOCK_N, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    img = offs_m // (OW * OH)
    ih0 = oh * stride_h - pad_h
    iw0 = ow * stride_w - pad_w
    row_ptr = x_ptr + img.to(tl.int64) * sxb  # [BLOCK_M]: the image each output pixel reads
    stride_wn = K // 2 if W_PACKED else K
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
    for kb in range(0, tl.cdiv(K, BLOCK_K)):
        k0 = kb * BLOCK_K
        if C_ALIGNED:  # one tap per k block, channels contiguous
            tap = k0 // C
            c0 = tl.multiple_of(k0 - tap * C, BLOCK_K)
            kh = tap // KW
            ih = ih0 + kh * dil_h
            iw = iw0 + (tap - kh * KW) * dil_w
            inside = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a_ptrs = row_ptr + ih * sxh + iw * sxw + c0
            a = tl.load(a_ptrs[:, None] + offs_k[None, :], mask=inside[:, None], other=0)
            acc = _dot_weights(acc, a, w_ptr, offs_n, k0, N, K, stride_wn, 1, BLOCK_M, BLOCK_K, BLOCK_N, W_PACKED,
                               False)
        else:  # decode (kh, kw, c) per element
            k = k0 + offs_k
            a = _gather_taps(row_ptr, ih0, iw0, k, mask_m[:, None] & (k[None, :] < K), C, KW, dil_h, dil_w, H, W,
                             sxh, sxw)
            acc = _dot_weights(acc, a, w_ptr, offs_n, k0, N, K, stride_wn, 1, BLOCK_M, BLOCK_K, BLOCK_N, W_PACKED,
                               True)
    _epilogue(acc, offs_m, offs_n, M, N, out_ptr, stride_om, stride_on, sa_ptr, sw_ptr, bias_ptr, out_scale_ptr,
              res_ptr, stride_rm, stride_rn, res_scale_ptr, False, HAS_BIAS, ACT, OUT_KIND, RES_KIND, QMIN, QMAX)


# Below this many input channels a k block spans several taps, and gathering them inside the GEMM's
# pipeline ran at 20 TOP/s (ResNet-50's 3-channel stem: a third of the model's time at batch 256);
# such convolutions write their im2col matrix once and run the GEMM on it.
IM2COL_MAX_CHANNELS = 16


@triton.jit
def _im2col_kernel(x_ptr, a_ptr, M, K, KP, H, W, OH, OW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                   sxb, sxh, sxw, C: tl.constexpr, KW: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr):
    """a[m, k] = the input code that output pixel m meets at k = (kh, kw, c); 0 in the padding and in the
    row's tail K..KP (which keeps the rows 16-byte aligned). Tiles of whole 32-byte row pieces store fast;
    copying each kernel row's KW * C adjacent codes as one unaligned run was slower (H100: 1.7 ms
    against 1.0 for ResNet-50's stem at batch 256)."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_k = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    img = offs_m // (OW * OH)
    a = _gather_taps(x_ptr + img.to(tl.int64) * sxb, oh * stride_h - pad_h, ow * stride_w - pad_w, offs_k,
                     (offs_m < M)[:, None] & (offs_k < K)[None, :], C, KW, dil_h, dil_w, H, W, sxh, sxw)
    tl.store(a_ptr + offs_m.to(tl.int64)[:, None] * KP + offs_k[None, :], a,
             mask=(offs_m < M)[:, None] & (offs_k < KP)[None, :])


def _conv_by_im2col(x, w, x_scale, w_scale, bias, geometry, relu, out_dtype, out_scale, out_range):
    """The convolution as im2col [M, KP] int8 + int8_gemm (the same sums and epilogue): its [M, O] rows
    are the channels-last output. KP is K rounded up to 16 (``geometry`` holds it with the output size)."""
    b, c, h, wd = x.shape
    o, kh, kw = w.shape[:3]
    oh, ow, kp, (sh, sw), (pt, pl), (dh, dw) = geometry
    m, k = b * oh * ow, kh * kw * c
    a = torch.empty(m, kp, dtype=torch.int8, device=x.device)
    _im2col_kernel[(triton.cdiv(m, 64), triton.cdiv(kp, 32))](
        x, a, m, k, kp, h, wd, oh, ow, sh, sw, pt, pl, dh, dw, x.stride(0), x.stride(2), x.stride(3),
        C=c, KW=kw, BLOCK_M=64, BLOCK_K=32)
    weights = torch.nn.functional.pad(w.reshape(o, k), (0, kp - k))  # zero columns meet the zero tail
    y = int8_gemm(a, weights, x_scale, w_scale, bias, activation="relu" if relu else None, out_dtype=out_dtype,
                  out_scale=out_scale, out_range=out_range)
    return y.view(b, oh, ow, o).permute(0, 3, 1, 2)


def conv_weight_nhwc(weight: torch.Tensor) -> torch.Tensor:
    """[O, C, KH, KW] -> [O, KH, KW, C] contiguous: the layout int8_conv2d reads."""
    return weight.permute(0, 2, 3, 1).contiguous()


def conv_output_size(size: int, pad_before: int, pad_after: int, kernel: int, stride: int, dilation: int) -> int:
    return (size + pad_before + pad_after - dilation * (kernel - 1) - 1) // stride + 1


def int8_conv2d(x: torch.Tensor, w: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None, *, stride=(1, 1), pads=(0, 0, 0, 0), dilation=(1, 1),
                residual: torch.Tensor | None = None, residual_scale: float | torch.Tensor | None = None,
                relu: bool = False, out_dtype: torch.dtype = torch.int8,
                out_scale: float | torch.Tensor | None = None, out_range: tuple[int, int] = (-127, 127)) -> torch.Tensor:
    """Convolution of int8 codes, groups = 1, zero padding.

    x [B, C, H, W] int8 (channels-last memory is read directly; other layouts are copied to it),
    w [O, KH, KW, C] int8 (:func:`conv_weight_nhwc`) or signed INT4 packed along C, uint8
    [O, KH, KW, C/2] (C even), x_scale float32 scalar, w_scale float32 [O],
    bias float32 [O], pads in F.pad order (left, right, top, bottom). ``residual`` [B, O, OH, OW]
    is int8 codes with ``residual_scale``, or bf16 / float32. Returns [B, O, OH, OW] channels-last:
    int8 codes in ``out_range`` at ``out_scale``, float, or the raw int32 accumulators. Scales are float32 scalar
    tensors (or Python numbers); the call never waits for the GPU, so it can be graph-captured.
    """
    if x.dim() != 4 or w.dim() != 4:
        raise ValueError(f"int8_conv2d takes 4-D x and w, got {tuple(x.shape)} and {tuple(w.shape)}")
    device = x.device
    if device.type != "cuda":
        raise ValueError(f"int8_conv2d runs on CUDA tensors, x is on {device}")
    b, c, h, wd = x.shape
    o, kh, kw = w.shape[:3]
    _check(x, "x", torch.int8, device)
    packed = w.dtype == torch.uint8
    if packed:
        if c % 2:
            raise ValueError(f"packed INT4 conv weights need an even channel count, x has {c} channels")
        _check(w, "w (packed INT4)", torch.uint8, device, (o, kh, kw, c // 2))
    else:
        _check(w, "w", torch.int8, device, (o, kh, kw, c))
    if not w.is_contiguous():
        raise ValueError("w must be contiguous [O, KH, KW, C] (see conv_weight_nhwc)")
    qmin, qmax = check_out_range(out_range)
    _check(x_scale, "x_scale", torch.float32, device, ())
    _check(w_scale, "w_scale", torch.float32, device, (o,))
    if bias is not None:
        _check(bias, "bias", torch.float32, device, (o,))
    if out_dtype not in _OUT_KINDS:
        raise ValueError(f"out_dtype={out_dtype}: expected one of {', '.join(map(str, _OUT_KINDS))}")
    kind = _OUT_KINDS[out_dtype]
    out_scale = scale_arg(out_scale, "out_scale", device) if kind == 1 else w_scale  # w_scale: never read
    k = kh * kw * c
    check_int32_accumulation(k, "K = KH*KW*C")
    (sh, sw), (dh, dw) = stride, dilation
    pl, pr, pt, pb = pads
    oh = conv_output_size(h, pt, pb, kh, sh, dh)
    ow = conv_output_size(wd, pl, pr, kw, sw, dw)
    if oh <= 0 or ow <= 0:
        raise ValueError(f"input {h}x{wd} is smaller than the {kh}x{kw} kernel (dilation {dilation}, pads {pads})")
    if x.stride(1) != 1:
        x = x.contiguous(memory_format=torch.channels_last)
    check_int32_indexable(x, "x", "int8_conv2d")
    m = b * oh * ow
    k_padded = -(-k // 16) * 16  # the GEMM indexes its im2col input and its output with 32 bits
    if c < IM2COL_MAX_CHANNELS and residual is None and not packed and 0 < m * max(k_padded, o) < 1 << 31 and o > 0:
        return _conv_by_im2col(x, w, x_scale, w_scale, bias, (oh, ow, k_padded, stride, (pt, pl), dilation), relu,
                               out_dtype, out_scale if kind == 1 else None, out_range)
    out = torch.empty((b, o, oh, ow), dtype=out_dtype, device=device, memory_format=torch.channels_last)
    res_kind, res_scale = 0, w_scale  # never read without a residual
    if residual is not None:
        if residual.dtype == torch.int8:
            res_kind, res_scale = 1, scale_arg(residual_scale, "residual_scale (of the int8 residual)", device)
        elif residual.dtype in (torch.bfloat16, torch.float32):
            res_kind = 2
        else:
            raise TypeError(f"residual must be int8 codes, bfloat16 or float32, got {residual.dtype}")
        _check(residual, "residual", residual.dtype, device, out.shape)
        residual = residual.contiguous(memory_format=torch.channels_last)
    for name, t in (("output", out), ("residual", residual)):
        check_int32_indexable(t, name, "int8_conv2d")
    if m == 0 or o == 0:
        return out
    bias_arg = bias if bias is not None else w_scale  # never read without HAS_BIAS
    res_arg = residual if residual is not None else out  # never read without RES_KIND
    _int8_conv_kernel[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(o, meta["BLOCK_N"]),)](
        x, w, out, x_scale, w_scale, bias_arg, out_scale, res_arg, res_scale,
        m, o, k, c, h, wd, oh, ow, kw, sh, sw, pt, pl, dh, dw,
        x.stride(0), x.stride(2), x.stride(3), o, 1, o, 1,
        HAS_BIAS=bias is not None, ACT=1 if relu else 0, OUT_KIND=kind, RES_KIND=res_kind, QMIN=qmin, QMAX=qmax,
        W_PACKED=packed, enable_fp_fusion=False)
    return out
