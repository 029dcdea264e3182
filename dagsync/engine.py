"""One shared folder on this node: local changes become versions, remote versions are
decided and applied. All mutation of a folder happens under its lock; blocking work
(hashing, file writes, SQLite) runs in a worker thread."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Protocol

import xxhash

from dagsync import fsio
from dagsync.archive import ConflictArchive
from dagsync.clock import HybridClock, VersionVector, hlc_ms, hlc_pack
from dagsync.config import FolderConfig
from dagsync.errors import PathRefused
from dagsync.ignore import IgnoreMatcher
from dagsync.index import Index, LocalStat, Record
from dagsync.leases import being_written
from dagsync.model import Action, ActionKind, FileVersion, FolderMode, Kind
from dagsync.paths import check_relpath, symlink_target_ok
from dagsync.reconcile import decide
from dagsync.recstore import RecordStore
from dagsync.scanner import (
    Observed,
    ScanResult,
    UnstableFile,
    hash_file,
    scan_folder,
    scan_paths,
)

log = logging.getLogger("dagsync.engine")

class Fetch(Protocol):
    """Where remote content comes from: one connected peer."""

    async def fetch(self, v: FileVersion) -> bytes: ...

    async def fetch_many(self, vs: list[FileVersion]) -> list[bytes | BaseException]: ...


FETCH_CONCURRENCY = 8  # requests in flight per round (a batch counts once)
FIRST_CHUNK = 64
APPLY_CHUNK = 512  # files written and recorded per step; the next chunk is fetched meanwhile
SMALL_FILE = 256 * 1024  # files up to this size travel in batches
BATCH_FILES = 64
BATCH_BYTES = 2 * 1024 * 1024
LOG_EACH_UP_TO = 20  # applied files logged one per line; more make one summary line
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


def content_hash(data: bytes) -> str:
    return xxhash.xxh3_128_hexdigest(data)


@dataclass
class ScanSummary:
    new_versions: int = 0
    problems: int = 0
    duration_s: float = 0.0


@dataclass
class Planned:
    remote: FileVersion
    action: Action


@dataclass
class BatchOutcome:
    applied: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    refused: list[tuple[str, str]] = field(default_factory=list)
    conflicts: int = 0
    would: list[tuple[str, str]] = field(default_factory=list)  # dry run: (action, path)
    applied_hlc: list[int] = field(default_factory=list)  # HLC of each applied version

    @property
    def complete(self) -> bool:
        return not self.failed


class FolderEngine:
    def __init__(
        self,
        cfg: FolderConfig,
        node_name: str,
        index: Index,
        archive: ConflictArchive,
        clock: SharedClock,
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
        self.on_applied: list[Callable[[BatchOutcome], None]] = []
        self.last_scan_duration = 0.0
        self.reverts: set[str] = set()  # receive-only paths awaiting the cluster's version
        # Conflicts already archived by this process, so a retried apply (the write
        # failed: full disk, permission denied) does not archive the same loser again.
        self._archived: set[tuple[str, str, str, bool]] = set()
        self.adopting = False  # the first scan into an empty index makes unversioned records
        self.own_counter = 0  # highest version-vector counter this node used here
        self.guard_problem = ""  # set while the empty-folder guard holds deletes back
        self.read_only = False  # dry runs: never touch the folder or the archive
        self.watcher_mode = "none"  # inotify | polling | none (one-shot runs)
        self.revert_needed = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    # --- start-up and queries --------------------------------------------------------

    def loop_call(self, fn: Callable[[], object]) -> None:
        """Run fn on the event loop, from the loop or from a worker thread."""
        if self._loop is not None:
            self._loop.call_soon_threadsafe(fn)

    async def open(self) -> None:
        self._loop = asyncio.get_running_loop()

        def load() -> None:
            self.records = RecordStore()
            self._dirs = set()
            counter = int(self.index.get_meta(f"own_counter:{self.id}") or 0)
            for rec in self.index.each_record(self.id):
                self._remember(rec)
                counter = max(counter, rec.version.vv.get(self.node))
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

    def compact(self) -> None:
        """Repack the in-memory records after a bulk round (see RecordStore.compact);
        runs in a worker thread, under the folder lock, while the agent is idle."""
        self.records.compact()
        self._dirs = {d for path in self.records for d in _parents(path)}

    def known_stat(self, path: str) -> LocalStat | None:
        """What the scanner compares (its mode is the version's: a chmod alone is a
        change too; see _with_mode)."""
        return self.records.stat(path)

    def version(self, path: str) -> FileVersion | None:
        rec = self.records.get(path)
        return rec.version if rec else None

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

    def counts(self) -> tuple[int, int]:
        live = [r.version for r in self.records.values() if not r.version.deleted]
        return len(live), sum(v.size for v in live)

    async def wait_for_seq_above(self, seq: int) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.max_seq > seq)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    # --- local changes ---------------------------------------------------------------

    async def scan(self) -> ScanSummary:
        """Full scan: the safety net that finds every local change."""
        if not self.root.is_dir():
            self.last_scan_problems = [f"folder path {self.root} is not a readable directory"]
            log.error("folder %s: %s", self.id, self.last_scan_problems[0])
            return ScanSummary(problems=1)
        result = await asyncio.to_thread(
            scan_folder, self.root, self, self.ignore, self.max_file_size
        )
        async with self.lock:
            count = await asyncio.to_thread(self._register, result, None)
        self.adopting = False
        self.last_scan = time.time()
        self.last_scan_duration = result.duration_s
        self.last_scan_problems = [f"{p.path}: {p.reason}" for p in result.problems]
        if count:
            await self._notify()
        return ScanSummary(count, len(result.problems), result.duration_s)

    async def scan_some(self, paths: Iterable[str]) -> int:
        wanted = await asyncio.to_thread(self._maybe_changed, list(paths))
        if not wanted:
            return 0
        async with self.lock:
            count = await asyncio.to_thread(self._scan_and_register, wanted)
        if count:
            await self._notify()
        return count

    def _maybe_changed(self, paths: list[str]) -> list[str]:
        """The paths whose file no longer matches its record, before taking the lock: a
        receiver's watcher reports every file an apply wrote, and those match exactly
        (the same test scan_paths makes, so nothing it would report is dropped)."""
        out = []
        for path in paths:
            k = self.known_stat(path)
            if k is not None:
                try:
                    st = os.lstat(os.path.join(self.root, path))
                except OSError:
                    out.append(path)
                    continue
                if ((k.size, k.mtime_ns, k.inode) == (st.st_size, st.st_mtime_ns, st.st_ino)
                        and k.mode in (-1, st.st_mode & 0o7777)):
                    continue
            out.append(path)
        return out

    def _scan_and_register(self, paths: list[str]) -> int:
        result = scan_paths(self.root, paths, self, self.ignore, self.max_file_size)
        return self._register(result, paths)

    def _register(self, result: ScanResult, limited_to: list[str] | None) -> int:
        """Turn what a scan saw into new local versions. Runs under the folder lock in a
        worker thread. Re-checks each file's stat first: a remote apply may have replaced
        it since the scan looked, and a stale observation must never become a version."""
        for problem in result.problems:
            log.warning("folder %s: %s: %s", self.id, problem.path, problem.reason)
        items: list[tuple[FileVersion, LocalStat | None]] = []
        for obs in result.changed:
            if _lstat_key(self.root, obs.path) != (obs.size, obs.mtime_ns, obs.inode):
                continue  # changed again since; the next scan takes it
            if obs.kind is Kind.FILE and being_written(str(self.root / obs.path)):
                log.debug("folder %s: %s is still open for writing; later", self.id, obs.path)
                continue  # its close (or the next scan) brings it back
            item = self._observed_version(obs)
            if item is not None:
                items.append(item)
        items.extend(self._vanished(result, limited_to))
        items.extend(self._rename_sources(items))
        if self.cfg.mode is FolderMode.RECEIVE_ONLY:
            items = self._refuse_local_edits(items)
        if not items:
            return 0
        new_versions = [i for i in items if self._is_new_version(i[0])]
        if new_versions:
            self.index.set_meta(f"own_counter:{self.id}", str(self.own_counter))
        for rec in self.index.put(self.id, items):
            self._remember(rec)
            self.max_seq = max(self.max_seq, rec.seq)
        for v, _ in new_versions:
            log.info("folder %s: local %s %s", self.id, "delete" if v.deleted else "change", v.path)
        return len(items)

    def _is_new_version(self, v: FileVersion) -> bool:
        rec = self.records.get(v.path)
        return rec is None or rec.version.vv != v.vv

    def _observed_version(self, obs: Observed) -> tuple[FileVersion, LocalStat | None] | None:
        rec = self.records.get(obs.path)
        prev = rec.version if rec else None
        if (
            prev is not None
            and not prev.deleted
            and (prev.kind, prev.hash, prev.target, prev.mode, prev.mtime_ns)
            == (obs.kind, obs.hash, obs.target, obs.mode, obs.mtime_ns)
        ):
            # Same bytes and metadata (e.g. a new inode): remember the stat, no new version.
            return prev, obs.stat()
        if prev is None and self.adopting:
            # First scan into an empty index (new node, or a rebuilt database): the file
            # is unversioned, so any version the cluster holds wins over it (its content
            # archived if different) and nothing the cluster deleted comes back. Between
            # unversioned copies the newest mtime wins.
            return replace(
                self._unversioned(obs), hlc=hlc_pack(obs.mtime_ns // 1_000_000, 0)
            ), obs.stat()
        vv = prev.vv if prev else VersionVector()
        version = FileVersion(
            path=obs.path, kind=obs.kind, size=obs.size, mtime_ns=obs.mtime_ns, mode=obs.mode,
            hash=obs.hash, deleted=False, vv=vv.bump(self.node, self._vv_floor()),
            hlc=self._hlc_after(prev),
            origin=self.node, target=obs.target,
        )
        return version, obs.stat()

    def _remember(self, rec: Record) -> None:
        v = rec.version
        if v.path not in self.records:
            self._dirs.update(_parents(v.path))
        self.records[v.path] = rec

    def _records_under(self, paths: list[str]) -> list[str]:
        """Recorded paths equal to one of `paths` or below one of them. Exact paths are
        looked up; only paths that are directories on disk need a prefix walk."""
        out = [p for p in paths if p in self.records]
        dirs = tuple(q + "/" for q in paths if q in self._dirs)
        if dirs:
            out.extend(p for p in self.records if p.startswith(dirs))
        return out

    def _unversioned(self, obs: Observed) -> FileVersion:
        return FileVersion(
            path=obs.path, kind=obs.kind, size=obs.size, mtime_ns=obs.mtime_ns, mode=obs.mode,
            hash=obs.hash, deleted=False, vv=VersionVector(), hlc=0, origin=self.node,
            target=obs.target,
        )

    def _hlc_after(self, prev: FileVersion | None) -> int:
        """An edit's HLC is above the version it replaces, even when that one came from a
        clock too far ahead for the shared clock to follow: otherwise wins() would not
        rank versions consistently."""
        tick = self.clock.tick()
        return tick if prev is None else max(tick, prev.hlc + 1)

    def _vv_floor(self) -> int:
        """This node's next counter: above every counter it ever handed out in this folder
        (also those of versions that since lost a conflict and left the index) and at
        least the wall clock in seconds (as Syncthing does), so a node whose database
        was lost does not reuse old values either."""
        self.own_counter = max(self.own_counter + 1, int(time.time()))
        return self.own_counter

    def _tombstone(self, v: FileVersion) -> FileVersion:
        return replace(
            v, size=0, hash="", target="", deleted=True,
            vv=v.vv.bump(self.node, self._vv_floor()), hlc=self._hlc_after(v),
            origin=self.node,
        )

    def _rename_sources(
        self, items: list[tuple[FileVersion, LocalStat | None]]
    ) -> list[tuple[FileVersion, LocalStat | None]]:
        """The other half of a rename: a new file whose content a recorded file had, where
        that file is now gone from disk, is a move. Its delete joins this registration, so
        peers get both in one batch and move the file (inotify may report the two halves
        half a second apart: watchdog holds a lone IN_MOVED_FROM)."""
        taken = {v.path for v, _ in items}
        out: list[tuple[FileVersion, LocalStat | None]] = []
        for v, _ in items:
            if v.deleted or v.kind is not Kind.FILE or not self._is_new_version(v):
                continue
            for source in self.index.paths_with_hash(self.id, v.hash):
                rec = self.records.get(source)
                if (rec is None or source in taken or rec.version.deleted
                        or rec.version.hash != v.hash
                        or _lstat_key(self.root, source) is not None):
                    continue
                taken.add(source)
                out.append((self._tombstone(rec.version), None))
                break
        return out

    def _vanished(
        self, result: ScanResult, limited_to: list[str] | None
    ) -> list[tuple[FileVersion, LocalStat | None]]:
        if limited_to is None:
            candidates: Iterable[str] = self.records
        else:
            candidates = self._records_under(limited_to)
        if "" in result.unreadable_dirs:
            return []  # the folder itself could not be read: nothing is known to be gone
        if _is_empty_dir(self.root) and any(not r.version.deleted for r in self.records.values()):
            # An empty folder where files were: far likelier an unmounted volume or a
            # wrong path than an operator deleting every DAG. Never wipe the cluster.
            problem = (f"{self.root} is empty but {self.counts()[0]} files were there; not "
                       "propagating deletes (unmounted volume? to empty the folder on purpose, "
                       "keep one file in it)")
            log.error("folder %s: %s", self.id, problem)
            self.guard_problem = problem
            return []
        self.guard_problem = ""
        blocked = tuple(d.rstrip("/") + "/" for d in result.unreadable_dirs)
        out: list[tuple[FileVersion, LocalStat | None]] = []
        for path in candidates:
            v = self.records[path].version
            if v.deleted or path in result.present or path.startswith(blocked):
                continue
            if self.ignore.ignored(path, False) or _lstat_key(self.root, path) is not None:
                continue
            out.append((self._tombstone(v), None))
        return out

    def _refuse_local_edits(
        self, items: list[tuple[FileVersion, LocalStat | None]]
    ) -> list[tuple[FileVersion, LocalStat | None]]:
        """A receive-only folder never publishes: keep a copy of the edit in the conflict
        archive and leave the record as the cluster's, so the next pull restores it."""
        kept = []
        for version, stat in items:
            prev = self.records.get(version.path)
            if (
                not self._is_new_version(version)
                or version.vv.empty
                or (prev is not None and prev.version.origin == self.node)
            ):
                # Unchanged, found on disk at adoption, or a file only this node ever had:
                # recorded, never published (see publishes()).
                kept.append((version, stat))
                continue
            if version.path in self.reverts:
                continue  # already archived and waiting for the cluster's version
            self.local_edits_refused += 1
            if self.read_only:
                continue
            if not version.deleted:
                try:
                    data = fsio.read_range(self.root, version.path, 0, self.max_file_size)
                    self.archive.store(self.id, version.path, data, loser_origin=self.node,
                                       winner_origin="cluster", mode=version.mode)
                except (OSError, PathRefused) as exc:
                    log.warning("folder %s: cannot archive local edit %s: %s",
                                self.id, version.path, exc)
            log.warning("folder %s: local %s of %s on a receive-only folder: not published, "
                        "kept in the conflict archive", self.id,
                        "delete" if version.deleted else "edit", version.path)
            rec = self.records.get(version.path)
            if rec is not None:
                # Forget the stat so the record no longer matches the disk: the engine
                # fetches the cluster's version again.
                self.records[version.path] = replace(rec, stat=None)
                self.reverts.add(version.path)
            elif not version.deleted:
                # A file the cluster never had: the cluster's version is "absent".
                try:
                    fsio.remove_file(self.root, version.path)
                except (OSError, PathRefused) as exc:
                    log.warning("folder %s: cannot remove %s: %s", self.id, version.path, exc)
        if self.reverts:
            self.loop_call(self.revert_needed.set)
        return kept

    async def revert_local_edits(self, fetch: Fetch) -> int:
        """Restore the cluster's version of files edited on a receive-only folder."""
        if not self.reverts:
            return 0
        planned = []
        for path in sorted(self.reverts):
            v = self.version(path)
            if v is None:
                self.reverts.discard(path)
                continue
            kind = ActionKind.DELETE if v.deleted else ActionKind.FETCH
            planned.append(Planned(v, Action(kind, result=v)))
        outcome = BatchOutcome()
        contents = await self._fetch_all(planned, fetch, outcome)
        async with self.lock:
            await asyncio.to_thread(self._restore_locked, planned, contents, outcome)
        if outcome.applied:
            await self._notify()
        self._report(outcome)
        return len(outcome.applied)

    def _report(self, outcome: BatchOutcome) -> None:
        for observer in self.on_applied:
            try:
                observer(outcome)
            except Exception:
                log.exception("folder %s: observer failed", self.id)

    def _restore_locked(
        self, planned: list[Planned], contents: dict[str, bytes], outcome: BatchOutcome
    ) -> None:
        staged: list[tuple[fsio.StagedWrite, FileVersion]] = []
        done: list[tuple[FileVersion, LocalStat | None]] = []
        for p in planned:
            if p.remote.path not in self.reverts or self.version(p.remote.path) != p.remote:
                continue
            try:
                item = self._apply_one(p.action, p.remote, contents, staged)
            except (OSError, PathRefused) as exc:
                outcome.failed.append((p.remote.path, getattr(exc, "strerror", None) or str(exc)))
                continue
            if item is not None:
                done.append(item)
        self._commit(staged, done, outcome)
        if done:
            for v, _ in done:
                log.info("folder %s: restored the cluster's version of %s", self.id, v.path)

    def _commit(
        self,
        staged: list[tuple[fsio.StagedWrite, FileVersion]],
        done: list[tuple[FileVersion, LocalStat | None]],
        outcome: BatchOutcome,
        dirs: fsio.Dirs | None = None,
    ) -> None:
        """Make staged files visible at once (one syncfs), then record everything done."""
        if staged:
            failed: dict[str, Exception] = {}
            try:
                fsio.commit([s for s, _ in staged], dirs)
            except fsio.CommitError as exc:
                failed = exc.failed
            except OSError as exc:
                fsio.abort([s for s, _ in staged])
                failed = {v.path: exc for _, v in staged}
            for path, err in failed.items():
                reason = getattr(err, "strerror", None) or str(err)
                outcome.failed.append((path, reason))
                log.error("folder %s: cannot write %s: %s", self.id, path, reason)
            for st, v in staged:
                if v.path not in failed:  # the committed file is the staged inode
                    done.append((v, LocalStat(v.size, st.mtime_ns, st.inode)))
        if not done:
            return
        for version, _ in done:
            self.clock.observe(version.hlc)  # later local edits must beat what we hold
        for rec in self.index.put(self.id, done):
            self._remember(rec)
            self.max_seq = max(self.max_seq, rec.seq)
            self.reverts.discard(rec.version.path)
            outcome.applied.append(rec.version.path)
            outcome.applied_hlc.append(rec.version.hlc)

    # --- remote changes --------------------------------------------------------------

    def screen(
        self, remote: FileVersion, dirs_ignored: dict[str, bool] | None = None
    ) -> str | None:
        """Why a remote entry must be refused, or None. SPEC guarantee 8. `dirs_ignored`
        remembers directory answers over a batch (thousands of entries, a few dirs)."""
        try:
            check_relpath(remote.path)
        except PathRefused as exc:
            return str(exc)
        if self._in_ignored_dir(remote.path.rpartition("/")[0], {} if dirs_ignored is None
                                else dirs_ignored):
            return "inside an ignored directory"
        if self.ignore.ignored(remote.path, False):
            return "ignored name"
        if remote.deleted:
            return None
        if remote.size > self.max_file_size:
            return f"file of {remote.size} bytes exceeds max_file_size"
        if remote.kind is Kind.SYMLINK and not symlink_target_ok(remote.path, remote.target):
            return f"symlink target {remote.target!r} leaves the folder"
        if len(remote.hash) != 32:
            return "malformed content hash"
        return None

    def _in_ignored_dir(self, reldir: str, memo: dict[str, bool]) -> bool:
        if not reldir:
            return False
        known = memo.get(reldir)
        if known is None:
            known = memo[reldir] = (
                self._in_ignored_dir(reldir.rpartition("/")[0], memo)
                or self.ignore.ignored(reldir, True)
            )
        return known

    def plan(self, entries: Iterable[FileVersion], outcome: BatchOutcome) -> list[Planned]:
        planned = []
        dirs_ignored: dict[str, bool] = {}
        for remote in entries:
            reason = self.screen(remote, dirs_ignored)
            if reason is not None:
                outcome.refused.append((remote.path, reason))
                continue
            action = decide(self.version(remote.path), remote, self_node=self.node)
            if action.kind is not ActionKind.KEEP:
                planned.append(Planned(remote, action))
        return planned

    async def apply_batch(
        self, entries: Iterable[FileVersion], fetch: Fetch, *, dry_run: bool = False
    ) -> BatchOutcome:
        """Decide every remote entry, fetch what is needed, and apply it durably."""
        outcome = BatchOutcome()
        planned = self.plan(entries, outcome)
        for path, reason in outcome.refused:
            log.warning("folder %s: refused remote entry %r: %s", self.id, path, reason)
        if dry_run:
            outcome.would = [(p.action.kind.value, p.remote.path) for p in planned]
            return outcome
        if self.cfg.mode is FolderMode.SEND_ONLY:
            for p in planned:
                log.info("folder %s: remote change to %s not applied (send-only folder)",
                         self.id, p.remote.path)
            return outcome
        if not planned:
            return outcome
        # Pipelined: the next chunk's content is fetched while this one is written.
        chunks = _chunks(planned)
        loop = asyncio.get_running_loop()
        fetching = loop.create_task(self._fetch_all(chunks[0], fetch, outcome))
        try:
            for i, chunk in enumerate(chunks):
                waited = time.perf_counter()
                contents = await fetching
                if i + 1 < len(chunks):
                    fetching = loop.create_task(self._fetch_all(chunks[i + 1], fetch, outcome))
                started = time.perf_counter()
                async with self.lock:
                    changed = await asyncio.to_thread(self._apply_locked, chunk, contents,
                                                      outcome)
                log.debug("folder %s: chunk %d/%d of %d file(s): waited %.3f s for content, "
                          "applied in %.3f s", self.id, i + 1, len(chunks), len(chunk),
                          started - waited, time.perf_counter() - started)
                if changed:
                    await self._notify()
        finally:
            fetching.cancel()
        self._report(outcome)
        return outcome

    async def _fetch_all(
        self, planned: list[Planned], fetch: Fetch, outcome: BatchOutcome
    ) -> dict[str, bytes]:
        contents: dict[str, bytes] = {}
        sem = asyncio.Semaphore(FETCH_CONCURRENCY)

        def verified(v: FileVersion, data: bytes | BaseException) -> None:
            if isinstance(data, BaseException):
                outcome.failed.append((v.path, f"fetch failed: {data}"))
            elif len(data) != v.size or content_hash(data) != v.hash:
                outcome.failed.append((v.path, "content does not match its announced hash"))
                log.warning("folder %s: %s: received content does not match its hash; "
                            "not applied", self.id, v.path)
            else:
                contents[v.path] = data

        async def one(v: FileVersion) -> None:
            async with sem:
                try:
                    verified(v, await fetch.fetch(v))
                except Exception as exc:  # a failed fetch is a per-file result
                    verified(v, exc)

        async def many(vs: list[FileVersion]) -> None:
            async with sem:
                try:
                    results = await fetch.fetch_many(vs)
                except Exception as exc:
                    results = [exc] * len(vs)
            for v, data in zip(vs, results, strict=True):
                verified(v, data)

        wanted = [
            p.action.result for p in planned
            if p.action.kind is ActionKind.FETCH and p.action.result is not None
            and p.action.result.kind is Kind.FILE
        ]
        small = [v for v in wanted if v.size <= SMALL_FILE]
        jobs = [one(v) for v in wanted if v.size > SMALL_FILE]
        batch: list[FileVersion] = []
        batch_bytes = 0
        for v in small:
            if batch and (len(batch) >= BATCH_FILES or batch_bytes + v.size > BATCH_BYTES):
                jobs.append(many(batch))
                batch, batch_bytes = [], 0
            batch.append(v)
            batch_bytes += v.size
        if batch:
            jobs.append(many(batch))
        await asyncio.gather(*jobs)
        return contents

    def _apply_locked(
        self, planned: list[Planned], contents: dict[str, bytes], outcome: BatchOutcome
    ) -> bool:
        """Runs in a worker thread under the folder lock. True when the index changed
        (something applied, or a local change registered): the senders must be woken."""
        # A file edited locally since we recorded it is a local change: register it
        # first, so deciding against it archives it instead of overwriting it unseen.
        # Paths with no record and nothing on disk need no look (an empty peer's case).
        on_disk = _Listing(self.root)
        present = [p.remote.path for p in planned
                   if p.remote.path in self.records or on_disk.has(p.remote.path)]
        registered = self._register(
            scan_paths(self.root, present, self, self.ignore, self.max_file_size), present
        ) if present else 0
        staged: list[tuple[fsio.StagedWrite, FileVersion]] = []
        done: list[tuple[FileVersion, LocalStat | None]] = []
        decided: list[tuple[Planned, FileVersion | None, Action]] = []
        for p in planned:
            local = self.version(p.remote.path)
            decided.append((p, local, decide(local, p.remote, self_node=self.node)))
        # A rename arrives as a delete and a create of the same content: move the file
        # with one rename(2), so Airflow never sees the DAG missing or twice. Every other
        # delete happens after the new files are in place.
        movable: dict[str, list[str]] = {}
        for _, local, action in decided:
            if (action.kind is ActionKind.DELETE and local is not None and not local.deleted
                    and local.kind is Kind.FILE and not action.archive_local):
                movable.setdefault(local.hash, []).append(local.path)
        # Write-ahead intent: if the agent dies between changing the folder and recording
        # it, the restart adopts what landed instead of taking it for local edits.
        self._set_intent([a.result for _, _, a in decided
                          if a.result is not None and a.kind is not ActionKind.KEEP])
        creates = [d for d in decided if d[2].kind is not ActionKind.DELETE]
        with fsio.Dirs(self.root) as dirs:  # closed before any delete removes a directory
            self._apply_decided(creates, contents, staged, done, outcome, movable, dirs)
            self._commit(staged, done, outcome, dirs)
        gone: list[tuple[FileVersion, LocalStat | None]] = []
        deletes = [d for d in decided if d[2].kind is ActionKind.DELETE]
        self._apply_decided(deletes, contents, [], gone, outcome, movable)
        self._commit([], gone, outcome)
        self._set_intent([])
        done += gone
        if not done:
            return registered > 0  # a local edit found just now is news too
        self._log_applied([v for v, _ in done])
        return True

    def _log_applied(self, versions: list[FileVersion]) -> None:
        """One line per file for the everyday trickle; one summary line for a bulk
        round (an initial sync of thousands of DAGs), with the files at DEBUG."""
        bulk = len(versions) > LOG_EACH_UP_TO
        for v in versions:
            log.log(logging.DEBUG if bulk else logging.INFO, "folder %s: %s %s from %s",
                    self.id, "deleted" if v.deleted else "updated", v.path, v.origin)
        if bulk:
            deleted = sum(1 for v in versions if v.deleted)
            origins = ", ".join(sorted({v.origin for v in versions}))
            log.info("folder %s: %d file(s) updated, %d deleted, from %s", self.id,
                     len(versions) - deleted, deleted, origins)

    def _set_intent(self, versions: list[FileVersion]) -> None:
        key = f"intent:{self.id}"
        if versions or self.index.get_meta(key):
            self.index.set_meta(key, json.dumps([v.to_wire() for v in versions]))

    def _replay_intent(self) -> None:
        """After a crash mid-apply: record each intended version that is on disk as it
        was meant to be (content hash checked), so it is not mistaken for a local edit."""
        raw = self.index.get_meta(f"intent:{self.id}")
        if not raw:
            return
        landed: list[tuple[FileVersion, LocalStat | None]] = []
        try:
            intended = [FileVersion.from_wire(w) for w in json.loads(raw)]
        except ValueError:
            intended = []  # a torn note: the scan treats what landed as local changes
        for v in intended:
            if v.deleted:
                if _lstat_key(self.root, v.path) is None:
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
        self._set_intent([])

    def _apply_decided(
        self,
        decided: list[tuple[Planned, FileVersion | None, Action]],
        contents: dict[str, bytes],
        staged: list[tuple[fsio.StagedWrite, FileVersion]],
        done: list[tuple[FileVersion, LocalStat | None]],
        outcome: BatchOutcome,
        movable: dict[str, list[str]],
        dirs: fsio.Dirs | None = None,
    ) -> None:
        for p, local, action in decided:
            result = action.result
            if action.kind is ActionKind.KEEP or result is None:
                continue
            try:
                seen = local is not None and _conflict_key(local, result) in self._archived
                if action.archive_local and local is not None and not seen:
                    self._archive(local, result)
                if action.conflict and local is not None and not seen:
                    outcome.conflicts += 1
                    loser = p.remote if result.same_content(local) else local
                    log.warning("folder %s: conflict on %s: the version from %s wins over "
                                "the one from %s", self.id, result.path, result.origin,
                                loser.origin)
                sources = movable.get(result.hash) if action.kind is ActionKind.FETCH else None
                if sources and result.kind is Kind.FILE and not result.deleted:
                    src = sources.pop()
                    fsio.move_file(self.root, src, result.path)
                    fsio.set_meta(self.root, result.path, result.mode, result.mtime_ns)
                    item: tuple[FileVersion, LocalStat | None] | None = (
                        result, _stat_of(self.root, result.path))
                    log.info("folder %s: moved %s to %s", self.id, src, result.path)
                else:
                    item = self._apply_one(action, result, contents, staged, dirs)
            except PathRefused as exc:
                outcome.refused.append((result.path, str(exc)))
                log.warning("folder %s: refused remote entry %r: %s", self.id, result.path, exc)
                continue
            except OSError as exc:
                outcome.failed.append((result.path, exc.strerror or str(exc)))
                log.error("folder %s: cannot apply %s: %s", self.id, result.path,
                          exc.strerror or exc)
                continue
            if item is not None:
                done.append(item)

    def _apply_one(
        self,
        action: Action,
        result: FileVersion,
        contents: dict[str, bytes],
        staged: list[tuple[fsio.StagedWrite, FileVersion]],
        dirs: fsio.Dirs | None = None,
    ) -> tuple[FileVersion, LocalStat | None] | None:
        if action.kind is ActionKind.DELETE:
            fsio.remove_file(self.root, result.path)
            return result, None
        if action.kind is ActionKind.RECORD:
            if not result.deleted and result.kind is Kind.FILE:
                fsio.set_meta(self.root, result.path, result.mode, result.mtime_ns)
                return result, _stat_of(self.root, result.path)
            return result, None
        if result.kind is Kind.SYMLINK:
            fsio.make_symlink(self.root, result.path, result.target)
            return result, _stat_of(self.root, result.path)
        data = contents.get(result.path)
        if data is None or content_hash(data) != result.hash:
            raise OSError(0, "content not available (changed during the round)")
        staged.append((fsio.stage_file(self.root, result.path, data, result.mode,
                                       result.mtime_ns, self.temp_dir, dirs), result))
        return None

    def _archive(self, loser: FileVersion, winner: FileVersion) -> None:
        if loser.kind is not Kind.FILE:
            return
        try:
            data = fsio.read_range(self.root, loser.path, 0, self.max_file_size)
        except FileNotFoundError:
            return
        entry = self.archive.store(self.id, loser.path, data, loser_origin=loser.origin,
                                   winner_origin=winner.origin, mode=loser.mode)
        self._archived.add(_conflict_key(loser, winner))
        log.warning("folder %s: losing version of %s from %s kept as conflict #%d", self.id,
                    loser.path, loser.origin, entry.id)

    # --- serving peers ---------------------------------------------------------------

    def publishes(self, v: FileVersion) -> bool:
        """A receive-only folder announces only the cluster's versions it applied."""
        return not (self.cfg.mode is FolderMode.RECEIVE_ONLY and v.origin == self.node)

    def read_for_peer(
        self, path: str, want_hash: str, offset: int, size: int, dirs: fsio.Dirs | None = None
    ) -> bytes | None:
        """Content for a peer's Request, or None when we no longer hold that version."""
        v = self.version(path)
        if v is None or v.deleted or v.hash != want_hash or v.kind is not Kind.FILE:
            return None
        return fsio.read_range(self.root, path, offset, size, dirs)


def _conflict_key(loser: FileVersion, winner: FileVersion) -> tuple[str, str, str, bool]:
    return (loser.path, loser.hash, winner.hash, winner.deleted)


class _Listing:
    """Which names exist on disk, one listdir per directory instead of a stat per path
    (an empty peer receiving thousands of files asks about every one)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._names: dict[str, frozenset[str]] = {}

    def has(self, path: str) -> bool:
        parent, _, name = path.rpartition("/")
        names = self._names.get(parent)
        if names is None:
            try:
                names = frozenset(os.listdir(self.root / parent))
            except OSError:
                names = frozenset()
            self._names[parent] = names
        return name in names


def _chunks(planned: list[Planned]) -> list[list[Planned]]:
    """A small first chunk, so writing starts while the next ones are still fetched,
    then APPLY_CHUNK at a time (each chunk pays two syncfs and one transaction)."""
    chunks = [planned[:FIRST_CHUNK]]
    chunks += [planned[i : i + APPLY_CHUNK] for i in range(FIRST_CHUNK, len(planned), APPLY_CHUNK)]
    return chunks


def _same_device(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


def _parents(path: str) -> list[str]:
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


def _lstat_key(root: Path, rel: str) -> tuple[int, int, int] | None:
    try:
        st = (root / rel).lstat()
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns, st.st_ino


def _stat_of(root: Path, rel: str) -> LocalStat | None:
    key = _lstat_key(root, rel)
    return LocalStat(*key) if key else None
