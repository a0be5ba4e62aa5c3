"""Fashion-MNIST from local IDX files.

Nothing is downloaded: the four IDX files are looked up in a folder, by default
where Debian's ``dataset-fashion-mnist`` package installs them. Each file may be
gzipped (``*.gz``) or uncompressed (the same name without ``.gz``).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .idx import read_idx

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "LOWBIT_FASHION_MNIST_DIR"

CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)

IMAGE_SIZE = 28

# split -> (images file, labels file), named as installed (gzipped).
FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

INSTALL_HINT = (
    "install it with `apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
    f"or set {ENV_VAR} to a folder holding the four IDX files "
    f"({', '.join(name for names in FILES.values() for name in names)}; gzipped or not)"
)


def _folder(root) -> Path:
    if root is None:
        root = os.environ.get(ENV_VAR) or DEFAULT_DIR
    return Path(root).expanduser()


def _locate(folder: Path, names) -> list[Path]:
    """Paths of the files ``names`` in ``folder`` (each .gz or not), or DataError."""
    if not folder.is_dir():
        raise DataError(f"Fashion-MNIST not found: folder {folder} does not exist; {INSTALL_HINT}")
    found, missing = [], []
    for name in names:
        candidates = [folder / name, folder / name.removesuffix(".gz")]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            missing.append(name)
        else:
            found.append(path)
    if missing:
        raise DataError(
            f"Fashion-MNIST not found: folder {folder} lacks {', '.join(missing)} "
            f"(gzipped or not); {INSTALL_HINT}"
        )
    return found


def find_fashion_mnist(root=None) -> Path:
    """The folder holding the four Fashion-MNIST IDX files.

    ``root`` if given, else ``$LOWBIT_FASHION_MNIST_DIR``, else
    :data:`DEFAULT_DIR`. Raises DataError with install instructions if the
    folder or any file is missing.
    """
    folder = _folder(root)
    _locate(folder, [name for names in FILES.values() for name in names])
    return folder


def load_fashion_mnist(split: str, root=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a split: uint8 images ``[N, 28, 28]`` and int64 labels ``[N]``.

    ``split`` is ``"train"`` (60000 images) or ``"test"`` (10000). The folder
    is found as by :func:`find_fashion_mnist`; only the split's two files need
    to be present.
    """
    if split not in FILES:
        raise ConfigError(f"split={split!r} is invalid: expected one of {', '.join(map(repr, FILES))}")
    images_path, labels_path = _locate(_folder(root), FILES[split])
    images = read_idx(images_path)
    labels = read_idx(labels_path)

    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE):
        raise DataError(
            f"{images_path}: expected uint8 images of shape [N, {IMAGE_SIZE}, {IMAGE_SIZE}], "
            f"found {images.dtype} of shape {list(images.shape)}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{labels_path}: expected uint8 labels of shape [N], found {labels.dtype} of shape {list(labels.shape)}"
        )
    if labels.size and int(labels.max()) >= len(CLASSES):
        raise DataError(f"{labels_path}: label {int(labels.max())} out of range (expected 0..{len(CLASSES) - 1})")
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels"
        )
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 images ``[N, 28, 28]`` -> float32 ``[N, 1, 28, 28]`` in [0, 1] (x / 255).

    No mean is subtracted, so a blank background pixel stays exactly 0: the default
    model maps it to 0 in every layer, which keeps activation histograms free of
    spikes (see lowbit.models.small_resnet.ScaleNorm2d)."""
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.ndim != 3:
        if isinstance(images, torch.Tensor):
            what = f"{images.dtype} tensor of shape {list(images.shape)}"
        else:
            what = type(images).__name__
        raise DataError(f"normalize expects a uint8 tensor [N, H, W], got {what}")
    x = images.to(torch.float32).div_(255.0)
    return x.unsqueeze(1)
