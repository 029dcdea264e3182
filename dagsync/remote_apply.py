"""Remote apply: peers' versions are screened, decided against ours (reconcile.decide),
fetched and verified (fetching.py), then written durably under a write-ahead intent,
with renames moved in one rename(2) and every losing version archived. Also restores the
cluster's version of files edited on a receive-only folder."""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections import deque
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass, field

from dagsync import fsio
from dagsync.errors import PathRefused
from dagsync.fetching import Fetch, fetch_all
from dagsync.folder_state import (
    INTENT_SLOTS,
    BatchOutcome,
    Planned,
    content_hash,
    stat_of,
    with_parents,
)
from dagsync.index import LocalStat, Record
from dagsync.local_changes import LocalChanges
from dagsync.model import Action, ActionKind, FileVersion, FolderMode, Kind
from dagsync.paths import check_relpath, symlink_target_ok
from dagsync.reconcile import decide
from dagsync.scanner import scan_paths

log = logging.getLogger("dagsync.engine")

BULK_ROUND = 512  # a round this big pauses the folder's watcher (see FolderState.on_bulk)
FIRST_CHUNK = 64
APPLY_CHUNK = 512  # files written and recorded per step; the next chunk is fetched meanwhile
# A chunk's content is held in memory from its fetch until it is staged, and the next
# chunk's is fetched meanwhile: a chunk ends before its content would pass this (a file
# bigger than it is a chunk of its own), so 512 big files never sit in memory at once.
CHUNK_BYTES = 32 * 1024**2
# Staged chunks one commit may make durable together. Each commit pays a syncfs (~20 ms
# here; it also makes the group before's renames durable, _commit_group); when the disk is
# slower than staging, chunks wait and share it.
# Groups of 4 were no faster and kept ~2 MiB more of an idle receiver's heap (each chunk
# waiting for a commit keeps its objects alive; docs/initial-sync.md).
COMMIT_GROUP = 2
# in flight: a group placed, waiting for its record, one committing, the next filling up
assert INTENT_SLOTS >= 3 * COMMIT_GROUP
LOG_EACH_UP_TO = 20  # applied files logged one per line; more make one summary line

# Further remote entries a bulk round takes in while it runs: the next index batch already
# waiting, or () when none is (peer.py: the batches of an initial sync stream through one
# round instead of each new round draining the fetch pipeline first).
More = Callable[[], Sequence[FileVersion]]


class RemoteApply(LocalChanges):
    """Applying peers' versions. A LocalChanges: a file edited here since it was recorded
    is registered before deciding, so it is archived, never overwritten unseen."""

    def screen(
        self, remote: FileVersion, dirs: dict[str, tuple[bool, bool]] | None = None
    ) -> str | None:
        """Why a remote entry must be refused, or None. SPEC guarantee 8. `dirs`
        remembers directory answers over a batch (thousands of entries, a few dirs)."""
        try:
            check_relpath(remote.path)
        except PathRefused as exc:
            return str(exc)
        reldir, _, name = remote.path.rpartition("/")
        memo = {} if dirs is None else dirs
        known = memo.get(reldir)
        if known is None:
            known = memo[reldir] = (self._in_ignored_dir(reldir, {}),
                                    self.ignore.clean_dir(reldir))
        in_ignored, clean = known
        if in_ignored:
            return "inside an ignored directory"
        if self.ignore.ignored_child(remote.path, name, False, clean):
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
        dirs: dict[str, tuple[bool, bool]] = {}
        for remote in entries:
            reason = self.screen(remote, dirs)
            if reason is not None:
                outcome.refused.append((remote.path, reason))
                continue
            action = decide(self.version(remote.path), remote, self_node=self.node)
            if action.kind is not ActionKind.KEEP:
                planned.append(Planned(remote, action))
        return planned

    async def apply_batch(
        self, entries: Iterable[FileVersion], fetch: Fetch, *, dry_run: bool = False,
        more: More | None = None, recorded: Callable[[list[Record]], None] | None = None,
    ) -> BatchOutcome:
        """Decide every remote entry, fetch what is needed, and apply it durably. A bulk
        round also applies what `more` hands it while it runs. `recorded` is called, from
        a worker thread, with the records of each step as they are written."""
        outcome = BatchOutcome(recorded=recorded)
        planned = self.plan(entries, outcome)
        self._log_refused(outcome.refused)
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
        big = len(planned) >= BULK_ROUND
        bulk = self.on_bulk if big else None
        if bulk is not None:
            await bulk(True)
        try:
            if big:
                feed = _Feed(_chunks(planned), self._planner(more, outcome))
                del planned  # the feed holds the chunks; each is dropped once applied
                await self._apply_overlapped(feed, fetch, outcome)
            else:
                await self._apply_pipelined(planned, fetch, outcome)
        finally:
            if bulk is not None:
                await bulk(False)
        self._report(outcome)
        return outcome

    def _log_refused(self, refused: list[tuple[str, str]]) -> None:
        for path, reason in refused:
            log.warning("folder %s: refused remote entry %r: %s", self.id, path, reason)

    def _planner(
        self, more: More | None, outcome: BatchOutcome
    ) -> Callable[[], list[Planned] | None] | None:
        """`more`'s next entries, planned; None when no entries are waiting."""
        if more is None:
            return None

        def planned() -> list[Planned] | None:
            entries = more()
            if not entries:
                return None
            refused = len(outcome.refused)
            plan = self.plan(entries, outcome)
            self._log_refused(outcome.refused[refused:])
            return plan

        return planned

    async def _apply_pipelined(
        self, planned: list[Planned], fetch: Fetch, outcome: BatchOutcome
    ) -> None:
        """Chunk by chunk: the next chunk's content is fetched while this one is written."""
        chunks = _chunks(planned)
        loop = asyncio.get_running_loop()
        fetching = loop.create_task(fetch_all(self.id, chunks[0], fetch, outcome))
        try:
            for i, chunk in enumerate(chunks):
                waited = time.perf_counter()
                contents = await fetching
                if i + 1 < len(chunks):
                    fetching = loop.create_task(fetch_all(self.id, chunks[i + 1], fetch, outcome))
                started = time.perf_counter()
                async with self.lock:
                    changed, cpu = await asyncio.to_thread(self._apply_timed, chunk, contents,
                                                           outcome)
                if self.recheck:  # what the watcher saw meanwhile, now against the records
                    held, self.recheck = list(self.recheck), set()
                    await self.scan_some(held)
                self._log_chunk(i + 1, len(chunk), started - waited,
                                time.perf_counter() - started, cpu)
                if changed:
                    await self._notify()
        finally:
            fetching.cancel()

    async def _apply_overlapped(self, feed: _Feed, fetch: Fetch, outcome: BatchOutcome) -> None:
        """A bulk round: chunks are decided and staged in one worker thread while the
        chunks staged before them are committed in another (syncfs, record the group
        before, put into place: mostly waiting for the disk), and the next chunk's
        content is fetched meanwhile. A commit takes every chunk staged while the one
        before it ran, up to COMMIT_GROUP: when the disk is the slower side, several
        chunks share one syncfs. The chunks come from `feed`, which takes in further index
        batches as the round runs. Each chunk in flight has its own write-ahead note
        (intent slot). A chunk is staged while others are in flight only when it shares
        no path with them and none of them deletes (a delete may remove a directory the
        next chunk is writing into); otherwise they are committed first. The folder lock
        is held for the whole round: its watcher is paused then anyway, and the commit
        thread must never run without it."""
        loop = asyncio.get_running_loop()
        chunk = feed.next()
        if chunk is None:
            return
        fetching = loop.create_task(fetch_all(self.id, chunk, fetch, outcome))
        lanes = _Lanes(loop, self._commit_group, outcome)
        staging: asyncio.Future[_Chunk] | None = None
        number = 0
        async with self.lock:
            try:
                await asyncio.to_thread(self._drop_stale_notes)
                while chunk is not None:
                    waited = time.perf_counter()
                    contents = await fetching
                    following = feed.next()
                    if following is not None:
                        fetching = loop.create_task(
                            fetch_all(self.id, following, fetch, outcome))
                    waited = time.perf_counter() - waited
                    if lanes.blocks(chunk):
                        await self._committed(await lanes.drain())
                    staging = loop.run_in_executor(None, self._stage_chunk, chunk, contents,
                                                   outcome, number % INTENT_SLOTS, True)
                    # shielded: a cancelled await must not lose the thread's result
                    staged, staging = await asyncio.shield(staging), None
                    number += 1
                    staged.number, staged.waited = number, waited
                    del contents
                    await self._committed(await lanes.add(staged))
                    chunk = following
                await self._committed(await lanes.drain())
            finally:
                fetching.cancel()
                await self._settle(staging, lanes)
        if self.recheck:  # what the watcher saw meanwhile, now against the records
            held, self.recheck = list(self.recheck), set()
            await self.scan_some(held)

    async def _settle(self, staging: asyncio.Future[_Chunk] | None, lanes: _Lanes) -> None:
        """After a failed or cancelled overlapped round: let the worker threads finish
        (they cannot be stopped, and must not run on without the lock), then drop the
        chunks that were staged but will not be committed: their temp files, their
        directory fds and their paths in `applying` (their notes stay: they name nothing
        that landed)."""
        if staging is not None:
            await asyncio.wait({staging})
        left = await lanes.settle()
        if staging is not None and not staging.cancelled() and staging.exception() is None:
            left.append(staging.result())
        for pending in left:
            pending.dirs.close()
            fsio.abort([st for st, _ in pending.staged])
            self._mark_applying(pending.slot, None)

    async def _committed(self, groups: list[_Group]) -> None:
        """After groups' commits: log their chunks' timings and wake the senders."""
        for group in groups:
            for chunk in group.chunks:
                self._log_chunk(chunk.number, chunk.files, chunk.waited,
                                chunk.seconds, chunk.cpu)
        if any(group.changed for group in groups):
            await self._notify()

    def _log_chunk(self, number: int, files: int, waited: float, seconds: float,
                   cpu: float) -> None:
        """A chunk's timings at debug level (bench/profile.py chunks reads them)."""
        log.debug("folder %s: chunk %d of %d file(s): waited %.3f s for content, "
                  "applied in %.3f s (%.3f s of it on the CPU)", self.id, number, files,
                  waited, seconds, cpu)

    def _apply_timed(
        self, planned: list[Planned], contents: dict[str, bytes], outcome: BatchOutcome
    ) -> tuple[bool, float]:
        """_apply_locked and the CPU time its thread took: the rest of its wall time went
        to waiting for the disk (syncfs), a core or the GIL (docs/initial-sync.md)."""
        cpu = time.thread_time()
        changed = self._apply_locked(planned, contents, outcome)
        return changed, time.thread_time() - cpu

    def _apply_locked(
        self, planned: list[Planned], contents: dict[str, bytes], outcome: BatchOutcome
    ) -> bool:
        """Runs in a worker thread under the folder lock. True when the index changed
        (something applied, or a local change registered): the senders must be woken."""
        self._drop_stale_notes()
        return self._commit_chunk(self._stage_chunk(planned, contents, outcome, 0), outcome)

    def _drop_stale_notes(self) -> None:
        """A new apply starts with slot 0; a note left in the other slot by a round that
        failed is dropped, as the next apply's note always replaced a failed one's (what
        that round placed unrecorded is found by the scans as local files)."""
        for slot in range(1, INTENT_SLOTS):
            self._set_intent([], slot)

    def _stage_chunk(
        self, planned: list[Planned], contents: dict[str, bytes], outcome: BatchOutcome,
        slot: int, whole_dirs: bool = False,
    ) -> _Chunk:
        """First half of applying a chunk, in a worker thread under the folder lock:
        decide, note the intent, write new content to temp files (and do the moves,
        symlinks and metadata-only changes). _commit_chunk makes it visible. With
        `whole_dirs` (a bulk round: nothing watches the folder meanwhile), the files of a
        new directory are staged in a copy of it, which the commit renames into place."""
        started, cpu = time.perf_counter(), time.thread_time()
        # A file edited locally since we recorded it is a local change: register it
        # first, so deciding against it archives it instead of overwriting it unseen.
        # Paths with no record and nothing on disk need no look (an empty peer's case).
        records = self.records
        present: list[str] = []
        unknown: list[str] = []
        for p in planned:
            (present if p.remote.path in records else unknown).append(p.remote.path)
        present += fsio.existing(self.root, unknown)
        registered = self._register(
            scan_paths(self.root, present, self, self.ignore, self.max_file_size), present
        ) if present else 0
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
                          if a.result is not None and a.kind is not ActionKind.KEEP], slot)
        paths = [p.remote.path for p, _, _ in decided]
        self._mark_applying(slot, with_parents(paths))
        # A staged chunk keeps only what its commit needs: it may wait for a group's
        # commit, and its deciding's objects would pin the allocator's arenas meanwhile.
        creates: list[tuple[Planned, FileVersion | None, Action]] = []
        deletes: list[tuple[Planned, FileVersion | None, Action]] = []
        for d in decided:
            (deletes if d[2].kind is ActionKind.DELETE else creates).append(d)
        chunk = _Chunk(slot, len(decided), deletes, movable, fsio.Dirs(self.root), registered,
                       set(paths))
        del decided
        try:
            self._apply_decided(creates, contents, chunk.staged, chunk.done, outcome, movable,
                                chunk.dirs, whole_dirs)
        except BaseException:
            chunk.dirs.close()
            self._mark_applying(slot, None)
            raise
        chunk.seconds += time.perf_counter() - started
        chunk.cpu += time.thread_time() - cpu
        return chunk

    def _commit_chunk(self, chunk: _Chunk, outcome: BatchOutcome) -> bool:
        """Second half of applying a chunk: _commit_group of the chunk alone."""
        return self._commit_group([chunk], outcome)[0]

    def _commit_group(
        self, chunks: list[_Chunk], outcome: BatchOutcome, placed: _Placed | None = None,
        final: bool = True,
    ) -> tuple[bool, _Placed | None]:
        """Second half, in a worker thread under the folder lock: put the staged files
        of the chunks in place durably and record them, then the deletes (only the last
        chunk of a group may have any). True when the index changed.

        Unless `final`, a group without deletes is placed but not recorded yet: its
        renames become durable with the next commit's first syncfs (the one that makes
        that group's content durable), which saves a syncfs a group. It is returned as
        _Placed, and the next commit, given it as `placed`, records it first. Until then
        its chunks' notes name its files: a crash meanwhile adopts them on restart."""
        assert not any(c.has_deletes for c in chunks[:-1])  # _Lanes.blocks sees to it
        defer = not final and bool(chunks) and not chunks[-1].has_deletes
        started, cpu = time.perf_counter(), time.thread_time()
        done = [d for c in chunks for d in c.done]  # _place adds the staged ones
        gone: list[tuple[FileVersion, LocalStat | None]] = []
        kept: _Placed | None = None
        staged = [s for c in chunks for s in c.staged]
        try:
            try:
                synced: set[int] = set()
                if placed is not None:
                    try:  # one syncfs: this group's content, and the last group's renames
                        device = fsio.sync_root(self.root)
                        synced = {device} if device is not None else set()
                        self._record_landed(placed.done, outcome)
                    except BaseException:
                        fsio.abort([st for st, _ in staged])
                        raise
                    for c in placed.chunks:
                        self._set_intent([], c.slot)
                self._place(staged, done, outcome, chunks[0].dirs if chunks else None,
                            settle=not defer, synced=synced)
            finally:  # closed before a delete removes a directory
                for c in chunks:
                    c.dirs.close()
            if defer:
                kept = _Placed(chunks, done)
            else:
                self._record_landed(done, outcome)
                if chunks:
                    self._apply_decided(chunks[-1].deletes, {}, [], gone, outcome,
                                        chunks[-1].movable)
                    self._record_landed(gone, outcome)
                for c in chunks:
                    self._set_intent([], c.slot)
        finally:  # a kept group's paths stay held until it is recorded
            for c in [*(placed.chunks if placed else ()), *(chunks if kept is None else ())]:
                self._mark_applying(c.slot, None)
        seconds, cpu = time.perf_counter() - started, time.thread_time() - cpu
        for c in chunks:  # the group's commit, shared out by files
            share = c.files / max(1, sum(x.files for x in chunks))
            c.seconds += seconds * share
            c.cpu += cpu * share
        recorded = (placed.done if placed else []) + ([] if kept else done + gone)
        if not recorded:  # a local edit found now is news
            return sum(c.registered for c in chunks) > 0, kept
        self._log_applied([v for v, _ in recorded])
        return True, kept

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

    def _apply_decided(
        self,
        decided: list[tuple[Planned, FileVersion | None, Action]],
        contents: dict[str, bytes],
        staged: list[tuple[fsio.StagedWrite, FileVersion]],
        done: list[tuple[FileVersion, LocalStat | None]],
        outcome: BatchOutcome,
        movable: dict[str, list[str]],
        dirs: fsio.Dirs | None = None,
        whole_dirs: bool = False,
    ) -> None:
        pending: list[tuple[FileVersion, bytes]] = []
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
                item: tuple[FileVersion, LocalStat | None] | None
                if (sources and result.kind is Kind.FILE and not result.deleted
                        and self._move(sources.pop(), result)):
                    item = (result, stat_of(self.root, result.path))
                else:
                    item = self._apply_one(action, result, contents, pending)
            except PathRefused as exc:
                self._refuse(outcome, result.path, exc)
                continue
            except ContentMissing:
                # The ordinary race: the file changed on the peer after it announced this
                # version. The fetch failure is already in outcome.failed, so the round is
                # retried and the peer's newer version arrives with its next index batch.
                log.info("folder %s: %s not applied this round: the peer no longer holds "
                         "the announced version (changed meanwhile); retried", self.id,
                         result.path)
                if not any(path == result.path for path, _ in outcome.failed):
                    outcome.failed.append((result.path, "content not available"))
                continue
            except OSError as exc:
                self._fail(outcome, result.path, exc)
                continue
            if item is not None:
                done.append(item)
        for result, why in self._stage(pending, staged, dirs, whole_dirs):
            if isinstance(why, PathRefused):
                self._refuse(outcome, result.path, why)
            else:
                self._fail(outcome, result.path, why)

    def _move(self, src: str, result: FileVersion) -> bool:
        """Put the file at `src` in place as `result` with one rename(2); False when the
        two names are on different file systems (a volume mounted inside the folder):
        the content is written instead, and the delete of `src` that came with it
        removes the old name afterwards."""
        try:
            fsio.move_file(self.root, src, result.path)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            return False
        fsio.set_meta(self.root, result.path, result.mode, result.mtime_ns)
        log.info("folder %s: moved %s to %s", self.id, src, result.path)
        return True

    def _refuse(self, outcome: BatchOutcome, path: str, why: PathRefused) -> None:
        outcome.refused.append((path, str(why)))
        self._log_refused([(path, str(why))])

    def _fail(self, outcome: BatchOutcome, path: str, exc: OSError) -> None:
        reason = exc.strerror or str(exc)
        outcome.failed.append((path, reason))
        log.error("folder %s: cannot apply %s: %s", self.id, path, reason)

    def _stage(
        self,
        pending: list[tuple[FileVersion, bytes]],
        staged: list[tuple[fsio.StagedWrite, FileVersion]],
        dirs: fsio.Dirs | None,
        whole_dirs: bool = False,
    ) -> list[tuple[FileVersion, OSError | PathRefused]]:
        """Write the verified content of `pending` to temp files in one batch (adding them
        to `staged`); the versions that could not be written, with why."""
        if not pending:
            return []
        writes = [(v.path, data, v.mode, v.mtime_ns) for v, data in pending]
        results = fsio.stage_files(self.root, writes, self.temp_dir, dirs,
                                   whole_dirs=whole_dirs)
        failed: list[tuple[FileVersion, OSError | PathRefused]] = []
        for (version, _), res in zip(pending, results, strict=True):
            if isinstance(res, fsio.StagedWrite):
                staged.append((res, version))
            else:
                failed.append((version, res))
        return failed

    def _apply_one(
        self,
        action: Action,
        result: FileVersion,
        contents: dict[str, bytes],
        pending: list[tuple[FileVersion, bytes]],
    ) -> tuple[FileVersion, LocalStat | None] | None:
        if action.kind is ActionKind.DELETE:
            fsio.remove_file(self.root, result.path)
            return result, None
        if action.kind is ActionKind.RECORD:
            if not result.deleted and result.kind is Kind.FILE:
                fsio.set_meta(self.root, result.path, result.mode, result.mtime_ns)
                return result, stat_of(self.root, result.path)
            return result, None
        if result.kind is Kind.SYMLINK:
            fsio.make_symlink(self.root, result.path, result.target)
            return result, stat_of(self.root, result.path)
        data = contents.get(result.path)
        if data is None or content_hash(data) != result.hash:
            raise ContentMissing("content not available (changed on the peer during the round)")
        pending.append((result, data))  # written with the rest of the chunk (_stage)
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

    def _commit(
        self,
        staged: list[tuple[fsio.StagedWrite, FileVersion]],
        done: list[tuple[FileVersion, LocalStat | None]],
        outcome: BatchOutcome,
        dirs: fsio.Dirs | None = None,
    ) -> None:
        """Make staged files visible at once (one syncfs), then record everything done."""
        self._place(staged, done, outcome, dirs)
        self._record_landed(done, outcome)

    def _place(
        self,
        staged: list[tuple[fsio.StagedWrite, FileVersion]],
        done: list[tuple[FileVersion, LocalStat | None]],
        outcome: BatchOutcome,
        dirs: fsio.Dirs | None = None,
        *,
        settle: bool = True,
        synced: Collection[int] = (),
    ) -> None:
        """Put staged files in place (fsio.commit) and add those that landed to `done`;
        the ones that failed go to `outcome`."""
        if staged:
            failed: dict[str, Exception] = {}
            try:
                fsio.commit([s for s, _ in staged], dirs, settle=settle, synced=synced)
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

    def _record_landed(self, done: list[tuple[FileVersion, LocalStat | None]],
                       outcome: BatchOutcome) -> None:
        """Record what landed in the index and in memory, in one transaction."""
        if not done:
            return
        # Later local edits must beat what we hold. Observing the newest covers the rest,
        # unless the clock refused it (too far ahead): then each one counts.
        newest = max(v.hlc for v, _ in done)
        if self.clock.observe(newest) < newest:
            for version, _ in done:
                self.clock.observe(version.hlc)
        records = self.index.put(self.id, done)
        for rec in records:
            self._remember(rec)
            self.max_seq = max(self.max_seq, rec.seq)
            self.reverts.discard(rec.version.path)
        if outcome.recorded is not None:
            outcome.recorded(records)
        outcome.applied.extend(rec.version.path for rec in records)
        outcome.applied_hlc.extend(rec.version.hlc for rec in records)
        self.applied_total += len(done)

    # --- receive-only folders: restoring the cluster's version ------------------------

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
        contents = await fetch_all(self.id, planned, fetch, outcome)
        async with self.lock:
            await asyncio.to_thread(self._restore_locked, planned, contents, outcome)
        if outcome.applied:
            await self._notify()
        self._report(outcome)
        return len(outcome.applied)

    def _restore_locked(
        self, planned: list[Planned], contents: dict[str, bytes], outcome: BatchOutcome
    ) -> None:
        staged: list[tuple[fsio.StagedWrite, FileVersion]] = []
        done: list[tuple[FileVersion, LocalStat | None]] = []
        pending: list[tuple[FileVersion, bytes]] = []
        for p in planned:
            if p.remote.path not in self.reverts or self.version(p.remote.path) != p.remote:
                continue
            try:
                item = self._apply_one(p.action, p.remote, contents, pending)
            except (OSError, PathRefused, ContentMissing) as exc:
                outcome.failed.append((p.remote.path, getattr(exc, "strerror", None) or str(exc)))
                continue
            if item is not None:
                done.append(item)
        for version, why in self._stage(pending, staged, None):
            outcome.failed.append((version.path, getattr(why, "strerror", None) or str(why)))
        self._commit(staged, done, outcome)
        if done:
            for v, _ in done:
                log.info("folder %s: restored the cluster's version of %s", self.id, v.path)


@dataclass(slots=True)
class _Chunk:
    """A chunk of an apply round between _stage_chunk and _commit_group."""

    slot: int  # its write-ahead note and `applying` part (INTENT_SLOTS)
    files: int  # entries decided
    deletes: list[tuple[Planned, FileVersion | None, Action]]  # done after its files land
    movable: dict[str, list[str]]
    dirs: fsio.Dirs  # the directories its files were staged for; closed by the commit
    registered: int  # local edits found and registered before deciding
    paths: set[str]
    staged: list[tuple[fsio.StagedWrite, FileVersion]] = field(default_factory=list)
    done: list[tuple[FileVersion, LocalStat | None]] = field(default_factory=list)
    number: int = 0  # for the debug log: its place in the round, how long it waited
    waited: float = 0.0  # for its content, and what both halves took (wall, CPU)
    seconds: float = 0.0
    cpu: float = 0.0

    @property
    def has_deletes(self) -> bool:
        return bool(self.deletes)


@dataclass(slots=True)
class _Group:
    """Chunks committed together, and whether their commit changed the index."""

    chunks: list[_Chunk]
    changed: bool = False


@dataclass(slots=True)
class _Placed:
    """A group whose files are in place, recorded by the next commit (_commit_group)."""

    chunks: list[_Chunk]
    done: list[tuple[FileVersion, LocalStat | None]]


class _Lanes:
    """The commit lane of a bulk round. A chunk staged while a commit runs waits; the
    next commit takes every waiting chunk, so a slow disk makes groups (up to
    COMMIT_GROUP) rather than a queue of one syncfs pair per chunk. A group is recorded
    by the commit after it (_commit_group's `placed`), or by drain()."""

    def __init__(self, loop: asyncio.AbstractEventLoop, commit: _Commit,
                 outcome: BatchOutcome) -> None:
        self._loop, self._commit, self._outcome = loop, commit, outcome
        self._committing: asyncio.Future[tuple[bool, _Placed | None]] | None = None
        self._group: list[_Chunk] = []  # what `_committing` commits
        self._waiting: list[_Chunk] = []  # staged, not handed to a commit yet
        self._placed: _Placed | None = None  # in place, for the next commit to record

    def blocks(self, chunk: list[Planned]) -> bool:
        """Whether every chunk in flight must be committed before `chunk` is staged."""
        in_flight = [*self._group, *self._waiting, *(self._placed.chunks if self._placed else ())]
        if not in_flight:
            return False
        paths = [p.remote.path for p in chunk]
        return any(c.has_deletes or not c.paths.isdisjoint(paths) for c in in_flight)

    async def add(self, staged: _Chunk) -> list[_Group]:
        """Hand a staged chunk over; returns the groups whose commit ended meanwhile."""
        self._waiting.append(staged)
        ended = []
        if self._committing is not None and (
                self._committing.done() or len(self._waiting) >= COMMIT_GROUP):
            ended.append(await self._finish())
        if self._committing is None:
            self._start(final=False)
        return ended

    async def drain(self) -> list[_Group]:
        """Commit and record everything in flight; the groups committed."""
        ended = []
        if self._committing is not None:
            ended.append(await self._finish())
        if self._waiting or self._placed is not None:
            self._start(final=True)
            ended.append(await self._finish())
        return ended

    async def settle(self) -> list[_Chunk]:
        """After a failed or cancelled round: let the commit running finish (its thread
        cannot be stopped), record what is in place if that still works, and return the
        staged chunks no commit took."""
        if self._committing is not None:
            await asyncio.wait({self._committing})
            if not self._committing.cancelled() and self._committing.exception() is None:
                self._placed = self._committing.result()[1]
            self._committing = None  # its error, if any, was retrieved: the round raises its own
        if self._placed is not None:
            placed, self._placed = self._placed, None
            try:
                await self._loop.run_in_executor(None, self._commit, [], self._outcome,
                                                 placed, True)
            except Exception as exc:  # its notes stay: a restart adopts what landed
                log.warning("cannot record files already in place: %s", exc)
        return self._waiting

    def _start(self, *, final: bool) -> None:
        self._group, self._waiting = self._waiting, []
        placed, self._placed = self._placed, None
        self._committing = self._loop.run_in_executor(None, self._commit, self._group,
                                                     self._outcome, placed, final)

    async def _finish(self) -> _Group:
        assert self._committing is not None
        # shielded: a cancelled await must not lose the thread's result (_settle waits)
        changed, self._placed = await asyncio.shield(self._committing)
        group, self._committing, self._group = _Group(self._group, changed), None, []
        return group


_Commit = Callable[[list[_Chunk], BatchOutcome, "_Placed | None", bool],
                   tuple[bool, "_Placed | None"]]


class ContentMissing(Exception):
    """The content of a version to write did not arrive (fetch failed or refused)."""


def _conflict_key(loser: FileVersion, winner: FileVersion) -> tuple[str, str, str, bool]:
    return (loser.path, loser.hash, winner.hash, winner.deleted)


def _chunks(planned: list[Planned], first: int = FIRST_CHUNK) -> list[list[Planned]]:
    """A small first chunk, so writing starts while the next ones are still fetched,
    then up to APPLY_CHUNK at a time (each chunk pays two syncfs and one transaction)
    and CHUNK_BYTES of content, ended where a directory's files end when that keeps at
    least half of it."""
    chunks: list[list[Planned]] = []
    start, size = 0, first
    while start < len(planned) or not chunks:
        end = _chunk_end(planned, start, size)
        chunks.append(planned[start:end])
        start, size = end, APPLY_CHUNK
    return chunks


def _chunk_end(planned: list[Planned], start: int, size: int) -> int:
    """Where the chunk from `start` ends: after `size` entries (fewer if their content
    would pass CHUNK_BYTES), or before that after the last file of a directory (a new
    directory whose files all fall in one chunk is staged whole and renamed into place
    at once: fsio.stage_files), never under half."""
    end = _within_budget(planned, start, min(start + size, len(planned)))
    if end >= len(planned):
        return len(planned)
    split = _parent_of(planned[end])  # the directory the next chunk would start in
    cut, least = end, start + max(1, (end - start) // 2)
    while cut > least and _parent_of(planned[cut - 1]) == split:
        cut -= 1
    return cut if _parent_of(planned[cut - 1]) != split else end


def _within_budget(planned: list[Planned], start: int, end: int) -> int:
    """Where the chunk from `start` must end, at `end` at the latest, for its content
    to stay within CHUNK_BYTES; at least one entry."""
    total = 0
    for i in range(start, end):
        v = planned[i].remote
        if v.kind is Kind.FILE and not v.deleted:
            total += v.size
            if total > CHUNK_BYTES and i > start:
                return i
    return end


def _parent_of(p: Planned) -> str:
    return p.remote.path.rpartition("/")[0]


class _Feed:
    """A bulk round's chunks, handed out as its pipeline needs them: the planned entries
    it began with, then those of each index batch it takes in meanwhile (`more`, already
    planned). A batch is cut into chunks of its own: a path appears once in a batch, but
    may again in a later one, and one chunk must not hold a path twice."""

    def __init__(self, chunks: list[list[Planned]],
                 more: Callable[[], list[Planned] | None] | None) -> None:
        self._chunks = deque(c for c in chunks if c)
        self._more = more

    def next(self) -> list[Planned] | None:
        """The next chunk; None when the round has nothing more waiting."""
        while not self._chunks and self._more is not None:
            planned = self._more()
            if planned is None:
                break
            if planned:
                self._chunks.extend(_chunks(planned, APPLY_CHUNK))
        return self._chunks.popleft() if self._chunks else None
