"""The one-shot modes: `dagsync sync` (a round with every peer, for cron) and
`dagsync serve --stdio` (the far end of an ssh:// peer). When a local agent runs, both
hand the work to it over the control socket, so only one process writes the folders."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from dagsync import protocol as p
from dagsync import transport
from dagsync.agent import AgentLock
from dagsync.config import Config, PeerConfig
from dagsync.control import control_socket_path
from dagsync.errors import AgentNotRunning, DagsyncError, UsageError
from dagsync.node import Node
from dagsync.peer import PeerConnection
from dagsync.reconcile import decide

log = logging.getLogger("dagsync.sync")


@dataclass
class SyncReport:
    in_sync: list[str] = field(default_factory=list)
    down: dict[str, str] = field(default_factory=dict)  # peer -> reason
    would: list[tuple[str, str, str]] = field(default_factory=list)  # (direction, action, path)
    via_agent: bool = False


async def control_request(config: Config, request: dict[str, Any], timeout: float = 30) -> Any:
    """One JSON request to the local agent; AgentNotRunning when nobody answers."""
    path = control_socket_path(config)
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=2**24)
    except (FileNotFoundError, ConnectionRefusedError):
        raise AgentNotRunning(f"no agent answers on {path}") from None
    except PermissionError:
        raise DagsyncError(f"{path}: permission denied (run as the agent's user)") from None
    try:
        writer.write(json.dumps(request).encode() + b"\n")
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
    except TimeoutError:
        raise AgentNotRunning(f"the agent on {path} did not answer within {timeout:.0f} s "
                              "(hung?)") from None
    finally:
        writer.close()
    if not line:
        raise AgentNotRunning(f"the agent on {path} closed the control connection")
    return json.loads(line)


def _select_peers(config: Config, names: list[str]) -> list[PeerConfig]:
    if not names:
        return list(config.peers)
    chosen = []
    for name in names:
        peer = config.peer(name)
        if peer is None:
            raise UsageError(f"--peer {name}: no such peer in {config.source}")
        chosen.append(peer)
    return chosen


Progress = Callable[[str], None]


async def run_sync(
    config: Config, peer_names: list[str], *, dry_run: bool, timeout: float = 300,
    progress: Progress | None = None,
) -> SyncReport:
    peers = _select_peers(config, peer_names)
    if AgentLock.held(config.node.state_dir):
        if dry_run:
            raise UsageError("an agent runs on this node: --dry-run needs the agent stopped "
                             "(use `dagsync status --cluster` to compare nodes)")
        reply = await control_request(
            config, {"cmd": "sync", "peers": [p.name for p in peers], "timeout": timeout},
            timeout + 5,
        )
        if not reply.get("ok"):
            raise DagsyncError(f"agent refused the round: {reply.get('error')}")
        report = SyncReport(via_agent=True)
        for name, result in reply["peers"].items():
            if result == "in sync":
                report.in_sync.append(name)
            else:
                report.down[name] = result
        return report
    lock = AgentLock(config.node.state_dir)
    config.node.state_dir.mkdir(parents=True, exist_ok=True)
    lock.acquire()
    try:
        return await _standalone_round(config, peers, dry_run, timeout, progress)
    finally:
        lock.release()


async def _standalone_round(
    config: Config, peers: list[PeerConfig], dry_run: bool, timeout: float,
    progress: Progress | None,
) -> SyncReport:
    node_key = transport.load_node_key(config.node.key)
    node = Node(config)
    report = SyncReport()
    for folder in node.folders.values():
        folder.read_only = dry_run

    def received() -> int:  # counted as chunks land: an initial sync is one long round
        return sum(f.applied_total for f in node.folders.values())

    async def show_progress() -> None:
        assert progress is not None
        while True:
            done = len(report.in_sync) + len(report.down)
            progress(f"{done}/{len(peers)} peer(s) done, {received()} file(s) received")
            await asyncio.sleep(0.2)

    ticker = asyncio.get_running_loop().create_task(show_progress()) if progress else None
    served = ServedPeers(config, node)
    try:
        await node.open()
        await node.scan_all()
        await served.start()

        async def one(peer: PeerConfig) -> None:
            deadline = asyncio.get_running_loop().time() + timeout
            try:
                stream = await transport.dial(peer, node.name, node_key, config.node.key)
                conn = PeerConnection(node, stream, expected_name=peer.name, initiator=True,
                                      oneshot=True, dry_run=dry_run)
                ended: DagsyncError | None = None
                try:
                    await asyncio.wait_for(conn.run(), timeout)
                except DagsyncError as exc:
                    ended = exc
                if not conn.done.is_set() and not await _synced_elsewhere(node, conn, deadline):
                    raise DagsyncError(conn.close_reason or (str(ended) if ended else "")
                                       or "connection ended before the round completed")
                report.in_sync.append(peer.name)
                if dry_run and conn.done.is_set():
                    report.would.extend(_dry_run_listing(node, conn))
            except TimeoutError:
                report.down[peer.name] = f"round not complete within {timeout:.0f} s"
            except DagsyncError as exc:
                report.down[peer.name] = str(exc)

        await asyncio.gather(*(one(p) for p in peers))
        await served.finish(timeout)
    finally:
        served.stop()
        if ticker is not None:
            ticker.cancel()
            assert progress is not None
            progress(f"{len(peers)}/{len(peers)} peer(s) done, {received()} file(s) received\n")
        node.close()
    return report


SUPERSEDED_GRACE = 10.0  # for the peer's connection to reach us once ours gave way to it


async def _synced_elsewhere(node: Node, conn: PeerConnection, deadline: float) -> bool:
    """Crossed rounds: when two nodes run `sync` at once each dials the other, both keep
    one of the two connections, and the round may complete on the one the peer opened,
    or have completed there before ours got going. True when it did (by the deadline)."""
    loop = asyncio.get_running_loop()
    give_up = min(deadline, loop.time() + (SUPERSEDED_GRACE if conn.superseded else 0))
    while conn.peer_name not in node.synced_with:
        other = node.connections.get(conn.peer_name)
        if other is not None and other is not conn and not other.closed.is_set():
            # TimeoutError at the deadline: the caller reports it as for its own connection
            await asyncio.wait_for(other.closed.wait(), max(0.0, deadline - loop.time()))
            continue
        if loop.time() >= give_up:
            return False
        await asyncio.sleep(0.05)
    return True


class ServedPeers:
    """While a one-shot process holds the node it serves, as the agent would, the peers
    that reach this node through `serve --stdio` (cron rounds crossing each other)."""

    def __init__(self, config: Config, node: Node) -> None:
        self.config = config
        self.node = node
        self.server: asyncio.Server | None = None
        self.connections: set[PeerConnection] = set()
        self.handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        path = control_socket_path(self.config)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        self.server = await asyncio.start_unix_server(self._handle, path=str(path))
        os.chmod(path, 0o600)

    async def finish(self, timeout: float) -> None:
        """Stop taking peers, let each served one reach sync (so a peer whose round runs
        through us completes it), then close them with a reason rather than cutting them."""
        self._stop_listening()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        for conn in list(self.connections):
            while (not conn.closed.is_set() and not conn.in_sync() and loop.time() < deadline
                   and not any(link.failures for link in conn.links.values())):
                await asyncio.sleep(0.05)  # (a file that failed to apply never gets in sync)
            conn.close(p.CLOSE_ROUND_COMPLETE if conn.in_sync()
                       else "the one-shot round here ended")
        if self.handlers:
            await asyncio.wait(self.handlers, timeout=5)

    def stop(self) -> None:
        self._stop_listening()
        for task in self.handlers:
            task.cancel()

    def _stop_listening(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
            with contextlib.suppress(FileNotFoundError):
                control_socket_path(self.config).unlink()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            request = json.loads(await reader.readline() or b"{}")
            name = request.get("peer")
            if request.get("cmd") != "peer-stream" or not isinstance(name, str) or (
                self.config.peer(name) is None
            ):
                writer.write(json.dumps({"ok": False, "error": "a one-shot round holds this "
                                         "node; try again"}).encode() + b"\n")
                await writer.drain()
                return
            writer.write(b'{"ok": true}\n')
            await writer.drain()
            conn = PeerConnection(self.node, transport.unix_stream(reader, writer, f"{name}@ssh"),
                                  expected_name=name, initiator=False)
            self.connections.add(conn)
            try:
                with contextlib.suppress(DagsyncError):
                    await conn.run()
            finally:
                self.connections.discard(conn)
        except (ValueError, AttributeError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass  # the one-shot process is ending; its peers were told
        finally:
            writer.close()
            self.handlers.discard(task)


def _dry_run_listing(node: Node, conn: PeerConnection) -> list[tuple[str, str, str]]:
    out = []
    for fid, link in conn.links.items():
        for action, path in link.would:
            out.append((f"{conn.peer_name} -> here", action, f"{fid}/{path}"))
        # What the peer would take from us: decide each of our records against theirs.
        for path, rec in link.folder.records.items():
            theirs = link.remote.get(path)
            act = decide(theirs, rec.version)
            if act.kind.value != "keep":
                out.append((f"here -> {conn.peer_name}", act.kind.value, f"{fid}/{path}"))
    return out


async def serve_stdio(config: Config, peer_name: str | None) -> None:
    """Speak the peer protocol on stdin/stdout for an ssh:// peer."""
    if peer_name is not None and config.peer(peer_name) is None:
        raise UsageError(f"--peer {peer_name}: no such peer in {config.source}")
    lock = await _hold_or_bridge(config, peer_name)
    if lock is None:
        return  # served through the process that holds this node
    node = Node(config)
    served = ServedPeers(config, node)
    try:
        await node.open()
        await node.scan_all()
        await served.start()
        stream = await transport.open_stdio_stream()
        conn = PeerConnection(node, stream, expected_name=peer_name, initiator=False)
        with contextlib.suppress(DagsyncError):
            await conn.run()
        await served.finish(BRIDGE_WAIT)
    finally:
        served.stop()
        node.close()
        lock.release()


BRIDGE_WAIT = 60.0


async def _hold_or_bridge(config: Config, peer_name: str | None) -> AgentLock | None:
    """Take this node's lock, or hand the peer to whoever holds it (an agent or another
    one-shot process), waiting for it to listen. None when the peer was served."""
    config.node.state_dir.mkdir(parents=True, exist_ok=True)
    deadline = asyncio.get_running_loop().time() + BRIDGE_WAIT
    while True:
        lock = AgentLock(config.node.state_dir)
        try:
            lock.acquire()
            return lock
        except DagsyncError:
            pass  # held by another process
        if peer_name is None:
            raise UsageError("serve --stdio needs --peer NAME while another dagsync process "
                             "(agent or sync) runs on this node")
        try:
            await _bridge_to_agent(config, peer_name)
            return None
        except AgentNotRunning:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def _bridge_to_agent(config: Config, peer_name: str) -> None:
    path = control_socket_path(config)
    try:
        reader, writer = await asyncio.open_unix_connection(str(path), limit=2**20)
    except (FileNotFoundError, ConnectionRefusedError):
        raise AgentNotRunning(f"no agent answers on {path}") from None
    writer.write(json.dumps({"cmd": "peer-stream", "peer": peer_name}).encode() + b"\n")
    await writer.drain()
    reply = json.loads(await reader.readline() or b"{}")
    if not reply.get("ok"):
        raise DagsyncError(f"agent refused the peer stream: {reply.get('error')}")
    stdio = await transport.open_stdio_stream()

    async def pump_in() -> None:
        while data := await stdio.read(256 * 1024):
            writer.write(data)
            await writer.drain()
        writer.write_eof()

    async def pump_out() -> None:
        while data := await reader.read(256 * 1024):
            stdio.write(data)
            await stdio.drain()

    tasks = [asyncio.create_task(pump_in()), asyncio.create_task(pump_out())]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    writer.close()
    with contextlib.suppress(Exception):
        sys.stdout.flush()
