"""A small ResNet for 28x28 images: the embedded default model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ScaleNorm2d(nn.Module):
    """Batch normalisation without centring or shift: y = weight * x / sqrt(E[x^2] + eps)
    per channel, E over the batch in training and a running average in eval.

    It maps 0 to 0, so a network built from it and bias-free convolutions maps a
    flat zero background to exactly 0 in every layer. Standard BatchNorm maps it to
    a per-channel constant instead, which puts isolated spikes into the activation
    histograms; TensorRT's KL (entropy) calibration then favours ranges that resolve
    those spikes and clips the real signal (measured: -14 points on Fashion-MNIST).
    """

    def __init__(self, channels: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.register_buffer("running_sq_mean", torch.ones(channels))

    def forward(self, x):
        if self.training:
            sq_mean = x.pow(2).mean((0, 2, 3))
            with torch.no_grad():
                self.running_sq_mean.lerp_(sq_mean, self.momentum)
        else:
            sq_mean = self.running_sq_mean
        return x * (self.weight * torch.rsqrt(sq_mean + self.eps)).view(1, -1, 1, 1)

    def folded_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) per channel of the eval-mode map, for folding into the conv before it
        (float64 on the CPU, so the folded numbers do not depend on the device)."""
        scale = self.weight.detach().cpu().double() * torch.rsqrt(self.running_sq_mean.cpu().double() + self.eps)
        return scale, torch.zeros_like(scale)


NORMS = {"batch": nn.BatchNorm2d, "scale": ScaleNorm2d}


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = norm(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = norm(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm(cout))

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.downsample is None else self.downsample(x)))


class SmallResNet(nn.Module):
    """conv3x3 stem, three stages of basic blocks (stride 1, 2, 2), global average pool, FC.
    ``norm``: "batch" (BatchNorm2d) or "scale" (:class:`ScaleNorm2d`)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, widths=(16, 32, 64), blocks=(1, 1, 1),
                 norm: str = "batch"):
        super().__init__()
        norm_layer = NORMS[norm]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        self.bn1 = norm_layer(widths[0])
        stages, cin = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            layers = [BasicBlock(cin if j == 0 else width, width, 1 if i == 0 or j else 2, norm_layer)
                      for j in range(n)]
            stages.append(nn.Sequential(*layers))
            cin = width
        self.layer1, self.layer2, self.layer3 = stages
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(x.mean((2, 3)))
