"""Links to peers: one dial loop per configured peer that reconnects with capped,
jittered backoff, and the serving of streams peers open to this node (over the embedded
SSH server, or handed over by `dagsync serve --stdio`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

from dagsync import transport
from dagsync.config import Config, PeerConfig
from dagsync.errors import DagsyncError, PeerClosed, ProtocolError, TransportError
from dagsync.node import Node
from dagsync.peer import PeerConnection

log = logging.getLogger("dagsync.agent")  # part of the agent

BACKOFF_FIRST = 0.25
BACKOFF_CAP = 30.0
STABLE_CONNECTION = 10.0


def backoff_delay(attempt: int, rand: float | None = None) -> float:
    """Capped exponential backoff with jitter (half to full of the step)."""
    step: float = min(BACKOFF_CAP, BACKOFF_FIRST * (2 ** min(attempt, 16)))
    return step * (0.5 + (random.random() if rand is None else rand) / 2)


class PeerLinks:
    """The agent's peer links, a mixin of Agent, which sets these attributes."""

    config: Config
    node: Node | None
    _dialers: dict[str, asyncio.Task[None]]
    _wake: dict[str, asyncio.Event]

    def _start_dialer(self, peer: PeerConfig, node_key: Any) -> None:
        self._wake[peer.name] = asyncio.Event()
        self._dialers[peer.name] = asyncio.get_running_loop().create_task(
            self._dial_loop(peer, node_key)
        )

    async def _dial_loop(self, peer: PeerConfig, node_key: Any) -> None:
        node = self.node
        assert node is not None
        attempt = 0
        wake = self._wake[peer.name]
        while True:
            conn = node.connections.get(peer.name)
            if conn is not None:  # the peer dialed us
                since = time.monotonic()
                await conn.closed.wait()
                if time.monotonic() - since > STABLE_CONNECTION:
                    attempt = 0
                await asyncio.sleep(backoff_delay(attempt))
                attempt += 1  # a link that keeps dying at once must not spin
                continue
            wake.clear()
            started = time.monotonic()
            try:
                stream = await transport.dial(peer, node.name, node_key, self.config.node.key)
                conn = PeerConnection(node, stream, expected_name=peer.name, initiator=True)
                await conn.run()
            except PeerClosed as exc:
                log.info("%s", exc)
            except (TransportError, ProtocolError) as exc:
                node.note_error(peer.name, str(exc))
                # An established link going down is news, not retry noise; the retry
                # still backs off unless the link had been up a while (below).
                established = conn is not None and conn.session.peer_hello is not None
                level = logging.WARNING if attempt == 0 or established else logging.DEBUG
                log.log(level, "%s", exc)
            except DagsyncError as exc:
                node.note_error(peer.name, str(exc))
                log.warning("peer %s: %s", peer.name, exc)
            except Exception as exc:
                node.note_error(peer.name, f"internal error: {exc}")
                log.exception("peer %s: connection failed", peer.name)
            if time.monotonic() - started > STABLE_CONNECTION:
                attempt = 0
            delay = backoff_delay(attempt)
            attempt += 1
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)

    async def _inbound(self, peer_name: str, stream: transport.Stream) -> None:
        await self._serve_stream(peer_name, stream)

    async def _serve_stream(self, peer_name: str, stream: transport.Stream) -> None:
        node = self.node
        assert node is not None
        conn = PeerConnection(node, stream, expected_name=peer_name, initiator=False)
        try:
            await conn.run()
        except PeerClosed as exc:
            log.info("%s", exc)
        except (TransportError, ProtocolError) as exc:
            node.note_error(peer_name, str(exc))
            log.warning("peer %s (incoming): %s", peer_name, exc)
        except Exception:
            log.exception("peer %s (incoming): connection failed", peer_name)
