"""Fetching content from a peer on its connection: whole files in blocks, batches of
small files, and delta transfers (the chunks of a file we lack); _PeerSource offers one
folder's share of it to the engine as its Fetch."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from dagsync import delta, fsio
from dagsync import protocol as p
from dagsync.errors import DagsyncError
from dagsync.folder_state import content_hash
from dagsync.model import FileVersion, Kind
from dagsync.peer_state import (
    DELTA_CONCURRENCY,
    DELTA_MAX,
    DELTA_MIN,
    Asking,
    PeerState,
    Reply,
)

if TYPE_CHECKING:
    from dagsync.engine import Fetch, FolderEngine

log = logging.getLogger("dagsync.peer")

REQUEST_TIMEOUT = 60.0


class FetchFailed(DagsyncError):
    pass


_STATUS_TEXT = {
    p.Status.NO_SUCH_FILE: "peer no longer has the file",
    p.Status.CHANGED: "file changed on the peer",
    p.Status.REFUSED: "peer refused the request",
    p.Status.ERROR: "peer could not read the file",
}


class PeerFetching(PeerState):
    """Fetches from the peer (a mixin of PeerConnection)."""

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
        data = await asyncio.to_thread(delta.assemble, plan, old, fetched)  # up to 32 MiB
        if len(data) != v.size or content_hash(data) != v.hash:
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


class _PeerSource:
    """One folder's content as served by this connection's peer (engine.Fetch)."""

    def __init__(self, conn: PeerFetching, folder_id: str) -> None:
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

