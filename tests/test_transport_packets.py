"""What goes over a link between two agents: data through real SSH on loopback, and no
empty SSH_MSG_IGNORE ahead of each packet where the cipher does not need it (sshlib)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from dagsync import transport
from dagsync.config import PeerConfig
from dagsync.localnode import free_port
from dagsync.sshlib import asyncssh

MSG_IGNORE = 2
PAYLOAD = bytes(range(256)) * 4096  # 1 MiB: several 128 KiB packets each way


@pytest.fixture
def ignores_received(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """Counts the SSH_MSG_IGNORE packets every connection in this process receives."""
    from asyncssh.connection import SSHConnection

    seen: list[int] = []
    handlers = SSHConnection._packet_handlers
    process_ignore = handlers[MSG_IGNORE]

    def count(self: Any, pkttype: int, pktid: int, packet: Any) -> None:
        seen.append(pktid)
        process_ignore(self, pkttype, pktid, packet)

    monkeypatch.setitem(handlers, MSG_IGNORE, count)
    yield seen


async def _echo_over_agent_link(tmp_path: Path) -> bytes:
    """A 1 MiB frame sent from a dialling node to a listening one and echoed back, over
    dagsync's own transport (serve and dial: AEAD ciphers only)."""
    server_key = transport.generate_node_key(tmp_path / "server_key")
    client_key = transport.generate_node_key(tmp_path / "client_key")
    port = free_port()

    async def echo(name: str, stream: transport.Stream) -> None:
        got = b""
        while len(got) < len(PAYLOAD):
            got += await stream.read(1 << 20)
        stream.write(got)
        await stream.drain()
        await stream.read(1)  # until the client closes

    server = await transport.serve("127.0.0.1", port, server_key, lambda n, k: True, echo)
    try:
        peer = PeerConfig("server", f"127.0.0.1:{port}",
                          transport.public_key_line(server_key), "127.0.0.1", port, None, False)
        stream = await transport.dial(peer, "client", client_key, tmp_path / "client_key")
        try:
            stream.write(PAYLOAD)
            await stream.drain()
            back = b""
            while len(back) < len(PAYLOAD):
                back += await stream.read(1 << 20)
            return back
        finally:
            stream.close()
    finally:
        server.close()


def test_agent_link_carries_data_without_an_ignore_packet_per_packet(
    tmp_path: Path, ignores_received: list[int]
) -> None:
    """asyncssh alone sends an empty ignore packet before every packet once encrypted (a
    CBC countermeasure), doubling the packets of a sync; on dagsync's AEAD links none."""
    back = asyncio.run(_echo_over_agent_link(tmp_path))
    assert back == PAYLOAD
    assert ignores_received == []


@contextlib.asynccontextmanager
async def _flip_one_byte(target: int, at: int) -> AsyncIterator[int]:
    """A TCP relay to `target` that flips the client's byte number `at` (a bit changed
    in transit, or a hostile middle) and relays everything else as it is. Yields its
    port; closes every connection it relayed on the way out."""
    writers: list[asyncio.StreamWriter] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter,
                   flip_at: int | None) -> None:
        seen = 0
        with contextlib.suppress(OSError):
            while data := await src.read(65536):
                if flip_at is not None and seen <= flip_at < seen + len(data):
                    flipped = bytearray(data)
                    flipped[flip_at - seen] ^= 0x01
                    data = bytes(flipped)
                seen += len(data)
                dst.write(data)
                await dst.drain()
        dst.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        writers.extend((writer, up_writer))
        tasks.add(asyncio.current_task())  # type: ignore[arg-type]
        await asyncio.gather(pipe(reader, up_writer, at), pipe(up_reader, writer, None))

    port = free_port()
    server = await asyncio.start_server(relay, "127.0.0.1", port)
    try:
        yield port
    finally:
        server.close()
        for writer in writers:
            writer.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)


async def _echo_over_asyncssh(cipher: str, mac: str, flip_at: int | None = None,
                              delivered: list[bytes] | None = None, **options: Any) -> bytes:
    """The same echo over a plain asyncssh link restricted to one cipher (and MAC), with
    asyncssh's other connection `options` on both ends. `flip_at`: through a relay that
    flips that byte of what the client sends; `delivered` gets what the server read."""
    server_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    port = free_port()
    algs: dict[str, Any] = {"encryption_algs": [cipher], "mac_algs": [mac] if mac else (),
                            **options}

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        try:
            data = await process.stdin.readexactly(len(PAYLOAD))
        except asyncio.IncompleteReadError as exc:
            data = exc.partial
            raise
        finally:
            if delivered is not None:
                delivered.append(data)
        process.stdout.write(data)
        await process.stdout.drain()
        process.exit(0)

    class Server(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return True

        def public_key_auth_supported(self) -> bool:
            return True

        def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
            return True

    server = await asyncssh.create_server(
        Server, "127.0.0.1", port, server_host_keys=[server_key], process_factory=handle,
        encoding=None, **algs)
    try:
        async with contextlib.AsyncExitStack() as stack:
            if flip_at is not None:
                port = await stack.enter_async_context(_flip_one_byte(port, flip_at))
            conn = await stack.enter_async_context(asyncssh.connect(
                "127.0.0.1", port, username="u", client_keys=[client_key], known_hosts=None,
                agent_path=None, config=[], **algs))
            proc = await conn.create_process("x", encoding=None)
            proc.stdin.write(PAYLOAD)
            back: bytes = await proc.stdout.readexactly(len(PAYLOAD))
            return back
    finally:
        server.close()
        await server.wait_closed()


def test_a_chacha20_link_carries_no_ignore_packets_either(ignores_received: list[int]) -> None:
    """dagsync's other AEAD cipher: the skip covers it too."""
    assert asyncio.run(_echo_over_asyncssh("chacha20-poly1305@openssh.com", "")) == PAYLOAD
    assert ignores_received == []


def test_a_ctr_link_keeps_the_countermeasure(ignores_received: list[int]) -> None:
    """The skip is for AEAD ciphers only: a link that negotiated a CTR cipher with a MAC
    still gets asyncssh's ignore packets (dagsync never offers CTR)."""
    assert asyncio.run(_echo_over_asyncssh("aes128-ctr", "hmac-sha2-256")) == PAYLOAD
    assert len(ignores_received) > 8  # one ahead of each data packet, each way


def test_received_bytes_are_parsed_a_packet_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """sshlib hands asyncssh's parser one packet's bytes at a time, even when one read
    from the socket brought several packets (asyncssh alone copies what is left of its
    buffer after every packet: ~4 copies of every byte of a sync)."""
    from asyncssh.connection import SSHConnection

    assert getattr(SSHConnection._recv_data, "receives_by_packets", False)
    reads: list[int] = []
    buffered: list[tuple[int, int]] = []
    recv_packet, data_received = SSHConnection._recv_packet, SSHConnection.data_received

    def counted_read(self: Any, data: bytes, datatype: Any = None) -> None:
        reads.append(len(data))
        data_received(self, data, datatype)

    def checked_packet(self: Any) -> bool:
        buffered.append((len(self._inpbuf),
                         4 + self._pktlen + self._recv_macsize - self._recv_blocksize))
        return bool(recv_packet(self))

    monkeypatch.setattr(SSHConnection, "data_received", counted_read)
    monkeypatch.setattr(SSHConnection, "_recv_packet", checked_packet)
    assert asyncio.run(_echo_over_asyncssh("aes128-gcm@openssh.com", "")) == PAYLOAD
    assert max(reads) > 131072 + 4096  # reads that held more than one data packet
    assert len(buffered) > 16
    assert [b for b in buffered if b[0] != b[1]] == []


@pytest.mark.parametrize("cipher, mac", [
    ("aes128-gcm@openssh.com", ""),
    ("chacha20-poly1305@openssh.com", ""),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
    ("aes256-ctr", "hmac-sha2-512"),
])
def test_data_arrives_whole_across_key_exchanges(cipher: str, mac: str) -> None:
    """Key exchanges are handled asynchronously by asyncssh, mid-stream: the bytes after
    them must still reach the parser, in order, with every cipher and MAC layout."""
    back = asyncio.run(_echo_over_asyncssh(cipher, mac, rekey_bytes=64 * 1024))
    assert back == PAYLOAD


@pytest.mark.parametrize("cipher, mac", [
    ("aes128-gcm@openssh.com", ""),
    ("aes128-ctr", "hmac-sha2-256-etm@openssh.com"),
])
def test_a_byte_changed_in_transit_ends_the_link_and_is_never_delivered(
        cipher: str, mac: str) -> None:
    """One bit flipped in the middle of the stream (past the handshake, inside the
    bytes a packet at a time are parsed from): the receiver refuses the packet and drops
    the link; nothing after the damage reaches the application, and no altered byte."""
    delivered: list[bytes] = []
    with pytest.raises((asyncssh.Error, OSError, asyncio.IncompleteReadError)):
        asyncio.run(asyncio.wait_for(
            _echo_over_asyncssh(cipher, mac, flip_at=len(PAYLOAD) // 2, delivered=delivered),
            timeout=30))
    assert delivered, "the server's reader never returned"
    got = delivered[0]
    assert len(got) < len(PAYLOAD)
    assert got == PAYLOAD[:len(got)]
