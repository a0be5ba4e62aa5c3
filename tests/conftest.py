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


class _FirstOutput(torch.nn.Module):
    """A module returning only the first of its inner module's outputs (an LSTM's sequence, without the
    state), so that it can be quantized and compared as a tensor-to-tensor model."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return self.inner(x)[0]


@pytest.fixture
def first_output():
    """Wraps a module so that it returns only its first output (see _FirstOutput)."""
    return _FirstOutput
