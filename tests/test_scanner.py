"""The scanner: what changed on disk against what the index knows, one bad file never
aborting a scan. Real files in tmp_path throughout."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from dagsync import scanner
from dagsync.ignore import IgnoreMatcher
from dagsync.index import LocalStat
from dagsync.model import Kind
from dagsync.scanner import (
    RACY_WINDOW_COARSE_NS,
    RACY_WINDOW_NS,
    Observed,
    ScanResult,
    UnstableFile,
    _racy_deadline,
    hash_file,
    scan_folder,
    scan_paths,
)

MAX = 1 << 20
OLD_NS = 1_600_000_000_123_456_789  # an mtime far in the past: never "racy"
AS_ROOT = os.geteuid() == 0


class Known:
    """KnownStats backed by a dict; records which paths were asked about."""

    def __init__(self, stats: dict[str, LocalStat] | None = None) -> None:
        self.stats = dict(stats or {})
        self.asked: list[str] = []
        self.hook: Callable[[str], None] | None = None

    def known_stat(self, path: str) -> LocalStat | None:
        self.asked.append(path)
        if self.hook is not None:
            hook, self.hook = self.hook, None
            hook(path)
        return self.stats.get(path)

    def learn(self, result: ScanResult) -> None:
        for obs in result.changed:
            self.stats[obs.path] = obs.stat()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "dags"
    r.mkdir()
    return r


def write(root: Path, rel: str, data: bytes = b"x = 1\n", mtime_ns: int = OLD_NS) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    os.utime(p, ns=(mtime_ns, mtime_ns))
    return p


def scan(root: Path, known: Known | None = None, ignore: IgnoreMatcher | None = None,
         max_size: int = MAX) -> ScanResult:  # fmt: skip
    return scan_folder(root, known or Known(), ignore or IgnoreMatcher(), max_size)


def by_path(result: ScanResult) -> dict[str, Observed]:
    return {o.path: o for o in result.changed}


def reasons(result: ScanResult) -> dict[str, str]:
    return {p.path: p.reason for p in result.problems}


# --- new, modified, unchanged -----------------------------------------------------------


def test_new_files_are_hashed_and_described(root: Path) -> None:
    a = write(root, "a.py", b"print('a')\n")
    b = write(root, "sub/deeper/b.py", b"b" * 3000)
    b.chmod(0o755)
    result = scan(root)
    assert result.present == {"a.py", "sub/deeper/b.py"}
    assert result.problems == [] and result.temp_files == [] and result.unreadable_dirs == []
    obs = by_path(result)
    assert [o.path for o in result.changed] == ["a.py", "sub/deeper/b.py"]
    sa = a.stat()
    assert obs["a.py"] == Observed(
        path="a.py",
        kind=Kind.FILE,
        size=11,
        mtime_ns=OLD_NS,
        mode=sa.st_mode & 0o7777,
        inode=sa.st_ino,
        hash=xxhash.xxh3_128_hexdigest(b"print('a')\n"),
    )
    assert obs["sub/deeper/b.py"].mode == 0o755
    assert obs["sub/deeper/b.py"].hash == xxhash.xxh3_128_hexdigest(b"b" * 3000)
    assert obs["a.py"].stat() == LocalStat(11, OLD_NS, sa.st_ino)
    assert result.duration_s >= 0


def test_unchanged_files_are_not_hashed_again(root: Path) -> None:
    write(root, "a.py")
    write(root, "b.py")
    known = Known()
    known.learn(scan(root, known))
    again = scan(root, known)
    assert again.changed == []
    assert again.present == {"a.py", "b.py"}


def test_modified_size_is_detected(root: Path) -> None:
    write(root, "a.py", b"one")
    known = Known()
    known.learn(scan(root, known))
    write(root, "a.py", b"three")  # same mtime, same inode, other size
    assert [o.hash for o in scan(root, known).changed] == [xxhash.xxh3_128_hexdigest(b"three")]


def test_modified_mtime_is_detected(root: Path) -> None:
    write(root, "a.py", b"aaa")
    known = Known()
    known.learn(scan(root, known))
    write(root, "a.py", b"bbb", mtime_ns=OLD_NS + 1)  # same size and inode, other mtime
    assert [o.hash for o in scan(root, known).changed] == [xxhash.xxh3_128_hexdigest(b"bbb")]


def test_replaced_file_with_same_size_and_mtime_is_detected_by_inode(
    root: Path, tmp_path: Path
) -> None:
    write(root, "a.py", b"aaa")
    known = Known()
    known.learn(scan(root, known))
    os.link(root / "a.py", tmp_path / "hold")  # the old inode number stays taken
    new = write(root, "new.part", b"bbb")  # same size and mtime, new inode
    os.replace(new, root / "a.py")
    changed = scan(root, known).changed
    assert [(o.path, o.hash) for o in changed] == [("a.py", xxhash.xxh3_128_hexdigest(b"bbb"))]


def test_touch_with_same_content_is_reported_with_same_hash(root: Path) -> None:
    write(root, "a.py", b"same")
    known = Known()
    first = scan(root, known)
    known.learn(first)
    os.utime(root / "a.py", ns=(OLD_NS + 5, OLD_NS + 5))
    (obs,) = scan(root, known).changed
    assert obs.hash == first.changed[0].hash
    assert obs.mtime_ns == OLD_NS + 5


def test_a_deleted_file_is_simply_absent(root: Path) -> None:
    write(root, "a.py")
    write(root, "b.py")
    known = Known()
    known.learn(scan(root, known))
    (root / "a.py").unlink()
    result = scan(root, known)
    assert result.present == {"b.py"}
    assert result.changed == [] and result.problems == []


def test_hash_file(tmp_path: Path) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    p = tmp_path / "big"
    p.write_bytes(data)
    digest, stat = hash_file(p)
    assert digest == xxhash.xxh3_128_hexdigest(data)
    s = p.stat()
    assert stat == LocalStat(s.st_size, s.st_mtime_ns, s.st_ino)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert hash_file(empty)[0] == xxhash.xxh3_128_hexdigest(b"")


def test_hash_file_refuses_a_symlink(tmp_path: Path) -> None:
    (tmp_path / "t").write_text("x")
    (tmp_path / "l").symlink_to("t")
    with pytest.raises(OSError):
        hash_file(tmp_path / "l")


# --- unstable and racy files --------------------------------------------------------------


def _grow_on_first_read(monkeypatch: pytest.MonkeyPatch, victim: Path) -> None:
    real_read = os.read
    state = {"done": False}

    def read(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        if not state["done"]:
            state["done"] = True
            with victim.open("ab") as f:
                f.write(b"# appended while hashing\n")
        return data

    monkeypatch.setattr(os, "read", read)


def test_hash_file_raises_unstable_when_the_file_changes_while_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "a.py"
    p.write_bytes(b"x" * 100)
    _grow_on_first_read(monkeypatch, p)
    with pytest.raises(UnstableFile):
        hash_file(p)


def test_unstable_file_is_a_problem_not_an_error(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(root, "a.py", b"x" * 100)
    write(root, "b.py")
    _grow_on_first_read(monkeypatch, root / "a.py")
    # only the first read of the scan grows a.py; make sure a.py is read first
    result = scan_paths(root, ["a.py", "b.py"], Known(), IgnoreMatcher(), MAX)
    assert "changed while being hashed" in reasons(result)["a.py"]
    assert [o.path for o in result.changed] == ["b.py"]
    assert result.present == {"a.py", "b.py"}  # a problem is no reason to delete


def test_file_written_just_now_is_reported_once(root: Path) -> None:
    """A fresh file is hashed again once its timestamp tick has passed; what is recorded
    then matches the disk, so the next scan has nothing to do."""
    (root / "fresh.py").write_bytes(b"new content")
    known = Known()
    result = scan(root, known)
    (obs,) = result.changed
    assert obs.hash == xxhash.xxh3_128_hexdigest(b"new content")
    known.learn(result)
    assert scan(root, known).changed == []


def test_racy_deadline() -> None:
    start = 1_700_000_000_500_000_000
    assert _racy_deadline(start - 10**9, start) is None  # long before the read
    assert _racy_deadline(start - RACY_WINDOW_NS, start) is None
    assert _racy_deadline(start - 1, start) == start - 1 + RACY_WINDOW_NS
    whole = 1_700_000_000_000_000_000  # looks like a 1-second-granularity timestamp
    assert _racy_deadline(whole, start) == whole + RACY_WINDOW_COARSE_NS
    assert _racy_deadline(start + 3 * 10**9, start) is None  # future: cannot wait it out


def test_racy_file_is_hashed_again(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(root, "a.py", b"v1")
    calls: list[int] = []

    def racy_once(mtime_ns: int, read_start_ns: int) -> int | None:
        calls.append(mtime_ns)
        if len(calls) == 1:
            p.write_bytes(b"v2")  # the write the first hash may have missed
            os.utime(p, ns=(OLD_NS, OLD_NS))  # same tick: the stat alone cannot tell
            return time.time_ns()
        return None

    monkeypatch.setattr(scanner, "_racy_deadline", racy_once)
    (obs,) = scan(root).changed
    assert obs.hash == xxhash.xxh3_128_hexdigest(b"v2")
    assert len(calls) == 2


def test_file_racy_again_after_the_wait_is_a_problem(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write(root, "busy.py", b"v1")
    write(root, "calm.py", b"c")
    monkeypatch.setattr(
        scanner,
        "_racy_deadline",
        lambda mtime_ns, read_start_ns: time.time_ns() if mtime_ns == OLD_NS else None,
    )
    (root / "calm.py").touch()  # a fresh mtime: not racy under the fake rule
    result = scan(root)
    assert [o.path for o in result.changed] == ["calm.py"]
    assert "still being written" in reasons(result)["busy.py"]
    assert result.present == {"busy.py", "calm.py"}


# --- ignores and temp files ---------------------------------------------------------------


def test_builtin_ignores_and_temp_files(root: Path) -> None:
    write(root, "dag.py")
    write(root, "dag.pyc")
    write(root, "__pycache__/dag.cpython-311.pyc")
    write(root, ".git/HEAD")
    write(root, "dag.py.swp")
    write(root, "dag.py~")
    write(root, "4913")
    write(root, ".~dagsync.abc.tmp")
    write(root, "sub/.~dagsync.def.tmp")
    known = Known()
    result = scan(root, known)
    assert result.present == {"dag.py"}
    assert [o.path for o in result.changed] == ["dag.py"]
    assert result.temp_files == [".~dagsync.abc.tmp", "sub/.~dagsync.def.tmp"]
    assert not any(p.startswith((".git", "__pycache__")) for p in known.asked)


def test_user_patterns_and_ignored_dirs_are_not_descended(root: Path) -> None:
    write(root, "dag.py")
    write(root, "notes.txt")
    write(root, "logs/x/y.py")
    write(root, "sub/logs/z.py")
    os.mkfifo(root / "logs" / "fifo")  # would be a problem if the walk went there
    write(root, "build/a.py")
    write(root, "sub/build/a.py")
    known = Known()
    result = scan(root, known, IgnoreMatcher(["*.txt", "logs/", "/build/"]))
    assert result.present == {"dag.py", "sub/build/a.py"}
    assert result.problems == []
    assert not any(p.startswith("logs/") or "/logs/" in p for p in known.asked)


# --- symlinks ------------------------------------------------------------------------------


def test_symlinks_inside_the_folder_are_reported_as_links(root: Path) -> None:
    write(root, "lib/common.py")
    (root / "dags").mkdir()
    (root / "dags" / "common.py").symlink_to("../lib/common.py")
    (root / "libdir").symlink_to("lib")  # a symlinked directory: a link, not descended
    (root / "dangling").symlink_to("lib/missing.py")
    result = scan(root)
    obs = by_path(result)
    assert result.present == {"lib/common.py", "dags/common.py", "libdir", "dangling"}
    link = obs["dags/common.py"]
    assert link.kind is Kind.SYMLINK
    assert link.target == "../lib/common.py"
    assert link.hash == xxhash.xxh3_128_hexdigest(b"../lib/common.py")
    assert link.inode == os.lstat(root / "dags" / "common.py").st_ino
    assert obs["libdir"].kind is Kind.SYMLINK and obs["libdir"].target == "lib"
    assert obs["dangling"].target == "lib/missing.py"
    assert "libdir/common.py" not in result.present
    assert result.problems == []


def test_symlinks_leaving_the_folder_are_problems(root: Path, tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s")
    (root / "abs").symlink_to(tmp_path / "secret")
    (root / "up").symlink_to("../secret")
    (root / "sub").mkdir()
    (root / "sub" / "up2").symlink_to("../../secret")
    (root / "sub" / "loop").symlink_to("..")  # the root itself
    result = scan(root)
    assert result.changed == []
    r = reasons(result)
    assert set(r) == {"abs", "up", "sub/up2", "sub/loop"}
    assert all("symlink escapes folder" in why for why in r.values())
    assert result.present == {"abs", "up", "sub/up2", "sub/loop"}


def test_unchanged_symlink_is_not_read_again(root: Path) -> None:
    write(root, "a.py")
    (root / "l").symlink_to("a.py")
    known = Known()
    known.learn(scan(root, known))
    assert scan(root, known).changed == []
    (root / "l").unlink()
    (root / "l").symlink_to("a.py")  # recreated: new inode
    assert [o.path for o in scan(root, known).changed] == ["l"]


# --- per-file problems ---------------------------------------------------------------------


def test_file_vanishing_before_it_is_read(root: Path) -> None:
    write(root, "gone.py")
    write(root, "stays.py")
    known = Known()

    def first_gone(path: str) -> None:
        if path == "gone.py":
            (root / path).unlink()
        else:
            known.hook = first_gone  # wait for gone.py

    known.hook = first_gone
    result = scan(root, known)
    assert [o.path for o in result.changed] == ["stays.py"]
    assert "vanished" in reasons(result)["gone.py"]


def test_files_vanishing_between_listing_and_stat(root: Path) -> None:
    names = [f"f{i}.py" for i in range(20)]
    for n in names:
        write(root, n)

    def delete_all_others(path: str) -> None:
        for n in names:
            if n != path:
                (root / n).unlink()

    known = Known()
    known.hook = delete_all_others
    result = scan(root, known)
    assert len(result.changed) <= 1
    vanished = {p for p, why in reasons(result).items() if "vanished" in why}
    assert len(vanished) + len(result.changed) == len(names)


def test_directory_vanishing_mid_scan_is_unreadable_not_deleted(root: Path) -> None:
    write(root, "a.py")
    write(root, "sub/b.py")
    known = Known()
    known.hook = lambda path: shutil.rmtree(root / "sub")  # before sub/ is listed
    result = scan(root, known)
    assert result.unreadable_dirs == ["sub"]
    assert "sub" in reasons(result)


def test_too_large_file_is_a_problem_and_stays_present(root: Path) -> None:
    write(root, "big.py", b"x" * 11)
    write(root, "small.py", b"x" * 10)
    result = scan(root, max_size=10)
    assert [o.path for o in result.changed] == ["small.py"]
    assert "too large" in reasons(result)["big.py"]
    assert result.present == {"big.py", "small.py"}


def test_special_files_are_problems(root: Path) -> None:
    os.mkfifo(root / "pipe")
    write(root, "a.py")
    result = scan(root)
    assert [o.path for o in result.changed] == ["a.py"]
    assert "special file (fifo)" in reasons(result)["pipe"]


def test_non_utf8_name_is_a_problem(root: Path) -> None:
    write(root, "a.py")
    fd = os.open(os.fsencode(root) + b"/bad-\xff.py", os.O_CREAT | os.O_WRONLY, 0o644)
    os.close(fd)
    os.mkdir(os.fsencode(root) + b"/dir-\xfe")
    result = scan(root)
    assert result.present == {"a.py"}
    r = reasons(result)
    assert len(r) == 2
    assert all("not valid UTF-8" in why for why in r.values())


def test_names_peers_would_refuse_are_problems(root: Path) -> None:
    write(root, "back\\slash.py")
    write(root, "tab\there.py")
    write(root, "ünïcode.py")
    result = scan(root)
    assert result.present == {"ünïcode.py"}
    assert set(reasons(result)) == {"back\\slash.py", "tab\there.py"}


def test_non_utf8_symlink_target_is_a_problem(root: Path) -> None:
    os.symlink(b"bad-\xff", os.fsencode(root) + b"/link")
    result = scan(root)
    assert "not valid UTF-8" in reasons(result)["link"]


@pytest.mark.skipif(AS_ROOT, reason="root reads files whatever their mode")
def test_unreadable_file_is_a_problem(root: Path) -> None:
    p = write(root, "secret.py")
    p.chmod(0)
    try:
        result = scan(root)
    finally:
        p.chmod(0o644)
    assert "permission denied" in reasons(result)["secret.py"]
    assert result.present == {"secret.py"}


@pytest.mark.skipif(AS_ROOT, reason="root lists directories whatever their mode")
def test_unreadable_directory_is_reported_so_nothing_below_is_deleted(root: Path) -> None:
    write(root, "locked/a.py")
    write(root, "b.py")
    (root / "locked").chmod(0)
    try:
        result = scan(root)
    finally:
        (root / "locked").chmod(0o755)
    assert result.unreadable_dirs == ["locked"]
    assert "permission denied" in reasons(result)["locked"]
    assert result.present == {"b.py"}


def test_missing_root_makes_the_whole_folder_unreadable(tmp_path: Path) -> None:
    for result in (
        scan(tmp_path / "nope"),
        scan_paths(tmp_path / "nope", ["a.py"], Known(), IgnoreMatcher(), MAX),
    ):
        assert result.unreadable_dirs == [""]
        assert result.present == set()
        assert [p.path for p in result.problems] == [""]


# --- scan_paths ------------------------------------------------------------------------------


def test_scan_paths_checks_just_the_given_paths(root: Path) -> None:
    write(root, "a.py")
    write(root, "b.py")
    write(root, "sub/c.py")
    write(root, "sub/deep/d.py")
    write(root, "sub/__pycache__/x.pyc")
    write(root, "other/e.py")
    known = Known()
    result = scan_paths(root, ["a.py", "sub", "missing.py", "sub/c.py", "nodir/x.py"], known,
                        IgnoreMatcher(), MAX)  # fmt: skip
    assert result.present == {"a.py", "sub/c.py", "sub/deep/d.py"}
    assert [o.path for o in result.changed] == ["a.py", "sub/c.py", "sub/deep/d.py"]
    assert result.problems == []


def test_scan_paths_respects_known_stats_and_ignores(root: Path) -> None:
    write(root, "a.py")
    write(root, "sub/__pycache__/x.pyc")
    write(root, ".~dagsync.t.tmp")
    known = Known()
    known.learn(scan(root, known))
    result = scan_paths(root, ["a.py", "sub/__pycache__/x.pyc", "sub/__pycache__",
                               ".~dagsync.t.tmp"], known, IgnoreMatcher(), MAX)  # fmt: skip
    assert result.changed == []
    assert result.present == {"a.py"}
    assert result.temp_files == [".~dagsync.t.tmp"]


def test_scan_paths_does_not_go_through_symlinked_dirs(root: Path) -> None:
    write(root, "lib/a.py")
    (root / "link").symlink_to("lib")
    result = scan_paths(root, ["link/a.py", "link"], Known(), IgnoreMatcher(), MAX)
    assert result.present == {"link"}
    assert [(o.path, o.kind) for o in result.changed] == [("link", Kind.SYMLINK)]


def test_scan_paths_root_and_bad_paths(root: Path) -> None:
    write(root, "a.py")
    result = scan_paths(root, [""], Known(), IgnoreMatcher(), MAX)
    assert result.present == {"a.py"}
    result = scan_paths(root, ["../x", "a/./b", "a//b"], Known(), IgnoreMatcher(), MAX)
    assert result.present == set()
    assert len(result.problems) == 3


def test_scan_paths_through_a_file_is_absent(root: Path) -> None:
    write(root, "x/inner.py")
    result = scan_paths(root, ["x/inner.py/deeper"], Known(), IgnoreMatcher(), MAX)
    assert result.present == set() and result.problems == []


# --- scale -----------------------------------------------------------------------------------


def _tree(root: Path, n: int) -> None:
    for i in range(n):
        d = root / f"team{i % 20}" / f"sub{i % 7}"
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"dag_{i}.py"
        p.write_bytes(f"# dag {i}\n".encode())
        os.utime(p, ns=(OLD_NS, OLD_NS))


def test_second_scan_of_2000_files_hashes_nothing(root: Path) -> None:
    _tree(root, 2000)
    known = Known()
    first = scan(root, known)
    assert len(first.changed) == 2000
    known.learn(first)
    second = scan(root, known)
    assert second.changed == []
    assert len(second.present) == 2000
    assert second.problems == []


@pytest.mark.soak
def test_rescan_of_20000_unchanged_files(root: Path) -> None:
    _tree(root, 20_000)
    known = Known()
    known.learn(scan(root, known))
    times = []
    for _ in range(3):
        result = scan(root, known)
        assert result.changed == []
        times.append(result.duration_s)
    print(f"rescan of 20,000 unchanged files: best {min(times):.3f} s, all {times}")
