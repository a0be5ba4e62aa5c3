import importlib.util

import numpy as np
import pytest
import torch

from lowbit.errors import DataError
from lowbit.models.textgenrnn import TextgenRNN, _from_cudnn, find_sdist


def test_cudnn_weights_convert_to_linear_gates():
    """The inverse of the conversion, applied to known gate matrices, comes back to them."""
    g = np.random.default_rng(0)
    w_in = g.standard_normal((4 * 5, 3)).astype(np.float32)  # [4H, in], gates i, f, g, o
    w_rec = g.standard_normal((4 * 5, 5)).astype(np.float32)
    kernel = np.hstack([blk.reshape((5, 3), order="F").T for blk in np.hsplit(w_in.T, 4)])
    recurrent = np.hstack([blk.T for blk in np.hsplit(w_rec.T, 4)])
    a, b = _from_cudnn(kernel, recurrent)
    assert torch.equal(a, torch.from_numpy(w_in)) and torch.equal(b, torch.from_numpy(w_rec))


def test_model_shapes_and_missing_sdist(tmp_path, monkeypatch):
    logits = TextgenRNN()(torch.randint(0, 465, (2, 40)))
    assert logits.shape == (2, 465)
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    with pytest.raises(DataError, match="pip download --no-deps --no-binary :all: textgenrnn -d ") as err:
        find_sdist()
    assert f"-d {tmp_path}`" in str(err.value)  # the cache folder in use, not ~/.cache/lowbit


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("h5py") is None or importlib.util.find_spec("gensim") is None,
                    reason="needs h5py and gensim")
def test_pretrained_model_predicts_english_text():
    from lowbit.data.wikipedia import wikipedia_text
    from lowbit.evaluate.bitserial import next_char_perplexity
    from lowbit.models.textgenrnn import context_windows, load_textgenrnn

    try:
        model, vocab = load_textgenrnn()
    except DataError:
        pytest.skip("no textgenrnn sdist in the cache folder")
    assert next_char_perplexity(model, *context_windows(wikipedia_text("test"), vocab, 300)) < 7
