"""The conflict archive: losing versions kept under `<state_dir>/conflicts/` (SPEC §2, §7).

A copy lives at `conflicts/<folder>/<path>.<UTC time>.<node>` — never inside a synced
folder, where Airflow would parse it as a second DAG. `conflicts/archive.jsonl` is the
append-only catalogue: one JSON object per line, each line fsynced, so a crash can tear
at most the last line, which is then ignored. Copies are written to a temp name,
fsynced and linked into place, so a listed copy is always whole.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import secrets
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from dagsync import paths
from dagsync.errors import PathRefused

log = logging.getLogger(__name__)

CATALOGUE = "archive.jsonl"
_LOCK = ".lock"
_NODE_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")
_Lines = list[dict[str, Any]]  # alias: ConflictArchive.list shadows the builtin in its body


@dataclass(frozen=True)
class ConflictEntry:
    """One archived losing version. `file` is the absolute path of the stored copy."""

    id: int
    folder: str
    path: str
    archived_at: str  # UTC ISO-8601 with milliseconds and 'Z'
    loser_origin: str
    winner_origin: str
    file: Path
    size: int
    seen: bool
    mode: int = 0o644  # mode bits the losing file had, for restoring it


class ConflictArchive:
    """The archive of one node. Safe to share between threads and processes (file lock)."""

    def __init__(self, state_dir: Path) -> None:
        self.dir = Path(state_dir) / "conflicts"
        self._catalogue = self.dir / CATALOGUE
        self._mutex = threading.Lock()

    # --- writing ---------------------------------------------------------------------

    def store(
        self,
        folder: str,
        path: str,
        data: bytes,
        *,
        loser_origin: str,
        winner_origin: str,
        mode: int = 0o644,
        when: datetime | None = None,
    ) -> ConflictEntry:
        """Keep `data`, the losing content of `path` in `folder`, durably; return its entry.

        The copy itself is stored 0o600 (it is never executed or parsed from here);
        `mode` is recorded for restoring. Raises PathRefused for a folder id or path
        that could escape the archive directory.
        """
        _check_folder(folder)
        paths.check_relpath(path)
        when = _utc(when or datetime.now(UTC))
        with self._locked():
            _, _, next_id = self._load()
            rel_dir, base = f"{folder}/{path}".rsplit("/", 1)
            directory = self._make_dirs(rel_dir)
            name = self._place_copy(directory, base, _stamp(when), _node_label(loser_origin), data)
            record = {
                "id": next_id,
                "folder": folder,
                "path": path,
                "archived_at": _iso(when),
                "loser": loser_origin,
                "winner": winner_origin,
                "file": f"{rel_dir}/{name}",
                "size": len(data),
                "mode": mode & 0o7777,
            }
            self._append([record])
        return self._entry(record, seen=False)

    def mark_seen(self, entry_ids: Iterable[int]) -> None:
        """Record that an operator has seen these conflicts (`status` stops warning)."""
        ids = sorted(set(entry_ids))
        if not ids:
            return
        with self._locked():
            entries, seen, _ = self._load()
            for entry_id in ids:
                if entry_id not in entries:
                    raise KeyError(entry_id)
            self._append([{"seen": i} for i in ids if i not in seen])

    def prune(
        self,
        *,
        keep: int | None = None,
        max_age_days: float | None = None,
        now: datetime | None = None,
    ) -> list[ConflictEntry]:
        """Delete copies beyond the newest `keep` or older than `max_age_days`; return them.

        The catalogue is rewritten atomically first, then the copies are deleted: a crash
        in between leaves an unlisted file, never a listed entry without its copy.
        Temp files a crash left in the archive are removed as well.
        """
        if keep is not None and keep < 0:
            raise ValueError("keep must be >= 0")
        now = _utc(now or datetime.now(UTC))
        with self._locked():
            records, seen, next_id = self._load()
            ordered = [records[i] for i in sorted(records)]
            doomed: set[int] = set()
            if keep is not None:
                doomed.update(r["id"] for r in ordered[: max(0, len(ordered) - keep)])
            if max_age_days is not None:
                cutoff = now - timedelta(days=max_age_days)
                doomed.update(r["id"] for r in ordered if _parse_iso(r["archived_at"]) < cutoff)
            if not doomed and not self._dir_has_temps():
                return []
            kept = [dict(r, seen=r["id"] in seen) for r in ordered if r["id"] not in doomed]
            self._rewrite([{"next_id": next_id}, *kept])
            removed = [self._entry(r, seen=r["id"] in seen) for r in ordered if r["id"] in doomed]
            for entry in removed:
                with contextlib.suppress(FileNotFoundError):
                    entry.file.unlink()
                self._remove_empty_dirs(entry.file.parent)
            self._remove_temps()
        return removed

    # --- reading ---------------------------------------------------------------------

    def list(self) -> list[ConflictEntry]:
        """Every archived conflict, oldest first."""
        with self._mutex:
            records, seen, _ = self._load()
        return [self._entry(records[i], seen=i in seen) for i in sorted(records)]

    def get(self, entry_id: int) -> ConflictEntry:
        """The entry with this id; KeyError if there is none."""
        with self._mutex:
            records, seen, _ = self._load()
        return self._entry(records[entry_id], seen=entry_id in seen)

    def read(self, entry_id: int) -> bytes:
        """The archived content of one entry."""
        return self.get(entry_id).file.read_bytes()

    # --- catalogue -------------------------------------------------------------------

    def _load(self) -> tuple[dict[int, dict[str, Any]], set[int], int]:
        """Parse the catalogue: records by id, seen ids, next id. Bad lines are skipped."""
        records: dict[int, dict[str, Any]] = {}
        seen: set[int] = set()
        next_id = 1
        try:
            text = self._catalogue.read_bytes()
        except FileNotFoundError:
            return records, seen, next_id
        lines = text.split(b"\n")
        for lineno, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                if "next_id" in obj:
                    next_id = max(next_id, _int(obj["next_id"]))
                elif "seen" in obj and "id" not in obj:
                    seen.add(_int(obj["seen"]))
                else:
                    record = _valid_record(obj)
                    records[record["id"]] = record
                    next_id = max(next_id, record["id"] + 1)
                    if obj.get("seen") is True:
                        seen.add(record["id"])
            except (ValueError, TypeError, KeyError, PathRefused) as e:
                if lineno < len(lines):  # a torn last line is expected after a crash
                    log.warning("%s:%d: skipping unreadable line: %s", self._catalogue, lineno, e)
        return records, seen, next_id

    def _append(self, objs: _Lines) -> None:
        if not objs:
            return
        payload = b"".join(json.dumps(o, sort_keys=True).encode() + b"\n" for o in objs)
        fd = os.open(self._catalogue, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            end = os.lseek(fd, 0, os.SEEK_END)
            if end and os.pread(fd, 1, end - 1) != b"\n":
                # a crash interrupted the last line: end it if it is whole, else drop it,
                # so the new line starts clean and the catalogue reads as _load saw it
                head = os.pread(fd, end, 0)
                start = head.rfind(b"\n") + 1
                try:
                    json.loads(head[start:])
                    payload = b"\n" + payload
                except ValueError:
                    os.ftruncate(fd, start)
            os.lseek(fd, 0, os.SEEK_END)
            _write_all(fd, payload)
            os.fsync(fd)
        finally:
            os.close(fd)
        _fsync_dir(self.dir)

    def _rewrite(self, objs: _Lines) -> None:
        tmp = self.dir / paths.temp_name(CATALOGUE, secrets.token_hex(8))
        payload = b"".join(json.dumps(o, sort_keys=True).encode() + b"\n" for o in objs)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, payload)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self._catalogue)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            raise
        _fsync_dir(self.dir)

    def _entry(self, record: dict[str, Any], *, seen: bool) -> ConflictEntry:
        return ConflictEntry(
            id=record["id"],
            folder=record["folder"],
            path=record["path"],
            archived_at=record["archived_at"],
            loser_origin=record["loser"],
            winner_origin=record["winner"],
            file=self.dir / record["file"],
            size=record["size"],
            seen=seen,
            mode=record["mode"],
        )

    # --- copies on disk --------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Serialise writers: threads by a mutex, processes by flock on conflicts/.lock."""
        with self._mutex:
            self._make_dirs("")
            fd = os.open(self.dir / _LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def _make_dirs(self, rel_dir: str) -> Path:
        """Create conflicts/<rel_dir> (0o700), fsyncing each parent that gains an entry."""
        if not self.dir.is_dir():
            self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            _fsync_dir(self.dir.parent)
        current = self.dir
        for part in rel_dir.split("/") if rel_dir else []:
            child = current / part
            try:
                child.mkdir(mode=0o700)
            except FileExistsError:
                if child.is_symlink() or not child.is_dir():
                    raise PathRefused(
                        f"refused archive directory {str(child)!r}: exists and is not a directory"
                    ) from None
            else:
                _fsync_dir(current)
            current = child
        return current

    def _place_copy(self, directory: Path, base: str, stamp: str, node: str, data: bytes) -> str:
        """Write `data` durably under the first free `<base>.<stamp>.<node>[.N]` name."""
        tmp = directory / paths.temp_name(base, secrets.token_hex(8))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            for n in range(10_000):
                name = _copy_name(base, stamp, node, n)
                try:
                    os.link(tmp, directory / name)  # never replaces an existing copy
                except FileExistsError:
                    continue
                _fsync_dir(directory)
                return name
            raise FileExistsError(f"no free conflict copy name for {base!r} in {directory}")
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()

    def _remove_empty_dirs(self, directory: Path) -> None:
        while directory != self.dir and self.dir in directory.parents:
            try:
                directory.rmdir()
            except OSError:
                return
            directory = directory.parent

    def _dir_has_temps(self) -> bool:
        return any(paths.is_temp_name(p.name) for p in self._walk_files())

    def _remove_temps(self) -> None:
        for p in self._walk_files():
            if paths.is_temp_name(p.name):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()

    def _walk_files(self) -> Iterator[Path]:
        for dirpath, _dirs, files in os.walk(self.dir):
            for f in files:
                yield Path(dirpath) / f


# --- helpers -------------------------------------------------------------------------


def _check_folder(folder: str) -> None:
    """A folder id is one plain name that cannot collide with the archive's own files."""
    paths.check_relpath(folder)
    if "/" in folder or folder in (CATALOGUE, _LOCK):
        raise PathRefused(f"refused folder id {folder!r}: not usable as an archive directory")


def _node_label(origin: str) -> str:
    """The node name as a safe file-name part (the exact name is kept in the catalogue)."""
    label = _NODE_UNSAFE.sub("_", origin)[:64].lstrip(".")
    return label or "unknown"


def _copy_name(base: str, stamp: str, node: str, n: int) -> str:
    suffix = f".{stamp}.{node}" + (f".{n}" if n else "")
    room = paths.MAX_NAME_BYTES - len(suffix.encode())
    base = base.encode()[:room].decode("utf-8", "ignore")
    return base + suffix


def _utc(when: datetime) -> datetime:
    """Naive datetimes are taken as UTC."""
    return when.replace(tzinfo=UTC) if when.tzinfo is None else when.astimezone(UTC)


def _stamp(when: datetime) -> str:
    return when.strftime("%Y%m%dT%H%M%S.") + f"{when.microsecond // 1000:03d}Z"


def _iso(when: datetime) -> str:
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def _parse_iso(text: str) -> datetime:
    return _utc(datetime.fromisoformat(text))


def _int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"not a non-negative integer: {value!r}")
    return value


def _valid_record(obj: Any) -> dict[str, Any]:
    """Check one catalogue record, so a damaged catalogue cannot point outside the archive."""
    if not isinstance(obj, dict):
        raise ValueError("not an object")
    _int(obj["id"])
    _int(obj["size"])
    _int(obj.get("mode", 0o644))
    for key in ("folder", "path", "archived_at", "loser", "winner", "file"):
        if not isinstance(obj[key], str):
            raise ValueError(f"{key} is not a string")
    _parse_iso(obj["archived_at"])
    paths.check_relpath(obj["file"])
    return {**obj, "mode": obj.get("mode", 0o644)}


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a directory
    finally:
        os.close(fd)
