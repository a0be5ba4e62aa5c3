"""Launchers of int4_group.cu: Linear layers with INT4-group weights on the float tensor cores (W4A16:
bf16 mma; W4A8: the weights rounded to E4M3 in registers, multiplied with the E4M3 inputs as the fp16
values that hold them exactly), computing what lowbit.nn.mixed_linear's reference computes, up to the
order of the float32 sums.

Few input rows (M <= MAX_ROWS) are bound by the weight bytes: the weights stream once, through a ring
in shared memory (cp.async), in units of one or two 64-column chunks followed by their groups' scales
and zero points, in a layout where each lane's 16 bytes of a chunk hold exactly the codes of its mma
fragments (:func:`kernel_layout`), and are converted two at a time in registers. A block's warps
share one weight tile and split its K, and K is split over blocks only where the tiles leave
multiprocessors idle; the partial sums meet in a fixed order. W4A8 with a static input scale takes
few rows of bf16 or float32 input as they are, each block quantizing its columns of them into shared
memory first, where those are few: one launch instead of two. Up to INT4_GEMM_MAX_ROWS rows a Triton GEMM
that converts the layer's packed codes in registers takes over on Hopper (kernels/triton/int4_gemm.py): W4A8
past MAX_ROWS (on small layers up to W4A8_INT4_GEMM_ANY_LAYER_ROWS), W4A16 from W4A16_INT4_GEMM_MIN_ROWS;
elsewhere W4A16 runs the kernel over slices of MAX_ROWS rows up to SLICED_MAX_ROWS rows. More rows are bound by
arithmetic: the weights are then expanded once per call into a plain bf16 / E4M3 matrix (a pass over N * K
bytes) for a tensor-core GEMM (kernels/triton float_gemm), which costs far less than converting every weight
tile again in every row tile.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import torch

from .. import rows_16_byte_aligned
from . import launches_early, load_module, multiprocessors, nvrtc_available, partial_sums, pointer, split_k

W4A16, W4A8 = 0, 1
MAX_ROWS = 32  # up to 4 column tiles of 8 input rows per warp
# W4A16 up to this many rows: the few-rows kernel over slices of MAX_ROWS rows, each streaming the weights
# again, rather than expanding them into a bf16 matrix (H100, N = K = 8192: 33 rows 35.0 us against 144.6
# for the expansion and GEMM, 128 rows 86.7 against 147.3; RESULTS, session 24). W4A8's slices cost more
# (33.7 us for 32 rows of 8192) against a cheaper expansion (E4M3: 68.3 us at 33 rows): one slice only.
SLICED_MAX_ROWS = 128
# W4A8 from MAX_ROWS + 1 to W4A8_INT4_GEMM_ANY_LAYER_ROWS rows, and to INT4_GEMM_MAX_ROWS rows of layers of at
# least W4A8_INT4_GEMM_MIN_WEIGHTS weights: the Triton GEMM that converts the layer's packed codes in registers
# for the tensor cores (kernels/triton/int4_gemm.py), on Hopper, where K is whole steps of INT4_GEMM_TILE_K
# columns, each within one group or holding groups of 32 or 64 columns. H100, bf16 in and out, against
# expanding the weights to E4M3 for the float GEMM: 8192 x 8192, 33 / 64 / 128 / 256 rows 36.1 / 39.5 / 48.6 /
# 75.7 us against 68.7 / 68.8 / 80.9 / 81.6 (bf16 49.9 / 50.3 / 52.0 / 57.6; groups of 32, session 27: 43.6 /
# - / 52.7 / 82.8 against 69.7 / - / 83.0 / 84.7); on smaller layers only to 64 rows: 4096 x 4096 15.1 / 17.2 /
# 22.8 / 29.9 against 19.2 / 20.1 / 20.9 / 26.4, 2048 x 8192 19.0 / 20.0 / 23.6 / 37.2 against 25.5 / 24.7 /
# 25.9 / 27.6, 2048 x 2048 11.5 / 12.5 / 14.2 / 16.2 against 12.4 / 12.1 / 12.2 / 12.7; past 256 rows the
# expansion wins (RESULTS, sessions 26-28).
INT4_GEMM_MAX_ROWS = 256
W4A8_INT4_GEMM_ANY_LAYER_ROWS = 64
W4A8_INT4_GEMM_MIN_WEIGHTS = 4096 * 8192
INT4_GEMM_TILE_K = 128
# W4A16 takes that GEMM (bf16 wgmma) from this many rows to INT4_GEMM_MAX_ROWS, on layers of any size: H100,
# against the slices of 32 rows (to 128) or the expansion (past 128), us, the GEMM alone: 8192 x 8192 at 128
# / 256 rows 76.0 / 101.6 against 84.8 / 150.5; 4096 x 11008 55.3 / 97.3 against 74.9 / 132.5; 4096 x 4096
# 25.1 / 37.7 against 33.5 / 48.0; at 64 rows the slices win (43.6 against 70.5), and three slices (65-96
# rows) cost less than four; at 384-512 rows of 8192 x 8192 the expansion (RESULTS, session 27).
W4A16_INT4_GEMM_MIN_ROWS = 97
# Units in flight per warp, by chunks per unit (H100, W4A16 one row, units of 2 chunks, 8 warps x 2
# against 4 x 3: N = K = 8192 16.7 / 16.8 us, 4096 6.8 / 7.2, 2048 4.2 / 7.0, where 4 warps split K over
# blocks; RESULTS, session 22)
STAGES = {1: 3, 2: 2}
# Past 16 rows, on layers of at least this many 16-row tiles per multiprocessor: two tiles per block,
# whose warps read each input fragment once for both (half the reads of the input, which every block
# reads whole). H100, 32 rows, one tile / two: W4A16 8192 x 8192 29.5 -> 22.8 us, 14336 x 4096 32.5 ->
# 24.9, 28672 x 8192 98.7 -> 77.7; W4A8 33.8 -> 28.1, 37.6 -> 30.4, 104.1 -> 84.3, 11008 x 4096 30.3 ->
# 29.8. Fewer tiles leave multiprocessors idle (4096 x 4096, 32 rows: 9.1 -> 24.9). RESULTS, session 27.
TWO_TILES_PER_SM = 2
# From 9 to 16 rows two tiles pay on wide layers of long rows (H100, 16 rows, one tile / two with 8 warps:
# 8192 x 8192 W4A16 20.8 -> 17.7 us, W4A8 24.8 -> 22.3; 28672 x 8192 62.7 -> 56.5, 69.8 -> 63.2; but
# 11008 x 4096 15.5 -> 16.6, 19.8 -> 20.3; 8 rows: one tile everywhere; RESULTS, session 27) ...
TWO_TILES_MIN_K_16_ROWS = 8192
# ... and on shorter rows where their blocks fill most of one wave of RESIDENT_BLOCKS_PER_SM a multiprocessor
# (two blocks of 256 threads at 104 registers): at least TWO_TILES_MIN_WAVE_FILL of it (H100, 16 / 9 rows, us,
# one tile / two: W4A16 8192 x 4096 12.5 / 10.2, 11.5 / 9.9; 7168 x 2048 8.2 / 6.1, 7.7 / 5.9; 8192 x 6144 17.5 /
# 14.4; W4A8 8192 x 4096 15.4 / 14.1, 7168 x 2048 11.6 / 10.0), not less (6144 x 4096, 192 blocks: W4A16 8.3 /
# 9.4, W4A8 12.2 / 13.7; 4352 x 4096 7.9 / 9.4). RESULTS, session 30.
RESIDENT_BLOCKS_PER_SM = 2
TWO_TILES_MIN_WAVE_FILL = 0.8
# Warps of a block, which share its tiles and take their units in turn: 8, but 6 with two tiles past 16
# rows, where 8 lose (H100, 32 rows, two tiles, 6 / 8 warps: 8192 x 8192 W4A16 22.7 / 28.6 us, W4A8 28.0 /
# 34.0; 28672 x 8192 W4A16 78.2 / 94.6), while up to 16 rows they win (8192 x 8192 W4A16 18.2 / 17.7;
# 28672 x 8192 65.7 / 56.5). RESULTS, session 27.
BLOCK_WARPS = 8
TWO_TILE_WARPS_PAST_16_ROWS = 6
# K is split over blocks too while the tiles give fewer blocks than this per multiprocessor: such a split
# costs a round trip through global memory (W4A16, N = K = 4096, one row: 9.3 us unsplit, 10.9 split in two)
BLOCKS_PER_SM = 1
INPUT_BLOCKS_PER_SM = 4  # the input kernel spreads few rows over this many blocks per multiprocessor

# Within a lane's 8-column word, the column of each code (bits 4i..4i+3): pairs (2i, 2i+1) at bits 4i
# and 16 + 4i, which one shift and mask put in the two halves of a register (int4_group.cu).
WORD_COLUMNS = [0, 2, 4, 6, 1, 3, 5, 7]
# The 16-bit float of each mode's conversion, and the power of two whose mantissa holds a code.
_HALF = {W4A16: (torch.bfloat16, 128), W4A8: (torch.float16, 1024)}


def kernels_supported(device: torch.device, mode: int) -> bool:
    """bf16 mma needs compute capability 8.0, the conversions to E4M3 8.9; both need NVRTC."""
    if device.type != "cuda" or not nvrtc_available():
        return False
    return torch.cuda.get_device_capability(device) >= ((8, 9) if mode == W4A8 else (8, 0))


@dataclass
class KernelWeights:
    """The kernel's layout of one layer's weights (see int4_group.cu): ``stream`` int32 [N16/16, units,
    4 * (32 * unit + 4 * sets)], units of ``unit`` chunks of 64 columns (``chunks`` = K64 / 64 of them, the
    last unit padded) and ``sets`` groups' constants; ``group`` is the group size (K for one per row).
    ``arrivals`` counts the blocks of a split K (reset by the kernel), so one layer's calls must not run
    concurrently on two streams. ``packed``, ``scale`` and ``zero``: the layer's own tensors (codes two per
    byte, as Int4GroupLinear stores them), which the Triton INT4 GEMM reads as they are; None without them."""

    stream: torch.Tensor
    arrivals: torch.Tensor
    n: int
    group: int
    chunks: int
    unit: int
    sets: int
    packed: torch.Tensor | None = None
    scale: torch.Tensor | None = None
    zero: torch.Tensor | None = None

    @property
    def tiles(self) -> int:
        return self.stream.shape[0]

    @property
    def units(self) -> int:
        return self.stream.shape[1]

    def defines(self) -> dict[str, int]:
        return _unit_defines(self.unit, self.sets, self.group)

    def ring_bytes(self, tiles_per_block: int, warps: int) -> int:
        """The GEMM's ring of units in shared memory (int4_group.cu): STAGES per warp and tile."""
        return warps * STAGES[self.unit] * tiles_per_block * self.stream.shape[2] * 4


def _unit_defines(unit: int, sets: int, group: int) -> dict[str, int]:
    """A unit shape as int4_group.cu's compile-time constants (GROUP only where two sets need it)."""
    return {"U": unit, "SETS": sets, "GROUP": group if sets == 2 else 0, "STAGES": STAGES[unit]}


def group_unsupported(group: int, k: int) -> str | None:
    """Why the kernel cannot take groups of ``group`` columns of K = ``k``, or None where it can."""
    if group < k and group % 32:
        return f"the kernel takes groups of a multiple of 32 columns (or one per row), not {group}"
    return None


def _unit_shape(group: int, k: int) -> tuple[int, int]:
    """(chunks per unit, constant sets per unit) for groups of ``group`` columns of K = ``k``: units that
    never straddle a group where groups allow, else one chunk with the two groups it may touch."""
    if reason := group_unsupported(group, k):
        raise ValueError(reason)
    if group >= k or group % 128 == 0:
        return 2, 1
    return (1, 1) if group % 64 == 0 else (1, 2)


def _bits16(v: torch.Tensor) -> torch.Tensor:
    """16-bit floats -> their bits in int32 (0..65535)."""
    return v.contiguous().view(torch.int16).to(torch.int32) & 0xFFFF


def kernel_layout(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int,
                  mode: int, packed: torch.Tensor | None = None) -> KernelWeights:
    """Codes uint8 [N, K] (0..15), float16 scales (on numerics.groupwise's 7-bit grid) and uint8 zero
    points [N, G] -> the kernel's layout (on the codes' device); ``packed``, the same codes two per byte
    (numerics.pack_int4), is kept with the scales and zero points for the Triton INT4 GEMM."""
    n, k = codes.shape
    unit, sets = _unit_shape(group, k)
    n16, k64 = -(-n // 16) * 16, -(-k // 64) * 64
    tiles, chunks = n16 // 16, k64 // 64
    units = -(-chunks // unit)
    chunks_padded = units * unit
    c = torch.zeros(n16, chunks_padded * 64, dtype=torch.int64, device=codes.device)
    c[:n, :k] = codes.to(torch.int64)
    # [tile, r, g, chunk, t, h, 8 columns] -> word order -> [tile, chunk, g, t, r, h, code]
    c = c.reshape(tiles, 2, 8, chunks_padded, 4, 2, 8)[..., WORD_COLUMNS]
    c = c.permute(0, 3, 2, 4, 1, 5, 6)
    words = (c << (4 * torch.arange(8, device=codes.device))).sum(-1)
    words = torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)
    half, base = _HALF[mode]
    groups = scale.shape[1]
    s = torch.zeros(n16, groups, dtype=torch.float32, device=codes.device)
    z = torch.zeros(n16, groups, dtype=torch.float32, device=codes.device)
    s[:n], z[:n] = scale.float(), zero.float()
    pairs = _bits16(s.to(half)) | (_bits16((-(base + z)).to(half)) << 16)  # [N16, G]
    constants = pairs.reshape(tiles, 2, 8, groups).permute(0, 3, 2, 1).reshape(tiles, groups, 16)  # u32 2g + r
    # unit j's sets: the group of its first column and, with two sets, the next (clamped to the last)
    first = torch.arange(units, device=codes.device)[:, None] * (unit * 64) // group
    sets_of_unit = (first + torch.arange(sets, device=codes.device)).clamp(max=groups - 1)
    stream = torch.cat([words.reshape(tiles, units, unit * 128), constants[:, sets_of_unit].reshape(tiles, units, -1)],
                       -1)
    keep = packed is not None and int4_gemm_takes(k, group)
    return KernelWeights(stream.contiguous(), torch.zeros(tiles, dtype=torch.int32, device=codes.device), n, group,
                         chunks, unit, sets, *((packed, scale.contiguous(), zero.contiguous()) if keep else ()))


# W4A8's GEMM reads the fp16 values of E4M3 codes, or these inputs as they are, each block quantizing its
# columns of them into shared memory (static scale; int4_group.cu XIN) ...
_GEMM_INPUT = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2}
# ... where they take at most this many bytes there, as fp16 values, ...
MAX_STAGED_BYTES = 64 * 1024
# ... and where that pays: where each block quantizes at most STAGED_VALUES_PER_BLOCK values before its first
# chunk, a prologue short enough for the weights' first fetches to hide, or all blocks together at most
# STAGED_VALUES_PER_SM a multiprocessor (small layers, where the input kernel's own launch costs more). Elsewhere
# the input kernel runs once and the GEMM overlaps it. H100, bf16 in and out, us, quantizing in the GEMM / the
# input kernel first: 8192 x 2048, 4 / 8 rows (8192 / 16384 values a block) 7.40 / 8.47, 8.84 / 8.45; 11008 x
# 4096, 2 / 4 rows 16.12 / 16.20, 18.50 / 16.25; 2048 x 2048, 4 / 8 rows 5.32 / 5.87, 6.80 / 5.87; 1536 x 576, 32
# rows (13,405 values a multiprocessor) 5.27 / 6.03; 4096 x 11008, one row (11008 a block) 18.1 / 15.3 (RESULTS,
# sessions 25 and 31).
STAGED_VALUES_PER_BLOCK = 8192
STAGED_VALUES_PER_SM = 14336


def _column_tiles(rows: int) -> int:
    return 1 if rows <= 8 else 2 if rows <= 16 else 4


def _block_shape(rows: int, weights: KernelWeights, device: torch.device) -> tuple[int, int]:
    """(weight tiles, warps) of a GEMM block for ``rows`` input rows."""
    sms = multiprocessors(device)
    wide = weights.tiles >= TWO_TILES_PER_SM * sms
    if not wide or rows <= 8:
        return 1, BLOCK_WARPS
    if rows > 16:
        return 2, TWO_TILE_WARPS_PAST_16_ROWS
    wave = RESIDENT_BLOCKS_PER_SM * sms
    fills_wave = TWO_TILES_MIN_WAVE_FILL * wave <= -(-weights.tiles // 2) <= wave
    if weights.chunks * 64 >= TWO_TILES_MIN_K_16_ROWS or fills_wave:
        return 2, BLOCK_WARPS
    return 1, BLOCK_WARPS


def _module(mode: int, rows: int, device: torch.device, xin: int = 0, weights: KernelWeights | None = None,
            block_shape: tuple[int, int] = (1, BLOCK_WARPS)):
    # without weights (the input kernel) the group-128 shape's constants, so that it shares their module
    unit_defines = weights.defines() if weights else _unit_defines(2, 1, 128)
    defines = {"MODE": mode, "NT": _column_tiles(rows), "TB": block_shape[0], "KWARPS": block_shape[1], "XIN": xin,
               **unit_defines}
    return load_module("int4_group.cu", defines, device)


def _column_blocks(rows: int, k64: int, device: torch.device) -> int:
    """Blocks per input row for the input kernel: few rows are spread over the multiprocessors."""
    return max(1, min(-(-k64 // 512), -(-INPUT_BLOCKS_PER_SM * multiprocessors(device) // rows)))


def prepare_input(x: torch.Tensor, mode: int, k64: int, input_scale: torch.Tensor | None = None,
                  per_token: bool = False, nan_count: torch.Tensor | None = None,
                  half_out: bool = False, deinterleave: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M, K] float32 or bf16 (rows of unit stride) -> (the GEMM's input [M, k64], its scale):
    W4A16 bf16(x); W4A8 the E4M3 codes of x / scale (with ``half_out`` their float16 values, the
    few-rows GEMM's input); with ``deinterleave``, k64 a multiple of INT4_GEMM_TILE_K, each 128 columns'
    even ones then their odd ones, the Triton INT4 GEMM's input (int4_group.cu has the 128); the scale
    being ``input_scale`` or with ``per_token`` each row's max|x| / 448 (float32 [M], returned). NaN
    inputs (W4A8) add to ``nan_count``."""
    if deinterleave and (half_out or k64 % INT4_GEMM_TILE_K):
        raise ValueError(f"deinterleaving takes bf16 or E4M3 codes of a multiple of {INT4_GEMM_TILE_K} columns, "
                         f"not {k64}{' as float16 values' if half_out else ''}")
    m, k = x.shape
    if x.dtype not in (torch.float32, torch.bfloat16):
        x = x.float()
    if x.stride(1) != 1:
        x = x.contiguous()
    dtype = torch.bfloat16 if mode == W4A16 else torch.float16 if half_out else torch.float8_e4m3fn
    xq = torch.empty(m, k64, dtype=dtype, device=x.device)
    scale = input_scale
    if mode == W4A8 and per_token:
        scale = torch.empty(m, dtype=torch.float32, device=x.device)
    if m:
        _module(mode, m, x.device).launch(
            "int4_group_prepare_input", (m, 1 if per_token else _column_blocks(m, k64, x.device), 1), 256,
            [pointer(x), ctypes.c_int(int(x.dtype == torch.bfloat16)), ctypes.c_int(x.stride(0)), ctypes.c_int(k),
             ctypes.c_int(k64), pointer(scale), ctypes.c_int(int(per_token)), pointer(xq), pointer(nan_count),
             ctypes.c_int(int(half_out)), ctypes.c_int(int(deinterleave))])
    return xq, scale


def int4_gemm_takes(k: int, group: int) -> bool:
    """Whether the Triton INT4 GEMM takes K = ``k`` with groups of ``group`` columns: whole steps of
    INT4_GEMM_TILE_K columns, each within one group or holding whole groups of 32 or 64 columns."""
    within = group >= k or group % INT4_GEMM_TILE_K == 0
    return k % INT4_GEMM_TILE_K == 0 and (within or group in (32, 64))


def uses_int4_gemm(m: int, weights: KernelWeights, mode: int) -> bool:
    """Whether ``m`` rows go to the Triton INT4 GEMM (weights that keep their packed codes: see
    :func:`kernel_layout`)."""
    if weights.packed is None or m > INT4_GEMM_MAX_ROWS:
        return False
    if mode == W4A16:
        return m >= W4A16_INT4_GEMM_MIN_ROWS
    large = weights.n * weights.chunks * 64 >= W4A8_INT4_GEMM_MIN_WEIGHTS
    return m > MAX_ROWS and (m <= W4A8_INT4_GEMM_ANY_LAYER_ROWS or large)


def _staged_stride(columns: int, rows: int) -> int:
    """Bytes between the fp16 rows a block stages (a multiple of 64 columns): with several rows, an odd
    multiple of 16, so that the two rows of each phase of the mma's 16-byte loads (a lane's at 32 t + 16 v)
    fall in different shared-memory banks."""
    return 2 * columns + (16 if rows > 1 else 0)


def quantizes_input(x: torch.Tensor, weights: KernelWeights, mode: int, per_token: bool) -> bool:
    """Whether :func:`small_m_gemm` can take x itself (W4A8 with a static scale, bf16 or float32 rows of
    16-byte alignment, K a multiple of 64, rows that fit MAX_STAGED_BYTES): one kernel instead of two."""
    m, k = x.shape
    return (mode == W4A8 and not per_token and 0 < m <= MAX_ROWS and k == weights.chunks * 64
            and m * _staged_stride(k, m) <= MAX_STAGED_BYTES
            and x.dtype in (torch.bfloat16, torch.float32) and rows_16_byte_aligned(x))


def quantizing_input_pays(rows: int, weights: KernelWeights, device: torch.device) -> bool:
    """Whether the few-rows GEMM quantizing ``rows`` rows of its input itself beats the input kernel
    followed by the GEMM: few values staged a block or a multiprocessor (STAGED_VALUES_PER_BLOCK, _PER_SM)."""
    grid = _LaunchGrid.of(rows, weights, device)
    every_block = grid.blocks * rows * weights.chunks * 64  # the splits of a block's K together stage all of K
    return (rows * grid.split_columns <= STAGED_VALUES_PER_BLOCK
            or every_block <= STAGED_VALUES_PER_SM * multiprocessors(device))


@dataclass(frozen=True)
class _LaunchGrid:
    """The GEMM's blocks for ``rows`` input rows: ``tiles_per_block`` weight tiles of ``warps`` warps,
    ``blocks`` of them along N, K split into ``splits`` of ``split_units`` units (``split_columns`` columns,
    the last split's excepted)."""

    tiles_per_block: int
    warps: int
    blocks: int
    split_units: int
    splits: int
    split_columns: int

    @classmethod
    def of(cls, rows: int, weights: KernelWeights, device: torch.device) -> _LaunchGrid:
        tb, warps = _block_shape(rows, weights, device)
        blocks = -(-weights.tiles // tb)
        split_units, splits = split_k(blocks, weights.units, warps, device, BLOCKS_PER_SM)
        return cls(tb, warps, blocks, split_units, splits, min(split_units * weights.unit, weights.chunks) * 64)


def small_m_gemm(xq: torch.Tensor, weights: KernelWeights, mode: int, input_scale: torch.Tensor | None,
                 per_token: bool, tensor_scale: torch.Tensor | None, bias: torch.Tensor | None,
                 out_dtype: torch.dtype, nan_count: torch.Tensor | None = None,
                 out: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] (float32 or bf16; into ``out``'s rows where given) for the prepared input xq [M, K64],
    M <= MAX_ROWS (W4A8: float16, from prepare_input with half_out), or for W4A8 the layer's input itself
    (bf16 or float32) where :func:`quantizes_input` (its NaNs add to ``nan_count``). Launched early behind
    the kernel before it on Hopper (programmatic dependent launch)."""
    m = xq.shape[0]
    if not 0 < m <= MAX_ROWS:
        raise ValueError(f"the few-rows INT4 kernel takes 1..{MAX_ROWS} input rows, got {m}")
    if mode == W4A8 and xq.dtype not in _GEMM_INPUT:
        raise ValueError(f"the few-rows W4A8 kernel takes float16 (E4M3 values from prepare_input with half_out), "
                         f"bf16 or float32 input, not {xq.dtype}")
    xin = _GEMM_INPUT[xq.dtype] if mode == W4A8 else 0
    if xin and not quantizes_input(xq, weights, mode, per_token):
        raise ValueError(f"the few-rows W4A8 kernel quantizes {m} x {xq.shape[1]} {xq.dtype} input itself only with a "
                         f"static scale, K = {weights.chunks * 64}, rows 16-byte aligned and within "
                         f"{MAX_STAGED_BYTES} bytes; prepare_input it first")
    grid = _LaunchGrid.of(m, weights, xq.device)
    xs_stride = _staged_stride(grid.split_columns, m) if xin else 0
    if out is None:
        out = torch.empty(m, weights.n, dtype=out_dtype, device=xq.device)
    partial = partial_sums(grid.splits, grid.blocks, grid.tiles_per_block * _column_tiles(m), torch.float32, xq.device)
    _module(mode, m, xq.device, xin, weights, (grid.tiles_per_block, grid.warps)).launch(
        "int4_group_gemm", (grid.blocks, grid.splits, 1), 32 * grid.warps,
        [pointer(weights.stream), pointer(xq), pointer(input_scale), pointer(tensor_scale), pointer(bias), pointer(out),
         pointer(partial), pointer(weights.arrivals), pointer(nan_count), ctypes.c_int(m), ctypes.c_int(weights.n),
         ctypes.c_int(weights.units), ctypes.c_int(weights.chunks), ctypes.c_int(grid.split_units),
         ctypes.c_int(xq.stride(0)), ctypes.c_int(xs_stride), ctypes.c_int(int(per_token)),
         ctypes.c_int(int(out_dtype == torch.bfloat16))],
        early=launches_early(xq.device), shared=weights.ring_bytes(grid.tiles_per_block, grid.warps) + m * xs_stride)
    return out


def dequantize(weights: KernelWeights, mode: int) -> torch.Tensor:
    """The plain weights [N, K64]: bf16((c - z) s) (W4A16) or E4M3 codes of (c - z) s (W4A8), for the
    tensor-core GEMM of many rows."""
    k64 = weights.chunks * 64
    dtype = torch.bfloat16 if mode == W4A16 else torch.float8_e4m3fn
    w = torch.empty(weights.n, k64, dtype=dtype, device=weights.stream.device)
    items = weights.tiles * weights.chunks
    if items:
        _module(mode, 1, w.device, weights=weights).launch(
            "int4_group_dequantize", (-(-items // 8), 1, 1), 256,
            [pointer(weights.stream), pointer(w), ctypes.c_int(weights.n), ctypes.c_int(weights.tiles),
             ctypes.c_int(weights.units), ctypes.c_int(weights.chunks), ctypes.c_int(k64)])
    return w


def int4_group_linear(x: torch.Tensor, weights: KernelWeights, mode: int, *, input_scale: torch.Tensor | None = None,
                      per_token: bool = False, tensor_scale: torch.Tensor | None = None,
                      bias: torch.Tensor | None = None, out_dtype: torch.dtype = torch.float32,
                      nan_count: torch.Tensor | None = None) -> torch.Tensor:
    """y [M, N] for x [M, K] (CUDA): W4A16 ``bf16(x) @ w^T + bias``, or W4A8 ``(e4m3(x / sx) @ w^T) *
    (sx * tensor_scale) + bias`` with sx = ``input_scale`` or, with ``per_token``, each row's own."""
    if x.device.index != torch.cuda.current_device():
        with torch.cuda.device(x.device):
            return int4_group_linear(x, weights, mode, input_scale=input_scale, per_token=per_token,
                                     tensor_scale=tensor_scale, bias=bias, out_dtype=out_dtype, nan_count=nan_count)
    m, k = x.shape
    k64 = weights.chunks * 64
    if mode == W4A8 and nan_count is None:
        nan_count = torch.zeros(1, dtype=torch.int32, device=x.device)
    if uses_int4_gemm(m, weights, mode) and torch.cuda.get_device_capability(x.device) >= (9, 0):
        from ..triton.int4_gemm import int4_gemm

        xq, scale = prepare_input(x, mode, k64, input_scale, per_token, nan_count, deinterleave=True)
        return int4_gemm(xq, weights.packed, weights.scale, weights.zero, weights.group,
                         *_epilogue_scales(mode, scale, tensor_scale, weights.n, x.device), bias, out_dtype)
    if mode == W4A16 and x.dtype == torch.bfloat16 and k == k64 and rows_16_byte_aligned(x):
        xq, scale = x, None  # already what the kernel reads
    elif quantizes_input(x, weights, mode, per_token) and quantizing_input_pays(m, weights, x.device):
        return small_m_gemm(x, weights, mode, input_scale, False, tensor_scale, bias, out_dtype, nan_count)
    else:
        xq, scale = prepare_input(x, mode, k64, input_scale, per_token, nan_count, half_out=m <= MAX_ROWS)
    if m <= (SLICED_MAX_ROWS if mode == W4A16 else MAX_ROWS):
        # slices of MAX_ROWS rows (none for no rows; W4A8, whose per-token scales would need slicing too,
        # takes one): each row's sums are its own, so slices give the same results
        out = torch.empty(m, weights.n, dtype=out_dtype, device=x.device)
        for r in range(0, m, MAX_ROWS):
            small_m_gemm(xq[r:r + MAX_ROWS], weights, mode, scale, per_token, tensor_scale, bias, out_dtype,
                         out=out[r:r + MAX_ROWS])
        return out
    from ..triton import float_gemm

    w = dequantize(weights, mode)
    return float_gemm(xq, w, *_epilogue_scales(mode, scale, tensor_scale, weights.n, x.device), bias,
                      out_dtype=out_dtype)


def _epilogue_scales(mode: int, scale: torch.Tensor | None, tensor_scale: torch.Tensor | None, n: int,
                     device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The tensor-core GEMMs' (input scale, per-column weight scale): W4A8 (sx, s8 per column), W4A16 ones."""
    if mode == W4A8:
        return scale, tensor_scale.float().expand(n).contiguous()
    return torch.ones((), device=device), torch.ones(n, device=device)
