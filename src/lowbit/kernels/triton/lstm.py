"""An LSTM step's element-wise part in one kernel: from the gate pre-activations (input part + hidden
part, gate order i, f, g, o) and the cell state to the new h and c. At batch 1 on a GPU the hidden
product takes a few microseconds; the ten element-wise kernels PyTorch launches for the same formula
took most of a step (benchmarks/bitserial.py, the char LSTM). On Hopper it is launched while the
hidden product runs (programmatic dependent launch) and waits for it. Where that product is a bit-serial
layer, the kernel also writes the new h as that layer's input planes (:class:`InputPlanes`), so the next
step needs no input kernel of its own."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra import libdevice
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait

from ..cuda import launches_early
from ..cuda.bitserial import InputPlanes

BLOCK = 256


@triton.jit
def _gate(gin_ptr, ghid_ptr, offs, mask):
    """One gate's pre-activation: its input part plus its hidden part, in float32."""
    return (tl.load(gin_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            + tl.load(ghid_ptr + offs, mask=mask, other=0.0).to(tl.float32))


@triton.jit
def _lstm_cell_kernel(gin_ptr, ghid_ptr, c_ptr, h_out_ptr, c_out_ptr, H, scale_ptr, qmin, qmax, act_bits, xplanes_ptr,
                      xsum_ptr, flags_ptr, words, BLOCK: tl.constexpr, EARLY: tl.constexpr, PLANES: tl.constexpr,
                      A8: tl.constexpr, RING: tl.constexpr):
    if EARLY:  # launched while the hidden product runs (Hopper): let the next step's kernels be launched
        gdc_launch_dependents()
    b = tl.program_id(0)
    j = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)  # hidden units of batch row b
    mask = j < H
    gate = b * 4 * H + j  # gate i of unit (b, j); f, g, o follow at + H, + 2H, + 3H
    # Every input is read after the wait: the kernels before this one may also have been launched early,
    # so even the input projection (a bit-serial layer too) may still be being written.
    if EARLY:
        gdc_wait()
    i = _gate(gin_ptr, ghid_ptr, gate, mask)
    f = _gate(gin_ptr, ghid_ptr, gate + H, mask)
    g = _gate(gin_ptr, ghid_ptr, gate + 2 * H, mask)
    o = _gate(gin_ptr, ghid_ptr, gate + 3 * H, mask)
    c = tl.load(c_ptr + b * H + j, mask=mask, other=0.0).to(tl.float32)
    c_new = tl.sigmoid(f) * c + tl.sigmoid(i) * libdevice.tanh(g)
    h = (tl.sigmoid(o) * libdevice.tanh(c_new)).to(h_out_ptr.dtype.element_ty)
    tl.store(c_out_ptr + b * H + j, c_new.to(c_out_ptr.dtype.element_ty), mask=mask)
    tl.store(h_out_ptr + b * H + j, h, mask=mask)
    if PLANES:
        # h's codes as the bit-serial input kernel makes them (IEEE division, ties to even), units past H
        # (the planes' padding) coded 0; a word = 32 units, one plane's bits of them.
        q = libdevice.rint(libdevice.div_rn(tl.where(mask, h.to(tl.float32), 0.0), tl.load(scale_ptr)))
        nan = q != q
        over = (q < qmin) | (q > qmax)
        code = tl.where(nan, 0.0, tl.minimum(tl.maximum(q, qmin), qmax)).to(tl.int32)
        n_over = tl.sum(over.to(tl.int64), axis=0)
        n_nan = tl.sum(nan.to(tl.int64), axis=0)
        tl.atomic_add(flags_ptr, n_over, mask=n_over > 0)
        tl.atomic_add(flags_ptr + 1, n_nan, mask=n_nan > 0)
        code2 = tl.reshape(code, (BLOCK // 32, 32))
        lane = tl.arange(0, 32)
        w = tl.program_id(1) * (BLOCK // 32) + tl.arange(0, BLOCK // 32)
        wmask = w < words
        if RING:
            at = (w & ~15) | ((w & 3) << 2) | ((w >> 2) & 3)
        else:
            at = w
        for p in tl.static_range(A8):
            bits = ((code2 >> p) & 1).to(tl.int64) << lane[None, :].to(tl.int64)
            word = tl.where(p < act_bits, tl.sum(bits, axis=1), 0).to(tl.int32)  # bit 31 wraps: two's complement
            tl.store(xplanes_ptr + (b * A8 + p) * words + at, word, mask=wmask)
        hw = tl.program_id(1) * (BLOCK // 16) + tl.arange(0, BLOCK // 16)  # half-words: their code sums
        tl.store(xsum_ptr + b * 2 * words + hw, tl.sum(tl.reshape(code, (BLOCK // 16, 16)), axis=1), mask=hw < 2 * words)


def lstm_cell_fits(gates_in: torch.Tensor, gates_hidden: torch.Tensor, c: torch.Tensor) -> bool:
    """Whether :func:`lstm_cell` takes these: CUDA tensors of one float dtype, contiguous, [B, 4H] and [B, H],
    none needing a gradient (the kernel has no backward: training keeps PyTorch's formula)."""
    tensors = (gates_in, gates_hidden, c)
    return (all(t.is_cuda and t.is_contiguous() and t.dtype == c.dtype for t in tensors) and c.is_floating_point()
            and c.dim() == 2 and gates_in.shape == gates_hidden.shape == (c.shape[0], 4 * c.shape[1])
            and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)))


def lstm_cell(gates_in: torch.Tensor, gates_hidden: torch.Tensor, c: torch.Tensor,
              planes: InputPlanes | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(h, c') for i, f, g, o = (gates_in + gates_hidden).chunk(4, -1): c' = sigmoid(f) c + sigmoid(i) tanh(g),
    h = sigmoid(o) tanh(c'), computed in float32 and stored in c's dtype; with ``planes``, h written as a
    bit-serial layer's input too (covering all its words; units past H are zeros)."""
    if not lstm_cell_fits(gates_in, gates_hidden, c):
        raise ValueError(f"lstm_cell takes contiguous CUDA tensors of one float dtype, gates [B, 4H] and cell state "
                         f"[B, H], without gradients; got gates {tuple(gates_in.shape)} {gates_in.dtype} {gates_in.device} and "
                         f"{tuple(gates_hidden.shape)} {gates_hidden.dtype}, state {tuple(c.shape)} {c.dtype}")
    b, hidden = c.shape
    if planes is not None and (planes.xsum.shape[0] != b or planes.words * 32 < hidden):
        raise ValueError(f"lstm_cell: input planes for {planes.xsum.shape[0]} rows of {planes.words * 32} units "
                         f"cannot hold h [{b}, {hidden}]")
    h_out, c_out = torch.empty_like(c), torch.empty_like(c)
    columns = planes.words * 32 if planes is not None else hidden
    if c.numel():
        early = launches_early(c.device)
        q = planes or InputPlanes(c, 0, 0, 0, c, c, c, 8, False)  # unused without PLANES
        with torch.cuda.device(c.device):
            _lstm_cell_kernel[(b, triton.cdiv(columns, BLOCK))](
                gates_in, gates_hidden, c, h_out, c_out, hidden, q.scale, q.qmin, q.qmax, q.act_bits, q.xplanes, q.xsum,
                q.flags, q.words, BLOCK=BLOCK, EARLY=early, PLANES=planes is not None, A8=q.a8, RING=q.ring,
                launch_pdl=early)
    return h_out, c_out
