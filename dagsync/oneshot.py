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
    received = [0]
    for folder in node.folders.values():
        folder.on_applied.append(lambda outcome: received.__setitem__(
            0, received[0] + len(outcome.applied)))

    async def show_progress() -> None:
        assert progress is not None
        while True:
            done = len(report.in_sync) + len(report.down)
            progress(f"{done}/{len(peers)} peer(s) done, {received[0]} file(s) received")
            await asyncio.sleep(0.2)

    ticker = asyncio.get_running_loop().create_task(show_progress()) if progress else None
    control: asyncio.Server | None = None
    try:
        await node.open()
        await node.scan_all()
        control = await _serve_peer_streams(config, node)

        async def one(peer: PeerConfig) -> None:
            try:
                stream = await transport.dial(peer, node.name, node_key, config.node.key)
                conn = PeerConnection(node, stream, expected_name=peer.name, initiator=True,
                                      oneshot=True, dry_run=dry_run)
                ended: DagsyncError | None = None
                try:
                    await asyncio.wait_for(conn.run(), timeout)
                except DagsyncError as exc:
                    ended = exc
                if conn.duplicate:
                    # The peer's own round reached us first; that connection serves both.
                    await _wait_for_other(node, peer.name, timeout)
                    report.in_sync.append(peer.name)
                    return
                if not conn.done.is_set():
                    raise DagsyncError(conn.close_reason or (str(ended) if ended else "")
                                       or "connection ended before the round completed")
                report.in_sync.append(peer.name)
                if dry_run:
                    report.would.extend(_dry_run_listing(node, conn))
            except TimeoutError:
                report.down[peer.name] = f"round not complete within {timeout:.0f} s"
            except DagsyncError as exc:
                report.down[peer.name] = str(exc)

        await asyncio.gather(*(one(p) for p in peers))
    finally:
        _close_peer_streams(config, control)
        if ticker is not None:
            ticker.cancel()
            assert progress is not None
            progress(f"{len(peers)}/{len(peers)} peer(s) done, {received[0]} file(s) received\n")
        node.close()
    return report


async def _wait_for_other(node: Node, peer_name: str, timeout: float) -> None:
    other = node.connections.get(peer_name)
    if other is None:
        return
    try:
        await asyncio.wait_for(other.closed.wait(), timeout)
    except TimeoutError:
        raise DagsyncError(f"round not complete within {timeout:.0f} s") from None
    if not other.synced:
        raise DagsyncError(other.close_reason or "connection ended before the round completed")


async def _serve_peer_streams(config: Config, node: Node) -> asyncio.Server:
    """While a one-shot process holds the node, it serves the peers that reach this node
    through `serve --stdio` (cron rounds crossing each other), as the agent would."""
    path = control_socket_path(config)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await reader.readline() or b"{}")
            name = request.get("peer")
            if request.get("cmd") != "peer-stream" or not isinstance(name, str) or (
                config.peer(name) is None
            ):
                writer.write(json.dumps({"ok": False, "error": "a one-shot round holds this "
                                         "node; try again"}).encode() + b"\n")
                await writer.drain()
                return
            writer.write(b'{"ok": true}\n')
            await writer.drain()
            conn = PeerConnection(node, transport.unix_stream(reader, writer, f"{name}@ssh"),
                                  expected_name=name, initiator=False)
            with contextlib.suppress(DagsyncError):
                await conn.run()
        except (ValueError, AttributeError, ConnectionError):
            pass
        finally:
            writer.close()

    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = await asyncio.start_unix_server(handle, path=str(path))
    os.chmod(path, 0o600)
    return server


def _close_peer_streams(config: Config, server: asyncio.Server | None) -> None:
    if server is not None:
        server.close()
        with contextlib.suppress(FileNotFoundError):
            control_socket_path(config).unlink()


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
    control: asyncio.Server | None = None
    try:
        await node.open()
        await node.scan_all()
        control = await _serve_peer_streams(config, node)
        stream = await transport.open_stdio_stream()
        conn = PeerConnection(node, stream, expected_name=peer_name, initiator=False)
        with contextlib.suppress(DagsyncError):
            await conn.run()
    finally:
        _close_peer_streams(config, control)
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
