"""Atomic writes: the target's permissions and symbolic links survive a rewrite."""

import os
import stat

import pytest

from lowbit.fileio import atomic_path, write_text_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_new_file_follows_the_umask(tmp_path, umask_022):
    path = write_text_atomic(tmp_path / "a.json", "{}")
    assert _mode(path) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_rewrite_keeps_the_old_permissions(tmp_path, umask_022):
    path = tmp_path / "a.json"
    path.write_text("old")
    os.chmod(path, 0o640)
    write_text_atomic(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o640


def test_write_through_a_symbolic_link_changes_its_target(tmp_path):
    target = tmp_path / "real" / "a.json"
    target.parent.mkdir()
    target.write_text("old")
    link = tmp_path / "link.json"
    link.symlink_to(target)
    write_text_atomic(link, "new")
    assert link.is_symlink() and target.read_text() == "new"
    assert sorted(p.name for p in target.parent.iterdir()) == ["a.json"]


def test_failure_removes_the_temporary_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text("old")
    with pytest.raises(RuntimeError, match="interrupted"):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_home_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = write_text_atomic("~/a.json", "{}")
    assert path == tmp_path / "a.json" and path.read_text() == "{}"
