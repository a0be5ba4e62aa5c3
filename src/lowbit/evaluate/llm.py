"""The language-model evaluation: SmolLM2-135M's perplexity on the Wikipedia excerpt for bf16, FP8,
W4A16 and W4A8 under each weight algorithm (design.md 2.3), as table rows."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..pipeline import quantize
from ..schemes import get_scheme
from ..sizes import model_size_bytes
from .perplexity import decode_perplexity, lm_batches, perplexity, token_windows
from .report import Row

SMOLLM2 = "smollm2-135m"
WINDOW = 1024  # tokens per evaluation window
CALIB_WINDOW = 512


@dataclass(frozen=True)
class LMConfig:
    """One row: a scheme ("bf16" is the model cast to bfloat16) and its weight algorithm."""

    scheme: str
    algorithm: str = "rtn"
    gar: bool = False
    group_size: int | None = None  # None: the scheme has no groups; 0: per channel

    @property
    def label(self) -> str:
        return self.algorithm + ("+gar" if self.gar else "")


def default_lm_configs(group_sizes: Sequence[int] = (128, 0)) -> list[LMConfig]:
    """bf16, fp8, and w4a16 (rtn, gptq) and w4a8 (rtn, gptq, dpq, dpq+gar) at each group size."""
    configs = [LMConfig("bf16"), LMConfig("fp8")]
    for g in group_sizes:
        configs += [LMConfig("w4a16", "rtn", group_size=g), LMConfig("w4a16", "gptq", group_size=g),
                    LMConfig("w4a8", "rtn", group_size=g), LMConfig("w4a8", "gptq", group_size=g),
                    LMConfig("w4a8", "dpq", group_size=g), LMConfig("w4a8", "dpq", True, group_size=g)]
    return configs


def wikipedia_windows(tokenizer, eval_windows: int, calib_windows: int) -> tuple[list, list]:
    """Evaluation windows (WINDOW tokens, spread over the first half of the excerpt's tokens) and
    calibration batches (CALIB_WINDOW tokens, spread over the second half): disjoint text."""
    from ..data.wikipedia import wikipedia_articles

    ids = tokenizer("\n\n".join(text for _, text in wikipedia_articles()), return_tensors="pt").input_ids[0]
    half = len(ids) // 2
    return (token_windows(ids, WINDOW, eval_windows, stop=half),
            lm_batches(token_windows(ids, CALIB_WINDOW, calib_windows, start=half)))


def evaluate_lm(name: str, model: nn.Module, calib_batches: Sequence, windows: Sequence[torch.Tensor],
                configs: Sequence[LMConfig], *, device=None, progress: bool | None = None,
                decode_tokens: int = 0) -> list[Row]:
    """Perplexity of the FP32 model and of each configuration on the same windows. With ``decode_tokens``,
    each row also scores the first ``decode_tokens`` tokens of every window one token a step through the KV
    cache, as generation runs (on the GPU: the few-rows kernels), and the same tokens at once:
    ``decode_perplexity`` and ``prefix_perplexity`` in its extra (see :func:`decode_perplexity`)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()

    def decode_check(m: nn.Module, desc: str) -> dict:
        if not decode_tokens:
            return {}
        prefixes = [w[:decode_tokens] for w in windows]
        decoded, _ = decode_perplexity(m, prefixes, decode_tokens, device=device, progress=progress,
                                       desc=f"{desc} decode")
        at_once, _ = perplexity(m, prefixes, device=device, progress=False)
        return {"decode_perplexity": round(decoded, 4), "prefix_perplexity": round(at_once, 4)}

    fp32_decode = decode_check(model, "FP32")  # first: a model or windows it cannot take fail at once
    fp32, tokens = perplexity(model, windows, device=device, progress=progress, desc="FP32")
    rows = [Row(name, "fp32", None, "perplexity", fp32, fp32, tokens, model_size_bytes(model), fp32_decode)]
    for config in configs:
        if config.scheme == "bf16":
            qmodel = copy.deepcopy(model).to(torch.bfloat16)
            calibrator, extra = None, {}
        else:
            options = {} if config.group_size is None else {"group_size": config.group_size}
            qmodel = quantize(model, config.scheme, calib_batches, algorithm=config.algorithm, gar=config.gar,
                              progress=progress, **options)
            handler = get_scheme(config.scheme, **options)
            calibrator = handler.default_calibrator[0] if handler.needs_calibration else None
            extra = {"algorithm": config.label,
                     "group_size": "-" if config.group_size is None else (config.group_size or "channel")}
        desc = f"{config.scheme} {extra.get('algorithm', '')}".strip()
        value, _ = perplexity(qmodel, windows, device=device, progress=progress, desc=desc)
        rows.append(Row(name, config.scheme, calibrator, "perplexity", value, fp32, tokens,
                        model_size_bytes(qmodel), {**extra, **decode_check(qmodel, desc)}))
        del qmodel
    return rows


def evaluate_smollm2(configs: Sequence[LMConfig] | None = None, *, eval_windows: int = 32, calib_windows: int = 32,
                     device=None, progress: bool | None = None, decode_tokens: int = 0) -> list[Row]:
    """SmolLM2-135M (dequantized from its GGUF file to fp32) on ``eval_windows`` x 1024 tokens of the
    Wikipedia excerpt; GPTQ / DPQ and activation ranges calibrated on ``calib_windows`` x 512 others;
    ``decode_tokens`` as in :func:`evaluate_lm`."""
    from ..models.llm import load_smollm2

    model, tokenizer = load_smollm2(progress=progress)
    windows, calib = wikipedia_windows(tokenizer, eval_windows, calib_windows)
    return evaluate_lm(SMOLLM2, model, calib, windows, default_lm_configs() if configs is None else configs,
                       device=device, progress=progress, decode_tokens=decode_tokens)
