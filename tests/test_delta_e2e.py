"""Delta transfer between real agents: a one-line edit of a 1 MB file crosses the link as
a few kilobytes, and a peer that lies about chunks or lacks the feature still yields the
right content (whole-file fetch)."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from dagsync import delta
from dagsync import protocol as p
from dagsync.clock import VersionVector, hlc_pack
from dagsync.engine import content_hash
from dagsync.model import FileVersion, Kind
from dagsync.transport import generate_node_key, public_key_line
from tests.cluster import TestNode, wait_converged, wait_until, write
from tests.faultnet import FaultLink, FaultProxy
from tests.test_crash_and_hostile import _open_raw
from tests.test_delta import text

LIVE = {"scan_interval": "300s"}  # changes move by the watcher and the protocol alone


def _insert_middle(data: bytes, line: bytes) -> bytes:
    mid = data.index(b"\n", len(data) // 2) + 1
    return data[:mid] + line + data[mid:]


def _quiet(link: FaultLink, quiet: float = 1.0, cap: float = 15.0) -> None:
    """Until no byte crossed the link for `quiet` seconds."""
    t0 = time.monotonic()
    last, since = link.bytes_forwarded(), time.monotonic()
    while time.monotonic() - t0 < cap:
        time.sleep(0.05)
        now = link.bytes_forwarded()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return


def test_one_line_inserted_in_a_1mb_file_crosses_the_link_as_a_few_kb(cluster: Any) -> None:
    nodes = cluster("a", "b", extra=LIVE)
    a, b = nodes["a"], nodes["b"]
    proxies = []
    for node, other in ((a, b), (b, a)):
        proxy = FaultProxy(other.port).start()
        proxies.append(proxy)
        node.peers = [{**e, "address": f"127.0.0.1:{proxy.port}"} for e in node.peers]
        node.write_config()
    link = FaultLink(*proxies)
    try:
        data = text(1 << 20)
        write(a.dags / "big_helpers.py", data)
        a.start()
        b.start()
        wait_converged([a, b], 60)
        _quiet(link)
        for k in range(2):
            link.reset_counters()
            data = _insert_middle(data, f"# edited line {k}: retries at {k + 3}\n".encode())
            write(a.dags / "big_helpers.py", data)
            wait_until(lambda want=data: (b.dags / "big_helpers.py").read_bytes() == want,
                       30, "the edit reaching b")
            _quiet(link)
            moved = link.bytes_forwarded()
            # Whole-file transfer moves more than 1,048,576 bytes.
            assert moved < 100_000, f"{moved} bytes crossed the link for a one-line edit"
        wait_converged([a, b], 30)
        log = b.log.read_text()
        assert log.count("delta transfer fetched") >= 2, log[-3000:]
        assert "delta transfer failed" not in log
    finally:
        link.stop()


# --- peers that lie, or do not speak "delta" -----------------------------------------------


def _version(path: str, data: bytes, counter: int) -> FileVersion:
    return FileVersion(path=path, kind=Kind.FILE, size=len(data), mtime_ns=counter * 10**9,
                       mode=0o644, hash=content_hash(data), deleted=False,
                       vv=VersionVector.of({"evil": counter}),
                       hlc=hlc_pack(int(time.time() * 1000), counter), origin="evil")


class _Peer:
    """A scripted peer over a real SSH connection to an agent."""

    def __init__(self, stdin: Any, stdout: Any) -> None:
        self.stdin, self.stdout = stdin, stdout
        self.session = p.Session()
        self.received: list[p.Message] = []

    def send(self, msg: p.Message) -> None:
        self.stdin.write(self.session.send(msg))

    async def pump_until(self, done: Any, answer: Any, timeout: float = 20.0) -> None:
        async with asyncio.timeout(timeout):
            while not done():
                try:
                    chunk = await asyncio.wait_for(self.stdout.read(65536), 0.05)
                except TimeoutError:
                    continue
                assert chunk, "the agent closed the connection"
                for msg in self.session.receive_data(chunk):
                    self.received.append(msg)
                    reply = answer(msg)
                    if reply is not None:
                        self.send(reply)

    async def ask(self, msg: p.Message, timeout: float = 10.0) -> p.Message:
        self.send(msg)
        async with asyncio.timeout(timeout):
            while True:
                for got in self.session.receive_data(await self.stdout.read(65536)):
                    if getattr(got, "id", None) == getattr(msg, "id", -1) and not isinstance(
                            got, type(msg)):
                        return got


def _serve(contents: dict[str, bytes], lie_in_ranges: bool) -> Any:
    """Answers the agent's requests from `contents` (path -> bytes of the current
    version); with `lie_in_ranges`, every delta range comes back as the wrong bytes."""
    def answer(msg: p.Message) -> p.Message | None:
        if isinstance(msg, p.Request):
            return p.Response(msg.id, p.Status.OK,
                              contents[msg.path][msg.offset : msg.offset + msg.size])
        if isinstance(msg, p.BatchRequest):
            return p.BatchResponse(msg.id, tuple((p.Status.OK, contents[path])
                                                 for path, _ in msg.items))
        if isinstance(msg, p.SignatureRequest):
            sig = delta.signature(contents[msg.path])
            return p.SignatureReply(msg.id, p.Status.OK, sig.target, sig.chunks)
        if isinstance(msg, p.RangeRequest):
            data = contents[msg.path]
            return p.BatchResponse(msg.id, tuple(
                (p.Status.OK, b"\x00" * n if lie_in_ranges else data[o : o + n])
                for o, n in msg.ranges))
        return None
    return answer


def _evil_node(cluster: Any, tmp_path: Path) -> tuple[TestNode, Any]:
    a = cluster("a", extra=LIVE)["a"]
    key = generate_node_key(tmp_path / "evil_key")
    a.peers.append({"name": "evil", "address": "127.0.0.1:1",
                    "public_key": public_key_line(key)})
    a.write_config()
    return a, key


def _sync_two_versions(a: TestNode, key: Any, features: tuple[str, ...],
                       lie: bool) -> list[p.Message]:
    """The peer sends a 300 KB file, then a version with one line inserted; returns what
    the agent sent it."""
    old = text(300_000, seed=11)
    new = _insert_middle(old, b"changed = True\n")
    contents = {"big.py": old}

    async def run() -> list[p.Message]:
        conn, stdin, stdout = await _open_raw(a, "evil", key)
        peer = _Peer(stdin, stdout)
        try:
            peer.send(p.Hello(node="evil", folders={"dags": p.FolderOffer(7, 2)}, hlc=1,
                              wall_ms=int(time.time() * 1000), features=features))
            peer.send(p.Index("dags", 7, (_version("big.py", old, 1),), 1, True))
            target = a.dags / "big.py"
            await peer.pump_until(lambda: target.exists() and target.read_bytes() == old,
                                  _serve(contents, lie))
            contents["big.py"] = new
            peer.send(p.Index("dags", 7, (_version("big.py", new, 2),), 2, True, from_seq=1))
            await peer.pump_until(lambda: target.read_bytes() == new, _serve(contents, lie))
            return peer.received
        finally:
            conn.close()

    return asyncio.run(run())


def test_a_peer_lying_in_delta_ranges_costs_a_whole_file_fetch_not_wrong_content(
        cluster: Any, tmp_path: Path) -> None:
    a, key = _evil_node(cluster, tmp_path)
    a.start()
    sent = _sync_two_versions(a, key, ("delta",), lie=True)
    kinds = [type(m).__name__ for m in sent]
    assert "SignatureRequest" in kinds and "RangeRequest" in kinds
    assert kinds.index("RangeRequest") < max(i for i, k in enumerate(kinds) if k == "Request")
    assert "delta transfer failed (assembled content does not match its hash)" in a.log.read_text()
    assert a.proc is not None and a.proc.poll() is None


def test_a_peer_without_the_feature_is_never_sent_delta_messages(
        cluster: Any, tmp_path: Path) -> None:
    a, key = _evil_node(cluster, tmp_path)
    a.start()
    sent = _sync_two_versions(a, key, (), lie=False)
    assert not any(isinstance(m, p.SignatureRequest | p.RangeRequest) for m in sent)


def test_signatures_and_ranges_served_are_checked_against_the_version(
        cluster: Any, tmp_path: Path) -> None:
    a, key = _evil_node(cluster, tmp_path)
    data = text(200_000, seed=4)
    write(a.dags / "served.py", data)
    a.start()
    h = content_hash(data)

    async def run() -> list[p.Message]:
        conn, stdin, stdout = await _open_raw(a, "evil", key)
        peer = _Peer(stdin, stdout)
        try:
            peer.send(p.Hello(node="evil", folders={"dags": p.FolderOffer(7, 0)}, hlc=1,
                              wall_ms=int(time.time() * 1000), features=("delta",)))
            return [
                await peer.ask(p.SignatureRequest(1, "dags", "served.py", h)),
                await peer.ask(p.SignatureRequest(2, "dags", "served.py", "0" * 32)),
                await peer.ask(p.SignatureRequest(3, "dags", "absent.py", h)),
                await peer.ask(p.SignatureRequest(4, "other", "served.py", h)),
                await peer.ask(p.RangeRequest(5, "dags", "served.py", h,
                                              ((0, 10), (199_990, 10)))),
                await peer.ask(p.RangeRequest(6, "dags", "served.py", h, ((199_995, 10),))),
                await peer.ask(p.RangeRequest(7, "dags", "served.py", "0" * 32, ((0, 10),))),
            ]
        finally:
            conn.close()

    sig = delta.signature(data)
    got = asyncio.run(run())
    assert got[0] == p.SignatureReply(1, p.Status.OK, sig.target, sig.chunks)
    assert got[1] == p.SignatureReply(2, p.Status.CHANGED)
    assert got[2] == p.SignatureReply(3, p.Status.CHANGED)
    assert got[3] == p.SignatureReply(4, p.Status.REFUSED)
    assert got[4] == p.BatchResponse(5, ((p.Status.OK, data[:10]), (p.Status.OK, data[-10:])))
    assert got[5] == p.BatchResponse(6, ((p.Status.REFUSED, b""),))  # past the end
    assert got[6] == p.BatchResponse(7, ((p.Status.CHANGED, b""),))
    assert a.proc is not None and a.proc.poll() is None
