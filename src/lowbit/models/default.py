"""The embedded default: a SmallResNet trained here on Fashion-MNIST, cached after the first run."""

from __future__ import annotations

import torch
from torch import nn

from ..data import load_fashion_mnist, normalize
from ..training import train_classifier
from .cache import cache_path as model_cache_path
from .cache import cached_model
from .small_resnet import SmallResNet

NAME = "fashion-resnet"
# Changing anything here retrains (the cache file name carries its digest).
# ScaleNorm and pixels in [0, 1] keep a blank background at exactly 0 in every layer, so
# every calibrator (entropy included) sees spike-free histograms; see ScaleNorm2d.
RECIPE = {"arch": "SmallResNet", "widths": [16, 32, 64], "blocks": [2, 2, 2], "norm": "scale", "epochs": 6,
          "lr": 0.1, "batch_size": 128, "weight_decay": 5e-4, "seed": 0,
          "data": "fashion-mnist train 60k, pixels/255, shift+flip", "memory_format": "channels_last"}


def _build() -> nn.Module:
    return SmallResNet(10, 1, tuple(RECIPE["widths"]), tuple(RECIPE["blocks"]), RECIPE["norm"])


def cache_path():
    return model_cache_path(NAME, RECIPE)


def default_model(*, retrain: bool = False, device=None, data_root=None, progress: bool | None = None) -> nn.Module:
    """The default Fashion-MNIST ResNet in FP32: loaded from the cache, or trained once
    (GPU when present, else a few minutes on the CPU) and cached atomically."""
    def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
        images, labels = data
        torch.manual_seed(RECIPE["seed"])
        return train_classifier(model, normalize(images), labels, epochs=RECIPE["epochs"], lr=RECIPE["lr"],
                                batch_size=RECIPE["batch_size"], weight_decay=RECIPE["weight_decay"],
                                seed=RECIPE["seed"], device=device,
                                channels_last=RECIPE["memory_format"] == "channels_last", progress=progress)

    return cached_model(NAME, RECIPE, _build, lambda: load_fashion_mnist("train", data_root), train, retrain=retrain,
                        device=device)
