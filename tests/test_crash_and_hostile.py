"""Crashes mid-transfer never tear a file; unpinned and hostile peers are refused."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import struct
import time
from pathlib import Path
from typing import Any

import asyncssh
import pytest

from dagsync import protocol as p
from dagsync.clock import VersionVector
from dagsync.model import FileVersion, Kind
from dagsync.paths import is_temp_name
from dagsync.transport import generate_node_key, public_key_line
from tests.cluster import TestNode, wait_converged, wait_until, write

SOAK = int(os.environ.get("DAGSYNC_SOAK", "1"))


def _visible_files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for fn in files:
            if not is_temp_name(fn):
                full = Path(dirpath) / fn
                out[full.relative_to(root).as_posix()] = full.read_bytes()
    return out


def _temp_files(root: Path) -> list[str]:
    return [fn for _, _, files in os.walk(root) for fn in files if is_temp_name(fn)]


@pytest.mark.soak
def test_kill9_during_large_transfer_never_leaves_a_torn_file(cluster: Any) -> None:
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    rng = random.Random(7)
    for i in range(60):
        write(a.dags / f"big/f{i}.py", rng.randbytes(256 * 1024))
    write(a.dags / "huge.bin", rng.randbytes(24 * 1024 * 1024))
    source = _visible_files(a.dags)
    a.start()
    cycles = 5 * SOAK
    leftovers: set[str] = set()
    for _cycle in range(cycles):
        b.start()
        assert not leftovers & set(_temp_files(b.dags)), "temp files survived a restart"
        time.sleep(rng.uniform(0.05, 0.8))
        b.kill()
        for path, data in _visible_files(b.dags).items():
            assert data == source[path], f"torn or foreign file {path}"
        leftovers = set(_temp_files(b.dags))
    b.start()
    assert not leftovers & set(_temp_files(b.dags)), "temp files survived the restart"
    wait_converged([a, b], 60)
    assert _temp_files(b.dags) == []
    assert _visible_files(b.dags) == source


# --- hostile peers -------------------------------------------------------------------


async def _open_raw(node: TestNode, name: str, key: asyncssh.SSHKey) -> tuple[Any, Any, Any]:
    conn = await asyncssh.connect(
        "127.0.0.1", node.port, username=name, client_keys=[key], known_hosts=None,
        agent_path=None, config=[],
    )
    proc = await conn.create_process("dagsync", encoding=None)
    return conn, proc.stdin, proc.stdout


def _entry(path: str, data: bytes = b"x", target: str = "", kind: Kind = Kind.FILE) -> FileVersion:
    from dagsync.engine import content_hash

    return FileVersion(path=path, kind=kind, size=len(data), mtime_ns=1, mode=0o644,
                       hash=content_hash(data if kind is Kind.FILE else target.encode()),
                       deleted=False, vv=VersionVector.of({"evil": 1}), hlc=1 << 40,
                       origin="evil", target=target)


async def _hostile_session(node: TestNode, key: asyncssh.SSHKey, entries: list[FileVersion],
                           tail: bytes = b"", malformed: dict[str, Any] | None = None) -> bytes:
    conn, stdin, stdout = await _open_raw(node, "evil", key)
    session = p.Session()
    stdin.write(session.send(p.Hello(node="evil", folders={"dags": p.FolderOffer(7, 100)},
                                     hlc=1, wall_ms=int(time.time() * 1000))))
    raw = entries_to_wire(entries, malformed)
    stdin.write(struct.pack(">IB", len(raw) + 1, 2) + raw)
    if tail:
        stdin.write(tail)
    received = b""
    try:
        async with asyncio.timeout(5):
            while chunk := await stdout.read(65536):
                received += chunk
                # Serve any request for content so the agent would write if it accepted.
                for msg in _parse(session, chunk):
                    if isinstance(msg, p.Request):
                        stdin.write(session.send(p.Response(msg.id, 0, b"x")))
    except (TimeoutError, asyncssh.Error, ConnectionError):
        pass
    conn.close()
    return received


def _parse(session: p.Session, data: bytes) -> list[p.Message]:
    try:
        return session.receive_data(data)
    except Exception:
        return []


def entries_to_wire(entries: list[FileVersion], malformed: dict[str, Any] | None = None) -> bytes:
    """An Index body of `entries`, with `malformed` (an entry no version could come
    from) after them."""
    import json

    wire = [e.to_wire() for e in entries] + ([malformed] if malformed is not None else [])
    return json.dumps({"folder": "dags", "index_id": 7, "last_seq": 100, "caught_up": True,
                       "entries": wire}).encode()


def test_unpinned_key_is_refused(cluster: Any) -> None:
    nodes = cluster("a")
    a = nodes["a"]
    a.start()
    stranger = asyncssh.generate_private_key("ssh-ed25519")

    async def attempt() -> None:
        await _open_raw(a, "a", stranger)

    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(attempt())
    assert "not pinned" in a.log.read_text()


def test_hostile_peer_is_refused_and_agent_keeps_serving(cluster: Any, tmp_path: Path) -> None:
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    evil_key_path = tmp_path / "evil_key"
    evil_key = generate_node_key(evil_key_path)
    a.peers.append({"name": "evil", "address": "127.0.0.1:1",
                    "public_key": public_key_line(evil_key)})
    a.write_config()
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside, a.dags / "link_out")
    a.start()
    hostile = [
        _entry("../escape.py"), _entry("/etc/evil.py"), _entry("ok/../../x.py"),
        _entry("link_out/through_symlink.py"), _entry("nul\x00.py"),
        _entry("__pycache__/x.pyc"), _entry(".~dagsync.abc.tmp"),
        _entry("esc_link", target="../../etc/passwd", kind=Kind.SYMLINK),
        _entry("abs_link", target="/etc/passwd", kind=Kind.SYMLINK),
    ]
    asyncio.run(_hostile_session(a, evil_key, hostile))
    # A batch with one malformed entry is refused whole: its good entries never land.
    bad_size = {**_entry("fine_but_in_a_bad_batch.py").to_wire(), "p": "bad.py", "s": -1}
    asyncio.run(_hostile_session(a, evil_key, [_entry("fine_but_in_a_bad_batch.py")],
                                 malformed=bad_size))
    # Oversize frame and an unknown message type: the connection is closed.
    asyncio.run(_hostile_session(a, evil_key, [], tail=struct.pack(">IB", 2**31, 2)))
    asyncio.run(_hostile_session(a, evil_key, [], tail=struct.pack(">IB", 1, 99)))
    assert list(outside.iterdir()) == []
    assert not (tmp_path / "escape.py").exists() and not Path("/etc/evil.py").exists()
    assert sorted(os.listdir(a.dags)) == ["link_out"]

    def refusals_logged() -> bool:
        log = a.log.read_text()
        return (log.count("refused remote entry") >= len(hostile) - 1
                and "frame length" in log and "unknown message type" in log
                and "index: bad size for 'bad.py'" in log)

    # The agent logs why it dropped a connection after closing it: the hostile side
    # sees the close first, and under load the log line may come a moment later.
    wait_until(refusals_logged, 10, "A to log each refusal")
    log = a.log.read_text()
    assert log.count("refused remote entry") >= len(hostile) - 1
    assert "frame length" in log and "unknown message type" in log
    assert "index: bad size for 'bad.py'" in log
    # The agent still serves honest peers.
    write(a.dags / "honest.py", "ok = 1\n")
    b.start()
    wait_until(lambda: (b.dags / "honest.py").exists(), 20, "honest file reaching b")
    assert a.proc is not None and a.proc.poll() is None
    a.signal(signal.SIGTERM)
    assert a.proc.wait(10) == 0


def test_a_peer_that_drops_every_link_at_once_is_redialled_with_backoff(
    cluster: Any, tmp_path: Path
) -> None:
    """A peer (a real SSH server holding the pinned key) that completes the handshake and
    then sends a frame the agent refuses, every time: the agent logs it and redials with
    growing delays, not several times a second for ever."""
    from dagsync import transport
    from dagsync.localnode import free_port

    a = cluster("a")["a"]
    evil_key = generate_node_key(tmp_path / "evil_key")
    port = free_port()
    a.peers.append({"name": "evil", "address": f"127.0.0.1:{port}",
                    "public_key": public_key_line(evil_key)})
    a.write_config()
    dialled: list[float] = []

    async def refuse_after_hello(name: str, stream: transport.Stream) -> None:
        dialled.append(time.monotonic())
        session = p.Session()
        stream.write(session.send(p.Hello(node="evil", folders={"dags": p.FolderOffer(7, 0)},
                                          hlc=1, wall_ms=int(time.time() * 1000))))
        stream.write(struct.pack(">IB", 1, 99))  # an unknown message type
        await stream.drain()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(2):
                while await stream.read(65536):
                    pass

    async def run_evil_peer() -> None:
        server = await transport.serve("127.0.0.1", port, evil_key, lambda n, k: True,
                                       refuse_after_hello)
        a.start()
        await asyncio.sleep(8)
        server.close()

    asyncio.run(run_evil_peer())
    # Backoff steps of 0.25, 0.5, 1, 2, 4 s (jittered to half of each at the least) fit
    # at most ~9 dials in 8 s; without backoff there were dozens.
    assert 2 <= len(dialled) <= 9, f"{len(dialled)} dials in 8 s"
    assert "unknown message type" in a.log.read_text()
    assert a.proc is not None and a.proc.poll() is None
