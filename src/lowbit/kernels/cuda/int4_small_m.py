"""Launcher of int4_small_m.cu: :func:`lowbit.kernels.triton.int8_gemm` with packed INT4 weights for
1..MAX_ROWS input rows, where the weights' bytes bound the time. The CUDA kernel streams the canonical
packed weights [N, K/2] once through a cp.async ring and unpacks them with three integer operations per
eight codes. A block's warps share one 16-row weight tile and split its K (their sums meet in shared
memory); K is split over blocks too only where the tiles leave multiprocessors idle, because that split
meets in global memory (about 5 us at N = K = 8192 on the H100). The Triton split-K kernel, which
int8_gemm keeps for int8 weights, took 2-3 times as long with INT4 weights (benchmarks/RESULTS.md)."""

from __future__ import annotations

import ctypes

import torch

from .. import rows_16_byte_aligned
from . import launches_early, load_module, nvrtc_available, partial_sums, pointer, split_k

MAX_ROWS = 16  # two column tiles of 8 input rows per warp
KWARPS = 4  # warps of a block, sharing one 16-row weight tile and taking its chunks in turn
STAGES = 4  # chunks in flight per warp, through shared memory
PIECES = 2  # 64-byte pieces of each weight row per chunk: a block asks for KWARPS x 128 bytes of a row at once
BLOCKS_PER_SM = 1  # K is split over blocks too while the tiles give fewer blocks than this per multiprocessor
# int8_gemm takes this kernel where it fits; the benchmark turns it off to time the Triton kernel.
ENABLED = True

_FLOAT_KINDS = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}


def fits(a: torch.Tensor, w: torch.Tensor) -> bool:
    """Whether the kernel takes these (already checked) operands, int8 a [M, K] and packed INT4 w: a CUDA
    GPU of compute capability 8.0 or newer with NVRTC, 1..MAX_ROWS rows, K a multiple of 32, and rows of
    unit stride that start on 16-byte boundaries."""
    m, k = a.shape
    return (ENABLED and 0 < m <= MAX_ROWS and k % 32 == 0 and nvrtc_available()
            and torch.cuda.get_device_capability(a.device) >= (8, 0)
            and rows_16_byte_aligned(a) and rows_16_byte_aligned(w))


_ARRIVALS: dict = {}


def _arrivals(device: torch.device, blocks: int) -> torch.Tensor:
    """Zeroed per-block counters of the split K, one set per device and stream (the kernel resets them)."""
    key = (device, torch.cuda.current_stream(device).cuda_stream)
    if key not in _ARRIVALS or _ARRIVALS[key].numel() < blocks:
        _ARRIVALS[key] = torch.zeros(max(blocks, 1024), dtype=torch.int32, device=device)
    return _ARRIVALS[key]


def int4_small_m_gemm(a: torch.Tensor, w: torch.Tensor, a_scale: torch.Tensor, w_scale: torch.Tensor,
                      bias: torch.Tensor | None, out: torch.Tensor, out_scale: torch.Tensor | None, act: int,
                      qmin: int, qmax: int) -> None:
    """Writes int8_gemm's result into ``out`` [M, N] (int32 accumulators, int8 codes at ``out_scale`` in
    [qmin, qmax], or float32 / bf16 / fp16); ``act`` 0 none, 1 ReLU, 2 GELU. The operands are checked by
    int8_gemm and :func:`fits`."""
    (m, k), n = a.shape, w.shape[0]
    nt = 1 if m <= 8 else 2
    tiles, chunks = -(-n // 16), -(-(k // 2) // (64 * PIECES))
    per_split, splits = split_k(tiles, chunks, KWARPS, a.device, BLOCKS_PER_SM)
    partial = partial_sums(splits, tiles, nt, torch.int32, a.device)
    out_kind = 0 if out.dtype == torch.int32 else 1 if out.dtype == torch.int8 else 2
    module = load_module("int4_small_m.cu", {"NT": nt, "KWARPS": KWARPS, "STAGES": STAGES, "PIECES": PIECES}, a.device)
    module.launch(
        "int4_small_m_gemm", (tiles, splits, 1), 32 * KWARPS,
        [pointer(w), pointer(a), pointer(a_scale), pointer(w_scale), pointer(bias), pointer(out_scale), pointer(out), pointer(partial),
         pointer(_arrivals(a.device, tiles)), *map(ctypes.c_int, (m, n, k, w.stride(0), a.stride(0), chunks, per_split,
                                                                int(a_scale.dim() == 1), act, out_kind,
                                                                _FLOAT_KINDS.get(out.dtype, 0), qmin, qmax))],
        early=launches_early(a.device))
