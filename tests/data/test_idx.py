import gzip
import os
import struct

import numpy as np
import pytest

from lowbit.data.idx import read_idx, write_idx
from lowbit.errors import DataError

DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64]
SHAPES = [(5,), (3, 4, 2), (0, 28, 28), ()]


def _sample(dtype, shape, seed=0):
    rng = np.random.default_rng(seed)
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    info = np.iinfo(dtype)
    # Include the extremes so sign and byte-order mistakes show.
    flat = rng.integers(info.min, info.max, size=int(np.prod(shape)), endpoint=True, dtype=dtype)
    if flat.size >= 2:
        flat[0], flat[1] = info.min, info.max
    return flat.reshape(shape)


def _raw_idx(code, shape, be_payload):
    return bytes([0, 0, code, len(shape)]) + struct.pack(f">{len(shape)}I", *shape) + be_payload


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_round_trip(tmp_path, dtype, shape, compress):
    array = _sample(dtype, shape)
    path = tmp_path / ("a.idx.gz" if compress else "a.idx")
    write_idx(path, array)
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == compress
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.dtype.isnative
    assert back.shape == shape
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_reads_hand_built_big_endian_file(tmp_path):
    # Independent of write_idx: the bytes are spelled out per the IDX spec.
    values = [1, -2, 300, -32768, 32767, 0]
    data = _raw_idx(0x0B, (2, 3), struct.pack(">6h", *values))
    path = tmp_path / "hand.idx"
    path.write_bytes(data)
    back = read_idx(path)
    np.testing.assert_array_equal(back, np.array(values, dtype=np.int16).reshape(2, 3))
    assert back.dtype == np.int16 and back.dtype.isnative

    # And write_idx produces exactly these bytes.
    out = tmp_path / "out.idx"
    write_idx(out, np.array(values, dtype=np.int16).reshape(2, 3))
    assert out.read_bytes() == data


@pytest.mark.parametrize(
    "code,fmt,values",
    [(0x08, "B", [0, 255, 7]), (0x09, "b", [-128, 127, -1]), (0x0C, "i", [-(2**31), 2**31 - 1, 5]),
     (0x0D, "f", [1.5, -0.25, 3e38]), (0x0E, "d", [1e-300, -2.5, 1e300])],
)
def test_reads_each_dtype_code(tmp_path, code, fmt, values):
    path = tmp_path / "x.idx"
    path.write_bytes(_raw_idx(code, (3,), struct.pack(f">3{fmt}", *values)))
    back = read_idx(path)
    np.testing.assert_array_equal(back, np.array(values, dtype=back.dtype))
    assert back.dtype == {0x08: np.uint8, 0x09: np.int8, 0x0C: np.int32, 0x0D: np.float32, 0x0E: np.float64}[code]


def test_gzip_detected_by_magic_not_name(tmp_path):
    array = _sample(np.int32, (4, 3))
    gz_named_plain = tmp_path / "plain.idx"
    write_idx(gz_named_plain, array, compress=True)
    plain_named_gz = tmp_path / "raw.idx.gz"
    write_idx(plain_named_gz, array, compress=False)
    assert gz_named_plain.read_bytes()[:2] == b"\x1f\x8b"
    assert plain_named_gz.read_bytes()[:4] == b"\x00\x00\x0c\x02"
    np.testing.assert_array_equal(read_idx(gz_named_plain), array)
    np.testing.assert_array_equal(read_idx(plain_named_gz), array)


def test_write_overwrites_and_leaves_no_temp_files(tmp_path):
    path = tmp_path / "a.idx"
    write_idx(path, np.zeros(3, np.uint8))
    write_idx(path, np.arange(5, dtype=np.uint8))
    np.testing.assert_array_equal(read_idx(path), np.arange(5))
    assert [p.name for p in tmp_path.iterdir()] == ["a.idx"]


def test_write_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    path = tmp_path / "a.idx.gz"
    write_idx(path, np.arange(4, dtype=np.uint8))
    before = path.read_bytes()

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        write_idx(path, np.arange(9, dtype=np.uint8))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["a.idx.gz"]


@pytest.mark.parametrize("dtype", [np.int64, np.bool_, np.complex64, np.uint16])
def test_write_rejects_unsupported_dtype(tmp_path, dtype):
    path = tmp_path / "bad.idx"
    with pytest.raises(DataError, match=r"bad\.idx.*dtype"):
        write_idx(path, np.zeros(3, dtype))
    assert list(tmp_path.iterdir()) == []


def test_write_accepts_big_endian_input(tmp_path):
    array = np.array([1.0, -2.0, 3.5], dtype=">f8")
    write_idx(tmp_path / "a.idx", array)
    back = read_idx(tmp_path / "a.idx")
    assert back.dtype == np.float64 and back.dtype.isnative
    np.testing.assert_array_equal(back, array)


# --- malformed files -------------------------------------------------------


def _good_bytes():
    return _raw_idx(0x0C, (2, 3), struct.pack(">6i", *range(6)))  # 12 header + 24 data bytes


def _check(path, data, *patterns, gz=False):
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError) as info:
        read_idx(path)
    message = str(info.value)
    assert str(path) in message
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_missing_file(tmp_path):
    path = tmp_path / "nope" / "missing.idx"
    with pytest.raises(DataError, match="no such file") as info:
        read_idx(path)
    assert str(path) in str(info.value)
    assert isinstance(info.value, FileNotFoundError)  # DataError derives from it


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError, match="cannot read") as info:
        read_idx(tmp_path)
    assert str(tmp_path) in str(info.value)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_bad_magic(tmp_path, gz):
    data = bytearray(_good_bytes())
    data[0] = 0x01
    _check(tmp_path / "magic.idx", bytes(data), "bad magic", gz=gz)
    data = bytearray(_good_bytes())
    data[1] = 0x08
    _check(tmp_path / "magic2.idx", bytes(data), "bad magic", gz=gz)


def test_unknown_dtype_code(tmp_path):
    data = bytearray(_good_bytes())
    data[2] = 0x0A
    _check(tmp_path / "code.idx", bytes(data), "unknown dtype code 0x0a")


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("cut", [0, 3, 4, 9, 11])
def test_truncated_header(tmp_path, cut, gz):
    _check(tmp_path / "head.idx", _good_bytes()[:cut], "truncated header", gz=gz)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_truncated_data(tmp_path, gz):
    message = _check(tmp_path / "short.idx", _good_bytes()[:-5], gz=gz)
    assert "truncated: expected 24 bytes of data, found 19" in message
    _check(tmp_path / "nodata.idx", _good_bytes()[:12], "expected 24 bytes of data, found 0", gz=gz)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_trailing_garbage(tmp_path, gz):
    _check(tmp_path / "long.idx", _good_bytes() + b"xyz", "trailing garbage", "3 bytes", gz=gz)


def test_corrupted_gzip(tmp_path):
    good = gzip.compress(_good_bytes())
    _check(tmp_path / "garbage.idx.gz", b"\x1f\x8b" + b"not a gzip stream at all", "corrupted gzip")
    _check(tmp_path / "cut.idx.gz", good[: len(good) // 2], "corrupted gzip")
    flipped = bytearray(good)
    flipped[-6] ^= 0xFF  # CRC32 trailer
    _check(tmp_path / "crc.idx.gz", bytes(flipped), "corrupted gzip")
