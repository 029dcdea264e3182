"""asyncssh, loaded without the optional parts dagsync never uses.

A node is a pinned ed25519 key, and the links negotiate AES-GCM or chacha20-poly1305,
which carry their own MACs, after an ML-KEM or curve25519 key exchange. asyncssh
imports its X.509 certificate support (all of cryptography.x509, and the email package
with it) and its UMAC MACs only when they can be imported, and looks for liboqs (for
the sntrup761 exchange) with ctypes.util.find_library, which runs ldconfig and gcc twice
(~25 ms). Leaving these out saves each agent ~2 MiB resident and ~75 ms of start-up
(docs/memory.md, docs/initial-sync.md). cryptography 51 and later warn on import that
DSA is deprecated, because asyncssh still registers DSA keys: dagsync never uses them,
and an operator should not see that warning each time a command starts.

Once a link is encrypted, asyncssh also sends an empty SSH_MSG_IGNORE before every
packet: RFC 4251's countermeasure for CBC ciphers, whose next IV an eavesdropper can
predict. The AEAD ciphers dagsync negotiates have no such IV, and OpenSSH sends no such
packets; with them every data packet of a sync cost two encryptions, two sends, and on
the other end two decryptions and dispatches. `_skip_cbc_countermeasure` drops the empty
ignore packets on AEAD links only: 6-8 % of both agents' CPU in an initial sync
(docs/initial-sync.md).

asyncssh keeps the bytes received and not yet parsed in one `bytes` object: each read
from the socket (up to 256 KiB) is appended to it by a copy of all of it, and each packet
parsed copies what remains after it, twice (the header, then the rest). When the event
loop is busy and the socket holds more than a packet, that is ~4 copies of every byte
before its decryption. `_receive_by_packets` keeps them in a bytearray instead and hands
asyncssh's parser exactly one header or one packet at a time, so its slicing copies
nothing more. Import asyncssh from here, never directly."""

from __future__ import annotations

import ctypes.util
import sys
import warnings
from typing import Any

from dagsync.slim import modules_absent

_UNUSED = ("asyncssh.crypto.x509", "asyncssh.crypto.umac")
_LIBOQS = ("oqs", "liboqs")


def _load() -> None:
    find_library = ctypes.util.find_library
    ctypes.util.find_library = lambda name: None if name in _LIBOQS else find_library(name)
    try:
        with modules_absent(*_UNUSED), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="DSA is deprecated")
            import asyncssh  # noqa: F401
    finally:
        ctypes.util.find_library = find_library


def _skip_cbc_countermeasure() -> None:
    """Make asyncssh send no empty ignore packet ahead of each packet on an AEAD link.
    The empty ignore is the only one asyncssh sends; a version whose internals differ
    is left as it is."""
    try:
        from asyncssh.connection import SSHConnection
        from asyncssh.constants import MSG_IGNORE
        from asyncssh.encryption import ChachaEncryption, GCMEncryption
        from asyncssh.packet import String
    except ImportError:
        return
    send = SSHConnection.send_packet
    if getattr(send, "skips_cbc_countermeasure", False):
        return
    empty = (String(b""),)
    aead = (GCMEncryption, ChachaEncryption)

    def send_packet(self: Any, pkttype: int, *args: bytes, handler: Any = None) -> None:
        if (pkttype == MSG_IGNORE and args == empty
                and isinstance(getattr(self, "_send_encryption", None), aead)):
            return
        send(self, pkttype, *args, handler=handler)

    send_packet.skips_cbc_countermeasure = True  # type: ignore[attr-defined]
    SSHConnection.send_packet = send_packet  # type: ignore[method-assign]


def _receive_by_packets() -> None:
    """Make asyncssh's receive path parse from a bytearray, one step's bytes at a time.
    A version whose internals differ is left as it is."""
    try:
        from asyncssh.connection import SSHConnection
        from asyncssh.misc import DisconnectError
    except ImportError:
        return
    parts = ("_recv_data", "_recv_pkthdr", "_recv_packet", "_reset_keepalive_timer",
             "_send_disconnect", "_force_close", "internal_error", "_finish_recv_packet")
    if (not all(callable(getattr(SSHConnection, name, None)) for name in parts)
            or getattr(SSHConnection._recv_data, "receives_by_packets", False)):
        return

    def step(self: Any) -> int | None:
        """Bytes the parser's next step takes; None for the version line, or while a
        packet is handled asynchronously (asyncssh's own buffer serves those)."""
        func = getattr(self._recv_handler, "__func__", None)
        if func is SSHConnection._recv_pkthdr:
            return int(self._recv_blocksize)
        if func is SSHConnection._recv_packet:
            return int(4 + self._pktlen + self._recv_macsize - self._recv_blocksize)
        return None

    def unparsed_of(self: Any) -> bytearray:
        """The connection's received bytes not yet handed to the parser."""
        try:
            return self._unparsed  # type: ignore[no-any-return]
        except AttributeError:
            self._unparsed = bytearray()
            return self._unparsed  # type: ignore[no-any-return]

    def data_received(self: Any, data: bytes, datatype: Any = None) -> None:
        unparsed_of(self).extend(data)
        self._recv_data()

    def _recv_data(self: Any) -> None:
        unparsed = unparsed_of(self)
        self._reset_keepalive_timer()
        try:
            while True:
                need = step(self)
                if need is None:
                    if unparsed:
                        self._inpbuf += bytes(unparsed)
                        unparsed.clear()
                    if not (self._inpbuf and self._recv_handler()):
                        return
                    continue
                if self._inpbuf:  # left over from the steps above
                    unparsed[:0] = self._inpbuf
                    self._inpbuf = b""
                if len(unparsed) < need:
                    return
                with memoryview(unparsed) as view:
                    self._inpbuf = bytes(view[:need])
                del unparsed[:need]
                if not self._recv_handler():
                    # handled asynchronously: its end (_finish_recv_packet) resumes
                    # parsing only if asyncssh's own buffer holds something
                    self._inpbuf += bytes(unparsed)
                    unparsed.clear()
                    return
        except DisconnectError as exc:
            self._send_disconnect(exc.code, exc.reason, exc.lang)
            self._force_close(exc)
        except Exception:
            self.internal_error()

    _recv_data.receives_by_packets = True  # type: ignore[attr-defined]
    SSHConnection.data_received = data_received  # type: ignore[method-assign]
    SSHConnection._recv_data = _recv_data  # type: ignore[method-assign]


if "asyncssh" not in sys.modules:
    _load()
_skip_cbc_countermeasure()
_receive_by_packets()

import asyncssh  # noqa: E402

__all__ = ["asyncssh"]
