"""Atomic writes: through symlinks, never over non-regular files, keeping modes (umask, old mode)."""
from __future__ import annotations

import os
import stat

import pytest

from napari_cellclass.core.atomic import atomic_write_text
from napari_cellclass.core.errors import ProjectError


def test_write_through_symlink_keeps_the_link(tmp_path):
    real = tmp_path / "real.csv"
    real.write_text("old")
    link = tmp_path / "link.csv"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and os.readlink(link) == str(real)
    assert real.read_text() == "new"


def test_write_through_relative_symlink_to_missing_file(tmp_path):
    (tmp_path / "sub").mkdir()
    link = tmp_path / "link.csv"
    link.symlink_to("sub/target.csv")
    atomic_write_text(link, "x")
    assert link.is_symlink() and (tmp_path / "sub" / "target.csv").read_text() == "x"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_directory_and_link_to_fifo_are_refused(tmp_path):
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.csv"
    folder.mkdir()
    link = tmp_path / "to_pipe.csv"
    link.symlink_to(fifo)
    for target in (fifo, folder, link):
        with pytest.raises(ProjectError, match="not a regular file") as info:
            atomic_write_text(target, "x")
        assert "\n" not in str(info.value)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode) and folder.is_dir() and link.is_symlink()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".cellclass-tmp-")]


@pytest.mark.skipif(not hasattr(os, "mknod") or os.geteuid() != 0, reason="making a device node needs root")
def test_device_node_is_refused(tmp_path):
    dev = tmp_path / "null.csv"
    os.mknod(dev, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    with pytest.raises(ProjectError, match="not a regular file"):
        atomic_write_text(dev, "x")
    assert stat.S_ISCHR(os.lstat(dev).st_mode)


@pytest.mark.parametrize("umask, mode", [(0o002, 0o664), (0o077, 0o600)])
def test_new_file_respects_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "a.txt").st_mode) == mode


def test_replace_keeps_the_existing_mode(tmp_path):
    f = tmp_path / "shared.npz"
    f.write_text("old")
    os.chmod(f, 0o664)
    old = os.umask(0o077)
    try:
        atomic_write_text(f, "new")
    finally:
        os.umask(old)
    assert f.read_text() == "new" and stat.S_IMODE(os.stat(f).st_mode) == 0o664


def test_lock_falls_back_when_locking_is_not_available(tmp_path, monkeypatch):
    import errno
    import fcntl

    from napari_cellclass.core.atomic import file_lock

    with file_lock(tmp_path / ".lock") as held:
        assert held

    def no_locks(*args):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with file_lock(tmp_path / ".lock") as held:
        assert not held
    with file_lock(tmp_path / "missing-folder" / ".lock") as held:
        assert not held


def test_a_link_to_a_pipe_is_refused_in_one_line(tmp_path):
    """``--csv /dev/stdout`` with stdout piped: a link to a pipe that has no path of its own."""
    r, w = os.pipe()
    try:
        link = tmp_path / "stdout"
        link.symlink_to(f"/proc/self/fd/{w}")
        with pytest.raises(ProjectError, match="not a regular file"):
            atomic_write_text(link, "x")
    finally:
        os.close(r)
        os.close(w)
