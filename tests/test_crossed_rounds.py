"""When two nodes run `dagsync sync` at once, each one-shot dials the other and one of the
two connections gives way. These pin the rule a one-shot uses to decide that its round
with a peer completed on the other connection (the real processes crossing are in
test_ssh_peer.py::test_crossed_one_shot_rounds_both_complete)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from dagsync.oneshot import ServedPeers, _synced_elsewhere


def fake_node() -> SimpleNamespace:
    return SimpleNamespace(connections={}, synced_with=set())


def fake_conn(*, superseded: bool = False) -> SimpleNamespace:
    return SimpleNamespace(peer_name="b", superseded=superseded, closed=asyncio.Event())


def deadline(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_round_already_done_on_the_peers_connection() -> None:
    node = fake_node()
    node.synced_with.add("b")
    assert await _synced_elsewhere(node, fake_conn(), deadline(5))


async def test_a_plain_failure_with_no_other_connection_fails_at_once() -> None:
    node = fake_node()
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert not await _synced_elsewhere(node, fake_conn(), deadline(5))
    assert loop.time() - start < 1  # a down peer is reported without the grace wait


async def test_superseded_waits_for_the_other_connection_and_its_outcome() -> None:
    node = fake_node()
    ours = fake_conn(superseded=True)
    theirs = fake_conn()

    async def peer_connection_arrives_then_completes() -> None:
        await asyncio.sleep(0.2)
        node.connections["b"] = theirs
        await asyncio.sleep(0.2)
        node.synced_with.add("b")  # what Node.unregister records for a synced connection
        del node.connections["b"]
        theirs.closed.set()

    task = asyncio.create_task(peer_connection_arrives_then_completes())
    assert await _synced_elsewhere(node, ours, deadline(5))
    await task


async def test_other_connection_ending_out_of_sync_is_a_failure() -> None:
    node = fake_node()
    theirs = fake_conn()
    node.connections["b"] = theirs
    asyncio.get_running_loop().call_later(0.1, theirs.closed.set)
    assert not await _synced_elsewhere(node, fake_conn(), deadline(5))


async def test_superseded_gives_up_at_the_deadline() -> None:
    node = fake_node()
    assert not await _synced_elsewhere(node, fake_conn(superseded=True), deadline(0.3))


class FakeServed:
    """What ServedPeers.finish uses of a served PeerConnection."""

    def __init__(self, *, synced_after: float | None, failures: int = 0) -> None:
        self.closed = asyncio.Event()
        self.links = {"dags": SimpleNamespace(failures=failures)}
        self.reason = ""
        self._synced_at = (None if synced_after is None
                           else asyncio.get_running_loop().time() + synced_after)

    def in_sync(self) -> bool:
        return self._synced_at is not None and asyncio.get_running_loop().time() >= self._synced_at

    def close(self, reason: str) -> None:
        self.reason = reason
        self.closed.set()


def served_peers(*conns: FakeServed) -> ServedPeers:
    served = ServedPeers(SimpleNamespace(), SimpleNamespace())  # type: ignore[arg-type]
    served.connections.update(conns)  # type: ignore[arg-type]
    return served


async def test_finish_lets_a_served_peer_reach_sync_then_says_round_complete() -> None:
    conn = FakeServed(synced_after=0.3)
    await served_peers(conn).finish(timeout=10)
    assert conn.reason == "round complete"


async def test_finish_does_not_wait_for_a_peer_whose_files_fail_to_apply() -> None:
    conn = FakeServed(synced_after=None, failures=1)
    loop = asyncio.get_running_loop()
    start = loop.time()
    await served_peers(conn).finish(timeout=10)
    assert loop.time() - start < 1
    assert conn.reason == "the one-shot round here ended"


async def test_finish_gives_up_at_the_timeout() -> None:
    conn = FakeServed(synced_after=None)
    await served_peers(conn).finish(timeout=0.3)
    assert conn.reason == "the one-shot round here ended"
