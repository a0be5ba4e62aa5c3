"""GPTQ, DPQ and GAR (design.md 2.3) for grouped INT4 weights.

GPTQ quantizes a weight W [N, K] one column at a time, in blocks of 128, and pushes each column's
error into the columns not yet quantized, weighted by the inverse Hessian of the layer's inputs
(H = 2 X^T X / n over the calibration tokens, damped by 1% of its mean diagonal). Its quantizer is
INT4 alone; W4A8's FP8 conversion comes afterwards, unseen. DPQ is the same loop whose quantizer is
the composed one the kernel computes, ``s8 * e4m3(Q4(w / s8))``, so the FP8 rounding error is pushed
on too. GAR (group-aware reordering) visits the columns by decreasing diag(H) inside each group and
the groups by their largest diag(H); columns never leave their group, so the codes are put back in
their original order afterwards and inference pays nothing for it.

:func:`gptq_model` runs it over a prepared model, layer after layer, so that each layer's Hessian
comes from inputs that went through the layers quantized before it (and through the fake-quantized
activations). Layers of a model's repeated blocks (an ``nn.ModuleList`` such as a transformer's
``layers``) are done block by block on cached block inputs; other layers with whole-model passes.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import CalibrationError
from ..nn.weight_quantizer import ColumnQuantizer, Int4GroupCodes
from ..numerics.groupwise import num_groups
from ..progress import progress_bar

ALGORITHMS = ("rtn", "gptq", "dpq")
DEFAULT_DAMP = 0.01
BLOCK_SIZE = 128
MAX_DAMP_TRIES = 8


@dataclass
class GPTQResult:
    codes: Int4GroupCodes
    damp: float  # the damping that made the Cholesky succeed (relative to mean diag(H))
    loss: float  # sum over columns of err^2 / Hinv_ii: GPTQ's objective, for comparisons


def gar_permutation(hessian_diag: torch.Tensor, group_size: int) -> torch.Tensor:
    """Group-aware reordering: columns by decreasing diag(H) within their group, whole groups by their
    largest diag(H). A shorter last group is reordered inside but stays last, so that every group
    still starts at a multiple of the group size."""
    k = len(hessian_diag)
    full = k // group_size * group_size
    d = hessian_diag[:full].reshape(-1, group_size)
    within = torch.argsort(d, dim=1, descending=True, stable=True)
    order = torch.argsort(d.max(1).values, descending=True, stable=True)
    tail = full + torch.argsort(hessian_diag[full:], descending=True, stable=True)
    return torch.cat([(order[:, None] * group_size + within[order]).reshape(-1), tail])


def _block_size(group_size: int, k: int) -> int:
    """Blocks that never cut a group whose parameters are fitted mid-block: a multiple of the group
    when groups are small, a divisor of it when they are large (per channel: one group, any block)."""
    if group_size >= k:
        return BLOCK_SIZE
    if group_size <= BLOCK_SIZE:
        return (BLOCK_SIZE // group_size) * group_size
    return math.gcd(group_size, BLOCK_SIZE)


def _inverse_cholesky(h: torch.Tensor, damp: float, name: str) -> tuple[torch.Tensor, float]:
    """Upper Cholesky factor of (H + damp * mean(diag H) * I)^-1 in float64; the damping grows x10 until
    the factorization succeeds (a warning names the layer and the damping used)."""
    mean_diag = float(h.diagonal().mean())
    eye = torch.eye(len(h), dtype=h.dtype, device=h.device)
    for attempt in range(MAX_DAMP_TRIES):
        lower, info = torch.linalg.cholesky_ex(h + damp * mean_diag * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and torch.isfinite(upper).all():
                if attempt:
                    warnings.warn(f"{name}: the Hessian was not positive definite; damping raised to {damp:g} x "
                                  "its mean diagonal", stacklevel=3)
                return upper, damp
        damp *= 10
    raise CalibrationError(f"{name}: the Hessian stays singular even with damping {damp / 10:g} x its mean "
                           "diagonal; give more (or more varied) calibration data")


def gptq_quantize(weight: torch.Tensor, hessian: torch.Tensor, quantizer: ColumnQuantizer, *,
                  damp: float = DEFAULT_DAMP, gar: bool = False, name: str = "weight") -> GPTQResult:
    """GPTQ (or DPQ, by the quantizer's ``composed``) of ``weight`` [N, K] with input Hessian [K, K]."""
    return gptq_quantize_stacked([weight], hessian, [quantizer], damp=damp, gar=gar, name=name)[0]


def gptq_quantize_stacked(weights: Sequence[torch.Tensor], hessian: torch.Tensor,
                          quantizers: Sequence[ColumnQuantizer], *, damp: float = DEFAULT_DAMP, gar: bool = False,
                          name: str = "weight") -> list[GPTQResult]:
    """GPTQ of weights [N_i, K] that share one input Hessian (a transformer's q / k / v, gate / up) as one
    stacked weight, each divided by its own tensor scale (a power of two: exactly). GPTQ's rows are
    independent, each pushing its errors into its own later columns, so every weight gets the codes it
    would get alone, while the column loop, whose small per-column operations take most of GPTQ's time,
    runs once instead of once a weight."""
    if len({q.grid for q in quantizers}) != 1:
        raise ValueError(f"{name}: weights quantized together need one group size, symmetry and quantizer")
    quantizer = ColumnQuantizer(torch.ones(()), *quantizers[0].grid)
    w = torch.cat([wt.detach().float() / q.tensor_scale for wt, q in zip(weights, quantizers)])
    n, k = w.shape
    g = quantizer.group_size
    h = hessian.detach().double().clone()
    dead = h.diagonal() == 0  # inputs that were always 0: their weights cannot matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    perm = gar_permutation(h.diagonal(), g) if gar else torch.arange(k, device=w.device)
    original_groups = (perm[::g] // g).tolist()  # each group's place before GAR, read once (not a sync a group)
    w, h = w[:, perm], h[perm][:, perm]
    hinv_u, used_damp = _inverse_cholesky(h, damp, name)
    hinv = hinv_u.float()

    codes = torch.zeros(n, k, device=w.device)  # 0..15 as floats until the end
    scale = torch.ones(n, num_groups(k, g), device=w.device)
    zero = torch.zeros(n, num_groups(k, g), dtype=torch.uint8, device=w.device)
    row_loss = torch.zeros(n, device=w.device)
    block = _block_size(g, k)
    for i1 in range(0, k, block):
        i2 = min(i1 + block, k)
        w1 = w[:, i1:i2].clone()
        err1 = torch.zeros_like(w1)
        h1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:  # a new group: fit it to its columns as they stand now
                group = w1[:, i:i + g] if g <= block or i + g <= i2 - i1 else w[:, col:col + g]
                s, z = quantizer.fit(group)
                scale[:, original_groups[col // g]], zero[:, original_groups[col // g]] = s, z
                z = z.float()
            codes[:, col], q = quantizer.round(w1[:, i], s, z)
            e = (w1[:, i] - q) / h1[i, i]
            w1[:, i:] -= e[:, None] * h1[i, i:][None, :]
            err1[:, i] = e
        row_loss += err1.square().sum(1) / 2  # err^2 / Hinv_ii^2 / 2 a column
        w[:, i2:] -= err1 @ hinv[i1:i2, i2:]
    unpermuted = torch.empty(n, k, dtype=torch.uint8, device=w.device)
    unpermuted[:, perm] = codes.to(torch.uint8)
    results, start = [], 0
    for weight, q in zip(weights, quantizers):
        rows = slice(start, start + len(weight))
        start = rows.stop
        codes_i = Int4GroupCodes(unpermuted[rows], scale[rows], zero[rows], torch.tensor(q.tensor_scale), g)
        results.append(GPTQResult(codes_i, used_damp, float(row_loss[rows].sum()) * q.tensor_scale ** 2))
    return results


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the layers of interest have run."""


class _HessianCollector:
    """2 X^T X / n of what a fake-quantized layer multiplies: its input after its input quantizer."""

    def __init__(self, layer: nn.Module):
        k = layer.weight.shape[1]
        self.sum = torch.zeros(k, k, device=layer.weight.device)
        self.rows = 0

    def __call__(self, module, args):
        x = module.input_quantizer(args[0].detach()).float()
        x = x.reshape(-1, x.shape[-1])
        self.sum += x.t() @ x
        self.rows += len(x)

    def hessian(self) -> torch.Tensor:
        return 2 * self.sum / max(self.rows, 1)


def _call_all(run, inputs: Sequence) -> None:
    for item in inputs:
        try:
            run(item)
        except _Stop:
            pass


def _execution_groups(run, first_input, layers: dict[str, nn.Module]) -> list[list[str]]:
    """The layers in the order they run on one input, consecutive layers that read the same
    tensor (q/k/v, gate/up) grouped: they share one Hessian."""
    # The inputs themselves, not their id(): a tensor freed during the pass (o_proj's input) may hand
    # its id to the next one (the MLP's input), which would put unrelated layers in one group.
    seen: list[tuple[str, torch.Tensor]] = []
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: seen.append((n, args[0])))
             for n, m in layers.items()]
    try:
        _call_all(run, [first_input])
    finally:
        for hk in hooks:
            hk.remove()
    missing = sorted(set(layers) - {name for name, _ in seen})
    if missing:
        raise CalibrationError(f"layers {', '.join(map(repr, missing))} never ran on the calibration data, so GPTQ "
                               "has no Hessian for them; keep them in float (skip=...) or check that calib_data "
                               "reaches them")
    groups: list[list[str]] = []
    last_input = None
    for name, tensor in seen:
        if any(name in grp for grp in groups):
            continue  # a layer called twice is quantized once, from its first call's group
        if groups and tensor is last_input:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_input = tensor
    return groups


def _stop(*_):
    raise _Stop


def _quantize_group(run, inputs: Sequence, names: list[str], layers: dict[str, nn.Module], algorithm: str,
                    gar: bool, damp: float, done: dict) -> None:
    """Collect the group's Hessian over ``inputs`` (stopping after its last layer), then quantize it."""
    collector = _HessianCollector(layers[names[0]])
    hooks = [layers[names[0]].register_forward_pre_hook(collector),
             layers[names[-1]].register_forward_hook(_stop)]
    try:
        _call_all(run, inputs)
    finally:
        for hk in hooks:
            hk.remove()
    hessian = collector.hessian()
    todo = {}  # a weight shared by several layers is quantized once
    for name in names:
        if id(layers[name].weight) not in done:
            todo.setdefault(id(layers[name].weight), name)
    stacks: dict[tuple, list[tuple[int, str, ColumnQuantizer]]] = {}  # weights that one quantizer shape takes
    for key, name in todo.items():
        cq = layers[name].weight_quantizer.column_quantizer(layers[name].weight, algorithm == "dpq")
        stacks.setdefault(cq.grid, []).append((key, name, cq))
    for stack in stacks.values():
        label = ", ".join(repr(name) for _, name, _ in stack)
        results = gptq_quantize_stacked([layers[name].weight for _, name, _ in stack], hessian,
                                        [cq for _, _, cq in stack], damp=damp, gar=gar,
                                        name=f"layer{'s' if len(stack) > 1 else ''} {label}")
        done.update(zip((key for key, _, _ in stack), results))
    for name in names:
        layer = layers[name]
        wq = layer.weight_quantizer
        key = id(layer.weight)
        wq.frozen = done[key].codes
        wq.algorithm = algorithm + ("+gar" if gar else "")
        wq.report = {"damp": done[key].damp, "loss": done[key].loss}


def _block_list(model: nn.Module, names: set[str]) -> tuple[str, nn.ModuleList] | None:
    """The ModuleList whose children hold the most target layers (a transformer's decoder layers)."""
    best, best_count = None, 1
    for prefix, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 1:
            count = sum(1 for n in names if n.startswith(f"{prefix}."))
            if count > best_count:
                best, best_count = (prefix, module), count
    return best


def _cache_block_inputs(model: nn.Module, block: nn.Module, batches: Sequence, run_batch) -> list:
    """(args, kwargs) with which ``block`` is called on each batch; the model stops right there."""
    cached = []

    def grab(module, args, kwargs):
        kwargs = dict(kwargs)
        # Hugging Face layers write into a KV cache they are handed: each replay must start without one.
        if "past_key_values" in kwargs:
            kwargs["past_key_values"] = None
        if "use_cache" in kwargs:
            kwargs["use_cache"] = False
        cached.append((args, kwargs))
        raise _Stop

    hook = block.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        _call_all(lambda batch: run_batch(model, batch), batches)
    finally:
        hook.remove()
    return cached


def gptq_model(model: nn.Module, layers: dict[str, nn.Module], batches: Sequence, run_batch, *, algorithm: str,
               gar: bool = False, damp: float = DEFAULT_DAMP, progress: bool | None = None) -> None:
    """GPTQ / DPQ of the fake-quantized ``layers`` of ``model`` (by name), in the order they run, on the
    calibration ``batches`` (a list); each layer's weight quantizer keeps the codes chosen. Call it with
    the model in eval mode and gradients off (lowbit.prepare does)."""
    done: dict[int, GPTQResult] = {}

    def run_model(batch):
        return run_batch(model, batch)

    groups = _execution_groups(run_model, batches[0], layers)
    found = _block_list(model, set(layers))
    prefix, blocks = found if found is not None else ("", [])
    in_blocks = {n: m for n, m in layers.items() if found is not None and n.startswith(f"{prefix}.")}
    first = next((i for i, names in enumerate(groups) if names[0] in in_blocks), len(groups))
    before = [names for names in groups[:first] if names[0] not in in_blocks]
    after = [names for names in groups[first:] if names[0] not in in_blocks]
    # Layers outside the blocks, before them (an input projection), then the blocks, then the rest (a head).
    for names in before:
        _quantize_group(run_model, batches, names, layers, algorithm, gar, damp, done)
    if in_blocks:
        inputs = _cache_block_inputs(model, blocks[0], batches, run_batch)
        for i, block in enumerate(progress_bar(blocks, desc=algorithm, unit="block", enable=progress)):
            mine = {n: m for n, m in in_blocks.items() if n.startswith(f"{prefix}.{i}.")}

            def run(item, block=block):
                return block(*item[0], **item[1])

            if mine:
                for names in _execution_groups(run, inputs[0], mine):
                    _quantize_group(run, inputs, names, mine, algorithm, gar, damp, done)
            outputs = [run(item) for item in inputs]
            inputs = [((out[0] if isinstance(out, tuple) else out, *args[1:]), kwargs)
                      for out, (args, kwargs) in zip(outputs, inputs)]
        del inputs
    for names in after:
        _quantize_group(run_model, batches, names, layers, algorithm, gar, damp, done)
