"""Everything one node holds while it runs: config, index, archive, clock, folders, and
the live peer connections with their state for `status`. Shared by the agent, the
one-shot `sync` and `serve --stdio`."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from dagsync import __version__
from dagsync.archive import ConflictArchive
from dagsync.config import Config
from dagsync.engine import BatchOutcome, FolderEngine, SharedClock
from dagsync.fsio import cleanup_temp_files, ensure_dir
from dagsync.index import Index, IndexCorrupt
from dagsync.protocol import CLOSE_REPLACED, FolderOffer
from dagsync.sshlib import asyncssh
from dagsync.transport import parse_public_key

if TYPE_CHECKING:
    from dagsync.peer import PeerConnection

log = logging.getLogger("dagsync.node")


@dataclass
class PeerState:
    """What `status` shows about a peer."""

    name: str
    connected: bool = False
    since: float | None = None  # connected since / down since
    last_seen: float | None = None
    last_sync: float | None = None
    last_error: str = ""
    clock_skew_ms: int = 0
    files_behind: int = 0  # their records we have not applied yet
    conflicts: int = 0
    ever_connected: bool = False

    def as_dict(self) -> dict[str, object]:
        if self.connected:
            state = "connected"
        elif self.ever_connected or self.last_error:
            state = "down"
        else:
            state = "never seen"
        return {
            "name": self.name, "state": state, "since": self.since,
            "last_seen": self.last_seen, "last_sync": self.last_sync,
            "last_error": self.last_error, "clock_skew_ms": self.clock_skew_ms,
            "files_behind": self.files_behind,
        }


def _open_index(path: Path) -> Index:
    """The node's index. A corrupt one is moved aside and a new one started: the first
    scan then records every file as unversioned, so the cluster's versions win over
    them (newer local content archived) and nothing the cluster deleted comes back."""
    try:
        return Index(path)
    except IndexCorrupt as exc:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        for suffix in ("", "-wal", "-shm"):
            src = path.with_name(path.name + suffix)
            if src.exists():
                src.rename(path.with_name(f"{path.name}.corrupt-{stamp}{suffix}"))
        log.error("%s; moved aside as %s.corrupt-%s, rebuilding the index by rescanning",
                  exc, path.name, stamp)
        return Index(path)


class Node:
    version = __version__

    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.node.name
        state_dir = config.node.state_dir
        ensure_dir(state_dir)
        self.index = _open_index(state_dir / "index.db")
        self.archive = ConflictArchive(state_dir)
        hlc = self.index.get_meta("hlc")
        self.clock = SharedClock(int(hlc) if hlc else 0)
        temp_dir = state_dir / "tmp"
        ensure_dir(temp_dir)
        for leftover in cleanup_temp_files(temp_dir, copies=True):
            log.info("removed temp file left by a crash: %s", leftover)
        self.folders: dict[str, FolderEngine] = {
            f.id: FolderEngine(f, self.name, self.index, self.archive, self.clock,
                               config.max_file_size, temp_dir)
            for f in config.folders
        }
        self.connections: dict[str, PeerConnection] = {}
        # Peers a connection ended in sync with; a one-shot round reads it when its own
        # connection to a peer gave way to the one the peer opened (crossed cron rounds).
        self.synced_with: set[str] = set()
        self.peers: dict[str, PeerState] = {p.name: PeerState(p.name) for p in config.peers}
        self.connection_changed = asyncio.Event()
        # Files and index entries served to peers: work that changes no sequence number
        # but leaves garbage behind (the agent trims memory once it stops moving).
        self.served = 0

    async def open(self) -> None:
        for folder in self.folders.values():
            await folder.open()

    def close(self) -> None:
        self.index.set_meta("hlc", str(self.clock.last))
        self.index.close()

    async def scan_all(self) -> int:
        total = 0
        for folder in self.folders.values():
            total += (await folder.scan()).new_versions
        return total

    def digests(self) -> dict[str, str]:
        return {fid: f.digest() for fid, f in self.folders.items()}

    def file_hashes(self) -> dict[str, dict[str, str]]:
        """Every live path with its content hash, per folder (for `status --diff`)."""
        return {
            fid: {p: r.version.hash for p, r in f.records.items() if not r.version.deleted}
            for fid, f in self.folders.items()
        }

    def offers(self, peer_name: str | None) -> dict[str, FolderOffer]:
        """Our Hello: per folder our index id and length, and how much of theirs we hold."""
        out = {}
        for fid, folder in self.folders.items():
            have = self.index.peer_progress(peer_name, fid) if peer_name else None
            out[fid] = FolderOffer(
                index_id=folder.index_id, max_seq=folder.max_seq,
                have_index_id=have[0] if have else 0, have_seq=have[1] if have else 0,
            )
        return out

    # --- peers -----------------------------------------------------------------------

    def authorize(self, username: str, key: asyncssh.SSHKey) -> bool:
        """SSH auth: the user name is the peer's node name and the key must be pinned."""
        peer = self.config.peer(username)
        if peer is None or peer.public_key is None:
            return False
        try:
            pinned = parse_public_key(peer.public_key)
        except (ValueError, asyncssh.KeyImportError):
            return False
        return bool(pinned.public_data == key.public_data)

    def register(self, conn: PeerConnection) -> bool:
        """Keep one connection per peer. When both dialled at once, both sides keep the
        one opened by the node with the smaller name."""
        existing = self.connections.get(conn.peer_name)
        if existing is not None and not existing.closed.is_set():
            preferred_initiator = self.name < conn.peer_name
            if existing.initiator == preferred_initiator or conn.initiator != preferred_initiator:
                log.debug("peer %s: dropping duplicate connection", conn.peer_name)
                return False
            existing.superseded = True
            existing.close(CLOSE_REPLACED)
        self.connections[conn.peer_name] = conn
        state = self.peers.setdefault(conn.peer_name, PeerState(conn.peer_name))
        state.connected, state.ever_connected = True, True
        state.since = state.last_seen = time.time()
        state.last_error = ""
        state.clock_skew_ms = conn.clock_skew_ms
        self.connection_changed.set()
        return True

    def unregister(self, conn: PeerConnection) -> None:
        if conn.synced:
            self.synced_with.add(conn.peer_name)
        if self.connections.get(conn.peer_name) is conn:
            del self.connections[conn.peer_name]
            state = self.peers.get(conn.peer_name)
            if state is not None:
                state.connected = False
                state.since = state.last_seen = time.time()
            self.connection_changed.set()

    def note_error(self, peer_name: str, error: str) -> None:
        state = self.peers.setdefault(peer_name, PeerState(peer_name))
        if state.connected:
            return  # a spare connection failed; the peer itself is fine
        if state.since is None:
            state.since = time.time()
        state.last_error = error

    def note_ack(self, conn: PeerConnection) -> None:
        state = self.peers.get(conn.peer_name)
        if state is None:
            return
        state.last_seen = time.time()
        if all(link.caught_up for link in conn.links.values()):
            state.last_sync = state.last_seen
        state.files_behind = sum(
            max(0, link.their_max_seq - link.processed_seq) for link in conn.links.values()
        )

    def note_outcome(self, conn: PeerConnection, folder_id: str, outcome: BatchOutcome) -> None:
        state = self.peers.get(conn.peer_name)
        if state is None:
            return
        state.conflicts += outcome.conflicts
        if outcome.failed:
            path, reason = outcome.failed[0]
            state.last_error = f"{folder_id}/{path}: {reason}"
