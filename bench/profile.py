#!/usr/bin/env python3
"""Where dagsync spends its time in the scenarios bench/run.py measures.

    python bench/profile.py initial [--files 5000]   # py-spy on A and B during an initial sync
    python bench/profile.py chunks  [--runs 3]       # B's apply thread: CPU, syncfs, waits
    python bench/profile.py burst   [--files 5000]   # py-spy on A, B, C during a 1,000-file burst
    python bench/profile.py latency                  # per-edit timeline from the agents' JSON logs
    python bench/profile.py mem     [--files 20000]  # RSS baselines + tracemalloc of the index
    python bench/profile.py idle-mem [--restart]      # (e) in phases, RSS by mapping kind
    python bench/profile.py rescan  [--files 20000]  # walk vs register split + cProfile

Needs py-spy (`pip install py-spy`). Uses bench/run.py's nodes, corpus and process
tracking (every process started is stopped by PID on exit). Output: a summary on stdout
and the raw py-spy stacks under WORKDIR/profile/.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("benchrun", HERE / "run.py")
assert _spec and _spec.loader
R = importlib.util.module_from_spec(_spec)
sys.modules["benchrun"] = R
_spec.loader.exec_module(R)
from arenas import report as arena_report  # noqa: E402 - bench/ leads sys.path

# Leaf frames that mean "this thread is waiting for work", not computing or doing I/O.
IDLE_MARKS = ("select (selectors.py)", "Condition.wait (threading.py)",
              "Event.wait (threading.py)", "Queue.get (queue.py)", "_check_inotify_fd",
              "sleep (asyncio", "_wait_for_tstate_lock", "Thread.join (threading.py)",
              "SimpleQueue.get", "_worker (concurrent/futures/thread.py)",
              # watchdog 7's dispatch thread waits in SimpleQueue.get(), a C call py-spy
              # does not show: its own frame is the leaf while it has nothing to do
              "_dispatch_raw_buffers (watchdog")


def is_idle(leaf: str) -> bool:
    return any(m in leaf for m in IDLE_MARKS)


GIL_ONLY = False  # --gil: sample only the thread holding the GIL (Python's own CPU time)
RATE = 100  # --rate: py-spy samples per second


def start_spy(pid: int, out: Path, rate: int | None = None,
              idle: bool = True) -> subprocess.Popen[bytes]:
    rate = rate or RATE
    spy = shutil.which("py-spy")
    if not spy:
        raise SystemExit("profile: py-spy not found (pip install py-spy)")
    cmd = [spy, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
           "--threads", "--nolineno", "--output", os.fspath(out)]
    if GIL_ONLY:
        cmd.append("--gil")
    elif idle:
        cmd.append("--idle")
    p = R.PROCS.start(cmd, f"py-spy-{pid}", out.with_suffix(".log"))
    time.sleep(0.3)  # attach
    return p


def stop_spy(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(30)
    R.PROCS.stop(p)


def _fn(frame: str) -> str:
    return frame.strip()


# py-spy names frames by qualified name: FolderEngine's methods live in its mixins
# (LocalChanges in local_changes.py, RemoteApply in remote_apply.py), PeerConnection's
# in its own (PeerServing in peer_serving.py, PeerFetching in peer_fetching.py).
FOCUS = ("LocalChanges._vanished", "RemoteApply._apply_locked", "RemoteApply._stage_chunk",
         "RemoteApply._commit_chunk", "LocalChanges._register ",
         "LocalChanges._scan_and_register", "scan_paths (dagsync", "scan_folder (dagsync",
         "_hash_fd", "settle_racy", "being_written", "RemoteApply._commit", "commit (dagsync/fsio",
         "_syncfs", "_fsync_dir_at", "stage_file", "stage_files", "Index.put", "Index.since",
         "set_peer_progress", "PeerServing._serve", "read_range", "PeerFetching.fetch ",
         "PeerConnection._puller", "PeerConnection._sender", "RemoteApply.apply_batch",
         "Session.receive_data", "encode (dagsync/protocol", "from_wire", "to_wire",
         "asyncssh/crypto", "asyncssh/connection.py", "Logger.info", "Logger._log",
         "FolderWatcher", "_Handler.on_any_event", "watchdog/", "ThreadPoolExecutor.submit",
         "to_thread", "IgnoreMatcher", "json/")


def analyze(path: Path, title: str, top: int = 18, rate: int | None = None) -> dict[str, Any]:
    """Summarise raw py-spy output: per thread busy vs waiting, and the functions with the
    most samples (self and inclusive) among busy samples."""
    rate = rate or RATE
    per_thread: collections.Counter[str] = collections.Counter()
    per_thread_busy: collections.Counter[str] = collections.Counter()
    self_c: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    focus: collections.Counter[str] = collections.Counter()
    total = busy = 0
    try:
        lines = path.read_text().splitlines()
    except OSError:
        print(f"{title}: no profile at {path}")
        return {}
    for line in lines:
        stack, _, n = line.rpartition(" ")
        if not stack or not n.isdigit():
            continue
        count = int(n)
        frames = [_fn(f) for f in stack.split(";")]
        thread = frames[0]
        frames = frames[1:]
        # thread names look like "thread (0x7f...)"; group worker threads by their root
        joined = ";".join(frames)
        tkey = ("event loop" if "run_forever (asyncio" in joined
                else "to_thread worker" if "_worker (concurrent/futures/thread.py)" in joined
                else "watchdog" if "watchdog/" in joined
                else thread.split(" ")[0])
        total += count
        per_thread[tkey] += count
        leaf = frames[-1] if frames else "?"
        if is_idle(leaf):
            continue
        busy += count
        per_thread_busy[tkey] += count
        self_c[leaf] += count
        for f in set(frames):
            incl[f] += count
        for name in FOCUS:
            if any(name in f for f in frames):
                focus[name] += count
    print(f"\n### {title}: {total} samples, {busy} busy (not waiting in select/queue/sleep)")
    for t, c in per_thread.most_common():
        print(f"  thread {t:<18} {c:6d} samples, busy {per_thread_busy[t]:6d}")
    print("  top self (busy samples):")
    for f, c in self_c.most_common(top):
        print(f"    {100 * c / max(1, busy):5.1f}%  {f}")
    print("  top inclusive (busy samples):")
    for f, c in incl.most_common(top + 12):
        print(f"    {100 * c / max(1, busy):5.1f}%  {f}")
    print("  focus (inclusive, busy samples; s = samples / rate):")
    for name in FOCUS:
        c = focus[name]
        if c:
            print(f"    {100 * c / max(1, busy):5.1f}%  {c / rate:6.2f} s  {name}")
    return {"total": total, "busy": busy, "threads": dict(per_thread),
            "threads_busy": dict(per_thread_busy),
            "self": self_c.most_common(40), "inclusive": incl.most_common(60)}


# ---------------------------------------------------------------------------- scenarios


def scenario_initial(work: Path, files: int) -> None:
    corpus_dir, _ = R.corpus(work, files)
    base = work / "profile" / "initial"
    a, b, ref = R.initial_pair(base, corpus_dir)
    spy_a = start_spy(a.proc.pid, base / "a.raw")  # type: ignore[union-attr]
    t0 = time.perf_counter()
    b.start()
    spy_b = start_spy(b.proc.pid, base / "b.raw")  # type: ignore[union-attr]
    marks: dict[str, float] = {}
    t, _ = R.wait_converged([b], ref, t0, 900, what="profiled initial sync", procs=[a, b],
                            marks=marks)
    print(f"initial sync under py-spy: {t:.2f} s, marks "
          + ", ".join(f"{k} {v:.2f}" for k, v in marks.items()))
    for s in (spy_a, spy_b):
        stop_spy(s)
    a.stop()
    b.stop()
    analyze(base / "a.raw", "A (sender) during the initial sync")
    analyze(base / "b.raw", "B (receiver, from its start) during the initial sync")


CHUNK_LINE = re.compile(r"chunk \d+ of (\d+) file\(s\): waited ([\d.]+) s for content, "
                        r"applied in ([\d.]+) s \(([\d.]+) s of it on the CPU\)")
SYNCFS_LINE = re.compile(r"syncfs took ([\d.]+) ms")


def scenario_chunks(work: Path, files: int, runs: int) -> None:
    """Initial syncs A -> new B without a profiler, B at debug level: where B's apply
    thread spends its wall time (its own CPU, syncfs, the rest waiting for a core or the
    GIL), summed from B's per-chunk log lines."""
    corpus_dir, _ = R.corpus(work, files)
    print("run  wall s  first file s  files  waited for content s  apply s  of it: CPU s  "
          "syncfs s  other wait s  apply us/file")
    for run in range(runs):
        a, b, ref = R.initial_pair(work / "profile" / f"chunks{run}", corpus_dir)
        b.global_args = ["--log-level", "debug"]
        t0 = time.perf_counter()
        b.start()
        marks: dict[str, float] = {}
        t, _ = R.wait_converged([b], ref, t0, 900, what=f"chunks run {run + 1}",
                                procs=[a, b], marks=marks)
        a.stop()
        b.stop()
        n = 0
        waited = applied = cpu = syncfs = 0.0
        for line in b.log.read_text().splitlines():
            if m := CHUNK_LINE.search(line):
                n += int(m.group(1))
                waited += float(m.group(2))
                applied += float(m.group(3))
                cpu += float(m.group(4))
            elif m := SYNCFS_LINE.search(line):
                syncfs += float(m.group(1)) / 1000
        print(f"{run + 1:>3}  {t:6.3f}  {marks.get('first_file_s', 0):12.2f}  {n:5d}  "
              f"{waited:20.3f}  {applied:7.3f}  {cpu:12.3f}  {syncfs:8.3f}  "
              f"{applied - cpu - syncfs:12.3f}  {applied / max(n, 1) * 1e6:13.0f}")


def scenario_burst(work: Path, files: int) -> None:
    corpus_dir, _ = R.corpus(work, files)
    nodes, _, info = R.start_cluster(work / "profile" / "burst", corpus_dir, 900)
    print(f"cluster ready: {info}")
    try:
        time.sleep(2)
        base = work / "profile" / "burst"
        spies = [start_spy(n.proc.pid, base / f"{n.name}.raw") for n in nodes]  # type: ignore[union-attr]
        res: dict[str, Any] = {"burst": {}}
        R.bench_burst(res, nodes, 1, 1000)
        for s in spies:
            stop_spy(s)
        print(f"burst under py-spy: {res['burst']['converged_s']['samples']}")
        for n in nodes:
            analyze(base / f"{n.name}.raw", f"{n.name.upper()} during a 1,000-file burst on A")
    finally:
        for n in nodes:
            n.stop()


def scenario_latency(work: Path, files: int, edits: int) -> None:
    """Agents with JSON logs (ms timestamps): for each edit, when A logged the local
    change and when B and C logged the update, relative to the write."""
    corpus_dir, _ = R.corpus(work, files)
    base = work / "profile" / "latency"
    nodes = [R.Node(n, base / n) for n in ("a", "b", "c")]
    R.mesh(nodes)
    for n in nodes:  # JSON log lines (ms timestamps), debug level
        n.global_args = ["--log-level", "debug", "--log-format", "json"]
    R.copy_tree(corpus_dir, nodes[0].dags)
    for n in nodes:
        n.start()
    for n in nodes:
        n.wait_ready()
    ref = R.snapshot(nodes[0].dags)
    R.wait_converged(nodes[1:], ref, time.perf_counter(), 900, procs=nodes)
    rel = "bench_latency/latency_dag.py"
    pa = nodes[0].dags / rel
    pa.parent.mkdir(parents=True, exist_ok=True)
    writes = []
    try:
        for k in range(edits):
            data = R.dag_text(f"latency-{k:04d}")
            time.sleep(0.3)
            t_wall = time.time()
            t0 = time.perf_counter()
            with open(pa, "wb") as f:
                f.write(data)
            while not all((n.dags / rel).exists() and (n.dags / rel).read_bytes() == data
                          for n in nodes[1:]):
                time.sleep(0.001)
            writes.append((t_wall, time.perf_counter() - t0))
    finally:
        for n in nodes:
            n.stop()

    def events(node: R.Node, needle: str) -> list[float]:
        out = []
        for line in node.log.read_text().splitlines():
            with contextlib.suppress(ValueError):
                d = json.loads(line)
                if needle in d.get("msg", "") and rel in d["msg"]:
                    out.append(R.json_log_time(d["ts"]))
        return out

    a_local = events(nodes[0], "local change")
    b_upd = events(nodes[1], "updated")
    c_upd = events(nodes[2], "updated")
    rows = []
    for t_wall, lat in writes[1:]:  # the first edit creates the file
        al = next((x for x in a_local if x >= t_wall - 0.002), None)
        bu = next((x for x in b_upd if x >= t_wall - 0.002), None)
        cu = next((x for x in c_upd if x >= t_wall - 0.002), None)
        if al and bu and cu:
            rows.append((al - t_wall, bu - t_wall, cu - t_wall, lat))
    if not rows:
        print("latency: no matching log lines")
        return
    import statistics as st
    print(f"\n### latency timeline over {len(rows)} edits (medians, ms from the write; "
          "log timestamps have 1 ms resolution)")
    print(f"  A registered the local change (after hash, racy re-check, index write): "
          f"{st.median(r[0] for r in rows) * 1000:.1f}")
    print(f"  B logged 'updated' (fetch + durable write + index): "
          f"{st.median(r[1] for r in rows) * 1000:.1f}")
    print(f"  C logged 'updated': {st.median(r[2] for r in rows) * 1000:.1f}")
    print(f"  harness saw both: {st.median(r[3] for r in rows) * 1000:.1f}")


def scenario_mem(work: Path, files: int) -> None:
    corpus_dir, _ = R.corpus(work, files)
    base = work / "profile" / "mem"
    R.empty_dir(base)
    # 1. interpreter + dagsync's imports only
    p = R.PROCS.start([sys.executable, "-c",
                       "import dagsync.agent, dagsync.peer, dagsync.oneshot, time; "
                       "print('ready', flush=True); time.sleep(60)"],
                      "imports-only", base / "imports.log", env=R.child_env())
    deadline = time.monotonic() + 30
    while ("ready" not in (base / "imports.log").read_text().splitlines()
           and time.monotonic() < deadline):
        time.sleep(0.05)
    print(f"python + dagsync imports: RSS {R.proc_mem_kib(p.pid)['VmRSS'] / 1024:.1f} MiB")
    R.PROCS.stop(p)
    # 2. an agent with an empty folder, then one holding the corpus (no peers)
    for label, src in (("empty folder", None), (f"{files} files", corpus_dir)):
        n = R.Node("m", base / "node")
        n.write_config([])
        if src is not None:
            R.copy_tree(src, n.dags)
        n.start()
        n.wait_ready(600)
        time.sleep(2)
        m = R.proc_mem_kib(n.proc.pid)  # type: ignore[union-attr]
        print(f"agent, {label}, no peers: RSS {m['VmRSS'] / 1024:.1f} MiB, "
              f"peak {m['VmHWM'] / 1024:.1f} MiB")
        n.stop()
    index_node = n
    # 3. after receiving a corpus: default malloc vs MALLOC_ARENA_MAX=2
    small, _ = R.corpus(work, 5000)
    for label, env in (("default malloc", False), ("MALLOC_ARENA_MAX=2", True)):
        a, b = R.Node("a", base / "a"), R.Node("b", base / "b")
        R.mesh([a, b])
        R.copy_tree(small, a.dags)
        ref = R.snapshot(a.dags)
        a.env = b.env = {"MALLOC_ARENA_MAX": "2"} if env else None
        a.start()
        a.wait_ready(600)
        t0 = time.perf_counter()
        b.start()
        t, _ = R.wait_converged([b], ref, t0, 900, procs=[a, b])
        time.sleep(3)
        ma, mb = (R.proc_mem_kib(x.proc.pid) for x in (a, b))  # type: ignore[union-attr]
        print(f"2 agents after a 5,020-file initial sync ({label}; {t:.1f} s): "
              f"A RSS {ma['VmRSS'] / 1024:.1f} MiB (peak {ma['VmHWM'] / 1024:.1f}), "
              f"B RSS {mb['VmRSS'] / 1024:.1f} MiB (peak {mb['VmHWM'] / 1024:.1f})")
        a.stop()
        b.stop()
    # 4. tracemalloc: what the in-memory index costs per file
    from dagsync.config import load_config
    from dagsync.node import Node as DNode

    async def index_cost() -> None:
        tracemalloc.start(10)
        s0 = tracemalloc.take_snapshot()
        node = DNode(load_config(index_node.config))
        await node.open()  # loads the index the agent wrote
        s1 = tracemalloc.take_snapshot()
        recs = len(node.folders["dags"].records)
        stats = s1.compare_to(s0, "lineno")
        total = sum(s.size_diff for s in stats)
        print(f"\n### tracemalloc: Node.open() with {recs} records: "
              f"{total / 2**20:.1f} MiB ({total / max(1, recs):.0f} B per record)")
        for s in stats[:12]:
            print(f"    {s.size_diff / 2**20:6.2f} MiB  {s.traceback[0]}")
        node.close()
        tracemalloc.stop()

    asyncio.run(index_cost())


def smaps_breakdown(pid: int) -> str:
    """Resident memory of `pid` by kind: anonymous mappings (CPython's allocator arenas,
    thread heaps), the brk heap (glibc's main arena), and file-backed pages (shared
    libraries), with the largest libraries."""
    rss: collections.Counter[str] = collections.Counter()
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(maxsplit=5)
            if "-" in head[0] and len(head) >= 5 and ":" in head[3]:  # a mapping line
                path = head[5].strip() if len(head) > 5 else ""
                name = os.path.basename(path) if path.startswith("/") else (path or "[anon]")
            elif line.startswith("Rss:"):
                rss[name] += int(line.split()[1])
    anon, heap = rss.pop("[anon]", 0), rss.pop("[heap]", 0)
    files = sum(v for k, v in rss.items() if not k.startswith("["))
    top = ", ".join(f"{k} {v / 1024:.1f}" for k, v in rss.most_common(5)
                    if not k.startswith("["))
    return (f"anon {anon / 1024:.1f}, heap {heap / 1024:.1f}, files {files / 1024:.1f} MiB "
            f"({top})")


def scenario_idle_mem(work: Path, files: int, restart: bool, arenas: bool = False) -> None:
    """bench/run.py (e) in phases: A alone after indexing the corpus, then all three
    after B and C's initial sync, then (--restart) the same agents freshly started."""
    corpus_dir, _ = R.corpus(work, files)
    base = work / "profile" / "idle-mem"
    R.empty_dir(base)
    nodes = [R.Node(n, base / n) for n in ("a", "b", "c")]
    R.mesh(nodes)
    a, b, c = nodes
    R.copy_tree(corpus_dir, a.dags)
    ref = R.snapshot(a.dags)

    def report(what: str, ns: list[Any]) -> None:
        time.sleep(12)  # past the agent's idle trim (5 s quiet + 2 s)
        print(f"### {what}")
        for n in ns:
            m = R.proc_mem_kib(n.proc.pid)
            print(f"  {n.name}: RSS {m['VmRSS'] / 1024:.1f} MiB (peak {m['VmHWM'] / 1024:.1f}); "
                  f"{smaps_breakdown(n.proc.pid)}")
            if arenas:
                print(arena_report(n.proc.pid, malloc=True))

    try:
        a.start()
        a.wait_ready(600)
        report(f"A alone, after indexing {len(ref)} files", [a])
        t0 = time.perf_counter()
        b.start()
        c.start()
        t, _ = R.wait_converged([b, c], ref, t0, 900, poll=0.05, procs=nodes)
        print(f"B and C complete {t:.2f} s after their agents started")
        report("after the initial sync", nodes)
        if restart:
            for n in nodes:
                n.stop()
            for n in nodes:
                n.start()
            for n in nodes:
                n.wait_ready(600)
            report("the same agents, restarted", nodes)
    finally:
        for n in nodes:
            n.stop()


def _stdlib_profilers() -> tuple[Any, Any]:
    """cProfile and pstats from the standard library: they import the module `profile`,
    which this file's own name shadows while bench/ leads sys.path."""
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE]
    try:
        import cProfile
        import pstats
    finally:
        sys.path[:] = saved
    return cProfile, pstats


def scenario_rescan(work: Path, files: int, runs: int = 7) -> None:
    """Split a no-change rescan (what Node.scan_all does) into the walk (scan_folder) and
    the registration (FolderEngine._register), then cProfile both."""
    cProfile, pstats = _stdlib_profilers()
    import statistics as st

    import yaml

    from dagsync.config import load_config
    from dagsync.node import Node as DNode
    from dagsync.scanner import scan_folder
    from dagsync.transport import generate_node_key

    corpus_dir, _ = R.corpus(work, files)
    base = work / "profile" / "rescan"
    R.empty_dir(base)
    R.copy_tree(corpus_dir, base / "dags")
    generate_node_key(base / "node_key")
    (base / "dagsync.yaml").write_text(yaml.safe_dump({
        "node": {"name": "p", "listen": "127.0.0.1:1", "key": os.fspath(base / "node_key"),
                 "state_dir": os.fspath(base / "state")},
        "folders": [{"id": "dags", "path": os.fspath(base / "dags")}]}))

    async def prepare() -> Any:
        node = DNode(load_config(base / "dagsync.yaml"))
        await node.open()
        await node.scan_all()
        await node.scan_all()
        return node

    node = asyncio.run(prepare())
    eng = node.folders["dags"]

    def once() -> tuple[float, float]:
        t0 = time.perf_counter()
        r = scan_folder(eng.root, eng, eng.ignore, eng.max_file_size)
        t1 = time.perf_counter()
        n = eng._register(r, None)
        t2 = time.perf_counter()
        assert n == 0 and not r.changed
        return t1 - t0, t2 - t1

    parts = [once() for _ in range(runs)]
    walk, reg = [p[0] for p in parts], [p[1] for p in parts]
    print(f"\n### rescan of {len(eng.records)} unchanged files, {runs} runs (medians): "
          f"scan_folder {st.median(walk) * 1000:.0f} ms, _register {st.median(reg) * 1000:.0f} ms")
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(3):
        once()
    prof.disable()
    ps = pstats.Stats(prof)
    total = sum(v[2] for v in ps.stats.values())  # type: ignore[attr-defined]
    print(f"  cProfile, 3 rescans, top functions by own time (total {total:.2f} s under the "
          "profiler):")
    rows = sorted(ps.stats.items(), key=lambda kv: -kv[1][2])[:14]  # type: ignore[attr-defined]
    for (fname, line, func), (_cc, nc, tt, ct, _callers) in rows:
        short = fname.split("site-packages/")[-1].split("/dagsync/")[-1]
        print(f"    {100 * tt / total:5.1f}%  own {tt:6.3f} s  cum {ct:6.3f} s  {nc:>8} calls  "
              f"{func} ({short}:{line})")
    node.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario",
                    choices=("initial", "chunks", "burst", "latency", "mem", "idle-mem",
                             "rescan", "analyze"))
    ap.add_argument("raw", nargs="*", type=Path, help="analyze: raw py-spy files")
    ap.add_argument("--files", type=int, default=None)
    ap.add_argument("--edits", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3, help="chunks: initial syncs to take")
    ap.add_argument("--fresh-fs", type=int, default=0, metavar="GIB",
                    help="work on a fresh loop-mounted ext4 of this size (as bench/run.py "
                         "does: a churned ext4 slows creates for minutes)")
    ap.add_argument("--restart", action="store_true",
                    help="idle-mem: also measure the agents freshly restarted")
    ap.add_argument("--arenas", action="store_true",
                    help="idle-mem: also show what keeps each agent's arenas (bench/arenas.py)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dagsync-bench"))
    ap.add_argument("--nice", type=int, default=0)
    ap.add_argument("--rate", type=int, default=100, help="py-spy samples per second")
    ap.add_argument("--gil", action="store_true",
                    help="py-spy samples only the thread holding the GIL: where Python's own "
                         "CPU time goes, without the waits (for the GIL, a core, I/O)")
    ap.add_argument("--src", type=Path, default=None,
                    help="dir holding the dagsync/ package to profile, e.g. the snapshot a "
                         "bench/run.py run used (WORKDIR/src); default: a fresh snapshot "
                         "of this checkout")
    R.agent_python.add_option(ap)
    args = ap.parse_args()
    global GIL_ONLY, RATE
    GIL_ONLY, RATE = args.gil, args.rate
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)
    work = args.workdir.resolve()
    R.probe_setup(work, args.fresh_fs, args.agent_python, "head", "profile",
                  args.src.resolve() if args.src else None)
    if args.scenario == "analyze":
        for f in args.raw:
            analyze(f, os.fspath(f))
        return 0
    try:
        if args.scenario == "initial":
            scenario_initial(work, args.files or 5000)
        elif args.scenario == "chunks":
            scenario_chunks(work, args.files or 5000, args.runs)
        elif args.scenario == "burst":
            scenario_burst(work, args.files or 5000)
        elif args.scenario == "latency":
            scenario_latency(work, args.files or 5000, args.edits)
        elif args.scenario == "rescan":
            scenario_rescan(work, args.files or 20000)
        elif args.scenario == "idle-mem":
            scenario_idle_mem(work, args.files or 20000, args.restart, args.arenas)
        else:
            scenario_mem(work, args.files or 20000)
    finally:
        R.PROCS.stop_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
