"""Activation quantization to int8 on the GPU, matching lowbit.numerics.quantize exactly:
q = clamp(round_half_even(float32(x) / scale), qmin, qmax), with IEEE division ([-127, 127] for s8,
[0, 15] for u4...)."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, N, stride_xm, stride_qm, QMAX: tl.constexpr, BLOCK: tl.constexpr):
    """Per token: scale = max|x| / QMAX over the row (1.0 for an all-zero row), then quantize the row."""
    row = tl.program_id(0)
    x_row = x_ptr + row * stride_xm
    amax = tl.zeros((BLOCK,), dtype=tl.float32)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=offs < N, other=0.0).to(tl.float32)
        amax = tl.maximum(amax, tl.abs(x))
    scale = tl.math.div_rn(tl.max(amax, axis=0), QMAX * 1.0)
    scale = tl.where(scale > 0, scale, 1.0)
    tl.store(scale_ptr + row, scale)
    for start in range(0, N, BLOCK):
        offs = start + tl.arange(0, BLOCK)
        x = tl.load(x_row + offs, mask=offs < N, other=0.0).to(tl.float32)
        q = libdevice.rint(tl.math.div_rn(x, scale))
        q = tl.minimum(tl.maximum(q, -QMAX * 1.0), QMAX * 1.0)
        tl.store(q_ptr + row * stride_qm + offs, q.to(tl.int8), mask=offs < N)


@triton.jit
def _quantize_elements_kernel(x_ptr, q_ptr, scale_ptr, nan_count_ptr, numel, QMIN: tl.constexpr, QMAX: tl.constexpr,
                              COUNT_NAN: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs, mask=offs < numel, other=0.0).to(tl.float32)
    if COUNT_NAN:  # a NaN has no code (it would become QMIN): counted for the caller to report
        nans = tl.sum((x != x).to(tl.int32), axis=0)
        if nans > 0:
            tl.atomic_add(nan_count_ptr, nans)
    q = libdevice.rint(tl.math.div_rn(x, tl.load(scale_ptr)))
    q = tl.minimum(tl.maximum(q, QMIN * 1.0), QMAX * 1.0)
    tl.store(q_ptr + offs, q.to(tl.int8), mask=offs < numel)


def quantize_int8(x: torch.Tensor, scale: torch.Tensor | None = None, qmax: int = 127, qmin: int | None = None,
                  nan_count: torch.Tensor | None = None):
    """x float (bf16/fp16/fp32) on CUDA -> (int8 codes, scale).

    With ``scale`` (a float32 scalar tensor): static per-tensor quantization of any shape to
    codes in [qmin, qmax] (qmin defaults to -qmax; 0 for unsigned codes); the codes keep x's
    memory layout (channels-last stays channels-last); ``nan_count`` (int32 [1] on x's device), if
    given, has the NaN values of x added to it. Without it: dynamic symmetric per-token
    quantization of a 2-D x [M, K]; the returned scale is float32 [M].
    """
    if x.device.type != "cuda":
        raise ValueError(f"quantize_int8 runs on CUDA tensors, x is on {x.device}")
    if not x.dtype.is_floating_point:
        raise ValueError(f"quantize_int8 takes a float tensor, got {x.dtype}")
    if not 1 <= qmax <= 127:
        raise ValueError(f"qmax={qmax}: int8 codes need 1 <= qmax <= 127")
    qmin = -qmax if qmin is None else qmin
    if not -128 <= qmin < qmax:
        raise ValueError(f"qmin={qmin}: int8 codes need -128 <= qmin < qmax={qmax}")
    if scale is not None:
        if scale.dtype != torch.float32 or scale.dim() != 0 or scale.device != x.device:
            raise ValueError("a static scale must be a float32 scalar tensor on x's device")
        dense = x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))
        if not dense:
            x = x.contiguous()
        q = torch.empty_like(x, dtype=torch.int8)  # same strides: element i of both is the same in memory
        if x.numel():
            block = 4096
            _quantize_elements_kernel[(triton.cdiv(x.numel(), block),)](
                x, q, scale, scale if nan_count is None else nan_count, x.numel(), QMIN=qmin, QMAX=qmax,
                COUNT_NAN=nan_count is not None, BLOCK=block, num_warps=8)
        return q, scale
    if qmin != -qmax:
        raise ValueError("dynamic per-token quantization is symmetric: leave qmin at -qmax")
    if x.dim() != 2:
        raise ValueError(f"dynamic per-token quantization takes a 2-D [tokens, features] tensor, got {tuple(x.shape)}")
    if x.stride(1) != 1:
        x = x.contiguous()
    m, n = x.shape
    q = torch.empty(m, n, dtype=torch.int8, device=x.device)
    scale = torch.empty(m, dtype=torch.float32, device=x.device)
    if m and n:
        block = min(4096, triton.next_power_of_2(n))
        _quantize_rows_kernel[(m,)](x, q, scale, n, x.stride(0), q.stride(0), QMAX=qmax,
                                    BLOCK=block, num_warps=4 if block <= 1024 else 8)
    return q, scale
