"""The float GEMM (E4M3 or bf16 operands, float32 accumulation) of the W4A8 / W4A16 / FP8 layers."""

import pytest
import torch


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.bfloat16])
@pytest.mark.parametrize("m,k,n", [(300, 129, 257), (17, 2000, 300), (4100, 272, 1100)], ids=["tile", "split_k", "tma"])
def test_float_gemm_every_config(dtype, m, k, n, pinned_config):
    from lowbit.kernels.triton import float_gemm, gemm

    g = torch.Generator(device="cuda").manual_seed(5)
    a = torch.randn(m, k, device="cuda", generator=g).to(dtype)
    w = torch.randn(n, k, device="cuda", generator=g).to(dtype)
    sa, sw = torch.tensor(0.5, device="cuda"), torch.rand(n, device="cuda")
    bias = torch.randn(n, device="cuda")
    ref = (a.double() @ w.double().t()) * (sa.double() * sw.double()) + bias.double()
    size = ((a.double().abs() @ w.double().abs().t()) * (sa.double() * sw.double())).max()  # of the sums
    if m <= gemm.SMALL_M:
        kernel, configs = gemm._SPLITK_KERNEL, gemm._splitk_configs()
    elif gemm._uses_tma(a, w, packed=False):  # E4M3 at the large shape
        kernel, configs = gemm._TMA_KERNEL, gemm._tma_configs()
    else:
        kernel, configs = gemm._TILE_KERNELS[8 * a.element_size()], gemm._tile_configs(8 * a.element_size())
    for config in configs:
        with pinned_config(kernel, config):
            out = float_gemm(a, w, sa, sw, bias, out_dtype=torch.float32)
        err = (out.double() - ref).abs().max()
        # bf16: float32 sums in another order; E4M3: Hopper's tensor cores keep ~14 bits inside a tile
        assert err <= (2e-3 if dtype == torch.float8_e4m3fn else 1e-5) * size + 1e-6, (config, float(err / size))
    with pytest.raises(TypeError, match="both float8_e4m3fn or both bfloat16"):
        float_gemm(a, w.float(), sa, sw)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float8_e4m3fn, torch.bfloat16])
def test_split_k_gives_the_same_bits_every_call(dtype, pinned_config):
    """Few rows split K over programs; their float32 partial sums meet in split order, so every split config
    gives the same bits call after call (in arrival order they need not)."""
    from lowbit.kernels.triton import float_gemm, gemm

    g = torch.Generator(device="cuda").manual_seed(7)
    a = (torch.randn(16, 4096, device="cuda", generator=g) * 4).to(dtype)
    w = torch.randn(2048, 4096, device="cuda", generator=g).to(dtype)
    sa, sw = torch.tensor(0.5, device="cuda"), torch.rand(2048, device="cuda")
    split = [c for c in gemm._splitk_configs() if c.kwargs["SPLIT_K"] > 1]
    assert split
    for config in split:
        with pinned_config(gemm._SPLITK_KERNEL, config):
            outs = [float_gemm(a, w, sa, sw, out_dtype=torch.float32) for _ in range(4)]
        assert all(torch.equal(outs[0], out) for out in outs[1:]), config
