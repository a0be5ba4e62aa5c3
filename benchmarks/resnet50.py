"""ResNet-50 v1.5 on the GPU: lowbit INT8 and INT4 (fused blocks passing codes from conv to conv) vs torch
bf16 channels_last (cuDNN) and torch.compile, images/s at batch 1 and 256; plus a check of the GPU logits
against the CPU reference.

    PYTHONPATH=src python3 benchmarks/resnet50.py [--batches 1,256] [--schemes int8,int4] [--no-compile]
                                                  [--layers] [--out benchmarks/results/resnet50.json]

INT4 (the int4 scheme: first conv and FC in INT8, every other conv W4A4 with packed weights) runs on the
same int8 tensor cores, since Hopper has none for INT4: it can only gain through weight bytes.

Weights are random (speed does not depend on them); BatchNorm statistics come from a few batches of
random images, and lowbit calibrates on others (percentile 99.99), so every scale is realistic.
Times are medians of triton.testing.do_bench over CUDA-graph replays (each contender gets its own graph,
so Python launch costs are out of all of them), with the eager time beside. Ceilings: images/s at the
datasheet peak (bf16 989 TFLOP/s, int8 1979 TOP/s) for the model's 4.1 GMAC per image.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import sys
from pathlib import Path

import torch
import triton

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lowbit  # noqa: E402
from lowbit.models import resnet50  # noqa: E402

PEAK = {"bf16": 989e12, "int8": 1979e12}


def build_model(device: str, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = resnet50().to(device)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            torch.nn.init.uniform_(m.weight, 0.4, 1.0)  # not the zero init of bn3: every branch carries signal
            m.reset_running_stats()
            m.momentum = None  # cumulative averages over the batches below
    model.train()
    with torch.no_grad():
        for _ in range(4):
            model(torch.randn(32, 3, 224, 224, device=device))
    return model.eval()


def macs_per_image(model: torch.nn.Module) -> int:
    total = [0]

    def count(m, inputs, out):
        k = m.weight[0].numel()
        total[0] += out[0].numel() * k

    layers = [m for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    hooks = [m.register_forward_hook(count) for m in layers]
    with torch.no_grad():
        model(torch.randn(1, 3, 224, 224, device=next(model.parameters()).device))
    for h in hooks:
        h.remove()
    return total[0]


def timed(fn, example):
    """(graph, eager) median seconds per call of fn(example)."""
    with torch.no_grad():
        eager = triton.testing.do_bench(lambda: fn(example), warmup=25, rep=200, return_mode="median") * 1e-3
        graph = lowbit.CudaGraphModule(fn, example)
        replay = triton.testing.do_bench(graph.graph.replay, warmup=25, rep=300, return_mode="median") * 1e-3
    return replay, eager


def weight_bytes(fused) -> int:
    return sum(m.qweight.numel() * m.qweight.element_size() for m in fused.modules() if hasattr(m, "qweight"))


def check_against_cpu(qmodel, fused, batch: int = 2) -> dict:
    """GPU fused logits vs the CPU integer reference of the same fused model."""
    x = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(5))
    cpu_fused = lowbit.fuse_resnet(copy.deepcopy(qmodel).cpu())
    codes = {}
    for name, model, inp in (("cpu", cpu_fused, x), ("gpu", fused, x.cuda())):
        seen = []
        hooks = [b.register_forward_hook(lambda m, i, o: seen.append(o.cpu())) for b in model.blocks]
        with torch.no_grad():
            codes[name] = (model(inp).float().cpu(), seen)
        for h in hooks:
            h.remove()
    ref, got = codes["cpu"][0], codes["gpu"][0]
    equal_blocks = sum(torch.equal(a, b) for a, b in zip(codes["cpu"][1], codes["gpu"][1]))
    return {"batch": batch, "blocks_with_identical_codes": f"{equal_blocks}/{len(codes['cpu'][1])}",
            "logits_snr_db": float(20 * torch.log10(ref.norm() / (ref - got).norm().clamp_min(1e-30))),
            "max_abs_logit_diff": float((ref - got).abs().max()), "top1_agree": float((ref.argmax(1) == got.argmax(1))
                                                                                      .float().mean())}


def layer_table(fused, model_bf16, batch: int) -> list[dict]:
    """Each distinct conv of the fused model alone vs cuDNN bf16 channels_last on the same shape."""
    from lowbit.kernels.triton import int8_conv2d

    shapes, rows = {}, []

    def record(conv, inputs, out):
        shapes.setdefault((str(conv.geometry), tuple(inputs[0].shape)), conv)

    hooks = [m.register_forward_hook(record) for m in fused.modules() if isinstance(m, lowbit.nn.Int8Conv2d)]
    with torch.no_grad():
        fused(torch.randn(batch, 3, 224, 224, device="cuda"))
    for h in hooks:
        h.remove()
    for (geo, in_shape), conv in shapes.items():
        g = conv.geometry
        q = torch.randint(-127, 128, in_shape, dtype=torch.int8, device="cuda").contiguous(
            memory_format=torch.channels_last)
        fn = lambda: int8_conv2d(q, conv.qweight, conv.input_scale, conv.weight_scale, conv.bias,  # noqa: E731
                                 stride=g.stride, pads=g.pads, dilation=g.dilation, relu=conv.relu,
                                 out_dtype=conv.out_dtype, out_scale=conv.output_scale, out_range=conv.out_range)
        xb = torch.randn(in_shape, device="cuda", dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
        wb = torch.randn(g.weight_shape, device="cuda", dtype=torch.bfloat16).contiguous(
            memory_format=torch.channels_last)
        pad = (g.pads[2], g.pads[0])
        ref = lambda: torch.nn.functional.conv2d(xb, wb, None, g.stride, pad, g.dilation)  # noqa: E731
        t_int8 = triton.testing.do_bench(fn, warmup=10, rep=100, return_mode="median") * 1e-3
        t_bf16 = triton.testing.do_bench(ref, warmup=10, rep=100, return_mode="median") * 1e-3
        oh, ow = fn().shape[2:]
        ops = 2 * in_shape[0] * oh * ow * g.out_channels * g.reduction_size
        rows.append({"conv": geo, "input": list(in_shape), "out": str(conv.out_dtype), "int8_us": t_int8 * 1e6,
                     "bf16_us": t_bf16 * 1e6, "speedup": t_bf16 / t_int8, "int8_tops": ops / t_int8 / 1e12})
        print(f"  {geo:<48} in {str(list(in_shape)):<20} int8 {t_int8 * 1e6:8.1f} us  bf16 {t_bf16 * 1e6:8.1f} us"
              f"  {t_bf16 / t_int8:5.2f}x  {ops / t_int8 / 1e12:6.0f} TOP/s", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", default="1,256")
    parser.add_argument("--schemes", default="int8,int4", help="lowbit schemes to time (int8, int4)")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (it takes minutes)")
    parser.add_argument("--layers", action="store_true", help="also time each distinct conv at the largest batch")
    parser.add_argument("--out", default="benchmarks/results/resnet50.json")
    args = parser.parse_args()
    torch.backends.cudnn.benchmark = True
    batches = [int(b) for b in args.batches.split(",")]

    model = build_model("cuda")
    macs = macs_per_image(model)
    calib = [torch.randn(32, 3, 224, 224, device="cuda", generator=torch.Generator("cuda").manual_seed(10 + i))
             for i in range(4)]
    schemes = args.schemes.split(",")
    fused_models, checks, sizes = {}, {}, {}
    for scheme in schemes:
        qmodel = lowbit.quantize(model, scheme, calib, "percentile", progress=False)
        fused_models[scheme] = lowbit.fuse_resnet(qmodel)
        checks[scheme] = check_against_cpu(qmodel, fused_models[scheme])
        sizes[scheme] = weight_bytes(fused_models[scheme])
        print(f"{scheme}: conv/FC weight codes {sizes[scheme] / 2**20:.1f} MiB; GPU vs CPU reference:",
              checks[scheme], flush=True)
    model_bf16 = copy.deepcopy(model).to(torch.bfloat16).to(memory_format=torch.channels_last)
    compiled = None if args.no_compile else torch.compile(model_bf16)

    results = []
    for batch in batches:
        x = torch.randn(batch, 3, 224, 224, device="cuda")
        xb = x.to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
        row = {"batch": batch}
        contenders = [(f"lowbit_{s}", fused_models[s], x) for s in schemes]
        contenders.append(("torch_bf16_channels_last", model_bf16, xb))
        if compiled is not None:
            contenders.append(("torch_compile_bf16", compiled, xb))
        for name, fn, inp in contenders:
            try:
                graph_s, eager_s = timed(fn, inp)
            except Exception as exc:  # torch.compile may not run here; say so and go on
                row[name] = {"error": f"{type(exc).__name__}: {str(exc)[:200]}"}
                print(f"batch {batch} {name}: {row[name]['error']}", flush=True)
                continue
            row[name] = {"images_per_s": batch / graph_s, "ms": graph_s * 1e3, "eager_images_per_s": batch / eager_s}
            print(f"batch {batch:4d} {name:<26} {batch / graph_s:10.0f} img/s (graph)  "
                  f"{batch / eager_s:10.0f} img/s (eager)", flush=True)
        base = row["torch_bf16_channels_last"].get("images_per_s")
        compiled_ips = row.get("torch_compile_bf16", {}).get("images_per_s")
        for s in schemes:
            ips = row[f"lowbit_{s}"].get("images_per_s")
            if ips and base:
                row[f"{s}_vs_bf16"] = ips / base
            if ips and compiled_ips:
                row[f"{s}_vs_compile"] = ips / compiled_ips
            if ips and s != "int8" and row["lowbit_int8"].get("images_per_s"):
                row[f"{s}_vs_int8"] = ips / row["lowbit_int8"]["images_per_s"]
            print(f"batch {batch:4d} {s}/bf16 {row.get(f'{s}_vs_bf16', float('nan')):.2f}x  "
                  f"{s}/compile {row.get(f'{s}_vs_compile', float('nan')):.2f}x", flush=True)
        row["ceiling_images_per_s"] = {k: PEAK[k] / (2 * macs) for k in PEAK}
        results.append(row)
    layers = {s: layer_table(f, model_bf16, max(batches)) for s, f in fused_models.items()} if args.layers else None

    out = {"device": torch.cuda.get_device_name(), "date": datetime.date.today().isoformat(),
           "torch": torch.__version__, "triton": triton.__version__, "macs_per_image": macs,
           "weight_code_bytes": sizes, "gpu_vs_cpu_reference": checks, "results": results, "layers": layers}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print("wrote", args.out)


if __name__ == "__main__":
    main()
