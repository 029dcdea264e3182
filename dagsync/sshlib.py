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
(docs/initial-sync.md). Import asyncssh from here, never directly."""

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


if "asyncssh" not in sys.modules:
    _load()
_skip_cbc_countermeasure()

import asyncssh  # noqa: E402

__all__ = ["asyncssh"]
