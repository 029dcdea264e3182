"""Answering a peer's requests on its connection: whole files, batches of small
files, delta signatures and byte ranges, each read in a worker thread."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import TYPE_CHECKING

from dagsync import delta, fsio
from dagsync import protocol as p
from dagsync.errors import DagsyncError, ProtocolError, TransportError
from dagsync.folder_state import content_hash
from dagsync.model import Kind
from dagsync.peer_state import DELTA_MAX, PeerState

if TYPE_CHECKING:
    from dagsync.engine import FolderEngine

log = logging.getLogger("dagsync.peer")

# Files of a batch opened and read ahead at once. A window's fds stay open while it is
# read: with SERVE_CONCURRENCY batches served at once, at most 16 x 32 fds.
READ_AHEAD = 32
# Bytes read ahead per file, at most: a batch holds small files (fetching.SMALL_FILE), and
# a peer asking for big ones in a batch must not make us read 32 x 4 MiB ahead per window.
READ_AHEAD_BYTES = 256 * 1024


class PeerServing(PeerState):
    """Serves the peer's reads of our folders (a mixin of PeerConnection)."""

    async def _serve(self, req: p.Request) -> None:
        async with self._serve_sem:
            folder = self.node.folders.get(req.folder)
            status, data = p.Status.REFUSED, b""
            if folder is not None and req.folder in self.links:
                status, got = await asyncio.to_thread(
                    self._read_one, folder, req.path, req.hash, req.offset, req.size, None
                )
                data = got or b""
                self.node.served += 1
            with contextlib.suppress(OSError, ProtocolError, TransportError):
                await self._send_drained(p.Response(req.id, status, data))

    async def _serve_batch(self, req: p.BatchRequest) -> None:
        async with self._serve_sem:
            folder = self.node.folders.get(req.folder)
            if folder is None or req.folder not in self.links:
                items = tuple((p.Status.REFUSED, b"") for _ in req.items)
            else:
                items = tuple(await asyncio.to_thread(self._read_batch, folder, req.items))
                self.node.served += len(items)
            with contextlib.suppress(OSError, ProtocolError, TransportError, ValueError):
                await self._send_drained(p.BatchResponse(req.id, items))

    def _read_one(
        self, folder: FolderEngine, path: str, want: str, offset: int, size: int,
        dirs: fsio.Dirs | None,
    ) -> tuple[int, bytes | None]:
        """One read the peer asked for, in a worker thread: (status, content). A missing
        file, a changed version or an unreadable one is a status, not an error."""
        try:
            got = folder.read_for_peer(path, want, offset, size, dirs)
        except FileNotFoundError:
            return p.Status.NO_SUCH_FILE, None
        except (OSError, DagsyncError) as exc:
            log.warning("peer %s asked for %s/%s: %s", self.peer_name, folder.id, path, exc)
            return p.Status.ERROR, None
        return (p.Status.CHANGED, None) if got is None else (p.Status.OK, got)

    def _read_batch(
        self, folder: FolderEngine, items: tuple[tuple[str, str], ...]
    ) -> list[tuple[int, bytes]]:
        with fsio.Dirs(folder.root) as dirs:
            return self._read_items(folder, items, dirs)

    def _read_items(
        self, folder: FolderEngine, items: tuple[tuple[str, str], ...], dirs: fsio.Dirs
    ) -> list[tuple[int, bytes]]:
        """A batch's files in one bulkio call (fsio.read_files: read ahead READ_AHEAD at a
        time, sharing one frame's budget); those we no longer hold in the version asked
        for are CHANGED without a look at the disk."""
        held = [folder.holds(path, want) for path, want in items]
        got = iter(fsio.read_files([path for (path, _), ok in zip(items, held, strict=True)
                                    if ok], dirs, p.BLOCK_SIZE, READ_AHEAD_BYTES, READ_AHEAD))
        out: list[tuple[int, bytes]] = []
        for (path, _), ok in zip(items, held, strict=True):
            if not ok:
                out.append((p.Status.CHANGED, b""))
                continue
            data = next(got)
            if isinstance(data, bytes):
                out.append((p.Status.OK, data))
            elif data is None:
                out.append((p.Status.REFUSED, b""))  # over the batch's budget: ask alone
            elif isinstance(data, FileNotFoundError):
                out.append((p.Status.NO_SUCH_FILE, b""))
            else:
                log.warning("peer %s asked for %s/%s: %s", self.peer_name, folder.id, path,
                            data)
                out.append((p.Status.ERROR, b""))
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
                if offset + length > size:
                    status, got = p.Status.REFUSED, None
                else:
                    status, got = self._read_one(folder, req.path, req.hash, offset, length, dirs)
                    if got is not None and len(got) != length:
                        status, got = p.Status.CHANGED, None
                data = got or b""
                out.append((status, data))
        return out


def _signature_reply(folder: FolderEngine, req: p.SignatureRequest) -> p.SignatureReply:
    """Runs in a worker thread: the signature of the version the peer asked for, only
    after our content was read whole and checked against that version's hash."""
    v = folder.version(req.path)
    if v is None or v.deleted or v.kind is not Kind.FILE or v.hash != req.hash:
        return p.SignatureReply(req.id, p.Status.CHANGED)
    if v.size > DELTA_MAX:
        return p.SignatureReply(req.id, p.Status.REFUSED)
    data = folder.read_for_peer(req.path, req.hash, 0, v.size + 1)
    if data is None or len(data) != v.size or content_hash(data) != v.hash:
        return p.SignatureReply(req.id, p.Status.CHANGED)
    sig = delta.signature(data)
    if len(sig.chunks) > p.MAX_SIGNATURE_CHUNKS:
        return p.SignatureReply(req.id, p.Status.REFUSED)
    return p.SignatureReply(req.id, p.Status.OK, sig.target, sig.chunks)

