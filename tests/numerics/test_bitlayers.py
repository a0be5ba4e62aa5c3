import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.numerics.bitlayers import (bitlayer_values, clip_search_scale, odd_grid_codes, odd_grid_values,
                                       to_bitlayers)


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8, 13, 16])
def test_bitlayers_hold_the_odd_codes(bits):
    g = torch.Generator().manual_seed(bits)
    u = torch.randint(0, 1 << bits, (7, 45), generator=g, dtype=torch.int32)
    planes = to_bitlayers(u, bits)
    assert planes.shape == (bits, 7, 16) and planes.dtype == torch.int32
    assert torch.equal(bitlayer_values(planes, 45), odd_grid_values(u, bits))


@pytest.mark.parametrize("bits,k", [(8, 1), (8, 3), (6, 5), (4, 4), (16, 9)])
def test_top_bitlayers_round_to_the_coarser_grid(bits, k):
    """k of n planes = the k-bit odd grid with a step 2^(n-k) coarser, rounded to nearest, same range."""
    g = torch.Generator().manual_seed(k)
    w = torch.randn(5, 300, generator=g)
    scale = clip_search_scale(w, bits)
    u = odd_grid_codes(w, scale, bits)
    truncated = bitlayer_values(to_bitlayers(u, bits), 300, k)
    coarse = odd_grid_values(odd_grid_codes(w, scale * (1 << (bits - k)), k), k) << (bits - k)
    assert torch.equal(truncated, coarse)


def test_odd_grid_rounds_to_nearest_level_and_one_bit_is_binary():
    w = torch.tensor([[-3.0, -0.2, 0.0, 0.3, 1.9, 2.1, 9.0]])
    scale = torch.tensor([1.0])
    assert odd_grid_values(odd_grid_codes(w, scale, 2), 2).tolist() == [[-3, -1, 1, 1, 1, 3, 3]]
    assert odd_grid_values(odd_grid_codes(w, scale, 1), 1).tolist() == [[-1, -1, 1, 1, 1, 1, 1]]


def test_clip_search_beats_the_full_range_and_handles_zero_rows():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 2000, generator=g)
    w[0, 0] = 40.0  # an outlier: the full range would waste the grid
    w[3] = 0
    scale = clip_search_scale(w, 4)
    full = w.abs().amax(1) / 15

    def err(s):
        return (odd_grid_values(odd_grid_codes(w, s, 4), 4) * s[:, None] - w).square().sum(1)

    assert torch.all(err(scale)[:3] <= err(full)[:3]) and err(scale)[0] < 0.5 * err(full)[0]
    assert scale[3] == 1.0


def test_bad_bits_and_active_counts_are_clear_errors():
    with pytest.raises(ConfigError, match="weight_bits=17"):
        clip_search_scale(torch.randn(2, 8), 17)
    planes = to_bitlayers(torch.zeros(2, 8, dtype=torch.int32), 4)
    with pytest.raises(ConfigError, match="5 bitlayers asked for, but the layer stores 4"):
        bitlayer_values(planes, 8, 5)
    with pytest.raises(ConfigError, match="integer"):
        bitlayer_values(planes, 8, 2.0)
