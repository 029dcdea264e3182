"""A chunk's file creates and renames in one call each.

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
from collections.abc import Callable, Sequence

# (dir_fd, temp_name, data, perm, chmod, mtime_ns)
StageItem = tuple[int, str, bytes | memoryview, int, bool, int]
# (src_fd, temp_name, dst_fd, name, link_first)
PlaceItem = tuple[int, str, int, str, bool]
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


stage_files: Callable[[Sequence[StageItem]], list[Staged]] = stage_files_py
place_files: Callable[[Sequence[PlaceItem]], list[int]] = place_files_py
FAST = False  # for logs and tests: True when the C helper runs
if not os.environ.get("DAGSYNC_NO_FASTIO"):
    try:
        from dagsync import _fastio
    except ImportError:  # not built here (no compiler at install): the loops above
        pass
    else:
        stage_files, place_files, FAST = _fastio.stage_files, _fastio.place_files, True
