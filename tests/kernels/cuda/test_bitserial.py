"""The NVRTC bit-serial kernel: it compiles for Ampere and Hopper everywhere NVRTC is installed, and on
a GPU gives exactly the reference's bits on awkward shapes."""

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

import lowbit
from lowbit.config import IntFormat
from lowbit.kernels.cuda import SOURCE_DIR, compile_cubin
from lowbit.kernels.reference import bitserial_acc, rescale
from lowbit.numerics.bitlayers import input_planes, padded_words, to_bitlayers

needs_nvrtc = pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="needs cuda-bindings (NVRTC)")


@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("m,words,act_bits,stored", [(1, 16, 8, 8), (1, 128, 8, 8), (3, 64, 16, 4), (8, 256, 8, 8),
                                                      (33, 32, 16, 16), (1, 65 * 8 * 16, 16, 16)])
@pytest.mark.parametrize("planes_a_stage", [None, 1])
def test_kernel_compiles_with_nvrtc(arch, m, words, act_bits, stored, planes_a_stage):
    from lowbit.kernels.cuda.bitserial import _config

    cfg = _config(m, words, act_bits, stored)
    cfg["PG"] = planes_a_stage or cfg["PG"]
    source = (Path(SOURCE_DIR) / "bitserial.cu").read_text()
    assert len(compile_cubin(source, "bitserial.cu", [f"-D{k}={v}" for k, v in cfg.items()], arch)) > 0


@needs_nvrtc
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
@pytest.mark.parametrize("m,next_a8,next_ring", [(1, 8, 0), (8, 16, 1), (33, 8, 1)])
def test_kernel_writing_the_next_layers_input_compiles(arch, m, next_a8, next_ring):
    from lowbit.kernels.cuda.bitserial import _config

    cfg = {**_config(m, 128, 8, 8), "NEXT_A8": next_a8, "NEXT_RING": next_ring}
    source = (Path(SOURCE_DIR) / "bitserial.cu").read_text()
    assert len(compile_cubin(source, "bitserial.cu", [f"-D{k}={v}" for k, v in cfg.items()], arch)) > 0


def test_int32_sums_widen_only_where_a_warp_could_pass_int32():
    from lowbit.kernels.cuda.bitserial import MAX_WARPS_K, _config, _flush_chunks

    assert _flush_chunks(16) == 64  # 64 * 512 * (2^16 - 1) < 2^31 < 65 * ...
    assert _flush_chunks(8) * 512 * 255 < 1 << 31 <= (_flush_chunks(8) + 1) * 512 * 255
    at_limit = padded_words(64 * MAX_WARPS_K * 512)  # 64 chunks a warp
    assert _config(1, at_limit, 8, 16)["WIDE"] == 0
    assert _config(1, padded_words(64 * MAX_WARPS_K * 512 + 1), 8, 16)["WIDE"] == 1
    assert _config(1, padded_words(64 * MAX_WARPS_K * 512 + 1), 8, 8)["WIDE"] == 0


@pytest.mark.parametrize("act_bits", [8, 16])
def test_a_block_keeps_8_warps_in_column_groups_that_cover_the_batch(act_bits):
    from lowbit.kernels.cuda.bitserial import _column_blocks, _config

    for m in range(1, 70):
        for words in (16, 32, 256):
            cfg = _config(m, words, act_bits, 8)
            assert cfg["CW"] * cfg["WARPS_K"] <= 8 and cfg["WARPS_K"] <= words // 16
            assert _column_blocks(m, cfg) * cfg["CW"] * cfg["NT"] * 8 >= m * cfg["A8"]
            assert cfg["CW"] == 1 or cfg["CW"] * cfg["NT"] * 8 < m * cfg["A8"] + cfg["NT"] * 8  # no idle group
    assert _config(1, 256, act_bits, 8)["CW"] == 1


def _reference(x, planes, active, x_scale, act_bits, signed, w_scale, bias):
    fmt = IntFormat(act_bits, signed=signed)
    xq = torch.clamp(torch.round(x / x_scale), fmt.qmin, fmt.qmax).to(torch.int32)
    acc = bitserial_acc(planes, input_planes(xq, act_bits, signed), signed, active)
    return rescale(acc, x_scale, w_scale, bias, channel_dim=1)


def _kernel(x, planes, active, x_scale, act_bits, signed, w_scale, bias):
    """(the GPU kernel's output on the CPU, its saturation and NaN counts) for CPU tensors."""
    from lowbit.kernels.cuda.bitserial import bitserial_linear

    fmt = IntFormat(act_bits, signed=signed)
    flags = torch.zeros(2, dtype=torch.int64, device="cuda")
    out = bitserial_linear(x.cuda(), planes.cuda(), active, x_scale.cuda(), act_bits, fmt.qmin, fmt.qmax, signed,
                           (x_scale * w_scale).cuda(), bias.cuda(), flags)
    return out.cpu(), flags.cpu()


@pytest.mark.gpu
# K = 9000: 18 chunks of 512, so a warp takes 2 or 3 of them through the two-stage weight pipeline.
@pytest.mark.parametrize("m,n,k", [(1, 17, 77), (3, 130, 513), (8, 64, 1000), (33, 5, 1), (2, 300, 4096),
                                   (5, 40, 9000)])
@pytest.mark.parametrize("weight_bits,active,act_bits,signed",
                         [(8, 8, 8, True), (8, 3, 8, False), (1, 1, 16, True), (4, 2, 11, True), (16, 16, 16, False),
                          (6, 6, 2, True)])
@pytest.mark.parametrize("planes_a_stage", [None, 1])
def test_kernel_equals_the_reference_exactly(m, n, k, weight_bits, active, act_bits, signed, planes_a_stage,
                                             monkeypatch):
    from lowbit.kernels.cuda import bitserial as kernels

    if planes_a_stage:  # what large layers get (one wave of smaller blocks), here at every shape
        config = kernels._config
        monkeypatch.setattr(kernels, "_launch_config", lambda m, n, words, act_bits, n_stored, device: {
            **config(m, words, act_bits, n_stored), "PG": planes_a_stage})

    g = torch.Generator().manual_seed(m * 1000 + n + k + weight_bits)
    u = torch.randint(0, 1 << weight_bits, (n, k), generator=g, dtype=torch.int32)
    planes = to_bitlayers(u, weight_bits)
    assert planes.shape[-1] == padded_words(k)
    x = torch.randn(m, k, generator=g) * 3
    x_scale = torch.tensor(0.7 / (1 << (act_bits - 2)))
    w_scale = torch.rand(n, generator=g) + 0.1
    bias = torch.randn(n, generator=g)
    out, flags = _kernel(x, planes, active, x_scale, act_bits, signed, w_scale, bias)
    assert torch.equal(out, _reference(x, planes, active, x_scale, act_bits, signed, w_scale, bias))
    fmt = IntFormat(act_bits, signed=signed)
    q = torch.round(x / x_scale)
    assert int(flags[0]) == int(((q < fmt.qmin) | (q > fmt.qmax)).sum())


@pytest.mark.gpu
def test_sums_past_int32_widen_exactly():
    """16-bit weights and inputs over K = 300,000: a warp's 74 chunks flush their int32 sums into int64."""
    from lowbit.kernels.cuda.bitserial import _config

    m, n, k, bits = 2, 20, 300_000, 16
    assert _config(m, padded_words(k), bits, bits)["WIDE"] == 1
    g = torch.Generator().manual_seed(7)
    planes = to_bitlayers(torch.randint(0, 1 << bits, (n, k), generator=g, dtype=torch.int32), bits)
    x = torch.randn(m, k, generator=g).abs() * 3  # same-sign inputs: the sums grow with K
    x_scale, w_scale, bias = torch.tensor(3.0 / (1 << 15)), torch.rand(n, generator=g) + 0.1, torch.randn(n, generator=g)
    args = (x, planes, bits, x_scale, bits, True, w_scale, bias)
    assert torch.equal(_kernel(*args)[0], _reference(*args))


@pytest.mark.gpu
def test_a_layer_too_large_for_one_wave_takes_one_plane_a_stage():
    from lowbit.kernels.cuda.bitserial import _launch_config

    n, k = 16 * 4 * torch.cuda.get_device_properties(0).multi_processor_count + 3, 4100
    assert _launch_config(1, n, padded_words(k), 8, 8, torch.device("cuda", 0))["PG"] == 1
    assert _launch_config(1, 16 * 12, padded_words(k), 8, 8, torch.device("cuda", 0))["PG"] == 4
    g = torch.Generator().manual_seed(3)
    planes = to_bitlayers(torch.randint(0, 256, (n, k), generator=g, dtype=torch.int32), 8)
    x = torch.randn(1, k, generator=g)
    x_scale, w_scale, bias = torch.tensor(0.03), torch.rand(n, generator=g) + 0.1, torch.randn(n, generator=g)
    for active in (8, 3, 1):
        args = (x, planes, active, x_scale, 8, True, w_scale, bias)
        assert torch.equal(_kernel(*args)[0], _reference(*args))


@pytest.mark.gpu
def test_quantized_model_on_the_gpu_equals_the_cpu_for_every_bitlayer_count():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(300, 520), torch.nn.ReLU(), torch.nn.Linear(520, 10))
    q_cpu = lowbit.quantize(model, "bitserial", calib_data=[torch.randn(64, 300) for _ in range(3)], weight_bits=8,
                            act_bits=8)
    q_gpu = copy.deepcopy(q_cpu).cuda()
    x = torch.randn(7, 300)
    for k in (8, 5, 1):
        lowbit.set_bitlayers(q_cpu, k)
        lowbit.set_bitlayers(q_gpu, k)
        assert torch.equal(q_gpu(x.cuda()).cpu(), q_cpu(x))


def _linked_pair(k, n, act_bits, relu, signed_next):
    """Two bit-serial layers, the first's output the second's input (linked: tests/nn/test_bitserial.py)."""
    torch.manual_seed(k + n + act_bits)
    model = torch.nn.Sequential(torch.nn.Linear(k, n), *([torch.nn.ReLU()] if relu else []), torch.nn.Linear(n, 19))
    # Calibrating the second layer's inputs on smaller values than it will get: some saturate.
    calib = [torch.randn(16, k) * 0.5]
    q = lowbit.quantize(model, "bitserial", calib_data=calib, weight_bits=5, act_bits=act_bits).cuda()
    first, second = q[0], q[-1]
    assert first._next_layer is second and second.input_format.signed == signed_next
    return q, first, second


@pytest.mark.gpu
@pytest.mark.parametrize("m", [1, 3, 8, 33])
@pytest.mark.parametrize("k,n", [(77, 16), (40, 40), (130, 77), (300, 520), (64, 4096)])
@pytest.mark.parametrize("act_bits,relu", [(8, True), (8, False), (16, False), (5, True)])
def test_a_layer_writes_the_next_layers_input_exactly(m, k, n, act_bits, relu):
    """The first GEMM's epilogue writes the second layer's planes and half-word sums (padding included),
    and counts its saturated inputs, exactly as that layer's input kernel does from the output."""
    from lowbit.kernels.cuda.bitserial import input_planes as planes_of, layer_kernels

    q, first, second = _linked_pair(k, n, act_bits, relu, signed_next=not relu)
    x = torch.randn(m, k, device="cuda") * 3
    y = first(x)
    made = second._handoff[3]
    fmt = second.input_format
    flags = torch.zeros(2, dtype=torch.int64, device="cuda")
    cfg, module = layer_kernels(m, second.bitlayers, fmt.bits, x.device)
    xplanes, xsum = planes_of(y, second.input_scale, fmt.bits, fmt.qmin, fmt.qmax, second.bitlayers.shape[-1], flags,
                              cfg, module)
    assert torch.equal(made.xplanes, xplanes) and torch.equal(made.xsum, xsum)
    assert torch.equal(second.input_flags, flags)
    assert torch.equal(second(y), second(y.clone()))  # the planes handed over, then the layer's own
    assert torch.equal(q(x.cpu().cuda()), q.cpu()(x.cpu()).cuda())


@pytest.mark.gpu
def test_planes_handed_over_are_dropped_when_their_tensor_or_scale_changes():
    q, first, second = _linked_pair(100, 200, 8, True, signed_next=False)
    x = torch.randn(2, 100, device="cuda") * 3
    y = first(x)
    y.mul_(0.5)  # after the planes were made from it
    assert torch.equal(second(y), second(y.clone()))
    y = first(x)
    second.input_scale.mul_(1.5)
    assert torch.equal(second(y), second(y.clone()))
    y = first(x)
    second(first(x))  # another output took the handoff
    assert second._handoff is None and torch.equal(second(y), second(y.clone()))
    run = lowbit.CudaGraphModule(q, x)
    assert torch.equal(run(x), q(x))
    from lowbit.kernels.cuda.bitserial import bitserial_linear

    fmt = first.input_format
    with pytest.raises(ValueError, match="cannot hold 2 rows of this layer's 200 outputs"):
        bitserial_linear(x, first.bitlayers, first.active, first.input_scale, fmt.bits, fmt.qmin, fmt.qmax, fmt.signed,
                         first._scale(), first.bias, first.input_flags, next_input=second.input_buffers(1, x.device))


@pytest.mark.gpu
def test_gpu_counts_saturation_and_reports_nans():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24))
    q = lowbit.quantize(model, "bitserial", calib_data=[torch.randn(16, 40)], weight_bits=4, act_bits=8).cuda()
    q(torch.full((2, 40), 1e6, device="cuda"))
    with pytest.warns(UserWarning, match="80 input values fell outside"):
        assert q[0].saturated == 80
    q(torch.full((1, 40), float("nan"), device="cuda"))
    with pytest.raises(ValueError, match="40 NaN input value"):
        q[0].saturated


@pytest.mark.gpu
def test_without_nvrtc_the_gpu_runs_the_reference_with_one_warning(monkeypatch):
    import lowbit.nn.bitserial as bitserial_nn
    import lowbit.nn.mixed_linear as mixed_linear

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(40, 24))
    q = lowbit.quantize(model, "bitserial", calib_data=[torch.randn(16, 40)], weight_bits=4, act_bits=8)
    x = torch.randn(3, 40)
    expected = q(x)
    monkeypatch.setattr(bitserial_nn, "bitserial_supported", lambda device: False)
    monkeypatch.setattr(mixed_linear, "_FALLBACK_WARNED", set())
    q = q.cuda()
    with pytest.warns(UserWarning, match="bitserial layers run the reference path here"):
        out = q(x.cuda())
    assert torch.equal(out.cpu(), expected)
