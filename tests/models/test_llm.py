"""Hugging Face causal LMs (models/llm.py): what runs without the model files."""

import importlib

import pytest

from lowbit.models.llm import _transformers_bars


def test_no_progress_hides_transformers_bars_for_the_while():
    transformers = pytest.importorskip("transformers")
    logging = transformers.utils.logging
    gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    bar = gguf_utils.tqdm
    logging.enable_progress_bar()
    with _transformers_bars(transformers, None):
        assert logging.is_progress_bar_enabled() and gguf_utils.tqdm is bar
    with _transformers_bars(transformers, False):
        assert not logging.is_progress_bar_enabled() and gguf_utils.tqdm(range(3)).disable
    assert logging.is_progress_bar_enabled() and gguf_utils.tqdm is bar
