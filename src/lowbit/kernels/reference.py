"""Bit-exact integer reference: the semantics every GPU kernel must reproduce.

Integer layer (linear, or convolution through im2col):
  acc[m, n] = sum_k (qx[m, k] - zx) * qw[n, k]          exact integer (int32, int64 if it could overflow)
  y[m, n]   = float32(acc[m, n]) * (sx * sw[n]) + bias[n] float32, in this order
Fused layers (kernels/triton, nn/fused.py) go on from y, still in float32 and in this order:
  y += float32(residual) * s_res   (int8 residual codes; a float residual is added as float32)
  y  = max(y, 0)                   (ReLU)
  q  = clamp(round_half_even(y * (1 / s_out)), qmin, qmax)  (codes for the next layer, in its input
       format: [-127, 127] for s8, [0, 15] for u4...; the float32 reciprocal, taken once, since a
       division per element costs the kernels more than the GEMM)
Runs on CPU and GPU (see integer_matmul for how each device keeps the sums exact).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from ..nn.geometry import LayerGeometry

_INT32_MAX = (1 << 31) - 1


def _int_mm_padded(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """torch._int_mm (int8 x int8 -> int32) with zero padding to the shapes it accepts
    (M > 16, K and N multiples of 8)."""
    m, k = a.shape
    n = b.shape[1]
    pm, pk, pn = max(17 - m, 0), (-k) % 8, (-n) % 8
    if pm or pk:
        a = F.pad(a, (0, pk, 0, pm))
    if pk or pn:
        b = F.pad(b, (0, pn, 0, pk))
    return torch._int_mm(a.contiguous(), b.contiguous())[:m, :n]


def integer_matmul(a: torch.Tensor, b: torch.Tensor, bound_a: int, bound_b: int) -> torch.Tensor:
    """Exact product of integer matrices a [M, K] and b [K, N]; ``bound_*`` bound |a| and |b|.

    CPU: int8 operands through torch._int_mm (int8 x int8 -> int32) when K * bound_a *
    bound_b fits int32. Otherwise a float matmul of the integer values, which is exact whatever
    the order of the sums while every partial sum stays below 2^24 (float32) or 2^53 (float64),
    and an int64 matmul (slow) beyond. CUDA has no general integer matmul (cuBLASLt's int8 path
    rejects many shapes), so there it is float64, within the 2^53 bound checked here (float32 could
    run as TF32); the GPU kernels proper live beside this reference.
    """
    m, k = a.shape
    n = b.shape[1]
    bound = k * bound_a * bound_b
    if m == 0 or k == 0 or n == 0:
        return torch.zeros(m, n, dtype=torch.int32, device=a.device)
    out_dtype = torch.int32 if bound <= _INT32_MAX else torch.int64
    if a.device.type == "cuda":
        if bound >= 1 << 53:
            raise ValueError(f"integer matmul with K={k} and codes up to {bound_a}, {bound_b} could exceed 2^53")
        return (a.double() @ b.double()).to(out_dtype)
    if a.dtype == b.dtype == torch.int8 and out_dtype == torch.int32:
        return _int_mm_padded(a, b)
    if bound < 1 << 24:
        return (a.float() @ b.float()).to(out_dtype)
    if bound < 1 << 53:
        return (a.double() @ b.double()).to(out_dtype)
    return a.long() @ b.long()


def _as_int8_with_offset(q: torch.Tensor, zero_point: int) -> tuple[torch.Tensor, int]:
    """uint8 codes -> int8 codes minus 128 (the zero point moves with them), so the
    int8 x int8 path serves unsigned activations exactly."""
    if q.dtype == torch.uint8:
        return (q.to(torch.int16) - 128).to(torch.int8), zero_point - 128
    return q, zero_point


def _bound(q: torch.Tensor) -> int:
    info = torch.iinfo(q.dtype)
    return max(-info.min, info.max)


def _gemm_with_zero_point(cols: torch.Tensor, zx: int, qw: torch.Tensor) -> torch.Tensor:
    """sum_k (cols[m, k] - zx) * qw[n, k]  =  cols @ qw^T - zx * rowsum(qw)."""
    cols, zx = _as_int8_with_offset(cols, zx)
    acc = integer_matmul(cols, qw.t(), _bound(cols), _bound(qw))
    if zx:  # in int64: the correction can exceed int32 where the raw product does not
        acc = acc.to(torch.int64) - zx * qw.to(torch.int64).sum(1)
    return acc


def integer_linear_acc(qx: torch.Tensor, zx: int, qw: torch.Tensor) -> torch.Tensor:
    """Accumulators of a linear layer: qx [..., K] integer codes, qw [N, K] -> [..., N]."""
    lead = qx.shape[:-1]
    acc = _gemm_with_zero_point(qx.reshape(-1, qx.shape[-1]), zx, qw)
    return acc.reshape(*lead, qw.shape[0])


def integer_conv_acc(qx: torch.Tensor, zx: int, qw: torch.Tensor, geo: LayerGeometry) -> torch.Tensor:
    """Accumulators of a convolution by im2col: qx [B, C, *spatial] codes, qw [O, C/groups, *kernel]."""
    if geo.kind == "conv1d":
        return integer_conv_acc(qx.unsqueeze(2), zx, qw.unsqueeze(2), _as_2d(geo)).squeeze(2)
    if geo.padding_mode == "zeros":
        x = F.pad(qx, geo.pads, value=zx)  # real 0 is the code zx
    else:  # reflect / replicate / circular: in float32, where the codes are exact (|q| < 2^24)
        x = F.pad(qx.float(), geo.pads, mode=geo.padding_mode).to(qx.dtype)
    (kh, kw), (sh, sw), (dh, dw) = geo.kernel_size, geo.stride, geo.dilation
    # The windows as a view [B, OH, OW, kh, kw, C], copied once per group with the channels innermost (the
    # weights' columns reordered to match): an integer copy, 4-5x faster than float unfold on 2 CPU cores.
    windows = x.unfold(2, dh * (kh - 1) + 1, sh).unfold(3, dw * (kw - 1) + 1, sw)[..., ::dh, ::dw]
    windows = windows.permute(0, 2, 3, 4, 5, 1)
    b, out_h, out_w = windows.shape[:3]
    g, og, cg = geo.groups, geo.out_channels // geo.groups, qw.shape[1]
    wmat = qw.permute(0, 2, 3, 1).reshape(geo.out_channels, -1)
    accs = [_gemm_with_zero_point(windows[..., i * cg:(i + 1) * cg].reshape(b * out_h * out_w, -1), zx,
                                  wmat[i * og:(i + 1) * og]) for i in range(g)]
    acc = torch.cat(accs, dim=1) if g > 1 else accs[0]
    return acc.reshape(b, out_h, out_w, geo.out_channels).permute(0, 3, 1, 2).contiguous()


def _as_2d(geo: LayerGeometry) -> LayerGeometry:
    return replace(geo, kind="conv2d", kernel_size=(1, *geo.kernel_size), stride=(1, *geo.stride),
                   dilation=(1, *geo.dilation), pads=(*geo.pads, 0, 0))


def rescale(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
            channel_dim: int) -> torch.Tensor:
    """float32(acc) * (sx * sw[channel]) + bias[channel]."""
    shape = [1] * acc.dim()
    shape[channel_dim] = -1
    y = acc.float() * (x_scale * w_scale).reshape(shape)
    if bias is not None:
        y = y + bias.float().reshape(shape)
    return y


def epilogue(acc: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
             channel_dim: int, *, residual: torch.Tensor | None = None, residual_scale: torch.Tensor | None = None,
             relu: bool = False, out_scale: torch.Tensor | None = None,
             out_range: tuple[int, int] = (-127, 127)) -> torch.Tensor:
    """The fused epilogue of the module docstring: float32 out, or int8 codes in ``out_range`` with
    ``out_scale``. ``residual`` is int8 codes with ``residual_scale``, or a float tensor (bf16 or float32)."""
    y = rescale(acc, x_scale, w_scale, bias, channel_dim)
    if residual is not None:
        y = y + (residual.float() * residual_scale if residual.dtype == torch.int8 else residual.float())
    if relu:
        y = torch.clamp_min(y, 0.0)
    if out_scale is None:
        return y
    return torch.clamp(torch.round(y * torch.reciprocal(out_scale.float())), *out_range).to(torch.int8)


_BYTE_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int32)


def popcount32(words: torch.Tensor) -> torch.Tensor:
    """Set bits of each int32 word (int32)."""
    table = _BYTE_POPCOUNT.to(words.device)
    octets = words.contiguous().view(torch.uint8).reshape(*words.shape, 4).long()
    return table[octets].sum(-1, dtype=torch.int32)


def bitserial_acc(weight_planes: torch.Tensor, x_planes: torch.Tensor, x_signed: bool,
                  active: int | None = None) -> torch.Tensor:
    """The bit-serial product, literally as the kernels compute it (lowbit.numerics.bitlayers):

      P[i, j] = popc(B_i[n] & X_j[m])       summed over the packed words of K
      acc[m, n] = sum_{i<k} 2^(N-k+i) * sum_j c_j 2^j (2 P[i, j] - popc(X_j[m]))

    with B_i the i-th of the k most significant of the N stored weight planes [N, n, W] (each a +-1
    layer), X_j the activation planes [A, m, W] (two's complement: c_j = -1 for the top plane when
    signed, else 1). Returns int64 [m, n]. Slow (it exists to be checked against): layers compute the
    same integers with :func:`integer_matmul`."""
    stored = weight_planes.shape[0]
    k = stored if active is None else active
    x_count = popcount32(x_planes).sum(-1, dtype=torch.int64)  # [A, m]
    acc = torch.zeros(x_planes.shape[1], weight_planes.shape[1], dtype=torch.int64, device=x_planes.device)
    for j in range(x_planes.shape[0]):
        c = -(1 << j) if (x_signed and j == x_planes.shape[0] - 1) else 1 << j
        for i in range(k):
            plane = weight_planes[stored - k + i]
            p = popcount32(plane[None] & x_planes[j][:, None]).sum(-1, dtype=torch.int64)  # [m, n]
            acc += (c << (stored - k + i)) * (2 * p - x_count[j][:, None])
    return acc
