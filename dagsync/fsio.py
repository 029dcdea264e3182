"""The file system edge of one synced folder: confined, atomic writes, deletes and reads.

Every call takes the folder root and a relpath already accepted by paths.check_relpath.
Parent directories are walked one component at a time with O_DIRECTORY|O_NOFOLLOW
directory fds and every act goes through `dir_fd=`, so a symlinked (or swapped)
directory inside the folder can never redirect a write, delete or read outside the root
(SPEC guarantee 8). The root itself may be a symlink: that is the operator's choice.

Files appear only whole (SPEC guarantee 3): content goes to a temp name Airflow ignores
(in the agent's private temp dir, or in the same directory), is made durable, and only
then is put into place. A bulk round writes a directory that does not exist yet as a
whole: its files under their final names in a staged copy in the private temp dir, made
durable, then the directory renamed into place at once (stage_files' whole_dirs).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import logging
import os
import secrets
import shutil
import stat
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dagsync import bulkio, paths
from dagsync.errors import PathRefused

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _read_umask()  # read once: a file created with mode m gets m & ~umask


@dataclass(frozen=True, slots=True)
class StagedWrite:
    """A file written under its temp name, waiting for commit() to make it visible."""

    root: Path
    relpath: str
    temp_name: str
    temp_dir: Path | None  # the private temp dir it was written in; None: beside relpath
    mode: int
    mtime_ns: int  # as the file system stored it
    inode: int = 0  # the temp's inode, which the committed file keeps
    # Written under its final name in `temp_dir`, a staged copy of its parent directory,
    # which did not exist: commit() renames the whole directory into place at once.
    whole_dir: bool = False

    @property
    def in_temp_dir(self) -> bool:
        return self.temp_dir is not None

    @property
    def final_path(self) -> Path:
        return self.root / self.relpath

    @property
    def temp_path(self) -> Path:
        return (self.temp_dir or self.final_path.parent) / self.temp_name


class CommitError(OSError):
    """commit() could not put some files in place; `failed` maps relpath to the cause.

    Every other file of the batch was committed; the failed ones left no temp behind.
    """

    def __init__(self, failed: dict[str, Exception]) -> None:
        self.failed = failed
        first = next(iter(failed.items()))
        super().__init__(f"{len(failed)} file(s) not committed; first {first[0]!r}: {first[1]}")


# --- confined directory walking ---------------------------------------------------


def _open_root(root: Path) -> int:
    return os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)


def _open_child_dir(parent_fd: int, name: str, create: bool) -> int:
    """Open directory `name` below `parent_fd` without following a symlink."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except FileNotFoundError:
        if not create:
            raise
    with contextlib.suppress(FileExistsError):
        os.mkdir(name, 0o755, dir_fd=parent_fd)
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd)


@contextlib.contextmanager
def _parent_chain(root: Path, relpath: str, *, create: bool) -> Iterator[list[int]]:
    """Yield the fds [root, dir1, ..., parent] of `relpath`'s directories, then close them.

    Raises PathRefused if a parent is a symlink or not a directory; FileNotFoundError if
    a parent is missing and `create` is false.
    """
    parts = relpath.split("/")[:-1]
    with Dirs(root) as ds:
        yield [ds.dir("/".join(parts[:i]), relpath, create=create)
               for i in range(len(parts) + 1)]


@contextlib.contextmanager
def _parent(root: Path, relpath: str, *, create: bool) -> Iterator[int]:
    """Yield an fd of `relpath`'s parent directory, reached without following symlinks."""
    with Dirs(root) as ds:
        yield ds.parent(relpath, create=create)


class Dirs:
    """The confined directory fds of one folder, each opened once for a batch.

    Walking a file's parents costs two syscalls per level, per file; a batch of files in
    a few directories opens each directory once (O_DIRECTORY|O_NOFOLLOW, one level at a
    time from the root). An fd keeps naming the directory it was opened
    on, so a swap of a parent for a symlink after the walk still cannot redirect a write
    outside the folder. Use it for one batch and close it before removing directories,
    so nothing is written into a directory removed meanwhile.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._fds: dict[str, int] = {}
        self._others: dict[Path, int] = {}

    def __enter__(self) -> Dirs:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for fd in [*self._fds.values(), *self._others.values()]:
            os.close(fd)
        self._fds.clear()
        self._others.clear()

    def parent(self, relpath: str, *, create: bool) -> int:
        """An fd of `relpath`'s parent directory (owned by this object: do not close)."""
        return self.dir(relpath.rpartition("/")[0], relpath, create=create)

    def dir(self, rel: str, relpath: str, *, create: bool) -> int:
        fd = self._fds.get(rel)
        if fd is not None:
            return fd
        if not rel:
            fd = _open_root(self.root)
        else:
            up, _, name = rel.rpartition("/")
            pfd = self.dir(up, relpath, create=create)
            try:
                fd = _open_child_dir(pfd, name, create)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise PathRefused(
                        f"refused path {relpath!r}: parent {rel!r} is a symlink or "
                        f"not a directory in {str(self.root)!r}"
                    ) from None
                raise
        self._fds[rel] = fd
        return fd

    def other(self, path: Path) -> int:
        """An fd of a directory outside the folder (the private temp dir), opened once."""
        fd = self._others.get(path)
        if fd is None:
            fd = self._others[path] = os.open(path, _DIR_FLAGS)
        return fd


@contextlib.contextmanager
def _dirs_for(root: Path, dirs: Dirs | None) -> Iterator[Dirs]:
    """`dirs` when the caller batches, else a private Dirs for this one call."""
    if dirs is not None:
        yield dirs
        return
    with Dirs(root) as own:
        yield own


def _basename(relpath: str) -> str:
    return relpath.rsplit("/", 1)[-1]


def _lstat_at(dir_fd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _unlink_quietly(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _fsync_dir_at(dir_fd: int) -> None:
    """fsync a directory so a rename or unlink in it survives a power cut."""
    try:
        os.fsync(dir_fd)
    except OSError as e:  # some file systems cannot fsync directories; nothing to gain
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


# --- durability ----------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _libc_function(name: str) -> Callable[..., int] | None:
    """The C library's `name` (errno kept for ctypes.get_errno), None if it lacks one."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        return getattr(_libc, name)  # type: ignore[no-any-return]
    except (OSError, AttributeError):
        return None


def _syncfs(fd: int) -> bool:
    """syncfs(2) the file system holding `fd`; False if unavailable or it failed."""
    fn = _libc_function("syncfs")
    if fn is None:
        return False
    started = time.perf_counter()
    ok = fn(ctypes.c_int(fd)) == 0
    log.debug("syncfs took %.1f ms", (time.perf_counter() - started) * 1000)
    if ok:
        return True
    log.debug("syncfs failed (errno %d); falling back to fsync", ctypes.get_errno())
    return False


def sync_root(root: Path) -> int | None:
    """syncfs the file system of `root` (what commit(settle=False) placed there, and
    what was staged since); its device, or None if it took sync(2) instead."""
    fd = _open_root(root)
    try:
        if _syncfs(fd):
            return os.fstat(fd).st_dev
        os.sync()
        return None
    finally:
        os.close(fd)


def _fsync_at(dir_fd: int, name: str) -> None:
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- writes --------------------------------------------------------------------------


_TOKEN_PREFIX = secrets.token_hex(6)  # random per process: concurrent writers never meet
_token_counter = itertools.count()


def _temp_token() -> str:
    return f"{_TOKEN_PREFIX}{next(_token_counter):x}"


def stage_file(
    root: Path, relpath: str, data: bytes, mode: int, mtime_ns: int,
    temp_dir: Path | None = None, dirs: Dirs | None = None,
) -> StagedWrite:
    """Write `data` to a temp file with its final mode and mtime (stage_files for one
    file): its failure is raised. Without `dirs`, a directory in the way is refused
    here rather than at commit()."""
    with _dirs_for(root, dirs) as ds:
        if dirs is None:
            st = _lstat_at(ds.parent(relpath, create=True), _basename(relpath))
            if st is not None and stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(root / relpath))
        result = stage_files(root, [(relpath, data, mode, mtime_ns)], temp_dir, ds)[0]
    if not isinstance(result, StagedWrite):
        raise result
    return result


def stage_files(
    root: Path, writes: Sequence[tuple[str, bytes, int, int]], temp_dir: Path | None,
    dirs: Dirs | None = None, *, whole_dirs: bool = False,
) -> list[StagedWrite | OSError | PathRefused]:
    """Write each (relpath, data, mode, mtime_ns) to a temp file with its final mode and
    mtime; per write, its StagedWrite or the exception that failed it.

    The temp files go in `temp_dir` when given (a private directory on the same file
    system, so the synced folder sees one new name and no temp-file churn), else beside
    their relpath; so do those of a directory on another file system (a mount inside
    the folder), which a rename from `temp_dir` could not reach. Missing parent
    directories are created (0o755, confined). Nothing is fsynced here: commit() makes
    a whole batch durable at once. A failed write leaves no temp. The syscalls of the
    whole batch run in one bulkio call. Pass the `dirs` the batch will be committed
    with to open each directory once.

    With `whole_dirs` (and a `temp_dir`), the files of a directory that does not exist
    yet are written under their final names in a staged copy of it in `temp_dir`: commit()
    then renames the directory into place, one rename instead of a link and an unlink
    per file (an initial sync creates every directory; docs/initial-sync.md). Only for
    a folder nobody watches meanwhile: a watcher would see one directory arrive.
    """
    results: list[StagedWrite | OSError | PathRefused] = []
    items: list[bulkio.StageItem] = []
    made: list[tuple[int, str, str, int, Path | None]] = []  # (at, relpath, temp, mode, dir)
    with _dirs_for(root, dirs) as ds:
        temp_fd = ds.other(temp_dir) if temp_dir is not None else -1
        temp_dev = os.fstat(temp_fd).st_dev if temp_dir is not None else None
        devices: dict[int, int] = {}  # a parent's fd -> its file system

        def on_temp_dev(pfd: int) -> bool:
            dev = devices.get(pfd)
            if dev is None:
                dev = devices[pfd] = os.fstat(pfd).st_dev
            return dev == temp_dev

        fresh = _fresh_dirs(root, [w[0] for w in writes]) if whole_dirs and temp_dir else set()
        copies: dict[str, tuple[int, Path] | None] = {}  # fresh dir -> its staged copy
        for relpath, data, mode, mtime_ns in writes:
            perm = mode & 0o7777
            chmod = bool(perm & (0o7000 | _UMASK))  # open() applies the umask: chmod if cut
            reldir = relpath.rpartition("/")[0]
            copy = _staged_copy(ds, temp_fd, temp_dir, reldir, copies, on_temp_dev) \
                if reldir in fresh else None
            if copy is not None:  # under its final name in the directory's staged copy
                fd, tmp, where = copy[0], _basename(relpath), copy[1]
            else:
                try:
                    folder_pfd = ds.parent(relpath, create=True)
                except (OSError, PathRefused) as e:
                    results.append(e)
                    continue
                tmp = paths.temp_name(_basename(relpath), _temp_token())
                if temp_dir is not None and on_temp_dev(folder_pfd):
                    fd, where = temp_fd, temp_dir
                else:  # beside the file: private (0o600) until its final mode is set
                    fd, where, chmod = folder_pfd, None, True
            items.append((fd, tmp, data, perm, chmod, mtime_ns))
            made.append((len(results), relpath, tmp, mode, where))
            results.append(OSError("not staged"))  # replaced below
        staged = bulkio.stage_files(items)
    for (at, relpath, tmp, mode, where), out in zip(made, staged, strict=True):
        if isinstance(out, int):
            results[at] = OSError(out, os.strerror(out), str(root / relpath))
        else:
            results[at] = StagedWrite(root, relpath, tmp, where, mode, out[0], out[1],
                                      whole_dir=where is not None and where != temp_dir)
    return results


def _fresh_dirs(root: Path, relpaths: Sequence[str]) -> set[str]:
    """The parent directories of `relpaths` that do not exist and hold no other parent
    of the batch (creating that one's parents would create them): each can be staged
    whole. A wrong answer costs only speed: commit() falls back to file by file."""
    parents = {r.rpartition("/")[0] for r in relpaths}
    parents.discard("")
    above = {d.rsplit("/", i)[0] for d in parents for i in range(1, d.count("/") + 1)}
    return {d for d in parents - above if not os.path.lexists(root / d)}


def _staged_copy(ds: Dirs, temp_fd: int, temp_dir: Path | None, reldir: str,
                 copies: dict[str, tuple[int, Path] | None],
                 on_temp_dev: Callable[[int], bool]) -> tuple[int, Path] | None:
    """The staged copy of new directory `reldir` in `temp_dir` (fd, path), made on first
    use, after its parents in the folder (confined). None if it cannot be made, or could
    not be renamed into its parent (another file system)."""
    if reldir in copies:
        return copies[reldir]
    copy: tuple[int, Path] | None = None
    if temp_dir is not None:
        try:
            if on_temp_dev(ds.parent(reldir, create=True)):  # a rename can reach its parent
                name = paths.temp_name(_basename(reldir), _temp_token())
                os.mkdir(name, 0o755, dir_fd=temp_fd)
                copy = (ds.other(temp_dir / name), temp_dir / name)
        except (OSError, PathRefused) as e:
            log.debug("cannot stage %s whole: %s", reldir, e)
    copies[reldir] = copy
    return copy


def commit(staged: Sequence[StagedWrite], dirs: Dirs | None = None, *, settle: bool = True,
           synced: Collection[int] = ()) -> None:
    """Make staged files durable, then visible, then make the renames durable.

    One syncfs(2) per file system covers every temp file (fsync of each file where
    syncfs is unavailable); then each temp is put in place (replacing a file or symlink
    there, never following it); then one more syncfs makes the directory changes
    durable. Parents are walked again unless `dirs` (the Dirs the files were staged
    with) is given; either way a parent swapped for a symlink cannot redirect a file
    outside the folder. Files that fail lose their temp and are reported together in
    CommitError; the rest of the batch is committed.

    Without `settle`, that last syncfs is left out for the file system of the folder
    root: the caller must not record the files as landed before a later syncfs there
    (sync_root). `synced`: devices the caller synced after staging (sync_root), whose
    first syncfs is not repeated here.
    """
    failed: dict[str, Exception] = {}
    groups: dict[tuple[Path, str, Path | None], list[StagedWrite]] = {}
    for s in staged:  # by directory; a staged copy of a new directory is a group of its own
        key = (s.root, s.relpath.rpartition("/")[0], s.temp_dir if s.whole_dir else None)
        groups.setdefault(key, []).append(s)

    def fail(group: list[StagedWrite], e: Exception) -> None:
        for s in group:
            failed[s.relpath] = e
        abort(group)

    shared: dict[Path, Dirs] = {dirs.root: dirs} if dirs is not None else {}
    own: list[Dirs] = []

    def dirs_of(root: Path) -> Dirs:
        ds = shared.get(root)
        if ds is None:
            ds = shared[root] = Dirs(root)
            own.append(ds)
        return ds

    # 1. durability: one syncfs per file system, else fsync file by file
    device_fd: dict[int, int] = {}
    ready: list[tuple[int, list[StagedWrite]]] = []
    try:
        for group in groups.values():
            first = group[0]  # a staged copy goes into the parent of its directory
            anchor = first.relpath.rpartition("/")[0] if first.whole_dir else first.relpath
            try:
                pfd = dirs_of(first.root).parent(anchor, create=False)
            except (OSError, PathRefused) as e:
                fail(group, e)
                continue
            device_fd.setdefault(os.fstat(pfd).st_dev, pfd)
            ready.append((pfd, group))
        done_first = {dev for dev, fd in device_fd.items() if dev in synced or _syncfs(fd)}
        _rename_all(ready, done_first, failed, dirs_of)
        # 3. the renames themselves: one more syncfs instead of an fsync per directory
        roots = set() if settle else {os.fstat(dirs_of(r).dir("", "", create=False)).st_dev
                                      for r, _, _ in groups}
        for dev in done_first - roots:
            _syncfs(device_fd[dev])
    finally:
        for ds in own:
            ds.close()
    if failed:
        raise CommitError(failed)


def _rename_all(
    ready: list[tuple[int, list[StagedWrite]]],
    synced: set[int],
    failed: dict[str, Exception],
    dirs_of: Callable[[Path], Dirs],
) -> None:
    """Step 2 of commit: visibility. Files on a file system with syncfs are placed in
    one bulkio call; directories elsewhere are fsynced file by file and once each."""
    batch: list[StagedWrite] = []
    items: list[bulkio.PlaceItem] = []
    copies: list[StagedWrite] = []  # staged copies placed file by file, removed after
    for pfd, group in ready:
        need_fsync = os.fstat(pfd).st_dev not in synced
        if group[0].whole_dir:
            if not need_fsync and _place_copy(group[0], pfd, dirs_of):
                continue
            copies.append(group[0])
            try:  # the directory exists after all (or no syncfs): file by file into it
                pfd = dirs_of(group[0].root).parent(group[0].relpath, create=True)
            except (OSError, PathRefused) as e:
                for s in group:
                    failed[s.relpath] = e
                    _abort_one(s)
                continue
        renamed = False
        for s in group:
            try:
                src_fd = dirs_of(s.root).other(s.temp_dir) if s.temp_dir is not None else pfd
                if not need_fsync:
                    items.append((src_fd, s.temp_name, pfd, _basename(s.relpath),
                                  s.in_temp_dir))
                    batch.append(s)
                    continue
                _fsync_at(src_fd, s.temp_name)
                _place(src_fd, s.temp_name, pfd, _basename(s.relpath), s.in_temp_dir)
                renamed = True
            except OSError as e:
                failed[s.relpath] = e
                _abort_one(s)
        if renamed and need_fsync:
            _fsync_dir_at(pfd)
    for s, err in zip(batch, bulkio.place_files(items), strict=True):
        if err:
            failed[s.relpath] = OSError(err, os.strerror(err), str(s.final_path))
            _abort_one(s)
    _remove_copies(copies)


def _place_copy(first: StagedWrite, pfd: int, dirs_of: Callable[[Path], Dirs]) -> bool:
    """Rename the staged copy holding `first` into place as its new directory, below
    `pfd`; False (nothing done) if a directory or anything else holds the name now."""
    assert first.temp_dir is not None
    reldir = first.relpath.rpartition("/")[0]
    try:
        src_fd = dirs_of(first.root).other(first.temp_dir.parent)
        _rename_noreplace(src_fd, first.temp_dir.name, pfd, _basename(reldir))
    except OSError as e:
        log.debug("%s placed file by file: %s", reldir, e)
        return False
    return True


def _remove_copies(firsts: Iterable[StagedWrite]) -> None:
    """Remove the staged copies (emptied, or whose files failed) of these files."""
    for copy in {s.temp_dir for s in firsts if s.whole_dir and s.temp_dir is not None}:
        with contextlib.suppress(OSError):
            os.rmdir(copy)


def _rename_noreplace(src_fd: int, src: str, dst_fd: int, dst: str) -> None:
    """renameat2(RENAME_NOREPLACE): an existing `dst`, even an empty directory, stays."""
    fn = _libc_function("renameat2")
    if fn is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", dst)
    if fn(ctypes.c_int(src_fd), os.fsencode(src), ctypes.c_int(dst_fd), os.fsencode(dst),
          ctypes.c_uint(1)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), dst)


def _place(src_fd: int, tmp: str, dst_fd: int, name: str, from_temp_dir: bool) -> None:
    """Put one staged file in place atomically (bulkio.place_files_py says how)."""
    err = bulkio.place_files_py([(src_fd, tmp, dst_fd, name, from_temp_dir)])[0]
    if err:
        raise OSError(err, os.strerror(err), name)


def _abort_one(s: StagedWrite) -> None:
    if s.in_temp_dir:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(s.temp_path)
        return
    try:
        with _parent(s.root, s.relpath, create=False) as pfd:
            _unlink_quietly(pfd, s.temp_name)
    except (FileNotFoundError, PathRefused):
        pass  # the directory is gone or no longer ours: nothing of ours to remove there


def abort(staged: Sequence[StagedWrite]) -> None:
    """Remove the temp files of writes that will not be committed; missing ones are fine."""
    for s in staged:
        _abort_one(s)
    _remove_copies(staged)


def write_file(root: Path, relpath: str, data: bytes, mode: int, mtime_ns: int) -> None:
    """Stage and commit one file; its failure is raised as the underlying error."""
    staged = stage_file(root, relpath, data, mode, mtime_ns)
    try:
        commit([staged])
    except CommitError as e:
        raise e.failed[relpath] from None


def make_symlink(root: Path, relpath: str, target: str) -> None:
    """Atomically put a symlink at `relpath`: create it under a temp name, rename it in.

    Refuses targets that would leave the folder (paths.symlink_target_ok).
    """
    if not paths.symlink_target_ok(relpath, target):
        raise PathRefused(f"refused symlink {relpath!r} -> {target!r}: target leaves the folder")
    tmp = paths.temp_name(_basename(relpath), _temp_token())
    with _parent(root, relpath, create=True) as pfd:
        os.symlink(target, tmp, dir_fd=pfd)
        try:
            os.replace(tmp, _basename(relpath), src_dir_fd=pfd, dst_dir_fd=pfd)
        except BaseException:
            _unlink_quietly(pfd, tmp)
            raise
        _fsync_dir_at(pfd)


def set_meta(root: Path, relpath: str, mode: int, mtime_ns: int) -> None:
    """Set mode (regular files only) and mtime without ever following a symlink."""
    name = _basename(relpath)
    with _parent(root, relpath, create=False) as pfd:
        st = os.stat(name, dir_fd=pfd, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=pfd, follow_symlinks=False)
            return
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(root / relpath))
        if not stat.S_ISREG(st.st_mode):
            raise PathRefused(f"refused path {relpath!r}: not a regular file or symlink")
        try:
            fd = os.open(name, _READ_FLAGS, dir_fd=pfd)
        except PermissionError:  # unreadable file: chmod by name, still never following
            os.chmod(name, mode & 0o7777, dir_fd=pfd, follow_symlinks=False)
            os.utime(name, ns=(mtime_ns, mtime_ns), dir_fd=pfd, follow_symlinks=False)
            return
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathRefused(f"refused path {relpath!r}: became a symlink") from None
            raise
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PathRefused(f"refused path {relpath!r}: not a regular file")
            os.fchmod(fd, mode & 0o7777)
            os.utime(fd, ns=(mtime_ns, mtime_ns))
        finally:
            os.close(fd)


# --- deletes and reads -----------------------------------------------------------------


def move_file(root: Path, src: str, dst: str) -> None:
    """Rename a file or symlink within the folder with one rename(2) (creating missing
    parents of `dst`), replacing a file at `dst`, never following a symlinked parent."""
    with _parent(root, src, create=False) as sfd, _parent(root, dst, create=True) as dfd:
        st = _lstat_at(dfd, _basename(dst))
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(root / dst))
        os.rename(_basename(src), _basename(dst), src_dir_fd=sfd, dst_dir_fd=dfd)
        _fsync_dir_at(dfd)
        if not os.path.samestat(os.fstat(sfd), os.fstat(dfd)):
            _fsync_dir_at(sfd)


def remove_file(root: Path, relpath: str) -> bool:
    """Unlink the file or symlink at `relpath` (never a directory), durably.

    Returns False if it was already gone. Directories left empty by the removal are
    removed too, up to but not including the root (directories are not synced objects).
    """
    name = _basename(relpath)
    parts = relpath.split("/")[:-1]
    try:
        with _parent_chain(root, relpath, create=False) as fds:
            pfd = fds[-1]
            st = _lstat_at(pfd, name)
            if st is None:
                return False
            if stat.S_ISDIR(st.st_mode):
                raise IsADirectoryError(errno.EISDIR, "is a directory", str(root / relpath))
            try:
                os.unlink(name, dir_fd=pfd)
            except FileNotFoundError:
                return False
            _fsync_dir_at(pfd)
            for i in range(len(parts) - 1, -1, -1):
                try:
                    os.rmdir(parts[i], dir_fd=fds[i])
                except OSError:
                    break  # not empty (or not ours to remove): stop climbing
                _fsync_dir_at(fds[i])
            return True
    except FileNotFoundError:
        return False  # a parent directory is already gone


def existing(root: Path, relpaths: Iterable[str]) -> list[str]:
    """The relpaths naming something on disk (os.path.lexists under `root`). Paths are
    grouped by directory, and a directory that does not exist answers for all of them
    in one stat. An empty peer's initial sync asks about thousands of paths in
    directories it has not made yet."""
    by_dir: dict[str, list[str]] = {}
    for rel in relpaths:
        by_dir.setdefault(rel.rpartition("/")[0], []).append(rel)
    base = os.fspath(root)
    found: list[str] = []
    for reldir, rels in by_dir.items():
        if len(rels) > 1 and not os.path.exists(os.path.join(base, reldir)):
            continue  # nothing can exist below a directory that does not
        found.extend(rel for rel in rels if os.path.lexists(os.path.join(base, rel)))
    return found


def read_range(
    root: Path, relpath: str, offset: int, size: int, dirs: Dirs | None = None
) -> bytes:
    """Read up to `size` bytes at `offset` of a regular file, never through a symlink.

    Returns fewer bytes only at end of file. `dirs` shares directory fds over a batch.
    """
    if offset < 0 or size < 0:
        raise ValueError(f"bad range {offset}+{size} for {relpath!r}")
    with _dirs_for(root, dirs) as ds:
        pfd = ds.parent(relpath, create=False)
        try:
            fd = os.open(_basename(relpath), _READ_FLAGS, dir_fd=pfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathRefused(f"refused path {relpath!r}: is a symlink") from None
            raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PathRefused(f"refused path {relpath!r}: not a regular file")
        return bulkio.pread_all(fd, offset, size)
    finally:
        os.close(fd)


def read_files(relpaths: Sequence[str], dirs: Dirs, budget: int, ahead: int,
               window: int) -> list[bytes | OSError | PathRefused | None]:
    """Each regular file's content, never through a symlink, in one bulkio call: a
    window of files is opened and read ahead together, so a cold page cache costs about
    one wait for the disk per window, not one per file. The files share `budget` bytes in
    order; one that would reach what is left of it is None (to be read alone). Per file
    its bytes, None, or the exception that failed it."""
    results: list[bytes | OSError | PathRefused | None] = [None] * len(relpaths)
    items: list[bulkio.ReadItem] = []
    at: list[int] = []
    for i, relpath in enumerate(relpaths):
        try:
            items.append((dirs.parent(relpath, create=False), _basename(relpath)))
        except (OSError, PathRefused) as e:
            results[i] = e
            continue
        at.append(i)
    for i, got in zip(at, bulkio.read_files(items, budget, ahead, window), strict=True):
        if isinstance(got, bytes):
            results[i] = got
        elif got == bulkio.NOT_REGULAR:
            results[i] = PathRefused(f"refused path {relpaths[i]!r}: not a regular file")
        elif got == errno.ELOOP:
            results[i] = PathRefused(f"refused path {relpaths[i]!r}: is a symlink")
        elif got != bulkio.OVER_BUDGET:
            results[i] = OSError(got, os.strerror(got), relpaths[i])
    return results


def cleanup_temp_files(root: Path, *, copies: bool = False) -> list[Path]:
    """Remove temp files a crash left below `root`; return what was removed.

    Only names in dagsync's temp namespace (paths.is_temp_name) that are files or
    symlinks are touched; symlinked directories are not entered. With `copies` (the
    private temp dir, never the folder), directories in that namespace are staged copies
    of new directories (stage_files' whole_dirs): removed with everything in them.
    """
    removed: list[Path] = []
    stack: list[tuple[int, Path]] = [(_open_root(root), root)]
    while stack:
        dfd, dpath = stack.pop()
        try:
            with os.scandir(dfd) as it:
                entries = list(it)
            for entry in entries:
                try:
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISDIR(st.st_mode) and copies and paths.is_temp_name(entry.name):
                        shutil.rmtree(dpath / entry.name)
                        removed.append(dpath / entry.name)
                    elif stat.S_ISDIR(st.st_mode):
                        stack.append(
                            (os.open(entry.name, _DIR_FLAGS, dir_fd=dfd), dpath / entry.name)
                        )
                    elif paths.is_temp_name(entry.name):
                        os.unlink(entry.name, dir_fd=dfd)
                        removed.append(dpath / entry.name)
                except FileNotFoundError:
                    continue
                except OSError as e:
                    log.warning("cannot clean %s: %s", dpath / entry.name, e)
        except OSError as e:
            log.warning("cannot scan %s for temp files: %s", dpath, e)
        finally:
            os.close(dfd)
    return removed


def ensure_dir(path: Path, mode: int = 0o700) -> None:
    """Create `path` (and its parents) if missing; fail if it exists as a non-directory."""
    path.mkdir(mode=mode, parents=True, exist_ok=True)
