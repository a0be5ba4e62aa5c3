"""Checkpoints: safetensors tensors plus a JSON header, never pickle.

The header (safetensors' ``__metadata__``) holds the format name and version, the
lowbit version, the model class, a SHA-256 of the tensor bytes and, per quantized
layer, its type, geometry, formats, scheme, calibrator and input scale / zero
point. The tensors are the model's whole state dict: quantized layers' codes and
scales, and every float parameter and buffer of the rest.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .errors import CheckpointError, ConfigError, LowbitError
from .fileio import atomic_path
from .nn import LAYER_TYPES, QUANTIZABLE_TYPES, LayerGeometry, quantized_layers, settle
from .nn.registry import module_after, replace_module

FORMAT = "lowbit-checkpoint"
FORMAT_VERSION = 1


# What the header's sha256 covers; files written before it existed cover their tensors only.
CHECKSUM_SCOPE = "tensors+header"


def _checksum(tensors: dict[str, torch.Tensor], header: dict[str, str] | None = None) -> str:
    """SHA-256 of the tensors (names, dtypes, shapes, bytes) and of the header's other fields, so that
    an edited layer description is caught like a flipped weight bit."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        h.update(name.encode())
        h.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if header is not None:
        h.update(json.dumps({k: v for k, v in header.items() if k != "sha256"}, sort_keys=True).encode())
    return h.hexdigest()


def state_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with shared storage copied apart (safetensors refuses aliases)."""
    seen, out = set(), {}
    for name, t in model.state_dict().items():
        t = t.detach()
        key = (t.untyped_storage().data_ptr(), t.storage_offset()) if t.numel() else None
        out[name] = t.contiguous().clone() if key in seen else t.contiguous()
        seen.add(key)
    return out


def write_tensors(path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> Path:
    """Write tensors and a string header (plus their SHA-256) as safetensors, atomically."""
    metadata = {**metadata, "lowbit_version": __version__, "sha256_scope": CHECKSUM_SCOPE}
    metadata["sha256"] = _checksum(tensors, metadata)
    with atomic_path(path) as tmp:
        try:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as exc:  # safetensors reports a failed write (disk full) as its own error
            raise OSError(str(exc)) from exc
    return Path(path).expanduser()


def read_tensors(path, fmt: str, version: int, what: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """Header and tensors of a file written by :func:`write_tensors` in format ``fmt`` (at most
    ``version``), its checksum verified; a clear error naming the file otherwise."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{what} {path} does not exist" if not path.exists() else f"{path} is not a file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file (truncated or corrupted?): {exc}") from None
    if meta.get("format") != fmt:
        found = f"a '{meta['format']}' file" if "format" in meta else "a safetensors file"
        raise CheckpointError(f"{path} is {found}, not a {what} (no '{fmt}' header)")
    try:
        found_version = int(meta["format_version"])
        expected_sum = meta["sha256"]
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: the lowbit header is damaged ({exc})") from None
    if found_version > version:
        raise CheckpointError(f"{path} was written by lowbit {meta.get('lowbit_version', '?')} in {what} format "
                              f"{found_version}; this lowbit ({__version__}) reads format {version} and older: "
                              "upgrade lowbit")
    covers_header = meta.get("sha256_scope") == CHECKSUM_SCOPE
    if _checksum(tensors, meta if covers_header else None) != expected_sum:
        what_changed = "its tensors or header do" if covers_header else "its tensors do"
        raise CheckpointError(f"{path} is corrupted: {what_changed} not match the checksum in its header")
    return meta, tensors


def save(qmodel: nn.Module, path) -> Path:
    """Write a quantized model to ``path`` (safetensors + JSON header), atomically."""
    from .pipeline import prepared_layers  # here: pipeline -> algorithms -> qat imports this module

    fake = [name for name, _ in prepared_layers(qmodel)]
    if fake:
        shown = ", ".join(fake[:3]) + (", ..." if len(fake) > 3 else "")
        raise CheckpointError(f"cannot save {type(qmodel).__name__} to {path}: it has fake-quantized layers ({shown}; "
                              "from lowbit.prepare or finetune): lowbit.convert(model) deploys them first")
    layers = {name: m.describe() for name, m in quantized_layers(qmodel)}
    if not layers:
        raise CheckpointError(f"cannot save {type(qmodel).__name__} to {path}: it has no quantized layer; lowbit.save "
                              "writes models returned by lowbit.quantize or lowbit.convert")
    return write_tensors(path, state_tensors(qmodel), {
        "format": FORMAT,
        "format_version": str(FORMAT_VERSION),
        "model_class": model_class(qmodel),
        "schemes": ",".join(sorted({d.get("scheme", d["type"]) for d in layers.values()})),
        "layers": json.dumps(layers, sort_keys=True),
    })


def model_class(model: nn.Module) -> str:
    return f"{type(model).__module__}.{type(model).__qualname__}"


def read_checkpoint(path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Header and tensors of a lowbit checkpoint, verified; a clear error otherwise."""
    meta, tensors = read_tensors(path, FORMAT, FORMAT_VERSION, "lowbit checkpoint")
    try:
        layers = json.loads(meta["layers"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"{path}: the lowbit header is damaged ({exc})") from None
    if not isinstance(layers, dict) or not all(isinstance(d, dict) for d in layers.values()):
        raise CheckpointError(f"{path}: the lowbit header is damaged (its 'layers' is not a mapping from layer "
                              "names to descriptions)")
    return {**meta, "layers": layers}, tensors


def _layer_from(desc: dict, where: str) -> nn.Module:
    cls = LAYER_TYPES.get(desc.get("type"))
    if cls is None:
        raise CheckpointError(f"{where} has unknown layer type {desc.get('type')!r}")
    try:
        return cls.from_description(desc)
    except (KeyError, TypeError, ValueError, AttributeError, LowbitError) as exc:
        detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
        raise CheckpointError(f"{where}: its description in the header is damaged ({detail})") from None


def load(path, model: nn.Module, *, device=None) -> nn.Module:
    """Restore a checkpoint written by :func:`save` into ``model``, a fresh (float)
    instance of the architecture it was saved from; returns the quantized model.
    On any error ``model`` is left as it was given."""
    if device is not None:
        try:
            device = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device={device!r} is not a torch device ({exc})") from None
    meta, tensors = read_checkpoint(path)
    origin = meta.get("model_class", "?")
    modules = dict(model.named_modules())
    swapped = []  # (name, the model's own module): put back if loading fails
    try:
        for name, desc in meta["layers"].items():
            where = f"checkpoint {path} was saved from {origin}; layer {name!r}"
            target = modules.get(name)
            if target is None:
                raise CheckpointError(f"{where} does not exist in the given {type(model).__name__}")
            layer = _layer_from({**desc, "name": name}, where)
            if not isinstance(target, QUANTIZABLE_TYPES) or LayerGeometry.of(target) != layer.geometry:
                got = LayerGeometry.of(target) if isinstance(target, QUANTIZABLE_TYPES) else type(target).__name__
                raise CheckpointError(f"{where} does not match the model: checkpoint has {layer.geometry}, "
                                      f"model has {got}")
            after = module_after(model, name)
            if getattr(layer, "relu", False) and type(after) is not nn.ReLU:
                found = type(after).__name__ if after is not None else "no module of an nn.Sequential"
                raise CheckpointError(f"{where} was saved with the nn.ReLU after it folded in, but in the given "
                                      f"{type(model).__name__} it is followed by {found}")
            swapped.append((name, target))
            replace_module(model, name, layer)
        expected = model.state_dict()
        missing = sorted(set(expected) - set(tensors))
        unexpected = sorted(set(tensors) - set(expected))
        if missing or unexpected:
            raise CheckpointError(f"checkpoint {path} (saved from {origin}) does not fit {type(model).__name__}: "
                                  f"missing tensors {missing[:5]}{'...' if len(missing) > 5 else ''}, "
                                  f"unexpected tensors {unexpected[:5]}{'...' if len(unexpected) > 5 else ''}")
        for key, t in tensors.items():
            if expected[key].shape != t.shape:
                raise CheckpointError(f"checkpoint {path}: tensor {key!r} has shape {tuple(t.shape)}, "
                                      f"the model expects {tuple(expected[key].shape)}")
        model.load_state_dict(tensors, strict=True)
    except BaseException:
        for name, module in reversed(swapped):
            replace_module(model, name, module)
        raise
    settle(model)  # as convert() left it: the layers saved with relu set lose their ReLU modules again
    if device is not None:
        model.to(device)
    return model
