"""A TCP proxy on 127.0.0.1 that injects link faults, for tests with real agents.

Point a node's peer address at `proxy.port` and the proxy forwards to the real port.
The proxy runs its own asyncio loop in a background thread; the test thread changes
its mode at any time:

- ``pass``: forward both ways.
- ``cut``: close every open connection and refuse new ones (accepted, then reset).
- ``blackhole``: a hung link. Connections stay open and their bytes are read, but
  nothing is forwarded either way; new connections are accepted and hang too. Bytes
  eaten by the hole are gone, so leaving ``blackhole`` resets the connections that
  crossed it (as both ends of a long-hung TCP link would have given up by then).
- ``slow``: forward each chunk only after `delay_ms` milliseconds.

`bytes_forwarded` counts the bytes delivered in each direction ("up": client to
target, "down": back), so a test can measure what crossed the link.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any

MODES = ("pass", "cut", "blackhole", "slow")
CHUNK = 64 * 1024


@dataclass(eq=False)
class _Pipe:
    """One proxied connection: the client side and the target side."""

    client: asyncio.StreamWriter
    target: asyncio.StreamWriter | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    tainted: bool = False  # bytes were dropped: the stream is no longer valid

    def abort(self) -> None:
        for w in (self.client, self.target):
            if w is not None:
                w.transport.abort()
        for t in self.tasks:
            t.cancel()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1",
                 mode: str = "pass", delay_ms: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self._mode = mode
        self.delay_ms = delay_ms
        self.port = 0
        self.accepted = 0
        self.bytes_forwarded = {"up": 0, "down": 0}
        self._pipes: set[_Pipe] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._count_lock = threading.Lock()

    # --- control, from the test thread ------------------------------------------------

    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                self._server = loop.run_until_complete(
                    asyncio.start_server(self._accept, "127.0.0.1", 0, limit=CHUNK)
                )
                sock: socket.socket = self._server.sockets[0]
                self.port = int(sock.getsockname()[1])
            except BaseException as exc:
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._shutdown())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"faultproxy->{self.target[1]}",
                                        daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        return self

    def stop(self) -> None:
        if self._loop is None or self._thread is None:
            return
        with contextlib.suppress(RuntimeError):  # loop already closed
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop = None

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str, delay_ms: float | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {MODES}")
        if delay_ms is not None:
            self.delay_ms = delay_ms
        self._call(self._set_mode(mode))

    def connections(self) -> int:
        return len(self._pipes)

    def reset_counters(self) -> None:
        with self._count_lock:
            self.bytes_forwarded = {"up": 0, "down": 0}

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        assert self._loop is not None, "proxy not started"
        asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    # --- inside the proxy loop ---------------------------------------------------------

    async def _set_mode(self, mode: str) -> None:
        old, self._mode = self._mode, mode
        if mode == "cut":
            for pipe in list(self._pipes):
                pipe.abort()
            self._pipes.clear()
        elif old == "blackhole" and mode != "blackhole":
            for pipe in [p for p in self._pipes if p.tainted]:
                pipe.abort()
                self._pipes.discard(pipe)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        pipe = _Pipe(writer)
        if self._mode == "cut":
            pipe.abort()
            return
        self._pipes.add(pipe)
        try:
            if self._mode == "blackhole":
                # Hung from the start: swallow what the client sends, never connect.
                pipe.tainted = True
                while self._mode == "blackhole" and await reader.read(CHUNK):
                    pass
                return
            try:
                t_reader, t_writer = await asyncio.open_connection(*self.target, limit=CHUNK)
            except OSError:
                return
            pipe.target = t_writer
            up = asyncio.current_task()
            assert up is not None
            pipe.tasks.append(up)
            down = asyncio.get_running_loop().create_task(
                self._pump(t_reader, writer, pipe, "down"))
            pipe.tasks.append(down)
            await self._pump(reader, t_writer, pipe, "up")
            await asyncio.gather(down, return_exceptions=True)
        except asyncio.CancelledError:
            pass
        finally:
            self._pipes.discard(pipe)
            pipe.tasks = [t for t in pipe.tasks if t is not asyncio.current_task()]
            pipe.abort()

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    pipe: _Pipe, direction: str) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    with contextlib.suppress(OSError):
                        writer.write_eof()
                    return
                mode = self._mode
                if mode == "blackhole":
                    pipe.tainted = True
                    continue  # eaten by the hole
                if mode == "slow" and self.delay_ms > 0:
                    await asyncio.sleep(self.delay_ms / 1000)
                if self._mode in ("cut", "blackhole"):
                    pipe.tainted = True
                    continue
                writer.write(data)
                await writer.drain()
                with self._count_lock:
                    self.bytes_forwarded[direction] += len(data)
        except (OSError, asyncio.IncompleteReadError):
            pipe.abort()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for pipe in list(self._pipes):
            pipe.abort()
        self._pipes.clear()
        pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in pending:
            t.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class FaultLink:
    """Both directions between two nodes through proxies: each node dials the other
    through its own proxy, so `set_mode` faults the whole link whoever dialled."""

    def __init__(self, *proxies: FaultProxy) -> None:
        self.proxies = proxies

    def set_mode(self, mode: str, delay_ms: float | None = None) -> None:
        for p in self.proxies:
            p.set_mode(mode, delay_ms)

    def bytes_forwarded(self) -> int:
        return sum(sum(p.bytes_forwarded.values()) for p in self.proxies)

    def reset_counters(self) -> None:
        for p in self.proxies:
            p.reset_counters()

    def stop(self) -> None:
        for p in self.proxies:
            p.stop()
