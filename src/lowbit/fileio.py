"""Safe file writing and the user cache folder."""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
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


def resolve_target(path) -> Path:
    """The file a write to ``path`` must change: ``~`` expanded, symbolic links followed (writing
    beside a link would replace the link, not the file it points to)."""
    return Path(os.path.realpath(Path(path).expanduser()))


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``'s target; on success it replaces the target in one
    rename, on failure it is removed, so the target is never left half-written. The new file gets
    the old one's permissions, or those of any new file (the umask's)."""
    path = check_writable(resolve_target(path))
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
    tmp = None
    try:
        while tmp is None:  # O_EXCL with mode 0o666 leaves the umask to decide, as for open()
            tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
            try:
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            except FileExistsError:
                tmp = None
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError):  # disk full, a file system that takes no new files, ...
            raise LowbitError(f"cannot write {path}: {exc.strerror or exc}") from exc
        raise


def write_text_atomic(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path).expanduser()


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
