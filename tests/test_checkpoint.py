"""save / load: identical outputs, no pickle, clear errors for bad files."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lowbit
from lowbit.checkpoint import read_checkpoint
from lowbit.errors import CheckpointError, LowbitError
from lowbit.models import SmallResNet


def _model(seed=0, widths=(8, 16, 16)):
    torch.manual_seed(seed)
    return SmallResNet(10, 1, widths).eval()


def _quantized(calibrator="max", **options):
    calib = [torch.randn(4, 1, 28, 28) for _ in range(2)]
    return lowbit.quantize(_model(), "int8", calib_data=calib, calibrator=calibrator, **options)


@pytest.mark.parametrize("options", [{}, {"act_symmetric": False}, {"act_unsigned": "auto", "weight_bits": 6}])
def test_round_trip_gives_identical_outputs(tmp_path, options):
    q = _quantized(**options)
    path = lowbit.save(q, tmp_path / "m.safetensors")
    loaded = lowbit.load(path, _model(seed=1))  # a fresh instance with other weights
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), q(x))
    assert not list(tmp_path.glob(".*tmp"))


def test_header_is_json_with_formats_and_scales(tmp_path):
    q = _quantized("entropy")
    meta, tensors = read_checkpoint(lowbit.save(q, tmp_path / "m.safetensors"))
    assert meta["lowbit_version"] == lowbit.__version__ and meta["schemes"] == "int8"
    layer = meta["layers"]["layer1.0.conv1"]
    assert layer["weight"]["fmt"] == {"bits": 8, "signed": True, "narrow": True}
    assert layer["input_scale"] == pytest.approx(float(q.layer1[0].conv1.input_scale))
    assert layer["calibrator"] == "entropy"
    assert tensors["layer1.0.conv1.qweight"].dtype == torch.int8


def test_no_pickle_anywhere():
    root = os.path.join(os.path.dirname(lowbit.__file__))
    for dirpath, _, files in os.walk(root):
        for name in files:
            if name.endswith(".py"):
                text = open(os.path.join(dirpath, name)).read()
                assert "torch.load(" not in text and "import pickle" not in text, name


def test_truncated_file(tmp_path):
    path = lowbit.save(_quantized(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    for cut in (len(data) // 2, 20, 4):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match="truncated or corrupted"):
            lowbit.load(bad, _model())


def test_corrupted_bytes(tmp_path):
    path = lowbit.save(_quantized(), tmp_path / "m.safetensors")
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupted: its tensors do not match the checksum"):
        lowbit.load(path, _model())


def test_other_architecture(tmp_path):
    path = lowbit.save(_quantized(), tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match=r"layer 'conv1' does not match the model: checkpoint has conv2d 1->8 k3x3 pads=\(1, 1, 1, 1\), model has conv2d 1->16 k3x3"):
        lowbit.load(path, _model(widths=(16, 16, 16)))
    with pytest.raises(CheckpointError, match="does not exist in the given Sequential"):
        lowbit.load(path, nn.Sequential(nn.Linear(2, 2)))


def test_newer_format_version(tmp_path):
    path = lowbit.save(_quantized(), tmp_path / "m.safetensors")
    meta, tensors = read_checkpoint(path)
    meta = {k: (json.dumps(v) if k == "layers" else v) for k, v in meta.items()}
    meta["format_version"] = "99"
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="checkpoint format 99; this lowbit .* reads format 1"):
        lowbit.load(path, _model())


def test_not_a_lowbit_file(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"a": torch.ones(2)}, str(path))
    with pytest.raises(CheckpointError, match="not a lowbit checkpoint"):
        lowbit.load(path, _model())


def test_missing_and_unwritable_paths(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        lowbit.load(tmp_path / "nope.safetensors", _model())
    with pytest.raises(LowbitError, match="folder .*missing.* does not exist"):
        lowbit.save(_quantized(), tmp_path / "missing" / "m.safetensors")
    with pytest.raises(LowbitError, match="is a directory"):
        lowbit.save(_quantized(), tmp_path)


def test_unwritable_folder(tmp_path, monkeypatch):
    # root may write anywhere, so the permission answer is simulated
    monkeypatch.setattr("lowbit.fileio.os.access", lambda path, mode: False)
    with pytest.raises(LowbitError, match=f"folder {tmp_path} is not writable"):
        lowbit.save(_quantized(), tmp_path / "m.safetensors")


def test_failed_write_leaves_old_file(tmp_path, monkeypatch):
    path = lowbit.save(_quantized(), tmp_path / "m.safetensors")
    before = path.read_bytes()

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr("lowbit.checkpoint.save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        lowbit.save(_quantized(), path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["m.safetensors"]


def test_tied_weights_round_trip(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 6)
            self.proj = nn.Linear(6, 6)
            self.out = nn.Linear(6, 10, bias=False)
            self.out.weight = self.emb.weight

        def forward(self, ids):
            return self.out(self.proj(self.emb(ids)))

    torch.manual_seed(0)
    model = Tied()
    q = lowbit.quantize(model, calib_data=[torch.randint(0, 10, (4, 5))], skip=["out"])
    path = lowbit.save(q, tmp_path / "t.safetensors")
    torch.manual_seed(1)
    loaded = lowbit.load(path, Tied())
    ids = torch.randint(0, 10, (2, 5))
    assert torch.equal(loaded(ids), q(ids))
    assert loaded.out.weight is loaded.emb.weight
