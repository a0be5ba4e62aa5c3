"""Weight quantizers of fake-quantized layers: each maps a float weight onto the grid its scheme
deploys (differentiable by the straight-through estimator) and knows how to compute the codes.

GPTQ (lowbit.algorithms.gptq) quantizes a grouped weight one column at a time through the same
object (:meth:`Int4GroupWeightQuantizer.column_quantizer`) and freezes its result in it, so the fake
layer then shows, and :func:`lowbit.convert` deploys, exactly the codes GPTQ chose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import QuantSpec
from ..numerics import fake_quantize, fp8_scale, qparams_for, to_fp8
from ..numerics.bitlayers import clip_search_scale, odd_grid_codes, odd_grid_values
from ..numerics.fp8 import e4m3_grid
from ..numerics.groupwise import CODE_MAX, dequantize_groups, group_qparams, protective_scale, quantize_groups
from .quantizer import straight_through


class IntWeightQuantizer(nn.Module):
    """Integer weights at a spec's granularity, range = the weight's own max (recomputed every call)."""

    def __init__(self, spec: QuantSpec):
        super().__init__()
        self.spec = spec

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return fake_quantize(w, self.spec, *qparams_for(w, self.spec))

    def describe(self) -> str:
        return self.spec.describe()


class _CachedGrid(nn.Module):
    """Keeps the last grid it computed while the weight (its storage and in-place version) and the
    frozen codes stay the same: calibration and GPTQ run a layer many times on one weight."""

    def __init__(self):
        super().__init__()
        self._key = None
        self._grid = None

    def grid(self, w: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        key = (w.data_ptr(), w._version, w.device, id(getattr(self, "frozen", None)))
        if key != self._key:
            self._grid, self._key = self.grid(w), key
        return straight_through(w, self._grid)


@dataclass
class Int4GroupCodes:
    """A grouped INT4 weight: codes (uint8 0..15) [N, K], scale (float16 values) and zero [N, G],
    and the per-tensor FP8 protective scale (1 without FP8)."""

    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    tensor_scale: torch.Tensor
    group_size: int

    def values(self, fp8: bool) -> torch.Tensor:
        """The weight as the kernel sees it, float32: s8 * e4m3((c - z) * s) with FP8 (W4A8), else
        bf16((c - z) * s) (W4A16)."""
        v = dequantize_groups(self.codes, self.scale, self.zero, self.group_size)
        return e4m3_grid(v) * self.tensor_scale if fp8 else v.to(torch.bfloat16).float()


class ColumnQuantizer:
    """GPTQ's view of a grouped INT4 weight: fit a group's scale and zero from its current columns,
    then round each column to its grid; ``composed`` rounds through FP8 too (DPQ), as the kernel does."""

    def __init__(self, tensor_scale: torch.Tensor, group_size: int, symmetric: bool, composed: bool):
        self.tensor_scale = float(tensor_scale)
        self.group_size = group_size
        self.symmetric = symmetric
        self.composed = composed

    @property
    def grid(self) -> tuple[int, bool, bool]:
        """All that must match for weights to share GPTQ's column loop: all but the tensor scale."""
        return self.group_size, self.symmetric, self.composed

    def fit(self, group: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Scale and zero [N] of one group's columns [N, g] (in the caller's units)."""
        scale, zero = group_qparams(group / self.tensor_scale, group.shape[1], self.symmetric)
        return scale[:, 0], zero[:, 0]

    def round(self, column: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(codes as floats 0..15, their values) of one column [N], with ``zero`` as floats: quantize_groups'
        and Int4GroupCodes.values' arithmetic in as few operations as they allow, as GPTQ runs this once a
        column (its time goes to such small operations)."""
        codes = torch.round(column / self.tensor_scale / scale).add_(zero).clamp_(0, CODE_MAX)
        values = (codes - zero).mul_(scale)
        return codes, (e4m3_grid(values) if self.composed else values).mul_(self.tensor_scale)


class Int4GroupWeightQuantizer(_CachedGrid):
    """INT4 per group along K (design.md 2.3). With ``fp8`` (W4A8) the weight is first divided by its
    power-of-two protective scale and every value is then rounded to E4M3, as the kernel converts it."""

    def __init__(self, group_size: int, symmetric: bool, fp8: bool):
        super().__init__()
        self.group_size = group_size  # resolved for this layer's K (per channel: K)
        self.symmetric = symmetric
        self.fp8 = fp8
        # Set by GPTQ / DPQ (lowbit.algorithms.gptq): the codes it chose, its name and its report.
        self.frozen: Int4GroupCodes | None = None
        self.algorithm = "rtn"
        self.report: dict | None = None

    def rtn(self, w: torch.Tensor) -> Int4GroupCodes:
        """Round-to-nearest codes of ``w`` [N, K]."""
        w = w.detach().float()
        s8 = protective_scale(w).to(w.device) if self.fp8 else torch.ones((), device=w.device)
        scale, zero = group_qparams(w / s8, self.group_size, self.symmetric)
        return Int4GroupCodes(quantize_groups(w / s8, scale, zero, self.group_size), scale, zero, s8, self.group_size)

    def codes_for(self, w: torch.Tensor) -> Int4GroupCodes:
        """The codes to deploy: GPTQ's when it ran, else round to nearest."""
        if self.frozen is None:
            return self.rtn(w)
        return Int4GroupCodes(*(t.to(w.device) for t in (self.frozen.codes, self.frozen.scale, self.frozen.zero,
                                                        self.frozen.tensor_scale)), self.group_size)

    def column_quantizer(self, w: torch.Tensor, composed: bool) -> ColumnQuantizer:
        """GPTQ's quantizer for ``w``: the protective scale comes from the weight before GPTQ changes it."""
        s8 = protective_scale(w) if self.fp8 else torch.ones(())
        return ColumnQuantizer(s8, self.group_size, self.symmetric, composed and self.fp8)

    def grid(self, w: torch.Tensor) -> torch.Tensor:
        return self.codes_for(w).values(self.fp8)

    def describe(self) -> str:
        kind = "sym" if self.symmetric else "asym"
        return f"u4 {kind} per-group({self.group_size}){' -> e4m3' if self.fp8 else ''}"


class FP8WeightQuantizer(_CachedGrid):
    """FP8 E4M3 weights with one scale per output channel: amax / 448."""

    def scale_for(self, w: torch.Tensor) -> torch.Tensor:
        return fp8_scale(w.detach().float().abs().amax(1), "e4m3")

    def codes_for(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(float8_e4m3fn codes [N, K], float32 scales [N])."""
        scale = self.scale_for(w)
        return to_fp8(w.detach(), scale[:, None], "e4m3", name="weight"), scale

    def grid(self, w: torch.Tensor) -> torch.Tensor:
        codes, scale = self.codes_for(w)
        return codes.float() * scale[:, None]

    def describe(self) -> str:
        return "e4m3 per-channel"


class BitLayerWeightQuantizer(_CachedGrid):
    """Weights on the n-bit odd grid of bit-serial layers (lowbit.numerics.bitlayers), one scale per
    output row from the clipping search."""

    def __init__(self, bits: int):
        super().__init__()
        self.bits = bits

    def codes_for(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(unsigned codes u int32 [N, K], float32 scales [N])."""
        w = w.detach().reshape(len(w), -1)
        scale = clip_search_scale(w, self.bits)
        return odd_grid_codes(w, scale, self.bits), scale

    def grid(self, w: torch.Tensor) -> torch.Tensor:
        u, scale = self.codes_for(w)
        return (odd_grid_values(u, self.bits).float() * scale[:, None]).reshape(w.shape)

    def describe(self) -> str:
        return f"{self.bits} bitlayers, odd grid per row"
