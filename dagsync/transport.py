"""SSH transport: the agent's embedded asyncssh server and client, and `ssh://` peers
reached through the system OpenSSH client. Both ends pin keys: a node is its ed25519
public key, and any other key is refused. Everything above sees only a `Stream`."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import shlex
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from dagsync.config import PeerConfig
from dagsync.errors import DagsyncError, TransportError
from dagsync.sshlib import asyncssh

log = logging.getLogger("dagsync.transport")

CONNECT_TIMEOUT = 10.0
KEEPALIVE_INTERVAL = 5.0
KEEPALIVE_COUNT_MAX = 3
LOGIN_TIMEOUT = 10.0
MAX_UNAUTHENTICATED = 32
SUBSYSTEM_COMMAND = "dagsync"
# AES-GCM costs one C call per packet; asyncssh's chacha20-poly1305 builds ciphers in
# Python for every packet. Big windows and packets keep a bulk transfer flowing, but
# not packets over 128 KiB: asyncssh copies each packet several times, and copies that
# big cost more than the packets they save. `bench/ssh_bulk.py`, 68.7 MB on loopback:
# 128 KiB packets ~0.06 s of the receiver's CPU and 0.10-0.14 s of the sender's,
# 256 KiB ones 0.11 s and 0.20-0.22 s, 64 KiB ones 0.09-0.10 s and 0.08-0.10 s.
ENCRYPTION_ALGS = ["aes128-gcm@openssh.com", "aes256-gcm@openssh.com",
                   "chacha20-poly1305@openssh.com"]
WINDOW = 16 * 1024 * 1024
MAX_PKTSIZE = 128 * 1024


class Stream:
    """A byte stream to a peer, whatever carries it."""

    def __init__(
        self,
        read: Callable[[int], Awaitable[bytes]],
        write: Callable[[bytes], None],
        drain: Callable[[], Awaitable[None]],
        close: Callable[[], None],
        description: str,
    ) -> None:
        self._read = read
        self._write = write
        self._drain = drain
        self._close = close
        self.description = description
        self.closed = False

    async def read(self, n: int) -> bytes:
        """Up to n bytes; b"" at the end. A broken link raises TransportError."""
        try:
            return await self._read(n)
        except (OSError, asyncssh.Error, EOFError) as exc:
            raise TransportError(f"{self.description}: {_reason(exc)}") from None

    def write(self, data: bytes) -> None:
        try:
            self._write(data)
        except (OSError, asyncssh.Error) as exc:
            raise TransportError(f"{self.description}: {_reason(exc)}") from None

    async def drain(self) -> None:
        try:
            await self._drain()
        except (OSError, asyncssh.Error) as exc:
            raise TransportError(f"{self.description}: {_reason(exc)}") from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            try:
                self._close()
            except Exception as exc:  # closing a broken transport must never raise
                log.debug("closing %s: %s", self.description, exc)


def generate_node_key(path: Path) -> asyncssh.SSHKey:
    """Create an ed25519 key in OpenSSH format (usable by asyncssh and `ssh -i`), mode 0600."""
    key = asyncssh.generate_private_key("ssh-ed25519", comment=f"dagsync@{path.name}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(key.export_private_key("openssh"))
    return key


def load_node_key(path: Path) -> asyncssh.SSHKey:
    try:
        return asyncssh.read_private_key(str(path))
    except FileNotFoundError:
        raise DagsyncError(f"{path}: node key missing; run `dagsync init` first") from None
    except (OSError, asyncssh.KeyImportError) as exc:
        raise DagsyncError(f"{path}: cannot load node key: {exc}") from None


def public_key_line(key: asyncssh.SSHKey) -> str:
    """The `ssh-ed25519 AAAA...` text a peer pins."""
    return key.export_public_key("openssh").decode().split()[0] + " " + (
        key.export_public_key("openssh").decode().split()[1]
    )


def parse_public_key(text: str) -> asyncssh.SSHKey:
    return asyncssh.import_public_key(text.strip())


def _same_key(a: asyncssh.SSHKey, b: asyncssh.SSHKey) -> bool:
    return bool(a.public_data == b.public_data)


# --- server ---------------------------------------------------------------------------

Authorize = Callable[[str, asyncssh.SSHKey], bool]
OnStream = Callable[[str, Stream], Awaitable[None]]


class _Server(asyncssh.SSHServer):
    # Connections not yet authenticated, oldest first (a dict keeps insertion order).
    pending: dict[_Server, None] = {}

    def __init__(self, authorize: Authorize) -> None:
        self._authorize = authorize
        self._conn: asyncssh.SSHServerConnection | None = None
        self._counted = False

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        if len(_Server.pending) >= MAX_UNAUTHENTICATED:
            # Drop the oldest, not the newcomer: an honest peer authenticates in a few
            # round trips, so idle connections cannot keep it out for the login timeout.
            oldest = next(iter(_Server.pending))
            log.warning("too many unauthenticated connections: dropping the oldest, from %s",
                        oldest._conn.get_extra_info("peername") if oldest._conn else "?")
            oldest._uncount()
            if oldest._conn is not None:
                oldest._conn.close()
        _Server.pending[self] = None
        self._counted = True

    def _uncount(self) -> None:
        if self._counted:
            self._counted = False
            _Server.pending.pop(self, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._uncount()

    def auth_completed(self) -> None:
        self._uncount()

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        ok = self._authorize(username, key)
        if not ok:
            peer = self._conn.get_extra_info("peername") if self._conn else None
            log.warning("refused key %s for peer name %r from %s: not pinned",
                        key.get_fingerprint(), username, peer)
        return ok


async def serve(
    host: str,
    port: int,
    node_key: asyncssh.SSHKey,
    authorize: Authorize,
    on_stream: OnStream,
) -> asyncssh.SSHAcceptor:
    """Listen for peers; each authenticated session becomes a Stream handed to on_stream."""

    async def handle(process: asyncssh.SSHServerProcess[bytes]) -> None:
        peer_name = process.get_extra_info("username")
        addr = process.get_extra_info("peername")
        stream = Stream(
            process.stdin.read,
            process.stdout.write,
            process.stdout.drain,
            lambda: process.exit(0),
            f"{peer_name}@{addr[0] if addr else '?'}",
        )
        try:
            await on_stream(peer_name, stream)
        finally:
            stream.close()

    try:
        return await asyncssh.create_server(
            lambda: _Server(authorize),
            host,
            port,
            server_host_keys=[node_key],
            process_factory=handle,
            encoding=None,
            allow_scp=False,
            agent_forwarding=False,
            x11_forwarding=False,
            allow_pty=False,
            login_timeout=LOGIN_TIMEOUT,
            keepalive_interval=KEEPALIVE_INTERVAL,
            keepalive_count_max=KEEPALIVE_COUNT_MAX,
            reuse_address=True,
            encryption_algs=ENCRYPTION_ALGS,
            window=WINDOW,
            max_pktsize=MAX_PKTSIZE,
        )
    except OSError as exc:
        raise DagsyncError(f"node.listen {host}:{port}: cannot listen: {exc.strerror}") from None


# --- clients --------------------------------------------------------------------------


async def dial(peer: PeerConfig, my_name: str, node_key: asyncssh.SSHKey, key_path: Path) -> Stream:
    """Open a Stream to a configured peer; TransportError with a one-line reason on failure."""
    if peer.via_ssh:
        return await _dial_openssh(peer, my_name, key_path)
    return await _dial_direct(peer, my_name, node_key)


async def _dial_direct(peer: PeerConfig, my_name: str, node_key: asyncssh.SSHKey) -> Stream:
    assert peer.public_key is not None
    pinned = parse_public_key(peer.public_key)
    try:
        conn = await asyncio.wait_for(
            asyncssh.connect(
                peer.host,
                peer.port,
                username=my_name,
                client_keys=[node_key],
                known_hosts=([pinned], [], []),
                agent_path=None,
                config=[],
                password=None,
                kbdint_auth=False,
                keepalive_interval=KEEPALIVE_INTERVAL,
                keepalive_count_max=KEEPALIVE_COUNT_MAX,
                server_host_key_algs=["ssh-ed25519"],
                encryption_algs=ENCRYPTION_ALGS,
                window=WINDOW,
                max_pktsize=MAX_PKTSIZE,
            ),
            CONNECT_TIMEOUT,
        )
    except TimeoutError:
        raise TransportError(f"peer {peer.name} ({peer.address}): connect timed out") from None
    except asyncssh.HostKeyNotVerifiable:
        raise TransportError(
            f"peer {peer.name} ({peer.address}): host key does not match the pinned public_key"
        ) from None
    except asyncssh.PermissionDenied:
        raise TransportError(
            f"peer {peer.name} ({peer.address}): refused our key (is this node pinned there?)"
        ) from None
    except (OSError, asyncssh.Error) as exc:
        raise TransportError(f"peer {peer.name} ({peer.address}): {_reason(exc)}") from None
    try:
        process = await conn.create_process(SUBSYSTEM_COMMAND, encoding=None)
    except (OSError, asyncssh.Error) as exc:
        conn.close()
        raise TransportError(f"peer {peer.name}: cannot open session: {_reason(exc)}") from None

    def close() -> None:
        process.close()
        conn.close()

    return Stream(process.stdout.read, process.stdin.write, process.stdin.drain, close,
                  f"{peer.name}@{peer.address}")


def ssh_command(peer: PeerConfig, my_name: str, key_path: Path) -> list[str]:
    """The OpenSSH command line for an ssh:// peer. $DAGSYNC_SSH replaces `ssh` (like
    rsync's RSYNC_RSH), e.g. to add -o UserKnownHostsFile=..."""
    base = shlex.split(os.environ.get("DAGSYNC_SSH", "ssh"))
    target = f"{peer.ssh_user}@{peer.host}" if peer.ssh_user else peer.host
    return [
        *base,
        "-o", "BatchMode=yes",
        "-o", f"ConnectTimeout={int(CONNECT_TIMEOUT)}",
        "-o", f"ServerAliveInterval={int(KEEPALIVE_INTERVAL)}",
        "-o", f"ServerAliveCountMax={KEEPALIVE_COUNT_MAX}",
        "-i", str(key_path),
        "-p", str(peer.port),
        target,
        "dagsync", "serve", "--stdio", "--peer", my_name,
    ]


async def _dial_openssh(peer: PeerConfig, my_name: str, key_path: Path) -> Stream:
    cmd = ssh_command(peer, my_name, key_path)
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as exc:
        raise TransportError(f"peer {peer.name}: cannot run {cmd[0]}: {exc.strerror}") from None
    assert proc.stdin and proc.stdout and proc.stderr
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
    # Drain ssh's stderr all along (the far side logs there): an unread pipe would fill,
    # stall ssh and with it the protocol. Keep the last lines for the error message.
    tail: collections.deque[str] = collections.deque(maxlen=20)

    def keep(raw: bytes) -> None:
        text = raw.decode(errors="replace").strip()
        if text:
            tail.append(text[:1000])
            log.debug("peer %s ssh: %s", peer.name, text[:1000])

    async def pump_stderr() -> None:
        partial = b""
        while chunk := await stderr.read(65536):
            *lines, partial = (partial + chunk).split(b"\n")
            partial = partial[-4096:]
            for raw in lines:
                keep(raw)
        keep(partial)

    stderr_task = asyncio.create_task(pump_stderr())

    async def read(n: int) -> bytes:
        data = await stdout.read(n)
        if not data:
            await asyncio.wait({stderr_task}, timeout=2)  # ssh's last words, if any
            if tail:
                raise TransportError(f"peer {peer.name} ({peer.address}): {tail[-1]}")
        return data

    def close() -> None:
        stderr_task.cancel()
        if proc.returncode is None:
            stdin.close()
            # os.kill, not proc.terminate(): Popen.send_signal() polls first and may reap
            # an ssh that just exited, behind asyncio's child watcher ("Unknown child
            # process pid N, will report returncode 255" on stderr).
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGTERM)

    return Stream(read, stdin.write, stdin.drain, close, f"{peer.name}@{peer.address}")


async def open_stdio_stream() -> Stream:
    """stdin/stdout of this process as a Stream, for `dagsync serve --stdio`."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, sys.stdout.buffer
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return Stream(reader.read, writer.write, writer.drain, writer.close, "stdio")


def unix_stream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, what: str) -> Stream:
    return Stream(reader.read, writer.write, writer.drain, writer.close, what)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__
