"""Safe file writing and the user cache folder."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from .errors import LowbitError


def check_writable(path) -> Path:
    """The path as a Path, or a clear error if its folder is missing or not writable."""
    path = Path(path).expanduser()
    parent = path.parent if str(path.parent) else Path(".")
    if path.is_dir():
        raise LowbitError(f"cannot write {path}: it is a directory")
    if not parent.is_dir():
        raise LowbitError(f"cannot write {path}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise LowbitError(f"cannot write {path}: folder {parent} is not writable")
    return path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one
    rename, on failure it is removed, so ``path`` is never left half-written."""
    path = check_writable(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def cache_dir() -> Path:
    """LOWBIT_CACHE_DIR, else $XDG_CACHE_HOME/lowbit, else ~/.cache/lowbit (created)."""
    root = os.environ.get("LOWBIT_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "lowbit")
    path = Path(root)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise LowbitError(f"cannot create the cache folder {path}: {exc.strerror}; set LOWBIT_CACHE_DIR") from None
    return path
