"""The INT4-group kernels (W4A16, W4A8) and the FP8 path: the layout holds exactly the codes the mma
fragments need (checked on the CPU), the kernels compile everywhere NVRTC is installed, and on a GPU
every weight and input code equals the reference's, and the outputs equal it up to the order of the
float32 sums."""

import importlib.util
import warnings
from pathlib import Path

import pytest
import torch

from lowbit.kernels.cuda import SOURCE_DIR, compile_cubin
from lowbit.kernels.cuda.int4_group import MAX_ROWS, W4A8, W4A16, WORD_COLUMNS, kernel_layout
from lowbit.nn.geometry import LayerGeometry
from lowbit.nn.mixed_linear import FP8Linear, W4A8Linear, W4A16Linear
from lowbit.nn.registry import CHECK_EVERY
from lowbit.nn.weight_quantizer import Int4GroupCodes
from lowbit.numerics.groupwise import group_qparams, protective_scale, quantize_groups, scales_on_grid

needs_nvrtc = pytest.mark.skipif(importlib.util.find_spec("cuda") is None, reason="needs cuda-bindings (NVRTC)")
# (N, K, group): uneven N, K not a multiple of 64 or of the group, per channel (group = K), group 32, an odd
# count of chunks in units of two (576), a group that is no multiple of 64 (96)
SHAPES = [(37, 200, 32), (16, 576, 128), (130, 1000, 128), (24, 100, 100), (64, 4096, 64), (3, 64, 64),
          (40, 480, 96)]


def _codes(n, k, group, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(n, k, generator=g)
    scale, zero = group_qparams(w, group, symmetric=False)
    return quantize_groups(w, scale, zero, group), scale.to(torch.float16), zero


def _chunk_words(kw):
    """The codes' words of the stream as [tile, chunk, lane, word] (padded chunks included)."""
    return (kw.stream[:, :, :kw.unit * 128].long() & 0xFFFFFFFF).reshape(kw.tiles, -1, 32, 4)


def _lane_constants(kw, tile, chunk, lane):
    """(s, zb) bits of rows g and g + 8 for lane (g, t) in ``chunk``, read as int4_group.cu's lane_set does."""
    g, t = divmod(lane, 4)
    unit, offset = divmod(chunk, kw.unit)
    sets = (kw.stream[tile, unit, kw.unit * 128:].long() & 0xFFFFFFFF).reshape(kw.sets, 8, 2)
    which = (chunk * 64 + 16 * t) // kw.group - chunk * 64 // kw.group if kw.sets == 2 else 0
    return [(int(word) & 0xFFFF, int(word) >> 16) for word in sets[which, g]]


@pytest.mark.parametrize("mode", [W4A16, W4A8])
@pytest.mark.parametrize("n,k,group", SHAPES[:3] + SHAPES[-1:])
def test_layout_holds_each_lanes_fragment_codes(mode, n, k, group):
    codes, scale, zero = _codes(n, k, group, seed=n + k)
    kw = kernel_layout(codes, scale, zero, group, mode)
    words = _chunk_words(kw)
    assert kw.chunks == -(-k // 64) and words.shape[1] == kw.units * kw.unit >= kw.chunks
    padded = torch.zeros(kw.tiles * 16, words.shape[1] * 64, dtype=torch.long)
    padded[:n, :k] = codes.long()
    for tile in range(kw.tiles):
        for chunk in range(words.shape[1]):
            for lane in (0, 6, 31):
                g, t = divmod(lane, 4)
                for word in range(4):
                    r, h = divmod(word, 2)
                    for i in range(8):
                        code = int(words[tile, chunk, lane, word] >> (4 * i)) & 0xF
                        column = chunk * 64 + 16 * t + 8 * h + WORD_COLUMNS[i]
                        assert code == padded[tile * 16 + g + 8 * r, column]


@pytest.mark.parametrize("mode", [W4A16, W4A8])
@pytest.mark.parametrize("n,k,group,unit,sets", [(37, 200, 32, 1, 2), (20, 480, 96, 1, 2), (40, 448, 64, 1, 1),
                                                 (20, 576, 128, 2, 1), (20, 100, 100, 2, 1), (40, 1024, 256, 2, 1)])
def test_layout_gives_each_lane_the_scale_and_zero_of_its_columns(mode, n, k, group, unit, sets):
    codes, scale, zero = _codes(n, k, group, seed=1)
    kw = kernel_layout(codes, scale, zero, group, mode)
    assert (kw.unit, kw.sets) == (unit, sets)
    half, base = (torch.bfloat16, 128) if mode == W4A16 else (torch.float16, 1024)

    def value(bits):
        return float(torch.tensor([bits], dtype=torch.int32).to(torch.int16).view(half))

    for tile in range(kw.tiles):
        for chunk in range(kw.chunks):
            for lane in range(32):
                g, t = divmod(lane, 4)
                column = min(chunk * 64 + 16 * t, k - 1)
                for r, (s_bits, zb_bits) in enumerate(_lane_constants(kw, tile, chunk, lane)):
                    row = tile * 16 + g + 8 * r
                    if row >= n:
                        assert s_bits == 0  # padded rows: scale 0
                        continue
                    assert value(s_bits) == float(scale[row, column // group])
                    assert value(zb_bits) == -(base + float(zero[row, column // group]))


def test_layout_refuses_groups_the_kernel_cannot_take():
    codes, scale, zero = _codes(8, 200, 48, seed=0)
    with pytest.raises(ValueError, match="multiple of 32"):
        kernel_layout(codes, scale, zero, 48, W4A16)


def test_scales_are_rounded_to_the_bits_the_kernel_converts_exactly():
    w = torch.randn(64, 256) * torch.logspace(-6, 3, 64)[:, None]
    for symmetric in (False, True):
        scale, _ = group_qparams(w, 32, symmetric)
        assert scales_on_grid(scale.to(torch.float16))
    assert not scales_on_grid(torch.tensor([1 + 2 ** -10], dtype=torch.float16))


@needs_nvrtc
@pytest.mark.parametrize("arch,mode,xin", [("sm_80", W4A16, 0), ("sm_90", W4A16, 0), ("sm_89", W4A8, 0),
                                           ("sm_90", W4A8, 0), ("sm_90", W4A8, 1), ("sm_89", W4A8, 2)])
# each column-tile count with one unit shape (int4_group.cu: two chunks, one, one with two sets) and
# weight tiles and warps per block
@pytest.mark.parametrize("nt,unit,sets,group,tb,warps", [(1, 2, 1, 0, 1, 8), (2, 1, 1, 0, 2, 8), (4, 1, 2, 96, 2, 6)])
def test_kernels_compile_with_nvrtc(arch, mode, xin, nt, unit, sets, group, tb, warps):
    source = (Path(SOURCE_DIR) / "int4_group.cu").read_text()
    options = [f"-DMODE={mode}", f"-DNT={nt}", f"-DXIN={xin}", f"-DU={unit}", f"-DSETS={sets}", f"-DGROUP={group}",
               f"-DTB={tb}", f"-DKWARPS={warps}"]
    assert len(compile_cubin(source, "int4_group.cu", options, arch)) > 0


def _layer(cls, n, k, group, seed, activation="static", bias=True):
    torch.manual_seed(seed)
    w = torch.randn(n, k)
    options = {"group_size": group, "symmetric": False}
    if cls is not W4A16Linear:
        options["activation"] = activation
    geometry = LayerGeometry.of(torch.nn.Linear(k, n, bias=bias))
    if cls is FP8Linear:
        layer = FP8Linear(geometry, {"activation": activation})
        amax = w.abs().amax(1)
        layer.weight_scale.copy_(amax / 448)
        layer.qweight.copy_((w / layer.weight_scale[:, None]).to(torch.float8_e4m3fn))
    else:
        layer = cls(geometry, options)
        s8 = protective_scale(w) if cls is W4A8Linear else torch.tensor(1.0)
        scale, zero = group_qparams(w / s8, group, symmetric=False)
        layer.set_codes(Int4GroupCodes(quantize_groups(w / s8, scale, zero, group), scale, zero, s8, group))
    if hasattr(layer, "input_scale"):
        layer.input_scale.fill_(0.02)
    if bias:
        layer.bias.copy_(torch.randn(n))
    return layer


def _float64_reference(layer, x):
    """The layer's arithmetic in float64 on the CPU, and the size of its sums (sum |x w| |scale|): the
    order of the float32 sums is the only freedom the kernels have, so they must agree to a small
    multiple of float32 rounding of that size."""
    if isinstance(layer, W4A16Linear):
        xq, w, scale = x.to(torch.bfloat16).double(), layer.weight_values().double(), torch.tensor(1.0)
    else:
        xq, sx = layer._fp8_input(x)
        w = layer.weight_values() if isinstance(layer, W4A8Linear) else layer.qweight.float()
        xq, w, scale = xq.double(), w.double(), sx.double() * layer.weight_scale.double()
    y = (xq @ w.t()) * scale + (layer.bias.double() if layer.bias is not None else 0.0)
    return y, (xq.abs() @ w.abs().t()) * scale.abs()


# Hopper's FP8 tensor cores (the Triton GEMM's wgmma) sum a tile's products keeping about 14 bits
# (kernels/triton/gemm.py:float_gemm); the mma.sync kernels and bf16 dots sum in float32.
FP8_TENSOR_CORES = 2e-3
FLOAT32_SUMS = 1e-5


def _close(out, ref, tolerance=FLOAT32_SUMS):
    """Within ``tolerance`` of the sums' size from the float64 result."""
    y, size = ref
    err = (out.double().cpu() - y).abs()
    assert (err <= tolerance * size.max() + 1e-6).all(), float(err.max() / size.max())


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [W4A16Linear, W4A8Linear])
@pytest.mark.parametrize("n,k,group", SHAPES)
def test_dequantized_weights_equal_the_reference_exactly(cls, n, k, group):
    from lowbit.kernels.cuda.int4_group import dequantize

    layer = _layer(cls, n, k, group, seed=n * k)
    ref = layer.weight_values()  # bf16 or E4M3 values, as float32
    w = dequantize(layer.cuda().kernel_weights(), layer.kernel_mode)
    assert w.shape == (n, -(-k // 64) * 64)
    assert torch.equal(w[:, :k].float().cpu(), ref)


def _one_hot_outputs_equal_the_reference(layer):
    """x = the unit rows: y[i, n] = w[n, i] * s8 + bias (one product each, so no rounding freedom)."""
    k = layer.geometry.in_channels
    layer.input_scale.fill_(1.0)
    ref = layer(torch.eye(k))
    gpu = layer.cuda()
    for start in range(0, k, 32):
        out = gpu(torch.eye(k, device="cuda")[start:start + 32])
        assert torch.equal(out.cpu(), ref[start:start + 32]), start


@pytest.mark.gpu
@pytest.mark.parametrize("n,k,group", SHAPES[:4] + SHAPES[-1:])
def test_one_hot_inputs_give_each_weight_exactly(n, k, group):
    """The few-rows kernel puts every weight, scale and zero point where it belongs."""
    _one_hot_outputs_equal_the_reference(_layer(W4A8Linear, n, k, group, seed=3))


def _w4a8_layer_of(scale, zero, codes, group):
    n, k = codes.shape
    layer = W4A8Linear(LayerGeometry.of(torch.nn.Linear(k, n, bias=False)),
                       {"group_size": group, "symmetric": False, "activation": "static"})
    layer.set_codes(Int4GroupCodes(codes, scale, zero, torch.tensor(1.0), group))
    return layer


@pytest.mark.gpu
def test_w4a8_rounds_every_weight_to_e4m3_exactly():
    """Every weight (c - z) s of every scale of 7 significant bits from 2^-14 up to 64: a row for each
    scale, its first group's codes 0..15 at z = 0 and its second's at z = 15 (every |c - z| of 0..15 of
    both signs), so that the weights cover E4M3's subnormals, its normal range and saturation past 448."""
    from lowbit.kernels.cuda.int4_group import dequantize

    scales = torch.tensor([(1 + m / 64) * 2.0 ** e for e in range(-14, 6) for m in range(64)])
    n = len(scales)
    codes = torch.arange(16, dtype=torch.uint8).repeat(n, 4)  # [n, 64]: 0..15 four times
    zero = torch.tensor([0, 15], dtype=torch.uint8).repeat(n, 1)
    layer = _w4a8_layer_of(scales[:, None].expand(n, 2), zero, codes, 32)
    ref = layer.weight_values()
    assert (ref.abs() == 448).any() and ((ref != 0) & (ref.abs() < 2 ** -6)).any()
    assert torch.equal(dequantize(layer.cuda().kernel_weights(), W4A8)[:, :64].float().cpu(), ref)
    _one_hot_outputs_equal_the_reference(layer.cpu())


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [W4A16Linear, W4A8Linear, FP8Linear])
@pytest.mark.parametrize("m", [1, 5, 16, 17, 32, 33, 100, 300])
@pytest.mark.parametrize("n,k,group", SHAPES[:3])
def test_layer_on_gpu_matches_the_reference(cls, m, n, k, group):
    layer = _layer(cls, n, k, group, seed=m + n)
    x = torch.randn(m, k) * 0.5
    ref = _float64_reference(layer, x)
    cpu = layer(x)
    out = layer.cuda()(x.cuda())
    assert out.dtype == torch.float32 and out.shape == (m, n)
    fp8_tensor_cores = cls is FP8Linear or (cls is W4A8Linear and m > MAX_ROWS)
    _close(out, ref, FP8_TENSOR_CORES if fp8_tensor_cores else FLOAT32_SUMS)
    _close(cpu, ref)


def _as_on_an_h100(monkeypatch, n: int, k: int):
    """The launch rules' view of an N x K layer of group-128 units (two chunks), as on an H100's 132
    multiprocessors: a stand-in for KernelWeights, so that no GPU is needed."""
    from types import SimpleNamespace

    from lowbit.kernels import cuda
    from lowbit.kernels.cuda import int4_group

    for module in (cuda, int4_group):
        monkeypatch.setattr(module, "multiprocessors", lambda device: 132)
    return SimpleNamespace(tiles=n // 16, chunks=k // 64, unit=2, units=k // 128)


@pytest.mark.parametrize("rows,n,k,shape", [(8, 8192, 8192, (1, 8)), (16, 8192, 8192, (2, 8)),
                                            (16, 28672, 8192, (2, 8)), (9, 8192, 4096, (2, 8)),
                                            (16, 7168, 2048, (2, 8)), (16, 8448, 4096, (2, 8)),
                                            (16, 6144, 4096, (1, 8)), (16, 8464, 4096, (1, 8)),
                                            (16, 11008, 4096, (1, 8)), (32, 11008, 4096, (2, 6)),
                                            (32, 4096, 4096, (1, 8))])
def test_blocks_take_two_weight_tiles_on_wide_layers_past_8_rows(rows, n, k, shape, monkeypatch):
    """The rule, as on an H100 (132 multiprocessors): on layers of 264 tiles or more, past 16 rows two tiles
    (6 warps), and from 9 rows (8 warps) where rows are at least 8192 columns long or the blocks of two
    tiles fill 80-100% of one wave of two a multiprocessor (212-264 blocks)."""
    from lowbit.kernels.cuda import int4_group

    weights = _as_on_an_h100(monkeypatch, n, k)
    assert int4_group._block_shape(rows, weights, torch.device("cpu")) == shape


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [W4A16Linear, W4A8Linear])
@pytest.mark.parametrize("m,shape", [(16, (1, 8)), (16, (2, 8)), (9, (2, 8)), (17, (2, 6)), (32, (2, 6)),
                                     (32, (1, 8))])
@pytest.mark.parametrize("n,k,group", [(37, 576, 32), (40, 4096, 128), (24, 640, 640), (4240, 320, 64)])
def test_every_block_shape_matches_the_reference(cls, m, shape, n, k, group, monkeypatch):
    """Each (weight tiles, warps) that the rule may pick past 8 rows (int4_group._block_shape), forced here
    on narrow and short layers too: tile counts that are no multiple of the block's (the last block's
    tiles past N), K split over blocks (40 x 4096), one group per row, W4A8 quantizing its input in the
    GEMM (576, 640 and 320 columns) or not."""
    from lowbit.kernels.cuda import int4_group

    monkeypatch.setattr(int4_group, "_block_shape", lambda *args: shape)
    layer = _layer(cls, n, k, group, seed=m + n)
    x = torch.randn(m, k) * 0.5
    ref = _float64_reference(layer, x)
    _close(layer.cuda()(x.cuda()), ref)


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [W4A8Linear, FP8Linear])
def test_dynamic_per_token_inputs(cls):
    layer = _layer(cls, 40, 320, 64, seed=1, activation="dynamic")
    x = torch.randn(3, 7, 320) * torch.tensor([0.1, 1.0, 30.0])[:, None, None]
    ref = _float64_reference(layer, x.reshape(21, 320))
    out = layer.cuda()(x.cuda())
    assert out.shape == (3, 7, 40)
    _close(out.reshape(21, 40), ref, FP8_TENSOR_CORES if cls is FP8Linear else FLOAT32_SUMS)


@pytest.mark.gpu
def test_input_codes_and_scales_equal_the_reference():
    from lowbit.kernels.cuda.int4_group import prepare_input
    from lowbit.numerics.fp8 import fp8_activation_grid, per_token_fp8_scale

    x = torch.randn(9, 131) * 3
    x[0, 5] = 1e4  # saturates at the static scale
    x[1] = 0.0
    scale = torch.tensor(0.01)
    nan_count = torch.zeros(1, dtype=torch.int32, device="cuda")
    for source in (x, x.to(torch.bfloat16)):
        xq, _ = prepare_input(source.cuda(), W4A8, 192, scale.cuda(), False, nan_count)
        assert xq.dtype == torch.float8_e4m3fn
        assert torch.equal(xq[:, :131].float().cpu(), fp8_activation_grid(source, scale))
        assert not xq[:, 131:].float().any()
        xh, _ = prepare_input(source.cuda(), W4A8, 192, scale.cuda(), False, nan_count, half_out=True)
        assert xh.dtype == torch.float16 and torch.equal(xh.float(), xq.float())
        xq, sx = prepare_input(source.cuda(), W4A8, 192, None, True, nan_count)
        ref_scale = per_token_fp8_scale(source)
        assert torch.equal(sx.cpu(), ref_scale[:, 0])
        assert torch.equal(xq[:, :131].float().cpu(), fp8_activation_grid(source, ref_scale))
        xb, _ = prepare_input(source.cuda(), W4A16, 192)
        assert torch.equal(xb[:, :131].cpu(), source.to(torch.bfloat16))
    assert int(nan_count) == 0


def test_int4_gemm_quantizes_few_aligned_rows_itself():
    from lowbit.kernels.cuda.int4_group import MAX_STAGED_BYTES, quantizes_input

    kw = kernel_layout(*_codes(40, 640, 128, seed=0), 128, W4A8)
    x = torch.randn(MAX_ROWS + 1, 648)
    ok = x[:, :640]  # rows 648 * 4 bytes apart: 16-byte aligned
    assert quantizes_input(ok[:1], kw, W4A8, per_token=False)
    assert quantizes_input(ok[:MAX_ROWS].to(torch.bfloat16), kw, W4A8, per_token=False)
    assert not quantizes_input(ok[:1], kw, W4A8, per_token=True)  # the row's max first: the input kernel
    assert not quantizes_input(ok, kw, W4A8, per_token=False)  # more rows than the few-rows kernel takes
    assert not quantizes_input(ok[:1], kw, W4A16, per_token=False)
    assert not quantizes_input(ok[:1].half(), kw, W4A8, per_token=False)
    assert not quantizes_input(x[:2, 1:641], kw, W4A8, per_token=False)  # misaligned rows
    odd_k = kernel_layout(*_codes(40, 600, 128, seed=0), 128, W4A8)
    assert not quantizes_input(x[:1, :600], odd_k, W4A8, per_token=False)  # K not a multiple of 64
    wide = kernel_layout(*_codes(16, 4096, 128, seed=0), 128, W4A8)
    rows = MAX_STAGED_BYTES // (4096 * 2)  # staged as fp16
    assert quantizes_input(torch.randn(rows - 1, 4096), wide, W4A8, per_token=False)
    assert not quantizes_input(torch.randn(rows, 4096), wide, W4A8, per_token=False)  # past the shared memory


@pytest.mark.parametrize("rows,n,k,pays", [(4, 8192, 2048, True), (8, 8192, 2048, False), (2, 11008, 4096, True),
                                           (4, 11008, 4096, False), (4, 2048, 2048, True), (8, 2048, 2048, False),
                                           (1, 8192, 8192, True), (2, 8192, 8192, False), (1, 4096, 11008, False),
                                           (1, 2048, 8192, True), (16, 576, 1536, True), (32, 1536, 576, True)])
def test_the_gemm_quantizes_its_input_where_few_values_are_staged(rows, n, k, pays, monkeypatch):
    """The rule, as on an H100 (132 multiprocessors): at most 8192 values staged a block (2048 x 8192 splits
    K over two blocks: 4096 a block at one row), or at most 14336 a multiprocessor over all blocks (1536 x 576,
    32 rows: 13,405)."""
    from lowbit.kernels.cuda import int4_group

    weights = _as_on_an_h100(monkeypatch, n, k)
    assert int4_group.quantizing_input_pays(rows, weights, torch.device("cpu")) == pays


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("m,n,k,group", [(m, *shape) for m in (1, 7, 16) for shape in
                                         [(37, 576, 32), (130, 896, 128), (24, 640, 640)]]
                         + [(32, 40, 320, 64), (32, 37, 576, 32), (1, 2200, 2048, 128), (3, 2200, 2048, 128),
                            (4, 2200, 7936, 128), (7, 24, 576, 128), (5, 40, 576, 96)])
def test_int4_gemm_quantizing_its_input_equals_the_input_kernel_path(dtype, m, n, k, group):
    """The one-launch path (x quantized in the GEMM) gives the same bits as the input kernel followed by
    the GEMM, saturation and rows of every size included; (130, 896) splits K over blocks (8 chunks,
    then 6); (2200, 2048) has rows long enough to be staged one after the other; 4 x 7936 stages 63,552
    bytes, past the 48 KiB a block gets by default."""
    from lowbit.kernels.cuda.int4_group import prepare_input, quantizes_input, small_m_gemm

    layer = _layer(W4A8Linear, n, k, group, seed=m + n).cuda()
    kw = layer.kernel_weights()
    x = (torch.randn(m, k, device="cuda") * 3 * torch.logspace(-3, 1, m, device="cuda")[:, None]).to(dtype)
    x[0, 1] = 1e4  # beyond 448 * 0.02: saturates
    sx, s8, bias = layer.input_scale, layer.weight_scale, layer.bias.float()
    assert quantizes_input(x, kw, W4A8, per_token=False)
    nans = torch.zeros(1, dtype=torch.int32, device="cuda")
    xq, _ = prepare_input(x, W4A8, k, sx, False, nans, half_out=True)
    two_kernels = small_m_gemm(xq, kw, W4A8, sx, False, s8, bias, torch.float32)
    one_kernel = small_m_gemm(x, kw, W4A8, sx, False, s8, bias, torch.float32, nans)
    assert torch.equal(one_kernel, two_kernels)
    assert int(nans) == 0


@pytest.mark.gpu
def test_int4_gemm_refuses_an_input_it_cannot_quantize_itself():
    from lowbit.kernels.cuda.int4_group import small_m_gemm

    layer = _layer(W4A8Linear, 40, 640, 128, seed=5).cuda()
    x = torch.randn(2, 640, device="cuda")
    with pytest.raises(ValueError, match="static scale"):
        small_m_gemm(x, layer.kernel_weights(), W4A8, None, True, layer.weight_scale, None, torch.float32)
    with pytest.raises(ValueError, match="float16 .E4M3 values from prepare_input"):  # codes, not values
        small_m_gemm(x.to(torch.float8_e4m3fn), layer.kernel_weights(), W4A8, layer.input_scale, False,
                     layer.weight_scale, None, torch.float32)


@pytest.mark.gpu
def test_int4_gemm_quantizing_its_input_counts_each_nan_once():
    from lowbit.kernels.cuda.int4_group import small_m_gemm

    layer = _layer(W4A8Linear, 300, 4096, 128, seed=4).cuda()  # 19 row tiles, K split over blocks
    x = torch.randn(3, 4096, device="cuda")
    nan_at = [(0, 0), (0, 4095), (2, 1000), (2, 1001), (1, 64)]
    for row, col in nan_at:
        x[row, col] = float("nan")
    nans = torch.zeros(1, dtype=torch.int32, device="cuda")
    small_m_gemm(x, layer.kernel_weights(), W4A8, layer.input_scale, False, layer.weight_scale, None,
                 torch.float32, nans)
    assert int(nans) == len(nan_at)


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [W4A16Linear, W4A8Linear])
def test_bf16_inputs_give_bf16_outputs(cls):
    layer = _layer(cls, 96, 256, 128, seed=2)
    x = torch.randn(4, 256).to(torch.bfloat16)
    ref, size = _float64_reference(layer, x.float())
    out = layer.cuda()(x.cuda())
    assert out.dtype == torch.bfloat16
    assert ((out.double().cpu() - ref).abs() <= ref.abs() * 2 ** -8 + 1e-5 * size.max()).all()


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [W4A16Linear, W4A8Linear])
def test_no_input_rows_give_no_output_rows(cls):
    from lowbit.kernels.cuda.int4_group import int4_group_linear

    layer = _layer(cls, 37, 200, 32, seed=0).cuda()
    scales = {"input_scale": layer.input_scale, "tensor_scale": layer.weight_scale} if cls is W4A8Linear else {}
    out = int4_group_linear(torch.empty(0, 200, device="cuda"), layer.kernel_weights(), layer.kernel_mode, **scales)
    assert out.shape == (0, 37) and out.dtype == torch.float32


@pytest.mark.gpu
@pytest.mark.parametrize("cls", [W4A8Linear, FP8Linear])
def test_nan_input_is_an_error_within_the_check_interval(cls):
    layer = _layer(cls, 16, 64, 64, seed=0).cuda()
    x = torch.randn(2, 64, device="cuda")
    x[1, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        for _ in range(CHECK_EVERY):
            layer(x)


@pytest.mark.gpu
def test_group_sizes_the_kernel_does_not_take_fall_back_with_a_warning(monkeypatch):
    import lowbit.nn.mixed_linear as mixed_linear

    monkeypatch.setattr(mixed_linear, "_FALLBACK_WARNED", set())
    layer = _layer(W4A8Linear, 24, 96, 48, seed=0)
    x = torch.randn(3, 96)
    ref = layer(x)
    with pytest.warns(UserWarning, match="w4a8 layers run the reference path here: .*multiple of 32"):
        out = layer.cuda()(x.cuda())
    assert torch.equal(out.cpu(), ref)


@pytest.mark.gpu
def test_scales_of_more_bits_fall_back_with_a_warning(monkeypatch):
    """A checkpoint whose float16 scales have more bits than the kernel converts exactly runs the reference."""
    import lowbit.nn.mixed_linear as mixed_linear

    monkeypatch.setattr(mixed_linear, "_FALLBACK_WARNED", set())
    layer = _layer(W4A16Linear, 24, 128, 64, seed=0)
    layer.group_scale.mul_(1 + 2 ** -9)
    x = torch.randn(3, 128)
    ref = layer(x)
    with pytest.warns(UserWarning, match="w4a16 layers run the reference path here: .*significant bits"):
        out = layer.cuda()(x.cuda())
    assert torch.allclose(out.cpu(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.gpu
def test_kernel_weights_follow_new_codes():
    layer = _layer(W4A16Linear, 32, 128, 64, seed=0).cuda()
    x = torch.randn(2, 128, device="cuda")
    first = layer(x)
    layer.group_scale.mul_(2)  # a power of two keeps the scales' bits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        second = layer(x)
    bias = layer.bias[None]
    assert torch.allclose(second - bias, 2 * (first - bias), rtol=1e-2, atol=1e-3)
