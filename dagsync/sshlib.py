"""asyncssh, loaded without the optional parts dagsync never uses.

A node is a pinned ed25519 key, and the links negotiate AES-GCM or chacha20-poly1305,
which carry their own MACs. asyncssh imports its X.509 certificate support (all of
cryptography.x509, and the email package with it) and its UMAC MACs only when they can
be imported. Keeping them out saves each agent ~2 MiB resident and ~50 ms of start-up
(docs/memory.md). Import asyncssh from here, never directly."""

from __future__ import annotations

import sys

_UNUSED = ("asyncssh.crypto.x509", "asyncssh.crypto.umac")

if "asyncssh" not in sys.modules:
    for _name in _UNUSED:
        sys.modules.setdefault(_name, None)  # type: ignore[arg-type]
    try:
        import asyncssh
    finally:
        for _name in _UNUSED:
            if sys.modules.get(_name, 0) is None:
                del sys.modules[_name]
else:
    import asyncssh

__all__ = ["asyncssh"]
