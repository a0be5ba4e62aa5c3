import torch

from lowbit.models import ResNet, resnet50


def test_resnet50_v1_5_layout():
    model = resnet50()
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's resnet50
    block = model.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2)  # v1.5: the stride sits on the 3x3
    assert block.downsample[0].stride == (2, 2)
    names = set(model.state_dict())
    assert {"conv1.weight", "bn1.running_var", "layer4.2.bn3.weight", "layer1.0.downsample.1.running_mean",
            "fc.bias"} <= names  # torchvision's parameter names, so its state dicts load


def test_small_resnet_forward():
    model = ResNet(depths=(1, 1), num_classes=5, width=8).eval()
    assert model(torch.randn(2, 3, 40, 40)).shape == (2, 5)
