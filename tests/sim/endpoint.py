"""One side of one connection, mirroring dagsync.peer.PeerConnection for one folder.

Every message goes through a real `protocol.Session` on each side (Hello first, framing,
ordering). The sender (peer._sender) announces the index from the peer's persisted
progress, leaving out what this peer itself sent us (folder_link.next_index_batch); the puller
(peer._puller) applies batches one at a time, fetches content from this peer only (small
files several to a BatchRequest, as fetching.fetch_all does), verifies it, and persists
progress only after a complete batch; a failed batch is retried with a Resend from the
persisted progress (peer._retry_later).

The sender runs to completion when woken; the real one awaits between reading the index
and the end of the send, and keeps a Resend that arrives meanwhile (`if link.sent_seq ==
start`), which is what running to completion does too.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from dagsync import protocol as p
from dagsync.engine import BATCH_BYTES, BATCH_FILES, SMALL_FILE, content_hash
from dagsync.errors import ProtocolError
from dagsync.model import ActionKind, FileVersion, Kind
from dagsync.peer import RETRY_DELAYS
from tests.sim.world import Outcome, Planned, SimNode

if TYPE_CHECKING:
    from tests.sim.network import Connection

FOLDER = "dags"


@dataclass
class Batch:
    """An Index message being applied: planned, waiting for its fetches."""

    msg: p.Index
    planned: list[Planned]
    outcome: Outcome = field(default_factory=Outcome)
    contents: dict[str, bytes] = field(default_factory=dict)
    waiting: int = 0
    start: int = 0  # the sender's sequence number this batch follows


class Endpoint:
    def __init__(self, conn: Connection, node: SimNode, peer: str) -> None:
        self.conn = conn
        self.node = node
        self.peer = peer
        self.session = p.Session()
        self.ready = False  # the peer's Hello was accepted
        # FolderLink
        self.their_index_id = 0
        self.sent_seq = 0
        self.processed_seq = 0
        self.acked_seq = 0
        self.failures = 0
        self.announced_caught_up = False
        self.inbox: deque[p.Index] = deque()
        self.inbox_starts: deque[int] = deque()
        self.busy: Batch | None = None
        self.pending: dict[int, tuple[Batch, list[FileVersion]]] = {}
        self.echo: dict[str, FileVersion] = {}  # what this peer sent us on this connection
        self._ids = 0
        # Where each Index on its way to us starts (the sender's `start`). The real Index
        # does not carry it; the Rules.progress_fence patch adds it to the message, the
        # simulation passes it beside the (ordered) stream.
        self.index_starts: deque[int] = deque()

    @property
    def alive(self) -> bool:
        return not self.conn.broken and self.node.alive

    def send(self, msg: p.Message) -> None:
        self.conn.send(self, msg)

    # --- handshake (peer.run, _accept_hello, node.offers) ------------------------------

    def start(self) -> None:
        have = self.node.d.progress.get(self.peer)
        self.send(p.Hello(
            node=self.node.name,
            folders={FOLDER: p.FolderOffer(
                index_id=self.node.d.index_id, max_seq=self.node.max_seq,
                have_index_id=have[0] if have else 0, have_seq=have[1] if have else 0,
            )},
            hlc=self.node.tick(), wall_ms=self.node.wall_ms(),
        ))

    def _accept_hello(self, hello: p.Hello) -> None:
        if hello.node != self.peer:
            raise ProtocolError(f"peer says it is {hello.node!r}, expected {self.peer!r}")
        self.node.observe(hello.hlc)
        offer = hello.folders[FOLDER]
        self.their_index_id = offer.index_id
        self.sent_seq = offer.have_seq if offer.have_index_id == self.node.d.index_id else 0
        progress = self.node.d.progress.get(self.peer)
        self.processed_seq = progress[1] if progress and progress[0] == offer.index_id else 0
        self.ready = True
        self.conn.established()
        self.wake()

    # --- receiving (peer._dispatch) ----------------------------------------------------

    def dispatch(self, msg: p.Message) -> None:
        if isinstance(msg, p.Hello):
            self._accept_hello(msg)
        elif isinstance(msg, p.IndexFrame | p.Index):
            if msg.index_id != self.their_index_id:
                raise ProtocolError("index id changed mid-connection")
            self.inbox.append(msg.decode())
            self.inbox_starts.append(self.index_starts.popleft())
            self._pull_next()
        elif isinstance(msg, p.Request | p.BatchRequest):
            self.conn.net.sched.after(self.conn.net.rng.randint(0, 2), lambda: self._serve(msg))
        elif isinstance(msg, p.Response | p.BatchResponse):
            self._on_response(msg)
        elif isinstance(msg, p.Ack):
            if msg.index_id == self.node.d.index_id:
                self.acked_seq = max(self.acked_seq, msg.seq)
        elif isinstance(msg, p.Resend):
            self.sent_seq = min(self.sent_seq, msg.from_seq)
            self.wake()
        elif isinstance(msg, p.Close):
            self.conn.break_(f"{self.peer} closed: {msg.reason}")

    # --- serving (peer_serving._serve, _serve_batch, _read_batch) ---------------------

    def _serve(self, req: p.Request | p.BatchRequest) -> None:
        if not self.alive:
            return
        if isinstance(req, p.Request):
            data = self.node.read_for_peer(req.path, req.hash, req.offset, req.size)
            if data is None:
                self.send(p.Response(req.id, p.Status.CHANGED))
            else:
                self.send(p.Response(req.id, p.Status.OK, data))
            return
        items: list[tuple[int, bytes]] = []
        budget = p.BLOCK_SIZE
        for path, want in req.items:
            got = self.node.read_for_peer(path, want, 0, budget)
            if got is None:
                items.append((p.Status.CHANGED, b""))
            elif len(got) >= budget:
                items.append((p.Status.REFUSED, b""))
            else:
                items.append((p.Status.OK, got))
                budget -= len(got)
        self.send(p.BatchResponse(req.id, tuple(items)))

    # --- sending the index (peer._sender) ----------------------------------------------

    def wake(self) -> None:
        """The sender woke up (new local records, or a Resend): send what the peer lacks."""
        if not self.ready or not self.alive:
            return
        self.announced_caught_up = False
        limit = self.conn.net.cfg.batch_limit
        while True:
            start = self.sent_seq
            records = self.node.since(start, limit)
            if records:
                last = records[-1].seq
                caught_up = last >= self.node.max_seq
                self.conn.other(self).index_starts.append(start)
                entries = tuple(r.version for r in records if not self._echo(r.version))
                self.send(p.Index(FOLDER, self.node.d.index_id, entries, last, caught_up))
                if self.conn.broken:
                    return
                self.sent_seq = last
                self.announced_caught_up = caught_up
                continue
            if not self.announced_caught_up:
                self.conn.other(self).index_starts.append(start)
                self.send(p.Index(FOLDER, self.node.d.index_id, (), start, True))
                self.announced_caught_up = True
            return

    def _echo(self, v: FileVersion) -> bool:
        """As folder_link.next_index_batch: True when `v` is exactly what this peer
        sent us (it has it)."""
        sent = self.echo.pop(v.path, None)
        return sent is not None and sent == v

    def local_commit(self) -> None:
        """folder.wait_for_seq_above(sent_seq) returned."""
        if self.node.max_seq > self.sent_seq:
            self.wake()

    # --- pulling (peer._puller, engine.apply_batch, fetching.fetch_all) ----------------

    def _pull_next(self) -> None:
        if self.busy is not None or not self.inbox or not self.alive:
            return
        msg = self.inbox.popleft()
        batch = Batch(msg, [], start=self.inbox_starts.popleft())
        self.busy = batch
        if not msg.entries:
            self._finish(batch)
            return
        self.echo.update((e.path, e) for e in msg.entries)
        batch.planned = self.node.plan(msg.entries)
        wanted = [
            pl.action.result for pl in batch.planned
            if pl.action.kind is ActionKind.FETCH and pl.action.result is not None
            and pl.action.result.kind is Kind.FILE
        ]
        for group in _fetch_groups(wanted):
            self._ids += 1
            self.pending[self._ids] = (batch, group)
            batch.waiting += 1
            if len(group) == 1 and group[0].size > SMALL_FILE:
                v = group[0]
                self.send(p.Request(self._ids, FOLDER, v.path, v.hash, 0, v.size))
            else:
                self.send(p.BatchRequest(self._ids, FOLDER,
                                         tuple((v.path, v.hash) for v in group)))
            if self.conn.broken:
                return
        if batch.waiting == 0:
            self._apply_soon(batch)

    def _on_response(self, resp: p.Response | p.BatchResponse) -> None:
        got = self.pending.pop(resp.id, None)
        if got is None:
            raise ProtocolError(f"response to unknown request {resp.id}")
        batch, group = got
        if isinstance(resp, p.Response):
            items: tuple[tuple[int, bytes], ...] = ((resp.status, resp.data),)
        else:
            items = resp.items
        if len(items) != len(group):
            items = ((p.Status.ERROR, b""),) * len(group)
        for v, (status, data) in zip(group, items, strict=True):
            if status != p.Status.OK:
                batch.outcome.failed.append((v.path, f"fetch failed: status {status}"))
            else:
                self._verified(batch, v, data)
        batch.waiting -= 1
        if batch.waiting == 0:
            self._apply_soon(batch)

    def _verified(self, batch: Batch, v: FileVersion, data: bytes) -> None:
        """fetching.fetch_all: content that does not match its hash is refused."""
        if len(data) != v.size or content_hash(data) != v.hash:
            batch.outcome.failed.append((v.path, "content does not match its announced hash"))
            self.conn.net.stats.refused += 1
            self.node.trace(f"{self.node.name} refused corrupt {v.path} from {self.peer}")
            return
        batch.contents[v.path] = data

    def _apply_soon(self, batch: Batch) -> None:
        """The apply runs a moment later (a worker thread), so batches from other peers
        and local edits may land between deciding and applying."""
        def go() -> None:
            if not self.node.alive or self.busy is not batch:
                return  # the node died, or the connection was replaced
            self.node.apply(batch.planned, batch.contents, batch.outcome)
            self._finish(batch)

        self.conn.net.sched.after(self.conn.net.rng.randint(0, 3), go)

    def _finish(self, batch: Batch) -> None:
        self.busy = None
        if not self.alive:
            return
        msg = batch.msg
        if msg.entries and not batch.outcome.complete:
            self.failures += 1
            self.node.trace(f"{self.node.name} batch from {self.peer} failed: "
                            f"{batch.outcome.failed[:2]}")
        if self.failures:
            if msg.caught_up:
                self._retry_later()
        elif not self.node.rules.progress_fence or batch.start <= self.processed_seq:
            # (the proposed patch only lets a batch that follows our progress advance it)
            if batch.start > self.processed_seq:
                self.node.history.trigger("progress-gap")
                self.node.trace(f"{self.node.name} progress from {self.peer} jumps from "
                                f"{self.processed_seq} to {msg.last_seq} over a failed batch")
            self.processed_seq = max(self.processed_seq, msg.last_seq)
            self.node.d.progress[self.peer] = (self.their_index_id, self.processed_seq)
            self.send(p.Ack(FOLDER, self.their_index_id, self.processed_seq))
        self._pull_next()

    def _retry_later(self) -> None:
        """peer._retry_later: after a delay, forget the failures and ask again from the
        persisted progress. Batches already on their way still arrive first."""
        delay = int(RETRY_DELAYS[min(self.failures, len(RETRY_DELAYS)) - 1] * 1000)

        def go() -> None:
            if not self.alive:
                return
            self.failures = 0
            self.node.trace(f"{self.node.name} resend from {self.peer} at {self.processed_seq}")
            self.send(p.Resend(FOLDER, self.processed_seq))

        self.conn.net.sched.after(delay, go)

    def fail_pending(self) -> None:
        """The connection is gone: peer_fetching._fail_pending; the puller task is cancelled."""
        self.pending.clear()
        self.echo.clear()
        self.inbox.clear()
        self.inbox_starts.clear()
        self.busy = None



def _fetch_groups(wanted: list[FileVersion]) -> list[list[FileVersion]]:
    """fetching.fetch_all: big files alone, small ones in batches of BATCH_FILES files and
    BATCH_BYTES bytes at most."""
    groups = [[v] for v in wanted if v.size > SMALL_FILE]
    batch: list[FileVersion] = []
    size = 0
    for v in (v for v in wanted if v.size <= SMALL_FILE):
        if batch and (len(batch) >= BATCH_FILES or size + v.size > BATCH_BYTES):
            groups.append(batch)
            batch, size = [], 0
        batch.append(v)
        size += v.size
    if batch:
        groups.append(batch)
    return groups
