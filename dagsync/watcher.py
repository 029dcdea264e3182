"""Live watching: watchdog (inotify) events → asyncio, coalesced into rounds.

A closed file is taken after a short quiet window so a burst (`git checkout`) becomes one
round; a file modified but not yet closed waits until it has been quiet for `settle`.
The scanner refuses files that some process still holds open for writing, so a file
being copied is never shipped half-written. When inotify cannot watch (watch limit) or
drops events (queue overflow), the folder falls back to full scans and says so.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from watchdog.events import (
    DirCreatedEvent,
    DirDeletedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer

from dagsync.ignore import IgnoreMatcher

log = logging.getLogger("dagsync.watcher")

COALESCE = 0.008  # quiet time after a close before a round starts
# A path that went away waits this long for the create that may pair with it (a rename
# whose two halves inotify reports apart, e.g. into a directory created just before), so
# both travel in one round and peers move the file instead of deleting and re-creating.
DELETE_HOLD = 0.15
MAX_DELAY = 0.25  # a round starts at the latest this long after its first event
WANTED_EVENTS: list[type[FileSystemEvent]] = [
    FileCreatedEvent, FileModifiedEvent, FileAttribEvent, FileDeletedEvent, FileMovedEvent,
    FileClosedEvent, DirCreatedEvent, DirDeletedEvent, DirMovedEvent,
]

OnPaths = Callable[[set[str]], Awaitable[object]]


class WatchUnavailable(Exception):
    pass


class _OverflowSpy(logging.Handler):
    """watchdog re-adds its watches after an inotify queue overflow but only logs it;
    events were lost, so every watcher of that tree must rescan in full."""

    watchers: list[FolderWatcher] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "overflow" not in message:
            return
        for w in list(self.watchers):
            w.loop.call_soon_threadsafe(w.overflowed)


_SPY = _OverflowSpy(logging.WARNING)
logging.getLogger("watchdog.observers.inotify").addHandler(_SPY)


class _Handler(FileSystemEventHandler):
    def __init__(self, watcher: FolderWatcher) -> None:
        self.watcher = watcher

    def on_any_event(self, event: FileSystemEvent) -> None:
        w = self.watcher
        paths = [event.src_path]
        dest = getattr(event, "dest_path", "")
        if dest:
            paths.append(dest)
        closed = isinstance(event, FileClosedEvent)
        gone = isinstance(event, FileDeletedEvent | DirDeletedEvent)
        src = w.relative(os.fsdecode(event.src_path))
        if dest:
            # A move: its source went away, its destination appeared.
            dst = w.relative(os.fsdecode(dest))
            if src is not None and dst is not None:
                w.loop.call_soon_threadsafe(w.note_move, src, dst)
            elif src is not None:
                w.loop.call_soon_threadsafe(w.note, [src], False, True)
            elif dst is not None:
                w.loop.call_soon_threadsafe(w.note, [dst], False, False)
        elif src is not None:
            w.loop.call_soon_threadsafe(w.note, [src], closed, gone)


class FolderWatcher:
    def __init__(
        self,
        root: Path,
        ignore: IgnoreMatcher,
        on_paths: OnPaths,
        settle: float,
        loop: asyncio.AbstractEventLoop,
        on_overflow: Callable[[], Coroutine[Any, Any, object]] | None = None,
    ) -> None:
        self.root = root
        self.prefix = os.fsdecode(root).rstrip("/") + "/"
        self.ignore = ignore
        self.on_paths = on_paths
        self.settle = settle
        self.loop = loop
        # path -> (last event, closed, gone)
        self.pending: dict[str, tuple[float, bool, bool]] = {}
        # pending destination of a move -> its source (always a key of `pending` too): the
        # two halves of a rename travel in one round, so a peer moves the file instead of
        # deleting it first (never missing)
        self.moved: dict[str, str] = {}
        self.first_event: float | None = None
        self.wakeup = asyncio.Event()
        self.observer: Observer | None = None  # type: ignore[valid-type]
        self.rounds = 0
        self.events = 0
        self.overflows = 0
        self.on_overflow = on_overflow
        self.root_id: tuple[int, int] | None = None
        self.task: asyncio.Task[None] | None = None

    def relative(self, path: str) -> str | None:
        if not path.startswith(self.prefix):
            return None
        rel = path[len(self.prefix):]
        name = rel.rsplit("/", 1)[-1]
        if not rel or self.ignore.ignored(rel, False) or self.ignore.ignored(name, False):
            return None
        return rel

    def root_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.root)  # follows a symlinked root on purpose
        except OSError:
            return None
        return st.st_dev, st.st_ino

    def root_replaced(self) -> bool:
        """The folder path now names another directory (mv, a symlink swap as git-sync
        does): the inotify watches still follow the old one."""
        return self.root_identity() != self.root_id

    def start(self) -> None:
        self.root_id = self.root_identity()
        observer = Observer()
        try:
            observer.schedule(_Handler(self), str(self.root), recursive=True,
                              event_filter=WANTED_EVENTS)
            observer.start()
        except OSError as exc:
            observer.stop()
            raise WatchUnavailable(exc.strerror or str(exc)) from None
        self.observer = observer
        _SPY.watchers.append(self)

    def overflowed(self) -> None:
        self.overflows += 1
        log.warning("inotify dropped events under %s; rescanning the folder in full", self.root)
        if self.on_overflow is not None:
            self.loop.create_task(self.on_overflow())

    def stop(self) -> None:
        if self in _SPY.watchers:
            _SPY.watchers.remove(self)
        if self.observer is not None:
            self.observer.stop()
            self.observer.join(timeout=2)
            self.observer = None

    def note_move(self, src: str, dst: str) -> None:
        """A rename within the folder: `src` went away, `dst` appeared, complete."""
        self.note([src], False, True)
        self.note([dst], False, False)
        self.moved[dst] = src

    def note(self, paths: list[str], closed: bool, gone: bool = False) -> None:
        now = time.monotonic()
        self.events += 1
        for path in paths:
            self.moved.pop(path, None)  # written to since it was moved there: settle again
            _, was_closed, _ = self.pending.get(path, (now, False, False))
            self.pending[path] = (now, closed or was_closed, gone)
        if self.first_event is None:
            self.first_event = now
        self.wakeup.set()

    def _ready(self, now: float) -> tuple[set[str], float | None]:
        """Paths to take now, and how long until the next one may be ready."""
        last_event = max(t for t, _, _ in self.pending.values())
        quiet = now - last_event
        overdue = self.first_event is not None and now - self.first_event >= MAX_DELAY
        if quiet < COALESCE and not overdue:
            return set(), COALESCE - quiet
        ready = {p for p, (t, closed, gone) in self.pending.items()
                 if not gone and (closed or now - t >= self.settle or overdue)}
        if ready:
            # Whatever went away travels with what appeared, and so does what a rename put
            # in place of what went away: a rename stays one round, even when a second
            # rename's destination has not settled yet.
            ready |= {p for p, (_, _, gone) in self.pending.items() if gone}
            ready |= self.moved.keys()
        else:
            ready = {p for p, (t, _, gone) in self.pending.items()
                     if gone and (now - t >= max(self.settle, DELETE_HOLD) or overdue)}
            ready |= {dst for dst, src in self.moved.items() if src in ready}
        waiting = [(max(self.settle, DELETE_HOLD) if gone else self.settle) - (now - t)
                   for p, (t, _, gone) in self.pending.items() if p not in ready]
        return ready, (max(0.001, min(waiting)) if waiting else None)

    async def run(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending:
                ready, wait = self._ready(time.monotonic())
                if ready:
                    for p in ready:
                        del self.pending[p]
                        self.moved.pop(p, None)
                    self.first_event = time.monotonic() if self.pending else None
                    self.rounds += 1
                    try:
                        await self.on_paths(ready)
                    except Exception:
                        log.exception("watched change round failed")
                if wait is not None and self.pending:
                    await asyncio.sleep(wait)
