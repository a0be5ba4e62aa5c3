"""Time every candidate configuration of the INT8 GEMM kernels on HBM-resident data
(inputs rotate over copies larger than L2), to choose the autotune lists.

    PYTHONPATH=src python3 benchmarks/tune_int8_gemm.py [--out benchmarks/results/tune_int8_gemm.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lowbit.kernels.triton import gemm as g  # noqa: E402


def rotate(fns):
    i = [0]

    def step():
        fns[i[0] % len(fns)]()
        i[0] += 1

    return triton.testing.do_bench(step, warmup=50, rep=200, return_mode="median") * 1e3


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="benchmarks/results/tune_int8_gemm.json")
    args = parser.parse_args()
    results = []
    for m, nk in [(1, 4096), (16, 4096), (1, 8192), (16, 8192), (8192, 8192)]:
        n = k = nk
        copies = max(1, int(200e6 // (n * k)) + 1)
        ws = [torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8) for _ in range(copies)]
        xs = [torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8) for _ in range(copies)]
        out = torch.empty(m, n, device="cuda", dtype=torch.bfloat16)
        sa, sw = torch.tensor(0.01, device="cuda"), torch.rand(n, device="cuda")
        bucket = triton.next_power_of_2(m) if m <= 256 else 512 * triton.cdiv(m, 512)
        common = (m, n, k, bucket, k, 1, k, 1, n, 1)
        flags = dict(PER_TOKEN=False, HAS_BIAS=False, ACT=0, OUT_KIND=2, QMIN=-127, QMAX=127, W_PACKED=False,
                     FLOAT_ACC=False)
        if m <= g.SMALL_M:
            kernel = g._gemm_splitk_kernel
            configs = [triton.Config({"BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": sk}, num_stages=st, num_warps=4)
                       for bn in (32, 64, 128) for bk in (128, 256) for sk in (2, 4, 8, 16) for st in (3, 5)]
            extra = g.splitk_workspace(torch.device("cuda"), n, torch.int32)
        else:
            kernel, configs = g._gemm_kernel, g._tile_configs()
            extra = ()
        for cfg in configs:
            meta = dict(cfg.kwargs)
            if m <= g.SMALL_M:
                grid = (triton.cdiv(n, meta["BLOCK_N"]), meta["SPLIT_K"])
                meta["BLOCK_M"] = 16
            else:
                grid = (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)
            early = {"EARLY": False} if m <= g.SMALL_M else {}  # each kernel on its own, not overlapping the last
            fns = [lambda x=x, w=w: kernel[grid](x, w, out, sa, sw, sw, 1.0, *extra, *common, **flags, **meta, **early,
                                                num_warps=cfg.num_warps, num_stages=cfg.num_stages)
                   for x, w in zip(xs, ws)]
            try:
                us = rotate(fns)
            except Exception as exc:  # a config that does not compile or fit
                print(f"M={m} N=K={nk} {meta} failed: {type(exc).__name__}", flush=True)
                continue
            tops = 2 * m * n * k / us / 1e6
            gbs = (n * k + m * k) / us / 1e3
            results.append({"M": m, "N": n, "K": k, **meta, "num_warps": cfg.num_warps,
                            "num_stages": cfg.num_stages, "us": us, "TOPs": tops, "GBps": gbs})
            print(f"M={m:5d} N=K={nk} {meta} w{cfg.num_warps} s{cfg.num_stages}: {us:8.1f} us "
                  f"{tops:7.1f} TOP/s {gbs:7.0f} GB/s", flush=True)
        del ws, xs
        torch.cuda.empty_cache()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
