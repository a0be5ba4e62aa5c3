"""A plain supervised training loop for image classifiers held in memory."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .progress import progress_bar


def augment(x: torch.Tensor, generator: torch.Generator, pad: int = 2, flips: bool = True) -> torch.Tensor:
    """Random shifts (pad and crop, up to ``pad`` pixels) and, with ``flips``, horizontal flips, per image."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    dy = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu").to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (b,), generator=generator, device="cpu").to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # [B, H]
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])  # [B, W]
    out = padded[torch.arange(b, device=x.device)[:, None, None, None], torch.arange(x.shape[1], device=x.device)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    flip = torch.rand(b, generator=generator, device="cpu").to(x.device) < 0.5
    if not flips:
        return out
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class ShuffledBatches:
    """(images, labels) batches of in-memory tensors in a new random order every epoch, with
    :func:`augment`; the order and the augmentation depend only on (seed, epoch), so a resumed
    run sees the batches an uninterrupted one would have. Call ``set_epoch`` before iterating."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 128, *, seed: int = 0,
                 augmentation: bool = True):
        if len(images) != len(labels) or len(images) == 0:
            raise ValueError(f"need as many labels as images, and at least one: got {len(images)} and {len(labels)}")
        self.images, self.labels, self.batch_size = images, labels, batch_size
        self.seed, self.augmentation, self.epoch = seed, augmentation, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.images) / self.batch_size)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(len(self.images), generator=generator)
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            x = self.images[idx]
            yield (augment(x, generator) if self.augmentation else x), self.labels[idx]


def train_classifier(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, epochs: int, lr: float,
                     batch_size: int = 128, weight_decay: float = 5e-4, seed: int = 0, device=None,
                     augmentation: bool = True, flips: bool = True, channels_last: bool = False,
                     progress: bool | None = None) -> nn.Module:
    """SGD with Nesterov momentum and a one-cycle schedule (warm-up, cosine decay); with
    ``augmentation``, images [B, C, H, W] get :func:`augment`'s random shifts (and ``flips``). With
    ``channels_last`` the weights are held channels-last while training (convolutions about 20% faster
    on the CPU) and made contiguous again at the end."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device).train()
    if channels_last:
        model.to(memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(seed)
    decay = [p for n, p in model.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in model.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0}],
                          lr=lr, momentum=0.9, nesterov=True)
    steps_per_epoch = math.ceil(len(images) / batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch, pct_start=0.2)
    for epoch in range(epochs):
        order = torch.randperm(len(images), generator=generator)
        bar = progress_bar(range(steps_per_epoch), desc=f"training epoch {epoch + 1}/{epochs}", unit="batch",
                           enable=progress)
        for step in bar:
            idx = order[step * batch_size:(step + 1) * batch_size]
            x = images[idx].to(device)
            if augmentation:
                x = augment(x, generator, flips=flips)
            loss = F.cross_entropy(model(x), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return model.eval()
