"""What an agent answers a peer's batch of file reads: a real agent over SSH, asked by a
scripted peer. The batch is read a window of files at a time (opened and read ahead
together, peer_serving.READ_AHEAD), so the answers must still come in the order asked,
each with its own status, and no file may stay open afterwards."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

from dagsync import protocol as p
from dagsync.engine import content_hash
from dagsync.peer_serving import READ_AHEAD
from tests.cluster import wait_until, write
from tests.test_crash_and_hostile import _open_raw
from tests.test_delta_e2e import _evil_node, _Peer


def _open_files(pid: int, under: Path) -> list[str]:
    """The files below `under` that process `pid` holds open."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed meanwhile
            continue
        if target.startswith(f"{under}/"):
            found.append(target)
    return found


def test_a_batch_read_answers_every_item_in_order_and_leaves_no_file_open(
        cluster: Any, tmp_path: Path) -> None:
    a, key = _evil_node(cluster, tmp_path)
    files = {f"dags_{i // 20}/dag_{i:03d}.py": f"# dag {i}\n".encode() * (i + 1)
             for i in range(2 * READ_AHEAD + 7)}  # three windows, the last one short
    for rel, data in files.items():
        write(a.dags / rel, data)
    big = b"x" * p.BLOCK_SIZE  # alone over the batch's budget: the peer must ask for it alone
    write(a.dags / "big.py", big)
    a.start()
    wait_until(lambda: (a.state / "agent.sock").exists(), 30, "agent a ready")

    asked = [(rel, content_hash(data)) for rel, data in files.items()]
    expected = [(p.Status.OK, data) for data in files.values()]
    for at, item, answer in (
            (5, ("dags_0/dag_000.py", "0" * 32), (p.Status.CHANGED, b"")),  # not its version
            (40, ("never/there.py", "1" * 32), (p.Status.CHANGED, b"")),  # never held
            (70, ("big.py", content_hash(big)), (p.Status.REFUSED, b""))):  # over the budget
        asked.insert(at, item)
        expected.insert(at, answer)

    async def run() -> list[p.Message]:
        conn, stdin, stdout = await _open_raw(a, "evil", key)
        peer = _Peer(stdin, stdout)
        try:
            peer.send(p.Hello(node="evil", folders={"dags": p.FolderOffer(7, 0)}, hlc=1,
                              wall_ms=int(time.time() * 1000)))
            return [await peer.ask(p.BatchRequest(1, "dags", tuple(asked))),
                    await peer.ask(p.BatchRequest(2, "dags", (("big.py", content_hash(big)),)))]
        finally:
            conn.close()

    batch, alone = asyncio.run(run())
    assert batch == p.BatchResponse(1, tuple(expected))
    assert alone == p.BatchResponse(2, ((p.Status.REFUSED, b""),))  # ask for it by Request
    assert a.proc is not None and a.proc.poll() is None
    assert _open_files(a.proc.pid, a.dags) == []
