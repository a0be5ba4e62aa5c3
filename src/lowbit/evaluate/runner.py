"""The evaluation job: FP32 baseline, then each scheme and calibrator, as table rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..calib import CALIBRATORS
from ..data import load_fashion_mnist, normalize
from ..models import default_model
from ..models.default import NAME as DEFAULT_NAME
from ..pipeline import quantize
from ..sizes import model_size_bytes
from .metrics import top1_accuracy
from .report import Row

DEFAULT_SCHEMES = ("int8",)
DEFAULT_CALIBRATORS = tuple(CALIBRATORS)


def tensor_batches(images: torch.Tensor, labels: torch.Tensor | None, batch_size: int) -> list:
    """Split tensors into a list of batches ((inputs, labels) pairs when labels are given)."""
    starts = range(0, len(images), batch_size)
    if labels is None:
        return [images[i:i + batch_size] for i in starts]
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in starts]


def default_calib_batches(calib_samples: int = 2048, data_root=None, batch_size: int = 256) -> list:
    """Calibration batches for the default model: a fixed random subset of the training images."""
    images, _ = load_fashion_mnist("train", data_root)
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:calib_samples]
    return tensor_batches(normalize(images[pick]), None, batch_size)


def evaluate_classifier(name: str, model: nn.Module, calib_data: Iterable, test_batches: Sequence, *,
                        schemes: Sequence[str] = DEFAULT_SCHEMES, calibrators: Sequence[str] = DEFAULT_CALIBRATORS,
                        device=None, progress: bool | None = None) -> list[Row]:
    """Top-1 accuracy of the FP32 model and of every (scheme, calibrator) pair on the same batches."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    fp32, samples = top1_accuracy(model, test_batches, device=device, progress=progress, desc="FP32")
    rows = [Row(name, "fp32", None, "top1", fp32, fp32, samples, model_size_bytes(model))]
    calib_data = list(calib_data)
    for scheme in schemes:
        for calibrator in calibrators:
            qmodel = quantize(model, scheme, calib_data, calibrator, progress=progress)
            value, _ = top1_accuracy(qmodel, test_batches, device=device, progress=progress,
                                     desc=f"{scheme}/{calibrator}")
            rows.append(Row(name, scheme, calibrator, "top1", value, fp32, samples, model_size_bytes(qmodel)))
    return rows


def evaluate_default(*, schemes: Sequence[str] = DEFAULT_SCHEMES, calibrators: Sequence[str] = DEFAULT_CALIBRATORS,
                     calib_samples: int = 2048, limit: int | None = None, batch_size: int = 500, device=None,
                     data_root=None, retrain: bool = False, progress: bool | None = None) -> list[Row]:
    """The main job: the default Fashion-MNIST ResNet, calibrated on ``calib_samples``
    training images (a fixed random subset) and tested on the 10k test set (or ``limit``)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = default_model(retrain=retrain, device=device, data_root=data_root, progress=progress)
    calib = default_calib_batches(calib_samples, data_root)
    test_x, test_y = load_fashion_mnist("test", data_root)
    if limit is not None:
        test_x, test_y = test_x[:limit], test_y[:limit]
    test = tensor_batches(normalize(test_x), test_y, batch_size)
    return evaluate_classifier(DEFAULT_NAME, model, calib, test, schemes=schemes, calibrators=calibrators,
                               device=device, progress=progress)
