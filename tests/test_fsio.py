"""The folder's file system edge: whole files only, confined below the root."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagsync import bulkio, fsio, paths
from dagsync.errors import PathRefused
from tests.cluster import tmpfs_mounted

MTIME = 1_700_000_000_123_456_789


def temps_below(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if paths.is_temp_name(p.name)]


@pytest.fixture
def root(tmp_path: Path) -> Path:
    r = tmp_path / "dags"
    r.mkdir()
    return r


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    o = tmp_path / "outside"
    o.mkdir()
    (o / "victim.py").write_bytes(b"original")
    return o


# --- stage / commit / abort ------------------------------------------------------------


def test_commit_makes_whole_files_with_mode_and_mtime(root: Path) -> None:
    staged = [
        fsio.stage_file(root, "a.py", b"alpha", 0o644, MTIME),
        fsio.stage_file(root, "sub/deeper/b.sh", b"beta" * 1000, 0o755, MTIME + 1),
    ]
    assert not (root / "a.py").exists()  # staged files are not visible yet
    assert all(s.temp_path.exists() and s.temp_path.parent == s.final_path.parent for s in staged)
    fsio.commit(staged)
    assert (root / "a.py").read_bytes() == b"alpha"
    assert (root / "sub/deeper/b.sh").read_bytes() == b"beta" * 1000
    st_a, st_b = (root / "a.py").stat(), (root / "sub/deeper/b.sh").stat()
    assert stat.S_IMODE(st_a.st_mode) == 0o644 and st_a.st_mtime_ns == MTIME
    assert stat.S_IMODE(st_b.st_mode) == 0o755 and st_b.st_mtime_ns == MTIME + 1
    assert temps_below(root) == []


def test_temp_names_are_ignored_by_airflow(root: Path) -> None:
    s = fsio.stage_file(root, "dag.py", b"x", 0o644, MTIME)
    assert s.temp_path.name.startswith(".") and not s.temp_path.name.endswith((".py", ".zip"))
    fsio.abort([s])


def test_write_file_replaces_existing_content(root: Path) -> None:
    (root / "dag.py").write_bytes(b"old old old")
    fsio.write_file(root, "dag.py", b"new", 0o600, MTIME)
    assert (root / "dag.py").read_bytes() == b"new"
    assert stat.S_IMODE((root / "dag.py").stat().st_mode) == 0o600
    assert temps_below(root) == []


def test_empty_file_is_written(root: Path) -> None:
    fsio.write_file(root, "empty.py", b"", 0o644, MTIME)
    assert (root / "empty.py").read_bytes() == b""


def test_abort_removes_temps_and_tolerates_missing_ones(root: Path) -> None:
    staged = [fsio.stage_file(root, f"d/{i}.py", b"x", 0o644, MTIME) for i in range(3)]
    staged[0].temp_path.unlink()
    fsio.abort(staged)
    assert temps_below(root) == []
    assert not any(s.final_path.exists() for s in staged)


def test_commit_syncs_twice_per_file_system_whatever_the_batch(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once so the content is durable before any rename, once so the renames are: never
    a flush per file or per directory."""
    calls: list[int] = []
    real = fsio._syncfs

    def counting(fd: int) -> bool:
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(fsio, "_syncfs", counting)
    staged = [fsio.stage_file(root, f"d{i % 3}/{i}.py", b"x", 0o644, MTIME) for i in range(9)]
    fsio.commit(staged)
    assert len(calls) == 2
    assert all(s.final_path.read_bytes() == b"x" for s in staged)


def test_commit_falls_back_to_fsync_without_syncfs(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fsio, "_syncfs", lambda fd: False)
    fsyncs: list[int] = []
    real_fsync = os.fsync

    def counting(fd: int) -> None:
        fsyncs.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", counting)
    staged = [fsio.stage_file(root, f"{i}.py", b"x", 0o644, MTIME) for i in range(3)]
    fsio.commit(staged)
    assert len(fsyncs) == 3 + 1  # each file, then the directory once
    assert temps_below(root) == []


def test_stage_failure_leaves_no_temp(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full)
    monkeypatch.setattr(bulkio, "stage_files", bulkio.stage_files_py)  # C: test_bulkio
    with pytest.raises(OSError) as info:
        fsio.stage_file(root, "dag.py", b"data", 0o644, MTIME)
    assert info.value.errno == errno.ENOSPC
    assert temps_below(root) == []


def test_stage_onto_a_directory_is_refused(root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        fsio.stage_file(root, "d", b"x", 0o644, MTIME)
    assert temps_below(root) == []


def test_commit_reports_failures_and_commits_the_rest(root: Path) -> None:
    good = fsio.stage_file(root, "good.py", b"good", 0o644, MTIME)
    now_dir = fsio.stage_file(root, "became_dir", b"x", 0o644, MTIME)
    (root / "became_dir").mkdir()
    with pytest.raises(fsio.CommitError) as info:
        fsio.commit([good, now_dir])
    assert set(info.value.failed) == {"became_dir"}
    assert isinstance(info.value.failed["became_dir"], IsADirectoryError)
    assert (root / "good.py").read_bytes() == b"good"
    assert temps_below(root) == []


def test_write_file_raises_the_underlying_error(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "x").write_bytes(b"keep")
    with pytest.raises(IsADirectoryError):
        fsio.write_file(root, "d", b"x", 0o644, MTIME)
    assert (root / "d" / "x").read_bytes() == b"keep"


def test_commit_refuses_parent_that_became_a_symlink(root: Path, outside: Path) -> None:
    s = fsio.stage_file(root, "sub/dag.py", b"evil", 0o644, MTIME)
    (root / "sub").rename(root / "moved")
    (root / "sub").symlink_to(outside)
    with pytest.raises(fsio.CommitError) as info:
        fsio.commit([s])
    assert isinstance(info.value.failed["sub/dag.py"], PathRefused)
    assert sorted(p.name for p in outside.iterdir()) == ["victim.py"]


# --- confinement ---------------------------------------------------------------------


@pytest.fixture
def linked(root: Path, outside: Path) -> Path:
    """root/escape -> outside, a symlinked directory a peer might try to write through."""
    (root / "escape").symlink_to(outside)
    return root


def test_write_through_symlinked_parent_is_refused(linked: Path, outside: Path) -> None:
    with pytest.raises(PathRefused, match="escape"):
        fsio.write_file(linked, "escape/victim.py", b"pwned", 0o644, MTIME)
    with pytest.raises(PathRefused):
        fsio.write_file(linked, "escape/new/dag.py", b"pwned", 0o644, MTIME)
    assert (outside / "victim.py").read_bytes() == b"original"
    assert sorted(p.name for p in outside.iterdir()) == ["victim.py"]


def test_remove_read_meta_symlink_through_symlinked_parent_are_refused(
    linked: Path, outside: Path
) -> None:
    with pytest.raises(PathRefused):
        fsio.remove_file(linked, "escape/victim.py")
    with pytest.raises(PathRefused):
        fsio.read_range(linked, "escape/victim.py", 0, 100)
    with pytest.raises(PathRefused):
        fsio.set_meta(linked, "escape/victim.py", 0o777, MTIME)
    with pytest.raises(PathRefused):
        fsio.make_symlink(linked, "escape/l", "victim.py")
    assert (outside / "victim.py").read_bytes() == b"original"
    assert stat.S_IMODE((outside / "victim.py").stat().st_mode) != 0o777
    assert sorted(p.name for p in outside.iterdir()) == ["victim.py"]


def test_deeper_symlinked_parent_is_refused(root: Path, outside: Path) -> None:
    (root / "a").mkdir()
    (root / "a" / "b").symlink_to(outside)
    with pytest.raises(PathRefused, match="'a/b'"):
        fsio.write_file(root, "a/b/c/dag.py", b"x", 0o644, MTIME)
    assert sorted(p.name for p in outside.iterdir()) == ["victim.py"]


def test_parent_that_is_a_file_is_refused(root: Path) -> None:
    (root / "f").write_bytes(b"")
    with pytest.raises(PathRefused, match="not a directory"):
        fsio.write_file(root, "f/dag.py", b"x", 0o644, MTIME)


def test_root_itself_may_be_a_symlink(tmp_path: Path, root: Path) -> None:
    alias = tmp_path / "alias"
    alias.symlink_to(root)
    fsio.write_file(alias, "dag.py", b"x", 0o644, MTIME)
    assert (root / "dag.py").read_bytes() == b"x"


def test_final_symlink_is_replaced_not_followed(root: Path, outside: Path) -> None:
    (root / "dag.py").symlink_to(outside / "victim.py")
    fsio.write_file(root, "dag.py", b"mine", 0o644, MTIME)
    assert not (root / "dag.py").is_symlink()
    assert (root / "dag.py").read_bytes() == b"mine"
    assert (outside / "victim.py").read_bytes() == b"original"


def test_read_range_does_not_follow_a_final_symlink(root: Path, outside: Path) -> None:
    (root / "dag.py").symlink_to(outside / "victim.py")
    with pytest.raises(PathRefused, match="symlink"):
        fsio.read_range(root, "dag.py", 0, 10)


# --- reads, metadata, symlinks --------------------------------------------------------


def test_read_range_reads_slices_and_short_at_eof(root: Path) -> None:
    data = bytes(range(256)) * 10_000
    (root / "big").write_bytes(data)
    assert fsio.read_range(root, "big", 0, 10) == data[:10]
    assert fsio.read_range(root, "big", 1000, 2_000_000) == data[1000:2_001_000]
    assert fsio.read_range(root, "big", 1000, 10_000_000) == data[1000:]
    assert fsio.read_range(root, "big", len(data), 10) == b""
    with pytest.raises(ValueError):
        fsio.read_range(root, "big", -1, 10)


def test_read_range_of_missing_file_raises(root: Path) -> None:
    with pytest.raises(FileNotFoundError):
        fsio.read_range(root, "nope/dag.py", 0, 1)


def test_read_range_refuses_non_regular_files(root: Path) -> None:
    os.mkfifo(root / "fifo")
    with pytest.raises(PathRefused, match="not a regular file"):
        fsio.read_range(root, "fifo", 0, 1)


def test_set_meta_sets_mode_and_mtime(root: Path) -> None:
    (root / "dag.py").write_bytes(b"x")
    fsio.set_meta(root, "dag.py", 0o640, MTIME)
    st = (root / "dag.py").stat()
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_mtime_ns == MTIME


def test_set_meta_on_symlink_leaves_target_alone(root: Path) -> None:
    (root / "t.py").write_bytes(b"x")
    os.chmod(root / "t.py", 0o644)
    before = (root / "t.py").stat()
    (root / "l.py").symlink_to("t.py")
    fsio.set_meta(root, "l.py", 0o777, MTIME)
    after = (root / "t.py").stat()
    assert stat.S_IMODE(after.st_mode) == 0o644 and after.st_mtime_ns == before.st_mtime_ns
    assert os.lstat(root / "l.py").st_mtime_ns == MTIME


def test_set_meta_refuses_directories(root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        fsio.set_meta(root, "d", 0o777, MTIME)


def test_make_symlink_is_atomic_and_replaces_a_file(root: Path) -> None:
    (root / "lib").mkdir()
    (root / "lib" / "x.py").write_bytes(b"x")
    (root / "sub").mkdir()
    (root / "sub" / "l.py").write_bytes(b"old")
    fsio.make_symlink(root, "sub/l.py", "../lib/x.py")
    assert os.readlink(root / "sub" / "l.py") == "../lib/x.py"
    assert (root / "sub" / "l.py").read_bytes() == b"x"
    fsio.make_symlink(root, "sub/l.py", "../lib")  # replace a link by another link
    assert os.readlink(root / "sub" / "l.py") == "../lib"
    assert temps_below(root) == []


@pytest.mark.parametrize("target", ["/etc/passwd", "../outside", "..", "a/../../x", ""])
def test_make_symlink_refuses_targets_leaving_the_folder(root: Path, target: str) -> None:
    with pytest.raises(PathRefused):
        fsio.make_symlink(root, "l", target)
    assert list(root.iterdir()) == []


# --- removal -------------------------------------------------------------------------


def test_remove_file_prunes_empty_parents_up_to_root(root: Path) -> None:
    fsio.write_file(root, "a/b/c/dag.py", b"x", 0o644, MTIME)
    fsio.write_file(root, "a/keep.py", b"x", 0o644, MTIME)
    assert fsio.remove_file(root, "a/b/c/dag.py") is True
    assert not (root / "a" / "b").exists()
    assert (root / "a" / "keep.py").exists()
    assert fsio.remove_file(root, "a/keep.py") is True
    assert root.is_dir() and list(root.iterdir()) == []


def test_remove_file_reports_already_gone(root: Path) -> None:
    assert fsio.remove_file(root, "missing.py") is False
    assert fsio.remove_file(root, "no/such/dir/missing.py") is False


def test_remove_file_never_removes_a_directory(root: Path) -> None:
    (root / "d").mkdir()
    with pytest.raises(IsADirectoryError):
        fsio.remove_file(root, "d")
    assert (root / "d").is_dir()


def test_remove_file_removes_a_symlink_not_its_target(root: Path, outside: Path) -> None:
    (root / "l.py").symlink_to(outside / "victim.py")
    assert fsio.remove_file(root, "l.py") is True
    assert not (root / "l.py").is_symlink()
    assert (outside / "victim.py").read_bytes() == b"original"


# --- crash leftovers ---------------------------------------------------------------------


def test_cleanup_temp_files_removes_crash_leftovers_only(root: Path, outside: Path) -> None:
    leftovers = [root / ".~dagsync.aaaa.tmp", root / "d" / "e" / ".~dagsync.bbbb.tmp"]
    (root / "d" / "e").mkdir(parents=True)
    for p in leftovers:
        p.write_bytes(b"half")
    link_temp = root / "d" / ".~dagsync.cccc.tmp"
    link_temp.symlink_to("e")  # a crashed make_symlink
    leftovers.append(link_temp)
    keep = [root / "x.tmp", root / ".~dagsync", root / "d" / "dag.py", root / ".hidden.tmp"]
    for p in keep:
        p.write_bytes(b"keep")
    (root / "d" / ".~dagsync.dddd.tmp.d").mkdir()  # a directory is never ours
    (outside / ".~dagsync.eeee.tmp").write_bytes(b"not ours")
    (root / "escape").symlink_to(outside)

    removed = fsio.cleanup_temp_files(root)

    assert sorted(removed) == sorted(leftovers)
    assert not any(os.path.lexists(p) for p in leftovers)
    assert all(p.exists() for p in keep)
    assert (outside / ".~dagsync.eeee.tmp").exists()
    assert (root / "d" / ".~dagsync.dddd.tmp.d").is_dir()


def test_cleanup_after_simulated_crash_between_stage_and_commit(root: Path) -> None:
    staged = fsio.stage_file(root, "a/dag.py", b"x", 0o644, MTIME)
    assert fsio.cleanup_temp_files(root) == [staged.temp_path]
    assert temps_below(root) == []
    assert not (root / "a" / "dag.py").exists()


def test_ensure_dir_creates_and_rejects_files(tmp_path: Path) -> None:
    target = tmp_path / "state" / "tmp"
    fsio.ensure_dir(target)
    fsio.ensure_dir(target)  # idempotent
    assert target.is_dir()
    assert stat.S_IMODE(target.stat().st_mode) & 0o077 == 0
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(FileExistsError):
        fsio.ensure_dir(tmp_path / "file")


def test_staging_in_a_private_temp_dir_leaves_nothing_in_the_folder(
    root: Path, tmp_path: Path
) -> None:
    private = tmp_path / "private-tmp"
    private.mkdir()
    s = fsio.stage_file(root, "sub/new.py", b"whole", 0o640, MTIME, private)
    assert temps_below(root) == []  # the folder never sees the temp file
    assert not (root / "sub/new.py").exists()
    fsio.commit([s])
    assert (root / "sub/new.py").read_bytes() == b"whole"
    assert os.stat(root / "sub/new.py").st_mode & 0o777 == 0o640
    assert list(private.iterdir()) == []
    aborted = fsio.stage_file(root, "other.py", b"x", 0o644, MTIME, private)
    fsio.abort([aborted])
    assert list(private.iterdir()) == [] and not (root / "other.py").exists()


# --- batches sharing directory fds ----------------------------------------------------


def test_batch_with_shared_dirs_commits_whole_files_and_reports_their_inode(
    root: Path, tmp_path: Path
) -> None:
    private = tmp_path / "private-tmp"
    private.mkdir()
    with fsio.Dirs(root) as dirs:
        staged = [fsio.stage_file(root, f"d{i % 2}/sub/{i}.py", b"%d" % i, 0o640, MTIME,
                                  private, dirs) for i in range(6)]
        fsio.commit(staged, dirs)
    for i, s in enumerate(staged):
        st = (root / s.relpath).stat()
        assert (root / s.relpath).read_bytes() == b"%d" % i
        assert (st.st_ino, st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (s.inode, MTIME, 0o640)
    assert list(private.iterdir()) == []


def test_shared_dirs_never_follow_a_parent_swapped_for_a_symlink(
    root: Path, outside: Path, tmp_path: Path
) -> None:
    """The fd opened at staging keeps naming the real directory: a swap to a symlink
    after the walk moves nothing outside the folder."""
    with fsio.Dirs(root) as dirs:
        s = fsio.stage_file(root, "sub/dag.py", b"evil", 0o644, MTIME, None, dirs)
        (root / "sub").rename(root / "moved")
        (root / "sub").symlink_to(outside)
        fsio.commit([s], dirs)
    assert sorted(p.name for p in outside.iterdir()) == ["victim.py"]
    assert (root / "moved" / "dag.py").read_bytes() == b"evil"


def test_shared_dirs_refuse_a_symlinked_parent(root: Path, outside: Path) -> None:
    (root / "link").symlink_to(outside)
    with fsio.Dirs(root) as dirs, pytest.raises(PathRefused):
        fsio.stage_file(root, "link/victim.py", b"evil", 0o644, MTIME, None, dirs)
    assert (outside / "victim.py").read_bytes() == b"original"


def test_batch_commit_fails_a_file_whose_path_is_now_a_directory(
    root: Path, tmp_path: Path
) -> None:
    private = tmp_path / "private-tmp"
    private.mkdir()
    (root / "d").mkdir()
    (root / "d" / "keep.py").write_bytes(b"keep")
    with fsio.Dirs(root) as dirs:
        good = fsio.stage_file(root, "good.py", b"good", 0o644, MTIME, private, dirs)
        bad = fsio.stage_file(root, "d", b"x", 0o644, MTIME, private, dirs)
        with pytest.raises(fsio.CommitError) as info:
            fsio.commit([good, bad], dirs)
    assert list(info.value.failed) == ["d"]
    assert (root / "good.py").read_bytes() == b"good"
    assert (root / "d" / "keep.py").read_bytes() == b"keep"
    assert list(private.iterdir()) == []


def test_existing_answers_as_lexists_does(root: Path) -> None:
    (root / "d").mkdir()
    (root / "d" / "a.py").write_text("a")
    (root / "d" / "dangling").symlink_to("nowhere")
    (root / "f.py").write_text("f")
    (root / "linked").symlink_to("d")
    asked = ["d/a.py", "d/b.py", "d/dangling", "f.py", "g.py", "linked/a.py", "linked/x",
             "f.py/under_a_file", "f.py/also", "new/one.py", "new/two.py", "new/deep/three.py"]
    expected = [rel for rel in asked if os.path.lexists(root / rel)]
    assert sorted(fsio.existing(root, asked)) == sorted(expected)
    assert sorted(expected) == ["d/a.py", "d/dangling", "f.py", "linked/a.py"]


@pytest.mark.parametrize("private_temp", [False, True])
def test_stage_files_refuses_a_symlinked_parent_and_stages_the_rest(
    root: Path, tmp_path: Path, private_temp: bool,
) -> None:
    """SPEC guarantee 8 in a batch: a write whose parent directory is a symlink out of
    the folder fails alone (PathRefused); nothing lands outside; the others are staged."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "evil").symlink_to(outside)
    temp = tmp_path / "private-tmp"
    temp.mkdir()
    with fsio.Dirs(root) as dirs:
        results = fsio.stage_files(
            root, [("evil/dag.py", b"x", 0o644, MTIME), ("team/ok.py", b"ok", 0o644, MTIME)],
            temp if private_temp else None, dirs)
        assert isinstance(results[0], PathRefused)
        assert isinstance(results[1], fsio.StagedWrite)
        fsio.commit([results[1]], dirs)
    assert list(outside.iterdir()) == []
    assert (root / "team" / "ok.py").read_bytes() == b"ok"
    assert temps_below(root) == [] and list(temp.iterdir()) == []


# --- new directories staged whole (bulk rounds) ----------------------------------------


@pytest.fixture
def private(tmp_path: Path) -> Path:
    p = tmp_path / "private-tmp"
    p.mkdir()
    return p


def stage_whole(root: Path, private: Path, files: dict[str, bytes],
                dirs: fsio.Dirs | None = None) -> list[fsio.StagedWrite]:
    out = fsio.stage_files(root, [(rel, data, 0o640, MTIME) for rel, data in files.items()],
                           private, dirs, whole_dirs=True)
    assert all(isinstance(s, fsio.StagedWrite) for s in out), out
    return [s for s in out if isinstance(s, fsio.StagedWrite)]


def assert_landed(root: Path, staged: list[fsio.StagedWrite], files: dict[str, bytes]) -> None:
    for s in staged:
        st = (root / s.relpath).stat()
        assert (root / s.relpath).read_bytes() == files[s.relpath]
        assert (st.st_ino, st.st_mtime_ns, stat.S_IMODE(st.st_mode)) == (s.inode, MTIME, 0o640)


def test_a_new_directory_is_staged_whole_and_appears_at_once(
    root: Path, private: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its files wait under their final names in a copy of the directory in the private
    temp dir, invisible in the folder; the commit renames the directory in, no file is
    linked one by one; files of an existing directory go the usual way."""
    (root / "old").mkdir()
    files = {"team/new/a.py": b"a", "team/new/b.py": b"bb", "old/c.py": b"ccc"}
    staged = stage_whole(root, private, files)
    assert {s.relpath: s.whole_dir for s in staged} == {
        "team/new/a.py": True, "team/new/b.py": True, "old/c.py": False}
    assert not (root / "team" / "new").exists()  # its parent is made, it is not
    assert not (root / "old" / "c.py").exists()
    placed: list[int] = []
    real = bulkio.place_files
    monkeypatch.setattr(bulkio, "place_files", lambda items: placed.append(len(items))
                        or real(items))
    fsio.commit(staged)
    assert placed == [1]  # only old/c.py went through link and unlink
    assert_landed(root, staged, files)
    assert sorted(os.listdir(root / "team" / "new")) == ["a.py", "b.py"]
    assert list(private.iterdir()) == []


def test_a_directory_made_meanwhile_takes_the_files_one_by_one(
    root: Path, private: Path
) -> None:
    """Whoever made the directory after staging (a local user, another chunk) keeps it
    and what it holds: the staged copy never replaces it, its files are placed into it."""
    files = {"new/a.py": b"a", "new/b.py": b"b"}
    staged = stage_whole(root, private, files)
    (root / "new").mkdir()
    (root / "new" / "mine.py").write_bytes(b"local")
    fsio.commit(staged)
    assert_landed(root, staged, files)
    assert (root / "new" / "mine.py").read_bytes() == b"local"
    assert list(private.iterdir()) == []
    # an empty directory made meanwhile is not replaced either (plain rename would)
    staged = stage_whole(root, private, {"empty/x.py": b"x"})
    (root / "empty").mkdir()
    ino = (root / "empty").stat().st_ino
    fsio.commit(staged)
    assert (root / "empty").stat().st_ino == ino
    assert (root / "empty" / "x.py").read_bytes() == b"x"
    assert list(private.iterdir()) == []


def test_a_staged_directory_is_never_placed_through_a_symlink(
    root: Path, private: Path, outside: Path
) -> None:
    files = {"new/a.py": b"evil"}
    staged = stage_whole(root, private, files)
    (root / "new").symlink_to(outside)
    with pytest.raises(fsio.CommitError) as caught:
        fsio.commit(staged)
    assert set(caught.value.failed) == {"new/a.py"}
    assert sorted(p.name for p in outside.iterdir()) == ["victim.py"]
    assert list(private.iterdir()) == []


def test_only_the_deepest_new_directories_are_staged_whole(root: Path, private: Path) -> None:
    """A new directory holding another new one is made in the folder (the inner one's
    parent must exist for its rename); nested trees land whole all the same."""
    files = {"n/a.py": b"a", "n/sub/b.py": b"b", "n/sub/deeper/c.py": b"c"}
    staged = stage_whole(root, private, files)
    assert {s.relpath: s.whole_dir for s in staged} == {
        "n/a.py": False, "n/sub/b.py": False, "n/sub/deeper/c.py": True}
    fsio.commit(staged)
    assert_landed(root, staged, files)
    assert list(private.iterdir()) == []


def test_an_aborted_or_crashed_staged_directory_leaves_nothing(
    root: Path, private: Path
) -> None:
    staged = stage_whole(root, private, {"new/a.py": b"a", "new/b.py": b"b"})
    fsio.abort(staged)
    assert list(private.iterdir()) == [] and not (root / "new").exists()
    stage_whole(root, private, {"crash/a.py": b"a"})  # the agent dies before commit
    assert len(list(private.iterdir())) == 1
    assert fsio.cleanup_temp_files(root) == []  # the folder has no leftovers
    removed = fsio.cleanup_temp_files(private, copies=True)
    assert len(removed) == 1 and list(private.iterdir()) == []


# --- a mount inside the folder ----------------------------------------------------------


@pytest.fixture
def mounted(root: Path) -> Iterator[Path]:
    """root/shared: a file system of its own inside the folder."""
    with tmpfs_mounted(root / "shared") as point:
        yield point


def test_files_below_a_mount_inside_the_folder_are_staged_on_its_file_system(
    root: Path, private: Path, mounted: Path
) -> None:
    """A rename cannot cross file systems: the private temp dir sits on the folder
    root's, so files below a mount are staged beside their final names instead (new
    directories there too), and every file lands (they failed with EXDEV before)."""
    assert os.stat(mounted).st_dev != os.stat(root).st_dev
    files = {"shared/a.py": b"a", "shared/new/b.py": b"bb", "shared/new/deeper/c.py": b"c",
             "team/d.py": b"d"}
    staged = stage_whole(root, private, files)
    where = {s.relpath: s.temp_dir for s in staged}
    assert [s.relpath for s in staged if s.whole_dir] == ["team/d.py"]  # the root's own
    assert [where[p] for p in files if p.startswith("shared/")] == [None, None, None]
    fsio.commit(staged)
    assert_landed(root, staged, files)
    assert temps_below(root) == [] and list(private.iterdir()) == []
