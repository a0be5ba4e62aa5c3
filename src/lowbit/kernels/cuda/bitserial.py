"""Launchers of bitserial.cu: a bit-serial Linear on binary tensor cores (mma.sync m16n8k256 b1,
AND + POPC: native from sm_80, about 8x the int8 rate on H100), exact against
lowbit.kernels.reference.bitserial_acc."""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache

import torch

from ...numerics.bitlayers import WORD_MULTIPLE
from . import launches_early, load_module, multiprocessors, nvrtc_available, pointer, shared_memory_per_block

MAX_WARPS_K = 8
MAX_NT = 4  # column tiles per warp; 8 took 166 registers (one block a multiprocessor) and was slower
QUANTIZE_WARPS = 8
# Hopper: launch each kernel while the one before it runs (programmatic dependent launch): it loads its
# weights and waits for the previous kernel's output; the benchmark turns it off to measure what it brings.
EARLY_LAUNCH = True


def bitserial_supported(device: torch.device) -> bool:
    """Binary tensor cores with AND (compute capability 8.0 or newer) and NVRTC importable."""
    return (device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
            and nvrtc_available())


def _early(device: torch.device) -> bool:
    return EARLY_LAUNCH and launches_early(device)


def _config(m: int, words: int, act_bits: int, n_stored: int, most_groups: int = MAX_WARPS_K) -> dict[str, int]:
    a8 = 8 if act_bits <= 8 else 16
    tiles = -(-m * a8 // 8)
    per_row = a8 // 8  # a warp's tiles cover whole input rows
    nt = min(MAX_NT, max(per_row, tiles))
    nt -= nt % per_row
    chunks = words // WORD_MULTIPLE
    # A block keeps 8 warps: one group of them per NT column tiles (up to ``most_groups`` groups, which
    # need the same weights), each group's warps splitting K. H100, batch 32, 4-bit weights: 4096 x 4096
    # 38.6 -> 24.7 us, 8192 x 8192 106 -> 83 us against one group and more blocks.
    cw = min(most_groups, -(-tiles // nt))
    warps_k = max(1, min(MAX_WARPS_K // cw, chunks))
    # Weight planes per pipeline stage (two stages in flight): as many as leave two blocks of 8 warps to a
    # multiprocessor (at most 128 registers). The loads in flight are what the time waits on: four
    # column tiles with two planes a stage instead of one, H100, 8192 x 8192, batch 32, 8-bit weights:
    # 203 -> 174 us. (Stages spanning several chunks when fewer planes are active were slower: session 11.)
    pg = 4 if nt <= 2 else 2
    wide = -(-chunks // warps_k) > _flush_chunks(n_stored)
    # Several column groups share their weights through a ring of 4 stages in shared memory (batch 32,
    # 4 bits: 4096 24.7 -> 22.5 us, 8192 83.3 -> 76.6; 8192 at batch 8 lost 3%); one group keeps its
    # two register stages.
    ring = 4 if cw > 1 else 0
    return {"NT": nt, "WARPS_K": warps_k, "CW": cw, "A8": a8, "PG": pg, "WIDE": int(wide), "RING": ring}


@cache
def _launch_config(m: int, n: int, words: int, act_bits: int, n_stored: int, device: torch.device) -> dict[str, int]:
    """:func:`_config` fitted to the GPU. Column groups are halved while the blocks would leave
    multiprocessors idle. With one column tile, one plane a stage where the grid would not fit the GPU
    at once otherwise: the smaller blocks (half the registers) fit twice as many to a multiprocessor.
    H100, N = K = 8192, batch 1, 8-bit inputs: one wave of them beats two of the larger ones up to 6
    bitlayers (1 bitlayer 9.9 -> 7.5 us, 4: 16.8 -> 16.3) and costs 1% at 8 (27.9 -> 28.1). With two
    column tiles (16-bit inputs) one plane a stage lost from 2 bitlayers up (8: 29.6 -> 36.2 us)."""
    cfg = _config(m, words, act_bits, n_stored)
    row_tiles, sms = -(-n // 16), multiprocessors(device)
    while cfg["CW"] > 1 and row_tiles * _column_blocks(m, cfg) < sms:
        cfg = _config(m, words, act_bits, n_stored, cfg["CW"] // 2)
    if cfg["NT"] == 1:
        held = load_module("bitserial.cu", cfg, device).blocks_per_sm("bitserial_gemm", _threads(cfg))
        if row_tiles * _column_blocks(m, cfg) > held * sms:
            cfg["PG"] = 1
    return cfg


def _column_blocks(m: int, cfg: dict[str, int]) -> int:
    return -(-m * cfg["A8"] // (8 * cfg["NT"] * cfg["CW"]))


def _threads(cfg: dict[str, int]) -> int:
    return 32 * cfg["WARPS_K"] * cfg["CW"]


def _flush_chunks(n_stored: int) -> int:
    """Chunks of 512 bits whose popcounts, times their planes' weights, an int32 sum holds for sure."""
    return ((1 << 31) - 1) // (WORD_MULTIPLE * 32 * ((1 << n_stored) - 1))


def layer_kernels(m: int, planes: torch.Tensor, act_bits: int, device: torch.device) -> tuple[dict, object]:
    """(the launch configuration, the compiled module) for ``m`` input rows of the stored ``planes``."""
    cfg = _launch_config(m, planes.shape[1], planes.shape[-1], act_bits, planes.shape[0], device)
    return cfg, load_module("bitserial.cu", cfg, device)


def empty_input_planes(m: int, words: int, cfg: dict, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Buffers for the GEMM's input: bitplanes int32 [M * A8, words], code sums by half-word int32 [M, 2 words]."""
    return (torch.empty(m * cfg["A8"], words, dtype=torch.int32, device=device),
            torch.empty(m, 2 * words, dtype=torch.int32, device=device))


@dataclass
class InputPlanes:
    """A bit-serial layer's input as its GEMM reads it (bitserial.cu's layout), for a kernel that writes it
    from floats it makes (the GEMM of the layer before, kernels/triton/lstm.py's cell): codes
    clamp(rint(v / scale), qmin, qmax) of ``act_bits`` bits (NaN coded 0), their planes ``xplanes`` int32
    [B * a8, words] (a chunk's words in ldmatrix order with ``ring``), the codes' sums by half-word ``xsum``
    int32 [B, 2 words]; saturated values and NaNs add to ``flags`` int64 [2]."""

    scale: torch.Tensor
    qmin: int
    qmax: int
    act_bits: int
    xplanes: torch.Tensor
    xsum: torch.Tensor
    flags: torch.Tensor
    a8: int
    ring: bool

    @property
    def words(self) -> int:
        return self.xplanes.shape[1]


def input_planes(x: torch.Tensor, input_scale: torch.Tensor, act_bits: int, qmin: int, qmax: int, words: int,
                 flags: torch.Tensor, cfg: dict, module) -> tuple[torch.Tensor, torch.Tensor]:
    """(input bitplanes int32 [M * A8, words], per-word code sums int32 [M, words]) of x [M, K]."""
    m, k = x.shape
    xplanes, xsum = empty_input_planes(m, words, cfg, x.device)
    module.launch("bitserial_quantize_input", (-(-words // QUANTIZE_WARPS), m, 1), 32 * QUANTIZE_WARPS,
                  [pointer(x), pointer(input_scale), ctypes.c_int(k), ctypes.c_int(words), ctypes.c_int(act_bits),
                   ctypes.c_int(qmin), ctypes.c_int(qmax), pointer(xplanes), pointer(xsum), pointer(flags)],
                  early=_early(x.device))
    return xplanes, xsum


def binary_gemm(xplanes: torch.Tensor, xsum: torch.Tensor, planes: torch.Tensor, active: int, act_bits: int,
                act_signed: bool, scale: torch.Tensor, bias: torch.Tensor | None, relu: bool, cfg: dict,
                module, next_input: InputPlanes | None = None) -> torch.Tensor:
    """y [M, N] float32 from the input planes and sums and the ``active`` most significant weight planes;
    with ``next_input`` (a layer of N inputs), the epilogue also writes y as that layer's input."""
    m = xsum.shape[0]
    n_stored, n, words = planes.shape
    out = torch.empty(m, n, dtype=torch.float32, device=planes.device)
    grid = (-(-n // 16) * _column_blocks(m, cfg), 1, 1)
    if next_input is not None:
        shapes = (tuple(next_input.xplanes.shape), tuple(next_input.xsum.shape))
        if next_input.words * 32 < n or shapes != ((m * next_input.a8, next_input.words), (m, 2 * next_input.words)):
            raise ValueError(f"the next layer's input buffers {shapes[0]} / {shapes[1]} cannot hold {m} rows of this "
                             f"layer's {n} outputs at {next_input.a8} planes a row")
        module = load_module("bitserial.cu", {**cfg, "NEXT_A8": next_input.a8, "NEXT_RING": int(next_input.ring)},
                             planes.device)
        nxt = [pointer(next_input.xplanes), pointer(next_input.xsum), pointer(next_input.scale),
               pointer(next_input.flags), ctypes.c_int(next_input.words), ctypes.c_int(next_input.act_bits),
               ctypes.c_int(next_input.qmin), ctypes.c_int(next_input.qmax)]
    else:
        nxt = [pointer(None)] * 4 + [ctypes.c_int(0)] * 4
    module.launch("bitserial_gemm", grid, _threads(cfg),
                  [pointer(planes), pointer(xplanes), pointer(xsum), pointer(scale), pointer(bias), pointer(out), ctypes.c_int(m),
                   ctypes.c_int(n), ctypes.c_int(words), ctypes.c_int(n_stored), ctypes.c_int(active),
                   ctypes.c_int(act_bits), ctypes.c_int(int(act_signed)), ctypes.c_int(int(relu)),
                   ctypes.c_int(_flush_chunks(n_stored)), *nxt],
                  early=_early(planes.device))
    return out


def bitserial_linear(x: torch.Tensor, planes: torch.Tensor, active: int, input_scale: torch.Tensor,
                     act_bits: int, qmin: int, qmax: int, act_signed: bool, scale: torch.Tensor,
                     bias: torch.Tensor | None, flags: torch.Tensor, relu: bool = False,
                     made: InputPlanes | None = None, next_input: InputPlanes | None = None) -> torch.Tensor:
    """y [M, N] float32 for x [M, K] float32 (contiguous, CUDA), stored planes int32 [n, N, W], the
    ``active`` most significant used; ``scale`` = input_scale * weight_scale [N]; ``flags`` int64 [2]
    accumulates saturated inputs and NaNs. Two kernels: the input's planes, then the binary GEMM; one
    where the previous kernel ``made`` x's planes. ``next_input``: see :func:`binary_gemm`."""
    if x.device.index != torch.cuda.current_device():
        with torch.cuda.device(x.device):
            return bitserial_linear(x, planes, active, input_scale, act_bits, qmin, qmax, act_signed, scale, bias,
                                    flags, relu, made, next_input)
    words = planes.shape[-1]
    cfg, module = layer_kernels(x.shape[0], planes, act_bits, x.device)
    if made is None:
        xplanes, xsum = input_planes(x, input_scale, act_bits, qmin, qmax, words, flags, cfg, module)
    elif (made.a8, made.ring, tuple(made.xplanes.shape)) != (cfg["A8"], bool(cfg["RING"]), (x.shape[0] * cfg["A8"], words)):
        raise ValueError(f"input planes made for {made.xplanes.shape[0] // made.a8} rows of {made.words} words "
                         f"(a8 {made.a8}, ring {made.ring}) do not fit this layer's GEMM: {x.shape[0]} rows of {words} "
                         f"words (a8 {cfg['A8']}, ring {bool(cfg['RING'])})")
    else:
        xplanes, xsum = made.xplanes, made.xsum
    return binary_gemm(xplanes, xsum, planes, active, act_bits, act_signed, scale, bias, relu, cfg, module, next_input)


# bitserial_lstm.cu: a bit-serial LSTM layer's whole recurrence in one cooperative kernel, each block
# holding the weight planes of 16 hidden units' four gates in shared memory. The benchmark turns it off
# to compare with two kernels a step.
PERSISTENT_LSTM = True
LSTM_UNITS = 16
LSTM_WARPS_K = 4  # warps of a block per gate tile, splitting K
LSTM_STATIC_SHARED = 8192  # more than the kernel's own shared arrays take (at most 4.7 KB at 4 column tiles)


@cache
def _lstm_plan(batch: int, hidden: int, n_stored: int, words: int, active: int, act_bits: int,
               device: torch.device) -> tuple[dict, int, int, object] | None:
    """(compile-time constants, dynamic shared memory, blocks, the compiled module) of bitserial_lstm for
    these shapes, or None where it cannot run them: more column tiles than a warp takes, weight planes
    past a block's shared memory, more blocks than the GPU holds at once, or sums that could pass int32."""
    a8 = 8 if act_bits <= 8 else 16
    cfg = {"A8": a8, "NT": batch * a8 // 8, "KS": LSTM_WARPS_K}
    # the weight planes (16 rows x 64 bytes a tile, plane and chunk), then the step's input planes
    shared = 4 * active * (words // WORD_MULTIPLE) * LSTM_UNITS * 64 + batch * a8 * (words + 4) * 4
    if (cfg["NT"] > MAX_NT or words * 32 * ((1 << n_stored) - 1) >= 2**31
            or shared + LSTM_STATIC_SHARED > shared_memory_per_block(device)):
        return None
    module, blocks = load_module("bitserial_lstm.cu", cfg, device), -(-hidden // LSTM_UNITS)
    held = module.blocks_per_sm("bitserial_lstm", 128 * LSTM_WARPS_K, shared)
    return (cfg, shared, blocks, module) if blocks <= held * multiprocessors(device) else None


def lstm_sequence(gates_in: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor, planes: torch.Tensor, active: int,
                  input_scale: torch.Tensor, act_bits: int, qmin: int, qmax: int, act_signed: bool,
                  scale: torch.Tensor, bias: torch.Tensor | None,
                  flags: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
    """An LSTM layer's recurrence in one kernel: (h for every step [T, B, H], the last c [B, H]) from the
    input projections ``gates_in`` [T, B, 4H] (bias included; gates i, f, g, o), h0, c0 [B, H] (float32,
    contiguous, on the current CUDA device) and the hidden product's stored ``planes`` [n, 4H, W] (the
    ``active`` most significant used, ``scale`` = input_scale * weight_scale [4H]); ``flags`` counts
    saturated and NaN h. The numbers of :func:`binary_gemm` + kernels/triton/lstm.py's cell a step, bit
    for bit. None where the kernel cannot take these shapes (then run the steps)."""
    steps, batch, four_h = gates_in.shape
    hidden = four_h // 4
    n_stored, _, words = planes.shape
    device = planes.device
    plan = _lstm_plan(batch, hidden, n_stored, words, active, act_bits, device) if PERSISTENT_LSTM else None
    if plan is None:
        return None
    cfg, shared, blocks, module = plan
    # Two buffers of (32 bits of planes, step mark) pairs, by row, block and pair of planes; zero: unmarked.
    exchange = torch.zeros(2 * batch * blocks * cfg["A8"], dtype=torch.int32, device=device)
    hs = torch.empty(steps, batch, hidden, dtype=torch.float32, device=device)
    c_out = torch.empty(batch, hidden, dtype=torch.float32, device=device)
    module.launch(
        "bitserial_lstm", (blocks, 1, 1), 128 * LSTM_WARPS_K,
        [pointer(planes), pointer(scale), pointer(bias), pointer(gates_in), pointer(h0), pointer(c0), pointer(hs),
         pointer(c_out), pointer(input_scale), pointer(exchange), pointer(flags), ctypes.c_int(steps), ctypes.c_int(hidden),
         ctypes.c_int(words), ctypes.c_int(n_stored), ctypes.c_int(active), ctypes.c_int(act_bits),
         ctypes.c_int(int(act_signed)), ctypes.c_int(qmin), ctypes.c_int(qmax)],
        shared=shared, cooperative=True)
    return hs, c_out
