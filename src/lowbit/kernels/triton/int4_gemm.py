"""W4A8 and W4A16 for medium row counts: a GEMM that reads the layer's packed INT4 codes as it stores them,
converts them in registers to E4M3 (W4A8, FP8 tensor cores) or bf16 (W4A16) and multiplies them by wgmma
on Hopper, with the scaling and bias in the epilogue. It computes what lowbit.nn.mixed_linear's references
compute:
  W4A8   w = e4m3((c - z) * s)     y = (xq @ w^T) * (sx[m or 0] * s8) + bias      xq = e4m3(x / sx)
  W4A16  w = bf16((c - z) * s)     y = bf16(x) @ w^T + bias
up to the order of the float32 sums (and the FP8 tensor cores' ~14 bits inside a tile, as in float_gemm).

Why this shape (H100, 2026-11-24, RESULTS "Session 26" and "Session 27"):
- The weights are the dot's first operand and the input its second: out^T = w @ xq^T. Hopper's wgmma takes
  its first operand from registers, so the codes go from shared memory (cp.async, pipelined) into
  registers, are converted there and feed the tensor cores without a trip back through shared memory,
  which a converted second operand would need.
- The conversion is inline PTX, two weights per packed fp16 instruction as in kernels/cuda/int4_group.cu:
  the code goes into the mantissa of 1024 + c, one fma subtracts 1024 + z, one multiplies by s (exact:
  at most 4 + 7 significant bits), one cvt rounds the pair to E4M3 (saturating, as the reference's clamp).
  W4A16 does the same in bf16 (128 + c), where the multiplication by s rounds once, as the reference.
  Triton's own int -> float conversions ran at a quarter of the rate.
- The codes stay as the layer stores them (byte i: column 2i low nibble, 2i + 1 high), so a 128-column
  step holds the even columns in its low nibbles and the odd ones in its high nibbles: two dots of 64.
  The input comes deinterleaved to match (int4_group.prepare_input with ``deinterleave``): each
  128-column tile's even columns, then its odd ones, so both input tiles are plain loads. Groups of 32 or
  64 columns give each byte of a step its own group's constants (selected in registers).
- Triton waits for each register-operand wgmma before converting the next codes, so a program's
  tensor cores idle while it converts. K is split over programs (SPLIT_K) so that several share each
  multiprocessor and fill those gaps. Their partial sums meet in split order (gemm.sum_splits_in_order),
  so that the results do not depend on the order in which the programs finish.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..cuda.int4_group import INT4_GEMM_MAX_ROWS as MAX_ROWS
from ..cuda.int4_group import INT4_GEMM_TILE_K as TILE_K  # columns per step, and the input's deinterleaving
from ..cuda.int4_group import int4_gemm_takes
from .autotune import candidate_configs
from .gemm import _epilogue, _grouped_tile, splitk_workspace, sum_splits_in_order

_TILE_K = tl.constexpr(TILE_K)


def _conversion_ptx(bf16: bool) -> str:
    """Four bytes of codes (8 weights) -> their E4M3 codes (W4A8) or bf16 values (W4A16), as
    ``inline_asm_elementwise`` with pack=4: the outputs (W4A8 $0 the low nibbles' codes, $1 the high
    nibbles'; W4A16 $0-$1 the low nibbles' values, $2-$3 the high nibbles'), then the bytes, each byte's
    scale pair s|s (16-bit float bits) and its -(B + z) pair (B = 1024 in fp16, 128 in bf16). Bytes (0, 1)
    and (2, 3) each take their first byte's constants: a pair is one row's two neighbours in K (Triton's
    operand layouts hold at least two)."""
    outs = 4 if bf16 else 2
    src, sc, zc = f"${outs}", [f"${outs + 1}", f"${outs + 3}"], [f"${outs + 5}", f"${outs + 7}"]
    kind, one, base = ("bf16x2", "0x3f803f80", "0x43004300") if bf16 else ("f16x2", "0x3c003c00", "0x64006400")
    lines = ["{", ".reg .b32 a, b, t, one, nz;", ".reg .b16 h<4>;", f"mov.b32 one, {one};", "mov.b32 nz, 0x80008000;",
             f"prmt.b32 a, {src}, 0, 0x4140;", f"prmt.b32 b, {src}, 0, 0x4342;"]
    for h, (reg, pair, shift) in enumerate([("a", 0, False), ("b", 1, False), ("a", 0, True), ("b", 1, True)]):
        if shift:
            lines.append(f"shr.b32 {reg}, {reg}, 4;")
        lines += [f"lop3.b32 t, {reg}, 0x000f000f, {base}, 0xea;",  # B + c in each half
                  f"fma.rn.{kind} t, t, one, {zc[pair]};",  # c - z, exact
                  f"fma.rn.{kind} t, t, {sc[pair]}, nz;"]  # (c - z) s: exact in fp16, rounded once in bf16
        lines.append(f"mov.b32 ${h}, t;" if bf16 else f"cvt.rn.satfinite.e4m3x2.f16x2 h{h}, t;")
    if not bf16:
        lines += ["mov.b32 $0, {h0, h1};", "mov.b32 $1, {h2, h3};"]
    return "\n".join(lines + ["}"])


_CONVERSION = tl.constexpr(_conversion_ptx(False))
_CONSTRAINTS = tl.constexpr(",".join(["=r"] * 2 + ["r"] * 9))
_CONVERSION_BF16 = tl.constexpr(_conversion_ptx(True))
_CONSTRAINTS_BF16 = tl.constexpr(",".join(["=r"] * 4 + ["r"] * 9))


@triton.jit
def _bits_pair(v):
    """16-bit float values -> their bits in both halves of an int32."""
    bits = v.to(tl.int16, bitcast=True).to(tl.int32) & 0xFFFF
    return bits | (bits << 16)


@triton.jit
def _constant_pairs(s, z, BF16: tl.constexpr):
    """Group scales (float16) and zero points -> the conversion's s|s and -(B + z) pairs."""
    if BF16:
        return _bits_pair(s.to(tl.bfloat16)), _bits_pair((-(128.0 + z.to(tl.float32))).to(tl.bfloat16))
    else:
        return _bits_pair(s), _bits_pair((-(1024.0 + z.to(tl.float32))).to(tl.float16))


@triton.jit
def _per_byte(pairs, offs_h, GROUP_COLS: tl.constexpr):
    """A step's constants [BLOCK_N, 128 / GROUP_COLS] (groups of 64 or 32 columns) -> each byte's [BLOCK_N, 64]:
    byte h holds columns 2h and 2h + 1, of group h // (GROUP_COLS / 2). Selects in registers; gathering
    each byte's constants from memory instead ran 5x slower (H100, RESULTS session 27)."""
    part = (offs_h // (GROUP_COLS // 2))[None, :]
    if GROUP_COLS == 64:
        c0, c1 = tl.split(pairs)
        out = tl.where(part == 0, c0[:, None], c1[:, None])
    else:
        tl.static_assert(GROUP_COLS == 32, "groups of 32 or 64 columns (int4_group.int4_gemm_takes)")
        even, odd = tl.split(tl.reshape(pairs, (pairs.shape[0], 2, 2)))  # groups (0, 2) and (1, 3)
        c0, c2 = tl.split(even)
        c1, c3 = tl.split(odd)
        out = tl.where(part == 0, c0[:, None], tl.where(part == 1, c1[:, None],
                                                        tl.where(part == 2, c2[:, None], c3[:, None])))
    return out


@triton.jit
def _step_constants(s_ptr, z_ptr, offs_n, n_ok, stride_sn, k, K, GROUP_TILES: tl.constexpr, GROUP_COLS: tl.constexpr):
    """Scales and zero points of the step at column ``k`` (at most the last step: an empty split or the fetch
    after the last takes those): per row [BLOCK_N] for groups of whole steps (GROUP_TILES; 0: one group per
    row), or [BLOCK_N, 128 / GROUP_COLS] for narrower groups, one load per row."""
    k = tl.minimum(k, K - _TILE_K)
    if GROUP_COLS:
        rows, mask = offs_n[:, None] * stride_sn, n_ok[:, None]
        group = k // GROUP_COLS + tl.arange(0, _TILE_K // GROUP_COLS)[None, :]
    else:
        rows, mask = offs_n * stride_sn, n_ok
        group = k // (_TILE_K * GROUP_TILES) if GROUP_TILES else 0
    return tl.load(s_ptr + rows + group, mask=mask, other=0.0), tl.load(z_ptr + rows + group, mask=mask, other=0)


@triton.jit
def _int4_kernel(x_ptr, q_ptr, s_ptr, z_ptr, out_ptr, sa_ptr, sw_ptr, bias_ptr, ws_ptr, count_ptr,
                 M, N, K, M_BUCKET, stride_xm, stride_qn, stride_sn, stride_om,
                 GROUP_TILES: tl.constexpr, GROUP_COLS: tl.constexpr, PER_TOKEN: tl.constexpr,
                 HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr, SPLIT_K: tl.constexpr,
                 GROUP_M: tl.constexpr, BF16: tl.constexpr):
    """Program (tile, split): a BLOCK_N x BLOCK_M tile of out^T over one K range. GROUP_TILES: 128-column
    tiles per group, 0 for one group per row; GROUP_COLS: the group's columns where it is narrower than a
    tile (then each byte takes its own group's constants), else 0; BF16: W4A16 (bf16 input, weights converted
    to bf16), else W4A8 (E4M3)."""
    tile = tl.program_id(0)
    pid_m, pid_n = _grouped_tile(tile, M, N, BLOCK_M, BLOCK_N, GROUP_M)
    steps = tl.cdiv(tl.cdiv(K, _TILE_K), SPLIT_K)
    k_begin = tl.program_id(1) * steps * _TILE_K
    k_end = tl.minimum(K, k_begin + steps * _TILE_K)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_h = tl.arange(0, _TILE_K // 2)
    n_ok = offs_n < N
    m_ok = offs_m[None, :] < M
    # each step's group constants are fetched a step ahead: the loop would otherwise wait on them
    s_next, z_next = _step_constants(s_ptr, z_ptr, offs_n, n_ok, stride_sn, k_begin, K, GROUP_TILES, GROUP_COLS)
    acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    for k0 in range(k_begin, k_end, _TILE_K):
        codes = tl.load(q_ptr + offs_n[:, None] * stride_qn + (k0 // 2 + offs_h)[None, :], mask=n_ok[:, None],
                        other=0)
        s2, zb2 = _constant_pairs(s_next, z_next, BF16)
        if GROUP_COLS:
            s2 = _per_byte(s2, offs_h, GROUP_COLS)
            zb2 = _per_byte(zb2, offs_h, GROUP_COLS)
        else:
            s2 = tl.broadcast_to(s2[:, None], (BLOCK_N, _TILE_K // 2))
            zb2 = tl.broadcast_to(zb2[:, None], (BLOCK_N, _TILE_K // 2))
        if GROUP_TILES or GROUP_COLS:  # one group per row: the constants stay
            s_next, z_next = _step_constants(s_ptr, z_ptr, offs_n, n_ok, stride_sn, k0 + _TILE_K, K, GROUP_TILES,
                                             GROUP_COLS)
        if BF16:
            w_even, w_odd = tl.inline_asm_elementwise(_CONVERSION_BF16, _CONSTRAINTS_BF16, [codes, s2, zb2],
                                                      dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=4)
        else:
            w_even, w_odd = tl.inline_asm_elementwise(_CONVERSION, _CONSTRAINTS, [codes, s2, zb2],
                                                      dtype=(tl.float8e4nv, tl.float8e4nv), is_pure=True, pack=4)
        x_even = tl.load(x_ptr + offs_m[None, :] * stride_xm + (k0 + offs_h)[:, None], mask=m_ok, other=0.0)
        x_odd = tl.load(x_ptr + offs_m[None, :] * stride_xm + (k0 + _TILE_K // 2 + offs_h)[:, None], mask=m_ok,
                        other=0.0)
        acc = tl.dot(w_even, x_even, acc)
        acc = tl.dot(w_odd, x_odd, acc)
    last, total = sum_splits_in_order(tl.trans(acc), ws_ptr + offs_m[:, None] * N + offs_n[None, :], M * N,
                                      (offs_m[:, None] < M) & n_ok[None, :], count_ptr + tile, tl.program_id(1),
                                      SPLIT_K)
    if last:
        _epilogue(total, offs_m, offs_n, M, N, out_ptr, stride_om, 1, sa_ptr, sw_ptr, bias_ptr, sa_ptr, out_ptr,
                  0, 0, sa_ptr, PER_TOKEN, HAS_BIAS, 0, 2, 0, 0, 0)


def _configs():
    # H100 sweeps (RESULTS, sessions 26 and 28): K split 4 or 2 ways at 33-128 rows, unsplit from 256 rows;
    # 64-row input tiles at 33-64 rows (W4A8, GEMM alone: 8192 x 8192 at 33 rows 35.9 -> 31.6 us, 14336 x 4096
    # 34.2 -> 27.4, 4096 x 4096 13.7 -> 12.3), which gave wrong sums through sum_over_splits' atomic adds.
    return [triton.Config({"BLOCK_N": bn, "BLOCK_M": bm, "SPLIT_K": sk, "GROUP_M": 8}, num_stages=3, num_warps=w)
            for bn, bm, sk, w in [(64, 64, 2, 4), (64, 64, 4, 4), (64, 64, 1, 4), (64, 128, 2, 4), (64, 128, 1, 4),
                                  (128, 128, 1, 8)]]


# Rows of the split-K workspace: a slot of M rows per split, for every config (tests pin each one)
SPLIT_SLOT_ROWS = max(c.kwargs["SPLIT_K"] for c in _configs()) * MAX_ROWS


def _splits_within_k(configs, nargs, **kwargs):
    """Autotune pruning: no more splits than K has steps."""
    steps = triton.cdiv(nargs["K"], TILE_K)
    return [c for c in configs if c.kwargs["SPLIT_K"] <= steps] or configs[-1:]


_KERNEL = triton.autotune(configs=candidate_configs(_configs()),
                          key=["M_BUCKET", "N", "K", "GROUP_TILES", "GROUP_COLS", "BF16"],
                          prune_configs_by={"early_config_prune": _splits_within_k})(_int4_kernel)


def int4_gemm(x: torch.Tensor, codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
              a_scale: torch.Tensor, w_scale: torch.Tensor, bias: torch.Tensor | None,
              out_dtype: torch.dtype) -> torch.Tensor:
    """y [M, N] = (xq @ w^T) * (a_scale[m or 0] * w_scale[n]) + bias[n] for ``x`` [M, K] deinterleaved per 128
    columns (int4_group.prepare_input; rows of unit column stride): E4M3 codes (float8_e4m3fn), with w = e4m3((c
    - z) s), or bf16, with w = bf16((c - z) s); ``codes`` uint8 [N, K/2] (column 2i in the low nibble of byte
    i), float16 ``scale`` (on numerics.groupwise's 7-bit grid) and uint8 ``zero`` [N, groups] of ``group``
    columns (int4_group.int4_gemm_takes), a_scale float32 scalar or [M], w_scale float32 [N], bias float32 [N]
    or None; M <= MAX_ROWS (the split-K workspace's slots). kernels/cuda/int4_group.py checks the layer's tensors."""
    m, k = x.shape
    n = codes.shape[0]
    if not (int4_gemm_takes(k, group) and 0 < m <= MAX_ROWS and x.dtype in (torch.float8_e4m3fn, torch.bfloat16)
            and x.stride(1) == 1):
        raise ValueError(f"int4_gemm takes 1..{MAX_ROWS} rows of E4M3 codes or bf16 and K a multiple of {TILE_K} "
                         f"in groups of whole steps or of 32 or 64 columns, got {m} x {k} {x.dtype} with groups of "
                         f"{group}")
    out = torch.empty(m, n, dtype=out_dtype, device=x.device)
    ws, counts = splitk_workspace(x.device, n, torch.float32, SPLIT_SLOT_ROWS)
    _KERNEL[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])](
        x, codes, scale, zero, out, a_scale, w_scale, bias if bias is not None else w_scale, ws, counts,
        m, n, k, triton.next_power_of_2(m), x.stride(0), codes.stride(0), scale.stride(0), out.stride(0),
        GROUP_TILES=0 if group >= k or group < TILE_K else group // TILE_K, GROUP_COLS=group if group < TILE_K else 0,
        PER_TOKEN=a_scale.dim() == 1, HAS_BIAS=bias is not None, BF16=x.dtype == torch.bfloat16,
        enable_fp_fusion=False)
    return out
