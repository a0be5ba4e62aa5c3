"""The layout predicate the GPU launchers share (lowbit.kernels.rows_16_byte_aligned), on CPU tensors."""

import torch

from lowbit.kernels import rows_16_byte_aligned


def test_rows_must_have_unit_stride_and_start_on_16_byte_boundaries():
    codes = torch.zeros(4, 64, dtype=torch.int8)
    assert rows_16_byte_aligned(codes)
    assert rows_16_byte_aligned(torch.zeros(4, 8, dtype=torch.bfloat16))  # 16-byte rows of 2-byte values
    assert not rows_16_byte_aligned(torch.zeros(4, 12, dtype=torch.bfloat16))  # 24-byte rows
    assert not rows_16_byte_aligned(torch.zeros(4, 33, dtype=torch.int8))  # 33-byte rows
    assert not rows_16_byte_aligned(codes[:, 1:])  # starts one byte in
    assert rows_16_byte_aligned(codes[:, 16:])  # starts 16 bytes in, rows still 64 bytes apart
    assert not rows_16_byte_aligned(codes[:, ::2])  # stride 2 along the row
    assert not rows_16_byte_aligned(codes.t())  # column-major
