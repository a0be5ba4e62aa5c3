import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lowbit.data import fashion_mnist as fm
from lowbit.data.fashion_mnist import (
    CLASSES,
    DEFAULT_DIR,
    ENV_VAR,
    find_fashion_mnist,
    load_fashion_mnist,
    normalize,
)
from lowbit.data.idx import write_idx
from lowbit.errors import ConfigError, DataError

NAMES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
COUNTS = {"train": 7, "test": 3}


def make_fake(folder: Path, gz=True, seed=0):
    """A small fake Fashion-MNIST folder; returns {split: (images, labels)}."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = {}
    for split, (images_name, labels_name) in NAMES.items():
        n = COUNTS[split]
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=n, dtype=np.uint8)
        labels[0] = 9  # the largest valid label
        if not gz:
            images_name, labels_name = images_name[:-3], labels_name[:-3]
        write_idx(folder / images_name, images)
        write_idx(folder / labels_name, labels)
        out[split] = (images, labels)
    return out


@pytest.fixture
def no_env(monkeypatch):
    monkeypatch.delenv(fm.ENV_VAR, raising=False)


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "raw"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_load_fake(tmp_path, no_env, split, gz):
    truth = make_fake(tmp_path / "fm", gz=gz)
    images, labels = load_fashion_mnist(split, root=tmp_path / "fm")
    n = COUNTS[split]
    assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
    assert labels.shape == (n,) and labels.dtype == torch.int64
    np.testing.assert_array_equal(images.numpy(), truth[split][0])
    np.testing.assert_array_equal(labels.numpy(), truth[split][1])


def test_root_accepts_str_and_mixed_compression(tmp_path, no_env):
    truth = make_fake(tmp_path, gz=True)
    # Replace the train labels by an uncompressed copy.
    (tmp_path / NAMES["train"][1]).rename(tmp_path / "old.gz")
    write_idx(tmp_path / NAMES["train"][1][:-3], truth["train"][1])
    assert find_fashion_mnist(str(tmp_path)) == tmp_path
    _, labels = load_fashion_mnist("train", root=str(tmp_path))
    np.testing.assert_array_equal(labels.numpy(), truth["train"][1])


def test_env_var_overrides_default(tmp_path, monkeypatch):
    truth = make_fake(tmp_path / "env")
    monkeypatch.setattr(fm, "DEFAULT_DIR", str(tmp_path / "does-not-exist"))
    monkeypatch.setenv("LOWBIT_FASHION_MNIST_DIR", str(tmp_path / "env"))
    assert find_fashion_mnist() == tmp_path / "env"
    images, _ = load_fashion_mnist("test")
    np.testing.assert_array_equal(images.numpy(), truth["test"][0])


def test_root_argument_overrides_env_var(tmp_path, monkeypatch):
    truth = make_fake(tmp_path / "arg", seed=1)
    make_fake(tmp_path / "env", seed=2)
    monkeypatch.setenv("LOWBIT_FASHION_MNIST_DIR", str(tmp_path / "env"))
    assert find_fashion_mnist(tmp_path / "arg") == tmp_path / "arg"
    images, _ = load_fashion_mnist("test", root=tmp_path / "arg")
    np.testing.assert_array_equal(images.numpy(), truth["test"][0])


def test_default_dir_used_without_env_var(tmp_path, monkeypatch, no_env):
    make_fake(tmp_path / "default")
    monkeypatch.setattr(fm, "DEFAULT_DIR", str(tmp_path / "default"))
    assert find_fashion_mnist() == tmp_path / "default"


def test_default_dir_constant():
    assert fm.DEFAULT_DIR == "/usr/share/datasets/fashion-mnist"
    assert fm.ENV_VAR == "LOWBIT_FASHION_MNIST_DIR"


def test_missing_folder_says_how_to_install(tmp_path, no_env):
    folder = tmp_path / "nowhere"
    for call in (lambda: find_fashion_mnist(folder), lambda: load_fashion_mnist("train", root=folder)):
        with pytest.raises(DataError) as info:
            call()
        message = str(info.value)
        assert str(folder) in message
        assert "apt-get install dataset-fashion-mnist" in message
        assert "LOWBIT_FASHION_MNIST_DIR" in message


def test_missing_file_named(tmp_path, no_env):
    make_fake(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as info:
        find_fashion_mnist(tmp_path)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "lacks t10k-labels-idx1-ubyte.gz (gzipped or not)" in message  # only the missing file
    assert "apt-get install dataset-fashion-mnist" in message
    with pytest.raises(DataError, match="t10k-labels"):
        load_fashion_mnist("test", root=tmp_path)
    # The train split's files are all there.
    images, _ = load_fashion_mnist("train", root=tmp_path)
    assert images.shape == (7, 28, 28)


@pytest.mark.parametrize("split", ["val", "Train", "", None, "training"])
def test_bad_split(tmp_path, split):
    make_fake(tmp_path)
    with pytest.raises(ConfigError) as info:
        load_fashion_mnist(split, root=tmp_path)
    assert "'train'" in str(info.value) and "'test'" in str(info.value)


def _replace(tmp_path, name, array):
    write_idx(tmp_path / name, array)
    return str(tmp_path / name)


@pytest.mark.parametrize(
    "which,array,problem",
    [
        ("images", np.zeros((3, 27, 28), np.uint8), "shape"),
        ("images", np.zeros((3, 784), np.uint8), "shape"),
        ("images", np.zeros((3, 28, 28), np.int16), "int16"),
        ("images", np.zeros((3, 28, 28), np.float32), "float32"),
        ("labels", np.zeros((3, 1), np.uint8), "shape"),
        ("labels", np.zeros(3, np.int32), "int32"),
        ("labels", np.array([0, 10, 3], np.uint8), "label 10"),
        ("labels", np.zeros(4, np.uint8), "4 labels"),
        ("images", np.zeros((2, 28, 28), np.uint8), "2 images"),
    ],
)
def test_invalid_contents_name_the_file(tmp_path, no_env, which, array, problem):
    make_fake(tmp_path)
    name = NAMES["test"][0 if which == "images" else 1]
    path = _replace(tmp_path, name, array)
    with pytest.raises(DataError) as info:
        load_fashion_mnist("test", root=tmp_path)
    message = str(info.value)
    assert path in message and problem in message, message


def test_corrupt_file_is_data_error(tmp_path, no_env):
    make_fake(tmp_path)
    path = tmp_path / NAMES["train"][0]
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match="corrupted gzip") as info:
        load_fashion_mnist("train", root=tmp_path)
    assert str(path) in str(info.value)


def test_normalize():
    images = torch.tensor(np.random.default_rng(3).integers(0, 256, (5, 28, 28), dtype=np.uint8))
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    x = normalize(images)
    assert x.shape == (5, 1, 28, 28) and x.dtype == torch.float32
    expected = images.numpy().astype(np.float64) / 255
    np.testing.assert_allclose(x[:, 0].numpy(), expected, rtol=1e-6, atol=1e-6)
    assert x[0, 0, 0, 0].item() == 0.0 and x[0, 0, 0, 1].item() == 1.0
    assert images.dtype == torch.uint8 and int(images[0, 0, 1]) == 255  # input untouched


@pytest.mark.parametrize(
    "bad", [torch.zeros(2, 28, 28), torch.zeros(2, 1, 28, 28, dtype=torch.uint8), np.zeros((2, 28, 28), np.uint8)]
)
def test_normalize_rejects_wrong_input(bad):
    with pytest.raises(DataError, match="uint8"):
        normalize(bad)


def test_constants():
    assert CLASSES == (
        "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
        "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
    )


REAL = Path(os.environ.get(ENV_VAR) or DEFAULT_DIR)


@pytest.mark.skipif(
    not REAL.is_dir(),
    reason=f"real Fashion-MNIST not installed at {REAL} (apt-get install dataset-fashion-mnist)",
)
def test_real_data():
    for split, n in (("train", 60000), ("test", 10000)):
        images, labels = load_fashion_mnist(split, root=REAL)
        assert images.shape == (n, 28, 28) and images.dtype == torch.uint8
        assert labels.shape == (n,) and labels.dtype == torch.int64
        assert torch.bincount(labels, minlength=10).tolist() == [n // 10] * 10
        if split == "train":
            pixels = images.to(torch.float64) / 255
            assert pixels.mean().item() == pytest.approx(0.2860, abs=5e-4)
            assert pixels.std().item() == pytest.approx(0.3530, abs=5e-4)
            x = normalize(images[:1000])
            assert x.shape == (1000, 1, 28, 28)
