"""Memory and time of GPTQ / DPQ on a ~1.2B-parameter Llama model on the CPU (issue 5: a model of ~1B
parameters must fit a 24 GiB CPU machine).

    python3 benchmarks/gptq_memory.py [--algorithm dpq] [--gar] [--windows 8] [--window 512]

The model is a Hugging Face LlamaForCausalLM shaped as Llama-3.2-1B (16 layers, hidden 2048, 32 / 8
heads, MLP 8192, vocab 128256, tied embedding: 1.24B parameters) with random weights (the real one is
not among the offline assets; memory and time depend on the shapes, not the values), in float32.
Calibration: windows of random token ids. lowbit.quantize(..., inplace=True) rewrites its 112
projections to W4A8 (group 128) with the chosen algorithm. Reported: the peak resident memory of the
process (ru_maxrss) after building the model and at the end, the wall time of each phase, and the
machine's memory and cores. Needs the llm extra (transformers).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lowbit  # noqa: E402
from lowbit.fileio import atomic_path  # noqa: E402

LLAMA_1B = dict(num_hidden_layers=16, hidden_size=2048, num_attention_heads=32, num_key_value_heads=8,
                intermediate_size=8192, vocab_size=128256, tie_word_embeddings=True, max_position_embeddings=2048)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


def machine_memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--algorithm", choices=["gptq", "dpq"], default="dpq")
    parser.add_argument("--gar", action="store_true", help="group-aware reordering")
    parser.add_argument("--scheme", choices=["w4a8", "w4a16"], default="w4a8")
    parser.add_argument("--windows", type=int, default=8, help="calibration windows (default: 8)")
    parser.add_argument("--window", type=int, default=512, help="tokens per window (default: 512)")
    parser.add_argument("--out", default="benchmarks/results/gptq_memory.json")
    args = parser.parse_args()
    from transformers import LlamaConfig, LlamaForCausalLM

    started = time.perf_counter()
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**LLAMA_1B)).eval()
    params = sum(p.numel() for p in model.parameters())
    built_s, built_rss = time.perf_counter() - started, peak_rss_gib()
    print(f"model: {params / 1e9:.3f}B parameters, built in {built_s:.0f} s, peak RSS {built_rss:.2f} GiB", flush=True)

    gen = torch.Generator().manual_seed(1)
    calib = [{"input_ids": torch.randint(0, LLAMA_1B["vocab_size"], (1, args.window), generator=gen)}
             for _ in range(args.windows)]
    started = time.perf_counter()
    with torch.inference_mode(False):
        lowbit.quantize(model, args.scheme, calib, algorithm=args.algorithm, gar=args.gar, group_size=128,
                        inplace=True)
    quantize_s, final_rss = time.perf_counter() - started, peak_rss_gib()
    print(f"{args.scheme} {args.algorithm}{'+gar' if args.gar else ''}: {quantize_s:.0f} s, "
          f"peak RSS {final_rss:.2f} GiB (machine: {machine_memory_gib():.1f} GiB, {os.cpu_count()} cores)", flush=True)
    result = {
        "benchmark": "gptq_memory", "date": datetime.date.today().isoformat(),
        "command": "python3 benchmarks/gptq_memory.py " + " ".join(sys.argv[1:]),
        "machine": {"memory_gib": round(machine_memory_gib(), 1), "cores": os.cpu_count(),
                    "cpu": platform.processor() or platform.machine(), "torch": torch.__version__},
        "model": {"shape": "Llama-3.2-1B", "parameters": params, **LLAMA_1B},
        "scheme": args.scheme, "algorithm": args.algorithm + ("+gar" if args.gar else ""), "group_size": 128,
        "calibration": {"windows": args.windows, "tokens_per_window": args.window},
        "rows": [{"phase": "build fp32 model", "seconds": round(built_s, 1), "peak_rss_gib": round(built_rss, 2)},
                 {"phase": "quantize (prepare, calibrate, GPTQ, convert)", "seconds": round(quantize_s, 1),
                  "peak_rss_gib": round(final_rss, 2)}],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(args.out)) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
