"""The state one shared folder keeps on this node: its records (the index's view in
memory), locks and counters, and the few helpers both halves of the engine use, local
registration (local_changes.py) and remote apply (remote_apply.py)."""

from __future__ import annotations

import asyncio
import logging
import threading
from array import array
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import xxhash

from dagsync.archive import ConflictArchive
from dagsync.clock import VersionVector
from dagsync.config import FolderConfig
from dagsync.ignore import IgnoreMatcher
from dagsync.index import Index, LocalStat, Record, RecordFields
from dagsync.model import Action, FileVersion
from dagsync.recstore import RecordStore

INTENT_SLOTS = 6  # chunks of one apply round in flight at once (remote_apply)

log = logging.getLogger("dagsync.engine")  # one logger for the whole folder engine


class NodeClock(Protocol):
    """The node's HLC as a folder uses it (engine.SharedClock)."""

    def tick(self) -> int: ...

    def observe(self, remote: int) -> int: ...


def content_hash(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


@dataclass
class Planned:
    remote: FileVersion
    action: Action


class AppliedPaths:
    """The paths an apply round wrote, packed one string per chunk ("\0" cannot be in a
    path). A round may take in a whole initial sync: kept as 20,000 separate strings to
    its end, among the round's short-lived objects, they left the receiver's idle
    resident size ~1 MiB higher (bench/run.py --only e, alternating runs)."""

    __slots__ = ("_chunks", "_count")

    def __init__(self, paths: Iterable[str] = ()) -> None:
        self._chunks: list[str] = []
        self._count = 0
        self.extend(paths)

    def extend(self, paths: Iterable[str]) -> None:
        chunk = list(paths)
        if chunk:
            self._chunks.append("\0".join(chunk))
            self._count += len(chunk)

    def append(self, path: str) -> None:
        self.extend((path,))

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[str]:
        for chunk in self._chunks:
            yield from chunk.split("\0")

    def __repr__(self) -> str:
        return f"AppliedPaths({list(self)!r})"


@dataclass
class BatchOutcome:
    applied: AppliedPaths = field(default_factory=AppliedPaths)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    refused: list[tuple[str, str]] = field(default_factory=list)
    conflicts: int = 0
    would: list[tuple[str, str]] = field(default_factory=list)  # dry run: (action, path)
    # HLC of each applied version, in one buffer (as `applied`, for the same reason)
    applied_hlc: array[int] = field(default_factory=lambda: array("q"))
    # Told of the records each step of the round wrote, in the thread that wrote them
    # (a peer connection notes which of its sender's records are echoes: folder_link)
    recorded: Callable[[list[Record]], None] | None = None

    @property
    def complete(self) -> bool:
        return not self.failed


class FolderState:
    """Everything a folder engine holds; the parts that register local changes and apply
    remote ones are mixins over it, so they share one set of attributes."""

    def __init__(
        self,
        cfg: FolderConfig,
        node_name: str,
        index: Index,
        archive: ConflictArchive,
        clock: NodeClock,
        max_file_size: int,
        temp_dir: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.id = cfg.id
        self.root = cfg.path
        self.node = node_name
        self.index = index
        self.archive = archive
        self.clock = clock
        self.max_file_size = max_file_size
        self.private_temp = temp_dir
        self.temp_dir: Path | None = None  # private temp dir, when on the folder's file system
        self.ignore = IgnoreMatcher(cfg.ignore)
        self.records = RecordStore()
        self._dirs: set[str] = set()  # every directory that holds a recorded path
        self.lock = asyncio.Lock()
        self.changed = asyncio.Condition()
        self.max_seq = 0
        self.index_id = 0
        self.last_scan: float | None = None
        self.last_scan_problems: list[str] = []
        self.local_edits_refused = 0  # edits on a receive-only folder
        self.on_applied: list[Callable[[BatchOutcome], None]] = []  # after each round
        self.applied_total = 0  # remote versions recorded so far, counted as chunks land
        self.last_scan_duration = 0.0
        self.reverts: set[str] = set()  # receive-only paths awaiting the cluster's version
        # Paths (and their directories) an apply round is writing right now, and watcher
        # reports about them held back until the round has recorded what it wrote. In a
        # bulk round two chunks are in flight (one staged while the other commits): each
        # has its part, by intent slot, and `applying` is their union.
        self.applying: set[str] = set()
        self._applying_parts: dict[int, set[str]] = {}
        self._applying_lock = threading.Lock()
        self.recheck: set[str] = set()
        # Conflicts already archived by this process, so a retried apply (the write
        # failed: full disk, permission denied) does not archive the same loser again.
        self._archived: set[tuple[str, str, str, bool]] = set()
        self.adopting = False  # the first scan into an empty index makes unversioned records
        self.own_counter = 0  # highest version-vector counter this node used here
        self.guard_problem = ""  # set while the empty-folder guard holds deletes back
        self.read_only = False  # dry runs: never touch the folder or the archive
        self.watcher_mode = "none"  # inotify | polling | none (one-shot runs)
        # Told when a bulk apply round (BULK_ROUND files or more) starts (True) and ends
        # (False): the agent stops watching meanwhile and rescans the folder after.
        self.on_bulk: Callable[[bool], Awaitable[None]] | None = None
        self.revert_needed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- helpers both halves use ---------------------------------------------------

    def loop_call(self, fn: Callable[[], object]) -> None:
        """Run fn on the event loop, from the loop or from a worker thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    def known_stat(self, path: str) -> LocalStat | None:
        """What the scanner compares (its mode is the version's: a chmod alone is a
        change too; see _with_mode)."""
        return self.records.stat(path)

    def version(self, path: str) -> FileVersion | None:
        rec = self.records.get(path)
        return rec.version if rec else None

    def counts(self) -> tuple[int, int]:
        live = [r.version for r in self.records.values() if not r.version.deleted]
        return len(live), sum(v.size for v in live)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    def _report(self, outcome: BatchOutcome) -> None:
        for observer in self.on_applied:
            try:
                observer(outcome)
            except Exception:
                log.exception("folder %s: observer failed", self.id)

    def _remember(self, rec: Record) -> None:
        self._note_dirs(rec.version.path)
        self.records[rec.version.path] = rec

    def _remember_fields(self, fields: RecordFields) -> None:
        """_remember for a record loaded from the index as its fields (Index.each_fields)."""
        self._note_dirs(fields[0])
        self.records.put_fields(*fields)

    def _note_dirs(self, path: str) -> None:
        parent = path.rpartition("/")[0]
        if parent and parent not in self._dirs:  # holds every ancestor of what it holds
            self._dirs.update(parents_of(path))

    def _mark_applying(self, slot: int, paths: set[str] | None) -> None:
        """Set (or with None, clear) the paths the chunk in `slot` is writing."""
        with self._applying_lock:
            if paths is None:
                self._applying_parts.pop(slot, None)
            else:
                self._applying_parts[slot] = paths
            parts = list(self._applying_parts.values())
            self.applying = parts[0] if len(parts) == 1 else set().union(*parts)

    def _intent_key(self, slot: int) -> str:
        return f"intent:{self.id}" if slot == 0 else f"intent:{self.id}:{slot}"

    def _set_intent(self, versions: list[FileVersion], slot: int = 0) -> None:
        """The write-ahead note of the versions an apply is about to put in place
        (remote_apply writes it, engine.FolderEngine.open replays it after a crash).
        One note per chunk in flight (INTENT_SLOTS): a bulk round stages the next chunk
        while the last one commits, and neither may overwrite the other's note."""
        key = self._intent_key(slot)
        if versions or self.index.get_meta(key):
            vectors: dict[VersionVector, str] = {}
            self.index.set_meta(key, "[" + ",".join(v.wire_json(vectors) for v in versions)
                                + "]")


def with_parents(paths: list[str]) -> set[str]:
    """The paths and every directory above them; each directory's ancestors are
    listed once, however many files it holds."""
    out = set(paths)
    seen: set[str] = set()
    for path in paths:
        parent = path.rpartition("/")[0]
        if parent and parent not in seen:
            seen.add(parent)
            out.update(parents_of(path))
    return out


def parents_of(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def lstat_key(root: Path, rel: str) -> tuple[int, int, int] | None:
    try:
        st = (root / rel).lstat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def stat_of(root: Path, rel: str) -> LocalStat | None:
    key = lstat_key(root, rel)
    return LocalStat(*key) if key else None
