"""Exact bit packing: INT4 nibbles and bitplanes.

INT4: two codes per byte along the last axis, element 2i in the low nibble and
2i+1 in the high nibble (two's complement for signed codes); an odd length is
padded with a zero code.

Bitplanes: an n-bit code is split into n binary planes (two's complement for
signed codes, so plane n-1 carries weight -2^(n-1)); each plane is packed 32
elements to an int32 word along the last axis, element 32w+i in bit i of word w.
"""

from __future__ import annotations

import torch

from ..errors import ConfigError


def _check_codes(q: torch.Tensor, bits: int, signed: bool) -> None:
    if q.dtype.is_floating_point or q.dtype == torch.bool:
        raise ConfigError(f"expected integer codes, got a {q.dtype} tensor")
    lo, hi = (-(1 << (bits - 1)), (1 << (bits - 1)) - 1) if signed else (0, (1 << bits) - 1)
    if q.numel() and (int(q.min()) < lo or int(q.max()) > hi):
        raise ConfigError(f"codes span [{int(q.min())}, {int(q.max())}], outside the "
                          f"{'signed' if signed else 'unsigned'} {bits}-bit range [{lo}, {hi}]")


def pack_int4(q: torch.Tensor, signed: bool = True) -> torch.Tensor:
    """Integer codes [..., K] -> uint8 [..., ceil(K/2)]."""
    _check_codes(q, 4, signed)
    nibbles = (q.to(torch.int16) & 0xF).to(torch.uint8)
    if nibbles.shape[-1] % 2:
        nibbles = torch.nn.functional.pad(nibbles, (0, 1))
    return nibbles[..., 0::2] | (nibbles[..., 1::2] << 4)


def unpack_int4(packed: torch.Tensor, length: int, signed: bool = True) -> torch.Tensor:
    """uint8 [..., ceil(K/2)] -> int8 codes [..., length]."""
    if packed.dtype != torch.uint8:
        raise ConfigError(f"packed INT4 must be uint8, got {packed.dtype}")
    if not 2 * packed.shape[-1] - 1 <= length <= 2 * packed.shape[-1]:
        raise ConfigError(f"length {length} does not match {packed.shape[-1]} packed bytes")
    lo = (packed & 0xF).to(torch.int8)
    hi = (packed >> 4).to(torch.int8)
    q = torch.stack((lo, hi), dim=-1).reshape(*packed.shape[:-1], -1)[..., :length]
    return torch.where(q > 7, q - 16, q) if signed else q


def pack_bitplanes(q: torch.Tensor, bits: int, signed: bool = True) -> torch.Tensor:
    """Integer codes [..., K] -> int32 [bits, ..., ceil(K/32)]."""
    _check_codes(q, bits, signed)
    q = q.to(torch.int64) & ((1 << bits) - 1)  # two's complement in `bits` bits
    pad = (-q.shape[-1]) % 32
    if pad:
        q = torch.nn.functional.pad(q, (0, pad))
    q = q.reshape(*q.shape[:-1], -1, 32)
    weights = torch.arange(32, device=q.device, dtype=torch.int64)
    planes = torch.stack([(((q >> b) & 1) << weights).sum(-1) for b in range(bits)])
    return torch.where(planes >= 1 << 31, planes - (1 << 32), planes).to(torch.int32)


def unpack_bitplanes(planes: torch.Tensor, length: int, signed: bool = True) -> torch.Tensor:
    """int32 [bits, ..., ceil(K/32)] -> int64 codes [..., length]."""
    bits = planes.shape[0]
    if not 32 * planes.shape[-1] - 31 <= length <= 32 * planes.shape[-1]:
        raise ConfigError(f"length {length} does not match {planes.shape[-1]} packed words")
    words = planes.to(torch.int64) & 0xFFFFFFFF
    shifts = torch.arange(32, device=planes.device, dtype=torch.int64)
    bitvals = (words.unsqueeze(-1) >> shifts) & 1  # [bits, ..., W, 32]
    bitvals = bitvals.reshape(*bitvals.shape[:-2], -1)[..., :length]
    place = torch.tensor([1 << b for b in range(bits)], dtype=torch.int64, device=planes.device)
    if signed:
        place[-1] = -place[-1]
    return (bitvals * place.reshape(-1, *[1] * (bitvals.dim() - 1))).sum(0)
