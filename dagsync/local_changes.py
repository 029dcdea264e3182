"""Local changes: what a scan or the watcher saw in the folder becomes new versions in
the index (renames paired, deletes guarded against an unmounted folder, edits on a
receive-only folder refused and archived)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from dagsync import fsio
from dagsync.clock import VersionVector, hlc_pack
from dagsync.errors import PathRefused
from dagsync.folder_state import FolderState, lstat_key
from dagsync.index import LocalStat
from dagsync.leases import being_written
from dagsync.model import FileVersion, FolderMode, Kind
from dagsync.scanner import Observed, ScanResult, scan_folder, scan_paths

log = logging.getLogger("dagsync.engine")
REGISTER_SLICE = 2000  # scanned files turned into versions and recorded at once


@dataclass
class ScanSummary:
    new_versions: int = 0
    problems: int = 0
    duration_s: float = 0.0


class LocalChanges(FolderState):
    """Registration of local changes; runs under the folder lock, blocking parts in a
    worker thread."""

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
        (the same test scan_paths makes, so nothing it would report is dropped). Paths
        an apply round is writing are held in `recheck` until the round ends."""
        out = []
        for path in paths:
            if path in self.applying:  # our own write in progress: look once it is recorded
                self.recheck.add(path)
                continue
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
        vanished = self._vanished(result, limited_to)
        taken: set[str] = set()  # paths registered so far: never a rename's source
        count = 0
        # In slices: a first scan of 20,000 files made as many versions at once, and
        # their short lives left ~5 MB of allocator arenas fragmented for good.
        changed = result.changed
        for at in range(0, max(len(changed), 1), REGISTER_SLICE):
            items: list[tuple[FileVersion, LocalStat | None]] = []
            for obs in changed[at : at + REGISTER_SLICE]:
                if lstat_key(self.root, obs.path) != (obs.size, obs.mtime_ns, obs.inode):
                    continue  # changed again since; the next scan takes it
                if obs.kind is Kind.FILE and being_written(str(self.root / obs.path)):
                    log.debug("folder %s: %s is still open for writing; later", self.id,
                              obs.path)
                    continue  # its close (or the next scan) brings it back
                item = self._observed_version(obs)
                if item is not None:
                    items.append(item)
            if at == 0:
                items.extend(vanished)
            items.extend(self._rename_sources(items, taken))
            count += self._record(items)
        return count

    def _record(self, items: list[tuple[FileVersion, LocalStat | None]]) -> int:
        """Write one slice of a registration to the index and the records."""
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
        self, items: list[tuple[FileVersion, LocalStat | None]], taken: set[str]
    ) -> list[tuple[FileVersion, LocalStat | None]]:
        """The other half of a rename: a new file whose content a recorded file had, where
        that file is now gone from disk, is a move. Its delete joins this registration, so
        peers get both in one batch and move the file (inotify may report the two halves
        half a second apart: watchdog holds a lone IN_MOVED_FROM). `taken` (paths already
        registered) grows by `items` and the sources found."""
        taken.update(v.path for v, _ in items)
        out: list[tuple[FileVersion, LocalStat | None]] = []
        for v, _ in items:
            if v.deleted or v.kind is not Kind.FILE or not self._is_new_version(v):
                continue
            for source in self.index.paths_with_hash(self.id, v.hash):
                rec = self.records.get(source)
                if (rec is None or source in taken or rec.version.deleted
                        or rec.version.hash != v.hash
                        or lstat_key(self.root, source) is not None):
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
        present = result.present
        for path in candidates:
            if path in present or path.startswith(blocked):
                continue  # decided without building the record: most paths, every scan
            v = self.records[path].version
            if v.deleted:
                continue
            if self.ignore.ignored(path, False) or lstat_key(self.root, path) is not None:
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


def _is_empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False
