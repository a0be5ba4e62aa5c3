"""The embedded default: a SmallResNet trained here on Fashion-MNIST, cached after the first run."""

from __future__ import annotations

import hashlib
import json
import sys

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from ..data import load_fashion_mnist, normalize
from ..fileio import atomic_path, cache_dir
from ..training import train_classifier
from .small_resnet import SmallResNet

NAME = "fashion-resnet"
# Changing anything here retrains (the cache file name carries its digest).
# ScaleNorm and pixels in [0, 1] keep a blank background at exactly 0 in every layer, so
# every calibrator (entropy included) sees spike-free histograms; see ScaleNorm2d.
RECIPE = {"arch": "SmallResNet", "widths": [16, 32, 64], "blocks": [2, 2, 2], "norm": "scale", "epochs": 6,
          "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4, "seed": 0,
          "data": "fashion-mnist train 60k, pixels/255, shift+flip"}


def _build() -> nn.Module:
    return SmallResNet(10, 1, tuple(RECIPE["widths"]), tuple(RECIPE["blocks"]), RECIPE["norm"])


def cache_path():
    digest = hashlib.sha256(json.dumps(RECIPE, sort_keys=True).encode()).hexdigest()[:12]
    return cache_dir() / f"{NAME}-{digest}.safetensors"


def _load_cached(path) -> nn.Module | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
        model = _build()
        model.load_state_dict(state, strict=True)
        return model.eval()
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        print(f"lowbit: the cached default model {path} is unusable ({exc}); training it again", file=sys.stderr)
        return None


def default_model(*, retrain: bool = False, device=None, data_root=None, progress: bool | None = None) -> nn.Module:
    """The default Fashion-MNIST ResNet in FP32: loaded from the cache, or trained once
    (GPU when present, else a few minutes on the CPU) and cached atomically."""
    path = cache_path()
    model = None if retrain or not path.exists() else _load_cached(path)
    if model is None:
        images, labels = load_fashion_mnist("train", data_root)
        print(f"lowbit: training the default model once ({RECIPE['epochs']} epochs on Fashion-MNIST); "
              f"it will be cached at {path}", file=sys.stderr)
        torch.manual_seed(RECIPE["seed"])
        model = train_classifier(_build(), normalize(images), labels, epochs=RECIPE["epochs"], lr=RECIPE["lr"],
                                 batch_size=RECIPE["batch_size"], weight_decay=RECIPE["weight_decay"],
                                 seed=RECIPE["seed"], device=device, progress=progress)
        with atomic_path(path) as tmp:
            save_file({k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}, str(tmp),
                      metadata={"recipe": json.dumps(RECIPE)})
    return model.to(device or "cpu").eval()
