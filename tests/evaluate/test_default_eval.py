"""The main job on real data: the default model, FP32 vs INT8 and INT4 (PTQ and QAT), full 10k test set.

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
    rows = evaluate_default(schemes=("int8",), calibrators=("max", "percentile", "mse", "entropy"), qat_epochs=0,
                            progress=False)
    by_calibrator = {r.calibrator: r for r in rows}
    fp32 = by_calibrator[None]
    assert fp32.scheme == "fp32" and fp32.samples == 10000
    assert fp32.value >= 0.90
    for name in ("percentile", "entropy"):
        assert by_calibrator[name].drop <= 0.3, f"{name}: {by_calibrator[name].drop} points"
    for name in ("max", "mse"):
        assert by_calibrator[name].drop <= 1.0
    assert all(r.size_bytes < fp32.size_bytes / 3 for r in rows if r.scheme == "int8")


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_DATA, reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_int4_qat_closes_the_gap():
    """Issue 4's targets: INT4 after QAT within 1 point of FP32; PTQ alone measurably worse (3 min on 2 cores)."""
    fp32, ptq, qat = evaluate_default(schemes=("int4",), progress=False)
    assert (ptq.scheme, ptq.extra["qat_epochs"], qat.extra["qat_epochs"]) == ("int4", 0, 3)
    assert ptq.calibrator == "percentile 99.999" and qat.samples == 10000
    assert qat.drop <= 1.0, f"INT4 QAT is {qat.drop} points under FP32"
    assert ptq.drop >= qat.drop + 0.5, f"PTQ {ptq.drop} vs QAT {qat.drop} points"
    assert qat.size_bytes < fp32.size_bytes / 5
