"""fold_relus: a ReLU right after a layer that can apply it itself is folded into the layer."""

import torch
from torch import nn

import lowbit
from lowbit.nn import fold_relus


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Dropout(0.0), nn.Linear(30, 24), nn.ReLU(inplace=True),
                         nn.Sequential(nn.Linear(24, 16), nn.ReLU()), nn.Linear(16, 5)).eval()


def test_quantize_folds_the_relus_right_after_integer_layers_and_nothing_else():
    model = _model()
    q = lowbit.quantize(model, "int8", calib_data=[torch.randn(32, 20)], skip=["5.0"])
    assert q[0].relu and isinstance(q[1], nn.Identity)
    assert isinstance(q[2], nn.Dropout)  # not a ReLU: kept
    assert q[3].relu and isinstance(q[4], nn.Identity)  # an in-place ReLU too
    assert isinstance(q[5][0], nn.Linear) and isinstance(q[5][1], nn.ReLU)  # a float layer keeps its ReLU
    assert not q[6].relu and "relu" in repr(q[0]) and "relu" not in repr(q[6])
    assert fold_relus(q) == []  # nothing left to fold


def test_folded_relus_give_the_same_outputs_and_survive_a_checkpoint(tmp_path):
    q = lowbit.quantize(_model(), "int8", calib_data=[torch.randn(32, 20)])
    x = torch.randn(6, 20)
    unfolded = nn.Sequential(q[0], nn.ReLU(), q[2], q[3], nn.ReLU(), q[5], q[6])  # ReLU(ReLU(y)) = ReLU(y)
    with torch.no_grad():
        expected = unfolded(x)
        assert torch.equal(q(x), expected)
        lowbit.save(q, tmp_path / "q.safetensors")
        loaded = lowbit.load(tmp_path / "q.safetensors", _model())
        assert loaded[0].relu and isinstance(loaded[1], nn.Identity) and loaded[5][0].relu
        assert torch.equal(loaded(x), expected)
