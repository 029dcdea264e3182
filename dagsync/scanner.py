"""Walk a folder and report what changed against what the index knows.

No asyncio, no database: the scanner asks for what it knows through `KnownStats`
(Syncthing's CurrentFiler). A file whose (size, mtime_ns, inode) equal the known stat is
not read again (SPEC guarantee 6); anything else is hashed (xxh3-128). One bad file is a
`ScanProblem` in the result, never an exception that aborts the scan.

Contract for callers:
- `present` holds every non-ignored, validly named non-directory entry that was listed,
  including those with a problem (unreadable, too large, unstable, escaping symlink,
  special file, vanished after listing): a problem is no reason to delete a path.
- Known paths missing from `present` are deleted, EXCEPT paths inside `unreadable_dirs`
  (directories that could not be listed completely; "" is the whole folder): their
  contents are unknown and must not be tombstoned.
- Symlinks are never followed; a symlinked directory is reported as a symlink.

Racy files: file systems stamp mtimes with a coarse clock, so a file rewritten with the
same size within one clock tick after it was hashed would keep its (size, mtime, inode)
and never be hashed again (git's "racy clean" problem). A file whose mtime is that close
to the moment its read started is hashed again once the tick has surely passed.
"""

from __future__ import annotations

import errno
import os
import stat as st_
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import xxhash

from dagsync.errors import PathRefused
from dagsync.ignore import IgnoreMatcher
from dagsync.index import LocalStat
from dagsync.model import Kind
from dagsync.paths import MAX_NAME_BYTES, MAX_PATH_BYTES, check_relpath, is_temp_name
from dagsync.paths import symlink_target_ok as _symlink_target_ok

CHUNK = 1 << 20
# How close to the start of its read a file's mtime may be before the hash is redone.
RACY_WINDOW_NS = 12_000_000  # > one tick of the coarse kernel clock (<= 10 ms)
RACY_WINDOW_COARSE_NS = 1_025_000_000  # mtime on a whole second: 1 s timestamps
RACY_FUTURE_NS = 1_000_000_000  # mtimes further in the future cannot be waited out

_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class KnownStats(Protocol):
    def known_stat(self, path: str) -> LocalStat | None:
        """How `path` looked when recorded; None if unknown or recorded as deleted."""
        ...


class UnstableFile(Exception):
    """The file changed while it was being hashed."""


@dataclass(frozen=True, slots=True)
class Observed:
    """A file or symlink on disk that is new or whose stat differs from the known one.
    For symlinks `target` is the link text and `hash` the hash of its UTF-8 bytes."""

    path: str
    kind: Kind
    size: int
    mtime_ns: int
    mode: int  # st_mode & 0o7777
    inode: int
    hash: str
    target: str = ""

    def stat(self) -> LocalStat:
        return LocalStat(self.size, self.mtime_ns, self.inode)


@dataclass(frozen=True, slots=True)
class ScanProblem:
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class ScanResult:
    changed: list[Observed]
    present: set[str]
    problems: list[ScanProblem]
    temp_files: list[str]
    duration_s: float
    # Directories that could not be listed (completely): callers must not tombstone
    # known paths below them. "" stands for the whole folder.
    unreadable_dirs: list[str] = field(default_factory=list)


def _hash_fd(path: str) -> tuple[str, os.stat_result]:
    """Hash the regular file at `path` (never following a symlink); its fstat after."""
    fd = os.open(path, _OPEN_FLAGS)
    try:
        before = os.fstat(fd)
        if not st_.S_ISREG(before.st_mode):
            raise UnstableFile(f"{path}: no longer a regular file")
        h = xxhash.xxh3_128()
        total = 0
        expected = before.st_size
        while True:
            want = expected - total
            chunk = os.read(fd, CHUNK if want >= CHUNK or want < 0 else want + 1)
            if not chunk:
                break
            h.update(chunk)
            total += len(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    if (
        after.st_size != before.st_size
        or after.st_mtime_ns != before.st_mtime_ns
        or total != after.st_size
    ):
        raise UnstableFile(f"{path}: changed while being hashed")
    return h.hexdigest(), after


def hash_file(path: Path) -> tuple[str, LocalStat]:
    """(hex xxh3-128 of the content, the stat that content belongs to). Raises
    UnstableFile if the file changed while being read, OSError if it cannot be read."""
    digest, st = _hash_fd(os.fspath(path))
    return digest, LocalStat(st.st_size, st.st_mtime_ns, st.st_ino)


def _racy_deadline(mtime_ns: int, read_start_ns: int) -> int | None:
    """When a hash read from `read_start_ns` must be redone, the time to redo it after."""
    window = RACY_WINDOW_COARSE_NS if mtime_ns % 1_000_000_000 == 0 else RACY_WINDOW_NS
    if mtime_ns + window <= read_start_ns or mtime_ns > read_start_ns + RACY_FUTURE_NS:
        return None
    return mtime_ns + window


def _name_problem(rel: str, name: str) -> str | None:
    """Why peers would refuse this name, or None. Fast for plain ASCII names."""
    if (
        name.isascii()
        and name.isprintable()
        and "\\" not in name
        and len(name) <= MAX_NAME_BYTES
        and len(rel) <= MAX_PATH_BYTES
    ):
        return None
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "file name is not valid UTF-8"
    try:
        check_relpath(rel)
    except PathRefused as exc:  # "refused path '...': reason"
        return "unusable file name: " + str(exc).rpartition(": ")[2]
    return None


class _Scan:
    """The state of one scan; `walk` and `visit` fill it in."""

    def __init__(
        self, root: Path, known: KnownStats, ignore: IgnoreMatcher, max_file_size: int
    ) -> None:
        self.root = os.fspath(root)
        self.known = known
        self.ignore = ignore
        self.max_file_size = max_file_size
        self.changed: list[Observed] = []
        self.present: set[str] = set()
        self.problems: list[ScanProblem] = []
        self.temp_files: list[str] = []
        self.unreadable: list[str] = []
        self.racy: list[tuple[str, str, int]] = []  # (relpath, abspath, redo after ns)
        self.started = time.perf_counter()

    def problem(self, rel: str, reason: str) -> None:
        self.problems.append(ScanProblem(rel, reason))

    def unreadable_dir(self, rel: str, exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError):
            reason = "directory vanished during the scan"
        elif isinstance(exc, PermissionError):
            reason = "directory unreadable: permission denied"
        else:
            reason = f"directory unreadable: {exc.strerror or exc}"
        self.problem(rel, reason)
        self.unreadable.append(rel)

    # -- walking -------------------------------------------------------------------------

    def walk(self, top_abs: str, top_rel: str) -> None:
        """Every entry below the directory `top_rel` ("" for the root), not following
        symlinks, not descending into ignored directories."""
        ignore = self.ignore
        present_add = self.present.add
        known_stat = self.known.known_stat
        stack = [(top_abs, top_rel, ignore.clean_dir(top_rel))]
        while stack:
            d_abs, d_rel, clean = stack.pop()
            prefix = d_rel + "/" if d_rel else ""
            try:
                with os.scandir(d_abs) as it:
                    for entry in it:
                        name = entry.name
                        rel = prefix + name
                        bad_name = _name_problem(rel, name)
                        if bad_name is not None:
                            self.problem(rel, bad_name)
                            continue
                        try:
                            is_dir = entry.is_dir(follow_symlinks=False)
                        except OSError:
                            is_dir = False
                        if is_dir:
                            if is_temp_name(name) or ignore.ignored_child(rel, name, True, clean):
                                continue
                            stack.append((entry.path, rel, clean and ignore.clean_dir(rel)))
                            continue
                        if is_temp_name(name):
                            self.temp_files.append(rel)
                            continue
                        if ignore.ignored_child(rel, name, False, clean):
                            continue
                        present_add(rel)
                        try:
                            st = entry.stat(follow_symlinks=False)
                        except OSError as exc:
                            self.stat_failed(rel, exc)
                            continue
                        mode = st.st_mode
                        if st_.S_ISREG(mode) or st_.S_ISLNK(mode):
                            k = known_stat(rel)
                            if (
                                k is not None
                                and k.inode == st.st_ino
                                and k.mtime_ns == st.st_mtime_ns
                                and k.size == st.st_size
                                and k.mode in (-1, mode & 0o7777)
                            ):
                                continue  # unchanged: not hashed again
                        self.visit(rel, entry.path, st)
            except OSError as exc:
                self.unreadable_dir(d_rel, exc)

    def stat_failed(self, rel: str, exc: OSError) -> None:
        if isinstance(exc, FileNotFoundError):
            self.problem(rel, "vanished during the scan")
        elif isinstance(exc, PermissionError):
            self.problem(rel, "unreadable: permission denied")
        else:
            self.problem(rel, f"unreadable: {exc.strerror or exc}")

    def visit(self, rel: str, abs_path: str, st: os.stat_result) -> None:
        """A changed or unknown non-directory entry: hash it, or say why not."""
        mode = st.st_mode
        if st_.S_ISLNK(mode):
            self.visit_symlink(rel, abs_path, st)
        elif not st_.S_ISREG(mode):
            kind = (
                "fifo"
                if st_.S_ISFIFO(mode)
                else "socket"
                if st_.S_ISSOCK(mode)
                else "device"
                if st_.S_ISCHR(mode) or st_.S_ISBLK(mode)
                else "unknown type"
            )
            self.problem(rel, f"special file ({kind}): not synced")
        elif st.st_size > self.max_file_size:
            self.problem(
                rel, f"too large: {st.st_size} bytes, max_file_size is {self.max_file_size}"
            )
        else:
            self.hash_regular(rel, abs_path, final=False)

    def hash_regular(self, rel: str, abs_path: str, final: bool) -> None:
        read_start = time.time_ns()
        try:
            digest, st = _hash_fd(abs_path)
        except UnstableFile:
            self.problem(rel, "changed while being hashed (still being written?)")
            return
        except OSError as exc:
            if exc.errno == errno.ELOOP:  # replaced by a symlink since it was listed
                self.problem(rel, "changed during the scan")
            else:
                self.stat_failed(rel, exc)
            return
        if st.st_size > self.max_file_size:
            self.problem(
                rel, f"too large: {st.st_size} bytes, max_file_size is {self.max_file_size}"
            )
            return
        deadline = _racy_deadline(st.st_mtime_ns, read_start)
        if deadline is not None:
            if final:
                self.problem(rel, "changed while being hashed (still being written?)")
            else:
                self.racy.append((rel, abs_path, deadline))
            return
        k = self.known.known_stat(rel)
        if (
            k is not None
            and (k.size, k.mtime_ns, k.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)
            and k.mode in (-1, st.st_mode & 0o7777)
        ):
            return  # back to what is known (e.g. changed and restored during the scan)
        self.changed.append(
            Observed(
                rel, Kind.FILE, st.st_size, st.st_mtime_ns, st.st_mode & 0o7777, st.st_ino, digest
            )
        )

    def visit_symlink(self, rel: str, abs_path: str, st: os.stat_result) -> None:
        try:
            target = os.readlink(abs_path)
        except FileNotFoundError:
            self.problem(rel, "vanished during the scan")
            return
        except OSError as exc:
            if exc.errno == errno.EINVAL:  # no longer a symlink
                self.problem(rel, "changed during the scan")
            else:
                self.stat_failed(rel, exc)
            return
        try:
            data = target.encode("utf-8")
        except UnicodeEncodeError:
            self.problem(rel, "symlink target is not valid UTF-8")
            return
        if not _symlink_target_ok(rel, target):
            self.problem(rel, f"symlink escapes folder (target {target!r})")
            return
        self.changed.append(
            Observed(
                rel,
                Kind.SYMLINK,
                st.st_size,
                st.st_mtime_ns,
                st.st_mode & 0o7777,
                st.st_ino,
                xxhash.xxh3_128_hexdigest(data),
                target,
            )
        )

    def settle_racy(self) -> None:
        """Hash again, once their clock tick has passed, files hashed too soon after
        their last write."""
        if not self.racy:
            return
        wait_ns = max(deadline for _, _, deadline in self.racy) - time.time_ns()
        if wait_ns > 0:
            time.sleep(wait_ns / 1e9)
        racy, self.racy = self.racy, []
        for rel, abs_path, _ in racy:
            try:
                st = os.lstat(abs_path)
            except OSError as exc:
                self.stat_failed(rel, exc)
                continue
            if st_.S_ISREG(st.st_mode) and st.st_size <= self.max_file_size:
                self.hash_regular(rel, abs_path, final=True)
            else:
                self.visit(rel, abs_path, st)

    def result(self) -> ScanResult:
        self.settle_racy()
        self.changed.sort(key=lambda o: o.path)
        self.problems.sort(key=lambda p: p.path)
        self.temp_files.sort()
        self.unreadable.sort()
        return ScanResult(
            changed=self.changed,
            present=self.present,
            problems=self.problems,
            temp_files=self.temp_files,
            duration_s=time.perf_counter() - self.started,
            unreadable_dirs=self.unreadable,
        )

    # -- single paths --------------------------------------------------------------------

    def root_ok(self) -> bool:
        """The folder root is a directory; if not, the whole folder is unreadable (an
        unmounted or vanished folder must never look like one whose files were deleted)."""
        try:
            st = os.stat(self.root)
            if not st_.S_ISDIR(st.st_mode):
                raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        except OSError as exc:
            self.problem("", f"folder {self.root} unreadable: {exc.strerror or exc}")
            self.unreadable.append("")
            return False
        return True

    def one_path(self, rel: str) -> None:
        """scan_paths for one relpath: absent paths stay absent, directories are walked."""
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts) or "\0" in rel:
            self.problem(rel, "not a plain relative path")
            return
        abs_path = self.root
        for i, name in enumerate(parts):
            sub = "/".join(parts[: i + 1])
            reason = _name_problem(sub, name)
            if reason is not None:
                self.problem(sub, reason)
                return
            abs_path = os.path.join(abs_path, name)
            try:
                st = os.lstat(abs_path)
            except FileNotFoundError:
                return  # absent (or a parent is): simply not present
            except NotADirectoryError:
                return  # a parent is a file: the path cannot exist
            except OSError as exc:  # a parent cannot be searched
                self.unreadable_dir("/".join(parts[:i]), exc)
                return
            last = i == len(parts) - 1
            is_dir = st_.S_ISDIR(st.st_mode)
            if not last and not is_dir:
                return  # through a symlink or a file: not a path of this folder
            if is_temp_name(name):
                if last and not is_dir:
                    self.temp_files.append(rel)
                return
            if self.ignore.ignored(sub, is_dir):
                return
            if last:
                if is_dir:
                    self.walk(abs_path, rel)
                    return
                self.present.add(rel)
                if st_.S_ISREG(st.st_mode) or st_.S_ISLNK(st.st_mode):
                    k = self.known.known_stat(rel)
                    if (
                        k is not None
                        and (k.size, k.mtime_ns, k.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)
                        and k.mode in (-1, st.st_mode & 0o7777)
                    ):
                        return
                self.visit(rel, abs_path, st)


def scan_folder(
    root: Path, known: KnownStats, ignore: IgnoreMatcher, max_file_size: int
) -> ScanResult:
    """Walk the whole folder at `root` and report what differs from `known`."""
    scan = _Scan(root, known, ignore, max_file_size)
    if scan.root_ok():
        scan.walk(scan.root, "")
    return scan.result()


def scan_paths(
    root: Path,
    paths: Iterable[str],
    known: KnownStats,
    ignore: IgnoreMatcher,
    max_file_size: int,
) -> ScanResult:
    """The same checks for just these folder-relative paths; a directory is walked, a
    path that does not exist is simply absent from `present`. "" or "." means the root."""
    scan = _Scan(root, known, ignore, max_file_size)
    if not scan.root_ok():
        return scan.result()
    wanted = {p.strip("/") for p in paths}
    if "" in wanted or "." in wanted:
        scan.walk(scan.root, "")
        return scan.result()
    for rel in sorted(wanted):
        parts = rel.split("/")
        if any("/".join(parts[:i]) in wanted for i in range(1, len(parts))):
            continue  # below another path given: walked with it
        scan.one_path(rel)
    return scan.result()
