"""One connection to one peer: moves frames between a transport Stream and a protocol
Session, sends our index, and pulls the peer's index into our folders.

PeerConnection is assembled from parts with one job each: peer_state.py (the attributes
they share and the send path), peer_serving.py (answering the peer's requests) and
peer_fetching.py (fetching from the peer); folder_link.py holds each shared folder's
progress on the connection. This module runs the handshake and the connection's tasks."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from dagsync import protocol as p
from dagsync.errors import PeerClosed, ProtocolError, TransportError
from dagsync.folder_link import (
    COALESCE_ENTRIES,
    FIRST_BATCH_ENTRIES,
    FolderLink,
    Round,
    _coalesce,
    _forget_echoes,
    drop_echo_runs,
    drop_echoes,
    inbox_empty,
    next_index_batch,
    note_recorded,
)
from dagsync.peer_fetching import REQUEST_TIMEOUT, FetchFailed, PeerFetching, _PeerSource
from dagsync.peer_serving import PeerServing, _signature_reply
from dagsync.peer_state import (
    DELTA_CONCURRENCY,
    DELTA_MAX,
    DELTA_MIN,
    SIGNATURE_CONCURRENCY,
    Asking,
    Reply,
)

if TYPE_CHECKING:
    from dagsync.engine import Fetch
    from dagsync.index import Record
    from dagsync.node import Node
    from dagsync.transport import Stream

__all__ = [
    "COALESCE_ENTRIES", "DELTA_CONCURRENCY", "DELTA_MAX", "DELTA_MIN", "HELLO_TIMEOUT",
    "IDLE_TIMEOUT", "PING_INTERVAL", "READ_SIZE", "REQUEST_TIMEOUT", "RETRY_DELAYS",
    "SERVE_CONCURRENCY", "SIGNATURE_CONCURRENCY", "Asking", "FetchFailed", "FolderLink",
    "PeerConnection", "Reply", "_PeerSource", "_coalesce", "_forget_echoes",
    "_signature_reply", "inbox_empty",
]

log = logging.getLogger("dagsync.peer")

HELLO_TIMEOUT = 15.0
SERVE_CONCURRENCY = 16
PING_INTERVAL = 10.0
IDLE_TIMEOUT = 35.0
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
READ_SIZE = 256 * 1024


class PeerConnection(PeerServing, PeerFetching):
    """One connection: serving (PeerServing) and fetching (PeerFetching) over the shared
    state (PeerState); run once, until the stream ends."""

    def __init__(
        self,
        node: Node,
        stream: Stream,
        *,
        expected_name: str | None,
        initiator: bool,
        oneshot: bool = False,
        dry_run: bool = False,
    ) -> None:
        self.node = node
        self.stream = stream
        self.expected_name = expected_name
        self.initiator = initiator
        self.oneshot = oneshot
        self.dry_run = dry_run
        self.session = p.Session()
        self.peer_name = expected_name or "?"
        self.links: dict[str, FolderLink] = {}
        self.pending: dict[int, asyncio.Future[Reply]] = {}
        self.digest_waiters: dict[int, asyncio.Future[p.DigestReply]] = {}
        self._ids = itertools.count(1)
        self._serve_sem = asyncio.Semaphore(SERVE_CONCURRENCY)
        self._signature_sem = asyncio.Semaphore(SIGNATURE_CONCURRENCY)
        self.peer_features: frozenset[str] = frozenset()
        # Delta fetches on this connection: files, bytes they hold, bytes fetched for them.
        self.delta_stats = {"files": 0, "file_bytes": 0, "fetched_bytes": 0, "fallbacks": 0}
        self.last_received = time.monotonic()
        self.done = asyncio.Event()  # oneshot: both sides are in sync
        self.news = asyncio.Event()  # set by each message and each applied round
        self.closed = asyncio.Event()
        self.clock_skew_ms = 0
        self.close_reason = ""
        self._early: list[p.Message] = []
        self.superseded = False  # either side chose another connection to this peer
        self.peer_vouched = False  # the peer closed with "round complete"
        self.synced = False  # in sync when it closed

    # --- lifecycle -------------------------------------------------------------------

    async def run(self) -> None:
        """Handshake, then serve and pull until the stream ends. Raises TransportError or
        ProtocolError with the reason; the caller logs it and keeps the agent running."""
        try:
            self._send(p.Hello(
                node=self.node.name,
                folders=self.node.offers(None if self.dry_run else self.expected_name),
                hlc=self.node.clock.tick(), wall_ms=int(time.time() * 1000),
                software=f"dagsync/{self.node.version}", features=p.FEATURES,
            ))
            hello = await asyncio.wait_for(self._read_hello(), HELLO_TIMEOUT)
            self._accept_hello(hello)
            if not self.node.register(self):
                self.superseded = True
                self._send(p.Close(p.CLOSE_DUPLICATE))
                return
            try:
                await self._run_tasks()
            finally:
                self.node.unregister(self)
        except TimeoutError:
            raise TransportError(f"peer {self.peer_name}: no handshake within "
                                 f"{HELLO_TIMEOUT:.0f} s") from None
        finally:
            self._fail_pending(TransportError(f"connection to {self.peer_name} closed"))
            self.stream.close()
            self.closed.set()

    async def _read_hello(self) -> p.Hello:
        """The peer's Hello. Messages that arrived in the same read are kept for later."""
        while True:
            msgs = self._receive(await self._read())
            for i, msg in enumerate(msgs):
                if isinstance(msg, p.Hello):
                    self._early = msgs[i + 1 :]
                    return msg
                if isinstance(msg, p.Close):
                    self._note_close(msg)
                    raise PeerClosed(f"peer {self.peer_name} closed: {msg.reason}")

    def _accept_hello(self, hello: p.Hello) -> None:
        name = hello.node
        if self.expected_name is not None and name != self.expected_name:
            raise ProtocolError(f"peer says it is {name!r}, expected {self.expected_name!r}")
        if self.node.config.peer(name) is None:
            raise ProtocolError(f"peer {name!r} is not configured here")
        self.peer_name = name
        self.peer_features = frozenset(hello.features)
        self.node.clock.observe(hello.hlc)
        self.clock_skew_ms = hello.wall_ms - int(time.time() * 1000)
        if abs(self.clock_skew_ms) > 1000:
            log.warning("peer %s: clock differs from ours by %.1f s; last-writer-wins relies "
                        "on clocks for concurrent edits", name, self.clock_skew_ms / 1000)
        for fid, offer in hello.folders.items():
            folder = self.node.folders.get(fid)
            if folder is None:
                continue
            mine_ok = offer.have_index_id == folder.index_id
            progress = self.node.index.peer_progress(name, fid)
            processed = progress[1] if progress and progress[0] == offer.index_id else 0
            self.links[fid] = FolderLink(
                folder=folder, their_index_id=offer.index_id, their_max_seq=offer.max_seq,
                sent_seq=offer.have_seq if mine_ok else 0, processed_seq=processed,
            )
        missing = set(self.node.folders) - set(self.links)
        if missing:
            log.info("peer %s does not share folder(s) %s", name, ", ".join(sorted(missing)))

    async def _run_tasks(self) -> None:
        log.info("peer %s: connected (%s, %d shared folder(s))", self.peer_name,
                 self.stream.description, len(self.links))
        tasks = [self._reader(), self._pinger()]
        for link in self.links.values():
            if not self.dry_run:
                tasks.append(self._sender(link))
                tasks.append(self._reverter(link))
            tasks.append(self._puller(link))
        if self.oneshot:
            tasks.append(self._finish_when_in_sync())
        runners = [asyncio.create_task(t) for t in tasks]
        try:
            done, _ = await asyncio.wait(runners, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                exc = task.exception()
                if exc is not None:
                    raise exc
        finally:
            self.synced = self.in_sync()
            for task in runners:
                task.cancel()
            await asyncio.gather(*runners, return_exceptions=True)

    def close(self, reason: str) -> None:
        """Ask the peer to close and stop this connection."""
        self.close_reason = reason
        # TransportError too: the peer's own Close may have ended the session a moment
        # ago, and an agent stopping must not fail over a connection already closing.
        with contextlib.suppress(TransportError, ProtocolError, OSError, ValueError):
            self._send(p.Close(reason))
        self.stream.close()

    # --- I/O -------------------------------------------------------------------------

    async def _read(self) -> bytes:
        data = await self.stream.read(READ_SIZE)
        if not data:
            raise TransportError(f"peer {self.peer_name}: connection closed")
        self.last_received = time.monotonic()
        return data

    def _receive(self, data: bytes) -> list[p.Message]:
        return self.session.receive_data(data)

    async def _reader(self) -> None:
        for msg in self._early:
            self._dispatch(msg)
        self._early = []
        while True:
            for msg in self._receive(await self._read()):
                self._dispatch(msg)

    def _dispatch(self, msg: p.Message) -> None:
        self.news.set()
        if isinstance(msg, p.IndexFrame | p.Index):
            link = self._link(msg.folder)
            if msg.index_id != link.their_index_id:
                raise ProtocolError(f"index id of folder {msg.folder!r} changed mid-connection")
            link.inbox.put_nowait(msg)
        elif isinstance(msg, p.Request):
            asyncio.get_running_loop().create_task(self._serve(msg))
        elif isinstance(msg, p.BatchRequest):
            asyncio.get_running_loop().create_task(self._serve_batch(msg))
        elif isinstance(msg, p.SignatureRequest):
            asyncio.get_running_loop().create_task(self._serve_signature(msg))
        elif isinstance(msg, p.RangeRequest):
            asyncio.get_running_loop().create_task(self._serve_ranges(msg))
        elif isinstance(msg, p.Response | p.BatchResponse | p.SignatureReply):
            fut = self.pending.pop(msg.id, None)
            if fut is None:
                raise ProtocolError(f"response to unknown request {msg.id}")
            if not fut.done():
                fut.set_result(msg)
        elif isinstance(msg, p.Ack):
            link = self._link(msg.folder)
            if msg.index_id == link.folder.index_id:
                link.acked_seq = max(link.acked_seq, msg.seq)
                self.node.note_ack(self)
        elif isinstance(msg, p.Resend):
            link = self._link(msg.folder)
            link.sent_seq = min(link.sent_seq, msg.from_seq)
            link.wake_sender.set()
        elif isinstance(msg, p.Ping):
            self._send(p.Pong(msg.nonce))
        elif isinstance(msg, p.DigestRequest):
            files = self.node.file_hashes() if msg.paths else None
            try:
                self._send(p.DigestReply(msg.nonce, self.node.digests(), files))
            except ValueError:  # too many paths for one frame: digests alone
                self._send(p.DigestReply(msg.nonce, self.node.digests()))
        elif isinstance(msg, p.DigestReply):
            waiter = self.digest_waiters.pop(msg.nonce, None)
            if waiter is not None and not waiter.done():
                waiter.set_result(msg)
        elif isinstance(msg, p.Close):
            self._note_close(msg)
            raise PeerClosed(f"peer {self.peer_name} closed the connection: {msg.reason}")

    def _note_close(self, msg: p.Close) -> None:
        """What the peer's Close tells a one-shot round (oneshot.py reads both flags)."""
        self.superseded = msg.reason in p.SUPERSEDED_REASONS
        self.peer_vouched = msg.reason == p.CLOSE_ROUND_COMPLETE

    def _link(self, folder_id: str) -> FolderLink:
        link = self.links.get(folder_id)
        if link is None:
            raise ProtocolError(f"message for folder {folder_id!r}, which is not shared")
        return link

    async def _pinger(self) -> None:
        nonce = 0
        while True:
            await asyncio.sleep(PING_INTERVAL)
            if time.monotonic() - self.last_received > IDLE_TIMEOUT:
                raise TransportError(f"peer {self.peer_name}: no answer for "
                                     f"{IDLE_TIMEOUT:.0f} s")
            nonce += 1
            await self._send_drained(p.Ping(nonce))

    # --- sending our index ----------------------------------------------------------

    async def _sender(self, link: FolderLink) -> None:
        """Send our index from where the peer is, then every new record as it lands."""
        folder = link.folder
        announced_caught_up = False
        limit: int | None = FIRST_BATCH_ENTRIES
        held: tuple[int, int] | None = None  # (start, seq): nothing to send up to seq
        while True:
            link.wake_sender.clear()
            start = link.sent_seq
            passed = held[1] if held is not None and held[0] == start else None
            frame, consumed = await asyncio.to_thread(
                next_index_batch, self.node.index, link, start, limit, passed)
            limit = None
            drop_echoes(link, consumed)
            drop_echo_runs(link, start if frame is None else frame.last_seq)
            held = None
            if frame is not None and frame.count == 0 and link.round_running:
                # Only echoes of what this peer is sending us now: where we are is told
                # once its round is over, in one batch instead of one per applied chunk.
                held = (start, frame.last_seq)
                waiting_from = frame.last_seq
            elif frame is not None:
                await self._send_drained(frame)
                if link.sent_seq == start:  # else a Resend moved it back meanwhile
                    link.sent_seq = frame.last_seq
                announced_caught_up = frame.caught_up
                continue
            else:
                if not announced_caught_up:
                    await self._send_drained(p.Index(
                        folder=folder.id, index_id=folder.index_id, entries=(),
                        last_seq=start, caught_up=True, from_seq=start,
                    ))
                    announced_caught_up = True
                waiting_from = link.sent_seq
            changed = asyncio.create_task(folder.wait_for_seq_above(waiting_from))
            woken = asyncio.create_task(link.wake_sender.wait())
            try:
                await asyncio.wait({changed, woken}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                changed.cancel()
                woken.cancel()
            announced_caught_up = False

    # --- pulling from the peer -------------------------------------------------------

    async def _puller(self, link: FolderLink) -> None:
        """Apply the peer's index batches in order; remember how far we got."""
        fetch = self.fetcher(link.folder.id)
        while True:
            msg, link.held = link.held or await link.inbox.get(), None
            # One round per call: its batch (a whole index after an initial sync) is
            # freed when the round ends, not kept while waiting for the next one.
            await self._pull_round(link, _coalesce(link, msg), fetch)
            del msg

    async def _pull_round(self, link: FolderLink, msg: p.Index, fetch: Fetch) -> None:
        folder = link.folder
        if self.dry_run:
            outcome = await folder.apply_batch(msg.entries, fetch, dry_run=True)
            link.would.extend(outcome.would)
            link.remote.update((e.path, e) for e in msg.entries)
            link.caught_up = msg.caught_up
            return
        last_seq, caught_up = msg.last_seq, msg.caught_up
        if msg.entries:
            link.echo.update((e.path, e) for e in msg.entries)
            batches = Round(link, msg)
            loop = asyncio.get_running_loop()

            def recorded(records: list[Record]) -> None:  # in the thread that wrote them
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
                    loop.call_soon_threadsafe(note_recorded, link, records)

            link.round_running = True
            try:
                outcome = await folder.apply_batch(msg.entries, fetch, more=batches.more,
                                                   recorded=recorded)
            finally:
                link.round_running = False
                link.wake_sender.set()
            last_seq, caught_up = batches.last_seq, batches.caught_up
            _forget_echoes(link, outcome.applied)
            self.node.note_outcome(self, folder.id, outcome)
            if not outcome.complete:
                link.failures += 1
                for path, reason in outcome.failed[:5]:
                    log.warning("peer %s: folder %s: %s: %s", self.peer_name, folder.id,
                                path, reason)
        if link.failures:
            if caught_up and not link.retry_pending:
                link.retry_pending = True
                asyncio.get_running_loop().create_task(self._retry_later(link))
            return
        link.retries = 0  # everything so far went through: a next failure starts over
        if msg.from_seq > link.processed_seq:
            return  # a batch sent before a Resend: applied, but not a contiguous step
        link.processed_seq = max(link.processed_seq, last_seq)
        await asyncio.to_thread(self.node.index.set_peer_progress, self.peer_name,
                                folder.id, link.their_index_id, link.processed_seq)
        # Our state first, then the Ack, with no await between: a peer finishing a one-shot
        # round closes as soon as it reads the Ack, and this side must already count as
        # in sync when that Close arrives (it used to be set after the drain).
        link.caught_up = caught_up
        link.their_max_seq = max(link.their_max_seq, last_seq)
        self.news.set()
        self._send(p.Ack(folder.id, link.their_index_id, link.processed_seq))
        self.node.note_ack(self)
        await self.stream.drain()

    async def _reverter(self, link: FolderLink) -> None:
        """Receive-only folders: bring back the cluster's version of locally edited files."""
        folder = link.folder
        fetch = self.fetcher(folder.id)
        while True:
            await folder.revert_needed.wait()
            folder.revert_needed.clear()
            await folder.revert_local_edits(fetch)
            if folder.reverts:
                await asyncio.sleep(2.0)  # this peer may not hold that version; try again
                folder.revert_needed.set()

    async def _retry_later(self, link: FolderLink) -> None:
        link.retries += 1
        delay = RETRY_DELAYS[min(link.retries, len(RETRY_DELAYS)) - 1]
        await asyncio.sleep(delay)
        link.failures = 0
        link.retry_pending = False
        log.info("peer %s: folder %s: retrying from sequence %d", self.peer_name,
                 link.folder.id, link.processed_seq)
        await self._send_drained(p.Resend(link.folder.id, link.processed_seq))

    async def ask_digests(self, paths: bool = False, timeout: float = 10.0) -> p.DigestReply:
        nonce = next(self._ids)
        fut: asyncio.Future[p.DigestReply] = asyncio.get_running_loop().create_future()
        self.digest_waiters[nonce] = fut
        await self._send_drained(p.DigestRequest(nonce, paths))
        return await asyncio.wait_for(fut, timeout)

    # --- one-shot completion ---------------------------------------------------------

    def in_sync(self) -> bool:
        """We applied all the peer had and the peer applied all we have (which a peer
        closing with "round complete" vouches for: the versions we applied from it took
        sequence numbers here that it has no need to ack)."""
        return all(
            link.caught_up and link.failures == 0 and inbox_empty(link)
            and (self.dry_run or self.peer_vouched or link.acked_seq >= link.folder.max_seq
                 or link.folder.max_seq == 0)
            for link in self.links.values()
        )

    async def _finish_when_in_sync(self) -> None:
        """A one-shot round ends as soon as both sides are in sync: looked at on every
        message and applied round (the peer's last Ack, usually), and every 20 ms for
        what changes otherwise (our own records)."""
        while not self.in_sync():
            self.news.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.news.wait(), 0.02)
        self.done.set()
        self.close(p.CLOSE_ROUND_COMPLETE)

    def on_closed(self, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().create_task(self._call_when_closed(callback))

    async def _call_when_closed(self, callback: Callable[[], None]) -> None:
        await self.closed.wait()
        callback()
