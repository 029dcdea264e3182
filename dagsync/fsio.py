"""The file system edge of one synced folder: confined, atomic writes, deletes and reads.

Every call takes the folder root and a relpath already accepted by paths.check_relpath.
Parent directories are walked one component at a time with O_DIRECTORY|O_NOFOLLOW
directory fds and every act goes through `dir_fd=`, so a symlinked (or swapped)
directory inside the folder can never redirect a write, delete or read outside the root
(SPEC guarantee 8). The root itself may be a symlink: that is the operator's choice.

Files appear only whole (SPEC guarantee 3): content goes to a temp name Airflow ignores
in the same directory, is made durable, and only then is renamed into place.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import secrets
import stat
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dagsync import paths
from dagsync.errors import PathRefused

log = logging.getLogger(__name__)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


@dataclass(frozen=True)
class StagedWrite:
    """A file written under its temp name, waiting for commit() to make it visible."""

    root: Path
    relpath: str
    temp_path: Path
    final_path: Path
    mode: int
    mtime_ns: int
    in_temp_dir: bool = False  # written in a private temp dir, not beside the final path


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


def _walk(root: Path, relpath: str, *, create: bool, keep: bool) -> list[int]:
    """Open [root, dir1, ..., parent] of `relpath`, or only [parent] unless `keep`.

    Raises PathRefused if a parent is a symlink or not a directory; FileNotFoundError if
    a parent is missing and `create` is false. The caller closes what it gets.
    """
    parts = relpath.split("/")[:-1]
    fds = [_open_root(root)]
    try:
        for i, name in enumerate(parts):
            try:
                fd = _open_child_dir(fds[-1], name, create)
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    shown = "/".join(parts[: i + 1])
                    raise PathRefused(
                        f"refused path {relpath!r}: parent {shown!r} is a symlink or "
                        f"not a directory in {str(root)!r}"
                    ) from None
                raise
            if not keep:
                os.close(fds.pop())
            fds.append(fd)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return fds


@contextlib.contextmanager
def _parent_chain(root: Path, relpath: str, *, create: bool) -> Iterator[list[int]]:
    """Yield the fds [root, dir1, ..., parent] of `relpath`'s directories, then close them."""
    fds = _walk(root, relpath, create=create, keep=True)
    try:
        yield fds
    finally:
        for fd in reversed(fds):
            os.close(fd)


@contextlib.contextmanager
def _parent(root: Path, relpath: str, *, create: bool) -> Iterator[int]:
    """Yield an fd of `relpath`'s parent directory, reached without following symlinks."""
    (fd,) = _walk(root, relpath, create=create, keep=False)
    try:
        yield fd
    finally:
        os.close(fd)


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


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def _fsync_dir_at(dir_fd: int) -> None:
    """fsync a directory so a rename or unlink in it survives a power cut."""
    try:
        os.fsync(dir_fd)
    except OSError as e:  # some file systems cannot fsync directories; nothing to gain
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


# --- durability ----------------------------------------------------------------------

_libc: ctypes.CDLL | None = None


def _syncfs(fd: int) -> bool:
    """syncfs(2) the file system holding `fd`; False if unavailable or it failed."""
    global _libc
    try:
        if _libc is None:
            _libc = ctypes.CDLL(None, use_errno=True)
        fn = _libc.syncfs
    except (OSError, AttributeError):
        return False
    if fn(ctypes.c_int(fd)) == 0:
        return True
    log.debug("syncfs failed (errno %d); falling back to fsync", ctypes.get_errno())
    return False


def _fsync_at(dir_fd: int, name: str) -> None:
    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- writes --------------------------------------------------------------------------


def stage_file(
    root: Path, relpath: str, data: bytes, mode: int, mtime_ns: int,
    temp_dir: Path | None = None,
) -> StagedWrite:
    """Write `data` to a temp file with its final mode and mtime.

    The temp file goes in `temp_dir` when given (a private directory on the same file
    system, so the synced folder sees one rename and no temp-file churn), else beside
    `relpath`. Missing parent directories are created (0o755, confined). Nothing is
    fsynced here: commit() makes a whole batch durable at once. On any failure the temp
    is removed.
    """
    name = _basename(relpath)
    tmp = paths.temp_name(name, secrets.token_hex(8))
    with _parent(root, relpath, create=True) as folder_pfd:
        st = _lstat_at(folder_pfd, name)
        if st is not None and stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(root / relpath))
        pfd = os.open(temp_dir, _DIR_FLAGS) if temp_dir is not None else folder_pfd
        try:
            fd = os.open(
                tmp,
                os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
                dir_fd=pfd,
            )
        except BaseException:
            if pfd != folder_pfd:
                os.close(pfd)
            raise
        try:
            try:
                _write_all(fd, data)
                os.fchmod(fd, mode & 0o7777)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
            finally:
                os.close(fd)
        except BaseException:
            _unlink_quietly(pfd, tmp)
            raise
        finally:
            if pfd != folder_pfd:
                os.close(pfd)
    parent = temp_dir if temp_dir is not None else (root / relpath).parent
    return StagedWrite(root, relpath, parent / tmp, root / relpath, mode, mtime_ns,
                       in_temp_dir=temp_dir is not None)


def commit(staged: Sequence[StagedWrite]) -> None:
    """Make staged files durable, then visible, then make the renames durable.

    One syncfs(2) per file system covers every temp file (fsync of each file where
    syncfs is unavailable); then each temp is renamed onto its final path (replacing a
    file or symlink there, never following it); then each touched directory is fsynced
    once. Parents are re-walked here, so a parent that became a symlink since staging is
    refused. Files that fail lose their temp and are reported together in CommitError;
    the rest of the batch is committed. At most one directory fd per file system is
    open at a time (plus one), whatever the size of the batch.
    """
    failed: dict[str, Exception] = {}
    groups: dict[tuple[Path, str], list[StagedWrite]] = {}
    for s in staged:
        groups.setdefault((s.root, s.relpath.rpartition("/")[0]), []).append(s)

    def fail(group: list[StagedWrite], e: Exception) -> None:
        for s in group:
            failed[s.relpath] = e
        abort(group)

    # 1. durability: one syncfs per file system, else fsync file by file
    device_fd: dict[int, int] = {}
    ready: list[list[StagedWrite]] = []
    try:
        for group in groups.values():
            try:
                fd = _walk(group[0].root, group[0].relpath, create=False, keep=False)[0]
            except (OSError, PathRefused) as e:
                fail(group, e)
                continue
            dev = os.fstat(fd).st_dev
            if dev in device_fd:
                os.close(fd)
            else:
                device_fd[dev] = fd
            ready.append(group)
        synced = {dev for dev, fd in device_fd.items() if _syncfs(fd)}
        _rename_all(ready, synced, failed, fail)
        # 3. the renames themselves: one more syncfs instead of an fsync per directory
        for dev in synced:
            _syncfs(device_fd[dev])
    finally:
        for fd in device_fd.values():
            os.close(fd)
    if failed:
        raise CommitError(failed)


def _rename_all(
    ready: list[list[StagedWrite]],
    synced: set[int],
    failed: dict[str, Exception],
    fail: Callable[[list[StagedWrite], Exception], None],
) -> None:
    """Step 2 of commit: visibility, directory by directory. Directories on a file system
    without syncfs are fsynced once each here."""
    for group in ready:
        try:
            with _parent(group[0].root, group[0].relpath, create=False) as pfd:
                need_fsync = os.fstat(pfd).st_dev not in synced
                renamed = False
                for s in group:
                    src_fd = os.open(s.temp_path.parent, _DIR_FLAGS) if s.in_temp_dir else pfd
                    try:
                        if need_fsync:
                            _fsync_at(src_fd, s.temp_path.name)
                        _place(src_fd, s.temp_path.name, pfd, _basename(s.relpath),
                               s.in_temp_dir)
                        renamed = True
                    except OSError as e:
                        failed[s.relpath] = e
                        _unlink_quietly(src_fd, s.temp_path.name)
                    finally:
                        if src_fd != pfd:
                            os.close(src_fd)
                if renamed and need_fsync:
                    _fsync_dir_at(pfd)
        except (OSError, PathRefused) as e:
            fail([s for s in group if s.relpath not in failed], e)


def _place(src_fd: int, tmp: str, dst_fd: int, name: str, from_temp_dir: bool) -> None:
    """Put a staged file in place atomically. A new file from the private temp dir is
    hard-linked in and the temp unlinked: the watched folder then sees one plain create
    (a rename in from an unwatched directory is a half move event that inotify watchers
    must hold and match). An existing file is replaced by rename."""
    if from_temp_dir:
        try:
            os.link(tmp, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
        except OSError:
            pass  # it exists, or no hard links here: rename instead
        else:
            _unlink_quietly(src_fd, tmp)
            return
    os.replace(tmp, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)


def _abort_one(s: StagedWrite) -> None:
    if s.in_temp_dir:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(s.temp_path)
        return
    try:
        with _parent(s.root, s.relpath, create=False) as pfd:
            _unlink_quietly(pfd, s.temp_path.name)
    except (FileNotFoundError, PathRefused):
        pass  # the directory is gone or no longer ours: nothing of ours to remove there


def abort(staged: Sequence[StagedWrite]) -> None:
    """Remove the temp files of writes that will not be committed; missing ones are fine."""
    for s in staged:
        _abort_one(s)


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
    tmp = paths.temp_name(_basename(relpath), secrets.token_hex(8))
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


def read_range(root: Path, relpath: str, offset: int, size: int) -> bytes:
    """Read up to `size` bytes at `offset` of a regular file, never through a symlink.

    Returns fewer bytes only at end of file.
    """
    if offset < 0 or size < 0:
        raise ValueError(f"bad range {offset}+{size} for {relpath!r}")
    with _parent(root, relpath, create=False) as pfd:
        try:
            fd = os.open(_basename(relpath), _READ_FLAGS, dir_fd=pfd)
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise PathRefused(f"refused path {relpath!r}: is a symlink") from None
            raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise PathRefused(f"refused path {relpath!r}: not a regular file")
        chunks: list[bytes] = []
        while size > 0:
            chunk = os.pread(fd, min(size, 1 << 20), offset)
            if not chunk:
                break
            chunks.append(chunk)
            offset += len(chunk)
            size -= len(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def cleanup_temp_files(root: Path) -> list[Path]:
    """Remove temp files a crash left below `root`; return what was removed.

    Only names in dagsync's temp namespace (paths.is_temp_name) that are files or
    symlinks are touched; symlinked directories are not entered.
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
                    if stat.S_ISDIR(st.st_mode):
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
