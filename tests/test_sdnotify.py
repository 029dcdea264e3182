"""sd_notify client against a fake NOTIFY_SOCKET: a real AF_UNIX datagram socket bound here,
both as a socket file and in the abstract namespace, read the way systemd reads it."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from dagsync import sdnotify


class FakeManager:
    """The service manager's end: a bound SOCK_DGRAM socket collecting notifications."""

    def __init__(self, sock: socket.socket, env_value: str) -> None:
        self.sock = sock
        self.env_value = env_value

    def recv(self, timeout: float = 5.0) -> dict[str, str]:
        self.sock.settimeout(timeout)
        data = self.sock.recv(65536).decode()
        return dict(line.split("=", 1) for line in data.split("\n") if line)

    def drain(self) -> list[dict[str, str]]:
        """Every datagram already queued, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                data = self.sock.recv(65536).decode()
                out.append(dict(line.split("=", 1) for line in data.split("\n") if line))
        except BlockingIOError:
            pass
        return out

    def wait_for(self, key: str, timeout: float) -> list[dict[str, str]]:
        """Datagrams up to and including the first carrying `key`."""
        deadline = time.monotonic() + timeout
        seen: list[dict[str, str]] = []
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no {key} within {timeout} s; got {seen}")
            try:
                msg = self.recv(left)
            except TimeoutError:
                continue
            seen.append(msg)
            if key in msg:
                return seen


@pytest.fixture
def short_dir() -> Iterator[Path]:
    # sun_path holds 108 bytes; pytest's tmp_path can be longer than that.
    path = Path(tempfile.mkdtemp(prefix="sdn-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(params=["path", "abstract"])
def manager(request: pytest.FixtureRequest, short_dir: Path,
            monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeManager]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if request.param == "path":
        where = str(short_dir / "notify")
        sock.bind(where)
        env_value = where
    else:
        name = f"dagsync-test-{uuid.uuid4().hex}"
        sock.bind("\0" + name)
        env_value = "@" + name
    monkeypatch.setenv("NOTIFY_SOCKET", env_value)
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    try:
        yield FakeManager(sock, env_value)
    finally:
        sock.close()


def test_ready(manager: FakeManager) -> None:
    assert sdnotify.ready("serving 1 folder(s)") is True
    assert manager.recv() == {"READY": "1", "STATUS": "serving 1 folder(s)"}


def test_stopping_and_status(manager: FakeManager) -> None:
    assert sdnotify.status("scanning\nfolder dags") is True
    assert manager.recv() == {"STATUS": "scanning folder dags"}  # one line, no bogus key
    assert sdnotify.stopping() is True
    msg = manager.recv()
    assert msg["STOPPING"] == "1"
    assert "READY" not in msg


def test_reloading_carries_monotonic_usec(manager: FakeManager) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert sdnotify.reloading() is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = manager.recv()
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    assert sdnotify.ready() is True
    assert manager.recv()["READY"] == "1"


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.notify("READY=1") is False
    assert sdnotify.ready() is False
    assert sdnotify.stopping() is False
    assert sdnotify.reloading() is False
    assert sdnotify.watchdog() is False


@pytest.mark.parametrize("value", ["relative/sock", "vsock:2:1234"])
def test_unsupported_address_is_a_noop(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", value)
    assert sdnotify.notify("READY=1") is False


def test_dead_socket_is_not_fatal(monkeypatch: pytest.MonkeyPatch, short_dir: Path) -> None:
    monkeypatch.setenv("NOTIFY_SOCKET", str(short_dir / "nobody-listens"))
    assert sdnotify.notify("READY=1") is False
    monkeypatch.setenv("NOTIFY_SOCKET", f"@dagsync-test-nobody-{uuid.uuid4().hex}")
    assert sdnotify.notify("READY=1") is False


@pytest.mark.parametrize(("usec", "pid", "expected"), [
    (None, None, None),
    ("200000", None, 0.2),
    ("30000000", "self", 30.0),
    ("200000", "other", None),     # meant for another process (our parent, say)
    ("200000", "junk", None),
    ("0", None, None),
    ("-5", None, None),
    ("soon", None, None),
])
def test_watchdog_interval(monkeypatch: pytest.MonkeyPatch, usec: str | None, pid: str | None,
                           expected: float | None) -> None:
    for var, value in (("WATCHDOG_USEC", usec), ("WATCHDOG_PID", pid)):
        if value is None:
            monkeypatch.delenv(var, raising=False)
        else:
            value = {"self": str(os.getpid()), "other": str(os.getpid() + 1)}.get(value, value)
            monkeypatch.setenv(var, value)
    assert sdnotify.watchdog_interval() == expected


async def _run_for(seconds: float, healthy: object) -> None:
    task = asyncio.create_task(sdnotify.watchdog_loop(healthy))  # type: ignore[arg-type]
    await asyncio.sleep(seconds)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def _pings(manager: FakeManager) -> int:
    return sum(1 for m in manager.drain() if m.get("WATCHDOG") == "1")


async def test_watchdog_pings_at_half_interval(manager: FakeManager,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    await _run_for(1.0, lambda: True)
    # every 0.1 s: about 10; a loaded machine still manages a few
    assert _pings(manager) >= 2


async def test_watchdog_withholds_pings_while_unhealthy(manager: FakeManager,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    await _run_for(0.5, lambda: False)
    assert _pings(manager) == 0

    def broken() -> bool:
        raise RuntimeError("health check bug")

    await _run_for(0.3, broken)
    assert _pings(manager) == 0


async def test_watchdog_resumes_when_healthy_again(manager: FakeManager,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    state = {"ok": False}
    task = asyncio.create_task(sdnotify.watchdog_loop(lambda: state["ok"]))
    await asyncio.sleep(0.4)
    assert _pings(manager) == 0
    state["ok"] = True
    await asyncio.sleep(0.6)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert _pings(manager) >= 2


async def test_watchdog_loop_returns_without_watchdog(manager: FakeManager,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WATCHDOG_USEC", raising=False)
    await asyncio.wait_for(sdnotify.watchdog_loop(lambda: True), 1.0)
    monkeypatch.setenv("WATCHDOG_USEC", "200000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    await asyncio.wait_for(sdnotify.watchdog_loop(lambda: True), 1.0)
    assert _pings(manager) == 0


# --- the real agent -------------------------------------------------------------------


def _agent_wired() -> bool:
    import dagsync.agent

    return hasattr(dagsync.agent, "sdnotify")


@pytest.mark.skipif(not _agent_wired(),
                    reason="dagsync/agent.py does not call dagsync.sdnotify yet")
def test_agent_notifies_ready_watchdog_reload_and_stop(tmp_path: Path,
                                                       short_dir: Path) -> None:
    """What systemd sees from a real `dagsync agent`: READY=1 once it serves, WATCHDOG=1
    pings, RELOADING=1 then READY=1 on SIGHUP, STOPPING=1 on SIGTERM, exit 0."""
    from tests.cluster import make_nodes

    node = make_nodes(tmp_path, ["solo"])["solo"]
    mgr_sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    mgr_sock.bind(str(short_dir / "notify"))
    mgr = FakeManager(mgr_sock, str(short_dir / "notify"))
    env = {**os.environ, "NOTIFY_SOCKET": mgr.env_value, "WATCHDOG_USEC": "400000"}
    env.pop("WATCHDOG_PID", None)
    with node.log.open("ab") as logf:
        proc = subprocess.Popen(
            [sys.executable, "-m", "dagsync", "agent", "--config", str(node.config)],
            stdout=logf, stderr=subprocess.STDOUT, env=env, start_new_session=True,
        )
    try:
        first = mgr.wait_for("READY", 30)
        assert not any("READY" in m for m in first[:-1])
        assert node.answers(), "READY=1 came before the control socket served"
        mgr.wait_for("WATCHDOG", 10)
        mgr.wait_for("WATCHDOG", 10)  # a second ping: the loop keeps going
        os.kill(proc.pid, signal.SIGHUP)
        reload_msgs = [m for m in mgr.wait_for("RELOADING", 10) if "WATCHDOG" not in m]
        assert "MONOTONIC_USEC" in reload_msgs[-1]
        mgr.wait_for("READY", 10)
        os.kill(proc.pid, signal.SIGTERM)
        mgr.wait_for("STOPPING", 10)
        assert proc.wait(10) == 0
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
        mgr_sock.close()
