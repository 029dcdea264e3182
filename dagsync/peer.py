"""One connection to one peer: moves frames between a transport Stream and a protocol
Session, serves the peer's requests, and pulls the peer's index into our folders."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import xxhash

from dagsync import delta, fsio
from dagsync import protocol as p
from dagsync.errors import DagsyncError, PeerClosed, ProtocolError, TransportError
from dagsync.model import FileVersion, Kind

if TYPE_CHECKING:
    from dagsync.engine import Fetch, FolderEngine
    from dagsync.node import Node
    from dagsync.transport import Stream

log = logging.getLogger("dagsync.peer")

HELLO_TIMEOUT = 15.0
REQUEST_TIMEOUT = 60.0
SERVE_CONCURRENCY = 16
PING_INTERVAL = 10.0
IDLE_TIMEOUT = 35.0
RETRY_DELAYS = (1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
READ_SIZE = 256 * 1024
# Delta transfer (delta.py): a file of at least DELTA_MIN bytes whose older version we
# hold is fetched as the chunks we lack. Up to DELTA_MAX bytes (both versions are read
# whole into memory); a peer is served SIGNATURE_CONCURRENCY signatures at a time.
DELTA_MIN = 64 * 1024
DELTA_MAX = 32 * 1024 * 1024
SIGNATURE_CONCURRENCY = 2
DELTA_CONCURRENCY = 8  # delta fetches in flight per fetch_many

Reply = p.Response | p.BatchResponse | p.SignatureReply
Asking = p.Request | p.BatchRequest | p.SignatureRequest | p.RangeRequest


class FetchFailed(DagsyncError):
    pass


_STATUS_TEXT = {
    p.Status.NO_SUCH_FILE: "peer no longer has the file",
    p.Status.CHANGED: "file changed on the peer",
    p.Status.REFUSED: "peer refused the request",
    p.Status.ERROR: "peer could not read the file",
}


@dataclass
class FolderLink:
    """Progress of one shared folder on this connection."""

    folder: FolderEngine
    their_index_id: int
    their_max_seq: int
    sent_seq: int  # our sequence number the peer has been sent up to
    processed_seq: int  # their sequence number we fully applied
    acked_seq: int = 0  # our sequence number the peer says it applied
    caught_up: bool = False  # we applied everything the peer had when it last said so
    failures: int = 0
    retries: int = 0  # Resends since a batch last went through: the backoff step
    retry_pending: bool = False
    inbox: asyncio.Queue[p.Index] = field(default_factory=asyncio.Queue)
    held: p.Index | None = None  # taken from the inbox but not contiguous with the last
    wake_sender: asyncio.Event = field(default_factory=asyncio.Event)
    would: list[tuple[str, str]] = field(default_factory=list)
    remote: dict[str, FileVersion] = field(default_factory=dict)  # dry run: their records
    # Versions this peer sent us on this connection: never worth sending back to it.
    echo: dict[str, FileVersion] = field(default_factory=dict)


COALESCE_ENTRIES = 50_000  # most index entries merged into one apply round


def _coalesce(link: FolderLink, msg: p.Index) -> p.Index:
    """Merge the index batches already waiting into one apply round. A round pipelines
    fetching with writing; starting one per batch stalls the pipeline at each batch (an
    initial sync arrives as many batches). Only contiguous batches merge, so progress
    still moves over contiguous ranges only."""
    if link.inbox.empty():
        return msg
    entries = {e.path: e for e in msg.entries}
    last, caught_up = msg.last_seq, msg.caught_up
    while not link.inbox.empty() and len(entries) < COALESCE_ENTRIES:
        nxt = link.inbox.get_nowait()
        if nxt.from_seq > last:
            link.held = nxt  # a gap: applied in its own round, after this one
            break
        entries.update((e.path, e) for e in nxt.entries)
        last, caught_up = max(last, nxt.last_seq), nxt.caught_up
    return p.Index(msg.folder, msg.index_id, tuple(entries.values()), last, caught_up,
                   msg.from_seq)


class PeerConnection:
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
        self.closed = asyncio.Event()
        self.clock_skew_ms = 0
        self.close_reason = ""
        self._early: list[p.Message] = []
        self.duplicate = False  # the peer is served by another connection
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
                self.duplicate = True
                self._send(p.Close("duplicate connection"))
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
        with contextlib.suppress(ProtocolError, OSError, ValueError):
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

    def _send(self, msg: p.Message) -> None:
        if self.session.closed:
            raise PeerClosed(f"peer {self.peer_name}: connection closed")
        self.stream.write(self.session.send(msg))

    async def _send_drained(self, msg: p.Message) -> None:
        self._send(msg)
        await self.stream.drain()

    async def _reader(self) -> None:
        for msg in self._early:
            self._dispatch(msg)
        self._early = []
        while True:
            for msg in self._receive(await self._read()):
                self._dispatch(msg)

    def _dispatch(self, msg: p.Message) -> None:
        if isinstance(msg, p.Index):
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
            raise PeerClosed(f"peer {self.peer_name} closed the connection: {msg.reason}")

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

    # --- serving the peer ------------------------------------------------------------

    async def _serve(self, req: p.Request) -> None:
        async with self._serve_sem:
            folder = self.node.folders.get(req.folder)
            status, data = p.Status.OK, b""
            if folder is None or req.folder not in self.links:
                status = p.Status.REFUSED
            else:
                try:
                    got = await asyncio.to_thread(
                        folder.read_for_peer, req.path, req.hash, req.offset, req.size
                    )
                    if got is None:
                        status = p.Status.CHANGED
                    else:
                        data = got
                except FileNotFoundError:
                    status = p.Status.NO_SUCH_FILE
                except (OSError, DagsyncError) as exc:
                    log.warning("peer %s asked for %s/%s: %s", self.peer_name, req.folder,
                                req.path, exc)
                    status = p.Status.ERROR
            with contextlib.suppress(OSError, ProtocolError, TransportError):
                await self._send_drained(p.Response(req.id, status, data))

    async def _serve_batch(self, req: p.BatchRequest) -> None:
        async with self._serve_sem:
            folder = self.node.folders.get(req.folder)
            if folder is None or req.folder not in self.links:
                items = tuple((p.Status.REFUSED, b"") for _ in req.items)
            else:
                items = tuple(await asyncio.to_thread(self._read_batch, folder, req.items))
            with contextlib.suppress(OSError, ProtocolError, TransportError, ValueError):
                await self._send_drained(p.BatchResponse(req.id, items))

    def _read_batch(
        self, folder: FolderEngine, items: tuple[tuple[str, str], ...]
    ) -> list[tuple[int, bytes]]:
        with fsio.Dirs(folder.root) as dirs:
            return self._read_items(folder, items, dirs)

    def _read_items(
        self, folder: FolderEngine, items: tuple[tuple[str, str], ...], dirs: fsio.Dirs
    ) -> list[tuple[int, bytes]]:
        out: list[tuple[int, bytes]] = []
        budget = p.BLOCK_SIZE
        for path, want in items:
            status, data = p.Status.OK, b""
            try:
                got = folder.read_for_peer(path, want, 0, budget, dirs)
                if got is None:
                    status = p.Status.CHANGED
                elif len(got) >= budget:
                    status = p.Status.REFUSED  # over the batch budget: ask for it alone
                else:
                    data = got
            except FileNotFoundError:
                status = p.Status.NO_SUCH_FILE
            except (OSError, DagsyncError) as exc:
                log.warning("peer %s asked for %s/%s: %s", self.peer_name, folder.id, path, exc)
                status = p.Status.ERROR
            budget -= len(data)
            out.append((status, data))
        return out

    async def _serve_signature(self, req: p.SignatureRequest) -> None:
        async with self._serve_sem, self._signature_sem:
            folder = self.node.folders.get(req.folder)
            reply = p.SignatureReply(req.id, p.Status.REFUSED)
            if folder is not None and req.folder in self.links:
                try:
                    reply = await asyncio.to_thread(_signature_reply, folder, req)
                except FileNotFoundError:
                    reply = p.SignatureReply(req.id, p.Status.NO_SUCH_FILE)
                except (OSError, DagsyncError) as exc:
                    log.warning("peer %s asked for the signature of %s/%s: %s",
                                self.peer_name, req.folder, req.path, exc)
                    reply = p.SignatureReply(req.id, p.Status.ERROR)
            with contextlib.suppress(OSError, ProtocolError, TransportError, ValueError):
                await self._send_drained(reply)

    async def _serve_ranges(self, req: p.RangeRequest) -> None:
        async with self._serve_sem:
            folder = self.node.folders.get(req.folder)
            if folder is None or req.folder not in self.links:
                items = tuple((p.Status.REFUSED, b"") for _ in req.ranges)
            else:
                items = tuple(await asyncio.to_thread(self._read_ranges, folder, req))
            with contextlib.suppress(OSError, ProtocolError, TransportError, ValueError):
                await self._send_drained(p.BatchResponse(req.id, items))

    def _read_ranges(self, folder: FolderEngine, req: p.RangeRequest) -> list[tuple[int, bytes]]:
        """Each range, whole; a range past the end of the version is refused."""
        v = folder.version(req.path)
        size = v.size if v is not None else 0
        out: list[tuple[int, bytes]] = []
        with fsio.Dirs(folder.root) as dirs:
            for offset, length in req.ranges:
                status, data = p.Status.OK, b""
                try:
                    if offset + length > size:
                        status = p.Status.REFUSED
                    else:
                        got = folder.read_for_peer(req.path, req.hash, offset, length, dirs)
                        if got is None or len(got) != length:
                            status = p.Status.CHANGED
                        else:
                            data = got
                except FileNotFoundError:
                    status = p.Status.NO_SUCH_FILE
                except (OSError, DagsyncError) as exc:
                    log.warning("peer %s asked for %s/%s: %s", self.peer_name, folder.id,
                                req.path, exc)
                    status = p.Status.ERROR
                out.append((status, data))
        return out

    async def _sender(self, link: FolderLink) -> None:
        """Send our index from where the peer is, then every new record as it lands."""
        folder = link.folder
        announced_caught_up = False
        while True:
            link.wake_sender.clear()
            start = link.sent_seq
            records = await asyncio.to_thread(
                self.node.index.since, folder.id, start, p.MAX_INDEX_ENTRIES
            )
            if records:
                last = records[-1].seq
                await self._send_drained(p.Index(
                    folder=folder.id, index_id=folder.index_id,
                    entries=tuple(r.version for r in records
                                  if folder.publishes(r.version) and not _echo(link, r.version)),
                    last_seq=last, caught_up=last >= folder.max_seq, from_seq=start,
                ))
                if link.sent_seq == start:  # else a Resend moved it back meanwhile
                    link.sent_seq = last
                announced_caught_up = last >= folder.max_seq
                continue
            if not announced_caught_up:
                await self._send_drained(p.Index(
                    folder=folder.id, index_id=folder.index_id, entries=(),
                    last_seq=start, caught_up=True, from_seq=start,
                ))
                announced_caught_up = True
            changed = asyncio.create_task(folder.wait_for_seq_above(link.sent_seq))
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
        if msg.entries:
            link.echo.update((e.path, e) for e in msg.entries)
            outcome = await folder.apply_batch(msg.entries, fetch)
            _forget_echoes(link, msg.entries, outcome.applied)
            self.node.note_outcome(self, folder.id, outcome)
            if not outcome.complete:
                link.failures += 1
                for path, reason in outcome.failed[:5]:
                    log.warning("peer %s: folder %s: %s: %s", self.peer_name, folder.id,
                                path, reason)
        if link.failures:
            if msg.caught_up and not link.retry_pending:
                link.retry_pending = True
                asyncio.get_running_loop().create_task(self._retry_later(link))
            return
        link.retries = 0  # everything so far went through: a next failure starts over
        if msg.from_seq > link.processed_seq:
            return  # a batch sent before a Resend: applied, but not a contiguous step
        link.processed_seq = max(link.processed_seq, msg.last_seq)
        await asyncio.to_thread(self.node.index.set_peer_progress, self.peer_name,
                                folder.id, link.their_index_id, link.processed_seq)
        await self._send_drained(p.Ack(folder.id, link.their_index_id, link.processed_seq))
        link.caught_up = msg.caught_up
        link.their_max_seq = max(link.their_max_seq, msg.last_seq)
        self.node.note_ack(self)

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

    def fetcher(self, folder_id: str) -> Fetch:
        return _PeerSource(self, folder_id)

    async def fetch_many(
        self, folder_id: str, vs: list[FileVersion]
    ) -> list[bytes | BaseException]:
        """Whole small files in one round trip; a per-file FetchFailed where one failed."""
        resp = await self._round_trip(p.BatchRequest(
            id=next(self._ids) % 2**32, folder=folder_id,
            items=tuple((v.path, v.hash) for v in vs),
        ))
        if not isinstance(resp, p.BatchResponse) or len(resp.items) != len(vs):
            raise FetchFailed("malformed batch response")
        return [
            data if status == p.Status.OK
            else FetchFailed(_STATUS_TEXT.get(status, f"status {status}"))
            for status, data in resp.items
        ]

    async def fetch(self, folder_id: str, v: FileVersion) -> bytes:
        """The whole content of a version, in blocks; FetchFailed with the reason."""
        if v.size == 0:
            return b""
        chunks = []
        offset = 0
        while offset < v.size:
            size = min(p.BLOCK_SIZE, v.size - offset)
            resp = await self._request(p.Request(
                id=next(self._ids) % 2**32, folder=folder_id, path=v.path, hash=v.hash,
                offset=offset, size=size,
            ))
            if resp.status != p.Status.OK:
                raise FetchFailed(_STATUS_TEXT.get(resp.status, f"status {resp.status}"))
            if len(resp.data) != size:
                raise FetchFailed(f"short block ({len(resp.data)} of {size} bytes)")
            chunks.append(resp.data)
            offset += size
        return b"".join(chunks)

    def delta_source(self, folder_id: str, v: FileVersion) -> FolderEngine | None:
        """Our folder, when `v` is worth a delta fetch: the peer speaks "delta", `v` is
        big enough, and we hold another live version of that path to build it from."""
        if (p.FEATURE_DELTA not in self.peer_features or v.kind is not Kind.FILE
                or not DELTA_MIN <= v.size <= DELTA_MAX):
            return None
        folder = self.node.folders.get(folder_id)
        if folder is None:
            return None
        old = folder.version(v.path)
        if (old is None or old.deleted or old.kind is not Kind.FILE or old.hash == v.hash
                or not 0 < old.size <= DELTA_MAX):
            return None
        return folder

    async def fetch_delta(self, folder_id: str, v: FileVersion) -> bytes | None:
        """`v` built from our current content of its path and the chunks we lack, checked
        against its hash; None when we hold no usable older version or delta failed (the
        caller fetches the whole file). A lost connection raises."""
        folder = self.delta_source(folder_id, v)
        if folder is None:
            return None
        try:
            old = await asyncio.to_thread(fsio.read_range, folder.root, v.path, 0, DELTA_MAX)
        except (OSError, DagsyncError, ValueError):
            return None
        try:
            data, fetched = await self._fetch_delta(folder_id, v, old)
        except (FetchFailed, ValueError) as exc:
            self.delta_stats["fallbacks"] += 1
            log.info("peer %s: %s/%s: delta transfer failed (%s); fetching the whole file",
                     self.peer_name, folder_id, v.path, exc)
            return None
        self.delta_stats["files"] += 1
        self.delta_stats["file_bytes"] += v.size
        self.delta_stats["fetched_bytes"] += fetched
        log.debug("peer %s: %s/%s: delta transfer fetched %d of %d bytes", self.peer_name,
                  folder_id, v.path, fetched, v.size)
        return data

    async def _fetch_delta(self, folder_id: str, v: FileVersion,
                           old: bytes) -> tuple[bytes, int]:
        # The sender cuts with target_for(size): index our chunks while it does.
        target = delta.target_for(v.size)
        indexing = asyncio.ensure_future(asyncio.to_thread(delta.holdings, old, target))
        try:
            sig = await self._round_trip(p.SignatureRequest(
                id=next(self._ids) % 2**32, folder=folder_id, path=v.path, hash=v.hash))
            have = await indexing
        finally:
            indexing.cancel()
        if not isinstance(sig, p.SignatureReply):
            raise FetchFailed("malformed signature reply")
        if sig.status != p.Status.OK:
            raise FetchFailed(_STATUS_TEXT.get(sig.status, f"status {sig.status}"))
        signature = delta.Signature(sig.target, sig.chunks)
        if signature.size != v.size:
            raise FetchFailed(f"signature covers {signature.size} bytes, not {v.size}")
        plan = await asyncio.to_thread(delta.plan, signature, old, p.BLOCK_SIZE,
                                       have if sig.target == target else None)
        groups = delta.batches(plan.fetch, p.BLOCK_SIZE, p.MAX_RANGES)
        parts = await asyncio.gather(*(self._fetch_ranges(folder_id, v, g) for g in groups))
        fetched = [data for part in parts for data in part]
        data = delta.assemble(plan, old, fetched)
        if len(data) != v.size or xxhash.xxh3_128_hexdigest(data) != v.hash:
            raise FetchFailed("assembled content does not match its hash")
        return data, plan.fetch_bytes

    async def _fetch_ranges(self, folder_id: str, v: FileVersion,
                            ranges: list[tuple[int, int]]) -> list[bytes]:
        resp = await self._round_trip(p.RangeRequest(
            id=next(self._ids) % 2**32, folder=folder_id, path=v.path, hash=v.hash,
            ranges=tuple(ranges)))
        if not isinstance(resp, p.BatchResponse) or len(resp.items) != len(ranges):
            raise FetchFailed("malformed range response")
        out = []
        for (status, data), (_, size) in zip(resp.items, ranges, strict=True):
            if status != p.Status.OK:
                raise FetchFailed(_STATUS_TEXT.get(status, f"status {status}"))
            if len(data) != size:
                raise FetchFailed(f"short range ({len(data)} of {size} bytes)")
            out.append(data)
        return out

    async def _request(self, req: p.Request) -> p.Response:
        resp = await self._round_trip(req)
        if not isinstance(resp, p.Response):
            raise FetchFailed("malformed response")
        return resp

    async def _round_trip(self, req: Asking) -> Reply:
        fut: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self.pending[req.id] = fut
        try:
            await self._send_drained(req)
            return await asyncio.wait_for(fut, REQUEST_TIMEOUT)
        except TimeoutError:
            raise FetchFailed(f"no answer from {self.peer_name} within "
                              f"{REQUEST_TIMEOUT:.0f} s") from None
        finally:
            self.pending.pop(req.id, None)

    def _fail_pending(self, exc: Exception) -> None:
        for fut in list(self.pending.values()) + list(self.digest_waiters.values()):
            if not fut.done():
                fut.set_exception(exc)
                fut.exception()  # mark retrieved
        self.pending.clear()
        self.digest_waiters.clear()

    async def ask_digests(self, paths: bool = False, timeout: float = 10.0) -> p.DigestReply:
        nonce = next(self._ids)
        fut: asyncio.Future[p.DigestReply] = asyncio.get_running_loop().create_future()
        self.digest_waiters[nonce] = fut
        await self._send_drained(p.DigestRequest(nonce, paths))
        return await asyncio.wait_for(fut, timeout)

    # --- one-shot completion ---------------------------------------------------------

    def in_sync(self) -> bool:
        """We applied all the peer had and the peer applied all we have."""
        return all(
            link.caught_up and link.failures == 0 and inbox_empty(link)
            and (self.dry_run or link.acked_seq >= link.folder.max_seq
                 or link.folder.max_seq == 0)
            for link in self.links.values()
        )

    async def _finish_when_in_sync(self) -> None:
        while not self.in_sync():
            await asyncio.sleep(0.02)
        self.done.set()
        self.close("round complete")

    def on_closed(self, callback: Callable[[], None]) -> None:
        asyncio.get_running_loop().create_task(self._call_when_closed(callback))

    async def _call_when_closed(self, callback: Callable[[], None]) -> None:
        await self.closed.wait()
        callback()


class _PeerSource:
    """One folder's content as served by this connection's peer (engine.Fetch)."""

    def __init__(self, conn: PeerConnection, folder_id: str) -> None:
        self.conn = conn
        self.folder_id = folder_id

    async def fetch(self, v: FileVersion) -> bytes:
        data = await self.conn.fetch_delta(self.folder_id, v)
        if data is not None:
            return data
        return await self.conn.fetch(self.folder_id, v)

    async def fetch_many(self, vs: list[FileVersion]) -> list[bytes | BaseException]:
        """Small files in one batch; those worth a delta (delta_source) each by delta."""
        by_delta = [i for i, v in enumerate(vs)
                    if self.conn.delta_source(self.folder_id, v) is not None]
        if not by_delta:
            return await self.conn.fetch_many(self.folder_id, vs)
        sem = asyncio.Semaphore(DELTA_CONCURRENCY)

        async def one(v: FileVersion) -> bytes | BaseException:
            async with sem:
                try:
                    return await self.fetch(v)
                except Exception as exc:  # a per-file result, as fetch_many gives
                    return exc

        async def batched(rest: list[FileVersion]) -> list[bytes | BaseException]:
            if not rest:
                return []
            try:
                return await self.conn.fetch_many(self.folder_id, rest)
            except Exception as exc:
                return [exc] * len(rest)

        chosen = set(by_delta)
        singles, batch = await asyncio.gather(
            asyncio.gather(*(one(vs[i]) for i in by_delta)),
            batched([v for i, v in enumerate(vs) if i not in chosen]),
        )
        got_single, got_batch = iter(singles), iter(batch)
        return [next(got_single) if i in chosen else next(got_batch) for i in range(len(vs))]


def _signature_reply(folder: FolderEngine, req: p.SignatureRequest) -> p.SignatureReply:
    """Runs in a worker thread: the signature of the version the peer asked for, only
    after our content was read whole and checked against that version's hash."""
    v = folder.version(req.path)
    if v is None or v.deleted or v.kind is not Kind.FILE or v.hash != req.hash:
        return p.SignatureReply(req.id, p.Status.CHANGED)
    if v.size > DELTA_MAX:
        return p.SignatureReply(req.id, p.Status.REFUSED)
    data = folder.read_for_peer(req.path, req.hash, 0, v.size + 1)
    if data is None or len(data) != v.size or xxhash.xxh3_128_hexdigest(data) != v.hash:
        return p.SignatureReply(req.id, p.Status.CHANGED)
    sig = delta.signature(data)
    if len(sig.chunks) > p.MAX_SIGNATURE_CHUNKS:
        return p.SignatureReply(req.id, p.Status.REFUSED)
    return p.SignatureReply(req.id, p.Status.OK, sig.target, sig.chunks)


def _echo(link: FolderLink, v: FileVersion) -> bool:
    """True when `v` is exactly what this peer sent us (it has it already)."""
    sent = link.echo.get(v.path)
    if sent is None:
        return False
    del link.echo[v.path]
    if not link.echo:
        link.echo = {}  # a dict keeps its largest table; this one held a whole index
    return sent == v


def _forget_echoes(link: FolderLink, entries: Iterable[FileVersion], applied: list[str]) -> None:
    """Drop the echo notes the sender will never consume: entries we did not apply whose
    path's record it has already sent. Kept, they would hold every version a peer ever
    announced in memory (a whole index after an initial sync)."""
    done = set(applied)
    records = link.folder.records
    for e in entries:
        if e.path not in done:
            seq = records.seq(e.path)
            if seq is None or seq <= link.sent_seq:
                link.echo.pop(e.path, None)
    if not link.echo:
        link.echo = {}


def inbox_empty(link: FolderLink) -> bool:
    return link.inbox.empty()
