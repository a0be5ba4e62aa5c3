"""The few-rows GEMM of int8 inputs and packed INT4 weights: it compiles wherever NVRTC is installed, and on
a GPU int8_gemm takes it for 1..16 rows and gets exactly the integer reference's accumulators and the
Triton kernel's epilogue, bit for bit."""

import importlib.util
from pathlib import Path

import pytest
import torch

from lowbit.kernels.cuda import SOURCE_DIR, compile_cubin
from lowbit.numerics import pack_int4

needs_nvrtc = pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="needs cuda-bindings (NVRTC)")
# (M, N, K): K split over blocks or not (few or many 16-row tiles), N not a multiple of 16, K short of a
# chunk or of a round of the block's warps
SHAPES = [(1, 1, 32), (1, 4096, 4096), (16, 8192, 64), (3, 37, 96), (9, 100, 4128), (16, 257, 2016),
          (5, 1000, 32), (2, 24, 30016), (8, 130, 160), (13, 64, 4096)]


@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("nt", [1, 2])
def test_kernel_compiles_with_nvrtc(arch, nt):
    source = (Path(SOURCE_DIR) / "int4_small_m.cu").read_text()
    assert len(compile_cubin(source, "int4_small_m.cu", [f"-DNT={nt}"], arch)) > 0


def _operands(m, k, n, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda", generator=g)
    w = torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda", generator=g)
    return a, w, pack_int4(w)


@pytest.fixture
def kernel_calls(monkeypatch):
    """Counts the few-rows kernel's launches."""
    from lowbit.kernels.cuda import int4_small_m

    calls = []
    original = int4_small_m.int4_small_m_gemm
    monkeypatch.setattr(int4_small_m, "int4_small_m_gemm", lambda *a, **k: calls.append(1) or original(*a, **k))
    return calls


@pytest.mark.gpu
@pytest.mark.parametrize("m,n,k", SHAPES)
def test_accumulators_exact(m, n, k, kernel_calls):
    from lowbit.kernels.triton import int8_gemm

    a, w, wk = _operands(m, k, n, seed=m * 7 + n + k)
    one = torch.ones((), device="cuda")
    for _ in range(2):  # the split-K counters are reset for the next call
        acc = int8_gemm(a, wk, one, torch.ones(n, device="cuda"), out_dtype=torch.int32)
        assert torch.equal(acc.cpu().long(), a.cpu().long() @ w.cpu().long().t())
    assert len(kernel_calls) == 2


@pytest.mark.gpu
@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_epilogue_equals_the_triton_kernels(per_token, activation, kernel_calls, monkeypatch):
    from lowbit.kernels.cuda import int4_small_m
    from lowbit.kernels.triton import int8_gemm

    m, n, k = 11, 300, 1024
    a, _, wk = _operands(m, k, n, seed=3)
    sa = (torch.rand(m if per_token else (), device="cuda") + 0.5) * 0.01
    sw = (torch.rand(n, device="cuda") + 0.5) * 0.01
    bias = torch.randn(n, device="cuda")
    outs = {}
    for enabled in (True, False):
        monkeypatch.setattr(int4_small_m, "ENABLED", enabled)
        outs[enabled] = [int8_gemm(a, wk, sa, sw, bias, activation=activation, out_dtype=dtype)
                         for dtype in (torch.float32, torch.bfloat16, torch.float16)]
        outs[enabled].append(int8_gemm(a, wk, sa, sw, None, activation=activation, out_dtype=torch.int8,
                                       out_scale=0.01, out_range=(-7, 90)))
    assert len(kernel_calls) == 4
    for ours, triton in zip(outs[True], outs[False]):
        assert ours.dtype == triton.dtype
        if activation != "gelu":  # the same float32 operations in the same order: bit for bit
            assert torch.equal(ours, triton)
        elif ours.dtype == torch.int8:  # CUDA's erff and Triton's libdevice erf may differ in the last bit
            assert (ours.int() - triton.int()).abs().max() <= 1
        else:
            assert torch.allclose(ours.float(), triton.float(), rtol=2e-6 if ours.dtype == torch.float32 else 1e-2,
                                  atol=2e-6)
    if activation is None:  # the requantized codes reach both ends of the range
        assert outs[True][-1].min() == -7 and outs[True][-1].max() == 90


@pytest.mark.gpu
def test_padded_rows_run_the_kernel_and_others_fall_back(kernel_calls):
    from lowbit.kernels.triton import int8_gemm

    m, n, k = 6, 70, 64
    a, w, wk = _operands(m, k, n, seed=5)
    one, ones = torch.ones((), device="cuda"), torch.ones(n, device="cuda")
    ref = a.cpu().long() @ w.cpu().long().t()
    padded = torch.zeros(m, 96, dtype=torch.int8, device="cuda")
    padded[:, :k] = a
    acc = int8_gemm(padded[:, :k], wk, one, ones, out_dtype=torch.int32)  # rows 96 bytes apart
    assert torch.equal(acc.cpu().long(), ref) and len(kernel_calls) == 1
    shifted = torch.zeros(m * k + 1, dtype=torch.int8, device="cuda")
    unaligned = shifted[1:].view(m, k)
    unaligned.copy_(a)
    acc = int8_gemm(unaligned, wk, one, ones, out_dtype=torch.int32)
    short_k = int8_gemm(a[:, :48].contiguous(), pack_int4(w[:, :48]), one, ones, out_dtype=torch.int32)
    int8_weights = int8_gemm(a, w, one, ones, out_dtype=torch.int32)
    assert len(kernel_calls) == 1  # none of these fits: the Triton kernel computed them
    assert torch.equal(acc.cpu().long(), ref) and torch.equal(int8_weights.cpu().long(), ref)
    assert torch.equal(short_k.cpu().long(), a[:, :48].cpu().long() @ w[:, :48].cpu().long().t())


@pytest.mark.gpu
def test_cuda_graph_replays_with_new_inputs(kernel_calls):
    from lowbit.kernels.triton import int8_gemm

    m, n, k = 4, 520, 8192
    a, w, wk = _operands(m, k, n, seed=8)
    sa, sw = torch.tensor(0.02, device="cuda"), torch.full((n,), 0.001, device="cuda")
    int8_gemm(a, wk, sa, sw)  # compile outside the capture
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, stream=stream):
            out = int8_gemm(a, wk, sa, sw, out_dtype=torch.float32)
    for seed in range(3):
        a.copy_(_operands(m, k, n, seed=seed)[0])
        graph.replay()
        torch.cuda.synchronize()
        ref = (a.cpu().long() @ w.cpu().long().t()).float() * (sa.cpu() * sw.cpu())
        assert torch.equal(out.cpu(), ref)
