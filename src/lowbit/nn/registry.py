"""Registry of deployed quantized layer types, so checkpoints can rebuild them by name."""

from __future__ import annotations

from collections.abc import Iterator

from torch import nn

LAYER_TYPES: dict[str, type] = {}


def register_layer(cls: type) -> type:
    """Class decorator: a deployed layer with ``layer_type``, ``describe()`` and ``from_description()``."""
    LAYER_TYPES[cls.layer_type] = cls
    return cls


def quantized_layers(model: nn.Module) -> Iterator[tuple[str, nn.Module]]:
    """(qualified name, module) of every deployed quantized layer in ``model``."""
    for name, module in model.named_modules():
        if type(module).__dict__.get("layer_type") in LAYER_TYPES:
            yield name, module
