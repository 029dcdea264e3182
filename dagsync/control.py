"""The control socket: the commands `dagsync status`, `sync` and `scan` send to a running
agent over its unix socket, and `peer-stream`, by which `dagsync serve --stdio` hands its
peer to the agent."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from dagsync import transport
from dagsync.config import Config
from dagsync.errors import DagsyncError
from dagsync.links import PeerLinks
from dagsync.node import Node

log = logging.getLogger("dagsync.agent")  # part of the agent

CONTROL_LINE_LIMIT = 64 * 1024
DIFF_LIMIT = 100
STATUS_SCHEMA = 1  # version of the `status --json` document (docs/operations.md)


def control_socket_path(config: Config) -> Path:
    return config.node.state_dir / "agent.sock"


class ControlCommands(PeerLinks):
    """The agent's answers on the control socket, a mixin of Agent (it wakes and serves
    peer links, so it builds on PeerLinks)."""

    started: float

    async def _control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await reader.readline()
            request = json.loads(line or b"{}")
            cmd = request.get("cmd")
            if cmd == "peer-stream":
                await self._control_peer_stream(request, reader, writer)
                return
            if cmd == "status":
                reply: dict[str, Any] = await self.status(bool(request.get("cluster")),
                                                          bool(request.get("diff")))
            elif cmd == "sync":
                reply = await self.sync_round(request.get("peers") or [],
                                              float(request.get("timeout", 60)))
            elif cmd == "scan":
                assert self.node is not None
                reply = {"ok": True, "new_versions": await self.node.scan_all()}
            else:
                reply = {"ok": False, "error": f"unknown command {cmd!r}"}
            writer.write(json.dumps(reply).encode() + b"\n")
            await writer.drain()
        except (ValueError, AttributeError) as exc:
            log.warning("control socket: bad request: %s", exc)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    async def _control_peer_stream(
        self, request: dict[str, Any], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """`dagsync serve --stdio` hands its peer to us, so one process writes the folders."""
        name = request.get("peer")
        if not isinstance(name, str) or self.config.peer(name) is None:
            writer.write(json.dumps({"ok": False, "error": f"unknown peer {name!r}"}).encode()
                         + b"\n")
            await writer.drain()
            return
        writer.write(b'{"ok": true}\n')
        await writer.drain()
        await self._serve_stream(name, transport.unix_stream(reader, writer, f"{name}@ssh"))

    async def sync_round(self, peers: list[str], timeout: float) -> dict[str, Any]:
        """Scan now, then wait until every (chosen) peer is in sync or the timeout ends."""
        node = self.node
        assert node is not None
        await node.scan_all()
        names = peers or [p.name for p in self.config.peers]
        unknown = [n for n in names if self.config.peer(n) is None]
        if unknown:
            return {"ok": False, "error": f"unknown peer(s): {', '.join(unknown)}"}
        for name in names:
            if name not in node.connections and name in self._wake:
                self._wake[name].set()
        deadline = time.monotonic() + timeout
        results: dict[str, str] = {}
        while time.monotonic() < deadline:
            pending = []
            for name in names:
                conn = node.connections.get(name)
                if conn is not None and conn.in_sync():
                    results[name] = "in sync"
                else:
                    pending.append(name)
            if not pending:
                break
            # Down peers get a short grace to reconnect; connected ones the full timeout.
            if all(n not in node.connections for n in pending) and (
                time.monotonic() > deadline - timeout + min(5.0, timeout)
            ):
                break
            await asyncio.sleep(0.05)
        for name in names:
            if name not in results:
                state = node.peers[name]
                results[name] = ("down: " + (state.last_error or "not connected")
                                 if name not in node.connections else "timed out")
        return {"ok": True, "peers": results}

    async def _cluster_view(
        self, diff: bool
    ) -> tuple[dict[str, dict[str, str] | None], dict[str, dict[str, list[str]]]]:
        """Every reachable node's folder digests, and with `diff` the paths where each
        peer differs from this node (at most DIFF_LIMIT per folder)."""
        node = self.node
        assert node is not None
        replies = await _gather_views(node, [p.name for p in self.config.peers], diff)
        digests: dict[str, dict[str, str] | None] = {node.name: node.digests()}
        differences: dict[str, dict[str, list[str]]] = {}
        mine = node.file_hashes() if diff else {}
        for name, reply in replies.items():
            digests[name] = reply.digests if reply is not None else None
            if not diff or reply is None or reply.files is None:
                continue
            for fid, ours in mine.items():
                theirs = reply.files.get(fid, {})
                paths = sorted(p for p in ours.keys() | theirs.keys()
                               if ours.get(p) != theirs.get(p))
                if paths:
                    differences.setdefault(name, {})[fid] = paths[:DIFF_LIMIT]
        return digests, differences

    async def status(self, cluster: bool, diff: bool = False) -> dict[str, Any]:
        node = self.node
        assert node is not None
        folders = []
        for f in node.folders.values():
            files, size = f.counts()
            folders.append({
                "id": f.id, "path": str(f.root), "mode": f.cfg.mode.value, "files": files,
                "readable": f.root.is_dir() and os.access(f.root, os.R_OK | os.X_OK),
                "bytes": size, "digest": f.digest(), "last_scan": f.last_scan,
                "problems": ([f.guard_problem] if f.guard_problem else [])
                + f.last_scan_problems[:20], "watcher": f.watcher_mode,
                "local_edits_refused": f.local_edits_refused,
            })
        peers = [s.as_dict() for s in node.peers.values()]
        reply: dict[str, Any] = {
            "schema": STATUS_SCHEMA, "node": node.name, "agent": True, "pid": os.getpid(),
            "uptime_s": time.time() - self.started, "folders": folders, "peers": peers,
            "conflicts": [
                {"id": e.id, "folder": e.folder, "path": e.path, "time": e.archived_at,
                 "loser": e.loser_origin, "winner": e.winner_origin}
                for e in node.archive.list() if not e.seen
            ],
        }
        if cluster or diff:
            reply["cluster"], reply["cluster_diff"] = await self._cluster_view(diff)
        return reply


async def _gather_views(
    node: Node, names: list[str], diff: bool
) -> dict[str, Any]:
    async def one(name: str) -> Any:
        conn = node.connections.get(name)
        if conn is None:
            return None
        try:
            return await conn.ask_digests(paths=diff)
        except (TimeoutError, DagsyncError):
            return None

    replies = await asyncio.gather(*(one(n) for n in names))
    return dict(zip(names, replies, strict=True))
