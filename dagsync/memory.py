"""Keep the agent's resident memory near what it holds, not what it once needed.

glibc gives each thread that allocates its own malloc arena and rarely hands freed
memory back; after a large initial sync an idle agent would keep tens of MB it no longer
uses. One arena and an occasional malloc_trim(0) fix that: malloc_trim releases the free
top of the main arena only, so a second arena's top (4-6 MiB after serving a sync, as
`bench/arenas.py` shows) stayed resident. The threads mostly allocate holding the GIL,
so they hardly contend for the one arena. No-ops off glibc."""

from __future__ import annotations

import ctypes
import logging

log = logging.getLogger("dagsync.memory")

_M_ARENA_MAX = -8
_libc: ctypes.CDLL | None = None


def _glibc() -> ctypes.CDLL | None:
    global _libc
    if _libc is None:
        try:
            # The process's own symbols, libc's among them: no find_library, which runs
            # ldconfig (or gcc) in a subprocess at every agent start.
            lib = ctypes.CDLL(None)
            lib.malloc_trim  # noqa: B018 - probe: only glibc has it
            lib.mallopt  # noqa: B018
        except (OSError, AttributeError):
            return None
        _libc = lib
    return _libc


def limit_arenas(count: int = 1) -> None:
    """Call early, before worker threads start."""
    lib = _glibc()
    if lib is not None:
        lib.mallopt(_M_ARENA_MAX, count)


def trim() -> None:
    """Return free heap pages to the kernel."""
    lib = _glibc()
    if lib is not None:
        lib.malloc_trim(0)
