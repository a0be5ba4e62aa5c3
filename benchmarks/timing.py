"""Timing shared by the benchmark scripts (run them from the repository root)."""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lowbit.fileio import atomic_path  # noqa: E402


def bench(fn_list):
    """(eager, graph) median seconds per call. Eager includes each call's host launch cost;
    graph replays one CUDA graph that runs every input copy once, the way small batches
    are served, and divides by the copies."""
    i = [0]

    def step():
        fn_list[i[0] % len(fn_list)]()
        i[0] += 1

    eager = triton.testing.do_bench(step, warmup=50, rep=300, return_mode="median") * 1e-3
    for fn in fn_list:  # compile and autotune before capture
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for fn in fn_list:
            fn()
    replay = triton.testing.do_bench(graph.replay, warmup=20, rep=300, return_mode="median") * 1e-3
    return eager, replay / len(fn_list)


def gemm_sizes(doc: str, out: str, group: int | None = None) -> tuple[argparse.Namespace, list[tuple[int, int, int]]]:
    """The GEMM benchmarks' command line (--out, --ms, --nks, and --group where ``group`` gives its default)
    and the (N, K, M) triples it asks for."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=out)
    parser.add_argument("--ms", default="1,16,128,4096,8192", help="input rows, comma-separated")
    parser.add_argument("--nks", default="4096,8192",
                        help="weight shapes, comma-separated: N = K (8192) or N x K (14336x4096)")
    if group is not None:
        parser.add_argument("--group", type=int, default=group, help="INT4 group size in columns")
    args = parser.parse_args()
    shapes = []
    for item in args.nks.split(","):
        n, _, k = item.partition("x")
        shapes.append((int(n), int(k or n)))
    return args, [(n, k, m) for n, k in shapes for m in map(int, args.ms.split(","))]


def copies(nbytes, at_most=16):
    """Input copies for bench(): together past the 50 MB L2 where ``at_most`` allows (so every call reads
    its operands from memory), and at least 8, so that a graph replay's own launch (a few us) is spread
    over 8 kernels or more, as in a decode step's graph (with 2 copies, a 17 us kernel timed 22 us, H100)."""
    return max(8, min(at_most, int(200e6 // max(nbytes, 1)) + 1))


def write_result(path, benchmark: str, **sections) -> None:
    """Write a benchmark's JSON (its sections with the date, GPU and versions) whole or not at all."""
    result = {"benchmark": benchmark, "date": datetime.date.today().isoformat(),
              "device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
              **sections}
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(Path(path)) as tmp:
        Path(tmp).write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {path}")
