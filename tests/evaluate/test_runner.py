"""The evaluation runner on a small model: one row per (scheme, calibrator) that means something."""

import warnings

import pytest
import torch
from torch import nn

from lowbit.errors import ConfigError
from lowbit.evaluate.runner import evaluate_classifier, scheme_calibrators, tensor_batches


def test_a_scheme_that_calibrates_nothing_gets_one_row_without_a_calibrator():
    assert scheme_calibrators("w4a16", ["max", "entropy"]) == [(None, {})]
    assert scheme_calibrators("int8", ["max", "entropy"]) == [("max", {}), ("entropy", {})]
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))
    g = torch.Generator().manual_seed(1)
    images, labels = torch.randn(40, 12, generator=g), torch.randint(0, 4, (40,), generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "calibrator not used" warning from prepare
        rows = evaluate_classifier("mlp", model, tensor_batches(images, None, 20), tensor_batches(images, labels, 20),
                                   schemes=("int8", "w4a16"), calibrators=["max", "entropy"], progress=False)
    assert [(r.scheme, r.calibrator) for r in rows] == [("fp32", None), ("int8", "max"), ("int8", "entropy"),
                                                         ("w4a16", None)]
    assert all(r.samples == 40 for r in rows)


def test_more_calibration_images_than_the_training_set_is_refused_before_any_training(monkeypatch):
    from lowbit.evaluate import runner

    seven = (torch.zeros(7, 28, 28, dtype=torch.uint8), torch.zeros(7, dtype=torch.int64))
    monkeypatch.setattr(runner, "load_fashion_mnist", lambda split, root=None: seven)
    monkeypatch.setattr(runner, "default_model", lambda **kw: pytest.fail("trained before checking calib_samples"))
    assert len(runner.default_calib_batches(7)[0]) == 7
    with pytest.raises(ConfigError, match="calib_samples=8: the calibration images are drawn from the 7 training"):
        runner.evaluate_default(calib_samples=8, progress=False)
