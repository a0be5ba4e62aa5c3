"""How many bytes a model's weights take."""

from torch import nn


def model_size_bytes(model: nn.Module) -> int:
    """Bytes of every parameter and buffer in the state dict (shared tensors once):
    what a checkpoint stores, and what the weights occupy in memory."""
    seen, total = set(), 0
    for t in model.state_dict().values():
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), t.numel(), t.dtype) if t.numel() else None
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total
