"""SimNode: one node's index, disk, conflict archive and clocks, in memory.

What survives a crash is `Durable`: the index (records with their sequence numbers, the
index id, the counter, each peer's progress), the folder's bytes and the conflict archive.
A local edit and an applied batch each change it in one atomic step, as one SQLite
transaction plus the staged renames do on a real node. Everything else -- the HLC since
the last clean close, connections, queued batches, fetches, retry timers -- is lost.

The methods mirror dagsync.engine.FolderEngine (whose local registration is in
local_changes.py and remote apply in remote_apply.py); each says which function it mirrors.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace

from dagsync.clock import HybridClock, VersionVector, hlc_ms
from dagsync.engine import MAX_AHEAD_MS, content_hash
from dagsync.index import SEQ_GAP
from dagsync.model import Action, ActionKind, FileVersion, Kind
from dagsync.reconcile import decide
from tests.sim.config import Rules
from tests.sim.history import History

EPOCH_MS = 1_700_000_000_000  # simulated time 0 on the wall clocks


@dataclass
class Rec:
    version: FileVersion
    seq: int


@dataclass(frozen=True)
class ArchiveEntry:
    path: str
    data: bytes
    loser: FileVersion
    winner: FileVersion


@dataclass
class Durable:
    """The part of a node a kill -9 does not take away."""

    index_id: int
    last_seq: int = 0
    records: dict[str, Rec] = field(default_factory=dict)
    disk: dict[str, bytes] = field(default_factory=dict)
    archive: list[ArchiveEntry] = field(default_factory=list)
    progress: dict[str, tuple[int, int]] = field(default_factory=dict)  # peer -> (id, seq)
    hlc_meta: int = 0  # node.py saves the HLC only on a clean close
    own_counter: int = 0  # engine: saved in the index meta before each new local version
    open_flag: bool = False  # index.py's "index.open": set while running


@dataclass
class WallClock:
    """A skewed, drifting wall clock read off the simulated time."""

    offset_ms: int
    drift_ppm: int

    def read(self, now_ms: int) -> int:
        return EPOCH_MS + now_ms + self.offset_ms + now_ms * self.drift_ppm // 1_000_000


@dataclass
class Planned:
    remote: FileVersion
    action: Action


@dataclass
class Outcome:
    """engine.BatchOutcome, reduced to what the puller looks at."""

    applied: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)
    conflicts: int = 0

    @property
    def complete(self) -> bool:
        return not self.failed


class SimNode:
    def __init__(
        self, name: str, index_id: int, wall: WallClock, now: Callable[[], int],
        history: History, rules: Rules, trace: Callable[[str], None],
    ) -> None:
        self.name = name
        self.d = Durable(index_id=index_id)
        self.wall = wall
        self._now = now
        self.history = history
        self.rules = rules
        self.trace = trace
        self.alive = False
        self.clock = HybridClock(0)
        self.on_commit: Callable[[SimNode], None] = lambda node: None
        self.conflicts = 0
        self.changed_ms: dict[str, int] = {}  # when each path's record last changed
        self.start()

    # --- clocks (engine.SharedClock) ---------------------------------------------------

    def wall_ms(self) -> int:
        return self.wall.read(self._now())

    def tick(self) -> int:
        return self.clock.tick(self.wall_ms())

    def observe(self, remote: int) -> int:
        """SharedClock.observe: move past a peer's clock unless it is absurdly ahead."""
        now = self.wall_ms()
        if hlc_ms(remote) > now + MAX_AHEAD_MS:
            return self.clock.tick(now)
        return self.clock.observe(remote, now)

    # --- lifecycle (node.Node, index.Index._setup) -------------------------------------

    def start(self) -> None:
        """Open the index: a counter not closed cleanly moves ahead by SEQ_GAP."""
        assert not self.alive
        if self.d.open_flag:
            self.d.last_seq += SEQ_GAP
        self.d.open_flag = True
        self.clock = HybridClock(self.d.hlc_meta)
        self.alive = True

    def crash(self) -> None:
        """kill -9: only Durable remains."""
        self.alive = False

    def stop(self) -> None:
        """A clean close: node.close saves the HLC, index.close clears the open flag."""
        self.d.hlc_meta = self.clock.last
        self.d.open_flag = False
        self.alive = False

    # --- the index ---------------------------------------------------------------------

    def version(self, path: str) -> FileVersion | None:
        rec = self.d.records.get(path)
        return rec.version if rec else None

    @property
    def max_seq(self) -> int:
        return max((r.seq for r in self.d.records.values()), default=0)

    def since(self, seq: int, limit: int) -> list[Rec]:
        """index.Index.since: records above `seq`, in sequence order."""
        recs = sorted((r for r in self.d.records.values() if r.seq > seq), key=lambda r: r.seq)
        return recs[:limit]

    def _put(self, versions: Iterable[FileVersion]) -> None:
        """index.Index.put: each version replaces its path's record with the next seq."""
        for v in versions:
            self.d.last_seq += 1
            self.d.records[v.path] = Rec(v, self.d.last_seq)
            self.changed_ms[v.path] = self._now()
        if self.rules.hlc_restore == "durable":
            self.d.hlc_meta = self.clock.last  # patched: saved in the same transaction

    def live_files(self) -> dict[str, bytes]:
        return dict(sorted(self.d.disk.items()))

    # --- local edits (engine._observed_version, _vanished) ------------------------------

    def _stamp(self, prev: FileVersion | None) -> tuple[VersionVector, int]:
        """The vector and HLC of a new local version on top of `prev`, as
        engine._observed_version / _vanished make them: `prev.vv.bump(node, floor=wall
        seconds)` and `_hlc_after(prev)` = max(tick, prev.hlc + 1); or patched."""
        if self.rules.vv_floor == "hlc" and prev is not None:
            self.clock.last = max(self.clock.last, prev.hlc)  # the patch moves the clock
        tick = self.tick()
        hlc = tick if prev is None else max(tick, prev.hlc + 1)
        if self.rules.vv_floor == "own":
            # engine._vv_floor: above every counter this node ever used, and >= wall s.
            self.d.own_counter = max(self.d.own_counter + 1, self.wall_ms() // 1000)
            floor = self.d.own_counter
        else:
            floor = hlc if self.rules.vv_floor == "hlc" else self.wall_ms() // 1000
        vv = (prev.vv if prev else VersionVector()).bump(self.name, floor)
        return vv, hlc

    def write(self, path: str, data: bytes, mode: int) -> FileVersion | None:
        """The user writes `data` to `path`; the scan turns it into a version."""
        v = self._observed(path, data, mode)
        self.d.disk[path] = data
        if v is not None:
            self._put([v])
            self.trace(f"{self.name} write {path} {v.hash[:6]} hlc={v.hlc} vv={v.vv.to_wire()}")
            self.on_commit(self)
        return v

    def delete(self, path: str) -> FileVersion | None:
        tomb = self._vanished(path)
        if tomb is None:
            return None
        del self.d.disk[path]
        self._put([tomb])
        self.trace(f"{self.name} delete {path} hlc={tomb.hlc} vv={tomb.vv.to_wire()}")
        self.on_commit(self)
        return tomb

    def rename(self, src: str, dst: str) -> None:
        """A rename is seen by the scan as a new file plus a vanished one, in one put."""
        cur = self.version(src)
        if src == dst or cur is None or cur.deleted:
            return
        data = self.d.disk[src]
        made = self._observed(dst, data, cur.mode)
        tomb = self._vanished(src)
        assert tomb is not None
        self.d.disk[dst] = data
        del self.d.disk[src]
        self._put([v for v in (made, tomb) if v is not None])
        self.trace(f"{self.name} rename {src} -> {dst}")
        self.on_commit(self)

    def _observed(self, path: str, data: bytes, mode: int) -> FileVersion | None:
        """engine._observed_version: a new version on top of the record, or None when the
        bytes and metadata are those of the record."""
        prev = self.version(path)
        digest = content_hash(data)
        mtime_ns = self.wall_ms() * 1_000_000
        if prev is not None and not prev.deleted and (
            prev.kind, prev.hash, prev.target, prev.mode, prev.mtime_ns
        ) == (Kind.FILE, digest, "", mode, mtime_ns):
            return None
        vv, hlc = self._stamp(prev)
        v = FileVersion(
            path=path, kind=Kind.FILE, size=len(data), mtime_ns=mtime_ns, mode=mode,
            hash=digest, deleted=False, vv=vv, hlc=hlc, origin=self.name,
        )
        self.history.create(self.name, v, prev, data, self._now())
        return v

    def _vanished(self, path: str) -> FileVersion | None:
        """engine._vanished: the tombstone of a file that is gone."""
        v = self.version(path)
        if v is None or v.deleted:
            return None
        vv, hlc = self._stamp(v)
        tomb = replace(v, size=0, hash="", target="", deleted=True, vv=vv, hlc=hlc,
                       origin=self.name)
        self.history.create(self.name, tomb, v, None, self._now())
        return tomb

    # --- remote versions (engine.plan, _apply_locked, _apply_one, _commit, _archive) ----

    def plan(self, entries: Iterable[FileVersion]) -> list[Planned]:
        planned = []
        for remote in entries:
            action = decide(self.version(remote.path), remote, self_node=self.name)
            if action.kind is not ActionKind.KEEP:
                planned.append(Planned(remote, action))
        return planned

    def apply(self, planned: list[Planned], contents: dict[str, bytes], outcome: Outcome) -> bool:
        """Decide again against the current records (they may have moved while the
        content was fetched), archive losers, then commit everything in one step."""
        done: list[tuple[FileVersion, FileVersion | None]] = []
        staged: list[tuple[FileVersion, FileVersion | None, bytes]] = []
        for p in planned:
            local = self.version(p.remote.path)
            action = decide(local, p.remote, self_node=self.name)
            result = action.result
            if action.kind is ActionKind.KEEP or result is None:
                continue
            if action.archive_local and local is not None:
                self._archive(local, result)
            if action.conflict and local is not None:
                outcome.conflicts += 1
                self.conflicts += 1
            if action.kind is ActionKind.DELETE:
                self.d.disk.pop(result.path, None)
                done.append((result, local))
            elif action.kind is ActionKind.RECORD:
                done.append((result, local))
            else:
                data = contents.get(result.path)
                if data is None or content_hash(data) != result.hash:
                    outcome.failed.append((result.path, "content not available"))
                    continue
                staged.append((result, local, data))
        for result, local, data in staged:  # fsio.commit: the staged files appear at once
            self.d.disk[result.path] = data
            done.append((result, local))
        if not done:
            return False
        for result, _ in done:
            self.observe(result.hlc)
        self._put(v for v, _ in done)
        for result, local in done:
            fetched = any(s[0] is result for s in staged)
            self.history.replaced(self.name, local, result, self.d.disk.get(result.path), fetched)
            outcome.applied.append(result.path)
            self.trace(f"{self.name} apply {result.path} from {result.origin} "
                       f"{'delete' if result.deleted else result.hash[:6]} hlc={result.hlc}")
        self.on_commit(self)
        return True

    def _archive(self, loser: FileVersion, winner: FileVersion) -> None:
        if loser.kind is not Kind.FILE:
            return
        data = self.d.disk.get(loser.path)
        if data is None:
            return
        self.d.archive.append(ArchiveEntry(loser.path, data, loser, winner))
        self.trace(f"{self.name} archive {loser.path} {content_hash(data)[:6]} "
                   f"(lost to {winner.origin})")

    # --- serving peers (engine.read_for_peer) ------------------------------------------

    def read_for_peer(self, path: str, want_hash: str, offset: int, size: int) -> bytes | None:
        v = self.version(path)
        if v is None or v.deleted or v.hash != want_hash or v.kind is not Kind.FILE:
            return None
        return self.d.disk[path][offset : offset + size]
