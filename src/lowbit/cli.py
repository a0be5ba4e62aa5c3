"""The ``lowbit`` command line."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

from . import __version__
from .calib import CALIBRATORS
from .errors import ConfigError, LowbitError
from .schemes import SCHEMES

EPILOG = """examples:
  lowbit eval                                   FP32 vs INT8 under every calibrator, default model
  lowbit eval --calibrators entropy --json r.json --plot r.png
  lowbit quantize -o default-int8.safetensors   quantize the default model (entropy calibrator)
  lowbit quantize mypkg.models:build --calib-data mypkg.data:calib_batches -o model.safetensors
  lowbit info model.safetensors                 what a checkpoint holds
"""


def _csv(choices):
    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"invalid choice {','.join(bad) or text!r} (choose from {', '.join(choices)})")
        return items
    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


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
    except ImportError as exc:
        raise ConfigError(f"{what} {spec!r}: cannot import {module_name!r} ({exc})") from None
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
    p.add_argument("--calib-samples", type=_positive_int, default=2048, metavar="N",
                   help="training images used for calibration with the default model (default: 2048)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


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
                    "once, then cached), calibrated on training images and tested on the 10k test set.")
    ev.add_argument("model", nargs="?", metavar="MODEL",
                    help="module:function returning an FP32 nn.Module (needs --data); default: the embedded model")
    ev.add_argument("--data", metavar="SPEC",
                    help="module:function returning (calib_batches, test_batches): an iterable of input batches "
                         "and an iterable of (inputs, labels) batches")
    ev.add_argument("--schemes", type=_csv(sorted(SCHEMES)), default=["int8"],
                    help=f"comma-separated schemes (default: int8; available: {', '.join(sorted(SCHEMES))})")
    ev.add_argument("--calibrators", type=_csv(list(CALIBRATORS)), default=list(CALIBRATORS),
                    help=f"comma-separated calibrators (default: all: {', '.join(CALIBRATORS)})")
    ev.add_argument("--limit", type=_positive_int, metavar="N", help="evaluate only the first N test samples")
    ev.add_argument("--batch-size", type=_positive_int, default=500, help="evaluation batch size (default: 500)")
    ev.add_argument("--json", metavar="PATH", help="also write the table as JSON: {\"rows\": [...]}")
    ev.add_argument("--plot", metavar="PATH", help="also draw accuracy drop and size per row (PNG, SVG or PDF)")
    ev.add_argument("--retrain", action="store_true", help="retrain the default model instead of using the cache")
    _common(ev)

    qu = sub.add_parser(
        "quantize", help="quantize a model and save it",
        description="Quantize a model with a scheme and calibrator and save it as a safetensors checkpoint "
                    "(load it back with lowbit.load(path, fresh_model)). With no MODEL: the embedded default "
                    "model, calibrated on Fashion-MNIST training images.")
    qu.add_argument("model", nargs="?", metavar="MODEL",
                    help="module:function (or file.py:function) returning an FP32 nn.Module; needs --calib-data")
    qu.add_argument("-o", "--output", required=True, metavar="PATH", help="checkpoint to write (.safetensors)")
    qu.add_argument("--scheme", choices=sorted(SCHEMES), default="int8", help="quantization scheme (default: int8)")
    qu.add_argument("--calibrator", choices=list(CALIBRATORS), default="entropy",
                    help="activation range calibrator (default: entropy)")
    qu.add_argument("--percentile", type=float, help="percentile for --calibrator percentile (default: 99.99)")
    qu.add_argument("--calib-data", metavar="SPEC",
                    help="module:function returning an iterable of input batches (required with MODEL)")
    qu.add_argument("--calib-batches", type=_positive_int, metavar="N", help="use at most N calibration batches")
    qu.add_argument("--skip", action="append", default=[], metavar="PATTERN",
                    help="keep layers matching this name pattern (fnmatch) in float; repeatable")
    qu.add_argument("--option", action="append", default=[], type=_option, metavar="KEY=VALUE",
                    help="scheme option, e.g. weight_bits=8, act_unsigned=auto; repeatable")
    _common(qu)

    info = sub.add_parser("info", help="show what a checkpoint holds",
                          description="Print a checkpoint's header: versions, schemes and each layer's formats.")
    info.add_argument("checkpoint", metavar="PATH")
    info.add_argument("--json", action="store_true", help="print the header as JSON")
    return parser


def _eval(args) -> int:
    from .evaluate import evaluate_classifier, evaluate_default, format_table, plot_rows, write_json
    from .fileio import check_writable

    for path in (args.json, args.plot):
        if path:
            check_writable(path)
    progress = False if args.no_progress else None
    device = _device(args.device)
    if args.model:
        if not args.data:
            raise ConfigError("eval MODEL needs --data module:function returning (calib_batches, test_batches)")
        data = _call(args.data, "--data")
        if not (isinstance(data, (tuple, list)) and len(data) == 2):
            raise ConfigError(f"--data {args.data} must return (calib_batches, test_batches)")
        rows = evaluate_classifier(args.model, _call(args.model, "MODEL"), data[0], list(data[1]),
                                   schemes=args.schemes, calibrators=args.calibrators, device=device,
                                   progress=progress)
    else:
        rows = evaluate_default(schemes=args.schemes, calibrators=args.calibrators, calib_samples=args.calib_samples,
                                limit=args.limit, batch_size=args.batch_size, device=device, data_root=args.data_dir,
                                retrain=args.retrain, progress=progress)
    print(format_table(rows))
    if args.json:
        write_json(rows, args.json)
        print(f"wrote {args.json}", file=sys.stderr)
    if args.plot:
        plot_rows(rows, args.plot)
        print(f"wrote {args.plot}", file=sys.stderr)
    return 0


def _quantize(args) -> int:
    import torch

    from . import checkpoint, pipeline
    from .evaluate import default_calib_batches
    from .fileio import check_writable
    from .models import default_model

    check_writable(args.output)
    device = _device(args.device)
    progress = False if args.no_progress else None
    if args.model:
        if not args.calib_data:
            raise ConfigError("quantize MODEL needs --calib-data module:function returning input batches")
        model, calib = _call(args.model, "MODEL"), _call(args.calib_data, "--calib-data")
        if not isinstance(model, torch.nn.Module):
            raise ConfigError(f"MODEL {args.model} returned {type(model).__name__}, not a torch.nn.Module")
        model = model.to(device)
    else:
        model = default_model(device=device, data_root=args.data_dir, progress=progress)
        calib = default_calib_batches(args.calib_samples, args.data_dir)
    options = {"percentile": args.percentile} if args.percentile is not None else None
    qmodel = pipeline.quantize(model, args.scheme, calib, args.calibrator, skip=args.skip,
                               calibrator_options=options, calib_batches=args.calib_batches, inplace=True,
                               progress=progress, **dict(args.option))
    checkpoint.save(qmodel, args.output)
    layers = sum(1 for _ in checkpoint.quantized_layers(qmodel))
    print(f"wrote {args.output}: {layers} layers in {args.scheme} ({args.calibrator} calibration)")
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
        g = d["geometry"]
        w, i = d["weight"], d["input"]
        print(f"  {name}: {g['kind']} {g['in_channels']}->{g['out_channels']}  weight {w['fmt']['bits']}-bit "
              f"{w['granularity']}  input {'s' if i['fmt']['signed'] else 'u'}{i['fmt']['bits']} "
              f"scale={d.get('input_scale', 0):.4g} zero={d.get('input_zero_point', 0)}  "
              f"calibrator={d.get('calibrator', '-')}")
    return 0


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return {"eval": _eval, "quantize": _quantize, "info": _info}[args.command](args)
    except LowbitError as exc:
        if args.debug:
            raise
        print(f"lowbit: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lowbit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
