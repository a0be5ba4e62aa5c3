"""The evaluation job: FP32 baseline, then each scheme and calibrator, as table rows."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import nn

from ..algorithms import finetune
from ..calib import CALIBRATORS
from ..data import load_fashion_mnist, normalize
from ..errors import ConfigError
from ..models import default_model
from ..models.default import NAME as DEFAULT_NAME
from ..pipeline import convert, prepare
from ..schemes import get_scheme
from ..sizes import model_size_bytes
from ..training import ShuffledBatches
from .metrics import top1_accuracy
from .report import Row

DEFAULT_SCHEMES = ("int8", "int4")
QAT_SCHEMES = ("int4",)  # the schemes whose rows get a fine-tuned twin when qat_epochs > 0
# The default model's fine-tuning: the cosine preset, from 5% of its training lr (0.1); about 50 s an
# epoch on 2 CPU cores. Measured (10k test images): 3 epochs from 5e-3 end 0.6 points under FP32, 4 epochs
# from the preset's 1e-3 0.8 points under it.
DEFAULT_QAT_EPOCHS, DEFAULT_QAT_LR = 3, 5e-3


def scheme_calibrators(scheme: str, calibrators: Sequence[str] | None) -> list[tuple[str | None, dict]]:
    """The (calibrator, options) pairs a scheme is evaluated with: the given calibrators, or by default
    every calibrator for int8 (the comparison users ask for) and the scheme's own default otherwise;
    (None, {}) alone for a scheme that calibrates nothing (w4a16: one row, not one per calibrator)."""
    if not get_scheme(scheme).needs_calibration:
        return [(None, {})]
    if calibrators is not None:
        return [(c, {}) for c in calibrators]
    if scheme == "int8":
        return [(c, {}) for c in CALIBRATORS]
    return [get_scheme(scheme).default_calibrator]


def _label(calibrator: str | None, options: dict) -> str | None:
    if calibrator is None:
        return None
    return " ".join([calibrator, *(f"{v:g}" if isinstance(v, float) else str(v) for v in options.values())])


def tensor_batches(images: torch.Tensor, labels: torch.Tensor | None, batch_size: int) -> list:
    """Split tensors into a list of batches ((inputs, labels) pairs when labels are given)."""
    starts = range(0, len(images), batch_size)
    if labels is None:
        return [images[i:i + batch_size] for i in starts]
    return [(images[i:i + batch_size], labels[i:i + batch_size]) for i in starts]


def default_calib_batches(calib_samples: int = 2048, data_root=None, batch_size: int = 256) -> list:
    """Calibration batches for the default model: a fixed random subset of the training images."""
    images, _ = load_fashion_mnist("train", data_root)
    if not 1 <= calib_samples <= len(images):
        raise ConfigError(f"calib_samples={calib_samples}: the calibration images are drawn from the {len(images):,} "
                          f"training images, so expected 1 to {len(images):,}")
    pick = torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:calib_samples]
    return tensor_batches(normalize(images[pick]), None, batch_size)


def evaluate_classifier(name: str, model: nn.Module, calib_data: Iterable, test_batches: Sequence, *,
                        schemes: Sequence[str] = DEFAULT_SCHEMES, calibrators: Sequence[str] | None = None,
                        train_data: Iterable | None = None, qat_epochs: int = 0, qat_lr: float | None = None,
                        device=None, progress: bool | None = None) -> list[Row]:
    """Top-1 accuracy of the FP32 model and of every (scheme, calibrator) pair on the same batches
    (``calibrators``: see :func:`scheme_calibrators`). With ``qat_epochs``, each int4 configuration
    is also fine-tuned on ``train_data`` (preset "cosine", from ``qat_lr`` if given) and evaluated
    after conversion. Every quantized row carries ``qat_epochs`` (0 for post-training quantization)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = model.to(device).eval()
    fp32, samples = top1_accuracy(model, test_batches, device=device, progress=progress, desc="FP32")
    rows = [Row(name, "fp32", None, "top1", fp32, fp32, samples, model_size_bytes(model))]
    calib_data = list(calib_data)
    if qat_epochs and train_data is None:
        raise ConfigError("qat_epochs > 0 needs train_data to fine-tune on")
    for scheme in schemes:
        for calibrator, options in scheme_calibrators(scheme, calibrators):
            label = _label(calibrator, options)
            prepared = prepare(model, scheme, calib_data, calibrator, calibrator_options=options, progress=progress)
            runs = [0] + ([qat_epochs] if qat_epochs and scheme in QAT_SCHEMES else [])
            for epochs in runs:
                if epochs:
                    finetune(prepared.train(), train_data, epochs=epochs, lr=qat_lr, preset="cosine", progress=progress)
                qmodel = convert(prepared, progress=progress)
                after = f" after {epochs} QAT epochs" if epochs else ""
                value, _ = top1_accuracy(qmodel, test_batches, device=device, progress=progress,
                                         desc=f"{scheme}/{label or '-'}{after}")
                rows.append(Row(name, scheme, label, "top1", value, fp32, samples, model_size_bytes(qmodel),
                                {"qat_epochs": epochs}))
    return rows


def evaluate_default(*, schemes: Sequence[str] = DEFAULT_SCHEMES, calibrators: Sequence[str] | None = None,
                     calib_samples: int = 2048, limit: int | None = None, batch_size: int = 500,
                     qat_epochs: int = DEFAULT_QAT_EPOCHS, device=None, data_root=None, retrain: bool = False,
                     progress: bool | None = None) -> list[Row]:
    """The main job: the default Fashion-MNIST ResNet, calibrated on ``calib_samples``
    training images (a fixed random subset) and tested on the 10k test set (or ``limit``);
    int4 is also fine-tuned for ``qat_epochs`` on the 60k training images (shifts and flips)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    calib = default_calib_batches(calib_samples, data_root)  # first: a bad count is refused before any training
    model = default_model(retrain=retrain, device=device, data_root=data_root, progress=progress)
    test = default_test_batches(data_root, limit, batch_size)
    train = default_train_batches(data_root) if qat_epochs else None
    return evaluate_classifier(DEFAULT_NAME, model, calib, test, schemes=schemes, calibrators=calibrators,
                               train_data=train, qat_epochs=qat_epochs, qat_lr=DEFAULT_QAT_LR, device=device,
                               progress=progress)


def default_test_batches(data_root=None, limit: int | None = None, batch_size: int = 500) -> list:
    """(images, labels) batches of the default model's test set: the 10k test images, or the first ``limit``."""
    images, labels = load_fashion_mnist("test", data_root)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return tensor_batches(normalize(images), labels, batch_size)


def default_train_batches(data_root=None, batch_size: int = 128) -> ShuffledBatches:
    """Fine-tuning batches for the default model: the 60k training images, shuffled and augmented per epoch."""
    images, labels = load_fashion_mnist("train", data_root)
    return ShuffledBatches(normalize(images), labels, batch_size)
