"""FP8 (E4M3FN, E5M2) casts with a scale and saturation.

``q = cast(clamp(x / scale, -max, max))``: values beyond the format's largest
finite number saturate to it (E4M3FN has no infinity and would turn them into
NaN), so a cast never produces inf or NaN. A NaN input is an error, not a code.
Rounding is the cast's round-to-nearest-even.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import ConfigError, InputError
from .intquant import count_nan


@dataclass(frozen=True)
class FP8Format:
    name: str
    dtype: torch.dtype
    max: float


FP8_FORMATS = {
    "e4m3": FP8Format("e4m3", torch.float8_e4m3fn, float(torch.finfo(torch.float8_e4m3fn).max)),  # 448
    "e5m2": FP8Format("e5m2", torch.float8_e5m2, float(torch.finfo(torch.float8_e5m2).max)),  # 57344
}


def fp8_format(name: str) -> FP8Format:
    try:
        return FP8_FORMATS[name]
    except KeyError:
        raise ConfigError(f"unknown FP8 format {name!r}: expected one of {', '.join(FP8_FORMATS)}") from None


def fp8_scale(amax, fmt: str = "e4m3") -> torch.Tensor:
    """The scale that maps amax onto the format's largest finite value (1.0 for amax 0)."""
    amax = torch.as_tensor(amax, dtype=torch.float32)
    scale = amax / fp8_format(fmt).max
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _saturating_cast(y: torch.Tensor, f: FP8Format) -> torch.Tensor:
    """Round to nearest even, with values beyond the largest finite one saturating to it
    (the kernels' ``cvt.rn.satfinite``)."""
    return y.clamp(-f.max, f.max).to(f.dtype)


def e4m3_grid(x: torch.Tensor) -> torch.Tensor:
    """x rounded to E4M3FN (saturating at +-448), as float32."""
    return _saturating_cast(x.float(), fp8_format("e4m3")).float()


def to_fp8(x: torch.Tensor, scale, fmt: str = "e4m3", name: str = "tensor") -> torch.Tensor:
    """Scale, saturate and cast to FP8. ``scale`` broadcasts against ``x``."""
    y = x.float() / torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    if count_nan(y):
        raise ValueError(f"{name} has NaN values (or a zero/NaN scale): they have no FP8 code")
    return _saturating_cast(y, fp8_format(fmt))


def from_fp8(q: torch.Tensor, scale) -> torch.Tensor:
    """FP8 codes back to float32."""
    return q.float() * torch.as_tensor(scale, dtype=torch.float32, device=q.device)


def fake_fp8(x: torch.Tensor, scale, fmt: str = "e4m3", name: str = "tensor") -> torch.Tensor:
    """Round ``x`` to the scaled FP8 grid, returned in x's dtype."""
    return from_fp8(to_fp8(x, scale, fmt, name), scale).to(x.dtype)


def per_token_fp8_scale(x: torch.Tensor, fmt: str = "e4m3") -> torch.Tensor:
    """Dynamic per-token scales [..., 1]: each row's max |x| onto the format's maximum (1 for a zero row)."""
    return fp8_scale(x.detach().float().abs().amax(-1, keepdim=True), fmt)


def fp8_activation_grid(x: torch.Tensor, scale: torch.Tensor, fmt: str = "e4m3", name: str = "input") -> torch.Tensor:
    """The FP8 codes of ``x * (1 / scale)`` as float32 values (saturating; a NaN is an error). The float32
    reciprocal is taken once per scale, as the kernels do, instead of a division per element."""
    inv = 1.0 / torch.as_tensor(scale, dtype=torch.float32, device=x.device)
    y = x.float() * inv
    if count_nan(y):
        raise InputError(f"{name} has NaN values: they have no FP8 code")
    return _saturating_cast(y, fp8_format(fmt)).float()
