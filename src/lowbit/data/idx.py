"""Read and write IDX files, the format of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic (two zero bytes, a dtype code, the number of
dimensions), one big-endian uint32 per dimension, then the values in C order,
big-endian. Files may be gzip-compressed; that is detected from the gzip magic
bytes, not from the file name.
"""

from __future__ import annotations

import gzip
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

GZIP_MAGIC = b"\x1f\x8b"

# IDX dtype code -> big-endian numpy dtype of the stored values.
_CODE_TO_DTYPE = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
# Native-order dtype -> IDX dtype code (for writing).
_DTYPE_TO_CODE = {dt.newbyteorder("="): code for code, dt in _CODE_TO_DTYPE.items()}


def read_idx(path) -> np.ndarray:
    """Read an IDX file (raw or gzipped) into a writable native-order array.

    Raises :class:`~lowbit.errors.DataError` naming the file and the problem if
    the file is missing, unreadable or malformed.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None

    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"{path}: corrupted gzip stream ({e})") from None

    if len(data) < 4:
        raise DataError(f"{path}: truncated header: {len(data)} bytes, expected at least 4")
    if data[0] != 0 or data[1] != 0:
        raise DataError(f"{path}: bad magic {data[:4].hex()}: not an IDX file (must start with two zero bytes)")
    code, ndim = data[2], data[3]
    if code not in _CODE_TO_DTYPE:
        raise DataError(f"{path}: unknown dtype code 0x{code:02x}")
    dtype = _CODE_TO_DTYPE[code]

    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(
            f"{path}: truncated header: {ndim} dimensions need {offset} header bytes, found {len(data)}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    count = 1
    for d in shape:
        count *= d

    expected, found = count * dtype.itemsize, len(data) - offset
    if found < expected:
        raise DataError(f"{path}: truncated: expected {expected} bytes of data, found {found}")
    if found > expected:
        raise DataError(f"{path}: trailing garbage: {found - expected} bytes after the {expected} bytes of data")

    array = np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)
    # astype copies, so the result is writable and no longer tied to `data`.
    return array.astype(dtype.newbyteorder("="))


def write_idx(path, array, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file, atomically.

    ``compress`` defaults to whether ``path`` ends in ``.gz``. The data go to a
    temporary file in the same folder that then replaces ``path``, so readers
    never see a partial file. Supported dtypes: uint8, int8, int16, int32,
    float32, float64.
    """
    path = Path(path)
    array = np.asarray(array)
    code = _DTYPE_TO_CODE.get(array.dtype.newbyteorder("="))
    if code is None:
        supported = ", ".join(str(dt) for dt in _DTYPE_TO_CODE)
        raise DataError(f"{path}: cannot write dtype {array.dtype} to IDX (supported: {supported})")
    if array.ndim > 255:
        raise DataError(f"{path}: cannot write {array.ndim} dimensions to IDX (at most 255)")
    if any(d > 0xFFFFFFFF for d in array.shape):
        raise DataError(f"{path}: dimension in shape {array.shape} does not fit in a uint32")
    if compress is None:
        compress = path.name.endswith(".gz")

    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload = header + np.ascontiguousarray(array, dtype=_CODE_TO_DTYPE[code]).tobytes()

    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            if compress:
                with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
                    gz.write(payload)
            else:
                f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; make it an ordinary data file
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
