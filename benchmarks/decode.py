"""Decode speed at batch 1 of Llama-shaped models (random weights) in bf16, W4A16 and W4A8 on the GPU.

    PYTHONPATH=src python3 benchmarks/decode.py [--out benchmarks/results/decode.json]

Shapes: SmolLM2-135M (30 layers, hidden 576, 9 heads / 3 KV heads, MLP 1536, vocab 49152) and a
~1.2B model shaped as Llama-3.2-1B (16 layers, hidden 2048, 32 / 8 heads, MLP 8192, vocab 128256).
The model below is the Llama block (RMSNorm, rotary attention with grouped KV heads, SwiGLU MLP) with
a static KV cache, so one decode step (one token, a position tensor) is captured in a CUDA graph.
lowbit quantizes its q/k/v/o/gate/up/down projections (lm_head and the embedding stay bf16), after
calibrating on random tokens. Reported: tokens/s of a 128-token decode after a 32-token prompt
(graph replays, the cache growing); the time of the step's projections alone (each layer's seven
Linear layers on one token, graph-replayed: what the weight formats change); and the weight bytes
each step reads. Each row is measured in a fresh process: from its fourth CUDA graph on, a process
replays every graph slower (H100, torch 2.11 + cu130, 2026-11-24: 1.05 -> 1.41 us per kernel node, graphs
captured earlier included; a decode step has ~900 nodes, so bf16 fell from 370 to 322 tokens/s), and a
second model's rows would start there.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import lowbit  # noqa: E402
from timing import write_result  # noqa: E402

SHAPES = {
    "smollm2-135m": dict(layers=30, hidden=576, heads=9, kv_heads=3, mlp=1536, vocab=49152),
    "llama-1b": dict(layers=16, hidden=2048, heads=32, kv_heads=8, mlp=8192, vocab=128256),
}
MAX_LEN = 256


class RMSNorm(nn.Module):
    def __init__(self, dim):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        x32 = x.float()
        return (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + 1e-5) * self.weight.float()).to(x.dtype)


def rotate(x, cos, sin):
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat((-x2, x1), dim=-1) * sin


class Attention(nn.Module):
    def __init__(self, hidden, heads, kv_heads):
        super().__init__()
        self.heads, self.kv_heads, self.dim = heads, kv_heads, hidden // heads
        self.q_proj = nn.Linear(hidden, heads * self.dim, bias=False)
        self.k_proj = nn.Linear(hidden, kv_heads * self.dim, bias=False)
        self.v_proj = nn.Linear(hidden, kv_heads * self.dim, bias=False)
        self.o_proj = nn.Linear(heads * self.dim, hidden, bias=False)
        self.register_buffer("k_cache", torch.zeros(1, kv_heads, MAX_LEN, self.dim), persistent=False)
        self.register_buffer("v_cache", torch.zeros(1, kv_heads, MAX_LEN, self.dim), persistent=False)

    def forward(self, x, pos, cos, sin, mask):
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.heads, self.dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.kv_heads, self.dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.kv_heads, self.dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        self.k_cache[:b].index_copy_(2, pos, k.to(self.k_cache.dtype))
        self.v_cache[:b].index_copy_(2, pos, v.to(self.v_cache.dtype))
        y = F.scaled_dot_product_attention(q, self.k_cache[:b].to(q.dtype), self.v_cache[:b].to(q.dtype),
                                           attn_mask=mask, enable_gqa=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class Block(nn.Module):
    def __init__(self, hidden, heads, kv_heads, mlp):
        super().__init__()
        self.input_layernorm, self.post_attention_layernorm = RMSNorm(hidden), RMSNorm(hidden)
        self.self_attn = Attention(hidden, heads, kv_heads)
        self.gate_proj = nn.Linear(hidden, mlp, bias=False)
        self.up_proj = nn.Linear(hidden, mlp, bias=False)
        self.down_proj = nn.Linear(mlp, hidden, bias=False)

    def forward(self, x, pos, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), pos, cos, sin, mask)
        h = self.post_attention_layernorm(x)
        return x + self.down_proj(F.silu(self.gate_proj(h)) * self.up_proj(h))


class LlamaShaped(nn.Module):
    def __init__(self, layers, hidden, heads, kv_heads, mlp, vocab):
        super().__init__()
        self.embed_tokens = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(Block(hidden, heads, kv_heads, mlp) for _ in range(layers))
        self.norm = RMSNorm(hidden)
        self.lm_head = nn.Linear(hidden, vocab, bias=False)
        dim = hidden // heads
        inv = 1.0 / 10000 ** (torch.arange(0, dim, 2).float() / dim)
        angles = torch.outer(torch.arange(MAX_LEN).float(), inv)
        self.register_buffer("cos", torch.cat((angles, angles), -1).cos(), persistent=False)
        self.register_buffer("sin", torch.cat((angles, angles), -1).sin(), persistent=False)

    def forward(self, tokens, pos=None):
        """tokens [B, T] at positions ``pos`` [T] (0..T-1 by default) -> logits [B, T, vocab]."""
        if pos is None:
            pos = torch.arange(tokens.shape[1], device=tokens.device)
        x = self.embed_tokens(tokens)
        cos, sin = self.cos[pos].to(x.dtype), self.sin[pos].to(x.dtype)
        mask = torch.arange(MAX_LEN, device=tokens.device)[None, :] <= pos[:, None]  # causal over the cache
        for layer in self.layers:
            x = layer(x, pos, cos, sin, mask)
        return self.lm_head(self.norm(x))


def projection_bytes(model) -> int:
    """Bytes of the quantized (or bf16) projection weights a decode step streams."""
    total = 0
    for name, module in model.named_modules():
        if name.endswith("_proj"):
            total += sum(b.numel() * b.element_size() for b in module.buffers()) + sum(
                p.numel() * p.element_size() for p in module.parameters())
    return total


def decode_rate(model, vocab, prompt=32, steps=128) -> float:
    """Tokens/s of ``steps`` graph-replayed decode steps after a prompt."""
    gen = torch.Generator(device="cuda").manual_seed(0)
    tokens = torch.randint(0, vocab, (1, prompt), device="cuda", generator=gen)
    with torch.no_grad():
        model(tokens)
        tok = torch.zeros(1, 1, dtype=torch.long, device="cuda")
        pos = torch.full((1,), prompt, dtype=torch.long, device="cuda")
        for _ in range(3):  # warm up: kernels compiled, layouts built, autotuning done
            model(tok, pos)
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = model(tok, pos)
        pos.fill_(prompt)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            graph.replay()
            tok.copy_(logits[:, -1].argmax(-1, keepdim=True))
            pos.add_(1)
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def projection_ms(model, shape) -> float:
    """Milliseconds of one decode step's projections alone: every layer's q/k/v/o/gate/up/down on one
    token, replayed from a CUDA graph (the attention, norms and lm_head left out)."""
    hidden, mlp = shape["hidden"], shape["mlp"]
    x = torch.randn(1, hidden, device="cuda", dtype=torch.bfloat16)
    xm = torch.randn(1, mlp, device="cuda", dtype=torch.bfloat16)

    def step():
        for layer in model.layers:
            a = layer.self_attn
            a.q_proj(x), a.k_proj(x), a.v_proj(x)
            a.o_proj(x)
            layer.gate_proj(x), layer.up_proj(x)
            layer.down_proj(xm)

    with torch.no_grad():
        step()
        torch.cuda.synchronize()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            step()
        for _ in range(3):
            graph.replay()
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(20):
            graph.replay()
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / 20 * 1e3


def measure(name: str, scheme: str) -> dict:
    """One row: the model ``name`` in ``scheme`` (random weights; quantized after calibrating on random
    tokens), its decode rate, projection time and bytes."""
    shape = SHAPES[name]
    torch.manual_seed(0)
    model = LlamaShaped(**shape).cuda().to(torch.bfloat16).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.02)
    if scheme != "bf16":
        calib = [torch.randint(0, shape["vocab"], (1, 64), device="cuda") for _ in range(2)]
        model = lowbit.quantize(model, scheme, calib_data=calib, group_size=128)
    rate = decode_rate(model, shape["vocab"])
    return {"model": name, "scheme": scheme, "tokens_per_s": rate, "ms_per_token": 1e3 / rate,
            "projections_ms": projection_ms(model, shape), "projection_MB": projection_bytes(model) / 1e6}


ROW = "row: "


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/decode.json")
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--schemes", default="bf16,w4a16,w4a8")
    parser.add_argument("--row", help=argparse.SUPPRESS)  # MODEL:SCHEME, measured in this process
    args = parser.parse_args()
    if args.row:
        print(ROW + json.dumps(measure(*args.row.split(":"))), flush=True)
        return
    rows = []
    for name in args.models.split(","):
        for scheme in args.schemes.split(","):
            done = subprocess.run([sys.executable, __file__, "--row", f"{name}:{scheme}"], stdout=subprocess.PIPE,
                                  text=True, check=True)
            rows.append(json.loads(next(line for line in done.stdout.splitlines() if line.startswith(ROW))[len(ROW):]))
            print(rows[-1], flush=True)
    for row in rows:
        base = next((r for r in rows if r["model"] == row["model"] and r["scheme"] == "bf16"), None)
        if base:
            row["vs_bf16"] = row["tokens_per_s"] / base["tokens_per_s"]
            row["projections_vs_bf16"] = base["projections_ms"] / row["projections_ms"]
    write_result(args.out, "decode", rows=rows)


if __name__ == "__main__":
    main()
