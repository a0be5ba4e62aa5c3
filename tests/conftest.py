import os

import pytest
import torch

# One kernel config per shape instead of timing every candidate (tests/kernels/triton checks each).
os.environ.setdefault("LOWBIT_AUTOTUNE", "0")


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
