"""Replay a module's GPU work as one CUDA graph: at small batches, launching dozens of kernels
from Python costs more than running them."""

from __future__ import annotations

import torch
from torch import nn


class CudaGraphModule:
    """``module`` captured on inputs shaped like ``example``; calling it copies the input into
    the captured buffer, replays the graph and returns the captured output tensor, which the
    next call overwrites (clone it to keep it).

    The module must not wait for the GPU (no ``.item()``) nor change shapes between calls;
    lowbit's fused and integer layers qualify. Warm-up calls on the capture stream run the
    Triton autotuners and allocate workspaces before capture.
    """

    def __init__(self, module: nn.Module, example: torch.Tensor, warmup: int = 3):
        if not isinstance(example, torch.Tensor) or not example.is_cuda:
            raise ValueError("CudaGraphModule needs an example input tensor on a CUDA device")
        self.module = module
        self.static_input = example.clone()
        stream = torch.cuda.Stream(example.device)
        stream.wait_stream(torch.cuda.current_stream(example.device))
        with torch.no_grad(), torch.cuda.stream(stream):
            for _ in range(warmup):
                module(self.static_input)
        stream.synchronize()
        self.graph = torch.cuda.CUDAGraph()
        with torch.no_grad(), torch.cuda.graph(self.graph, stream=stream):
            self.static_output = module(self.static_input)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape != self.static_input.shape or x.dtype != self.static_input.dtype:
            raise ValueError(f"this graph was captured for {self.static_input.dtype} {tuple(self.static_input.shape)}, "
                             f"got {x.dtype} {tuple(x.shape)}: capture another for this shape")
        self.static_input.copy_(x)
        self.graph.replay()
        return self.static_output
