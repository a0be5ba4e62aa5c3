"""The Triton INT8 GEMM and activation quantizer against the integer reference (GPU only)."""

import pytest
import torch
import torch.nn.functional as F

from lowbit.config import IntFormat, QuantSpec
from lowbit.kernels.reference import epilogue, rescale
from lowbit.numerics import qparams_for, quantize

pytestmark = pytest.mark.gpu

SHAPES = [(1, 1, 1), (1, 4096, 4096), (16, 8192, 64), (17, 33, 65), (300, 129, 257), (5, 1000, 3),
          (1000, 24, 1000), (128, 4096, 4096), (2048, 3072, 768), (32, 100, 4100), (33, 5000, 7), (2, 7, 9000)]


def _operands(m, k, n, seed):
    g = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda", generator=g)
    w = torch.randint(-127, 128, (n, k), dtype=torch.int8, device="cuda", generator=g)
    return a, w


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_accumulators_exact(m, k, n):
    from lowbit.kernels.triton import int8_gemm

    a, w = _operands(m, k, n, seed=m + k + n)
    one = torch.ones((), device="cuda")
    acc = int8_gemm(a, w, one, torch.ones(n, device="cuda"), out_dtype=torch.int32)
    assert torch.equal(acc.cpu().long(), a.cpu().long() @ w.cpu().long().t())


def test_split_k_workspace_is_clean_between_calls():
    from lowbit.kernels.triton import int8_gemm

    one = torch.ones((), device="cuda")
    for seed in range(4):  # the same N reuses one workspace; stale partial sums would show
        a, w = _operands(1 + 7 * seed, 2000, 300, seed=seed)
        acc = int8_gemm(a, w, one, torch.ones(300, device="cuda"), out_dtype=torch.int32)
        assert torch.equal(acc.cpu().long(), a.cpu().long() @ w.cpu().long().t())


def test_non_contiguous_input():
    from lowbit.kernels.triton import int8_gemm

    a, w = _operands(70, 96, 40, seed=3)
    a_t = a.t().contiguous().t()  # column-major view
    sliced = torch.cat([a, a], 1)[:, ::2]  # strided columns
    one, ws = torch.ones((), device="cuda"), torch.ones(40, device="cuda")
    for view in (a_t, sliced):
        acc = int8_gemm(view, w, one, ws, out_dtype=torch.int32)
        assert torch.equal(acc.cpu().long(), view.cpu().long() @ w.cpu().long().t())


@pytest.mark.parametrize("per_token", [False, True])
@pytest.mark.parametrize("activation", [None, "relu", "gelu"])
def test_epilogue_matches_reference(per_token, activation):
    from lowbit.kernels.triton import int8_gemm

    m, k, n = 77, 300, 130
    a, w = _operands(m, k, n, seed=11)
    sa = (torch.rand(m if per_token else (), device="cuda") + 0.5) * 0.01
    sw = (torch.rand(n, device="cuda") + 0.5) * 0.01
    bias = torch.randn(n, device="cuda")
    out = int8_gemm(a, w, sa, sw, bias, activation=activation, out_dtype=torch.float32)
    acc = a.cpu().long() @ w.cpu().long().t()
    if per_token:
        ref = acc.float() * (sa.cpu()[:, None] * sw.cpu()[None, :]) + bias.cpu()
    else:
        ref = rescale(acc, sa.cpu(), sw.cpu(), bias.cpu(), channel_dim=-1)
    ref = {None: ref, "relu": ref.relu(), "gelu": F.gelu(ref)}[activation]
    if activation == "gelu":  # libdevice's erf and torch's may differ in the last bit
        assert torch.allclose(out.cpu(), ref, rtol=2e-6, atol=2e-6)
    else:  # the same float32 operations in the same order, no fused multiply-add: bit for bit
        assert torch.equal(out.cpu(), ref)
    bf16 = int8_gemm(a, w, sa, sw, bias, activation=activation)
    assert bf16.dtype == torch.bfloat16
    assert torch.allclose(bf16.float().cpu(), ref, rtol=8e-3, atol=1e-5)


def test_tma_kernel_every_config_exact_with_the_epilogue(pinned_config):
    """Large 8-bit GEMMs go to the TMA kernel: M, N and K all end inside a tile (the descriptors read
    zeros there). Each config alone: the sums, and the per-token epilogue bit for bit."""
    from lowbit.kernels.triton import gemm, int8_gemm

    m, k, n = 4100, 272, 1100  # 33 x 5 tiles of 128 x 256: enough to take the TMA kernel on an H100
    a, w = _operands(m, k, n, seed=21)
    assert gemm._uses_tma(a, w, packed=False)
    acc_ref = (a.double() @ w.double().t()).long().cpu()  # exact: |sums| < 2^53
    sa = (torch.rand(m, device="cuda") + 0.5) * 0.01
    sw = (torch.rand(n, device="cuda") + 0.5) * 0.01
    bias = torch.randn(n, device="cuda")
    ref = (acc_ref.float() * (sa.cpu()[:, None] * sw.cpu()[None, :]) + bias.cpu()).relu()
    one = torch.ones((), device="cuda")
    for config in gemm._tma_configs():
        with pinned_config(gemm._TMA_KERNEL, config):
            acc = int8_gemm(a, w, one, torch.ones(n, device="cuda"), out_dtype=torch.int32)
            out = int8_gemm(a, w, sa, sw, bias, activation="relu", out_dtype=torch.float32)
        assert torch.equal(acc.cpu().long(), acc_ref), config.kwargs
        assert torch.equal(out.cpu(), ref), config.kwargs
    unaligned = torch.cat([a, a[:, :1]], 1)[:, :k]  # rows 273 bytes apart: no descriptor can take them
    assert not gemm._uses_tma(unaligned, w, packed=False)
    acc = int8_gemm(unaligned, w, one, torch.ones(n, device="cuda"), out_dtype=torch.int32)
    assert torch.equal(acc.cpu().long(), acc_ref)


def test_requantized_int8_output():
    from lowbit.kernels.triton import int8_gemm

    a, w = _operands(64, 512, 96, seed=5)
    sa, sw = torch.tensor(0.02, device="cuda"), torch.full((96,), 0.003, device="cuda")
    out = int8_gemm(a, w, sa, sw, activation="relu", out_dtype=torch.int8, out_scale=0.05)
    acc = a.cpu().long() @ w.cpu().long().t()
    ref = epilogue(acc, sa.cpu(), sw.cpu(), None, -1, relu=True, out_scale=torch.tensor(0.05))
    assert out.dtype == torch.int8 and torch.equal(out.cpu(), ref)
    assert 0 < (out != 0).float().mean() and (out == 127).float().mean() < 0.5


@pytest.mark.parametrize("m", [1, 16])
def test_chained_few_row_gemms_replayed_from_a_graph(m):
    """Few-row GEMMs are launched early on Hopper, each waiting for the one before it: a chain in which
    every GEMM reads the last one's int8 output, replayed from a CUDA graph on fresh inputs, equals the
    integer reference layer by layer."""
    from lowbit.kernels.triton import int8_gemm

    g = torch.Generator(device="cuda").manual_seed(m)
    k = 2048
    ws = [torch.randint(-127, 128, (k, k), dtype=torch.int8, device="cuda", generator=g) for _ in range(4)]
    x = torch.empty(m, k, dtype=torch.int8, device="cuda")
    # input scales that keep every layer's codes spread (about 20 of 127 wide)
    sas = [torch.tensor(s, device="cuda") for s in (0.02, 0.075, 0.075, 0.075)]
    sw, so = torch.full((k,), 2e-4, device="cuda"), torch.tensor(0.05, device="cuda")

    def chain():
        h = x
        for w, sa in zip(ws, sas):
            h = int8_gemm(h, w, sa, sw, out_dtype=torch.int8, out_scale=so)
        return h

    x.random_(-127, 128, generator=g)
    chain()  # compiles (and autotunes) before the capture
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = chain()
    for _ in range(3):
        x.random_(-127, 128, generator=g)
        graph.replay()
        ref = x.cpu()
        for w, sa in zip(ws, sas):
            ref = epilogue(ref.long() @ w.cpu().long().t(), sa.cpu(), sw.cpu(), None, -1, out_scale=so.cpu())
        assert torch.equal(out.cpu(), ref)
        assert (ref.abs() > 3).float().mean() > 0.5 and (ref.abs() == 127).float().mean() < 0.05


def test_early_launched_split_k_keeps_one_wave_configs():
    """Launched early, the split-K autotuner tries only grids of at most one program per SM where some exist,
    and of those the unsplit ones where one fills half the SMs."""
    import triton

    from lowbit.kernels.cuda import multiprocessors
    from lowbit.kernels.triton import gemm

    a = torch.empty(1, 64, dtype=torch.int8, device="cuda")
    configs, sms = gemm._splitk_configs(), multiprocessors(a.device)
    for n in (300, 4096, 8192):
        kept = gemm._one_wave_when_early(configs, {"a_ptr": a, "N": n}, EARLY=True)
        programs = [triton.cdiv(n, c.kwargs["BLOCK_N"]) * c.kwargs["SPLIT_K"] for c in kept]
        assert kept and max(programs) <= sms
        if n >= 4096:  # an unsplit one-wave grid exists: 32- or 64-column tiles
            assert all(c.kwargs["SPLIT_K"] == 1 for c in kept) and 2 * min(programs) >= sms
        assert gemm._one_wave_when_early(configs, {"a_ptr": a, "N": n}, EARLY=False) == configs
    assert gemm._one_wave_when_early(configs, {"a_ptr": a, "N": 1 << 20}, EARLY=True) == configs  # none fits


def test_empty_and_bad_inputs():
    from lowbit.kernels.triton import int8_gemm

    a, w = _operands(4, 8, 3, seed=0)
    one, ws = torch.ones((), device="cuda"), torch.ones(3, device="cuda")
    assert int8_gemm(a[:0], w, one, ws).shape == (0, 3)
    zero_k = int8_gemm(a[:, :0], w[:, :0], one, ws, torch.full((3,), 2.0, device="cuda"), out_dtype=torch.float32)
    assert torch.equal(zero_k.cpu(), torch.full((4, 3), 2.0))
    with pytest.raises(ValueError, match="runs on CUDA tensors"):
        int8_gemm(a.cpu(), w.cpu(), one.cpu(), ws.cpu())
    with pytest.raises(ValueError, match="w is on cpu"):
        int8_gemm(a, w.cpu(), one, ws)
    with pytest.raises(TypeError, match="w must be torch.int8, got torch.float32"):
        int8_gemm(a, w.float(), one, ws)
    with pytest.raises(ValueError, match=r"w has shape \(3, 7\), expected \(3, 8\)"):
        int8_gemm(a, w[:, :7], one, ws)
    with pytest.raises(ValueError, match="out_scale is required"):
        int8_gemm(a, w, one, ws, out_dtype=torch.int8)
    wide_k = torch.zeros(1, 140_000, dtype=torch.int8, device="cuda")
    with pytest.raises(ValueError, match="K=140000 could overflow the int32 accumulators"):
        int8_gemm(wide_k, wide_k, one, torch.ones(1, device="cuda"))
    # 32-bit offsets: 16 elements, but the second row starts 2^31 elements after the first
    base = torch.empty((1 << 31) + 8, dtype=torch.int8, device="cuda")
    with pytest.raises(ValueError, match=r"a \(2, 8\) spans 2147483656 elements of memory; int8_gemm indexes"):
        int8_gemm(base.as_strided((2, 8), (1 << 31, 1)), w, one, ws)


@pytest.mark.parametrize("shape", [(1, 1), (3, 4097), (64, 768), (513, 100)])
def test_quantize_static_and_dynamic_match_reference(shape):
    from lowbit.kernels.triton import quantize_int8

    x = torch.randn(shape, device="cuda", dtype=torch.bfloat16) * 3
    x[0, 0] = 0.5 * 0.1  # a value near a rounding boundary for the scale below
    spec = QuantSpec(IntFormat(8))
    scale = torch.tensor(0.1, device="cuda")
    q, s = quantize_int8(x, scale)
    assert torch.equal(q.cpu(), quantize(x.cpu(), spec, scale.cpu(), torch.zeros((), dtype=torch.int32)))
    row_spec = QuantSpec(IntFormat(8), granularity="channel", axis=0)
    ref_scale, ref_zero = qparams_for(x.cpu(), row_spec)
    q, s = quantize_int8(x)
    assert torch.equal(s.cpu(), ref_scale)
    assert torch.equal(q.cpu(), quantize(x.cpu(), row_spec, ref_scale, ref_zero))


@pytest.mark.parametrize("options", [{}, {"act_bits": 6, "per_channel": False}])
def test_quantized_linear_on_cuda_runs_the_kernel(options, monkeypatch):
    import copy

    from torch import nn

    import lowbit
    from lowbit.kernels import triton as kernels

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 130), nn.ReLU(), nn.Linear(130, 10))
    q_cpu = lowbit.quantize(model, calib_data=[torch.randn(16, 300) for _ in range(2)], calibrator="max", **options)
    q_gpu = copy.deepcopy(q_cpu).cuda()
    calls = []
    original = kernels.int8_gemm
    monkeypatch.setattr(kernels, "int8_gemm", lambda *a, **k: calls.append(1) or original(*a, **k))
    x = torch.randn(7, 5, 300)
    with torch.no_grad():
        ref = q_cpu[0](x)
        out = q_gpu[0](x.cuda())
        x_bf16 = x.bfloat16()
        out_bf16 = q_gpu[0](x_bf16.cuda())
        ref_bf16 = q_cpu[0](x_bf16.float())  # the same codes: bf16 values are exact in float32
    assert calls and out.shape == ref.shape
    assert torch.equal(out.cpu(), ref)  # the same codes, integers and float32 epilogue
    assert out_bf16.dtype == torch.bfloat16
    assert torch.allclose(out_bf16.float().cpu(), ref_bf16, rtol=8e-3, atol=1e-5)  # bf16 output rounding


@pytest.mark.parametrize("m,k,n", [(300, 129, 257), (17, 2000, 300)], ids=["tile", "split_k"])
def test_every_config_is_exact(m, k, n, pinned_config):
    """Tests run one config per shape (LOWBIT_AUTOTUNE=0); here each candidate runs alone."""
    from lowbit.kernels.triton import gemm, int8_gemm

    a, w = _operands(m, k, n, seed=4)
    kernel, configs = ((gemm._SPLITK_KERNEL, gemm._splitk_configs()) if m <= gemm.SMALL_M
                       else (gemm._TILE_KERNELS[8], gemm._tile_configs()))
    ref = a.cpu().long() @ w.cpu().long().t()
    for config in configs:
        with pinned_config(kernel, config):
            acc = int8_gemm(a, w, torch.ones((), device="cuda"), torch.ones(n, device="cuda"), out_dtype=torch.int32)
        assert torch.equal(acc.cpu().long(), ref), config


def _int4_operands(m, k, n, seed):
    from lowbit.numerics import pack_int4

    g = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randint(-127, 128, (m, k), dtype=torch.int8, device="cuda", generator=g)
    w = torch.randint(-8, 8, (n, k), dtype=torch.int8, device="cuda", generator=g)
    return a, w, pack_int4(w)


@pytest.mark.parametrize("m,k,n", SHAPES)
def test_packed_int4_weights_exact(m, k, n):
    """Packed signed INT4 weights (odd K included: the last byte's high nibble is padding)."""
    from lowbit.kernels.triton import int8_gemm

    a, w, packed = _int4_operands(m, k, n, seed=m * 3 + k + n)
    assert packed.dtype == torch.uint8 and packed.shape == (n, (k + 1) // 2)
    acc = int8_gemm(a, packed, torch.ones((), device="cuda"), torch.ones(n, device="cuda"), out_dtype=torch.int32)
    assert torch.equal(acc.cpu().long(), a.cpu().long() @ w.cpu().long().t())


@pytest.mark.parametrize("m,k,n", [(300, 129, 257), (17, 2001, 300)], ids=["tile", "split_k"])
def test_every_config_is_exact_with_packed_int4(m, k, n, pinned_config):
    from lowbit.kernels.triton import gemm, int8_gemm

    a, w, packed = _int4_operands(m, k, n, seed=7)
    kernel, configs = ((gemm._SPLITK_KERNEL, gemm._splitk_configs()) if m <= gemm.SMALL_M
                       else (gemm._TILE_KERNELS[8], gemm._tile_configs()))
    ref = a.cpu().long() @ w.cpu().long().t()
    for config in configs:
        with pinned_config(kernel, config):
            acc = int8_gemm(a, packed, torch.ones((), device="cuda"), torch.ones(n, device="cuda"),
                            out_dtype=torch.int32)
        assert torch.equal(acc.cpu().long(), ref), config


def test_unsigned_codes_out_and_in():
    """u4 output codes ([0, 15]) from the epilogue, and u4 input codes from the quantizer."""
    from lowbit.kernels.triton import int8_gemm, quantize_int8

    a, w, packed = _int4_operands(40, 256, 72, seed=9)
    sa, sw = torch.tensor(0.02, device="cuda"), torch.full((72,), 0.01, device="cuda")
    out = int8_gemm(a, packed, sa, sw, out_dtype=torch.int8, out_scale=0.05, out_range=(0, 15))
    ref = epilogue(a.cpu().long() @ w.cpu().long().t(), sa.cpu(), sw.cpu(), None, -1, out_scale=torch.tensor(0.05),
                   out_range=(0, 15))
    assert torch.equal(out.cpu(), ref) and int(out.min()) == 0 and int(out.max()) == 15
    x = torch.randn(33, 65, device="cuda")
    q, _ = quantize_int8(x, torch.tensor(0.1, device="cuda"), qmin=0, qmax=15)
    spec = QuantSpec(IntFormat(4, signed=False))
    assert torch.equal(q.cpu(), quantize(x.cpu(), spec, torch.tensor(0.1), torch.zeros((), dtype=torch.int32)))
    with pytest.raises(ValueError, match="out_range"):
        int8_gemm(a, packed, sa, sw, out_dtype=torch.int8, out_scale=0.05, out_range=(0, 200))
    with pytest.raises(ValueError, match=r"w \(packed INT4\) has shape \(72, 127\), expected \(72, 128\)"):
        int8_gemm(a, packed[:, :127], sa, sw)


def test_int4_linear_on_cuda_runs_the_kernel():
    import copy

    from torch import nn

    import lowbit

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(301, 130), nn.ReLU(), nn.Linear(130, 64), nn.ReLU(), nn.Linear(64, 10))
    q_cpu = lowbit.quantize(model, "int4", [torch.randn(16, 301) for _ in range(2)], "max")
    middle = q_cpu[2]
    assert middle.packed and middle.input_spec.fmt.name == "u4"
    q_gpu = copy.deepcopy(q_cpu).cuda()
    x = torch.randn(9, 301)
    with torch.no_grad():
        assert torch.equal(q_gpu(x.cuda()).cpu(), q_cpu(x))


def test_nan_inputs_are_counted_and_the_integer_layer_reports_them():
    from torch import nn

    import lowbit
    from lowbit.errors import InputError
    from lowbit.kernels.triton import quantize_int8
    from lowbit.nn.registry import CHECK_EVERY

    x = torch.randn(3, 4097, device="cuda")
    x[0, 5] = x[2, 4096] = float("nan")
    count = torch.zeros(1, dtype=torch.int32, device="cuda")
    q, _ = quantize_int8(x, torch.tensor(0.1, device="cuda"), nan_count=count)
    quantize_int8(x[1:2], torch.tensor(0.1, device="cuda"), nan_count=count)
    assert int(count) == 2
    spec = QuantSpec(IntFormat(8))
    finite = ~torch.isnan(x)
    ref = quantize(x.cpu(), spec, torch.tensor(0.1), torch.zeros((), dtype=torch.int32))
    assert torch.equal(q[finite].cpu(), ref[finite.cpu()])

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(300, 130), nn.ReLU(), nn.Linear(130, 10))
    qmodel = lowbit.quantize(model, "int8", calib_data=[torch.randn(16, 300)]).cuda()
    x = torch.randn(4, 300, device="cuda")
    qmodel(x)  # a clean input is fine
    x[1, 7] = float("nan")
    with pytest.raises(InputError, match="layer '0': [0-9]+ NaN input value"):
        for _ in range(CHECK_EVERY):
            qmodel(x)
