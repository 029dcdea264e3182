"""Bulk rounds stage chunk N+1 while chunk N commits (remote_apply._apply_overlapped),
and chunks staged during a slow commit share the next one: every file lands whole with
its metadata, the write-ahead notes end empty, a chunk that deletes is committed before
the next one writes, and a crash mid-round is adopted on restart, never taken for local
edits. Real engines on real files; the crash test kills a real agent."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sqlite3
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dagsync import engine, fsio, remote_apply
from dagsync.archive import ConflictArchive
from dagsync.clock import VersionVector
from dagsync.config import FolderConfig
from dagsync.index import Index
from dagsync.model import FileVersion, FolderMode, Kind
from dagsync.paths import is_temp_name
from tests.cluster import wait_converged, write
from tests.peers import MemoryPeer


def make_folder(base: Path, node: str) -> engine.FolderEngine:
    (base / "dags").mkdir(parents=True, exist_ok=True)
    (base / "state").mkdir(parents=True, exist_ok=True)
    (base / "state" / "tmp").mkdir(exist_ok=True)
    return engine.FolderEngine(
        FolderConfig("dags", base / "dags", FolderMode.SEND_RECEIVE, ()), node,
        Index(base / "state" / "index.db"), ConflictArchive(base / "state"),
        engine.SharedClock(0), 1 << 20, temp_dir=base / "state" / "tmp")


async def scanned(folder: engine.FolderEngine) -> list[FileVersion]:
    await folder.open()
    await folder.scan()
    return [folder.records[p].version for p in sorted(folder.records)]


def on_disk(root: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o7777,
                                             p.stat().st_mtime_ns)
            for p in root.rglob("*") if p.is_file()}


async def sender_with(base: Path, count: int, content: Any = None
                      ) -> tuple[engine.FolderEngine, list[FileVersion], dict[str, bytes]]:
    """Node a with `count` DAG files in 30 team folders, scanned: its versions and
    their content, as an empty peer would fetch them."""
    a = make_folder(base, "a")
    for i in range(count):
        write(a.root / f"team_{i % 30}/dag_{i}.py", content(i) if content else f"dag = {i}\n")
    versions = await scanned(a)
    return a, versions, {v.path: (a.root / v.path).read_bytes() for v in versions}


def intent_notes(folder: engine.FolderEngine) -> list[str | None]:
    return [folder.index.get_meta(folder._intent_key(s)) for s in range(engine.INTENT_SLOTS)]


def notes_cleared(folder: engine.FolderEngine) -> bool:
    """Every write-ahead note empty or never written."""
    return all(n in ("[]", None) for n in intent_notes(folder))


async def test_bulk_round_lands_every_chunk_and_clears_its_notes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rng = random.Random(3)
    a, versions, data = await sender_with(  # chunks of 44, 474, 474, 308
        tmp_path / "a", 1300, lambda i: rng.randbytes(rng.randint(0, 3000)))
    for i in range(0, 1300, 7):
        (a.root / f"team_{i % 30}/dag_{i}.py").chmod(0o755)
    await a.scan()  # the new modes
    versions = [a.records[p].version for p in sorted(a.records)]

    # Which halves ran at the same time: the overlap is the point of the bulk path.
    spans: dict[str, list[tuple[float, float]]] = {"stage": [], "commit": []}
    lock = threading.Lock()

    def timed(name: str, original: Any) -> Any:
        def run(self: Any, *args: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(self, *args)
            finally:
                with lock:
                    spans[name].append((t0, time.perf_counter()))
        return run

    committed: list[int] = []
    original_group = remote_apply.RemoteApply._commit_group

    def counted(self: Any, chunks: Any, *args: Any) -> Any:
        committed.extend(c.number for c in chunks)
        return original_group(self, chunks, *args)

    monkeypatch.setattr(remote_apply.RemoteApply, "_commit_group", counted)
    for name, method in (("stage", "_stage_chunk"), ("commit", "_commit_group")):
        monkeypatch.setattr(remote_apply.RemoteApply, method,
                            timed(name, getattr(remote_apply.RemoteApply, method)))
    b = make_folder(tmp_path / "b", "b")
    await b.open()
    outcome = await b.apply_batch(versions, MemoryPeer(data))

    assert outcome.failed == [] and outcome.refused == []
    assert len(outcome.applied) == 1300
    assert on_disk(b.root) == on_disk(a.root)
    assert {p: r.version for p, r in b.records.items()} == {v.path: v for v in versions}
    assert all(b.records[v.path].stat is not None for v in versions)
    assert notes_cleared(b)
    assert b.applying == set()
    assert list((tmp_path / "b" / "state" / "tmp").iterdir()) == []
    assert len(spans["stage"]) == 4
    assert committed == [1, 2, 3, 4]  # each chunk committed once, in order
    overlapped = [s for s in spans["stage"] for c in spans["commit"]
                  if s[0] < c[1] and c[0] < s[1]]
    assert overlapped, "no chunk was staged while another committed"
    a.index.close()
    b.index.close()


class ByHash(MemoryPeer):
    """A peer that still holds every version it announced (content by hash)."""

    async def fetch(self, v: FileVersion) -> bytes:
        return self.contents[v.hash]

    async def fetch_many(self, vs: list[FileVersion]) -> list[bytes | BaseException]:
        return [self.contents[v.hash] for v in vs]


def fail_recording(monkeypatch: pytest.MonkeyPatch, folder: engine.FolderEngine,
                   nth: int) -> None:
    """The folder's `nth` index write fails as on a full disk (the others go through)."""
    put, calls = folder.index.put, []

    def failing_put(*args: Any, **kw: Any) -> Any:
        calls.append(1)
        if len(calls) == nth:
            raise OSError(28, "No space left on device")
        return put(*args, **kw)

    monkeypatch.setattr(folder.index, "put", failing_put)


def first_syncfs_waits_for_staging(monkeypatch: pytest.MonkeyPatch, chunks: int) -> list[float]:
    """The first syncfs (chunk 1's commit) returns only once `chunks` chunks are staged,
    as on a disk slower than staging, whatever this machine's speed: the chunks staged
    meanwhile share the next commit. Returns the list of syncfs calls."""
    calls: list[float] = []
    staged = [0]
    progress = threading.Condition()
    original_syncfs, original_stage = fsio._syncfs, remote_apply.RemoteApply._stage_chunk

    def syncfs(fd: int) -> bool:
        calls.append(time.perf_counter())
        if len(calls) == 1:
            with progress:
                assert progress.wait_for(lambda: staged[0] >= chunks, timeout=30)
        return original_syncfs(fd)

    def stage(self: Any, *args: Any) -> Any:
        try:
            return original_stage(self, *args)
        finally:
            with progress:
                staged[0] += 1
                progress.notify_all()

    monkeypatch.setattr(fsio, "_syncfs", syncfs)
    monkeypatch.setattr(remote_apply.RemoteApply, "_stage_chunk", stage)
    return calls


async def test_chunks_staged_during_a_slow_commit_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a slow disk the chunks staged while a commit waits are committed together
    (up to COMMIT_GROUP): one syncfs for them, not two each, and still every file
    lands, each chunk once, and every note ends empty."""
    a, versions, data = await sender_with(tmp_path / "a", 1300)  # chunks 44, 474, 474, 308
    b = make_folder(tmp_path / "b", "b")
    await b.open()
    groups: list[list[int]] = []
    original = remote_apply.RemoteApply._commit_group

    def recorded(self: Any, chunks: Any, *args: Any) -> Any:
        groups.append([c.number for c in chunks])
        return original(self, chunks, *args)

    monkeypatch.setattr(remote_apply.RemoteApply, "_commit_group", recorded)
    syncfs = first_syncfs_waits_for_staging(monkeypatch, 3)
    outcome = await b.apply_batch(versions, MemoryPeer(data))
    assert outcome.failed == []
    assert on_disk(b.root) == on_disk(a.root)
    assert {p: r.version for p, r in b.records.items()} == {v.path: v for v in versions}
    assert remote_apply.COMMIT_GROUP == 2
    # chunk 4 is committed alone: by the round's end (final), or, staged after 2 and 3's
    # commit ended, on its own and recorded by an empty last commit
    assert [g for g in groups if g] == [[1], [2, 3], [4]]
    # one syncfs a group (its content, and the renames of the group before), one more
    # for the last group's renames (or the empty commit's, before recording group 4)
    assert len(syncfs) == 4
    assert notes_cleared(b) and b.applying == set()
    a.index.close()
    b.index.close()


async def test_no_file_is_recorded_before_a_syncfs_after_its_placement(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A group's record waits for the next group's syncfs: between placing files and
    recording them there is always a syncfs (a power cut never leaves a record of a
    file whose rename was lost), and a round takes one syncfs a group, plus one."""
    a, versions, data = await sender_with(tmp_path / "a", 1300)
    b = make_folder(tmp_path / "b", "b")
    await b.open()
    events: list[str] = []
    real_sync, real_place, real_put = fsio._syncfs, fsio._rename_all, b.index.put

    def sync(fd: int) -> bool:
        events.append("sync")
        return real_sync(fd)

    def place(*args: Any) -> None:
        events.append("place")
        real_place(*args)

    def put(*args: Any, **kw: Any) -> Any:
        events.append("record")
        return real_put(*args, **kw)

    monkeypatch.setattr(fsio, "_syncfs", sync)
    monkeypatch.setattr(fsio, "_rename_all", place)
    monkeypatch.setattr(b.index, "put", put)
    outcome = await b.apply_batch(versions, MemoryPeer(data))
    assert outcome.failed == [] and on_disk(b.root) == on_disk(a.root)
    assert notes_cleared(b) and b.applying == set()
    places = events.count("place")
    assert places >= 3 and events.count("record") == places
    for i, event in enumerate(events):
        if event == "record":
            last_place = max(j for j in range(i) if events[j] == "place")
            assert "sync" in events[last_place:i], events
    assert events.count("sync") == places + 1
    a.index.close()
    b.index.close()


async def test_a_bulk_round_takes_in_later_batches_as_it_runs(tmp_path: Path) -> None:
    """An initial sync arrives as many index batches; the round that began with the
    first applies the ones handed to it meanwhile (`more`) in the same pipeline: one
    round (the watcher paused once), a path sent again in a later batch ends at its
    later version, a delete in a later batch removes what an earlier one wrote."""
    a, versions, data = await sender_with(tmp_path / "a", 1500)
    first, second = versions[:700], versions[700:1400]
    for i in (3, 4):  # edited after the first batch was sent
        write(a.root / f"team_{i % 30}/dag_{i}.py", f"dag = {i}  # edited\n")
    (a.root / "team_5/dag_5.py").unlink()
    await a.scan()
    third = [a.records[f"team_{i}/dag_{i}.py"].version for i in (3, 4, 5)] + versions[1400:]
    assert sum(v.deleted for v in third) == 1
    by_hash = {versions[i].hash: data[versions[i].path] for i in range(len(versions))}
    by_hash.update({v.hash: (a.root / v.path).read_bytes() for v in third if not v.deleted})

    b = make_folder(tmp_path / "b", "b")
    await b.open()
    bulk: list[bool] = []

    async def on_bulk(starting: bool) -> None:
        bulk.append(starting)

    b.on_bulk = on_bulk
    waiting = [second, third]
    asked: list[int] = []

    def more() -> list[FileVersion]:
        asked.append(len(b.records))  # what had been recorded when the round asked
        return waiting.pop(0) if waiting else []

    outcome = await b.apply_batch(first, ByHash(by_hash), more=more)
    assert outcome.failed == [] and outcome.refused == []
    assert bulk == [True, False]
    assert asked[0] < 700  # asked while its own chunks were still being applied
    assert on_disk(b.root) == on_disk(a.root)
    assert {p: r.version for p, r in b.records.items()} == {
        p: r.version for p, r in a.records.items()}
    assert notes_cleared(b)
    assert b.applying == set()
    assert b.applied_total == 1500 + 3
    a.index.close()
    b.index.close()


async def test_a_batch_taken_in_mid_round_is_screened_like_the_first(
    tmp_path: Path,
) -> None:
    """SPEC guarantee 8 for the batches a bulk round takes in while it runs: hostile
    paths among them are refused and nothing lands outside the folder; the rest lands."""
    a, versions, data = await sender_with(tmp_path / "a", 1200)
    hostile = [dataclasses.replace(versions[0], path=bad)
               for bad in ("../escape.py", "/etc/escape.py", "team_1/../../escape.py")]
    b = make_folder(tmp_path / "b", "b")
    await b.open()
    waiting = [hostile + versions[700:]]

    def more() -> list[FileVersion]:
        return waiting.pop(0) if waiting else []

    outcome = await b.apply_batch(versions[:700], ByHash(
        {v.hash: data[v.path] for v in versions}), more=more)
    assert sorted(path for path, _ in outcome.refused) == sorted(v.path for v in hostile)
    assert outcome.failed == []
    assert on_disk(b.root) == on_disk(a.root)
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["dags", "state"]
    assert not (tmp_path / "escape.py").exists()
    a.index.close()
    b.index.close()


async def test_a_chunk_that_deletes_is_committed_before_the_next_writes(
    tmp_path: Path,
) -> None:
    """Deleting the last files of a directory removes it; a next chunk staged meanwhile
    would place its files into the removed directory. The round must still land all."""
    a = make_folder(tmp_path / "a", "a")
    for i in range(64):
        write(a.root / f"x/old_{i}.py", f"old = {i}\n")
    first = await scanned(a)
    b = make_folder(tmp_path / "b", "b")
    await b.open()
    data = {v.path: (a.root / v.path).read_bytes() for v in first}
    assert (await b.apply_batch(first, MemoryPeer(data))).failed == []

    for i in range(64):
        (a.root / f"x/old_{i}.py").unlink()
    (a.root / "x").rmdir()
    for i in range(600):
        write(a.root / f"x/new_{i}.py", f"new = {i}\n")
    await a.scan()
    tombstones = [a.records[f"x/old_{i}.py"].version for i in range(64)]
    assert all(v.deleted for v in tombstones)
    creates = [a.records[f"x/new_{i}.py"].version for i in range(600)]
    data = {v.path: (a.root / v.path).read_bytes() for v in creates}
    # the first chunk (64) holds every delete, the next ones write into the same dir
    outcome = await b.apply_batch(tombstones + creates, MemoryPeer(data))
    assert outcome.failed == []
    assert on_disk(b.root) == on_disk(a.root)
    assert sorted(p.name for p in (b.root / "x").iterdir()) == sorted(
        f"new_{i}.py" for i in range(600))
    a.index.close()
    b.index.close()


async def test_both_chunks_notes_are_adopted_after_a_crash(tmp_path: Path) -> None:
    """Killed with two chunks in flight: each had its own note; both are replayed."""
    b = make_folder(tmp_path / "b", "b")
    versions = []
    for slot, name in enumerate(("committing.py", "staged.py")):
        data = f"dag = {name!r}\n".encode()
        v = FileVersion(name, Kind.FILE, len(data), 1_700_000_000_000_000_000, 0o644,
                        engine.content_hash(data), False, VersionVector.of({"a": slot + 1}),
                        (1 << 40) + slot, "a")
        b.index.set_meta(b._intent_key(slot), json.dumps([v.to_wire()]))
        (b.root / name).write_bytes(data)
        versions.append(v)
    await b.open()
    assert [b.version(v.path) for v in versions] == versions
    assert (await b.scan()).new_versions == 0  # not local edits
    assert notes_cleared(b)
    b.index.close()


async def test_a_round_failing_mid_commit_leaves_notes_for_what_landed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Recording chunk 3 fails after its files were put in place (the index's disk
    full, say, or the process dying there) while chunk 4 was being staged: a restart
    adopts chunk 3's files as the cluster's versions from the notes, the staged chunk
    leaves no temp file and no path held in `applying`."""
    monkeypatch.setattr(remote_apply, "COMMIT_GROUP", 1)  # one chunk per commit
    a, versions, data = await sender_with(tmp_path / "a", 1300)
    b = make_folder(tmp_path / "b", "b")
    await b.open()
    fail_recording(monkeypatch, b, 3)
    with pytest.raises(OSError):
        await b.apply_batch(versions, MemoryPeer(data))
    assert b.applying == set()
    assert list((tmp_path / "b" / "state" / "tmp").iterdir()) == []
    landed = on_disk(b.root)
    assert 44 + 474 < len(landed) < 1300  # chunk 3 in place, chunk 4 not
    b.index.close()

    restarted = make_folder(tmp_path / "b", "b")
    await restarted.open()
    assert {p: restarted.version(p) for p in landed} == {
        v.path: v for v in versions if v.path in landed}
    assert (await restarted.scan()).new_versions == 0  # nothing taken for a local edit
    a.index.close()
    restarted.index.close()


async def test_a_group_failing_to_record_is_adopted_from_each_chunks_note(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Chunks 2 and 3 committed as one group, their files in place, then recording them
    fails: a restart adopts every file from the two chunks' notes, none is taken for a
    local edit, and the staged chunk 4 leaves no temp file."""
    a, versions, data = await sender_with(tmp_path / "a", 1300)
    b = make_folder(tmp_path / "b", "b")
    await b.open()
    first_syncfs_waits_for_staging(monkeypatch, 3)  # 2 and 3 staged during 1's commit
    fail_recording(monkeypatch, b, 2)
    with pytest.raises(OSError):
        await b.apply_batch(versions, MemoryPeer(data))
    sizes = [len(c) for c in remote_apply._chunks([SimpleNamespace(remote=v) for v in versions])]
    assert len(b.records) == sizes[0] and b.applying == set()
    assert list((tmp_path / "b" / "state" / "tmp").iterdir()) == []
    landed = on_disk(b.root)
    assert len(landed) == sum(sizes[:3])  # chunks 2 and 3 placed, not recorded
    # chunks 2 and 3's notes, and staged chunk 4's, which names nothing that landed
    assert sum(n not in ("[]", None) for n in intent_notes(b)) == 3
    b.index.close()

    restarted = make_folder(tmp_path / "b", "b")
    await restarted.open()
    assert {p: r.version for p, r in restarted.records.items()} == {
        v.path: v for v in versions if v.path in landed}
    assert (await restarted.scan()).new_versions == 0
    assert notes_cleared(restarted)
    a.index.close()
    restarted.index.close()


async def test_a_cancelled_round_lets_its_threads_finish_and_holds_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An agent stopping mid-round cancels the apply while a chunk is being committed
    and the next staged: the commit completes (what it placed is recorded), the staged
    chunk's temps go, nothing stays held, and a later round finishes the job."""
    a, versions, data = await sender_with(tmp_path / "a", 1300)
    b = make_folder(tmp_path / "b", "b")
    await b.open()
    loop = asyncio.get_running_loop()
    task: asyncio.Task[Any] | None = None
    commits = []
    monkeypatch.setattr(remote_apply, "COMMIT_GROUP", 1)  # one chunk per commit
    original = remote_apply.RemoteApply._commit_group

    def commit_cancelled_midway(self: Any, *args: Any) -> Any:
        commits.append(1)
        if len(commits) == 2 and task is not None:
            loop.call_soon_threadsafe(task.cancel)
            time.sleep(0.2)  # still committing when the cancellation arrives
        return original(self, *args)

    monkeypatch.setattr(remote_apply.RemoteApply, "_commit_group", commit_cancelled_midway)
    task = asyncio.create_task(b.apply_batch(versions, MemoryPeer(data)))
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not b.lock.locked() and b.applying == set()
    assert list((tmp_path / "b" / "state" / "tmp").iterdir()) == []
    landed = on_disk(b.root)
    assert 64 <= len(landed) < 1300
    assert set(landed) == {p for p, r in b.records.items() if not r.version.deleted}

    monkeypatch.setattr(remote_apply.RemoteApply, "_commit_group", original)
    outcome = await b.apply_batch(versions, MemoryPeer(data))
    assert outcome.failed == []
    assert on_disk(b.root) == on_disk(a.root)
    a.index.close()
    b.index.close()


async def test_the_next_apply_drops_a_failed_rounds_stale_note(tmp_path: Path) -> None:
    """A note left in slot 1 by a round that failed is dropped when the next apply starts,
    as slot 0's always was (replayed much later it could bring back an old version)."""
    a, versions, data = await sender_with(tmp_path / "a", 3)
    b = make_folder(tmp_path / "b", "b")
    await b.open()
    b.index.set_meta(b._intent_key(1), json.dumps([versions[0].to_wire()]))
    assert (await b.apply_batch(versions, MemoryPeer(data))).failed == []
    assert intent_notes(b)[:2] == ["[]", "[]"] and notes_cleared(b)
    a.index.close()
    b.index.close()


def _records(node: Any) -> dict[str, str]:
    """path -> origin of every live record in a stopped node's index."""
    db = sqlite3.connect(f"file:{node.state / 'index.db'}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT path, origin FROM files WHERE folder='dags'"))
    finally:
        db.close()


@pytest.mark.soak
def test_kill9_during_a_bulk_round_leaves_no_torn_file_and_no_false_local_edit(
    cluster: Any,
) -> None:
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    rng = random.Random(11)
    for i in range(2500):
        write(a.dags / f"team_{i % 40}/dag_{i}.py", rng.randbytes(rng.randint(500, 6000)))
    source = {p.relative_to(a.dags).as_posix(): p.read_bytes()
              for p in a.dags.rglob("*") if p.is_file()}
    a.start()
    for _cycle in range(4):
        b.start()
        time.sleep(rng.uniform(0.3, 1.2))
        b.kill()
        for p in b.dags.rglob("*"):
            if p.is_file() and not is_temp_name(p.name):
                rel = p.relative_to(b.dags).as_posix()
                assert p.read_bytes() == source[rel], f"torn or foreign file {rel}"
    b.start()
    wait_converged([a, b], 120)
    a.stop()
    b.stop()
    assert [p for p in b.dags.rglob("*") if is_temp_name(p.name)] == []
    # nor in its private temp dir: temp files and staged copies of new directories
    assert list((b.state / "tmp").iterdir()) == []
    # every version still the one a made: nothing b wrote was taken for b's own edit
    for node in (a, b):
        origins = _records(node)
        assert len(origins) == 2500
        assert set(origins.values()) == {"a"}, node.name


def test_chunks_end_where_a_directory_ends_when_that_keeps_half_of_them() -> None:
    """So that a new directory's files fall in one chunk (staged whole, one rename), as
    often as chunks of at least half the size allow; a path is never lost or repeated."""
    def planned(paths: list[str]) -> list[Any]:  # _chunks reads only .remote
        return [SimpleNamespace(remote=SimpleNamespace(path=p, kind=Kind.FILE, deleted=False,
                                                       size=1000)) for p in paths]

    size, first = remote_apply.APPLY_CHUNK, remote_apply.FIRST_CHUNK
    # directories of 300 files: the 2nd chunk ends after the 2nd directory's last file
    paths = [f"d{i // 300:02d}/f{i:05d}.py" for i in range(2000)]
    chunks = remote_apply._chunks(planned(paths))
    assert [p.remote.path for c in chunks for p in c] == paths
    assert first == 64 and size == 512  # the sizes below follow from these
    # the 2nd chunk cannot end at d00's end (under half): full; the others end at a
    # directory's end, so d02, d03 and d04 are each in one chunk
    assert [len(c) for c in chunks] == [64, 512, 324, 300, 300, 500]
    dirs_of = [{p.remote.path.split("/")[0] for p in c} for c in chunks]
    assert dirs_of[2:] == [{"d01", "d02"}, {"d03"}, {"d04"}, {"d05", "d06"}]
    # one directory bigger than a chunk: chunks of the full size
    chunks = remote_apply._chunks(planned([f"big/f{i:05d}.py" for i in range(1600)]))
    assert [len(c) for c in chunks] == [64, 512, 512, 512]
    # tiny chunks still move on; a later batch's first chunk ends at a directory too
    assert [len(c) for c in remote_apply._chunks(planned(["a/1", "a/2", "b/3"]), 1)] == [1, 2]
    assert [len(c) for c in remote_apply._chunks(planned(paths), size)] == [
        300, 300, 300, 300, 300, 500]
    assert remote_apply._chunks([]) == [[]]


def test_a_chunk_holds_at_most_chunk_bytes_of_content() -> None:
    """A chunk's content sits in memory from its fetch until it is staged, beside the
    next chunk's: 512 big files must not make one chunk (nor 64 the first)."""
    mib = 1024**2
    assert remote_apply.CHUNK_BYTES // mib == 32  # the counts below follow from it

    def planned(sizes: list[int], deleted: tuple[int, ...] = ()) -> list[Any]:
        return [SimpleNamespace(remote=SimpleNamespace(
            path=f"data/f{i:04d}.csv", kind=Kind.FILE, deleted=i in deleted,
            size=0 if i in deleted else size)) for i, size in enumerate(sizes)]

    def lengths(sizes: list[int], deleted: tuple[int, ...] = (), first: int = 64) -> list[int]:
        return [len(c) for c in remote_apply._chunks(planned(sizes, deleted), first)]

    assert lengths([10 * mib] * 10) == [3, 3, 3, 1]  # 30 MiB each, the first one too
    assert lengths([100 * mib, 1000, 100 * mib]) == [1, 1, 1]  # a bigger file: a chunk alone
    assert lengths([16 * mib, 16 * mib, 1]) == [2, 1]  # exactly the budget fits
    assert lengths([16 * mib] * 4, deleted=(1,)) == [3, 1]  # a delete fetches nothing
    assert lengths([1000] * 1200) == [64, 512, 512, 112]  # small files: counts decide


async def test_a_bulk_round_of_big_files_stages_them_a_budget_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every file lands, and no chunk handed to staging held more than the budget of
    content (a file bigger than the budget alone)."""
    rng = random.Random(5)
    sizes = [rng.randint(0, 40_000) for _ in range(600)]
    for i in (3, 250, 251, 599):
        sizes[i] = 300_000
    a, versions, data = await sender_with(tmp_path / "a", 600, lambda i: rng.randbytes(sizes[i]))
    b = make_folder(tmp_path / "b", "b")
    await b.open()
    monkeypatch.setattr(remote_apply, "CHUNK_BYTES", 200_000)
    held: list[tuple[int, int]] = []  # (files, bytes) of each chunk staged
    original = remote_apply.RemoteApply._stage_chunk

    def staged(self: Any, planned: Any, contents: dict[str, bytes], *args: Any) -> Any:
        held.append((len(contents), sum(len(c) for c in contents.values())))
        return original(self, planned, contents, *args)

    monkeypatch.setattr(remote_apply.RemoteApply, "_stage_chunk", staged)
    outcome = await b.apply_batch(versions, MemoryPeer(data))
    assert outcome.failed == []
    assert on_disk(b.root) == on_disk(a.root)
    assert len(held) > 600 * 20_000 // 200_000  # the budget, not 512 files, cut them
    assert all(size <= 200_000 or files == 1 for files, size in held), held
    assert sum(files for files, _ in held) == 600
    a.index.close()
    b.index.close()
