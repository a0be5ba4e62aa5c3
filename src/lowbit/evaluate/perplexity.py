"""Perplexity of a causal language model on fixed token windows."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from ..progress import progress_bar


def token_windows(ids: torch.Tensor, window: int, count: int, *, start: int = 0, stop: int | None = None
                  ) -> list[torch.Tensor]:
    """``count`` windows of ``window`` tokens spread evenly over ids[start:stop] (no overlap)."""
    ids = ids[start:stop]
    if count * window > len(ids):
        raise DataError(f"{count} windows of {window} tokens need {count * window} tokens; the text has {len(ids)}")
    step = len(ids) // count
    return [ids[i * step:i * step + window] for i in range(count)]


def lm_batches(windows: Sequence[torch.Tensor]) -> list[dict]:
    """One keyword batch per window, for calibration (no KV cache: nothing is generated)."""
    return [{"input_ids": w[None], "use_cache": False} for w in windows]


@torch.no_grad()
def perplexity(model: nn.Module, windows: Sequence[torch.Tensor], *, device=None, progress: bool | None = None,
               desc: str = "perplexity") -> tuple[float, int]:
    """exp(mean negative log-likelihood) of every token after the first in each window, each window
    scored on its own; returns (perplexity, number of tokens scored)."""
    device = device or next(model.parameters(), torch.empty(0)).device
    model.eval()
    nll, tokens = 0.0, 0
    for w in progress_bar(windows, desc=desc, unit="window", enable=progress):
        ids = w[None].to(device)
        logits = model(input_ids=ids, use_cache=False).logits.float()
        nll += float(F.cross_entropy(logits[0, :-1], ids[0, 1:], reduction="sum"))
        tokens += ids.shape[1] - 1
    return math.exp(nll / tokens), tokens
