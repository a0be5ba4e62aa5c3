"""An LSTM step's element-wise part in one kernel: from the gate pre-activations (input part + hidden
part, gate order i, f, g, o) and the cell state to the new h and c. At batch 1 on a GPU the hidden
product takes a few microseconds; the ten element-wise kernels PyTorch launches for the same formula
took most of a step (benchmarks/bitserial.py, the char LSTM). On Hopper it is launched while the
hidden product runs (programmatic dependent launch) and waits for it."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..cuda import launches_early

BLOCK = 256


@triton.jit
def _gate(gin_ptr, ghid_ptr, offs, mask):
    """One gate's pre-activation: its input part plus its hidden part, in float32."""
    return tl.load(gin_ptr + offs, mask=mask).to(tl.float32) + tl.load(ghid_ptr + offs, mask=mask).to(tl.float32)


@triton.jit
def _lstm_cell_kernel(gin_ptr, ghid_ptr, c_ptr, h_out_ptr, c_out_ptr, H, total, BLOCK: tl.constexpr,
                      EARLY: tl.constexpr):
    if EARLY:  # launched while the hidden product runs (Hopper): let the next step's kernels be launched
        gdc_launch_dependents()
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < total
    b = offs // H
    gate = b * 4 * H + (offs - b * H)  # gate i of unit (b, j); f, g, o follow at + H, + 2H, + 3H
    # Every input is read after the wait: the kernels before this one may also have been launched early,
    # so even the input projection (a bit-serial layer too) may still be being written.
    if EARLY:
        gdc_wait()
    i = _gate(gin_ptr, ghid_ptr, gate, mask)
    f = _gate(gin_ptr, ghid_ptr, gate + H, mask)
    g = _gate(gin_ptr, ghid_ptr, gate + 2 * H, mask)
    o = _gate(gin_ptr, ghid_ptr, gate + 3 * H, mask)
    c = tl.load(c_ptr + offs, mask=mask).to(tl.float32)
    c_new = tl.sigmoid(f) * c + tl.sigmoid(i) * libdevice.tanh(g)
    h = tl.sigmoid(o) * libdevice.tanh(c_new)
    tl.store(c_out_ptr + offs, c_new.to(c_out_ptr.dtype.element_ty), mask=mask)
    tl.store(h_out_ptr + offs, h.to(h_out_ptr.dtype.element_ty), mask=mask)


def lstm_cell_fits(gates_in: torch.Tensor, gates_hidden: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether :func:`lstm_cell` takes these: CUDA tensors of one float dtype, contiguous, [B, 4H] and [B, H],
    none needing a gradient (the kernel has no backward: training keeps PyTorch's formula)."""
    tensors = (gates_in, gates_hidden, c)
    return (all(t.is_cuda and t.is_contiguous() and t.dtype == c.dtype for t in tensors) and c.is_floating_point()
            and c.dim() == 2 and gates_in.shape == gates_hidden.shape == (c.shape[0], 4 * c.shape[1])
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def lstm_cell(gates_in: torch.Tensor, gates_hidden: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c') for i, f, g, o = (gates_in + gates_hidden).chunk(4, -1): c' = sigmoid(f) c + sigmoid(i) tanh(g),
    h = sigmoid(o) tanh(c'), computed in float32 and stored in c's dtype."""
    if not lstm_cell_fits(gates_in, gates_hidden, c):
        raise ValueError(f"lstm_cell takes contiguous CUDA tensors of one float dtype, gates [B, 4H] and cell state "
                         f"[B, H], without gradients; got gates {tuple(gates_in.shape)} {gates_in.dtype} {gates_in.device} and "
                         f"{tuple(gates_hidden.shape)} {gates_hidden.dtype}, state {tuple(c.shape)} {c.dtype}")
    h_out, c_out = torch.empty_like(c), torch.empty_like(c)
    total = c.numel()
    if total:
        early = launches_early(c.device)
        with torch.cuda.device(c.device):
            _lstm_cell_kernel[(triton.cdiv(total, BLOCK),)](gates_in, gates_hidden, c, h_out, c_out, c.shape[1], total,
                                                            BLOCK=BLOCK, EARLY=early, launch_pdl=early)
    return h_out, c_out
