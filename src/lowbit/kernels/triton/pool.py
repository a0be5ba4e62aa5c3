"""Max pooling of int8 codes on channels-last tensors. Quantization is monotonic, so pooling
the codes equals quantizing the pooled floats at the same scale: the pool stays in int8."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv import conv_output_size
from .gemm import check_int32_indexable


@triton.jit
def _max_pool_kernel(x_ptr, out_ptr, P, C, H, W, OH, OW, KH, KW, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                     sxb, sxh, sxw, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_p = offs_p < P
    mask_c = offs_c[None, :] < C
    ow = offs_p % OW
    oh = (offs_p // OW) % OH
    row_ptr = x_ptr + (offs_p // (OW * OH)).to(tl.int64) * sxb
    best = tl.full((BLOCK_P, BLOCK_C), -128, dtype=tl.int32)  # below every code: padding never wins
    for kh in range(0, KH):
        ih = oh * stride_h - pad_h + kh * dil_h
        for kw in range(0, KW):
            iw = ow * stride_w - pad_w + kw * dil_w
            inside = mask_p & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            ptrs = (row_ptr + ih * sxh + iw * sxw)[:, None] + offs_c[None, :]
            valid = inside[:, None] & mask_c
            # other=0 and a select, not other=-128: Triton 3.6 miscompiled the vectorized masked
            # int8 load with a nonzero fill on the H100 (wrong maxima in tests)
            v = tl.load(ptrs, mask=valid, other=0)
            best = tl.maximum(best, tl.where(valid, v.to(tl.int32), -128))
    tl.store(out_ptr + offs_p[:, None] * C + offs_c[None, :], best.to(tl.int8), mask=mask_p[:, None] & mask_c)


def int8_max_pool2d(x: torch.Tensor, kernel_size, stride, padding, dilation=(1, 1)) -> torch.Tensor:
    """x [B, C, H, W] int8 codes on CUDA -> pooled codes, channels-last (as F.max_pool2d,
    ceil_mode=False; a padded position never wins)."""
    if x.device.type != "cuda" or x.dtype != torch.int8 or x.dim() != 4:
        raise ValueError(f"int8_max_pool2d takes a 4-D int8 CUDA tensor, got {x.dtype} {tuple(x.shape)} on {x.device}")
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel_size, stride, padding, dilation
    if ph > kh // 2 or pw > kw // 2:
        raise ValueError(f"padding {padding} exceeds half the kernel {kernel_size}")
    check_int32_indexable(x, "x", "int8_max_pool2d")
    if x.stride(1) != 1:
        x = x.contiguous(memory_format=torch.channels_last)
    b, c, h, w = x.shape
    oh, ow = conv_output_size(h, ph, ph, kh, sh, dh), conv_output_size(w, pw, pw, kw, sw, dw)
    out = torch.empty((b, c, oh, ow), dtype=torch.int8, device=x.device, memory_format=torch.channels_last)
    p = b * oh * ow
    if p and c:
        block_c = min(128, triton.next_power_of_2(c))
        block_p = max(1, 4096 // block_c)
        _max_pool_kernel[(triton.cdiv(p, block_p), triton.cdiv(c, block_c))](
            x, out, p, c, h, w, oh, ow, kh, kw, sh, sw, ph, pw, dh, dw, x.stride(0), x.stride(2), x.stride(3),
            BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    return out
