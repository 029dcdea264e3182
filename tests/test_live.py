"""The live agent: watching, pushing, dead and hung peers, restarts, reloads."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import tmpfs_mounted, wait_converged, wait_until, write

LIVE = {"scan_interval": "300s"}  # only the watcher can move changes in time


def test_change_reaches_every_node_without_sync_and_a_burst_converges(cluster: Any) -> None:
    nodes = cluster("a", "b", "c", extra=LIVE)
    for n in nodes.values():
        n.start()
    a, b, c = nodes.values()
    write(a.dags / "hello.py", "hello = 1\n")
    wait_until(lambda: (b.dags / "hello.py").exists() and (c.dags / "hello.py").exists(), 10,
               "a single edit to arrive")
    for i in range(500):
        write(c.dags / f"burst/{i % 10}/dag_{i}.py", f"dag = {i}\n" * 20)
    wait_converged(nodes.values(), 30)
    assert len(list((a.dags / "burst").rglob("*.py"))) == 500


def test_a_hung_peer_does_not_delay_the_others(cluster: Any) -> None:
    nodes = cluster("a", "b", "c", extra=LIVE)
    for n in nodes.values():
        n.start()
    a, b, c = nodes.values()
    write(a.dags / "first.py", "x = 1\n")
    wait_converged(nodes.values())
    c.signal(signal.SIGSTOP)
    try:
        for i in range(5):
            write(a.dags / f"during_{i}.py", f"x = {i}\n")
            started = time.monotonic()
            wait_until(lambda i=i: (b.dags / f"during_{i}.py").exists(), 5, "b while c hangs")
            assert time.monotonic() - started < 3
    finally:
        c.signal(signal.SIGCONT)
    wait_converged(nodes.values(), 60)


def test_killed_agent_catches_up_without_resurrecting_deletes(cluster: Any) -> None:
    nodes = cluster("a", "b", "c", extra=LIVE)
    for n in nodes.values():
        n.start()
    a, b, c = nodes.values()
    write(a.dags / "doomed.py", "d = 1\n")
    write(a.dags / "edited.py", "e = 1\n")
    wait_converged(nodes.values())
    c.kill()
    (a.dags / "doomed.py").unlink()
    write(b.dags / "edited.py", "e = 2\n")
    write(b.dags / "new.py", "n = 1\n")
    wait_until(lambda: not (a.dags / "doomed.py").exists()
               and (a.dags / "new.py").exists(), 10, "a and b to agree")
    c.start()
    wait_converged(nodes.values(), 30)
    assert not (c.dags / "doomed.py").exists()
    assert (c.dags / "edited.py").read_text() == "e = 2\n"


def test_line_topology_converges_both_ways(cluster: Any) -> None:
    links = {"a": ["b"], "b": ["a", "c"], "c": ["b"]}
    nodes = cluster("a", "b", "c", links=links, extra=LIVE)
    for n in nodes.values():
        n.start()
    a, _b, c = nodes.values()
    write(a.dags / "from_a.py", "a = 1\n")
    write(c.dags / "from_c.py", "c = 1\n")
    wait_converged(nodes.values(), 20)
    (c.dags / "from_a.py").unlink()
    wait_converged(nodes.values(), 20)
    assert not (a.dags / "from_a.py").exists()


def test_slow_writer_arrives_only_whole(cluster: Any) -> None:
    nodes = cluster("a", "b", extra=LIVE)
    for n in nodes.values():
        n.start()
    a, b = nodes["a"], nodes["b"]
    pieces = [f"# piece {i}\n".encode() + b"x = 1\n" * 200 for i in range(10)]
    whole = b"".join(pieces)
    seen: set[bytes] = set()
    stop = threading.Event()

    def watch_b() -> None:
        while not stop.is_set():
            with contextlib.suppress(FileNotFoundError):
                seen.add((b.dags / "slow.py").read_bytes())
            time.sleep(0.002)

    watcher = threading.Thread(target=watch_b)
    watcher.start()
    try:
        with open(a.dags / "slow.py", "wb") as fh:
            for piece in pieces:
                fh.write(piece)
                fh.flush()
                time.sleep(0.2)
        wait_until(lambda: (b.dags / "slow.py").exists()
                   and (b.dags / "slow.py").read_bytes() == whole, 15, "the whole file")
        time.sleep(0.3)
    finally:
        stop.set()
        watcher.join()
    assert seen == {whole}, f"b saw {len(seen)} versions, sizes {sorted(map(len, seen))}"


def test_sighup_adds_a_peer_and_refuses_a_broken_config(cluster: Any) -> None:
    nodes = cluster("a", "b", links={"a": [], "b": []}, extra=LIVE)
    a, b = nodes["a"], nodes["b"]
    b.peers = [a.peer_entry()]
    b.write_config()
    a.start()
    b.start()
    write(a.dags / "x.py", "x = 1\n")
    time.sleep(1)
    assert not (b.dags / "x.py").exists()  # a does not know b yet: b is refused
    good = a.config.read_text()
    a.config.write_text("node: [this is not valid\n")
    a.signal(signal.SIGHUP)
    wait_until(lambda: "reload refused" in a.log.read_text(), 10, "the refusal")
    assert a.proc is not None and a.proc.poll() is None
    cfg = yaml.safe_load(good)
    cfg["peers"] = [b.peer_entry()]
    a.config.write_text(yaml.safe_dump(cfg))
    a.signal(signal.SIGHUP)
    wait_converged([a, b], 20)


def test_sigterm_stops_within_two_seconds_and_one_agent_per_state_dir(cluster: Any) -> None:
    nodes = cluster("a", "b", extra=LIVE)
    a = nodes["a"]
    a.start()
    second = a.run("agent", timeout=20)
    assert second.returncode == 1 and "another agent" in second.stderr
    started = time.monotonic()
    assert a.stop(timeout=5) == 0
    assert time.monotonic() - started < 2.0
    assert not (a.state / "agent.sock").exists()
    os.kill(os.getpid(), 0)  # the harness itself is fine


def test_watching_survives_the_folder_being_replaced(cluster: Any) -> None:
    nodes = cluster("a", "b", extra=LIVE)
    a, b = nodes["a"], nodes["b"]
    for n in nodes.values():
        n.start()
    write(a.dags / "before.py", "x = 1\n")
    wait_converged(nodes.values())
    # A git-sync style swap: a new directory moved into place under the same path.
    fresh = a.base / "dags.new"
    fresh.mkdir()
    write(fresh / "before.py", "x = 1\n")
    os.utime(fresh / "before.py", ns=((a.dags / "before.py").stat().st_mtime_ns,) * 2)
    os.rename(a.dags, a.base / "dags.old")
    os.rename(fresh, a.dags)
    time.sleep(3)  # the guard notices within a few seconds
    write(a.dags / "after.py", "y = 2\n")
    wait_until(lambda: (b.dags / "after.py").exists(), 10, "a change in the new directory")


def test_a_rename_arrives_as_one_rename_never_missing_or_doubled(cluster: Any) -> None:
    """Airflow must never see a renamed DAG vanish or exist twice: the receiver moves
    the very file it has (same inode) instead of deleting one and writing another."""
    nodes = cluster("a", "b", extra=LIVE)
    for n in nodes.values():
        n.start()
    a, b = nodes["a"], nodes["b"]
    write(a.dags / "old_name.py", "dag = 'renamed'\n")
    write(a.dags / "stays.py", "x = 1\n")
    wait_converged(nodes.values())
    inode_before = (b.dags / "old_name.py").stat().st_ino
    os.makedirs(a.dags / "newdir")
    os.rename(a.dags / "old_name.py", a.dags / "newdir" / "new_name.py")
    wait_converged(nodes.values())
    assert not (b.dags / "old_name.py").exists()
    assert (b.dags / "newdir" / "new_name.py").stat().st_ino == inode_before
    assert "moved old_name.py to newdir/new_name.py" in b.log.read_text()


def test_a_bulk_round_pauses_watching_and_loses_no_local_edit(cluster: Any) -> None:
    """An initial sync of thousands of files stops the receiver's watcher (it would turn
    every written file into an event) and rescans the folder when it ends: a local edit
    made meanwhile still reaches the cluster."""
    nodes = cluster("a", "b", extra=LIVE)
    a, b = nodes.values()
    for i in range(3000):
        write(a.dags / f"team_{i % 20}/dag_{i}.py", f"dag = {i}\n" * 40)
    a.start()
    b.start()
    wait_until(lambda: "bulk round: watching paused" in b.log.read_text(), 60,
               "b to start its bulk round")
    write(b.dags / "written_on_b_during_the_round.py", "local = 1\n")
    wait_converged(nodes.values(), 120)
    assert (a.dags / "written_on_b_during_the_round.py").read_text() == "local = 1\n"
    assert "bulk round over: watching again" in b.log.read_text()
    write(b.dags / "after_the_round.py", "after = 1\n")  # the watcher is back
    wait_until(lambda: (a.dags / "after_the_round.py").exists(), 10, "a watched edit")


def _never_missing(old: Path, new: Path,
                   gaps: list[str]) -> tuple[threading.Event, threading.Thread]:
    """Poll, until the event is set, that `old` or `new` exists; a moment when neither
    did is added to `gaps`. `old` is looked at first: once it is gone, `new` must
    already be there."""
    stop = threading.Event()

    def poll() -> None:
        while not stop.is_set():
            if not old.exists() and not new.exists():
                gaps.append(f"neither {old.name} nor {new} at {time.monotonic():.4f}")
                return

    thread = threading.Thread(target=poll, daemon=True)
    thread.start()
    return stop, thread


def _renames_watched(a: Any, b: Any) -> list[str]:
    """On a, etl.py -> shared/etl.py and shared/top.py -> top.py back to back; the moments
    b held neither name of one of them, polled until both nodes converged."""
    gaps: list[str] = []
    watching = [_never_missing(b.dags / "etl.py", b.dags / "shared/etl.py", gaps),
                _never_missing(b.dags / "shared/top.py", b.dags / "top.py", gaps)]
    os.rename(a.dags / "etl.py", a.dags / "shared/etl.py")
    os.rename(a.dags / "shared/top.py", a.dags / "top.py")
    wait_converged([a, b], 20)
    for stop, thread in watching:
        stop.set()
        thread.join()
    return gaps


def test_a_volume_mounted_inside_the_dag_folder_syncs_both_ways(cluster: Any) -> None:
    """dags/shared is a file system of its own on b (a tmpfs here, a volume in life):
    its files, a new node's initial sync of 600 of them included, land there too (they
    failed with EXDEV, staged in the state dir on the root's file system), b's edits
    there reach a, and renames across the volume's edge arrive without an error."""
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    with tmpfs_mounted(b.dags / "shared", "32m"):
        for i in range(600):
            write(a.dags / f"shared/team_{i % 6}/dag_{i}.py", f"dag = {i}\n")
        write(a.dags / "shared/top.py", "top = 1\n")
        write(a.dags / "etl.py", "etl = 1\n")
        a.start()
        b.start()
        wait_converged([a, b], 60)
        write(a.dags / "shared/team_0/dag_0.py", "dag = 'edited on a'\n")
        write(b.dags / "shared/from_b.py", "b = 1\n")
        wait_converged([a, b], 20)
        assert (b.dags / "shared/team_0/dag_0.py").read_text() == "dag = 'edited on a'\n"
        assert (a.dags / "shared/from_b.py").exists()
        # renames across the volume's edge, both ways: b cannot move the file with one
        # rename(2) there (EXDEV), so it writes the content under the new name first and
        # deletes the old name after; Airflow must never find the DAG under neither name
        assert _renames_watched(a, b) == []
        assert not (b.dags / "etl.py").exists() and (b.dags / "shared/etl.py").exists()
        assert not (b.dags / "shared/top.py").exists() and (b.dags / "top.py").exists()
        assert "cross-device" not in b.log.read_text()
        b.stop()  # before the volume goes


def test_two_renames_at_once_each_arrive_as_a_rename_never_missing(cluster: Any) -> None:
    """Two DAGs renamed back to back (a deploy script, a `git checkout`): the second
    rename's destination may not have settled when the first one's has. Both halves of
    each rename must still travel in one round: before, the second source's delete went
    with the first rename and its new name came a round later, so b briefly had neither."""
    nodes = cluster("a", "b", extra=LIVE)
    a, b = nodes["a"], nodes["b"]
    write(a.dags / "etl.py", "etl = 1\n")
    write(a.dags / "shared/top.py", "top = 1\n")
    a.start()
    b.start()
    wait_converged([a, b], 20)
    inodes = {name: (b.dags / name).stat().st_ino for name in ("etl.py", "shared/top.py")}
    for _ in range(3):
        assert _renames_watched(a, b) == []
        assert (b.dags / "shared/etl.py").stat().st_ino == inodes["etl.py"]  # moved, not
        assert (b.dags / "top.py").stat().st_ino == inodes["shared/top.py"]  # rewritten
        os.rename(a.dags / "shared/etl.py", a.dags / "etl.py")  # and back, for the next try
        os.rename(a.dags / "top.py", a.dags / "shared/top.py")
        wait_converged([a, b], 20)
