import pytest
import torch

from lowbit.errors import ConfigError
from lowbit.numerics import pack_bitplanes, pack_int4, unpack_bitplanes, unpack_int4


@pytest.mark.parametrize("shape", [(1,), (7,), (3, 10), (2, 3, 33)])
@pytest.mark.parametrize("signed", [True, False])
def test_int4_round_trip(shape, signed):
    lo, hi = (-8, 8) if signed else (0, 16)
    q = torch.randint(lo, hi, shape, dtype=torch.int8)
    packed = pack_int4(q, signed)
    assert packed.dtype == torch.uint8 and packed.shape[-1] == (shape[-1] + 1) // 2
    assert torch.equal(unpack_int4(packed, shape[-1], signed), q)


def test_int4_nibble_order():
    packed = pack_int4(torch.tensor([1, -2, 7], dtype=torch.int8))
    assert packed.tolist() == [0x1 | (0xE << 4), 0x7]


def test_int4_range_checked():
    with pytest.raises(ConfigError, match="outside the signed 4-bit range"):
        pack_int4(torch.tensor([8]))


@pytest.mark.parametrize("bits", [1, 2, 3, 8, 16])
@pytest.mark.parametrize("signed", [True, False])
@pytest.mark.parametrize("k", [1, 31, 32, 33, 100])
def test_bitplanes_round_trip(bits, signed, k):
    if signed and bits == 1:
        lo, hi = -1, 1
    else:
        lo, hi = (-(1 << (bits - 1)), 1 << (bits - 1)) if signed else (0, 1 << bits)
    q = torch.randint(lo, hi, (4, k))
    planes = pack_bitplanes(q, bits, signed)
    assert planes.shape == (bits, 4, (k + 31) // 32) and planes.dtype == torch.int32
    assert torch.equal(unpack_bitplanes(planes, k, signed), q)


def test_bitplane_layout():
    q = torch.tensor([[5, -1] + [0] * 31])  # 33 elements -> 2 words
    planes = pack_bitplanes(q, 4, signed=True)
    # 5 = 0b0101, -1 = 0b1111 in 4-bit two's complement; element i is bit i of the word
    assert planes[0, 0].tolist() == [0b11, 0]
    assert planes[1, 0].tolist() == [0b10, 0]
    assert planes[2, 0].tolist() == [0b11, 0]
    assert planes[3, 0].tolist() == [0b10, 0]


def test_bitplane_top_bit_of_word():
    q = torch.zeros(1, 32, dtype=torch.int64)
    q[0, 31] = 1
    assert pack_bitplanes(q, 1, signed=False)[0, 0, 0].item() == -(1 << 31)
