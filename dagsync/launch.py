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
    """Move what exists now (modules, classes, the config) to the GC's permanent
    generation: a long-running agent's full collections then skip it, ~1 ms instead of
    ~15-18 ms each (docs/initial-sync.md)."""
    gc.freeze()


def main() -> None:
    with gc_paused():
        from dagsync.cli import main as cli_main
    cli_main()
