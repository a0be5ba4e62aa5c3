import contextlib

import pytest


@pytest.fixture
def pinned_config():
    """Run an autotuned kernel with one given config (the autotuner then times nothing)."""

    @contextlib.contextmanager
    def pin(kernel, config):
        saved = kernel.configs, dict(kernel.cache)
        kernel.configs = [config]
        kernel.cache.clear()
        try:
            yield
        finally:
            kernel.configs = saved[0]
            kernel.cache.clear()
            kernel.cache.update(saved[1])

    return pin
