"""The `dagsync` command's entry point: its imports run with the cyclic GC paused.

A command imports some 300 modules (asyncssh, cryptography, click, PyYAML, dagsync's
own), whose classes, functions and tables live as long as the process. The cyclic GC,
set off by every 700 new container objects, scans them over and over while they are
built: 10-15 ms of every start, which is on the critical path of a new node's initial
sync and of every `serve --stdio` an ssh:// peer starts (docs/initial-sync.md).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager

YOUNG_THRESHOLD = 7000  # CPython's default is 700


@contextmanager
def gc_paused() -> Iterator[None]:
    """No cyclic collection inside (reference counting still frees everything else)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def settle_startup() -> None:
    """Before an agent runs: move what exists now (modules, classes, the config) to the
    GC's permanent generation, so that a full collection skips it (~1 ms instead of
    ~15-18 ms each), and collect the young generation every 7,000 new container objects
    instead of 700. An initial sync of 20,020 files made a receiver spend 60-120 ms in
    ~210 young collections; ~33 ms in 26 with this. Only garbage in reference cycles waits
    longer for its collection; everything else is freed by reference counting as before
    (docs/initial-sync.md, docs/memory.md)."""
    gc.freeze()
    gc.set_threshold(YOUNG_THRESHOLD, *gc.get_threshold()[1:])


def main() -> None:
    with gc_paused():
        from dagsync.cli import main as cli_main
    cli_main()
