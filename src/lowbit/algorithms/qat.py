"""Quantization-aware fine-tuning (QAT) of a model from :func:`lowbit.prepare`.

The forward pass is the fake-quantized one: weights rounded to their grid (per-channel max range,
recomputed from the current weights at every step) and activations to the range calibration fixed.
Gradients pass by the clipped straight-through estimator: unchanged inside a quantizer's range,
zero outside it (lowbit.numerics.fake_quantize).

Activation ranges stay fixed from calibration; they are not learned. That is the recipe of NVIDIA's
pytorch-quantization, which its INT4 ResNet-50 followed: a fixed scale means a fixed number format,
so the weights adapt to the grid they will be deployed on, and the clipped STE already stops
gradients pushing values past the range. Learned ranges (PACT, LSQ) add a learning rate of their own
and make the format move under the weights; on the default model fixed ranges already close the
INT4 gap (benchmarks/RESULTS.md).

Schedules (``preset``):
  ``"step"``    1 epoch from lr 1e-4, x0.1 after every epoch: pytorch-quantization's ResNet-50 recipe.
  ``"cosine"``  from lr 1e-3, the falling half of a cosine down to 1% of it, step by step (NVIDIA's
                INT4 ResNet-50 fine-tuned 15 epochs this way).
SGD with momentum 0.9; weight decay on conv / linear weights only.

A checkpoint (safetensors + JSON, no pickle) is written atomically after every epoch, so ctrl-C or a
crash leaves the last one intact, and ``resume=True`` goes on from it.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint import model_class, read_tensors, state_tensors, write_tensors
from ..errors import CheckpointError, ConfigError, DataError, TrainingError
from ..pipeline import _to_device, describe_batch, prepared_layers
from ..progress import progress_bar

PRESETS = {
    "step": {"epochs": 1, "lr": 1e-4, "schedule": "step"},
    "cosine": {"epochs": 15, "lr": 1e-3, "schedule": "cosine"},
}
CHECKPOINT_NAME = "finetune.safetensors"
FORMAT, FORMAT_VERSION = "lowbit-finetune", 1
_STEP_GAMMA = 0.1  # the step schedule's factor per epoch
_COSINE_FLOOR = 0.01  # the cosine schedule ends at this fraction of the initial lr
_WARM_STEPS = 20  # the divergence check compares against the mean loss of a run's first steps


@dataclass
class EpochRecord:
    epoch: int  # 1-based
    loss: float  # mean training loss over the epoch
    lr: float  # at the epoch's last step
    seconds: float
    accuracy: float | None = None  # top-1 on eval_data, when given


def learning_rate(schedule: str, lr: float, epoch: int, step: int, steps_per_epoch: int | None, epochs: int) -> float:
    """The lr at ``step`` of 0-based ``epoch``. Without a known epoch length the cosine moves per epoch."""
    if schedule == "step":
        return lr * _STEP_GAMMA ** epoch
    if schedule == "cosine":
        if steps_per_epoch:
            progress = (epoch * steps_per_epoch + step) / max(1, epochs * steps_per_epoch - 1)
        else:
            progress = epoch / max(1, epochs - 1)
        return lr * (_COSINE_FLOOR + (1 - _COSINE_FLOOR) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
    raise ConfigError(f"schedule={schedule!r} is invalid: expected 'step' or 'cosine'")


def _settings(preset: str, epochs, lr, schedule) -> tuple[int, float, str]:
    if preset not in PRESETS:
        raise ConfigError(f"preset={preset!r} is invalid: expected one of {', '.join(PRESETS)}")
    chosen = {**PRESETS[preset], **{k: v for k, v in (("epochs", epochs), ("lr", lr), ("schedule", schedule))
                                    if v is not None}}
    if isinstance(chosen["epochs"], bool) or not isinstance(chosen["epochs"], int) or chosen["epochs"] < 1:
        raise ConfigError(f"epochs={chosen['epochs']!r} is invalid: expected a positive integer")
    # The optimizer multiplies float32 weights' gradients by lr: it must be a float32 number itself.
    if not (isinstance(chosen["lr"], (int, float)) and not isinstance(chosen["lr"], bool)
            and 0 < chosen["lr"] <= torch.finfo(torch.float32).max):
        raise ConfigError(f"lr={chosen['lr']!r} is invalid: expected a positive number (at most float32's largest, "
                          "3.4e38; a few times 1e-3 suits fine-tuning)")
    learning_rate(chosen["schedule"], 1.0, 0, 0, None, 1)  # validates the name
    return chosen["epochs"], float(chosen["lr"]), chosen["schedule"]


def _layer_descriptions(model: nn.Module) -> dict:
    """What must match for a checkpoint to resume into ``model``: each fake-quantized layer's
    scheme, options and formats."""
    def spec(quantizer: nn.Module):
        return quantizer.spec.to_dict() if hasattr(quantizer, "spec") else type(quantizer).__name__

    return {name: {"scheme": layer.scheme.name, "options": layer.scheme.options,
                   "weight": spec(layer.weight_quantizer), "input": spec(layer.input_quantizer)}
            for name, layer in prepared_layers(model)}


def _check_trainable(model: nn.Module) -> list[nn.Parameter]:
    if not prepared_layers(model):
        raise ConfigError(f"{type(model).__name__} has no fake-quantized layer: finetune trains a model returned by "
                          "lowbit.prepare(model, scheme, calib_data) (lowbit.quantize returns integer codes, "
                          "which cannot be trained)")
    frozen = [n for n, layer in prepared_layers(model) if getattr(layer.weight_quantizer, "frozen", None) is not None]
    if frozen:
        raise ConfigError(f"layers {', '.join(map(repr, frozen[:3]))}{', ...' if len(frozen) > 3 else ''} hold codes "
                          "chosen by GPTQ/DPQ, which fine-tuning would not change: prepare the model with "
                          "algorithm='rtn' to fine-tune it")
    if not model.training:
        raise ConfigError(f"{type(model).__name__} is in eval mode: call .train() on it before finetune (fine-tuning "
                          "runs in train mode, so its BatchNorm layers update their statistics)")
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError(f"{type(model).__name__} has no trainable parameters (every requires_grad is False)")
    return params


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.SGD:
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    decay = [p for n, p in named if p.ndim > 1]
    rest = [p for n, p in named if p.ndim <= 1]
    return torch.optim.SGD([{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}],
                           lr=lr, momentum=0.9)


def _ordered_parameters(opt: torch.optim.SGD) -> list[nn.Parameter]:
    """The optimizer's parameters in a fixed order: checkpoints name momentum buffers by this index."""
    return [p for group in opt.param_groups for p in group["params"]]


def _save(path: Path, model: nn.Module, opt: torch.optim.SGD, history: list[EpochRecord], settings: dict) -> None:
    tensors = {f"model.{k}": v for k, v in state_tensors(model).items()}
    for i, p in enumerate(_ordered_parameters(opt)):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"optim.{i}.momentum_buffer"] = buf
    write_tensors(path, tensors, {
        "format": FORMAT, "format_version": str(FORMAT_VERSION), "model_class": model_class(model),
        "layers": json.dumps(_layer_descriptions(model), sort_keys=True),
        "amax": json.dumps({n: layer.input_quantizer.amax for n, layer in prepared_layers(model)}),
        "history": json.dumps([asdict(r) for r in history]), "settings": json.dumps(settings, sort_keys=True)})


def _resume(path: Path, model: nn.Module, opt: torch.optim.SGD, settings: dict) -> list[EpochRecord]:
    meta, tensors = read_tensors(path, FORMAT, FORMAT_VERSION, "lowbit fine-tuning checkpoint")
    where = f"cannot resume from {path}"
    if meta.get("model_class") != model_class(model):
        raise CheckpointError(f"{where}: it was saved from a {meta.get('model_class')}, this model is a "
                              f"{model_class(model)}")
    saved, ours = json.loads(meta["layers"]), _layer_descriptions(model)
    if set(saved) != set(ours):
        diff = sorted(set(saved) ^ set(ours))
        raise CheckpointError(f"{where}: its quantized layers differ from this model's ({', '.join(diff[:5])})")
    for name in ours:
        if json.loads(json.dumps(ours[name])) != saved[name]:  # through JSON, as saved (tuples become lists)
            raise CheckpointError(f"{where}: layer {name!r} was quantized as {saved[name]['scheme']} "
                                  f"{saved[name]['options']}, here as {ours[name]['scheme']} {ours[name]['options']}")
    state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    expected = model.state_dict()
    if set(state) != set(expected) or any(state[k].shape != expected[k].shape for k in state):
        bad = sorted(k for k in set(state) | set(expected)
                     if k not in state or k not in expected or state[k].shape != expected[k].shape)
        raise CheckpointError(f"{where}: its tensors do not fit this model ({', '.join(bad[:5])})")
    model.load_state_dict(state)
    amax = json.loads(meta["amax"])
    for name, layer in prepared_layers(model):
        layer.input_quantizer.amax = amax[name]
    for i, p in enumerate(_ordered_parameters(opt)):
        buf = tensors.get(f"optim.{i}.momentum_buffer")
        if buf is not None:
            opt.state[p]["momentum_buffer"] = buf.to(p.device, p.dtype)
    saved_settings = json.loads(meta.get("settings", "{}"))
    changed = [f"{k} {saved_settings[k]!r} -> {settings[k]!r}" for k in sorted(settings)
               if k != "epochs" and k in saved_settings and saved_settings[k] != settings[k]]
    if changed:  # allowed (a lower lr after a diverged epoch), but the schedule changes mid-run: say so
        warnings.warn(f"resuming from {path} with other settings than it was trained with ({', '.join(changed)}): "
                      "the schedule goes on with the new ones", stacklevel=3)
    return [EpochRecord(**r) for r in json.loads(meta["history"])]


def _training_pair(batch, step: int):
    if not (isinstance(batch, (tuple, list)) and len(batch) == 2):
        raise ConfigError(f"train_data batch {step} is a {describe_batch(batch)}, not an (inputs, targets) pair")
    return batch


def _cross_entropy(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """F.cross_entropy, with a clear error for class labels the outputs do not have (-100 is ignored)."""
    if not targets.is_floating_point():
        bad = (targets >= outputs.shape[-1]) | ((targets < 0) & (targets != -100))
        if bool(bad.any()):
            raise DataError(f"train_data labels must be class indices in [0, {outputs.shape[-1] - 1}] (the model "
                            f"has {outputs.shape[-1]} outputs), got {int(targets[bad][0])}")
    return F.cross_entropy(outputs, targets)


def _check_loss(loss: torch.Tensor, epoch: int, step: int, warm: list[float], divergence_factor, checkpoint):
    value = float(loss)
    kept = (f"the last checkpoint, {checkpoint}, is intact (resume from it with a lower lr)" if checkpoint
            else "pass checkpoint_dir to keep a checkpoint of every epoch")
    if not math.isfinite(value):
        raise TrainingError(f"fine-tuning stopped at epoch {epoch + 1}, step {step + 1}: the loss is {value}; {kept}")
    if len(warm) < _WARM_STEPS:
        warm.append(value)
    elif divergence_factor is not None and value > divergence_factor * max(sum(warm) / len(warm), 1e-3):
        raise TrainingError(f"fine-tuning stopped at epoch {epoch + 1}, step {step + 1}: the loss {value:.4g} is over "
                            f"{divergence_factor:g}x its early mean {sum(warm) / len(warm):.4g} (exploding); {kept}")
    return value


def finetune(qmodel: nn.Module, train_data: Iterable, epochs: int | None = None, lr: float | None = None, *,
             preset: str = "cosine", schedule: str | None = None, loss_fn: Callable | None = None,
             eval_data: Iterable | None = None, checkpoint_dir=None, resume: bool = False,
             weight_decay: float = 1e-4, amp: bool | None = None, divergence_factor: float | None = 10.0,
             progress: bool | None = None) -> list[EpochRecord]:
    """Fine-tune ``qmodel`` (from :func:`lowbit.prepare`, in train mode) in place and leave it in eval
    mode; returns one record per epoch. Convert it for deployment afterwards with :func:`lowbit.convert`.

    train_data:     an iterable of (inputs, targets) batches, iterated once per epoch (a DataLoader;
                    an object with ``set_epoch(epoch)`` is told the epoch first).
    epochs, lr:     override the preset's ("step": 1 epoch at 1e-4; "cosine": 15 epochs from 1e-3).
    loss_fn:        loss_fn(outputs, targets); default cross-entropy.
    eval_data:      (inputs, labels) batches for top-1 accuracy after every epoch.
    checkpoint_dir: where ``finetune.safetensors`` is written after every epoch; with ``resume``
                    the run goes on from the one there (same model, scheme and options).
    amp:            bf16 autocast; default on CUDA.
    divergence_factor: stop when the loss exceeds this multiple of its early mean (None: only
                    a non-finite loss stops the run). A stopped run raises TrainingError, naming
                    the epoch and step; the checkpoint of the last finished epoch is kept.
    """
    epochs, lr, schedule = _settings(preset, epochs, lr, schedule)
    params = _check_trainable(qmodel)
    device = params[0].device
    amp = device.type == "cuda" if amp is None else amp
    loss_fn = loss_fn or _cross_entropy
    opt = _optimizer(qmodel, lr, weight_decay)
    checkpoint = Path(checkpoint_dir).expanduser() / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if checkpoint is not None and not checkpoint.parent.is_dir():
        if resume or not checkpoint.parent.parent.is_dir():
            raise ConfigError(f"checkpoint_dir {checkpoint.parent} does not exist")
        checkpoint.parent.mkdir()
    if resume and checkpoint is None:
        raise ConfigError("resume=True needs the checkpoint_dir to resume from")
    settings = {"preset": preset, "epochs": epochs, "lr": lr, "schedule": schedule, "weight_decay": weight_decay}
    if checkpoint is not None and checkpoint.exists() and not resume:
        raise ConfigError(f"{checkpoint} already exists: resume=True goes on from it; to start again, remove it "
                          "or choose another checkpoint_dir")
    history = _resume(checkpoint, qmodel, opt, settings) if resume else []
    if len(history) > epochs:
        raise ConfigError(f"{checkpoint} holds {len(history)} epochs already, more than the {epochs} asked for")
    steps = len(train_data) if hasattr(train_data, "__len__") else None
    warm: list[float] = []
    for epoch in range(len(history), epochs):
        if hasattr(train_data, "set_epoch"):
            train_data.set_epoch(epoch)
        qmodel.train()
        start, total, count, current_lr = time.perf_counter(), 0.0, 0, lr
        bar = progress_bar(train_data, total=steps, desc=f"fine-tuning epoch {epoch + 1}/{epochs}", unit="batch",
                           enable=progress)
        for step, batch in enumerate(bar):
            inputs, targets = _training_pair(batch, step)
            current_lr = learning_rate(schedule, lr, epoch, step, steps, epochs)
            for group in opt.param_groups:
                group["lr"] = current_lr
            inputs, targets = _to_device(inputs, device), _to_device(targets, device)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                loss = loss_fn(qmodel(inputs), targets)
            value = _check_loss(loss.detach().float(), epoch, step, warm, divergence_factor, checkpoint)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total, count = total + value, count + 1
            if step % 20 == 0:
                bar.set_postfix(loss=f"{value:.3f}", lr=f"{current_lr:.2g}")
        if count == 0:
            raise ConfigError("train_data yielded no batches")
        record = EpochRecord(epoch + 1, total / count, current_lr, time.perf_counter() - start)
        if eval_data is not None:
            from ..evaluate.metrics import top1_accuracy  # here: lowbit.evaluate's job runner imports this module

            record.accuracy, _ = top1_accuracy(qmodel, eval_data, device=device, progress=progress,
                                               desc=f"evaluating epoch {epoch + 1}")
            qmodel.train()
        history.append(record)
        if checkpoint is not None:
            _save(checkpoint, qmodel, opt, history, settings)
    qmodel.eval()
    return history
