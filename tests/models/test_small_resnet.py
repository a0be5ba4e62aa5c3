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


def test_scale_norm_keeps_zero_and_normalises():
    from lowbit.models.small_resnet import ScaleNorm2d

    norm = ScaleNorm2d(3, momentum=1.0)
    x = torch.randn(8, 3, 5, 5) * torch.tensor([1.0, 4.0, 0.5]).view(1, 3, 1, 1)
    y = norm(x)
    assert torch.allclose(y.pow(2).mean((0, 2, 3)), torch.ones(3), atol=1e-3)
    norm.eval()
    assert torch.allclose(norm(x), y, atol=1e-6)  # running statistic = the batch's with momentum 1
    assert torch.equal(norm(torch.zeros(1, 3, 2, 2)), torch.zeros(1, 3, 2, 2))


def test_scale_norm_model_maps_a_blank_image_to_zero_features():
    model = SmallResNet(10, 1, (8, 8, 8), norm="scale").eval()
    features = {}
    model.layer3.register_forward_hook(lambda m, i, o: features.setdefault("out", o))
    model(torch.zeros(1, 1, 28, 28))
    assert torch.equal(features["out"], torch.zeros_like(features["out"]))
