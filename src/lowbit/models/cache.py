"""Models trained here once and cached: the file name carries a digest of the recipe, so changing
the recipe retrains; an unreadable cache file is reported and replaced."""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..fileio import atomic_path, cache_dir


def cache_path(name: str, recipe: dict) -> Path:
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"{name}-{digest}.safetensors"


def _load(path: Path, build: Callable[[], nn.Module], name: str) -> nn.Module | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
        model = build()
        model.load_state_dict(state, strict=True)
        return model.eval()
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        why = str(exc).splitlines()[0][:200]  # a state-dict mismatch lists every key: the first line says enough
        print(f"lowbit: the cached model {name} at {path} is unusable ({why}); training it again", file=sys.stderr)
        return None


def cached_model(name: str, recipe: dict, build: Callable[[], nn.Module], data: Callable[[], Any],
                 train: Callable[[nn.Module, Any], nn.Module], *, retrain: bool = False, device=None) -> nn.Module:
    """``build()`` with the cached weights of ``recipe``; else ``train(build(), data())``, cached atomically
    (the data is loaded first, so that missing data is reported before the training is announced)."""
    path = cache_path(name, recipe)
    model = None if retrain or not path.exists() else _load(path, build, name)
    if model is None:
        training_data = data()
        print(f"lowbit: training {name} once; it will be cached at {path}", file=sys.stderr)
        model = train(build(), training_data)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
                      metadata={"recipe": json.dumps(recipe)})
    return model.to(device or "cpu").eval()
