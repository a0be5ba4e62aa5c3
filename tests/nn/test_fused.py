"""fuse_resnet: int8-to-int8 ResNets with BN folded (CPU reference; GPU kernels where CUDA is present)."""

import pytest
import torch
from torch import nn

import lowbit
from lowbit.errors import ConfigError, InputError
from lowbit.models import ResNet, SmallResNet
from lowbit.nn import Int8Conv2d, Int8ResNet, IntegerLayer
from lowbit.nn.registry import CHECK_EVERY


def _randomise_norms(model, seed=0):
    """Non-trivial BN statistics, some negative scales (their sign goes into the codes)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=g) * 0.2)
            m.running_var.copy_(torch.rand(c, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(c, generator=g).abs() * 0.6 + 0.2)
            m.weight.data[::5] *= -1
            m.bias.data.copy_(torch.randn(c, generator=g) * 0.1)
    return model.eval()


def _tiny_resnet():
    torch.manual_seed(0)
    return _randomise_norms(ResNet(depths=(1, 2), num_classes=7, width=8))


def _calib(shape=(4, 3, 32, 32), n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(shape, generator=g) for _ in range(n)]


def _snr_db(ref, out):
    return float(20 * torch.log10(ref.norm() / (ref - out).norm()))


def test_fused_resnet_matches_the_per_layer_model():
    model = _tiny_resnet()
    qmodel = lowbit.quantize(model, "int8", _calib(), "max", progress=False)
    fused = lowbit.fuse_resnet(qmodel)
    assert isinstance(fused, Int8ResNet) and len(fused.blocks) == 3
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        ref, per_layer, out = model(x), qmodel(x), fused(x)
    # the fused model also quantizes the identity shortcuts, so it is near, not equal to, the per-layer one
    assert _snr_db(per_layer, out) > 25 and _snr_db(ref, out) > 20
    assert isinstance(qmodel.layer1[0].conv1, IntegerLayer)  # qmodel untouched


def test_blocks_pass_int8_codes_and_the_last_returns_float():
    fused = lowbit.fuse_resnet(lowbit.quantize(_tiny_resnet(), "int8", _calib(), "max", progress=False))
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append((i[0].dtype, o.dtype))) for b in fused.blocks]
    with torch.no_grad():
        fused(torch.randn(2, 3, 32, 32))
    for h in hooks:
        h.remove()
    assert seen == [(torch.int8, torch.int8), (torch.int8, torch.int8), (torch.int8, torch.float32)]


def test_folding_into_scales_and_bias_matches_conv_then_norm():
    torch.manual_seed(3)
    conv, norm = nn.Conv2d(5, 9, 3, padding=1), _randomise_norms(nn.Sequential(nn.BatchNorm2d(9)))[0]
    q = lowbit.quantize(nn.Sequential(conv), "int8", [torch.randn(4, 5, 8, 8)], "max", progress=False)[0]
    fused = Int8Conv2d.from_integer(q, norm, "conv", relu=False, output_scale=None)
    assert (norm.weight < 0).any()
    x = torch.randn(2, 5, 8, 8)
    codes = torch.clamp(torch.round(x / q.input_scale), -127, 127).to(torch.int8)
    with torch.no_grad():
        ref = norm(q(codes.float() * q.input_scale))
    assert torch.allclose(fused(codes), ref, rtol=1e-5, atol=1e-5)


def test_int4_resnet_fuses_with_packed_weights_and_u4_codes():
    model = _tiny_resnet()
    qmodel = lowbit.quantize(model, "int4", _calib(), "max", progress=False)
    fused = lowbit.fuse_resnet(qmodel)
    assert not fused.stem.packed and fused.stem.qweight.dtype == torch.int8  # first conv stays INT8
    conv = fused.blocks[0].convs[0]
    assert conv.packed and conv.qweight.dtype == torch.uint8
    assert conv.qweight.shape[-1] * 2 == qmodel.layer1[0].conv1.geometry.in_channels
    assert fused.stem.out_range == (0, 15)  # the blocks read u4 codes (after a ReLU)
    seen = []
    hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o)) for b in fused.blocks[:-1]]
    x = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        per_layer, out = qmodel(x), fused(x)
    for h in hooks:
        h.remove()
    assert all(int(o.min()) >= 0 and int(o.max()) <= 15 for o in seen)
    assert _snr_db(per_layer, out) > 15


def test_small_resnet_with_scale_norm_fuses():
    torch.manual_seed(4)
    model = SmallResNet(10, 1, (8, 16, 16), (1, 1, 1), norm="scale").eval()
    qmodel = lowbit.quantize(model, "int8", [torch.rand(8, 1, 28, 28)], "max", progress=False)
    fused = lowbit.fuse_resnet(qmodel)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert _snr_db(qmodel(x), fused(x)) > 25
    assert fused.maxpool is None


def test_refuses_what_it_cannot_fuse():
    model = _tiny_resnet()
    with pytest.raises(ConfigError, match="not an integer layer"):
        lowbit.fuse_resnet(lowbit.quantize(model, "int8", _calib(), "max", skip="layer2.1.conv2", progress=False))
    with pytest.raises(ConfigError, match="symmetric codes that fit int8"):
        lowbit.fuse_resnet(lowbit.quantize(model, "int8", _calib(), "max", act_symmetric=False, progress=False))
    with pytest.raises(ConfigError, match="does not have a ResNet's layout"):
        lowbit.fuse_resnet(nn.Sequential(nn.Conv2d(3, 3, 1)))
    with pytest.raises(ConfigError, match="fit int8"):  # u8 codes do not fit int8 tensors
        lowbit.fuse_resnet(lowbit.quantize(model, "int8", _calib(), "max", act_unsigned="auto", progress=False))
    other = _tiny_resnet()
    other.layer1[0].bn1 = nn.LayerNorm(8)
    with pytest.raises(ConfigError, match="layer1.0.conv1: cannot fold a LayerNorm"):
        lowbit.fuse_resnet(lowbit.quantize(other, "int8", _calib(), "max", progress=False))


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)])
def test_fused_model_checks_its_input(device):
    """The images are the stem's input: a wrong shape or NaN pixels (which have no code: the reference
    made them 0, the GPU quantizer qmin) are named errors, on the GPU within CHECK_EVERY calls."""
    if device == "cuda" and not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    fused = lowbit.fuse_resnet(lowbit.quantize(_tiny_resnet(), "int8", _calib(), "max", progress=False).to(device))
    with pytest.raises(InputError, match="'conv1'.*expects 3 input channels"):
        fused(torch.randn(2, 1, 32, 32, device=device))
    with pytest.raises(InputError, match="'conv1'.*expects inputs of shape"):
        fused(torch.randn(3, 32, 32, device=device))
    x = torch.randn(2, 3, 32, 32, device=device)
    x[1, 2, 5, 7] = float("nan")
    calls = CHECK_EVERY if device == "cuda" else 1  # one NaN a call, counted until read back
    with torch.no_grad(), pytest.raises(InputError, match=f"layer 'conv1': {calls} NaN input value"):
        for _ in range(calls):
            fused(x)
    with torch.no_grad():
        assert torch.isfinite(fused(torch.randn(2, 3, 32, 32, device=device))).all()  # the count was reset


@pytest.mark.gpu
@pytest.mark.parametrize("scheme", ["int8", "int4"])
def test_gpu_kernels_give_the_reference_codes(scheme):
    """Every block's codes on the GPU equal the CPU reference's; the logits differ only by the
    float order of the average pool (which may move an FC input code by one step)."""
    qmodel = lowbit.quantize(_tiny_resnet(), scheme, _calib((4, 3, 40, 40)), "max", progress=False)
    cpu = lowbit.fuse_resnet(qmodel)
    gpu = lowbit.fuse_resnet(qmodel.cuda())
    x = torch.randn(5, 3, 40, 40)
    outs = {}
    for name, model, inp in (("cpu", cpu, x), ("gpu", gpu, x.cuda())):
        seen = []
        hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.cpu())) for b in model.blocks]
        with torch.no_grad():
            outs[name] = (model(inp).cpu(), seen)
        for h in hooks:
            h.remove()
    for ref, got in zip(outs["cpu"][1], outs["gpu"][1]):
        assert torch.equal(ref, got)
    assert _snr_db(outs["cpu"][0], outs["gpu"][0]) > 40


@pytest.mark.gpu
def test_cuda_graph_replays_the_fused_model():
    qmodel = lowbit.quantize(_tiny_resnet(), "int8", _calib(), "max", progress=False).cuda()
    fused = lowbit.fuse_resnet(qmodel)
    x = torch.randn(3, 3, 32, 32, device="cuda")
    with torch.no_grad():
        eager = fused(x)
    graph = lowbit.CudaGraphModule(fused, torch.zeros_like(x))
    assert torch.equal(graph(x), eager)
    with pytest.raises(ValueError, match="captured for"):
        graph(torch.zeros(4, 3, 32, 32, device="cuda"))
