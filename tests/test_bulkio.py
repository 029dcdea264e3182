"""bulkio's batch writes, renames and reads, the C helper and the Python loops alike, on
real files: same results, same errors, nothing left behind by a failed file."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from dagsync import bulkio

try:
    from dagsync import _fastio
except ImportError:  # not built: only the Python loops are tested (CI builds it)
    _fastio = None  # type: ignore[assignment]

IMPLS: dict[str, tuple[Callable[..., Any], ...] | None] = {
    "python": (bulkio.stage_files_py, bulkio.place_files_py, bulkio.read_files_py),
    "c": (_fastio.stage_files, _fastio.place_files, _fastio.read_files)
    if _fastio is not None else None,
}


@pytest.fixture(params=list(IMPLS))
def impl(request: pytest.FixtureRequest) -> tuple[Callable[..., Any], ...]:
    found = IMPLS[request.param]
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("dagsync._fastio was not built (pip install needs gcc and the "
                        "Python headers)")
        pytest.skip("dagsync._fastio not built here")
    return found


@pytest.fixture
def dir_fd(tmp_path: Path) -> Iterator[int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield fd
    os.close(fd)


MTIME = 1_700_000_000_123_456_789


def test_stage_writes_content_mode_and_mtime(impl: Any, tmp_path: Path, dir_fd: int) -> None:
    stage = impl[0]
    old = os.umask(0o022)
    try:
        out = stage([
            (dir_fd, "a.tmp", b"print('a')\n", 0o644, False, MTIME),
            (dir_fd, "b.tmp", memoryview(b"#!/bin/sh\n"), 0o775, True, MTIME),
            (dir_fd, "old.tmp", b"", 0o600, True, -1_500_000_000),  # before 1970, empty
        ])
    finally:
        os.umask(old)
    for name, want, mode, mtime in (("a.tmp", b"print('a')\n", 0o644, MTIME),
                                    ("b.tmp", b"#!/bin/sh\n", 0o775, MTIME),
                                    ("old.tmp", b"", 0o600, -1_500_000_000)):
        st = os.stat(tmp_path / name)
        assert (tmp_path / name).read_bytes() == want
        assert st.st_mode & 0o7777 == mode  # 0o775: the umask's cut undone by chmod
        assert st.st_mtime_ns == mtime
    assert out == [(os.stat(tmp_path / n).st_mtime_ns, os.stat(tmp_path / n).st_ino)
                   for n in ("a.tmp", "b.tmp", "old.tmp")]


def test_stage_never_overwrites_or_follows(impl: Any, tmp_path: Path, dir_fd: int) -> None:
    """O_EXCL|O_NOFOLLOW: an existing name or a symlink planted at the temp name fails
    that file alone; neither it nor the symlink's target is touched."""
    stage = impl[0]
    (tmp_path / "taken.tmp").write_bytes(b"keep me")
    outside = tmp_path.parent / f"{tmp_path.name}-outside"
    outside.write_bytes(b"outside")
    (tmp_path / "link.tmp").symlink_to(outside)
    out = stage([(dir_fd, "taken.tmp", b"new", 0o644, False, MTIME),
                 (dir_fd, "link.tmp", b"new", 0o644, False, MTIME),
                 (dir_fd, "fine.tmp", b"fine", 0o644, False, MTIME)])
    assert out[0] == errno.EEXIST and out[1] == errno.EEXIST
    assert isinstance(out[2], tuple)
    assert (tmp_path / "taken.tmp").read_bytes() == b"keep me"  # not unlinked either
    assert outside.read_bytes() == b"outside"
    assert (tmp_path / "link.tmp").is_symlink()
    assert (tmp_path / "fine.tmp").read_bytes() == b"fine"


def test_stage_bad_directory_fails_per_file(impl: Any, tmp_path: Path, dir_fd: int) -> None:
    stage = impl[0]
    closed = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    os.close(closed)
    out = stage([(closed, "x.tmp", b"x", 0o644, False, MTIME),
                 (dir_fd, "y.tmp", b"y", 0o644, False, MTIME)])
    assert out[0] == errno.EBADF and isinstance(out[1], tuple)


def test_stage_rejects_malformed_items_before_writing(impl: Any, tmp_path: Path,
                                                      dir_fd: int) -> None:
    stage = impl[0]
    with pytest.raises((TypeError, ValueError)):
        stage([(dir_fd, "ok.tmp", b"x", 0o644, False, MTIME), ("not", "an", "item")])
    if stage is not bulkio.stage_files_py:  # C parses the whole batch first
        assert list(tmp_path.iterdir()) == []


def test_stage_full_disk_leaves_no_temp(impl: Any, tmp_path: Path) -> None:
    """A real ENOSPC (a 1 MiB tmpfs): the file that does not fit fails and its temp is
    removed, which frees the room the next file of the batch then uses."""
    stage = impl[0]
    disk = tmp_path / "disk"
    disk.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        if os.environ.get("CI"):
            pytest.fail(f"cannot mount a tmpfs: {res.stderr.strip()}")
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.strip()}")
    try:
        fd = os.open(disk, os.O_RDONLY | os.O_DIRECTORY)
        try:
            out = stage([(fd, "big.tmp", b"x" * (2 << 20), 0o644, False, MTIME),
                         (fd, "small.tmp", b"small", 0o644, False, MTIME)])
        finally:
            os.close(fd)
        assert out[0] == errno.ENOSPC
        assert isinstance(out[1], tuple)
        assert sorted(p.name for p in disk.iterdir()) == ["small.tmp"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _split_batch(root: Path) -> tuple[list[Any], list[int]]:
    """A chunk as a receiver stages it: runs of files in 7 directories (uneven runs, so
    the cuts between threads fall inside and between them), with a name already taken
    in the first and in the last run (EEXIST there, whichever thread meets it)."""
    fds, items = [], []
    for d, count in enumerate((50, 3, 61, 40, 1, 33, 52)):
        (root / f"d{d}").mkdir()
        fds.append(os.open(root / f"d{d}", os.O_RDONLY | os.O_DIRECTORY))
        for i in range(count):
            items.append((fds[-1], f"f{i}.py", f"# {d}/{i}\n".encode() * (i + 1),
                          0o755 if i % 5 == 0 else 0o644, i % 7 == 0, MTIME + d * 1000 + i))
    for taken in (root / "d0" / "f7.py", root / "d6" / "f50.py"):
        taken.write_bytes(b"taken")
        os.utime(taken, ns=(MTIME, MTIME))
    return items, fds


@pytest.mark.skipif(_fastio is None, reason="dagsync._fastio not built here")
@pytest.mark.parametrize("threads", [2, 3, 4, 9, 0, -1])
def test_stage_over_threads_gives_what_one_thread_gives(tmp_path: Path, threads: int) -> None:
    """The C helper's batch split over threads (each a run of the items): every file is
    written, with its mode and mtime, and every item's result in its own place, the
    failures included, exactly as one thread does (and as the Python loop does)."""
    trees = {}
    for how in ("one", "split", "python"):
        root = tmp_path / how
        root.mkdir()
        items, fds = _split_batch(root)
        try:
            out = (_fastio.stage_files(items, 1) if how == "one"
                   else _fastio.stage_files(items, threads) if how == "split"
                   else bulkio.stage_files_py(items))
        finally:
            for fd in fds:
                os.close(fd)
        assert [r for r in out if isinstance(r, int)] == [errno.EEXIST, errno.EEXIST]
        assert out[7] == errno.EEXIST and out[-2] == errno.EEXIST
        for (fd, name, _data, _perm, _chmod, _mtime), result in zip(items, out, strict=True):
            if isinstance(result, tuple):
                assert result == (MTIME + int(name[1:-3]) + 1000 * fds.index(fd),
                                  os.stat(root / f"d{fds.index(fd)}" / name).st_ino)
        trees[how] = {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode,
                                                       p.stat().st_mtime_ns)
                      for p in root.rglob("*") if p.is_file()}
    assert len(trees["one"]) == 240
    assert trees["split"] == trees["one"] == trees["python"]


def test_place_links_new_names_and_renames_over_old(impl: Any, tmp_path: Path) -> None:
    place = impl[1]
    tmp, dst = tmp_path / "tmp", tmp_path / "dst"
    tmp.mkdir()
    dst.mkdir()
    for name in ("new.tmp", "over.tmp", "plain.tmp"):
        (tmp / name).write_bytes(name.encode())
    (dst / "over.py").write_bytes(b"old")
    old_inode = os.stat(dst / "over.py").st_ino
    src_fd = os.open(tmp, os.O_RDONLY | os.O_DIRECTORY)
    dst_fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    try:
        inode = os.stat(tmp / "new.tmp").st_ino
        out = place([(src_fd, "new.tmp", dst_fd, "new.py", True),
                     (src_fd, "over.tmp", dst_fd, "over.py", True),  # link fails: rename
                     (src_fd, "plain.tmp", dst_fd, "plain.py", False),
                     (src_fd, "gone.tmp", dst_fd, "gone.py", True)])
    finally:
        os.close(src_fd)
        os.close(dst_fd)
    assert out == [0, 0, 0, errno.ENOENT]
    assert os.stat(dst / "new.py").st_ino == inode  # the staged inode, linked in
    assert (dst / "over.py").read_bytes() == b"over.tmp"
    assert os.stat(dst / "over.py").st_ino != old_inode
    assert (dst / "plain.py").read_bytes() == b"plain.tmp"
    assert list(tmp.iterdir()) == []  # no temp name left behind
    assert sorted(p.name for p in dst.iterdir()) == ["new.py", "over.py", "plain.py"]


def test_the_configured_implementation_is_used() -> None:
    """DAGSYNC_NO_FASTIO=1 selects the Python loops; otherwise the C helper when built."""
    code = ("from dagsync import bulkio; print(bulkio.FAST, bulkio.place_files.__module__,"
            " bulkio.stage_files is bulkio.stage_files_py)")
    env = {**os.environ, "PYTHONSAFEPATH": "1"}
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           check=True, env={**env, "DAGSYNC_NO_FASTIO": "1"})
    assert plain.stdout.split() == ["False", "dagsync.bulkio", "True"]
    if _fastio is not None:
        env.pop("DAGSYNC_NO_FASTIO", None)
        fast = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                              check=True, env=env)
        assert fast.stdout.split() == ["True", "dagsync._fastio", "False"]


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_read_returns_each_file_in_order_across_windows(impl: Any, tmp_path: Path,
                                                        dir_fd: int) -> None:
    read = impl[2]
    files = {f"f{i}.py": f"# {i}\n".encode() * i for i in range(11)}  # f0.py is empty
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    fds = _open_fds()
    out = read([(dir_fd, name) for name in files], 1 << 20, 4096, 4)  # 3 windows
    assert out == list(files.values())
    assert read([(dir_fd, name) for name in files], 1 << 20, 0, 32) == out  # no read-ahead
    assert _open_fds() == fds


def test_read_failures_are_per_file_and_refuse_links_and_specials(
        impl: Any, tmp_path: Path, dir_fd: int) -> None:
    read = impl[2]
    (tmp_path / "ok.py").write_bytes(b"ok\n")
    (tmp_path / "target.py").write_bytes(b"secret\n")
    os.symlink(tmp_path / "target.py", tmp_path / "link.py")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "sub").mkdir()
    fds = _open_fds()
    out = read([(dir_fd, "link.py"), (dir_fd, "missing.py"), (dir_fd, "fifo"),
                (dir_fd, "sub"), (dir_fd, "ok.py"), (-1, "ok.py")], 1 << 20, 4096, 2)
    assert out == [errno.ELOOP, errno.ENOENT, bulkio.NOT_REGULAR, bulkio.NOT_REGULAR, b"ok\n",
                   errno.EBADF]
    assert _open_fds() == fds


def test_read_shares_the_budget_and_skips_a_file_that_would_reach_it(
        impl: Any, tmp_path: Path, dir_fd: int) -> None:
    """A batch answers with at most `budget` bytes: a file that would reach what is left
    is over the budget (the peer asks for it alone) and takes nothing from it."""
    read = impl[2]
    sizes = {"a": 400, "b": 700, "c": 599, "d": 1, "e": 0}
    for name, size in sizes.items():
        (tmp_path / name).write_bytes(b"x" * size)
    out = read([(dir_fd, name) for name in sizes], 1000, 1 << 20, 32)
    # a: 400 of 1000; b: 700 would reach the 600 left; c: 599 < 600; d: 1 reaches the 1 left
    assert out == [b"x" * 400, bulkio.OVER_BUDGET, b"x" * 599, bulkio.OVER_BUDGET, b""]
    with pytest.raises(ValueError, match="positive"):
        read([(dir_fd, "a")], 0, 0, 1)
