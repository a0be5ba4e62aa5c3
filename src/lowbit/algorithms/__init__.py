"""Algorithms that change a quantized model's numbers: quantization-aware fine-tuning (qat)."""

from .qat import PRESETS, EpochRecord, finetune

__all__ = ["EpochRecord", "PRESETS", "finetune"]
