"""A character-level LSTM language model (1 layer, hidden 2048, as PrecisionBatching's LSTM LM), trained
here on the Wikipedia excerpt bundled with gensim. Trained with nn.LSTM (cuDNN on a GPU); returned with
its LSTM unrolled into Linear gate layers (lowbit.nn.lstm.GateLSTM), ready to quantize."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..data.chars import CharVocab
from ..data.wikipedia import wikipedia_text
from ..nn.lstm import unroll_lstms
from ..progress import progress_bar
from .cache import cached_model

NAME = "wiki-char-lstm"
RECIPE = {"arch": "CharLSTM", "embed": 128, "hidden": 2048, "layers": 1, "min_count": 20, "steps": 900,
          "batch_size": 32, "bptt": 100, "lr": 2e-3, "clip": 1.0, "seed": 0,
          "data": "gensim Wikipedia excerpt, first 90% of the articles, characters seen >= 20 times"}


class CharLSTM(nn.Module):
    """Embedding -> LSTM -> Linear decoder; ids [B, T] -> logits [B, T, vocab]."""

    def __init__(self, vocab_size: int, embed: int = 128, hidden: int = 2048, layers: int = 1):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed)
        self.lstm = nn.LSTM(embed, hidden, layers, batch_first=True)
        self.decoder = nn.Linear(hidden, vocab_size)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.embedding(ids))
        return self.decoder(out)


def wiki_vocab() -> CharVocab:
    return CharVocab.from_text(wikipedia_text("train"), RECIPE["min_count"])


def _train(model: CharLSTM, ids: torch.Tensor, device, progress) -> CharLSTM:
    """Adam on random windows of the training text, cosine learning rate, gradient clipping."""
    r = RECIPE
    generator = torch.Generator().manual_seed(r["seed"])
    model.to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=r["lr"])
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / r["steps"])))
    bar = progress_bar(range(r["steps"]), desc="training the char LSTM", unit="step", enable=progress)
    for step in bar:
        starts = torch.randint(0, len(ids) - r["bptt"] - 1, (r["batch_size"],), generator=generator)
        window = torch.stack([ids[s:s + r["bptt"] + 1] for s in starts.tolist()]).to(device)
        logits = model(window[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), window[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), r["clip"])
        opt.step()
        sched.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


def char_lstm(*, retrain: bool = False, device=None, progress: bool | None = None) -> tuple[nn.Module, CharVocab]:
    """(the FP32 model with its LSTM unrolled into GateLSTM, its vocabulary): cached, or trained once
    (about 20 minutes on 2 CPU cores, a minute on a GPU)."""
    vocab = wiki_vocab()
    r = RECIPE
    train_device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))

    def build() -> CharLSTM:
        return CharLSTM(len(vocab), r["embed"], r["hidden"], r["layers"])

    def train(model: CharLSTM, text: str) -> CharLSTM:
        torch.manual_seed(r["seed"])
        return _train(model, vocab.encode(text), train_device, progress)

    model = cached_model(NAME, r, build, lambda: wikipedia_text("train"), train, retrain=retrain, device=device)
    return unroll_lstms(model), vocab
