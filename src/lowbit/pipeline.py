"""``lowbit.quantize``: swap layers, calibrate, convert. No tracing: module swap plus
the quantizers inside the swapped layers, so any model that runs can be quantized."""

from __future__ import annotations

import contextlib
import copy
import fnmatch
import inspect
import itertools
import warnings
from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .algorithms.gptq import ALGORITHMS, DEFAULT_DAMP, gptq_model
from .calib import check_calibrator, check_options_type
from .errors import CalibrationError, ConfigError, LowbitError
from .nn import QUANTIZABLE_TYPES, settle
from .nn.registry import replace_module
from .progress import progress_bar
from .schemes import Scheme, get_scheme

KEEP_FLOAT = "float"


def quantizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of the Linear / Conv1d / Conv2d layers lowbit can swap: those
    types and subclasses that keep their forward (a custom forward would be lost)."""
    found = []
    for name, module in model.named_modules():
        base = next((t for t in QUANTIZABLE_TYPES if isinstance(module, t)), None)
        if base is not None and type(module).forward is base.forward and name:
            found.append((name, module))
    return found


def _matching(patterns: Iterable[str], names: list[str], what: str) -> dict[str, list[str]]:
    matches = {}
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise ConfigError(f"{what} pattern {pattern!r} is not a string")
        hits = [n for n in names if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
            raise ConfigError(f"{what} pattern {pattern!r} matches no quantizable layer; layers: {shown}")
        matches[pattern] = hits
    return matches


def plan_layers(model: nn.Module, scheme: str, scheme_options: dict, skip=(), overrides=None) -> dict[str, Scheme]:
    """Which layer gets which scheme instance, after the scheme's layer policy, ``skip`` and ``overrides``.

    ``overrides`` maps a name pattern (fnmatch, e.g. ``"layer1.*"``) to ``"float"``
    or None (keep the layer in float), a scheme name, or a dict of scheme options
    (it may name another ``"scheme"``). The first matching pattern wins, over the
    scheme's own policy (such as int4 keeping the first and last layer at 8 bits).
    """
    if isinstance(skip, str):
        skip = (skip,)
    overrides = dict(overrides or {})
    layers = quantizable_layers(model)
    names = [n for n, _ in layers]
    skipped = {n for hits in _matching(skip, names, "skip").values() for n in hits}
    override_hits = _matching(overrides, names, "override")
    default = get_scheme(scheme, **scheme_options)
    policy = default.layer_policy(names)
    modules = dict(layers)
    plan = {}
    for name in names:
        if name in skipped:
            continue
        pattern = next((p for p, hits in override_hits.items() if name in hits), None)
        if pattern is None:
            if name in policy and policy[name] is None:
                continue
            handler = get_scheme(scheme, **{**scheme_options, **policy[name]}) if name in policy else default
            if handler.supports(modules[name]):  # a scheme for Linear layers leaves convolutions in float
                plan[name] = handler
            continue
        value = overrides[pattern]
        if value is None or value == KEEP_FLOAT:
            continue
        if isinstance(value, str):
            handler = get_scheme(value)
        elif isinstance(value, Mapping):
            value = dict(value)
            other = value.pop("scheme", scheme)
            handler = get_scheme(other, **({**scheme_options, **value} if other == scheme else value))
        else:
            raise ConfigError(f"override for {pattern!r} must be 'float', None, a scheme name or a dict of "
                              f"options, got {value!r}")
        if not handler.supports(modules[name]):
            raise ConfigError(f"override {pattern!r} asks for scheme {handler.name!r} on layer {name!r}, a "
                              f"{type(modules[name]).__name__}; {handler.name!r} quantizes Linear layers only")
        plan[name] = handler
    return plan


def _to_device(batch, device):
    """Move every tensor in a (nested) batch to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # a namedtuple takes positional fields
        return type(batch)(*(_to_device(v, device) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


def _takes_one_input(model: nn.Module) -> bool:
    try:
        params = inspect.signature(model.forward).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    required = [p for p in positional if p.default is p.empty]
    varargs = any(p.kind == p.VAR_POSITIONAL for p in params)
    return len(required) == 1 and len(positional) == 1 and not varargs


def run_batch(model: nn.Module, batch):
    """Call the model on one batch: a tensor as the input, a dict as keyword arguments, a
    tuple/list as positional arguments, except that a model whose forward takes exactly one
    input gets the first element (so (input, label) batches from a DataLoader work)."""
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (list, tuple)):
        if not batch:
            raise CalibrationError("a calibration batch is an empty tuple/list")
        return model(batch[0]) if _takes_one_input(model) else model(*batch)
    return model(batch)


def describe_batch(batch) -> str:
    """A batch's structure and tensor shapes, for error messages."""
    if isinstance(batch, torch.Tensor):
        return f"{batch.dtype.__repr__().removeprefix('torch.')} tensor of shape {tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return "dict of " + ", ".join(f"{k}: {describe_batch(v)}" for k, v in batch.items())
    if isinstance(batch, (list, tuple)):
        return f"{type(batch).__name__} of " + ", ".join(describe_batch(v) for v in batch)
    return type(batch).__name__


def _model_device(model: nn.Module) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _batches(calib_data) -> Iterable:
    """``calib_data`` as an iterable of batches (a lone tensor is one batch); a clear error otherwise."""
    if isinstance(calib_data, torch.Tensor):
        return [calib_data]
    if not isinstance(calib_data, Iterable):
        raise CalibrationError(f"calib_data must be an iterable of batches, got {type(calib_data).__name__}")
    return calib_data


@contextlib.contextmanager
def _evaluating(model: nn.Module):
    """The model in eval mode without gradients, its training mode restored afterwards."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was_training)


def calibrate(model: nn.Module, calib_data, *, max_batches: int | None = None, progress: bool | None = None) -> int:
    """Run ``model`` in eval mode without gradients over ``calib_data``; returns the number of batches."""
    if calib_data is None:
        raise CalibrationError("calib_data is required: this scheme calibrates activation ranges "
                               "(pass an iterable of input batches, e.g. a DataLoader)")
    calib_data = _batches(calib_data)
    device = _model_device(model)
    seen = 0
    total = len(calib_data) if hasattr(calib_data, "__len__") else None
    if max_batches is not None and total is not None:
        total = min(total, max_batches)
    with _evaluating(model), progress_bar(total=total, desc="calibrating", unit="batch", enable=progress) as bar:
        for batch in itertools.islice(calib_data, max_batches):  # no batch past the last taken from a generator
            try:
                run_batch(model, _to_device(batch, device))
            except LowbitError:
                raise
            except Exception as exc:
                raise CalibrationError(f"calibration batch {seen} ({describe_batch(batch)}) failed in "
                                       f"{type(model).__name__}.forward: {type(exc).__name__}: {exc}") from exc
            seen += 1
            bar.update(1)
    if seen == 0:
        raise CalibrationError("calib_data yielded no batches: calibration needs at least one input batch")
    return seen


def _calibrator_for(handler: Scheme, calibrator: str | None, options: dict | None) -> tuple[str, dict]:
    """The caller's calibrator (checked by :func:`prepare`), or the scheme's default one with the
    caller's options on top (checked here: they must suit that default)."""
    if calibrator is not None:
        return calibrator, dict(options or {})
    name, defaults = handler.default_calibrator
    options = {**defaults, **(options or {})}
    check_calibrator(name, options)
    return name, options


def prepared_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, layer) of the fake-quantized layers :func:`prepare` put into ``model``."""
    return [(n, m) for n, m in model.named_modules() if isinstance(getattr(m, "scheme", None), Scheme)]


def _check_algorithm(plan: dict[str, Scheme], algorithm: str, gar: bool, damp: float, calib_data) -> None:
    if algorithm not in ALGORITHMS:
        raise ConfigError(f"algorithm={algorithm!r} is invalid: expected one of {', '.join(ALGORITHMS)}")
    for name, handler in plan.items():
        if algorithm not in handler.algorithms:
            raise ConfigError(f"algorithm {algorithm!r} does not apply to layer {name!r} (scheme {handler.name!r}, "
                              f"which takes {', '.join(handler.algorithms)}); keep it in float or give it another "
                              "scheme with overrides")
    if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not 0 < damp < 1:
        raise ConfigError(f"damp={damp!r} is invalid: expected a fraction of the Hessian's mean diagonal in (0, 1)")
    if not isinstance(gar, bool):
        raise ConfigError(f"gar={gar!r} is invalid: expected True or False")
    if gar and algorithm == "rtn":
        raise ConfigError("gar=True reorders GPTQ's columns: it needs algorithm='gptq' or 'dpq'")
    if algorithm != "rtn" and calib_data is None:
        raise CalibrationError(f"algorithm {algorithm!r} needs calib_data: its Hessians come from the layers' "
                               "inputs on calibration batches")


def _check_finite_weights(model: nn.Module, plan: dict[str, Scheme]) -> None:
    modules = dict(model.named_modules())
    for name in plan:
        for what in ("weight", "bias"):
            t = getattr(modules[name], what, None)
            if t is not None and not bool(torch.isfinite(t).all()):
                nans, infs = int(torch.isnan(t).sum()), int(torch.isinf(t).sum())
                raise ConfigError(f"layer {name!r}: its {what} holds {nans} NaN and {infs} infinite value(s), "
                                  "which no quantized format represents; fix the model (or skip the layer)")


def _warn_float_recurrent_layers(model: nn.Module) -> None:
    """nn.LSTM / GRU / RNN hold their weights as parameters, not Linear layers: no scheme reaches them."""
    found = [(n or "(the model)", m) for n, m in model.named_modules() if isinstance(m, nn.RNNBase)]
    if not found:
        return
    lstms = [n for n, m in found if isinstance(m, nn.LSTM)]
    others = [n for n, m in found if not isinstance(m, nn.LSTM)]
    said = []
    if lstms:
        said.append(f"nn.LSTM {', '.join(map(repr, lstms))} stay(s) in float: lowbit.nn.unroll_lstms(model) "
                    "first turns an LSTM into Linear gate layers that every scheme quantizes")
    if others:
        said.append(f"{', '.join(map(repr, others))} (GRU / RNN) stay(s) in float: lowbit has no quantized "
                    "GRU or plain RNN")
    warnings.warn("; ".join(said), stacklevel=4)


def _check_common(calib_batches, inplace, calibrator_options) -> None:
    check_options_type(calibrator_options)
    if calib_batches is not None and (isinstance(calib_batches, bool) or not isinstance(calib_batches, int)
                                      or calib_batches < 1):
        raise ConfigError(f"calib_batches={calib_batches!r} is invalid: expected a whole number of batches >= 1, "
                          "or None for all")
    if not isinstance(inplace, bool):
        raise ConfigError(f"inplace={inplace!r} is invalid: expected True or False")


def prepare(model: nn.Module, scheme: str = "int8", calib_data=None, calibrator: str | None = None, skip=(),
            overrides=None, *, calibrator_options: dict | None = None, calib_batches: int | None = None,
            algorithm: str = "rtn", gar: bool = False, damp: float = DEFAULT_DAMP,
            inplace: bool = False, progress: bool | None = None, **scheme_options) -> nn.Module:
    """The model with fake-quantized layers (float weights, calibrated activation ranges; with GPTQ or
    DPQ, the weights' chosen codes): what quantization-aware fine-tuning trains (:func:`lowbit.finetune`)
    and :func:`convert` deploys. Arguments as for :func:`quantize`."""
    _check_common(calib_batches, inplace, calibrator_options)
    if calibrator is not None:
        check_calibrator(calibrator, calibrator_options)
    plan = plan_layers(model, scheme, scheme_options, skip, overrides)
    _warn_float_recurrent_layers(model)
    if (calibrator is not None or calibrator_options) and plan and not any(h.needs_calibration for h in plan.values()):
        warnings.warn(f"calibrator {calibrator!r} and calibrator_options {calibrator_options or {}} are not used: "
                      f"scheme {scheme!r} calibrates no activation range here (weight-only, or per-token "
                      "activations scaled as they come)", stacklevel=3)
    _check_algorithm(plan, algorithm, gar, damp, calib_data)
    _check_finite_weights(model, plan)
    if algorithm != "rtn":
        calib_data = list(itertools.islice(_batches(calib_data), calib_batches))  # GPTQ goes over them again
    calibrators = {name: _calibrator_for(handler, calibrator, calibrator_options) for name, handler in plan.items()}
    if not inplace:
        model = copy.deepcopy(model)
    if not plan:
        warnings.warn(f"{type(model).__name__} has no quantizable layer (Linear, Conv1d, Conv2d) left to quantize; "
                      "the model is returned unchanged", stacklevel=3)
        return model
    modules = dict(model.named_modules())
    prepared = {}
    try:
        for name, handler in plan.items():
            prepared[name] = handler.prepare(modules[name], name, *calibrators[name])
            prepared[name].scheme = handler
            replace_module(model, name, prepared[name])
        _calibrate_prepared(model, plan, prepared, calib_data, calib_batches, algorithm, gar, damp, progress)
    except BaseException:
        for name in prepared:  # inplace: the caller's model gets its own layers back (their weights are untouched)
            replace_module(model, name, modules[name])
        raise
    return model


def _calibrate_prepared(model, plan, prepared, calib_data, calib_batches, algorithm, gar, damp, progress) -> None:
    """Activation ranges, then (GPTQ / DPQ) the weights' codes, of the layers :func:`prepare` put in."""
    if any(h.needs_calibration for h in plan.values()):
        calibrate(model, calib_data, max_batches=calib_batches, progress=progress)
        for name, layer in prepared.items():
            if layer.input_quantizer.collector is not None and layer.input_quantizer.collector.empty:
                raise CalibrationError(f"layer {name!r} never ran during calibration, so its input range is unknown; "
                                       "skip it or check that calib_data reaches it")
        for name, layer in prepared.items():
            if plan[name].needs_calibration:
                layer.input_quantizer.finish_calibration()
    if algorithm != "rtn":
        if not calib_data:
            raise CalibrationError("calib_data yielded no batches: GPTQ needs at least one input batch")
        device = _model_device(model)
        with _evaluating(model):
            gptq_model(model, prepared, calib_data, lambda m, batch: run_batch(m, _to_device(batch, device)),
                       algorithm=algorithm, gar=gar, damp=damp, progress=progress)


def convert(model: nn.Module, *, inplace: bool = False, progress: bool | None = None) -> nn.Module:
    """Deploy a model from :func:`prepare` (fine-tuned or not): each fake-quantized layer becomes
    its scheme's integer layer, with the weights' codes computed from the current float weights; a ReLU
    right after a layer that can apply it itself (bit-serial, integer) is folded into it, and a bit-serial layer
    followed by another learns to write that one's input in its own kernel (nn.registry.settle)."""
    layers = prepared_layers(model)
    if not layers:
        raise ConfigError(f"{type(model).__name__} has no fake-quantized layer to convert: pass a model returned "
                          "by lowbit.prepare(...)")
    if not inplace:
        model = copy.deepcopy(model)
        layers = prepared_layers(model)
    for name, layer in progress_bar(layers, desc="converting", unit="layer", enable=progress):
        replace_module(model, name, layer.scheme.convert(layer, name))
    settle(model)
    return model


def quantize(model: nn.Module, scheme: str = "int8", calib_data=None, calibrator: str | None = None, skip=(),
             overrides=None, *, calibrator_options: dict | None = None, calib_batches: int | None = None,
             algorithm: str = "rtn", gar: bool = False, damp: float = DEFAULT_DAMP,
             inplace: bool = False, progress: bool | None = None, **scheme_options) -> nn.Module:
    """Quantize a model and return it.

    model:         any nn.Module; its Linear, Conv1d and Conv2d layers are swapped.
    scheme:        a registered scheme name ("int8", "int4", ...); ``**scheme_options`` go to it.
    calib_data:    an iterable of input batches (tensor, tuple/list of positional inputs
                   or (input, label) pairs, or dict of keyword inputs), e.g. a DataLoader.
    calibrator:    "max", "percentile", "mse" or "entropy"; ``calibrator_options`` such as
                   ``{"percentile": 99.9}``. Default: the scheme's (int8: entropy; int4:
                   percentile 99.999).
    skip:          name patterns of layers to keep in float.
    overrides:     {pattern: "float" | scheme name | {option: value}} per-layer settings.
    calib_batches: use at most this many batches.
    algorithm:     how weights are rounded: "rtn" (to nearest), "gptq" (GPTQ with the INT4
                   quantizer) or "dpq" (GPTQ through the composed INT4 -> FP8 quantizer, w4a8
                   only); GPTQ/DPQ apply to the w4a16 and w4a8 schemes and need calib_data.
    gar:           group-aware reordering of GPTQ's columns (undone before the codes are stored).
    damp:          GPTQ's damping, a fraction of the Hessian's mean diagonal (raised by itself,
                   with a warning, when the Cholesky fails).
    inplace:       modify ``model`` itself instead of a deep copy.

    Same as ``convert(prepare(...))``.
    """
    model = prepare(model, scheme, calib_data, calibrator, skip, overrides, calibrator_options=calibrator_options,
                    calib_batches=calib_batches, algorithm=algorithm, gar=gar, damp=damp, inplace=inplace,
                    progress=progress, **scheme_options)
    return convert(model, inplace=True, progress=progress) if prepared_layers(model) else model
