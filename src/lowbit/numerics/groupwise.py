"""INT4 weights with per-group scales, and their conversion to FP8 E4M3 (W4A16 and W4A8, design.md 2.3).

A weight matrix W [N, K] is cut into groups of ``group_size`` consecutive columns (along K, the
reduction axis; the last group is shorter when the size does not divide K); per-channel is one group
of K. Every group of every row has a scale ``s`` and a
zero point ``z``; the codes ``c`` are unsigned 4-bit, 0..15:

  symmetric:   s = amax / 7, z = 8 (c - 8 in [-7, 7], the narrow s4 range stored offset by 8; -8
               is reached only by a weight that GPTQ pushed past its group's range)
  asymmetric:  s = (hi - lo) / 15, z = clamp(round(-lo / s), 0, 15)   ([lo, hi] widened to include 0)
  c = clamp(round_half_even(w / s) + z, 0, 15)       value = (c - z) * s

Scales are stored as float16 rounded up to SCALE_BITS = 7 significant bits, and the codes are computed
with the stored scale, so that ``(c - z) * s`` (at most 4 + 7 significant bits) is exact in float32,
in float16 and, rounded once, in bf16: the GPU kernel converts two weights per instruction in packed
16-bit arithmetic, and it and this reference agree bit for bit on every weight value, including its
one rounding to FP8. (Rounding up widens a step by at most 2^-6 of itself, 0.8% on average, far
inside the quantization error of 4-bit codes.)

W4A8 adds one power-of-two scale per tensor, ``s8``, that brings the weights into a range E4M3 holds
with room to spare (``protective_scale``): the groups are fitted to W / s8, and the kernel computes
``e4m3((c - z) * s)``, so the weight the FP8 tensor cores see is ``s8 * e4m3((c - z) * s)``.
"""

from __future__ import annotations

import math

import torch

from ..errors import ConfigError

CODE_MAX = 15
SYMMETRIC_ZERO = 8

# E4M3FN's largest finite value is 448 = 1.75 * 2^8. Its top binade [256, 448] has a step of 32, so
# the value below the maximum is 416. Scaling W so that max|W| <= 416 (as the reference kept 224, one
# step under the 240 maximum of its E4M3 variant) leaves the largest weights one step of headroom:
# an asymmetric group's dequantized extremes can exceed its range by half a quantization step, and
# rounding to E4M3 can move a value up by half of 32, so nothing reaches saturation. A power of two
# keeps the scaling exact, and puts max|W / s8| in (208, 416]: the weights use the format's upper
# binades, far from its subnormals (below 2^-6).
PROTECTIVE_RANGE = 416.0
SCALE_BITS = 7


def check_group_size(group_size: int, k: int | None = None) -> int | None:
    """The group size for K columns (0 means per channel: one group of K). Without K, only the value
    itself is checked."""
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 0:
        raise ConfigError(f"group_size={group_size!r} is invalid: expected a positive integer, or 0 for per channel")
    if k is None:
        return None
    return min(group_size, k) if group_size else k


def num_groups(k: int, group_size: int) -> int:
    """Groups along K; when the group size does not divide K the last group is shorter (K=576 at
    group 128: four groups of 128 and one of 64), as if zero-padded, which changes no range."""
    return -(-k // group_size)


def protective_scale(w: torch.Tensor) -> torch.Tensor:
    """s8 = 2^ceil(log2(max|w| / PROTECTIVE_RANGE)) as a float32 scalar (1 for an all-zero tensor)."""
    amax = float(w.detach().abs().max()) if w.numel() else 0.0
    if not math.isfinite(amax):
        raise ValueError("the weight has inf or NaN values: they have no INT4/FP8 code")
    if amax == 0.0:
        return torch.tensor(1.0)
    return torch.tensor(2.0 ** math.ceil(math.log2(amax / PROTECTIVE_RANGE)))


_DROPPED = (1 << (24 - SCALE_BITS)) - 1  # float32 mantissa bits below the kept ones


def round_scale(scale: torch.Tensor) -> torch.Tensor:
    """Positive float32 scales -> float16 values of at most SCALE_BITS significant bits, rounded up (so
    that the codes still cover the group's range), as float32."""
    bits = scale.float().contiguous().view(torch.int32)
    bits = (bits + _DROPPED) & ~_DROPPED
    return bits.view(torch.float32).to(torch.float16).float()


def scales_on_grid(scale: torch.Tensor) -> bool:
    """Whether (float16) scales have at most SCALE_BITS significant bits, as round_scale leaves them
    (checkpoints written before that rounding may not)."""
    return not bool((scale.float().contiguous().view(torch.int32) & _DROPPED).any())


def _grouped(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """[N, K] -> [N, G, group_size], zero-padded to whole groups."""
    n, k = w.shape
    pad = num_groups(k, group_size) * group_size - k
    if pad:
        w = torch.nn.functional.pad(w, (0, pad))
    return w.reshape(n, -1, group_size)


def group_qparams(w: torch.Tensor, group_size: int, symmetric: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Scales (float16 values in float32) and zero points (uint8) [N, K / group_size] for w [N, K]."""
    g = _grouped(w.detach().float(), group_size)
    lo = g.amin(-1).clamp(max=0.0)
    hi = g.amax(-1).clamp(min=0.0)
    if symmetric:
        scale = torch.maximum(-lo, hi) / (SYMMETRIC_ZERO - 1)
    else:
        scale = (hi - lo) / CODE_MAX
    scale = round_scale(scale)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    if symmetric:
        zero = torch.full_like(scale, SYMMETRIC_ZERO)
    else:
        zero = torch.clamp(torch.round(-lo / scale), 0, CODE_MAX)
    return scale, zero.to(torch.uint8)


def quantize_groups(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """Codes (uint8, 0..15) of w [N, K] with per-group scale and zero [N, G]."""
    g = _grouped(w.float(), group_size)
    c = torch.round(g / scale.unsqueeze(-1)) + zero.unsqueeze(-1).float()
    return c.clamp(0, CODE_MAX).reshape(len(w), -1)[:, :w.shape[1]].to(torch.uint8)


def dequantize_groups(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group_size: int) -> torch.Tensor:
    """(c - z) * s in float32 (exact), [N, K]."""
    g = _grouped(codes.float(), group_size)
    return ((g - zero.unsqueeze(-1).float()) * scale.unsqueeze(-1)).reshape(len(codes), -1)[:, :codes.shape[1]]
