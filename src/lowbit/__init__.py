"""lowbit: low-precision inference for PyTorch models.

    qmodel = lowbit.quantize(model, "int8", calib_data=loader, calibrator="entropy")
    lowbit.save(qmodel, "model.lowbit.safetensors")

    qat = lowbit.prepare(model, "int4", calib_data=loader).train()   # fake-quantized, float weights
    lowbit.finetune(qat, train_loader, epochs=2, eval_data=test_loader, checkpoint_dir="runs")
    qmodel = lowbit.convert(qat)
    qmodel = lowbit.load("model.lowbit.safetensors", fresh_float_model)
    fast = lowbit.fuse_resnet(qmodel)   # a ResNet in int8 from layer to layer (GPU kernels on CUDA)
"""

__version__ = "0.1.0"

from . import calib, numerics, schemes  # noqa: E402
from .calib import compute_amax  # noqa: E402
from .checkpoint import load, save  # noqa: E402
from .cuda_graphs import CudaGraphModule  # noqa: E402
from .algorithms import finetune  # noqa: E402
from .errors import (CalibrationError, CheckpointError, ConfigError, DataError, InputError, LowbitError,  # noqa: E402
                     TrainingError)
from .nn import fuse_resnet  # noqa: E402
from .nn.bitserial import set_bitlayers  # noqa: E402
from .pipeline import calibrate, convert, prepare, quantizable_layers, quantize  # noqa: E402
from .schemes import SCHEMES  # noqa: E402
from .sizes import model_size_bytes  # noqa: E402

__all__ = ["CalibrationError", "CheckpointError", "ConfigError", "CudaGraphModule", "DataError", "InputError",
           "LowbitError", "SCHEMES", "TrainingError", "calib", "calibrate", "compute_amax", "convert", "finetune", "fuse_resnet",
           "load", "model_size_bytes", "numerics", "prepare", "quantizable_layers", "quantize", "save", "schemes", "set_bitlayers"]
