"""Registry of deployed quantized layer types, so checkpoints can rebuild them by name."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from ..errors import InputError
from ..numerics import count_nan

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


CHECK_EVERY = 64  # GPU calls between reads of a layer's input flags (a read waits for the GPU)


class DeployedLayer:
    """What deployed layers share: their name in the model, for messages (``info["name"]``, which the
    scheme sets at convert and the checkpoint at load), and the pace at which the flags their GPU kernels
    count in device memory (NaN or saturated inputs) are read back (``self._calls``, set by the layer)."""

    @property
    def name(self) -> str:
        return self.info.get("name", f"{self.layer_type} layer")

    def _flags_due(self) -> bool:
        """Count a GPU call: True every CHECK_EVERY calls, when the flags are to be read back, unless a
        CUDA graph is being captured."""
        self._calls += 1
        return self._calls % CHECK_EVERY == 0 and not torch.cuda.is_current_stream_capturing()

    def _refuse_nan(self, x: torch.Tensor) -> None:
        """The reference path's check of what the GPU kernels count: a clear error for NaN inputs."""
        nans = count_nan(x)
        if nans:
            raise InputError(f"layer {self.name!r}: {nans} NaN input value(s): they have no {self.layer_type} code")

    def _check_nan_count(self) -> None:
        """A clear error if the GPU kernel counted NaN inputs in ``nan_count`` (then reset)."""
        nans = int(self.nan_count)
        if nans:
            self.nan_count.zero_()
            raise InputError(f"layer {self.name!r}: {nans} NaN input value(s) (seen by the GPU kernel within the "
                             f"last {CHECK_EVERY} calls): they have no {self.layer_type} code")


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


def link_layers(model: nn.Module) -> list[str]:
    """Tell each deployed layer able to write the next layer's input in its own kernel (``link_next``: the
    bit-serial GEMM's epilogue writes the next one's bitplanes, one kernel fewer) which layer follows it
    directly in an nn.Sequential (nn.Identity, a folded ReLU, between them is skipped), or that none does.
    The layer takes it where the shapes fit. Returns the names of the layers linked."""
    linked = []
    for name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        children = [(n, m) for n, m in seq.named_children() if type(m) is not nn.Identity]
        for i, (layer_name, layer) in enumerate(children):
            if hasattr(layer, "link_next") and layer.link_next(children[i + 1][1] if i + 1 < len(children) else None):
                linked.append(f"{name}.{layer_name}" if name else layer_name)
    return linked


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    """The module holding the submodule of dotted ``name``, and that submodule's attribute name in it."""
    parent_name, _, child = name.rpartition(".")
    return (model.get_submodule(parent_name) if parent_name else model), child


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Put ``new`` where the submodule of dotted ``name`` is."""
    parent, child = _parent(model, name)
    setattr(parent, child, new)


def module_after(model: nn.Module, name: str) -> nn.Module | None:
    """The module that follows layer ``name`` in the nn.Sequential holding it, or None (last, or not in one)."""
    parent, child = _parent(model, name)
    if not isinstance(parent, nn.Sequential):
        return None
    names = [n for n, _ in parent.named_children()]
    i = names.index(child)
    return getattr(parent, names[i + 1]) if i + 1 < len(names) else None


def settle(model: nn.Module) -> None:
    """What a model needs once its deployed layers are in place (after convert, after loading a
    checkpoint): :func:`fold_relus`, then :func:`link_layers`."""
    fold_relus(model)
    link_layers(model)
