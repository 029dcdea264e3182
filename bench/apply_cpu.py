#!/usr/bin/env python3
"""The receiver's apply on its own: an initial sync's worth of files applied in process,
without the network, the sender or the event loop's decoding beside it.

    python bench/apply_cpu.py [--files 5000] [--runs 5] [--workdir DIR] [--fresh-fs GIB]
                              [--src DIR]

Scans the generated corpus into versions (as the sender holds them), then applies them
`--runs` times to empty folders through `FolderEngine.apply_batch` with the content
served from memory: the same decide, intent, staging, syncfs, linking and recording as
an agent's apply thread. It prints the wall time and the apply thread's CPU, split
into user (Python) and system (syscalls) time. Alone on a core, this is the figure the
apply thread's share of an initial sync can be cut by; A/B it with `--src` pointing at
a worktree of each revision (docs/initial-sync.md).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))
import run as R  # bench/run.py: corpus, fresh file system, snapshots


class MemoryFetch:
    """A peer that holds every file's content in memory."""

    def __init__(self, data: dict[str, bytes]) -> None:
        self.data = data

    async def fetch(self, v: Any) -> bytes:
        return self.data[v.path]

    async def fetch_many(self, vs: list[Any]) -> list[bytes | BaseException]:
        return [self.data[v.path] for v in vs]


def folder(root: Path, state: Path, node: str, temp: Path | None = None) -> Any:
    from dagsync import engine
    from dagsync.archive import ConflictArchive
    from dagsync.config import FolderConfig
    from dagsync.index import Index
    from dagsync.model import FolderMode

    index = Index(state / "index.db")
    return engine.FolderEngine(FolderConfig("dags", root, FolderMode.SEND_RECEIVE, ()), node,
                               index, ConflictArchive(state), engine.SharedClock(0), 1 << 24,
                               temp_dir=temp)


async def source_versions(corpus: Path, work: Path) -> tuple[list[Any], dict[str, bytes]]:
    state = work / "source-state"
    shutil.rmtree(state, ignore_errors=True)
    state.mkdir(parents=True)
    f = folder(corpus, state, "a")
    await f.open()
    await f.scan()
    versions = [f.records[p].version for p in sorted(f.records)]
    f.index.close()
    return versions, {v.path: (corpus / v.path).read_bytes() for v in versions}


async def apply_once(versions: list[Any], data: dict[str, bytes], base: Path) -> dict[str, float]:
    from dagsync import remote_apply

    root, state, temp = base / "dags", base / "state", base / "tmp"
    for d in (root, state, temp):
        d.mkdir(parents=True)
    f = folder(root, state, "b", temp)
    await f.open()
    took = {"cpu": 0.0, "user": 0.0, "sys": 0.0}
    cls = remote_apply.RemoteApply
    # Since the overlapped bulk rounds a chunk is applied in two halves, each in a worker
    # thread (_stage_chunk, _commit_chunk); before, in one (_apply_timed): their CPU adds up.
    names = [n for n in ("_stage_chunk", "_commit_chunk") if hasattr(cls, n)] or ["_apply_timed"]
    originals = {n: getattr(cls, n) for n in names}

    def measuring(original: Any) -> Any:
        def measured(self: Any, *args: Any) -> Any:
            before = resource.getrusage(resource.RUSAGE_THREAD)
            try:
                return original(self, *args)
            finally:
                after = resource.getrusage(resource.RUSAGE_THREAD)
                user, sys_ = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
                took["user"] += user
                took["sys"] += sys_
                took["cpu"] += user + sys_
        return measured

    for n, original in originals.items():
        setattr(cls, n, measuring(original))
    try:
        os.sync()
        started = time.perf_counter()
        outcome = await f.apply_batch(versions, MemoryFetch(data))
        took["wall"] = time.perf_counter() - started
    finally:
        for n, original in originals.items():
            setattr(cls, n, original)
        f.index.close()
    if len(outcome.applied) != len(versions):
        raise SystemExit(f"apply_cpu: applied {len(outcome.applied)} of {len(versions)}: "
                         f"{outcome.failed[:3]}")
    return took


async def main_async(args: argparse.Namespace, work: Path) -> None:
    corpus, _ = R.corpus(work, args.files)
    versions, data = await source_versions(corpus, work)
    n = len(versions)
    runs = []
    for i in range(args.runs):
        base = work / "apply-cpu" / f"run{i}"
        if base.exists():
            base.rename(base.with_name(f"{base.name}-old-{time.time_ns()}"))  # no rm mid-run
        took = await apply_once(versions, data, base)
        runs.append(took)
        print(f"run {i + 1}: {n} files, wall {took['wall']:.3f} s, apply threads' CPU "
              f"{took['cpu']:.3f} s = {took['cpu'] / n * 1e6:.1f} us/file "
              f"(user {took['user'] / n * 1e6:.1f}, system {took['sys'] / n * 1e6:.1f})",
              flush=True)
    for key in ("wall", "cpu", "user", "sys"):
        vals = sorted(t[key] / n * 1e6 for t in runs)
        print(f"{key:>5} us/file: min {vals[0]:.1f} median {statistics.median(vals):.1f} "
              f"max {vals[-1]:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dagsync-apply-cpu"))
    ap.add_argument("--fresh-fs", type=int, default=0, metavar="GIB",
                    help="work on a fresh loop-mounted ext4 of this size (bench/run.py's)")
    ap.add_argument("--src", type=Path, default=None,
                    help="dir holding the dagsync/ package to measure (e.g. a worktree); "
                         "default: this checkout's HEAD")
    args = ap.parse_args()
    work = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.fresh_fs:
        R.mount_fresh_fs(work, args.fresh_fs)  # unmounted at exit
    R.load_dagsync(args.src.resolve() if args.src else R.snapshot_source(work / "src"))
    asyncio.run(main_async(args, work))
    return 0


if __name__ == "__main__":
    sys.exit(main())
