import torch

from lowbit.models import SmallResNet
from lowbit.models.default import RECIPE, cache_path


def test_shapes_and_strides():
    model = SmallResNet(10, 1, (8, 16, 32), (1, 2, 1)).eval()
    out = model(torch.randn(3, 1, 28, 28))
    assert out.shape == (3, 10)
    assert model.layer2[0].conv1.stride == (2, 2) and model.layer2[1].conv1.stride == (1, 1)
    assert model.layer2[0].downsample is not None and model.layer1[0].downsample is None


def test_cache_name_follows_recipe(monkeypatch, tmp_path):
    monkeypatch.setenv("LOWBIT_CACHE_DIR", str(tmp_path))
    first = cache_path()
    assert first.parent == tmp_path
    monkeypatch.setitem(RECIPE, "epochs", RECIPE["epochs"] + 1)
    assert cache_path() != first
