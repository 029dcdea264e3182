"""What a peer connection holds that its parts share: PeerConnection (peer.py) is
assembled from mixins over PeerState, serving the peer's requests (peer_serving.py) and
fetching from it (peer_fetching.py), so they declare one set of attributes here, with
the constants and the send path they all use."""

from __future__ import annotations

import asyncio
import itertools
from typing import TYPE_CHECKING

from dagsync import protocol as p
from dagsync.errors import PeerClosed

if TYPE_CHECKING:
    from dagsync.folder_link import FolderLink
    from dagsync.node import Node
    from dagsync.transport import Stream

# Delta transfer (delta.py): a file of at least DELTA_MIN bytes whose older version we
# hold is fetched as the chunks we lack. Up to DELTA_MAX bytes (both versions are read
# whole into memory); a peer is served SIGNATURE_CONCURRENCY signatures at a time.
DELTA_MIN = 64 * 1024
DELTA_MAX = 32 * 1024 * 1024
SIGNATURE_CONCURRENCY = 2
DELTA_CONCURRENCY = 8  # delta fetches in flight per fetch_many

Reply = p.Response | p.BatchResponse | p.SignatureReply
Asking = p.Request | p.BatchRequest | p.SignatureRequest | p.RangeRequest


class PeerState:
    """The attributes the parts of a connection share; PeerConnection sets them."""

    node: Node
    stream: Stream
    session: p.Session
    peer_name: str
    links: dict[str, FolderLink]
    pending: dict[int, asyncio.Future[Reply]]
    digest_waiters: dict[int, asyncio.Future[p.DigestReply]]
    _ids: itertools.count[int]
    _serve_sem: asyncio.Semaphore
    _signature_sem: asyncio.Semaphore
    peer_features: frozenset[str]
    delta_stats: dict[str, int]

    def _send(self, msg: p.Message) -> None:
        if self.session.closed:
            raise PeerClosed(f"peer {self.peer_name}: connection closed")
        self.stream.write(self.session.send(msg))

    async def _send_drained(self, msg: p.Message) -> None:
        self._send(msg)
        await self.stream.drain()
