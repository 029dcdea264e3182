#!/usr/bin/env python3
"""The index's writes and reads beside a busy event loop: a row a step against many.

    python bench/sqlite_gil.py [--files 20000] [--repeat 3]

The sqlite3 module lets go of the GIL around every sqlite3_step. `executemany` steps once
a row, and so does iterating a SELECT: beside another thread that wants the GIL (an
agent's event loop) every row hands the GIL over and back. This times, in one process:

  put     Index.put of the files in groups of 512 (as a receiver's commits record them),
          as dagsync writes them (many rows a statement) and as `executemany` did;
  since   Index.since in pages of 1,000 (as a sender reads its index for a peer), as
          dagsync reads them (one JSON document a page) and as `fetchall` did;

each alone and beside a thread standing in for the event loop: Python work with a
zero-timeout select() every 200 steps, which lets go of the GIL as a real loop's socket
calls do. Prints the wall time and the calling thread's CPU time. Writes only under a
temporary directory.
"""

from __future__ import annotations

import argparse
import os
import select
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent.parent))
from dagsync.clock import VersionVector
from dagsync.index import _COLUMNS, Index, LocalStat, Record, _row
from dagsync.model import FileVersion, Kind

GROUP = 512
PAGE = 1000


def corpus(files: int) -> list[tuple[FileVersion, LocalStat]]:
    vv = VersionVector.of({"master1": 1})
    items = []
    for i in range(files):
        path = f"dags/team_{i % 40:02d}/sub_{(i // 40) % 25:02d}/dag_{i:05d}.py"
        version = FileVersion(path, Kind.FILE, 9000, 1_700_000_000_000_000_000 + i, 0o644,
                              f"{i:032x}", False, vv, (1_700_000_000_000 << 16) + i, "master1")
        items.append((version, LocalStat(9000, 1_700_000_000_000_000_000 + i, 1000 + i)))
    items.sort(key=lambda t: t[0].path)
    return items


def put_row_a_step(index: Index, folder: str, items: list[tuple[FileVersion, LocalStat]]) -> None:
    """Index.put as it was before 2026-12-07 (eighth session): executemany."""
    with index._txn() as c:
        _, last = index._folder_row(c, folder)
        records = [Record(v, last + i, st) for i, (v, st) in enumerate(items, start=1)]
        vectors: dict[VersionVector, str] = {}
        c.executemany(f"INSERT OR REPLACE INTO files(folder, {_COLUMNS}) VALUES"
                      " (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      [_row(folder, r, vectors) for r in records])
        c.execute("UPDATE folders SET last_seq=? WHERE folder=?", (last + len(records), folder))


def since_row_a_step(index: Index, folder: str, seq: int) -> list[Record]:
    """Index.since as it was before: fetchall, a step per row."""
    with index._db() as c:
        rows = c.execute(f"SELECT {_COLUMNS} FROM files WHERE folder=? AND seq>?"
                         " ORDER BY seq LIMIT ?", (folder, seq, PAGE)).fetchall()
    return index._records(rows)


@contextmanager
def busy_loop(on: bool) -> Iterator[None]:
    """A thread that wants the GIL most of the time and lets go of it often."""
    stop = threading.Event()

    def spin() -> None:
        n = 0
        while not stop.is_set():
            for _ in range(200):
                n += 1
            select.select([], [], [], 0)

    thread = threading.Thread(target=spin, daemon=True)
    if on:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        if on:
            thread.join()


def timed(fn: Callable[[], None]) -> tuple[float, float]:
    wall, cpu = time.perf_counter(), time.thread_time()
    fn()
    return time.perf_counter() - wall, time.thread_time() - cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    items = corpus(args.files)
    print(f"{args.files} records; put in groups of {GROUP}, since in pages of {PAGE}")
    print("what        how            beside   wall s  CPU s (calling thread)")
    with tempfile.TemporaryDirectory(prefix="dagsync-sqlite-gil-") as tmp:
        for rep in range(args.repeat):
            for busy in (False, True):
                for how in ("many rows", "row a step"):
                    index = Index(Path(tmp) / f"put-{rep}-{busy}-{how[0]}.db")
                    put = index.put if how == "many rows" else (
                        lambda f, its, ix=index: put_row_a_step(ix, f, its))

                    def puts(put: Callable[..., object] = put) -> None:
                        for k in range(0, len(items), GROUP):
                            put("dags", items[k:k + GROUP])

                    with busy_loop(busy):
                        wall, cpu = timed(puts)
                    assert index.max_seq("dags") == len(items)
                    print(f"put         {how:<14} {'busy' if busy else 'idle':<8}"
                          f" {wall:6.3f}  {cpu:6.3f}", flush=True)
                    if how == "many rows":
                        read = lambda s, ix=index: ix.since("dags", s, PAGE)  # noqa: E731
                    else:
                        read = lambda s, ix=index: since_row_a_step(ix, "dags", s)  # noqa: E731

                    def reads(read: Callable[[int], list[Record]] = read) -> None:
                        seq = got = 0
                        while page := read(seq):
                            seq, got = page[-1].seq, got + len(page)
                        assert got == len(items)

                    with busy_loop(busy):
                        wall, cpu = timed(reads)
                    print(f"since       {how:<14} {'busy' if busy else 'idle':<8}"
                          f" {wall:6.3f}  {cpu:6.3f}", flush=True)
                    index.close()


if __name__ == "__main__":
    main()
