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


def fold_relus(model: nn.Module) -> list[str]:
    """Fold each nn.ReLU that directly follows, in an nn.Sequential, a deployed layer able to apply it to
    its own output (``folds_relu``: the GPU kernel's epilogue does it, one kernel fewer): the layer's
    ``relu`` is set and the ReLU becomes nn.Identity. ReLU(ReLU(y)) = ReLU(y), so a layer loaded with
    ``relu`` set before its ReLU is folded again stays correct. Returns the names of the layers folded."""
    folded = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = list(seq.named_children())
        for (layer_name, layer), (relu_name, relu) in zip(children, children[1:]):
            if getattr(layer, "folds_relu", False) and type(relu) is nn.ReLU:
                layer.relu = True
                setattr(seq, relu_name, nn.Identity())
                folded.append(f"{name}.{layer_name}" if name else layer_name)
    return folded
