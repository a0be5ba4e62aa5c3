"""Quantized modules swapped into users' models."""

from .fake import FakeQuantConv1d, FakeQuantConv2d, FakeQuantLinear, fake_quant_layer
from .geometry import QUANTIZABLE_TYPES, LayerGeometry
from .integer import IntegerLayer
from .quantizer import ActivationQuantizer
from .registry import LAYER_TYPES, quantized_layers, register_layer

__all__ = ["ActivationQuantizer", "FakeQuantConv1d", "FakeQuantConv2d", "FakeQuantLinear", "IntegerLayer",
           "LAYER_TYPES", "LayerGeometry", "QUANTIZABLE_TYPES", "fake_quant_layer", "quantized_layers",
           "register_layer"]
