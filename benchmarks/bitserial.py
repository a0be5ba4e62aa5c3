"""Bit-serial (PrecisionBatching) layers on the GPU's binary tensor cores against torch bf16 / fp32
(cuBLAS) and lowbit's INT8 GEMM, measured in one process; then the MNIST MLP and the char LSTM LM
end to end at batch 1.

    PYTHONPATH=src python3 benchmarks/bitserial.py [--out benchmarks/results/bitserial.json] [--quick]

GEMV/GEMM: N = K in {1024, 2048, 4096, 8192}, batch M in {1, 8, 32}, weight bits {1, 2, 3, 4, 6, 8} x
activation bits {8, 16}. The bit-serial time is the whole layer from float32 input (quantizing the
input, its bitplanes, the binary GEMM and the epilogue); INT8 is lowbit's Triton GEMM from int8 codes.
Bitlayer scaling: 8 stored bitlayers, k = 1..8 used. Linked layers: stacks of four layers whose GEMMs write
the next layer's input planes, against the same layers with an input kernel each. Times are medians of
CUDA-graph replays (benchmarks/timing.py) over enough weight copies to stream from HBM.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lowbit  # noqa: E402
from lowbit.kernels.triton import int8_gemm  # noqa: E402
from lowbit.models.char_lm import CharLSTM  # noqa: E402
from lowbit.models.mlp import MLP  # noqa: E402
from lowbit.nn.lstm import unroll_lstms  # noqa: E402
from timing import bench, copies, write_result  # noqa: E402


def bitserial_layers(n, k, weight_bits, act_bits, count):
    """``count`` copies (distinct memory) of a quantized n x k layer (random weights, input range ~ +-3)."""
    lin = torch.nn.Sequential(torch.nn.Linear(k, n, device="cuda"))
    q = lowbit.quantize(lin, "bitserial", calib_data=[torch.randn(64, k, device="cuda")], weight_bits=weight_bits,
                        act_bits=act_bits, progress=False)
    return [copy.deepcopy(q[0]) for _ in range(count)]


def gemm_rows(nks, batches, weight_bits, act_bits_list):
    rows = []
    for nk in nks:
        n = k = nk
        c = copies(n * k * 2)
        w16 = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) for _ in range(c)]
        w32 = [w.float() for w in w16]
        w8 = [torch.randint(-127, 128, (n, k), device="cuda", dtype=torch.int8) for _ in range(copies(n * k, at_most=128))]
        sa, sw, bias = torch.tensor(0.01, device="cuda"), torch.rand(n, device="cuda"), torch.randn(n, device="cuda")
        layers = {(wb, ab): bitserial_layers(n, k, wb, ab, copies(n * k * wb // 8, at_most=128)) for wb in weight_bits
                  for ab in act_bits_list}
        for m in batches:
            x32 = torch.randn(m, k, device="cuda")
            x16 = x32.bfloat16()
            x8 = torch.randint(-127, 128, (m, k), device="cuda", dtype=torch.int8)
            _, t_bf16 = bench([lambda w=w: F.linear(x16, w) for w in w16])
            _, t_fp32 = bench([lambda w=w: F.linear(x32, w) for w in w32])
            _, t_int8 = bench([lambda w=w: int8_gemm(x8, w, sa, sw, bias) for w in w8])
            for (wb, ab), ls in layers.items():
                eager, t_bs = bench([lambda layer=layer: layer(x32) for layer in ls])
                rows.append({"n": n, "k": k, "m": m, "weight_bits": wb, "act_bits": ab, "bitserial_us": t_bs * 1e6,
                             "bitserial_eager_us": eager * 1e6, "bf16_us": t_bf16 * 1e6, "fp32_us": t_fp32 * 1e6,
                             "int8_us": t_int8 * 1e6, "vs_bf16": t_bf16 / t_bs, "vs_fp32": t_fp32 / t_bs,
                             "vs_int8": t_int8 / t_bs, "weight_MB": n * k * wb / 8e6,
                             "hbm_floor_us": n * k * wb / 8 / 3.35e12 * 1e6})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def scaling_rows(nk=4096, m=1, act_bits=8):
    layers = bitserial_layers(nk, nk, 8, act_bits, copies(nk * nk, at_most=128))
    x = torch.randn(m, nk, device="cuda")
    rows = []
    for k in range(8, 0, -1):
        for layer in layers:
            layer.set_bitlayers(k)
        _, t = bench([lambda layer=layer: layer(x) for layer in layers])
        rows.append({"n": nk, "k": nk, "m": m, "act_bits": act_bits, "bitlayers": k, "us": t * 1e6})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def breakdown_rows(nk=4096, weight_bits=4, act_bits=8):
    """Where a batch-1 layer's time goes: the input kernel alone, the binary GEMM alone, and one
    minimal kernel (a 1-element add) for the launch floor, all replayed from CUDA graphs."""
    from lowbit.kernels.cuda import bitserial as kernels
    from lowbit.kernels.cuda import load_module

    layers = bitserial_layers(nk, nk, weight_bits, act_bits, copies(nk * nk * weight_bits // 8, at_most=128))
    x = torch.randn(1, nk, device="cuda")
    layer = layers[0]
    fmt = layer.input_format
    words = layer.bitlayers.shape[-1]
    cfg = kernels._launch_config(1, nk, words, act_bits, layer.bitlayers.shape[0], x.device)
    module = load_module("bitserial.cu", cfg, x.device)
    planes = kernels.input_planes(x, layer.input_scale, act_bits, fmt.qmin, fmt.qmax, words, layer.input_flags, cfg,
                                  module)
    tiny = torch.zeros(1, device="cuda")
    rows = {"n": nk, "k": nk, "m": 1, "weight_bits": weight_bits, "act_bits": act_bits, "config": cfg,
            "layer_us": bench([lambda la=la: la(x) for la in layers])[1] * 1e6,
            "input_kernel_us": bench([lambda: kernels.input_planes(x, layer.input_scale, act_bits, fmt.qmin, fmt.qmax,
                                                                   words, layer.input_flags, cfg, module)])[1] * 1e6,
            "gemm_kernel_us": bench([lambda la=la: kernels.binary_gemm(*planes, la.bitlayers, la.active, act_bits,
                                                                       fmt.signed, la._scale(), la.bias, False, cfg,
                                                                       module) for la in layers])[1] * 1e6,
            "one_tiny_kernel_us": bench([lambda: tiny.add_(1)])[1] * 1e6}
    kernels.EARLY_LAUNCH = False
    rows["layer_without_early_launch_us"] = bench([lambda la=la: la(x) for la in layers])[1] * 1e6
    kernels.EARLY_LAUNCH = True
    print(json.dumps(rows), flush=True)
    return [rows]


def linked_rows(nks=(4096, 8192), batches=(1, 8), depth=4):
    """Stacks of ``depth`` N = K layers as quantized (each GEMM's epilogue writing the next layer's input
    planes: nn.registry.link_layers) against the same layers unlinked (an input kernel a layer), same
    process, 8 stored bitlayers using 8 and 1."""
    from lowbit.nn.bitserial import bitserial_layers as layers_of

    rows = []
    with torch.no_grad():
        for nk in nks:
            seq = torch.nn.Sequential(*[torch.nn.Linear(nk, nk, device="cuda") for _ in range(depth)])
            linked = lowbit.quantize(seq, "bitserial", calib_data=[torch.randn(64, nk, device="cuda")], weight_bits=8,
                                     act_bits=8, progress=False)
            unlinked = copy.deepcopy(linked)
            for layer in layers_of(unlinked).values():
                layer.link_next(None)
            for m in batches:
                x = torch.randn(m, nk, device="cuda")
                for k in (8, 1):
                    lowbit.set_bitlayers(linked, k)
                    lowbit.set_bitlayers(unlinked, k)
                    assert torch.equal(linked(x), unlinked(x))
                    t_unlinked, t_linked = timed_model(lambda: unlinked(x)), timed_model(lambda: linked(x))
                    rows.append({"n": nk, "k": nk, "layers": depth, "m": m, "bitlayers": k, "unlinked_us": t_unlinked,
                                 "linked_us": t_linked, "speedup": t_unlinked / t_linked})
                    print(json.dumps(rows[-1]), flush=True)
    return rows


def timed_model(fn):
    return bench([fn])[1] * 1e6


def batch1_models(steps=100):
    """{name: (FP32 model, batch-1 input, calibration batch, quantizable copy)}: the MNIST MLP and the
    char LSTM LM (its nn.LSTM unrolled into Linear gates for quantization), random weights."""
    torch.manual_seed(0)
    mlp = MLP().cuda().eval()
    lstm = CharLSTM(114, 128, 2048).cuda().eval()
    ids = torch.randint(0, 114, (1, steps), device="cuda")
    return {"mnist-mlp": (mlp, torch.rand(1, 784, device="cuda"), torch.rand(16, 784, device="cuda"), mlp),
            "char-lstm-2048": (lstm, ids, ids, unroll_lstms(copy.deepcopy(lstm)))}


def float_times(model, inputs):
    """(fp32, bf16) microseconds per batch-1 call (cuDNN for the LSTM)."""
    bf16_model = copy.deepcopy(model).bfloat16()
    bf16_inputs = inputs.bfloat16() if inputs.is_floating_point() else inputs
    return timed_model(lambda: model(inputs)), timed_model(lambda: bf16_model(bf16_inputs))


def end_to_end_rows(weight_bits=(8, 4, 2)):
    """Each model quantized at each weight width (every Linear layer, the LSTM's decoder included)."""
    rows = []
    with torch.no_grad():
        for name, (model, inputs, calib, quantizable) in batch1_models().items():
            fp32, bf16 = float_times(model, inputs)
            for wb in weight_bits:
                q = lowbit.quantize(quantizable, "bitserial", calib_data=[calib], weight_bits=wb, act_bits=8,
                                    progress=False)
                t = timed_model(lambda: q(inputs))
                row = {"model": name, "batch": 1, "weight_bits": wb, "act_bits": 8, "bitserial_us": t}
                if name == "mnist-mlp":
                    row.update({"fp32_us": fp32, "bf16_us": bf16})
                else:
                    row.update({"steps": inputs.shape[1], "fp32_cudnn_us": fp32, "bf16_cudnn_us": bf16})
                rows.append({**row, "vs_fp32": fp32 / t, "vs_bf16": bf16 / t})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def model_scaling_rows(stored=8):
    """The MLP and the LSTM at batch 1 with ``stored`` bitlayers (the LSTM's decoder in float), timed for
    every count used (the knob)."""
    rows = []
    with torch.no_grad():
        for name, (model, inputs, calib, quantizable) in batch1_models().items():
            q = lowbit.quantize(quantizable, "bitserial", calib_data=[calib], weight_bits=stored, act_bits=8,
                                skip=["decoder"] if name == "char-lstm-2048" else (), progress=False)
            fp32, bf16 = float_times(model, inputs)
            for k in range(stored, 0, -1):
                lowbit.set_bitlayers(q, k)
                t = timed_model(lambda: q(inputs))
                rows.append({"model": name, "batch": 1, "stored": stored, "bitlayers": k, "bitserial_us": t,
                             "fp32_us": fp32, "bf16_us": bf16, "vs_fp32": fp32 / t, "vs_bf16": bf16 / t})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/bitserial.json")
    parser.add_argument("--quick", action="store_true", help="N=K=4096 only, weight bits 1/4/8, act bits 8")
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.quick:
        gemm = gemm_rows([4096], [1, 8, 32], [1, 4, 8], [8])
    else:
        gemm = gemm_rows([1024, 2048, 4096, 8192], [1, 8, 32], [1, 2, 3, 4, 6, 8], [8, 16])
    end_to_end = end_to_end_rows()
    write_result(args.out, "bitserial", gemm=gemm, scaling=scaling_rows() + scaling_rows(8192),
                 breakdown=breakdown_rows(), mlp=[r for r in end_to_end if r["model"] == "mnist-mlp"],
                 lstm=[r for r in end_to_end if r["model"] != "mnist-mlp"], model_scaling=model_scaling_rows(),
                 linked=linked_rows())


if __name__ == "__main__":
    main()
