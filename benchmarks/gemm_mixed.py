"""W4A16, W4A8 and FP8 Linear kernels on the GPU against torch bf16 (cuBLAS), and FP8 cuBLAS for scale.

    PYTHONPATH=src python3 benchmarks/gemm_mixed.py [--out benchmarks/results/gemm_mixed.json] [--group 128]

For each M in {1, 16, 128, 4096, 8192} and N = K in {4096, 8192} (--ms; --nks takes N = K or N x K), median
time per call replayed from a CUDA graph (benchmarks/timing.py), from bf16 input to bf16 output, so each
lowbit time includes its input's quantization (bf16 -> E4M3 for W4A8 and FP8: a kernel of its own, except
for W4A8 at few rows of small blocks, whose GEMM quantizes it (int4_group.quantizing_input_pays); none
for W4A16). Each call has its own input copy, which has left the L2 by its turn:
  w4a16, w4a8   kernels/cuda/int4_group (--group, 128 by default; asymmetric): few rows stream the codes once;
                W4A8 from 33 (to 64 on layers under 4096 x 8192) and W4A16 from 97 to 256 rows run the
                Triton GEMM that converts the packed codes in registers (kernels/triton/int4_gemm); more
                rows expand the weights to bf16 / E4M3 once per call, then the Triton float GEMM (W4A16
                to 96 rows: the few-rows kernel over slices of 32)
  fp8           E4M3 per-channel weights, the Triton float GEMM
  scaled_mm     torch._scaled_mm on pre-quantized E4M3 input (cuBLASLt FP8, no input kernel): the
                vendor's FP8 speed, for scale
The floor beside each is the larger of the weight+input bytes at 3.35 TB/s and the FLOPs at the
datasheet peak (bf16 989, FP8 1979 TFLOP/s). Inputs rotate over copies that exceed the 50 MB L2.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from lowbit.kernels.cuda.int4_group import W4A8, W4A16, int4_group_linear, kernel_layout, prepare_input  # noqa: E402
from lowbit.kernels.triton import float_gemm  # noqa: E402
from lowbit.numerics import pack_int4  # noqa: E402
from lowbit.numerics.groupwise import round_scale  # noqa: E402
from timing import bench, copies, gemm_sizes, write_result  # noqa: E402

PEAK = {"bf16": 989e12, "fp8": 1979e12}
HBM = 3.35e12


def _int4_weights(n, k, mode, group):
    codes = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda")
    scale = round_scale(torch.rand(n, k // group, device="cuda") * 0.01 + 0.001).to(torch.float16)
    zero = torch.randint(0, 16, (n, k // group), dtype=torch.uint8, device="cuda")
    return kernel_layout(codes, scale, zero, group, mode, pack_int4(codes, signed=False))


def rows_for(m, n, k, group=128):
    c = copies(n * k * 2 + m * k * 2)
    x = [torch.randn(m, k, device="cuda", dtype=torch.bfloat16) for _ in range(c)]
    w16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(c)]
    w4 = {mode: [_int4_weights(n, k, mode, group) for _ in range(c)] for mode in (W4A16, W4A8)}
    w8 = [w.to(torch.float8_e4m3fn) for w in w16]
    sx, s8 = torch.tensor(0.02, device="cuda"), torch.tensor(0.5, device="cuda")
    sw = torch.rand(n, device="cuda") * 0.01
    nans = torch.zeros(1, dtype=torch.int32, device="cuda")
    x8 = [xi.to(torch.float8_e4m3fn) for xi in x]
    one = torch.ones((), device="cuda")

    def fp8(xi, wi):
        xq, _ = prepare_input(xi, W4A8, k, sx, False, nans)
        return float_gemm(xq, wi, sx, sw, out_dtype=torch.bfloat16)

    times = {
        "bf16": bench([lambda a=a, w=w: a @ w.t() for a, w in zip(x, w16)]),
        "w4a16": bench([lambda a=a, w=w: int4_group_linear(a, w, W4A16, out_dtype=torch.bfloat16)
                        for a, w in zip(x, w4[W4A16])]),
        "w4a8": bench([lambda a=a, w=w: int4_group_linear(a, w, W4A8, input_scale=sx, tensor_scale=s8,
                                                          out_dtype=torch.bfloat16, nan_count=nans)
                       for a, w in zip(x, w4[W4A8])]),
        "fp8": bench([lambda a=a, w=w: fp8(a, w) for a, w in zip(x, w8)]),
        "scaled_mm": bench([lambda a=a, w=w: torch._scaled_mm(a, w.t(), scale_a=one, scale_b=one,
                                                              out_dtype=torch.bfloat16)
                            for a, w in zip(x8, w8)] if m % 16 == 0 else [lambda: None]),
    }
    flops = 2 * m * n * k
    row = {"M": m, "N": n, "K": k, "group": group}
    for name, (eager, graph) in times.items():
        if name == "scaled_mm" and m % 16:
            continue  # cuBLASLt FP8 wants M a multiple of 16
        row[f"{name}_us"] = graph * 1e6
        row[f"eager_{name}_us"] = eager * 1e6
        if name != "bf16":
            row[f"{name}_vs_bf16"] = times["bf16"][1] / graph
    weight_bytes = {"bf16": 2 * n * k, "w4a16": n * k / 2 + 4 * n * k / group, "fp8": n * k}
    weight_bytes["w4a8"] = weight_bytes["w4a16"]
    for name, wb in weight_bytes.items():
        peak = PEAK["bf16"] if name in ("bf16", "w4a16") else PEAK["fp8"]
        row[f"floor_{name}_us"] = max(flops / peak, (wb + 2 * m * k + 2 * m * n) / HBM) * 1e6
    return row


def main():
    args, sizes = gemm_sizes(__doc__, "benchmarks/results/gemm_mixed.json", group=128)
    torch.manual_seed(0)
    rows = []
    for n, k, m in sizes:
        row = rows_for(m, n, k, args.group)
        rows.append(row)
        print(" ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                       if not k.startswith(("eager", "floor"))), flush=True)
        torch.cuda.empty_cache()
    write_result(args.out, "gemm_mixed", rows=rows)


if __name__ == "__main__":
    main()
