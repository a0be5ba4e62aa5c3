"""Accuracy metrics."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..errors import DataError
from ..pipeline import _to_device
from ..progress import progress_bar


@torch.no_grad()
def top1_accuracy(model: nn.Module, batches: Iterable, *, device=None, progress: bool | None = None,
                  desc: str = "evaluating") -> tuple[float, int]:
    """(fraction of samples whose arg-max logit equals the label, number of samples)
    over an iterable of (inputs, labels) batches."""
    device = torch.device(device or "cpu")
    model.eval()
    correct = total = 0
    total_batches = len(batches) if hasattr(batches, "__len__") else None
    for x, y in progress_bar(batches, desc=desc, unit="batch", enable=progress, total=total_batches):
        logits = model(_to_device(x, device))
        correct += int((logits.argmax(-1).cpu() == y.cpu()).sum())
        total += len(y)
    if total == 0:
        raise DataError("the evaluation data yielded no samples")
    return correct / total, total
