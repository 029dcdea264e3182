"""`ssh://` peers through a real OpenSSH server (SPEC: `serve --stdio` as the forced
command in authorized_keys). Node A lists B as ssh://user@127.0.0.1:PORT of a private
sshd (tests/sshd.py); B lists A at its agent address as usual. A runs `dagsync sync`."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from dagsync.transport import generate_node_key, public_key_line
from tests.cluster import TestNode, converged, snapshot, wait_until, write
from tests.sshd import SshServer, dagsync_command

pytestmark = pytest.mark.sshd

Cluster = Callable[..., dict[str, TestNode]]


def ssh_pair(cluster: Cluster, sshd: SshServer, authorize: bool = True) -> tuple[TestNode,
                                                                                 TestNode]:
    """A and B; A reaches B only through sshd, where A's node key runs B's `serve --stdio`."""
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    a.peers = [{"name": "b", "address": sshd.address()}]
    a.write_config()
    if authorize:
        sshd.authorize(a.public_key, dagsync_command(b.config, "a"))
    return a, b


def sync(node: TestNode, sshd: SshServer, *args: str) -> subprocess.CompletedProcess[str]:
    """`dagsync sync` on `node`, its ssh client pointed at our sshd's known_hosts."""
    return node.run("sync", "--timeout", "60", *args, timeout=180, env=sshd.env())


def explain(res: subprocess.CompletedProcess[str], sshd: SshServer, *nodes: TestNode) -> str:
    out = [f"exit {res.returncode}", f"stdout:\n{res.stdout}", f"stderr:\n{res.stderr}",
           f"sshd log:\n{sshd.log_text()[-4000:]}"]
    for n in nodes:
        if n.log.exists():
            out.append(f"{n.name} agent log (tail):\n{n.log.read_text(errors='replace')[-4000:]}")
    return "\n".join(out)


def agent_files(node: TestNode) -> int:
    """Files the running agent of `node` has indexed in folder dags (its own view)."""
    res = node.run("status", "--json", timeout=60)
    data = json.loads(res.stdout)
    return int(next(f["files"] for f in data["folders"] if f["id"] == "dags"))


def warnings(res: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in res.stderr.splitlines() if ln.startswith("dagsync: warning:")]


def seed(a: TestNode, b: TestNode) -> None:
    write(a.dags / "from_a.py", "# written on a\nx = 1\n", 0o644)
    write(a.dags / "sub" / "nested_a.py", "y = 2\n", 0o640)
    write(b.dags / "from_b.py", "# written on b\nz = 3\n", 0o755)


def assert_both_ways(a: TestNode, b: TestNode, detail: str) -> None:
    snap_a, snap_b = snapshot(a.dags), snapshot(b.dags)
    assert set(snap_a) == {"from_a.py", "sub/nested_a.py", "from_b.py"}, (
        f"a has {sorted(snap_a)}, b has {sorted(snap_b)}\n{detail}")
    assert snap_a == snap_b, detail
    assert snap_b["from_a.py"][0] == b"# written on a\nx = 1\n"
    assert snap_a["from_b.py"][0] == b"# written on b\nz = 3\n"
    assert snap_a["from_b.py"][1] == 0o755
    assert converged([a, b])


def test_sync_through_sshd_without_agent_converges_both_ways(
        cluster: Cluster, sshd: SshServer) -> None:
    a, b = ssh_pair(cluster, sshd)
    seed(a, b)

    res = sync(a, sshd)
    assert res.returncode == 0, explain(res, sshd)
    assert "warning" not in res.stderr, explain(res, sshd)
    assert "b: in sync" in res.stderr, explain(res, sshd)
    assert_both_ways(a, b, explain(res, sshd))
    # B was served by the forced command alone: it left no agent and no lock behind.
    assert not (b.state / "agent.sock").exists()

    # A second round carries an edit on B and a delete on A, and changes nothing else.
    write(b.dags / "from_b.py", "# edited on b\nz = 4\n")
    (a.dags / "sub" / "nested_a.py").unlink()
    res = sync(a, sshd)
    assert res.returncode == 0, explain(res, sshd)
    assert "b: in sync" in res.stderr, explain(res, sshd)
    assert converged([a, b]), (snapshot(a.dags), snapshot(b.dags))
    assert (a.dags / "from_b.py").read_text() == "# edited on b\nz = 4\n"
    assert not (b.dags / "sub" / "nested_a.py").exists()


def test_sync_through_sshd_bridges_to_running_agent(cluster: Cluster, sshd: SshServer) -> None:
    a, b = ssh_pair(cluster, sshd)
    seed(a, b)
    b.start()  # B's agent owns B's folder; `serve --stdio` must hand the stream to it

    res = sync(a, sshd)
    assert res.returncode == 0, explain(res, sshd, b)
    assert "warning" not in res.stderr, explain(res, sshd, b)
    assert "b: in sync" in res.stderr, explain(res, sshd, b)
    assert_both_ways(a, b, explain(res, sshd, b))
    assert b.proc is not None and b.proc.poll() is None, "B's agent died:\n" + explain(
        res, sshd, b)

    # The agent is still the only writer on B: an edit there reaches A at the next round.
    write(b.dags / "later_b.py", "w = 5\n")
    wait_until(lambda: agent_files(b) == 4, 30, "B's agent to index later_b.py")
    res = sync(a, sshd)
    assert res.returncode == 0, explain(res, sshd, b)
    assert (a.dags / "later_b.py").exists(), explain(res, sshd, b)
    assert (a.dags / "later_b.py").read_text() == "w = 5\n"
    assert converged([a, b]), (snapshot(a.dags), snapshot(b.dags))
    assert b.stop() == 0


def test_key_not_in_authorized_keys_is_refused(
        cluster: Cluster, sshd: SshServer, tmp_path: Path) -> None:
    a, b = ssh_pair(cluster, sshd, authorize=False)
    # sshd knows some other key, with the same forced command; A's own key is not there.
    stranger = public_key_line(generate_node_key(tmp_path / "stranger_key"))
    sshd.authorize(stranger, dagsync_command(b.config, "a"))
    seed(a, b)
    before_a, before_b = snapshot(a.dags), snapshot(b.dags)

    res = sync(a, sshd)
    assert res.returncode == 0, explain(res, sshd)
    assert len(warnings(res)) == 1, explain(res, sshd)
    assert "peer b" in warnings(res)[0], explain(res, sshd)
    assert "b: in sync" not in res.stderr
    assert "Traceback" not in res.stderr

    res = sync(a, sshd, "--strict")
    assert res.returncode == 1, explain(res, sshd)
    assert len(warnings(res)) == 1 and "peer b" in warnings(res)[0], explain(res, sshd)

    assert snapshot(a.dags) == before_a
    assert snapshot(b.dags) == before_b
    assert "Failed publickey for" in sshd.log_text()
    assert "Starting session" not in sshd.log_text()


def test_serve_stdio_unknown_peer_is_a_usage_error(cluster: Cluster, sshd: SshServer) -> None:
    a, b = ssh_pair(cluster, sshd, authorize=False)

    direct = b.run("serve", "--stdio", "--peer", "zed", timeout=60)
    assert direct.returncode == 2, direct
    lines = direct.stderr.strip().splitlines()
    assert len(lines) == 1, direct.stderr
    assert "zed" in lines[0] and str(b.config) in lines[0], lines[0]
    assert "Traceback" not in direct.stderr
    assert direct.stdout == ""

    # The same forced command behind sshd: A's round with b fails, and says so.
    sshd.authorize(a.public_key, dagsync_command(b.config, "zed"))
    write(a.dags / "from_a.py", "x = 1\n")
    res = sync(a, sshd)
    assert res.returncode == 0, explain(res, sshd)
    assert len(warnings(res)) == 1 and "peer b" in warnings(res)[0], explain(res, sshd)
    assert not (b.dags / "from_a.py").exists()
    assert sync(a, sshd, "--strict").returncode == 1


def test_warning_gives_the_reason_from_the_far_side(
        cluster: Cluster, sshd: SshServer, tmp_path: Path) -> None:
    a, b = ssh_pair(cluster, sshd, authorize=False)
    write(a.dags / "from_a.py", "x = 1\n")

    # Not authorized at all: ssh's own words.
    res = sync(a, sshd)
    assert len(warnings(res)) == 1, explain(res, sshd)
    assert "permission denied" in warnings(res)[0].lower(), explain(res, sshd)

    # Authorized, but the forced command names a peer B does not know: B's one line.
    sshd.authorize(a.public_key, dagsync_command(b.config, "zed"))
    res = sync(a, sshd)
    assert len(warnings(res)) == 1, explain(res, sshd)
    assert "--peer zed: no such peer" in warnings(res)[0], explain(res, sshd)


def test_far_side_stderr_is_drained(cluster: Cluster, sshd: SshServer) -> None:
    a, b = ssh_pair(cluster, sshd, authorize=False)
    write(a.dags / "from_a.py", "x = 1\n")
    # B's side writes 4 MB of log lines to stderr before serving, as a noisy scan would.
    noisy = (f"head -c 4000000 /dev/zero | tr '\\0' x | fold -w 79 >&2; "
             f"exec {dagsync_command(b.config, 'a')}")
    sshd.authorize(a.public_key, shlex.join(["sh", "-c", noisy]))
    res = a.run("sync", "--timeout", "30", timeout=120, env=sshd.env())
    assert res.returncode == 0, explain(res, sshd)
    assert "b: in sync" in res.stderr, explain(res, sshd)
    assert converged([a, b])


def test_serve_waits_for_another_one_shot_on_the_same_node(
        cluster: Cluster, sshd: SshServer) -> None:
    a, b = ssh_pair(cluster, sshd)
    seed(a, b)
    # Another caller's `serve --stdio` is busy on B (no agent there): it holds B's lock.
    holder = subprocess.Popen(
        [sys.executable, "-m", "dagsync", "serve", "--stdio", "--config", str(b.config),
         "--peer", "a"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    procs: list[subprocess.Popen[str] | subprocess.Popen[bytes]] = [holder]
    try:
        lock = b.state / "agent.lock"
        wait_until(lambda: lock.exists() and lock.read_text().strip() == str(holder.pid), 30,
                   "the other serve to hold B's lock")
        syncing = subprocess.Popen(
            [sys.executable, "-m", "dagsync", "sync", "--config", str(a.config),
             "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, **sshd.env()})
        procs.append(syncing)
        wait_until(lambda: "Starting session" in sshd.log_text() or syncing.poll() is not None,
                   60, "A's ssh session on B")
        time.sleep(5)  # B's `serve --stdio` meets the busy lock meanwhile
        assert holder.stdin is not None
        holder.stdin.close()  # the other caller goes away; B's lock is free again
        holder.wait(30)
        _, err = syncing.communicate(timeout=120)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert syncing.returncode == 0, err
    assert "b: in sync" in err, err
    assert_both_ways(a, b, err)


def test_crossed_one_shot_rounds_both_complete(cluster: Cluster, sshd: SshServer) -> None:
    """Cron runs `dagsync sync` on every node at the same minute: A's round needs B's state
    dir while B's own round holds it, and the other way round."""
    a, b = ssh_pair(cluster, sshd)
    b.peers = [{"name": "a", "address": sshd.address()}]
    b.write_config()
    sshd.authorize(b.public_key, dagsync_command(a.config, "b"))
    seed(a, b)
    procs = [subprocess.Popen(
        [sys.executable, "-m", "dagsync", "sync", "--config", str(n.config), "--timeout", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, **sshd.env()}) for n in (a, b)]
    try:
        errs = [p.communicate(timeout=150)[1] for p in procs]
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert [p.returncode for p in procs] == [0, 0], errs
    assert "b: in sync" in errs[0] and "a: in sync" in errs[1], errs
    assert not any("Traceback" in e or "Exception in callback" in e for e in errs), errs
    assert_both_ways(a, b, "\n".join(errs))
