"""INT8 GEMM on the GPU: lowbit's Triton kernel vs torch bf16 (cuBLAS) vs torch._int_mm (cuBLASLt int8),
and the same kernel with packed INT4 weights (unpacked to int8 in registers: half the weight bytes).
For M <= 16 int8_gemm runs INT4 weights through a CUDA kernel (kernels/cuda/int4_small_m.cu); the
Triton split-K kernel it replaces there is timed beside it (triton_int4_us).

    PYTHONPATH=src python3 benchmarks/gemm_int8.py [--out benchmarks/results/gemm_int8.json]

For each M in {1, 16, 128, 4096, 8192} and N = K in {4096, 8192} (--ms; --nks takes N = K or N x K): median
time per call replayed from a CUDA graph (triton.testing.do_bench; eager times with host launch costs are
recorded too), TOP/s, the speed-up over torch bf16 measured in the same process, and the floor: the larger of the
FLOP time at the datasheet peak (bf16 989 TFLOP/s, int8 1979 TOP/s) and the byte time at 3.35 TB/s.
Inputs rotate over enough copies to exceed the 50 MB L2, so small-M cases stream from HBM.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lowbit.kernels.cuda import int4_small_m  # noqa: E402
from lowbit.kernels.triton import int8_gemm  # noqa: E402
from lowbit.numerics import pack_int4  # noqa: E402
from timing import bench, copies, gemm_sizes, write_result  # noqa: E402

PEAK = {"bf16": 989e12, "int8": 1979e12}
HBM = 3.35e12


def main():
    args, sizes = gemm_sizes(__doc__, "benchmarks/results/gemm_int8.json")
    torch.manual_seed(0)
    rows = []
    for n, k, m in sizes:
        c = copies(n * k * 2 + m * k * 2)
        w16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(c)]
        x16 = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(c)]
        w8 = [torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8) for _ in range(c)]
        x8 = [torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8) for _ in range(c)]
        w4 = [pack_int4(torch.clamp(w, -8, 7)) for w in w8]
        wt8 = [w.t() for w in w8]  # _int_mm wants [K, N]; a transposed view is column-major
        sa, sw, bias = torch.tensor(0.01, device="cuda"), torch.rand(n, device="cuda"), torch.randn(n, device="cuda")
        (e_bf16, t_bf16) = bench([lambda x=x, w=w: x @ w.t() for x, w in zip(x16, w16)])
        (e_ours, t_ours) = bench([lambda x=x, w=w: int8_gemm(x, w, sa, sw, bias) for x, w in zip(x8, w8)])
        (e_int4, t_int4) = bench([lambda x=x, w=w: int8_gemm(x, w, sa, sw, bias) for x, w in zip(x8, w4)])
        triton = {}
        if m <= int4_small_m.MAX_ROWS:  # the Triton split-K kernel that the INT4 CUDA kernel replaces
            int4_small_m.ENABLED = False
            triton["triton_int4_us"] = bench([lambda x=x, w=w: int8_gemm(x, w, sa, sw, bias)
                                              for x, w in zip(x8, w4)])[1] * 1e6
            int4_small_m.ENABLED = True
        if m > 16:
            (e_intmm, t_intmm) = bench([lambda x=x, w=w: torch._int_mm(x, w) for x, w in zip(x8, wt8)])
        else:  # _int_mm needs M > 16: pad to 17 rows, as a caller would
            x17 = [torch.nn.functional.pad(x, (0, 0, 0, 17 - m)) for x in x8]
            (e_intmm, t_intmm) = bench([lambda x=x, w=w: torch._int_mm(x, w) for x, w in zip(x17, wt8)])
        flops = 2 * m * n * k
        floor_bf16 = max(flops / PEAK["bf16"], (2 * (m * k + n * k + m * n)) / HBM)
        floor_int8 = max(flops / PEAK["int8"], (m * k + n * k + 2 * m * n) / HBM)
        row = {"M": m, "N": n, "K": k, "bf16_us": t_bf16 * 1e6, "int_mm_us": t_intmm * 1e6,
               "lowbit_int8_us": t_ours * 1e6, "speedup_vs_bf16": t_bf16 / t_ours,
               "speedup_vs_int_mm": t_intmm / t_ours, "int_mm_vs_bf16": t_bf16 / t_intmm,
               "lowbit_tops": flops / t_ours / 1e12, "bf16_tflops": flops / t_bf16 / 1e12,
               "floor_bf16_us": floor_bf16 * 1e6, "floor_int8_us": floor_int8 * 1e6,
               "eager_bf16_us": e_bf16 * 1e6, "eager_int_mm_us": e_intmm * 1e6, "eager_lowbit_int8_us": e_ours * 1e6,
               "eager_speedup_vs_bf16": e_bf16 / e_ours, "lowbit_int4_us": t_int4 * 1e6,
               "int4_vs_int8": t_ours / t_int4, "int4_vs_bf16": t_bf16 / t_int4,
               "floor_int4_us": max(flops / PEAK["int8"], (m * k + n * k / 2 + 2 * m * n) / HBM) * 1e6, **triton}
        rows.append(row)
        print(f"M={m:5d} N={n} K={k}: bf16 {t_bf16*1e6:8.1f} us  _int_mm {t_intmm*1e6:8.1f} us  lowbit "
              f"{t_ours*1e6:8.1f} us  ({row['lowbit_tops']:.0f} TOP/s)  x{row['speedup_vs_bf16']:.2f} vs bf16  "
              f"x{row['speedup_vs_int_mm']:.2f} vs _int_mm  floor {floor_int8*1e6:.1f} us  "
              f"(eager: bf16 {e_bf16*1e6:.1f}, lowbit {e_ours*1e6:.1f} us)  int4 {t_int4*1e6:8.1f} us "
              f"x{row['int4_vs_int8']:.2f} vs int8  {triton}", flush=True)
        del w16, x16, w8, x8, wt8, w4
        torch.cuda.empty_cache()
    write_result(args.out, "gemm_int8", rows=rows)


if __name__ == "__main__":
    main()
