"""save / load: identical outputs, no pickle, clear errors for bad files."""

import json
import os

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

import lowbit
from lowbit.checkpoint import read_checkpoint
from lowbit.errors import CheckpointError, ConfigError, LowbitError
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
    with pytest.raises(CheckpointError, match="corrupted: its tensors or header do not match the checksum"):
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
    with pytest.raises(LowbitError, match=f"cannot write {path}: disk full"):
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


def _mlp(act=nn.ReLU):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(13, 37), act(), nn.Linear(37, 19), act(), nn.Linear(19, 5)).eval()


def _quantized_mlp():
    return lowbit.quantize(_mlp(), "int8", calib_data=[torch.randn(8, 13)], calibrator="max")


def _rewrite_header(path, edit):
    """The checkpoint at ``path`` rewritten with ``edit(layers)`` applied to its layer descriptions and a
    fresh checksum: what a file damaged before it was checksummed, or written by another tool, looks like."""
    from lowbit.checkpoint import write_tensors

    meta, tensors = read_checkpoint(path)
    layers = edit(meta["layers"])
    header = {k: v for k, v in meta.items() if k not in ("sha256", "sha256_scope", "lowbit_version")}
    write_tensors(path, tensors, {**header, "layers": json.dumps(layers)})


def test_refuses_to_save_what_it_cannot_load(tmp_path):
    prepared = lowbit.prepare(_mlp(), "int8", calib_data=[torch.randn(8, 13)])
    with pytest.raises(CheckpointError, match=r"fake-quantized layers \(0, 2, 4; .*lowbit.convert\(model\)"):
        lowbit.save(prepared, tmp_path / "m.safetensors")
    with pytest.raises(CheckpointError, match="has no quantized layer"):
        lowbit.save(_mlp(), tmp_path / "m.safetensors")
    assert not list(tmp_path.iterdir())


def test_an_edited_header_is_caught_by_the_checksum(tmp_path):
    path = lowbit.save(_quantized_mlp(), tmp_path / "m.safetensors")
    meta, tensors = read_checkpoint(path)
    meta["layers"]["4"]["relu"] = True
    meta = {k: (json.dumps(v) if k == "layers" else v) for k, v in meta.items()}
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match="corrupted: its tensors or header do not match"):
        lowbit.load(path, _mlp())


def test_files_whose_checksum_covers_only_tensors_still_load(tmp_path):
    from lowbit.checkpoint import _checksum

    q = _quantized_mlp()
    path = lowbit.save(q, tmp_path / "m.safetensors")
    meta, tensors = read_checkpoint(path)
    meta = {k: (json.dumps(v) if k == "layers" else v) for k, v in meta.items() if k != "sha256_scope"}
    meta["sha256"] = _checksum(tensors)
    save_file(tensors, str(path), metadata=meta)
    x = torch.randn(4, 13)
    assert torch.equal(lowbit.load(path, _mlp())(x), q(x))


@pytest.mark.parametrize("edit, message", [
    (lambda layers: {**layers, "2": {k: v for k, v in layers["2"].items() if k != "geometry"}},
     "layer '2': its description in the header is damaged \\(no 'geometry'\\)"),
    (lambda layers: {**layers, "0": {**layers["0"], "weight": {**layers["0"]["weight"], "fmt": {"bits": 40}}}},
     "layer '0': its description in the header is damaged"),
    (lambda layers: list(layers), "its 'layers' is not a mapping"),
    (lambda layers: {**layers, "4": 3}, "its 'layers' is not a mapping"),
])
def test_damaged_layer_descriptions(tmp_path, edit, message):
    path = lowbit.save(_quantized_mlp(), tmp_path / "m.safetensors")
    _rewrite_header(path, edit)
    model = _mlp()
    with pytest.raises(CheckpointError, match=message):
        lowbit.load(path, model)
    assert [type(m).__name__ for m in model] == ["Linear", "ReLU", "Linear", "ReLU", "Linear"]


def test_a_failed_load_leaves_the_model_as_given(tmp_path):
    path = lowbit.save(_quantized_mlp(), tmp_path / "m.safetensors")
    bigger = nn.Sequential(*_mlp(), nn.ReLU(), nn.Linear(5, 5))
    before = {k: v.clone() for k, v in bigger.state_dict().items()}
    with pytest.raises(CheckpointError, match="missing tensors"):
        lowbit.load(path, bigger)
    assert [type(m).__name__ for m in bigger] == ["Linear", "ReLU"] * 3 + ["Linear"]
    assert all(torch.equal(before[k], v) for k, v in bigger.state_dict().items())
    with pytest.raises(ConfigError, match="device='bogus' is not a torch device"):
        lowbit.load(path, bigger, device="bogus")


def test_a_folded_relu_needs_a_relu_in_the_model(tmp_path):
    path = lowbit.save(_quantized_mlp(), tmp_path / "m.safetensors")
    model = _mlp(nn.Tanh)
    with pytest.raises(CheckpointError, match="layer '0' was saved with the nn.ReLU after it folded in, but in the "
                                              "given Sequential it is followed by Tanh"):
        lowbit.load(path, model)
    assert [type(m).__name__ for m in model] == ["Linear", "Tanh", "Linear", "Tanh", "Linear"]


def test_refuses_to_save_a_prepared_model_of_any_scheme(tmp_path):
    prepared = lowbit.prepare(_mlp(), "w4a16", group_size=0)
    with pytest.raises(CheckpointError, match=r"fake-quantized layers \(0, 2, 4; "):
        lowbit.save(prepared, tmp_path / "m.safetensors")
