#!/usr/bin/env python3
"""How busy each lane of a receiver is during an initial sync, and what it waits for.

    python bench/lanes.py [--files 20000] [--runs 3] [--fresh-fs 32] [--timeline]

B's bulk round runs three lanes at once (dagsync/remote_apply.py, _apply_overlapped):
the event loop fetches the next chunk's content, one worker thread stages a chunk (decide,
write-ahead note, the C helper's writes), another commits the chunks staged before
(syncfs, renames, recording). A chunk waits for the slowest of them, so the lane that is
busiest is the one to make faster. This wraps those steps in B (a sitecustomize on B's
PYTHONPATH only; dagsync itself is unchanged), runs initial syncs as bench/run.py (a)
does, each after an rsync of the same tree, and prints per run each step's count, wall
time and CPU time of its thread (`time.thread_time`), and each lane's idle time between
its steps (`c-writes` CPU is the calling thread's only: the C helper writes with a second
thread too). --timeline also prints every step of the last run, in milliseconds from B's
start. Every process started is stopped by PID (bench/run.py).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))
import run as R  # bench/run.py: corpus, nodes, sshd, process tracking

# Loaded by B's interpreter at start-up (site imports `sitecustomize` from sys.path).
TRACE = '''
import functools, os, threading, time
_out = os.environ.get("DAGSYNC_LANES_OUT")
if _out:
    _file, _lock = open(_out, "a", buffering=1), threading.Lock()

    def _wrap(owner, attr, name, is_async=False):
        fn = getattr(owner, attr)
        if is_async:
            @functools.wraps(fn)
            async def timed(*a, **k):
                t0 = time.monotonic()
                try:
                    return await fn(*a, **k)
                finally:
                    with _lock:
                        _file.write(f"{name} {t0:.6f} {time.monotonic():.6f} 0\\n")
        else:
            @functools.wraps(fn)
            def timed(*a, **k):
                t0, c0 = time.monotonic(), time.thread_time()
                try:
                    return fn(*a, **k)
                finally:
                    c1, t1 = time.thread_time(), time.monotonic()
                    with _lock:
                        _file.write(f"{name} {t0:.6f} {t1:.6f} {c1 - c0:.6f}\\n")
        setattr(owner, attr, timed)

    import dagsync.bulkio as bulkio, dagsync.fsio as fsio, dagsync.index as index
    import dagsync.remote_apply as ra
    _wrap(ra, "fetch_all", "fetch", True)
    _wrap(ra._Feed, "next", "plan-next")
    _wrap(ra.RemoteApply, "_stage_chunk", "stage")
    _wrap(ra.RemoteApply, "_commit_group", "commit")
    _wrap(ra.RemoteApply, "_record_landed", "record")
    _wrap(ra.RemoteApply, "_set_intent", "note")
    _wrap(fsio, "_syncfs", "syncfs")
    _wrap(bulkio, "stage_files", "c-writes")
    _wrap(index.Index, "put", "index-put")
'''
LANES = ("fetch", "stage", "commit")  # one step at a time each: their gaps are idle time


def report(path: Path, t0: float, timeline: bool) -> None:
    steps: dict[str, list[tuple[float, float, float]]] = collections.defaultdict(list)
    for line in path.read_text().splitlines():
        name, start, end, cpu = line.split()
        steps[name].append((float(start), float(end), float(cpu)))
    for name in sorted(steps):
        xs = steps[name]
        line = (f"    {name:9s} {len(xs):4d} x  wall {sum(e - s for s, e, _ in xs):6.3f} s"
                f"  CPU {sum(c for _, _, c in xs):6.3f} s")
        if name in LANES:
            xs = sorted(xs)
            idle = sum(max(0.0, xs[i + 1][0] - xs[i][1]) for i in range(len(xs) - 1))
            line += f"  idle between steps {idle:6.3f} s"
        print(line)
    if timeline:
        for name, (start, end, cpu) in sorted(((n, x) for n, xs in steps.items()
                                               for x in xs if n in (*LANES, "syncfs", "plan-next")),
                                              key=lambda nx: nx[1][0]):
            print(f"      {name:9s} {1000 * (start - t0):7.0f} -> {1000 * (end - t0):7.0f} ms"
                  f"  (CPU {1000 * cpu:4.0f} ms)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    R.probe_options(ap, files=20000, fresh_fs=32)
    ap.add_argument("--timeline", action="store_true")
    args = ap.parse_args()
    work = args.workdir.resolve()
    R.probe_setup(work, args.fresh_fs, args.agent_python, args.source, "lanes")
    site = R.site_dir(work, "lanes", TRACE)
    corpus_dir, _ = R.corpus(work, args.files)
    sshd, a, b, ref, base = R.probe_pair(work, corpus_dir, "lanes")
    rsync_dst = base / "rsync-target"
    try:
        for i in range(args.runs):
            R.empty_dir(rsync_dst)
            t_rs, _ = R.timed_rsync(sshd.rsync_cmd(a.dags, rsync_dst), base / "rsync.log",
                                    sshd.pid)
            b.stop()
            b.reset()
            out = site / f"run-{i}.txt"
            b.env = {"PYTHONPATH": os.fspath(site), "DAGSYNC_LANES_OUT": os.fspath(out)}
            os.sync()
            t0, t0_perf = time.monotonic(), time.perf_counter()
            b.start()
            t, _ = R.wait_converged([b], ref, t0_perf, timeout=900, what="agent run",
                                    procs=[a, b])
            b.stop()
            print(f"run {i + 1}/{args.runs}: agent {t:.3f} s (rsync before it {t_rs:.3f} s)",
                  flush=True)
            report(out, t0, args.timeline and i == args.runs - 1)
    finally:
        b.stop()
        a.stop()
        sshd.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
