"""One shared folder on this node: local changes become versions, remote versions are
decided and applied. All mutation of a folder happens under its lock; blocking work
(hashing, file writes, SQLite) runs in a worker thread.

FolderEngine is assembled from parts with one job each: folder_state.py (records, locks,
shared helpers), local_changes.py (registering local changes), remote_apply.py (applying
peers' versions) and fetching.py (getting their content). This module opens the folder
(replaying an apply a crash interrupted), answers queries and serves peers' reads, and
holds the node's shared clock."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from pathlib import Path

import xxhash

from dagsync import fsio
from dagsync.clock import HybridClock, hlc_ms
from dagsync.fetching import BATCH_BYTES, BATCH_FILES, FETCH_CONCURRENCY, SMALL_FILE, Fetch
from dagsync.folder_state import (
    INTENT_SLOTS,
    BatchOutcome,
    FolderState,
    Planned,
    content_hash,
    lstat_key,
)
from dagsync.index import LocalStat
from dagsync.local_changes import LocalChanges, ScanSummary
from dagsync.model import FileVersion, FolderMode, Kind
from dagsync.recstore import RecordStore
from dagsync.remote_apply import APPLY_CHUNK, FIRST_CHUNK, LOG_EACH_UP_TO, RemoteApply
from dagsync.scanner import UnstableFile, hash_file

__all__ = [
    "APPLY_CHUNK", "BATCH_BYTES", "BATCH_FILES", "FETCH_CONCURRENCY", "FIRST_CHUNK",
    "LOG_EACH_UP_TO", "MAX_AHEAD_MS", "SMALL_FILE", "BatchOutcome", "Fetch", "FolderEngine",
    "FolderState", "Planned", "ScanSummary", "SharedClock", "content_hash", "wall_ms",
]

log = logging.getLogger("dagsync.engine")

MAX_AHEAD_MS = 24 * 3600 * 1000  # a peer clock further ahead than this is not followed


def wall_ms() -> int:
    return time.time_ns() // 1_000_000


class SharedClock:
    """The node's HLC, shared by every folder and thread."""

    def __init__(self, last: int = 0) -> None:
        self._clock = HybridClock(last)
        self._lock = threading.Lock()

    def tick(self) -> int:
        with self._lock:
            return self._clock.tick(wall_ms())

    def observe(self, remote: int) -> int:
        """Move past a peer's clock, unless it claims to be more than MAX_AHEAD_MS in the
        future: one peer with a broken clock must not drag every later edit with it."""
        with self._lock:
            now = wall_ms()
            if hlc_ms(remote) > now + MAX_AHEAD_MS:
                return self._clock.tick(now)
            return self._clock.observe(remote, now)

    @property
    def last(self) -> int:
        return self._clock.last


class FolderEngine(RemoteApply, LocalChanges):
    """One folder: its state (FolderState), local registration (LocalChanges) and remote
    apply (RemoteApply); opened once, then driven by the agent and its peers."""

    # --- start-up and queries --------------------------------------------------------

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()

        def load() -> None:
            self.records = RecordStore()
            self._dirs = set()
            counter = int(self.index.get_meta(f"own_counter:{self.id}") or 0)
            own: dict[tuple[tuple[str, int], ...], int] = {}  # few distinct vectors
            for fields in self.index.each_fields(self.id):
                self._remember_fields(fields)
                counters = fields[8]
                mine = own.get(counters)
                if mine is None:
                    mine = own[counters] = dict(counters).get(self.node, 0)
                counter = max(counter, mine)
            self.own_counter = counter
            self.adopting = not self.records
            if self.root.is_dir():
                self._replay_intent()
            self.max_seq = self.index.max_seq(self.id)
            self.index_id = self.index.index_id(self.id)
            if self.root.is_dir():
                for leftover in fsio.cleanup_temp_files(self.root):
                    log.info("folder %s: removed temp file left by a crash: %s", self.id, leftover)
                if self.private_temp is not None and _same_device(self.private_temp, self.root):
                    self.temp_dir = self.private_temp

        await asyncio.to_thread(load)

    def digest(self) -> str:
        """One hash over every live file's path, content, mode and mtime: equal digests
        mean equal folders."""
        h = xxhash.xxh3_128()
        for path in sorted(self.records):
            v = self.records[path].version
            if not v.deleted:
                h.update(f"{path}\0{v.kind}\0{v.hash}\0{v.mode:o}\0{v.mtime_ns}\n".encode(
                    "utf-8", "surrogateescape"))
        return h.hexdigest()

    async def wait_for_seq_above(self, seq: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.max_seq > seq)

    def _replay_intent(self) -> None:
        """After a crash mid-apply: record each intended version that is on disk as it
        was meant to be (content hash checked), so it is not mistaken for a local edit.
        Each chunk in flight had its own note (INTENT_SLOTS), for different paths."""
        notes = [(slot, self.index.get_meta(self._intent_key(slot)))
                 for slot in range(INTENT_SLOTS)]
        if not any(raw for _, raw in notes):
            return
        landed: list[tuple[FileVersion, LocalStat | None]] = []
        intended: list[FileVersion] = []
        for _, raw in notes:
            # a torn note is skipped: the scan treats what landed as local changes
            with contextlib.suppress(ValueError):
                intended += [FileVersion.from_wire(w) for w in json.loads(raw or "[]")]
        for v in intended:
            if v.deleted:
                if lstat_key(self.root, v.path) is None:
                    landed.append((v, None))
                continue
            if v.kind is not Kind.FILE:
                continue
            try:
                digest, stat = hash_file(self.root / v.path)
            except (OSError, UnstableFile):
                continue
            if digest == v.hash:
                landed.append((v, LocalStat(stat.size, stat.mtime_ns, stat.inode)))
        if landed:
            for rec in self.index.put(self.id, landed):
                self._remember(rec)
            log.info("folder %s: %d change(s) applied just before a crash recorded", self.id,
                     len(landed))
        for slot, raw in notes:
            if raw:
                self._set_intent([], slot)

    # --- serving peers ---------------------------------------------------------------

    def publishes(self, v: FileVersion) -> bool:
        """A receive-only folder announces only the cluster's versions it applied."""
        return not (self.cfg.mode is FolderMode.RECEIVE_ONLY and v.origin == self.node)

    def read_for_peer(
        self, path: str, want_hash: str, offset: int, size: int, dirs: fsio.Dirs | None = None
    ) -> bytes | None:
        """Content for a peer's Request, or None when we no longer hold that version."""
        if not self.holds(path, want_hash):
            return None
        return fsio.read_range(self.root, path, offset, size, dirs)

    def holds(self, path: str, want_hash: str) -> bool:
        """Whether the version of `path` we hold has this content hash."""
        return self.records.file_hash(path) == want_hash


def _same_device(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False
