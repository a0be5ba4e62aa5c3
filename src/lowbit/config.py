"""Number formats and quantization specs: what a tensor is quantized to.

A :class:`QuantSpec` says everything needed to quantize one tensor: its integer
format, symmetric or with a zero point, and the granularity of its scales. Specs
are frozen dataclasses that round-trip through JSON (checkpoints store them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch

from .errors import ConfigError

MIN_BITS, MAX_BITS = 1, 16
GRANULARITIES = ("tensor", "channel", "group")


def check_bits(bits, what: str = "bits") -> int:
    """Validate an integer bit width (1..16) and return it."""
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"{what}={bits!r} is invalid: expected an integer from {MIN_BITS} to {MAX_BITS}")
    return bits


@dataclass(frozen=True)
class IntFormat:
    """A fixed-width integer format.

    ``narrow`` (signed only) drops the most negative code so the range is
    symmetric, [-(2^(b-1)-1), 2^(b-1)-1], as TensorRT's INT8 does: then a
    symmetric scale maps -amax and +amax to codes of equal magnitude.
    """

    bits: int
    signed: bool = True
    narrow: bool = True

    def __post_init__(self):
        check_bits(self.bits)
        if self.signed and self.narrow and self.bits < 2:
            raise ConfigError("a signed narrow-range format needs at least 2 bits (1 bit leaves only 0); "
                              "use signed=False for 1-bit codes")

    @property
    def qmin(self) -> int:
        if not self.signed:
            return 0
        return -(1 << (self.bits - 1)) + (1 if self.narrow else 0)

    @property
    def qmax(self) -> int:
        return (1 << (self.bits - 1)) - 1 if self.signed else (1 << self.bits) - 1

    @property
    def storage_dtype(self) -> torch.dtype:
        """The narrowest torch integer dtype that holds every code."""
        for dtype in (torch.int8, torch.uint8, torch.int16, torch.int32):
            info = torch.iinfo(dtype)
            if info.min <= self.qmin and self.qmax <= info.max:
                return dtype
        raise AssertionError("unreachable: 16-bit codes fit int32")

    @property
    def name(self) -> str:
        return f"{'s' if self.signed else 'u'}{self.bits}"

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True)
class QuantSpec:
    """How one tensor is quantized.

    granularity:
      ``"tensor"``  one scale for the whole tensor;
      ``"channel"`` one scale per index along ``axis``;
      ``"group"``   one scale per ``group_size`` consecutive elements along ``axis``
                    (the reduction axis) for every index of the other axes. When
                    ``group_size`` does not divide that axis, the last group is
                    shorter (it is padded with zeros while its range is computed,
                    which cannot change a max or a min that already includes 0).
    symmetric: ``real = scale * q``; otherwise ``real = scale * (q - zero_point)``
    with the range [lo, hi] widened to include 0 so that 0 is exact.
    """

    fmt: IntFormat
    symmetric: bool = True
    granularity: str = "tensor"
    axis: int = 0
    group_size: int = 0

    def __post_init__(self):
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity={self.granularity!r} is invalid: expected one of {', '.join(GRANULARITIES)}")
        if self.granularity == "group":
            if isinstance(self.group_size, bool) or not isinstance(self.group_size, int) or self.group_size < 1:
                raise ConfigError(f"group_size={self.group_size!r} is invalid: expected a positive integer")
        elif self.group_size:
            raise ConfigError(f"group_size={self.group_size} only applies to granularity='group'")

    def with_format(self, **changes) -> "QuantSpec":
        return replace(self, fmt=replace(self.fmt, **changes))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "QuantSpec":
        try:
            return cls(fmt=IntFormat(**data["fmt"]), **{k: v for k, v in data.items() if k != "fmt"})
        except (TypeError, KeyError) as exc:
            raise ConfigError(f"invalid quantization spec {data!r}: {exc}") from None

    def describe(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        gran = {"tensor": "per-tensor", "channel": f"per-channel(axis={self.axis})",
                "group": f"per-group({self.group_size}, axis={self.axis})"}[self.granularity]
        return f"{self.fmt.name} {kind} {gran}"
