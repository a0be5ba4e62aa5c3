"""textgenrnn's pretrained character model (MIT), ported to PyTorch: read from the package's sdist, no
TensorFlow needed.

The Keras model: 40 characters (left-padded with id 0) -> embedding 100 -> LSTM 128 -> LSTM 128, the
embedding and both LSTMs' outputs concatenated (356 features per step) -> attention-weighted average
over the steps -> softmax over 465 characters (the next one). The LSTM weights were saved by Keras
2.1's CuDNNLSTM: gate order i, f, c, o (PyTorch's i, f, g, o), two biases (they sum), each gate's
recurrent matrix transposed and each gate's input matrix in cuDNN's memory order (Keras converts
them the same way when it loads them into a plain LSTM).

The sdist: ``pip download --no-deps --no-binary :all: textgenrnn`` gives textgenrnn-*.tar.gz;
:func:`load_textgenrnn` takes its path, or finds one in lowbit's cache folder.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import torch
from torch import nn

from ..errors import DataError
from ..fileio import cache_dir
from ..nn.lstm import GateLSTM

CONTEXT = 40
WEIGHTS = "textgenrnn/textgenrnn_weights.hdf5"
VOCAB = "textgenrnn/textgenrnn_vocab.json"


def _hint() -> str:
    """How to get the sdist into the cache folder this process uses (LOWBIT_CACHE_DIR and the like)."""
    return (f"get the sdist with `pip download --no-deps --no-binary :all: textgenrnn -d {cache_dir()}` "
            "(it is read, not installed: the package needs TensorFlow)")


class AttentionAverage(nn.Module):
    """softmax over steps of x @ w, then the weighted average of x: [B, T, F] -> [B, F]."""

    def __init__(self, features: int):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weights = torch.softmax(x @ self.weight, dim=1)
        return (x * weights.unsqueeze(-1)).sum(1)


class TextgenRNN(nn.Module):
    """ids [B, 40] (0 = padding) -> logits [B, 465] of the next character."""

    def __init__(self, num_classes: int = 465, embed: int = 100, hidden: int = 128, layers: int = 2):
        super().__init__()
        self.embedding = nn.Embedding(num_classes, embed)
        self.rnns = nn.ModuleList(GateLSTM(embed if i == 0 else hidden, hidden, batch_first=True)
                                  for i in range(layers))
        self.attention = AttentionAverage(embed + layers * hidden)
        self.output = nn.Linear(embed + layers * hidden, num_classes)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        features = [x]
        for rnn in self.rnns:
            x, _ = rnn(x)
            features.append(x)
        return self.output(self.attention(torch.cat(features, dim=-1)))


def find_sdist(path=None) -> Path:
    if path is not None:
        path = Path(path).expanduser()
        if not path.is_file():
            raise DataError(f"textgenrnn sdist {path} does not exist; {_hint()}")
        return path
    found = sorted(cache_dir().glob("textgenrnn-*.tar.gz"))
    if not found:
        raise DataError(f"no textgenrnn sdist in {cache_dir()}; {_hint()}")
    return found[-1]


def _member(tar: tarfile.TarFile, suffix: str, sdist: Path) -> bytes:
    names = [n for n in tar.getnames() if n.endswith(suffix)]
    if not names:
        raise DataError(f"{sdist} has no {suffix}: is it textgenrnn's sdist?")
    return tar.extractfile(names[0]).read()


def _tensor(h5, name: str) -> torch.Tensor:
    return torch.from_numpy(h5[name][()])


def _from_cudnn(kernel, recurrent) -> tuple[torch.Tensor, torch.Tensor]:
    """CuDNNLSTM's (kernel [in, 4H], recurrent [H, 4H]) -> nn.Linear weights [4H, in], [4H, H]: per gate,
    the input block is cuDNN's [H, in] matrix read back in column-major order, the recurrent one its
    transpose."""
    import numpy as np

    gates_in = [k.T.reshape(k.shape, order="F") for k in np.hsplit(kernel, 4)]
    gates_rec = [k.T for k in np.hsplit(recurrent, 4)]
    return (torch.from_numpy(np.ascontiguousarray(np.hstack(gates_in).T)),
            torch.from_numpy(np.ascontiguousarray(np.hstack(gates_rec).T)))


def load_textgenrnn(sdist=None) -> tuple[TextgenRNN, dict[str, int]]:
    """(the FP32 model, its vocabulary: character -> id, 1-based) from the sdist."""
    sdist = find_sdist(sdist)
    try:
        import h5py
    except ImportError as exc:
        raise DataError("textgenrnn's weights are HDF5: pip install h5py") from exc
    with tarfile.open(sdist) as tar:
        weights = _member(tar, WEIGHTS, sdist)
        vocab = json.loads(_member(tar, VOCAB, sdist))
    model = TextgenRNN(len(vocab) + 1)
    with h5py.File(io.BytesIO(weights), "r") as h5, torch.no_grad():
        model.embedding.weight.copy_(_tensor(h5, "embedding/embedding/embeddings:0"))
        for i, rnn in enumerate(model.rnns):
            prefix = f"rnn_{i + 1}/rnn_{i + 1}/"
            layer = rnn.layers[0]
            hidden = layer.hidden_gates.weight.shape[1]
            w_in, w_rec = _from_cudnn(h5[prefix + "kernel:0"][()], h5[prefix + "recurrent_kernel:0"][()])
            layer.input_gates.weight.copy_(w_in)
            layer.hidden_gates.weight.copy_(w_rec)
            bias = _tensor(h5, prefix + "bias:0")
            layer.input_gates.bias.copy_(bias[:4 * hidden] + bias[4 * hidden:])
        model.attention.weight.copy_(_tensor(h5, "attention/attention/attention_W:0")[:, 0])
        model.output.weight.copy_(_tensor(h5, "output/output/kernel:0").t())
        model.output.bias.copy_(_tensor(h5, "output/output/bias:0"))
    return model.eval(), vocab


def context_windows(text: str, vocab: dict[str, int], count: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [count, 40], next-character ids [count]) for ``count`` positions spread over ``text``, each with
    the 40 characters before it (unknown characters are id 0, as textgenrnn encodes them)."""
    ids = torch.tensor([vocab.get(c, 0) for c in text], dtype=torch.int64)
    positions = torch.linspace(start + CONTEXT, len(ids) - 1, count).long()
    contexts = torch.stack([ids[p - CONTEXT:p] for p in positions.tolist()])
    return contexts, ids[positions]
