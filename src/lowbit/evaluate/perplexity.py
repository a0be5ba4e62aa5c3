"""Perplexity of a causal language model on fixed token windows."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, DataError
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


def _logits(model: nn.Module, ids: torch.Tensor) -> torch.Tensor:
    """[B, T, V] logits: a model whose forward takes ``input_ids`` (Hugging Face causal LMs) is called by
    keyword without a KV cache and returns ``.logits``; any other is called on the ids and returns them."""
    if "input_ids" in inspect.signature(model.forward).parameters:
        return model(input_ids=ids, use_cache=False).logits
    return model(ids)


@torch.no_grad()
def perplexity(model: nn.Module, windows: Sequence[torch.Tensor], *, device=None, progress: bool | None = None,
               desc: str = "perplexity", batch_size: int = 1) -> tuple[float, int]:
    """exp(mean negative log-likelihood) of every token after the first in each window, each window
    scored on its own (``batch_size`` windows of one length at a time); returns (perplexity, number
    of tokens scored)."""
    device = device or next(model.parameters(), torch.empty(0)).device
    model.eval()
    nll, tokens = 0.0, 0
    batches = [windows[i:i + batch_size] for i in range(0, len(windows), batch_size)]
    for batch in progress_bar(batches, desc=desc, unit="batch", enable=progress):
        ids = torch.stack(list(batch)).to(device)
        logits = _logits(model, ids).float()
        nll += float(F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1),
                                     reduction="sum"))
        tokens += ids[:, 1:].numel()
    return math.exp(nll / tokens), tokens


@torch.no_grad()
def decode_perplexity(model: nn.Module, windows: Sequence[torch.Tensor], tokens: int, *, device=None,
                      progress: bool | None = None, desc: str = "decode") -> tuple[float, int]:
    """The perplexity of the first ``tokens`` tokens of each window scored one token a step through the
    model's KV cache, as generation runs (Hugging Face causal LMs: keyword ``input_ids``,
    ``past_key_values`` and ``use_cache``). Each layer then multiplies one row a call (on the GPU: the
    few-rows kernels), while :func:`perplexity` of the same prefixes multiplies all their rows at once. The two
    agree up to the order of float sums, which FP8 activations widen: their rounding can turn a last-bit
    difference into a whole step. Returns (perplexity, number of tokens scored)."""
    if "past_key_values" not in inspect.signature(model.forward).parameters:
        raise ConfigError(f"decoding one token a step needs a causal LM whose forward takes past_key_values "
                          f"(Hugging Face); {type(model).__name__}.forward does not")
    if tokens < 2:
        raise ConfigError(f"decoding scores the tokens after the first: give at least 2 tokens, not {tokens}")
    short = [i for i, w in enumerate(windows) if len(w) < tokens]
    if short:
        raise DataError(f"window {short[0]} has {len(windows[short[0]])} tokens; decoding {tokens} needs that many")
    device = device or next(model.parameters(), torch.empty(0)).device
    model.eval()
    nll = torch.zeros((), dtype=torch.float64, device=device)  # summed on the device: no sync a step
    for window in progress_bar(windows, desc=desc, unit="window", enable=progress):
        ids = window[:tokens].to(device)[None]
        cache = None
        for t in range(tokens - 1):
            out = model(input_ids=ids[:, t:t + 1], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nll += F.cross_entropy(out.logits[:, -1].float(), ids[:, t + 1], reduction="sum").double()
    scored = len(windows) * (tokens - 1)
    return math.exp(float(nll) / scored), scored
