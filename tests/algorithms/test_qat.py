"""Quantization-aware fine-tuning: training, schedules, checkpoints, resume and bad input."""

import math
import re

import pytest
import torch
from torch import nn

import lowbit
from lowbit.algorithms.qat import CHECKPOINT_NAME, learning_rate
from lowbit.errors import CheckpointError, ConfigError, DataError, TrainingError


def _task(n=512, seed=0):
    """A separable 4-class problem on 16 features: QAT must lift the int4 accuracy."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, generator=g)
    y = (x[:, :4] * torch.tensor([1.0, -1.5, 2.0, 0.5])).argmax(1)
    return x, y


def _batches(x, y, size=64):
    return [(x[i:i + size], y[i:i + size]) for i in range(0, len(x), size)]


def _model(seed=0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 4))
    x, y = _task()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(200):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return model.eval()


def _prepared(model=None, **options):
    x, _ = _task()
    return lowbit.prepare(model or _model(), "int4", [x[:256]], "max", int8_edges=False, **options).train()


def _accuracy(model, x, y):
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def test_finetune_trains_the_fake_quantized_model_and_convert_deploys_it():
    x, y = _task()
    qat = _prepared()
    before = _accuracy(qat.eval(), x, y)
    history = lowbit.finetune(qat.train(), _batches(x, y), epochs=3, lr=0.05, eval_data=_batches(x, y))
    assert [r.epoch for r in history] == [1, 2, 3] and not qat.training
    assert history[-1].loss < history[0].loss and history[-1].accuracy > before
    deployed = lowbit.convert(qat)
    assert isinstance(deployed[2], lowbit.nn.IntegerLayer) and deployed[2].packed
    assert abs(_accuracy(deployed, x, y) - history[-1].accuracy) <= 0.01  # integer model = fake-quant model
    assert isinstance(qat[2], lowbit.nn.FakeQuantLinear)  # convert copied


def test_activation_ranges_stay_fixed():
    x, y = _task()
    qat = _prepared()
    scales = [m.input_quantizer.scale.clone() for _, m in lowbit.pipeline.prepared_layers(qat)]
    lowbit.finetune(qat, _batches(x, y), epochs=1, lr=0.05)
    assert all(torch.equal(a, m.input_quantizer.scale) for a, (_, m) in zip(scales, lowbit.pipeline.prepared_layers(qat)))


def test_schedules():
    assert learning_rate("step", 1e-4, 0, 5, 10, 3) == 1e-4
    assert learning_rate("step", 1e-4, 2, 0, 10, 3) == pytest.approx(1e-6)
    assert learning_rate("cosine", 1e-3, 0, 0, 10, 2) == pytest.approx(1e-3)
    assert learning_rate("cosine", 1e-3, 1, 9, 10, 2) == pytest.approx(1e-5)
    mid = learning_rate("cosine", 1e-3, 1, 0, 10, 2)
    assert 1e-5 < mid < 1e-3 and mid == pytest.approx(1e-3 * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * 10 / 19))))
    with pytest.raises(ConfigError, match="schedule='linear'"):
        lowbit.finetune(_prepared(), _batches(*_task()), schedule="linear")
    with pytest.raises(ConfigError, match="preset='fast'"):
        lowbit.finetune(_prepared(), _batches(*_task()), preset="fast")
    with pytest.raises(ConfigError, match="epochs=0"):
        lowbit.finetune(_prepared(), _batches(*_task()), epochs=0)
    for lr in (float("nan"), float("inf"), 1e308, True, -1e-3):  # 1e308 overflowed inside the optimizer
        with pytest.raises(ConfigError, match=re.escape(f"lr={lr!r} is invalid: expected a positive number")):
            lowbit.finetune(_prepared(), _batches(*_task()), lr=lr)


def test_bad_models_are_refused():
    x, y = _task()
    with pytest.raises(ConfigError, match="eval mode"):
        lowbit.finetune(_prepared().eval(), _batches(x, y), epochs=1)
    with pytest.raises(ConfigError, match="no fake-quantized layer"):
        lowbit.finetune(lowbit.quantize(_model(), "int4", [x], "max").train(), _batches(x, y), epochs=1)
    frozen = _prepared()
    frozen.requires_grad_(False)
    with pytest.raises(ConfigError, match="no trainable parameters"):
        lowbit.finetune(frozen, _batches(x, y), epochs=1)
    with pytest.raises(ConfigError, match="no batches"):
        lowbit.finetune(_prepared(), [], epochs=1)


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    x, y = _task()
    data = _batches(x, y)
    straight = _prepared()
    lowbit.finetune(straight, data, epochs=3, lr=0.05)
    first = _prepared()
    lowbit.finetune(first, data, epochs=1, lr=0.05, checkpoint_dir=tmp_path)  # stops after epoch 1 of 1 ...
    resumed = _prepared()  # ... a new process: prepare again, then resume with the full plan
    history = lowbit.finetune(resumed, data, epochs=3, lr=0.05, checkpoint_dir=tmp_path, resume=True)
    assert [r.epoch for r in history] == [1, 2, 3]
    # epoch 1 ran under a 1-epoch cosine, so only later epochs match the straight run's schedule; the
    # weights must at least have moved on from the checkpoint and the file must now hold 3 epochs
    assert not torch.equal(resumed[0].weight, first[0].weight)
    again = _prepared()
    assert len(lowbit.finetune(again, data, epochs=3, lr=0.05, checkpoint_dir=tmp_path, resume=True)) == 3
    assert torch.equal(again[0].weight, resumed[0].weight)  # nothing left to do: the checkpoint's weights


def test_resume_is_bit_exact_with_an_uninterrupted_run(tmp_path):
    x, y = _task()
    data = _batches(x, y)

    class StopAfter:
        """Batches that raise KeyboardInterrupt in the middle of epoch ``stop`` (a ctrl-C)."""

        def __init__(self, stop):
            self.stop, self.epoch = stop, 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __len__(self):
            return len(data)

        def __iter__(self):
            for i, batch in enumerate(data):
                if self.epoch == self.stop and i == 3:
                    raise KeyboardInterrupt
                yield batch

    straight = _prepared()
    lowbit.finetune(straight, data, epochs=3, lr=0.05, preset="step")
    interrupted = _prepared()
    with pytest.raises(KeyboardInterrupt):
        lowbit.finetune(interrupted, StopAfter(2), epochs=3, lr=0.05, preset="step", checkpoint_dir=tmp_path)
    assert (tmp_path / CHECKPOINT_NAME).exists() and len(list(tmp_path.iterdir())) == 1  # no temp file left
    resumed = _prepared()
    history = lowbit.finetune(resumed, data, epochs=3, lr=0.05, preset="step", checkpoint_dir=tmp_path, resume=True)
    assert [r.epoch for r in history] == [1, 2, 3]
    for a, b in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_resume_refuses_another_model_or_scheme(tmp_path):
    x, y = _task()
    lowbit.finetune(_prepared(), _batches(x, y), epochs=1, checkpoint_dir=tmp_path)
    other = lowbit.prepare(_model(), "int4", [x[:256]], "max").train()  # int8 edges: other formats
    with pytest.raises(CheckpointError, match="layer '0' was quantized as int4"):
        lowbit.finetune(other, _batches(x, y), epochs=2, checkpoint_dir=tmp_path, resume=True)
    wider = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 4))
    with pytest.raises(CheckpointError, match="do not fit"):
        lowbit.finetune(_prepared(wider.eval()), _batches(x, y), epochs=2, checkpoint_dir=tmp_path, resume=True)
    lowbit.save(lowbit.quantize(_model(), "int4", [x], "max"), tmp_path / "deployed.safetensors")
    (tmp_path / "deployed.safetensors").rename(tmp_path / CHECKPOINT_NAME)
    with pytest.raises(CheckpointError, match="not a lowbit fine-tuning checkpoint"):
        lowbit.finetune(_prepared(), _batches(x, y), epochs=2, checkpoint_dir=tmp_path, resume=True)
    with pytest.raises(ConfigError, match="resume=True needs the checkpoint_dir"):
        lowbit.finetune(_prepared(), _batches(x, y), epochs=2, resume=True)


def test_non_finite_loss_stops_and_keeps_the_last_checkpoint(tmp_path):
    x, y = _task()
    data = _batches(x, y)
    poisoned = [(b[0].clone(), b[1]) for b in data]
    poisoned[2][0][0, 0] = float("nan")

    class PoisonSecondEpoch:
        def __init__(self):
            self.epoch = 0

        def set_epoch(self, epoch):
            self.epoch = epoch

        def __iter__(self):
            return iter(poisoned if self.epoch == 1 else data)

    qat = _prepared()
    with pytest.raises(TrainingError, match=r"epoch 2, step 3: the loss is nan; the last checkpoint.*is intact"):
        lowbit.finetune(qat, PoisonSecondEpoch(), epochs=3, lr=0.05, checkpoint_dir=tmp_path)
    resumed = _prepared()
    assert len(lowbit.finetune(resumed, data, epochs=1, checkpoint_dir=tmp_path, resume=True)) == 1


def test_exploding_loss_stops():
    x, y = _task()
    with pytest.raises(TrainingError, match="exploding"):
        lowbit.finetune(_prepared(), _batches(x, y, 16) * 4, epochs=1, lr=1e4, preset="step", divergence_factor=3)


@pytest.mark.gpu
def test_finetune_on_cuda_with_bf16_autocast():
    x, y = _task()
    qat = _prepared().cuda().train()
    before = _accuracy(qat.eval(), x.cuda(), y.cuda())
    history = lowbit.finetune(qat.train(), _batches(x, y), epochs=3, lr=0.05)  # batches move to the model's GPU
    assert all(math.isfinite(r.loss) for r in history)
    deployed = lowbit.convert(qat)
    assert deployed[2].qweight.is_cuda and deployed[2].packed
    assert _accuracy(deployed, x.cuda(), y.cuda()) > before


def test_a_checkpoint_is_not_overwritten_without_resume_and_changes_on_resume_are_reported(tmp_path):
    x, y = _task()
    lowbit.finetune(_prepared(), _batches(x, y), epochs=2, lr=0.05, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="finetune.safetensors already exists: resume=True goes on from it"):
        lowbit.finetune(_prepared(), _batches(x, y), epochs=2, lr=0.05, checkpoint_dir=tmp_path)
    with pytest.raises(ConfigError, match="holds 2 epochs already, more than the 1 asked for"):
        lowbit.finetune(_prepared(), _batches(x, y), epochs=1, lr=0.05, checkpoint_dir=tmp_path, resume=True)
    with pytest.warns(UserWarning, match=r"other settings than it was trained with \(lr 0.05 -> 0.01\)"):
        lowbit.finetune(_prepared(), _batches(x, y), epochs=3, lr=0.01, checkpoint_dir=tmp_path, resume=True)


def test_training_batches_and_labels_are_checked():
    x, y = _task()
    with pytest.raises(ConfigError, match=r"train_data batch 0 is a float32 tensor of shape .*, not an \(inputs, targets\)"):
        lowbit.finetune(_prepared(), [x], epochs=1)
    with pytest.raises(DataError, match=r"labels must be class indices in \[0, [0-9]+\] .* got 99"):
        lowbit.finetune(_prepared(), [(x, torch.full_like(y, 99))], epochs=1)


def test_a_new_checkpoint_folder_is_created_but_not_its_parents(tmp_path):
    x, y = _task()
    lowbit.finetune(_prepared(), _batches(x, y), epochs=1, checkpoint_dir=tmp_path / "runs")
    assert (tmp_path / "runs" / "finetune.safetensors").is_file()
    with pytest.raises(ConfigError, match="checkpoint_dir .*missing/runs does not exist"):
        lowbit.finetune(_prepared(), _batches(x, y), epochs=1, checkpoint_dir=tmp_path / "missing" / "runs")
