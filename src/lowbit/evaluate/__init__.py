"""Evaluation: metrics, the eval job and its report."""

from .metrics import top1_accuracy
from .report import Row, format_table, plot_rows, write_json
from .runner import default_calib_batches, evaluate_classifier, evaluate_default, tensor_batches

__all__ = ["Row", "default_calib_batches", "evaluate_classifier", "evaluate_default", "format_table", "plot_rows", "tensor_batches",
           "top1_accuracy", "write_json"]
