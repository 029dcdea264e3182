"""A chunk's file creates and renames in one call each, and a batch's reads.

The receiver writes thousands of small files in an initial sync. Made one by one from
Python, each syscall gives the GIL away and has to win it back from the event loop,
which is busy with the next chunk meanwhile. `dagsync._fastio` (C, built at install
where a compiler is present) runs a whole chunk's loop without the GIL; where it is not
built, or `DAGSYNC_NO_FASTIO=1` is set, the Python loops below do exactly the same.

Both take already-opened directory fds: confinement (fsio.Dirs) is the caller's job.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable, Sequence

# (dir_fd, temp_name, data, perm, chmod, mtime_ns)
StageItem = tuple[int, str, bytes | memoryview, int, bool, int]
# (src_fd, temp_name, dst_fd, name, link_first)
PlaceItem = tuple[int, str, int, str, bool]
# (dir_fd, name)
ReadItem = tuple[int, str]
# per read item: its content, or the errno of its failure, or one of these
NOT_REGULAR, OVER_BUDGET = -1, -2
# per stage item: (st_mtime_ns, st_ino) of the written temp, or the errno of its failure
Staged = tuple[int, int] | int

_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def stage_files_py(items: Sequence[StageItem]) -> list[Staged]:
    """Create each temp (O_EXCL, no symlink followed) with its permission bits, or when
    `chmod` private (0o600) and chmod-ed to them once written (bits the umask or open()
    would leave out), set its mtime, stat it. A failed one is unlinked and reported by
    errno; the others go on."""
    out: list[Staged] = []
    for dir_fd, name, data, perm, chmod, mtime_ns in items:
        try:
            fd = os.open(name, _CREATE, 0o600 if chmod else perm, dir_fd=dir_fd)
        except OSError as e:
            out.append(e.errno or 0)
            continue
        try:
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                if chmod:
                    os.fchmod(fd, perm)
                os.utime(fd, ns=(mtime_ns, mtime_ns))
                st = os.fstat(fd)
            finally:
                os.close(fd)
        except BaseException as e:
            with contextlib.suppress(OSError):
                os.unlink(name, dir_fd=dir_fd)
            if not isinstance(e, OSError):
                raise
            out.append(e.errno or 0)
            continue
        out.append((st.st_mtime_ns, st.st_ino))
    return out


def place_files_py(items: Sequence[PlaceItem]) -> list[int]:
    """Put each temp in place: hard-link it and drop the temp name when `link_first`
    (a new file from the private temp dir: the watched folder sees one plain create),
    else, or if the link fails (the name exists), rename it over. 0 or the errno."""
    out: list[int] = []
    for src_fd, tmp, dst_fd, name, link_first in items:
        if link_first:
            try:
                os.link(tmp, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd, follow_symlinks=False)
            except OSError:
                pass
            else:
                with contextlib.suppress(OSError):
                    os.unlink(tmp, dir_fd=src_fd)
                out.append(0)
                continue
        try:
            os.replace(tmp, name, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        except OSError as e:
            out.append(e.errno or 0)
        else:
            out.append(0)
    return out


def read_files_py(items: Sequence[ReadItem], budget: int, ahead: int,
                  window: int) -> list[bytes | int]:
    """A window of files at a time: each opened (no symlink followed, O_NONBLOCK) and
    read ahead (its first min(ahead, budget left) bytes: the kernel starts reading, we
    do not wait), then each read whole, a regular file only, and closed. The files share
    `budget` bytes in order: one that reaches what is left of it is OVER_BUDGET and
    takes nothing from it. Per item its bytes, or the errno of its failure, NOT_REGULAR
    or OVER_BUDGET."""
    if budget < 1 or ahead < 0 or window < 1:
        raise ValueError("read_files: budget and window must be positive")
    out: list[bytes | int] = []
    left = budget
    for start in range(0, len(items), window):
        fds: list[int | None] = []
        for dir_fd, name in items[start : start + window]:
            try:
                fd = os.open(name, _READ, dir_fd=dir_fd)
            except OSError as e:
                out.append(e.errno or 0)
                fds.append(None)
                continue
            if ahead:  # a hint: its failure is no error (length 0 would mean "all")
                with contextlib.suppress(OSError):
                    os.posix_fadvise(fd, 0, min(ahead, left), os.POSIX_FADV_WILLNEED)
            out.append(0)  # replaced below
            fds.append(fd)
        for at, opened in enumerate(fds, start):
            if opened is None:
                continue
            try:
                got = _read_whole(opened, left)
            except OSError as e:
                got = e.errno or 0
            finally:
                os.close(opened)
            if isinstance(got, bytes):
                if len(got) >= left:
                    got = OVER_BUDGET
                else:
                    left -= len(got)
            out[at] = got
    return out


def _read_whole(fd: int, limit: int) -> bytes | int:
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        return NOT_REGULAR
    return pread_all(fd, 0, limit)


def pread_all(fd: int, offset: int, size: int) -> bytes:
    """Up to `size` bytes at `offset` of the file open on `fd`, in reads of at most
    1 MiB; fewer only at end of file."""
    chunks: list[bytes] = []
    while size > 0:
        chunk = os.pread(fd, min(size, 1 << 20), offset)
        if not chunk:
            break
        chunks.append(chunk)
        offset += len(chunk)
        size -= len(chunk)
    return b"".join(chunks)


# Threads the C helper writes a chunk's files with (each a run of whole directories).
# The kernel's work of creating and filling the files is most of a receiver's staging,
# and staging is the longest step of an initial sync when fresh memory is slow to touch
# (as in a VM): two threads took 3-8 % off the median of an initial sync of 20,020 files
# (docs/initial-sync.md). One where the process may use one CPU only.
STAGE_THREADS = min(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                    else os.cpu_count() or 1)

_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

stage_files: Callable[[Sequence[StageItem]], list[Staged]] = stage_files_py
place_files: Callable[[Sequence[PlaceItem]], list[int]] = place_files_py
read_files: Callable[[Sequence[ReadItem], int, int, int], list[bytes | int]] = read_files_py
FAST = False  # for logs and tests: True when the C helper runs
if not os.environ.get("DAGSYNC_NO_FASTIO"):
    try:
        from dagsync import _fastio
    except ImportError:  # not built here (no compiler at install): the loops above
        pass
    else:
        place_files, FAST = _fastio.place_files, True
        read_files = _fastio.read_files

        def stage_files(items: Sequence[StageItem]) -> list[Staged]:
            """The C loop, over STAGE_THREADS threads."""
            return _fastio.stage_files(items, STAGE_THREADS)
