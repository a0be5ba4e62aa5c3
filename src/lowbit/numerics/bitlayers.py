"""Bitlayers: n-bit weights as n binary layers, for bit-serial (PrecisionBatching) arithmetic.

A weight row is quantized to n bits on a grid of odd integers (offset binary, "mid-rise"):

    w ~= s * q,   q = 2u - (2^n - 1),   u in [0, 2^n)   (so q in {-(2^n-1), ..., -1, 1, ..., 2^n-1})

and u is split into n bitplanes b_j: q = sum_j 2^j (2 b_j - 1). Each bitlayer is a +-1 matrix with
weight 2^j. Against a vector x, a layer's product needs one popcount and the sum of x:
sum_k (2 b_jk - 1) x_k = 2 sum_k b_jk x_k - sum_k x_k.

Why odd levels rather than the two's complement of the PrecisionBatching paper: the grids nest.
Keeping the k most significant planes gives 2^(n-k) * (2 (u >> (n-k)) - (2^k - 1)), which is exactly
the k-bit odd grid with a step 2^(n-k) times coarser and the same clipping range. Its cell boundaries
are a subset of the n-bit grid's, so truncating the stored planes rounds to nearest at k bits. With
two's complement, dropping low planes floors the weight (a bias of half a coarse step). It also gives
a true 1-bit layer: q in {-1, +1}, a binary network's weights, where 1-bit two's complement is {-1, 0}.

The scale is per output row. It is chosen by a clipping search: 100 candidate ranges, fractions
1/100 .. 100/100 of the row's max |w|. The one with the smallest squared error wins.
"""

from __future__ import annotations

import torch

from ..config import check_bits
from ..errors import ConfigError
from .packing import pack_bitplanes

CLIP_CANDIDATES = 100
# Stored planes pad K with zero bits to a multiple of 512 (16 int32 words): the GPU kernel reads
# 16 bytes per thread and feeds two 256-bit tensor-core steps from them.
WORD_MULTIPLE = 16


def padded_words(k: int) -> int:
    """int32 words per stored plane row for K elements."""
    return -(-k // (32 * WORD_MULTIPLE)) * WORD_MULTIPLE


def odd_grid_codes(w: torch.Tensor, scale: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned n-bit codes u [N, K] (int32) of the rows of ``w`` on the odd grid of step ``scale`` [N]:
    the nearest level s * (2u - (2^n - 1)), clamped to the grid."""
    top = (1 << bits) - 1
    half = float(1 << (bits - 1))
    u = torch.floor(w.float() / (2 * scale.float()[:, None]) + half)
    return torch.clamp(u, 0, top).to(torch.int32)


def odd_grid_values(u: torch.Tensor, bits: int) -> torch.Tensor:
    """The odd integers q = 2u - (2^n - 1) of unsigned codes u."""
    return 2 * u.to(torch.int32) - ((1 << bits) - 1)


def clip_search_scale(w: torch.Tensor, bits: int, candidates: int = CLIP_CANDIDATES) -> torch.Tensor:
    """Per-row scale [N] (float32) of the n-bit odd grid whose clipping range, a fraction i / candidates
    of the row's max |w| (i = 1..candidates), gives the smallest squared error. A row of zeros gets
    scale 1 (its levels +-1 are then never the nearest to anything but 0, which the grid cannot hold)."""
    check_bits(bits, "weight_bits")
    if w.dim() != 2:
        raise ConfigError(f"bitlayers take a 2-D weight [out, in], got shape {tuple(w.shape)}")
    w = w.detach().float()
    amax = w.abs().amax(dim=1)
    levels = (1 << bits) - 1  # the largest |q|: a range c maps to the step c / levels
    best_err = torch.full_like(amax, float("inf"))
    best = torch.ones_like(amax)
    for i in range(1, candidates + 1):
        scale = torch.where(amax > 0, amax * (i / candidates) / levels, torch.ones_like(amax))
        q = odd_grid_values(odd_grid_codes(w, scale, bits), bits)
        err = (q * scale[:, None] - w).square().sum(dim=1)
        better = err < best_err
        best_err = torch.where(better, err, best_err)
        best = torch.where(better, scale, best)
    return best


def to_bitlayers(u: torch.Tensor, bits: int) -> torch.Tensor:
    """Unsigned codes u [N, K] -> the n bitlayers, int32 [n, N, padded_words(K)], plane j holding bit j
    of u (element 32w+i in bit i of word w; padding bits are 0)."""
    planes = pack_bitplanes(u, bits, signed=False)
    return torch.nn.functional.pad(planes, (0, padded_words(u.shape[-1]) - planes.shape[-1]))


def input_planes(codes: torch.Tensor, bits: int, signed: bool) -> torch.Tensor:
    """Fixed-point input codes [M, K] -> their bitplanes, int32 [bits, M, padded_words(K)] (two's
    complement when ``signed``: the top plane counts -2^(bits-1))."""
    planes = pack_bitplanes(codes, bits, signed=signed)
    return torch.nn.functional.pad(planes, (0, padded_words(codes.shape[-1]) - planes.shape[-1]))


def check_active(active: int, stored: int, name: str = "layer") -> int:
    """Validate a number of bitlayers to use (1..stored)."""
    if isinstance(active, bool) or not isinstance(active, int):
        raise ConfigError(f"{name}: the number of bitlayers must be an integer, got {active!r}")
    if not 1 <= active <= stored:
        raise ConfigError(f"{name}: {active} bitlayers asked for, but the layer stores {stored} "
                          f"(use 1 to {stored})")
    return active


def bitlayer_values(planes: torch.Tensor, length: int, active: int | None = None) -> torch.Tensor:
    """The integer weights [N, length] (int32) that the ``active`` most significant of the stored planes
    [n, N, W] represent: 2^(n-k) * (2t - (2^k - 1)), t the top k bits of u."""
    bits = planes.shape[0]
    k = check_active(bits if active is None else active, bits)
    if length > 32 * planes.shape[-1]:
        raise ConfigError(f"length {length} does not fit {planes.shape[-1]} packed words")
    shifts = torch.arange(32, dtype=torch.int32, device=planes.device)
    t = torch.zeros(*planes.shape[1:-1], length, dtype=torch.int32, device=planes.device)
    for i in range(k):  # one plane at a time: unpacking all at once would need 32x their size in int64
        plane = (planes[bits - k + i].unsqueeze(-1) >> shifts) & 1
        t += plane.reshape(*plane.shape[:-2], -1)[..., :length] << i
    return odd_grid_values(t, k) << (bits - k)
