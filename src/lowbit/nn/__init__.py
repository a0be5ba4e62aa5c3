"""Quantized modules swapped into users' models."""

from .fake import FakeQuantConv1d, FakeQuantConv2d, FakeQuantLinear, fake_quant_layer
from .fused import Int8Conv2d, Int8ResidualBlock, Int8ResNet, fuse_resnet
from .geometry import QUANTIZABLE_TYPES, LayerGeometry
from .integer import IntegerLayer
from .lstm import GateLSTM, unroll_lstms
from .quantizer import ActivationQuantizer
from .registry import LAYER_TYPES, fold_relus, link_layers, quantized_layers, register_layer, settle

__all__ = ["ActivationQuantizer", "FakeQuantConv1d", "FakeQuantConv2d", "FakeQuantLinear", "Int8Conv2d",
           "GateLSTM", "Int8ResNet", "Int8ResidualBlock", "IntegerLayer", "LAYER_TYPES", "LayerGeometry",
           "QUANTIZABLE_TYPES",
           "fake_quant_layer", "fold_relus", "fuse_resnet", "link_layers", "quantized_layers", "register_layer",
           "settle", "unroll_lstms"]
