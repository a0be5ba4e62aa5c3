"""The main job on real data: the default model, FP32 vs INT8, full 10k test set.

Trains the default model on first use (a few minutes on 2 CPU cores, then cached).
"""

import pytest

from lowbit.data.fashion_mnist import find_fashion_mnist
from lowbit.errors import DataError
from lowbit.evaluate import evaluate_default

try:
    find_fashion_mnist()
    HAVE_DATA = True
except DataError:
    HAVE_DATA = False


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_int8_default_model_accuracy():
    rows = evaluate_default(calibrators=("max", "percentile", "mse", "entropy"), progress=False)
    by_calibrator = {r.calibrator: r for r in rows}
    fp32 = by_calibrator[None]
    assert fp32.scheme == "fp32" and fp32.samples == 10000
    assert fp32.value >= 0.90
    for name in ("percentile", "entropy"):
        assert by_calibrator[name].drop <= 0.3, f"{name}: {by_calibrator[name].drop} points"
    for name in ("max", "mse"):
        assert by_calibrator[name].drop <= 1.0
    assert all(r.size_bytes < fp32.size_bytes / 3 for r in rows if r.scheme == "int8")
