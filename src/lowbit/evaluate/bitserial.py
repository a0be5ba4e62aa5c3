"""Bit-serial models: accuracy (or perplexity) against the number of bitlayers used, and the automatic
choice of the fewest bitlayers (globally, then per layer) that keep a validation metric within a budget.

The models: the PrecisionBatching paper's MNIST MLP 784-4096-4096-10 (lowbit.models.mlp) and 1-layer
LSTM language model with 2048 hidden units (lowbit.models.char_lm, characters of Wikipedia), and the
pretrained textgenrnn char model (lowbit.models.textgenrnn). In the LSTMs the gate matmuls are
bit-serial, the output layer stays in float, as in the paper. The choice is made on a validation
split; the test split only reports it.
"""

from __future__ import annotations

import math

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..nn.bitserial import bitserial_layers, set_bitlayers
from ..pipeline import quantize
from ..progress import progress_bar
from ..sizes import model_size_bytes
from .metrics import top1_accuracy
from .report import Row
from .runner import tensor_batches


@dataclass
class BitlayerChoice:
    """``global_k``: the fewest bitlayers, the same in every layer, within budget (None when even all
    the stored ones are not); ``per_layer``: each layer's count after lowering layers one bitlayer at
    a time from there (largest layers first) while the budget holds; the validation values of both."""

    global_k: int | None
    global_value: float
    per_layer: dict[str, int]
    per_layer_value: float
    evaluations: int

    def describe(self) -> str:
        layers = ", ".join(f"{name}={k}" for name, k in self.per_layer.items())
        chosen = "none within budget" if self.global_k is None else f"{self.global_k}"
        return f"global: {chosen}; per layer: {layers}"


def choose_bitlayers(qmodel: nn.Module, evaluate: Callable[[nn.Module], float], acceptable: Callable[[float], bool],
                     *, progress: bool | None = None) -> BitlayerChoice:
    """Pick bitlayer counts for the bit-serial layers of ``qmodel`` (left set to the per-layer choice).

    ``evaluate(qmodel)`` gives the validation metric, ``acceptable(value)`` whether it is within budget.
    Global: k = 1, 2, ... until acceptable. Per layer: from the global choice, in rounds over the layers
    (largest first), lower each by one bitlayer when the result stays acceptable, until a round lowers
    nothing."""
    layers = bitserial_layers(qmodel)
    stored = max(m.stored_bitlayers for m in layers.values())
    evaluations = 0

    def value_at(setting) -> float:
        nonlocal evaluations
        set_bitlayers(qmodel, setting)
        evaluations += 1
        return evaluate(qmodel)

    global_k, global_value = None, float("nan")
    for k in progress_bar(range(1, stored + 1), desc="choosing bitlayers (global)", unit="k", enable=progress):
        value = value_at({name: min(k, m.stored_bitlayers) for name, m in layers.items()})
        if acceptable(value):
            global_k, global_value = k, value
            break
    if global_k is None:  # nothing fits: keep everything, and report it
        current = {name: m.stored_bitlayers for name, m in layers.items()}
        return BitlayerChoice(None, float("nan"), current, value_at(current), evaluations)
    current = {name: m.active for name, m in layers.items()}
    best_value = global_value
    by_size = sorted(layers, key=lambda name: -layers[name].bitlayers[0].numel())
    lowered = True
    while lowered:  # rounds over the layers until one lowers nothing: at most layers x bitlayers evaluations
        lowered = False
        for name in by_size:
            if current[name] == 1:
                continue
            trial = {**current, name: current[name] - 1}
            value = value_at(trial)
            if acceptable(value):
                current, best_value, lowered = trial, value, True
    set_bitlayers(qmodel, current)
    return BitlayerChoice(global_k, global_value, current, best_value, evaluations)


def bitlayer_rows(name: str, qmodel: nn.Module, evaluate: Callable[[nn.Module], float | tuple[float, dict]],
                  metric: str, fp32: float, samples: int, extra: dict, choice: BitlayerChoice | None = None,
                  progress: bool | None = None) -> list[Row]:
    """One row per global bitlayer count (stored .. 1), then the automatic choices, each on the test data.
    ``evaluate`` gives the metric, or (metric, more columns for the row)."""
    layers = bitserial_layers(qmodel)
    stored = max(m.stored_bitlayers for m in layers.values())
    weight_bits = sum(m.bitlayers[0].numel() * 32 for m in layers.values())  # bits per bitlayer, padded
    rows = []

    def row(setting, label: str) -> Row:
        set_bitlayers(qmodel, setting)
        used = sum(m.active * m.bitlayers[0].numel() * 32 for m in layers.values()) / weight_bits
        value = evaluate(qmodel)
        value, more = value if isinstance(value, tuple) else (value, {})
        return Row(name, "bitserial", "max", metric, value, fp32, samples, model_size_bytes(qmodel),
                   {**extra, "bitlayers": label, "mean_bitlayers": round(used, 3), **more})

    for k in progress_bar(range(stored, 0, -1), desc=f"{name}: bitlayers", unit="k", enable=progress):
        rows.append(row(k, str(k)))
    if choice is not None:
        if choice.global_k is not None:
            rows.append(row(choice.global_k, f"auto {choice.global_k}"))
        counts = list(choice.per_layer.values())
        label = ("/".join(map(str, counts)) if len(counts) <= 6
                 else f"per layer {min(counts)}-{max(counts)}")  # BitlayerChoice.describe lists them all
        rows.append(row(choice.per_layer, f"auto {label}"))
    return rows


def fp32_row(name: str, metric: str, value: float, samples: int, model: nn.Module) -> Row:
    """The FP32 reference row of a bit-serial table."""
    return Row(name, "fp32", None, metric, value, value, samples, model_size_bytes(model),
               {"weight_bits": 32, "act_bits": 32, "bitlayers": "-", "mean_bitlayers": 32})


def _accuracy_budget(reference: float, points: float) -> Callable[[float], bool]:
    return lambda value: (reference - value) * 100 <= points + 1e-9


def _perplexity_budget(reference: float, percent: float) -> Callable[[float], bool]:
    return lambda value: (value / reference - 1) * 100 <= percent + 1e-9


def evaluate_mnist_mlp(*, weight_bits: int = 8, act_bits: int = 8, budget: float = 1.0, device=None,
                       progress: bool | None = None) -> tuple[list[Row], BitlayerChoice]:
    """The MNIST MLP: FP32, then bit-serial with every bitlayer count and the automatic choice (within
    ``budget`` accuracy points of FP32 on the validation split), top-1 on the 1,000 test digits."""
    from ..data.mnist import load_mnist
    from ..models.mlp import mnist_mlp

    model = mnist_mlp(device=device, progress=progress)
    train_x, _ = load_mnist("train")
    val, test = (tensor_batches(*load_mnist(split), 500) for split in ("val", "test"))

    def accuracy(m: nn.Module, batches) -> float:
        return top1_accuracy(m, batches, device=device, progress=False)[0]

    fp32_test, fp32_val = accuracy(model, test), accuracy(model, val)
    samples = sum(len(y) for _, y in test)
    calib = tensor_batches(train_x[:1024], None, 256)
    qmodel = quantize(model, "bitserial", calib_data=calib, weight_bits=weight_bits, act_bits=act_bits,
                      progress=progress)
    choice = choose_bitlayers(qmodel, lambda m: accuracy(m, val), _accuracy_budget(fp32_val, budget),
                              progress=progress)
    rows = [fp32_row("mnist-mlp", "top1", fp32_test, samples, model)]
    rows += bitlayer_rows("mnist-mlp", qmodel, lambda m: accuracy(m, test), "top1", fp32_test, samples,
                          {"weight_bits": weight_bits, "act_bits": act_bits}, choice, progress)
    return rows, choice


def char_windows(text: str, vocab, window: int, count: int) -> list[torch.Tensor]:
    from .perplexity import token_windows

    return token_windows(vocab.encode(text), window, count)


def evaluate_char_lstm(*, weight_bits: int = 8, act_bits: int = 8, budget: float = 1.0, windows: int = 32,
                       window: int = 256, device=None, progress: bool | None = None) -> tuple[list[Row], BitlayerChoice]:
    """The char LSTM LM: FP32, then bit-serial with every bitlayer count and the automatic choice (within
    ``budget`` percent of FP32's validation perplexity); perplexity per character on the test split."""
    from ..data.wikipedia import wikipedia_text
    from ..models.char_lm import char_lstm
    from .perplexity import perplexity

    model, vocab = char_lstm(device=device, progress=progress)
    test = char_windows(wikipedia_text("test"), vocab, window, windows)
    val = char_windows(wikipedia_text("val"), vocab, window, max(4, windows // 2))
    calib = [w[None] for w in char_windows(wikipedia_text("train"), vocab, window, 8)]

    def ppl(m: nn.Module, data: Sequence[torch.Tensor]) -> float:
        return perplexity(m, data, batch_size=len(data), progress=False)[0]

    fp32_test, fp32_val = ppl(model, test), ppl(model, val)
    # As the paper: the LSTM's gate matmuls are bit-serial; the decoder stays in float.
    qmodel = quantize(model, "bitserial", calib_data=calib, skip=["decoder"], weight_bits=weight_bits,
                      act_bits=act_bits, progress=progress)
    choice = choose_bitlayers(qmodel, lambda m: ppl(m, val), _perplexity_budget(fp32_val, budget), progress=progress)
    chars = windows * (window - 1)
    rows = [fp32_row("char-lstm", "perplexity", fp32_test, chars, model)]
    rows += bitlayer_rows("char-lstm", qmodel, lambda m: ppl(m, test), "perplexity", fp32_test, chars,
                          {"weight_bits": weight_bits, "act_bits": act_bits}, choice, progress)
    return rows, choice


@torch.no_grad()
def next_char_perplexity(model: nn.Module, contexts: torch.Tensor, targets: torch.Tensor,
                         batch_size: int = 500) -> float:
    """exp(mean NLL) of the known target characters (id > 0) given their contexts."""
    model.eval()
    nll, count = 0.0, 0
    for i in range(0, len(targets), batch_size):
        logits = model(contexts[i:i + batch_size]).float()
        y = targets[i:i + batch_size]
        known = y > 0
        nll -= float(torch.log_softmax(logits, -1)[torch.arange(len(y)), y][known].sum())
        count += int(known.sum())
    return math.exp(nll / count)


def evaluate_textgenrnn(*, weight_bits: int = 8, act_bits: int = 8, budget: float = 1.0, positions: int = 2000,
                        device=None, progress: bool | None = None, sdist=None) -> tuple[list[Row], BitlayerChoice]:
    """textgenrnn's pretrained char model: next-character perplexity on Wikipedia test text (40-character
    contexts), FP32 and bit-serial with every bitlayer count and the automatic choice."""
    from ..data.wikipedia import wikipedia_text
    from ..models.textgenrnn import context_windows, load_textgenrnn

    model, vocab = load_textgenrnn(sdist)
    test = context_windows(wikipedia_text("test"), vocab, positions)
    val = context_windows(wikipedia_text("val"), vocab, positions)
    calib = list(context_windows(wikipedia_text("train"), vocab, 1024)[0].split(256))
    fp32_test, fp32_val = next_char_perplexity(model, *test), next_char_perplexity(model, *val)
    qmodel = quantize(model, "bitserial", calib_data=calib, skip=["output"], weight_bits=weight_bits,
                      act_bits=act_bits, progress=progress)
    choice = choose_bitlayers(qmodel, lambda m: next_char_perplexity(m, *val), _perplexity_budget(fp32_val, budget),
                              progress=progress)
    samples = int((test[1] > 0).sum())
    rows = [fp32_row("textgenrnn", "perplexity", fp32_test, samples, model)]
    rows += bitlayer_rows("textgenrnn", qmodel, lambda m: next_char_perplexity(m, *test), "perplexity", fp32_test,
                          samples, {"weight_bits": weight_bits, "act_bits": act_bits}, choice, progress)
    return rows, choice


@torch.no_grad()
def _embeddings(model: nn.Module, batches: Sequence[dict]) -> torch.Tensor:
    model.eval()
    return torch.cat([model(**batch).float() for batch in batches])


def _pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / (a.norm() * b.norm()))


def evaluate_minilm(*, weight_bits: int = 8, act_bits: int = 16, budget: float = 1.0, device=None,
                    progress: bool | None = None) -> tuple[list[Row], BitlayerChoice]:
    """all-MiniLM-L6-v2 with every Linear layer of the transformer bit-serial. Test metric: the Pearson
    correlation between the embeddings' cosine similarities and human ratings of the 1,225 pairs of the
    Lee documents; each row also gives the mean cosine of its document embeddings to FP32's. The
    automatic choice keeps the mean cosine to FP32's embeddings of 100 review sentences (validation)
    at least 1 - budget / 100."""
    from ..data.wikipedia import lee_similarity, polarity_sentences
    from ..models.minilm import load_minilm, sentence_batches

    model, tokenizer = load_minilm()
    docs, ratings = lee_similarity()
    sentences = polarity_sentences()
    doc_batches = sentence_batches(tokenizer, docs)
    val_batches = sentence_batches(tokenizer, sentences[:100])
    calib = sentence_batches(tokenizer, sentences[100:])
    upper = torch.triu(torch.ones(50, 50, dtype=torch.bool), diagonal=1)
    human = torch.tensor(ratings)[upper]
    fp32_docs, fp32_val = _embeddings(model, doc_batches), _embeddings(model, val_batches)

    def lee(m: nn.Module) -> tuple[float, float]:
        emb = _embeddings(m, doc_batches)
        return _pearson((emb @ emb.T)[upper], human), float((emb * fp32_docs).sum(-1).mean())

    def agreement(m: nn.Module) -> float:
        return float((_embeddings(m, val_batches) * fp32_val).sum(-1).mean())

    fp32_lee, _ = lee(model)
    # The pooler's output is not part of the sentence embedding: it stays in float.
    qmodel = quantize(model, "bitserial", calib_data=calib, skip=["*pooler*"], weight_bits=weight_bits,
                      act_bits=act_bits, progress=progress)
    choice = choose_bitlayers(qmodel, agreement, lambda v: v >= 1 - budget / 100 - 1e-9, progress=progress)
    rows = [fp32_row("minilm", "lee_pearson", fp32_lee, int(upper.sum()), model)]
    rows[0].extra["cosine_vs_fp32"] = 1.0
    def lee_row(m: nn.Module) -> tuple[float, dict]:
        pearson, cosine = lee(m)
        return pearson, {"cosine_vs_fp32": round(cosine, 4)}

    rows += bitlayer_rows("minilm", qmodel, lee_row, "lee_pearson", fp32_lee, int(upper.sum()),
                          {"weight_bits": weight_bits, "act_bits": act_bits}, choice, progress)
    return rows, choice
