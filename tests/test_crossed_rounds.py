"""When two nodes run `dagsync sync` at once, each one-shot dials the other and one of the
two connections gives way. These pin the rule a one-shot uses to decide that its round
with a peer completed on the other connection (the real processes crossing are in
test_ssh_peer.py::test_crossed_one_shot_rounds_both_complete)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from dagsync.oneshot import _synced_elsewhere


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
