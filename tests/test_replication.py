"""Real agents on loopback: convergence, deletes, renames, no resurrection, conflicts."""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from tests.cluster import snapshot, wait_converged, wait_until, write


def test_two_nodes_converge_content_mode_and_mtime(cluster: Any) -> None:
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    write(a.dags / "etl.py", "from airflow import DAG\n")
    write(a.dags / "team/x/report.py", "print('r')\n", mode=0o750)
    os.utime(a.dags / "etl.py", ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    write(b.dags / "from_b.py", "b = 1\n")
    a.start()
    b.start()
    wait_converged([a, b])
    st = (b.dags / "team/x/report.py").stat()
    assert st.st_mode & 0o777 == 0o750
    assert (b.dags / "etl.py").stat().st_mtime_ns == 1_600_000_000_123_456_789
    assert (a.dags / "from_b.py").read_text() == "b = 1\n"


def _seqs(state: Any, query: str, *args: str) -> int:
    """One number from a node's index database (read beside its running agent)."""
    con = sqlite3.connect(f"file:{state / 'index.db'}?mode=ro", uri=True, timeout=5)
    try:
        row = con.execute(query, args).fetchone()
    finally:
        con.close()
    return int(row[0]) if row else -1


def test_after_an_initial_sync_the_receiver_tells_the_sender_where_it_is(
    cluster: Any,
) -> None:
    """While B applies A's files its records are all A's own versions, which B never
    sends back, and it tells A where its index stands once the round is over, not after
    each chunk: A's saved progress of B then reaches B's last record, so a reconnect
    does not make B send them all again."""
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    for i in range(1200):  # a bulk round of several chunks
        write(a.dags / f"d{i % 12}/dag_{i}.py", f"dag = {i}\n")
    a.start()
    b.start()
    wait_converged([a, b])
    b_last = _seqs(b.state, "SELECT last_seq FROM folders WHERE folder='dags'")
    assert b_last >= 1200
    wait_until(lambda: _seqs(a.state, "SELECT seq FROM peer_progress WHERE peer='b' AND "
                             "folder='dags'") >= b_last, 10, "A to hold B's progress")


def test_three_nodes_propagate_edits_deletes_and_renames(cluster: Any) -> None:
    nodes = cluster("a", "b", "c")
    a, b, c = nodes.values()
    for i in range(20):
        write(a.dags / f"d{i % 4}/dag_{i}.py", f"dag = {i}\n")
    for n in nodes.values():
        n.start()
    wait_converged(nodes.values())
    (b.dags / "d0/dag_0.py").unlink()
    os.rename(c.dags / "d1/dag_1.py", c.dags / "d1/renamed.py")
    write(a.dags / "d2/dag_2.py", "dag = 'edited'\n")
    wait_converged(nodes.values())
    for n in nodes.values():
        assert not (n.dags / "d0/dag_0.py").exists()
        assert (n.dags / "d1/renamed.py").read_text() == "dag = 1\n"
        assert not (n.dags / "d1/dag_1.py").exists()
        assert (n.dags / "d2/dag_2.py").read_text() == "dag = 'edited'\n"


def test_node_down_during_delete_does_not_resurrect_it(cluster: Any) -> None:
    nodes = cluster("a", "b", "c")
    a, b, c = nodes.values()
    write(a.dags / "old.py", "old = 1\n")
    write(a.dags / "keep.py", "keep = 1\n")
    for n in nodes.values():
        n.start()
    wait_converged(nodes.values())
    c.stop()
    (a.dags / "old.py").unlink()
    wait_until(lambda: not (b.dags / "old.py").exists(), 20, "delete reaching b")
    assert (c.dags / "old.py").exists()  # c was down: it still has it
    c.start()
    wait_converged(nodes.values())
    time.sleep(2.5)  # more than a scan interval: nothing comes back
    for n in nodes.values():
        assert not (n.dags / "old.py").exists()
        assert (n.dags / "keep.py").exists()


def test_concurrent_edits_pick_one_winner_and_archive_the_loser(cluster: Any) -> None:
    nodes = cluster("a", "b", "c")
    a, b, _c = nodes.values()
    write(a.dags / "shared.py", "v = 0\n")
    for n in nodes.values():
        n.start()
    wait_converged(nodes.values())
    a.stop()
    b.stop()
    write(a.dags / "shared.py", "v = 'from a'\n")
    time.sleep(0.05)
    write(b.dags / "shared.py", "v = 'from b, later'\n")
    a.start()
    b.start()
    wait_converged(nodes.values())
    for n in nodes.values():
        assert (n.dags / "shared.py").read_text() == "v = 'from b, later'\n"
        assert sorted(snapshot(n.dags)) == ["shared.py"]  # no conflict copy in the folder
    listing = a.run("conflicts", "list", check=True).stdout
    assert "shared.py" in listing and "a" in listing
    archived = next(a.state.joinpath("conflicts/dags").glob("shared.py.*"))
    assert archived.read_text() == "v = 'from a'\n"
    diff = a.run("conflicts", "show", "1", "--diff", check=True).stdout
    assert "-v = 'from a'" in diff and "+v = 'from b, later'" in diff

    restored = a.run("conflicts", "restore", "1", check=True)
    assert "restored" in restored.stdout
    wait_converged(nodes.values())
    for n in nodes.values():
        assert (n.dags / "shared.py").read_text() == "v = 'from a'\n"


def test_sync_with_a_peer_down_exits_zero_and_names_it(cluster: Any) -> None:
    nodes = cluster("a", "b", "c")
    a, b, _c = nodes.values()
    write(a.dags / "x.py", "x = 1\n")
    b.start()  # c stays down
    res = a.run("sync", "--timeout", "20")
    assert res.returncode == 0, res.stderr
    assert "peer c" in res.stderr
    assert (b.dags / "x.py").read_text() == "x = 1\n"
    strict = a.run("sync", "--strict", "--timeout", "20")
    assert strict.returncode == 1
    assert "peer c" in strict.stderr


def test_sync_without_agents_both_ways_and_dry_run(cluster: Any) -> None:
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    write(a.dags / "from_a.py", "a = 1\n")
    write(b.dags / "from_b.py", "b = 1\n")
    b.start()
    dry = a.run("sync", "--dry-run", "--peer", "b", check=True)
    assert "from_b.py" in dry.stdout and "from_a.py" in dry.stdout
    assert not (a.dags / "from_b.py").exists()
    a.run("sync", "--peer", "b", check=True)
    wait_converged([a, b], 10)


def test_sync_asks_the_running_agent(cluster: Any) -> None:
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    a.start()
    b.start()
    write(a.dags / "late.py", "late = 1\n")
    res = a.run("sync", check=True)
    assert "local agent" in res.stderr
    assert (b.dags / "late.py").read_text() == "late = 1\n"


def test_bad_config_exits_2_with_one_line(cluster: Any) -> None:
    nodes = cluster("a")
    a = nodes["a"]
    a.config.write_text(a.config.read_text().replace("send-receive", "sendrecv"))
    for cmd in (("agent",), ("sync",), ("status",)):
        res = a.run(*cmd)
        assert res.returncode == 2, (cmd, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and "folders[0].mode" in lines[0] and "Traceback" not in res.stderr


def test_a_chmod_alone_propagates(cluster: Any) -> None:
    nodes = cluster("a", "b", extra={"scan_interval": "300s"})
    a, b = nodes["a"], nodes["b"]
    write(a.dags / "run.sh", "echo hi\n", mode=0o644)
    a.start()
    b.start()
    wait_converged([a, b])
    os.chmod(a.dags / "run.sh", 0o755)
    wait_until(lambda: (b.dags / "run.sh").stat().st_mode & 0o777 == 0o755, 10, "the chmod")


def test_sync_shows_progress_on_a_terminal(cluster: Any) -> None:
    import pty
    import subprocess
    import sys

    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    for i in range(30):
        write(b.dags / f"p{i}.py", f"p = {i}\n")
    b.start()
    primary, secondary = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "dagsync", "sync", "--config", str(a.config)],
            stderr=secondary, stdout=subprocess.PIPE, timeout=60,
        )
        os.close(secondary)
        out = b""
        while True:
            try:
                chunk = os.read(primary, 65536)
            except OSError:
                break
            if not chunk:
                break
            out += chunk
    finally:
        os.close(primary)
    assert proc.returncode == 0
    assert b"1/1 peer(s) done, 30 file(s) received" in out


def test_a_rebuilt_index_adopts_the_cluster_without_resurrecting_or_losing(
    cluster: Any,
) -> None:
    nodes = cluster("a", "b", extra={"scan_interval": "300s"})
    a, b = nodes["a"], nodes["b"]
    write(a.dags / "deleted_meanwhile.py", "d = 1\n")
    write(a.dags / "edited_meanwhile.py", "e = 1\n")
    write(a.dags / "same.py", "s = 1\n")
    a.start()
    b.start()
    wait_converged([a, b])
    b.stop()
    (a.dags / "deleted_meanwhile.py").unlink()
    write(a.dags / "edited_meanwhile.py", "e = 2\n")
    write(a.dags / "edited_on_both.py", "a's edit\n")
    time.sleep(1)  # let a record them
    for leftover in b.state.glob("index.db*"):
        leftover.unlink()  # b's database is lost
    write(b.dags / "only_on_b.py", "b = 1\n")
    write(b.dags / "edited_on_both.py", "b's later edit, made without an index\n")
    b.start()
    wait_converged([a, b], 20)
    assert not (b.dags / "deleted_meanwhile.py").exists()
    assert (b.dags / "edited_meanwhile.py").read_text() == "e = 2\n"
    assert (a.dags / "only_on_b.py").read_text() == "b = 1\n"
    assert (a.dags / "same.py").read_text() == "s = 1\n"
    # The cluster's versions win over what b found on disk. Stale copies (older than the
    # cluster's change) just go; b's own later edit is kept in b's archive.
    assert (b.dags / "edited_on_both.py").read_text() == "a's edit\n"
    archived = {p.name.split(".py")[0]: p for p in (b.state / "conflicts/dags").iterdir()}
    assert set(archived) == {"edited_on_both"}
    assert archived["edited_on_both"].read_text() == "b's later edit, made without an index\n"
