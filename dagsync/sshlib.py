"""asyncssh, loaded without the optional parts dagsync never uses.

A node is a pinned ed25519 key, and the links negotiate AES-GCM or chacha20-poly1305,
which carry their own MACs, after an ML-KEM or curve25519 key exchange. asyncssh
imports its X.509 certificate support (all of cryptography.x509, and the email package
with it) and its UMAC MACs only when they can be imported, and looks for liboqs (for
the sntrup761 exchange) with ctypes.util.find_library, which runs ldconfig and gcc twice
(~25 ms). Leaving these out saves each agent ~2 MiB resident and ~75 ms of start-up
(docs/memory.md, docs/initial-sync.md). cryptography 51 and later warn on import that
DSA is deprecated, because asyncssh still registers DSA keys: dagsync never uses them,
and an operator should not see that warning each time a command starts. Import asyncssh
from here, never directly."""

from __future__ import annotations

import ctypes.util
import sys
import warnings

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


if "asyncssh" not in sys.modules:
    _load()

import asyncssh  # noqa: E402

__all__ = ["asyncssh"]
