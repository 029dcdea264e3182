#!/usr/bin/env python3
"""How close to rsync could an initial sync get if writing the files cost nothing?

    python bench/floor.py [--files 5000] [--runs 3] [--fresh-fs 8]

Interleaved in one invocation, on the corpus and nodes of bench/run.py (a):
  rsync     `rsync -a` over ssh to an empty target (the goal's baseline);
  agent     dagsync agent -> a new, empty agent B (what (a) measures);
  agent-py  the same with B's file writes in Python loops (DAGSYNC_NO_FASTIO=1), for
            the before/after of the C helper dagsync/_fastio.c;
  harness-python
            the agent sync with both agents on the harness's own interpreter, not the
            agents' (--agent-python; by default the Debian package's, bench/agent_python.py);
  fresh-a   the agent sync with A restarted just before it (the full run restarts A after
            each one-shot sync, so every timed sync there has an A that has served none
            yet; the other modes' A has served the runs before)
  base      with --base REV: the agent sync with B running dagsync as committed at REV
            (A stays the measured snapshot), for before/after figures in one invocation;
  no-apply  the same, but B's apply step is replaced by one that discards each chunk
            and notes when its content was in hand (a sitecustomize on B's PYTHONPATH
            only; dagsync itself has no such switch). Its time is B's start-up, the
            connection, the index exchange and the transfer of every file's content to
            B's memory, verified: everything but the apply.

  --variant NAME:VAR=VALUE
            the agent sync with VAR=VALUE in the environment of both agents (A is
            restarted when its environment must change), as mode NAME: for an experiment
            behind an environment switch, beside the agent in one invocation. Give the
            same NAME again to set several variables.

  --anchors st-running|st-stopped, --gap S, --cold, --alternate
            conditions of the full run, one at a time: unison and a Syncthing initial sync
            before each run (Syncthing's A left running or stopped); S seconds idle before
            each run (on this VM, DAMON pages out page cache nobody touched for ~60 s: the
            full run's anchors take 25-80 s between the agent's runs); the page cache
            dropped before each timed tool (A's files and each tool's code read from the
            disk); the agent timed before rsync in every other run, as the full run does
            (and the dagsync modes in reverse order then, so that no mode always follows
            another's writes).
            --split then also prints B's start-up marks, page faults, peak memory and
            what it wrote and read through syscalls (/proc/PID/io), and how long each
            agent's threads waited, runnable, for a core (run-queue).

Each run also gives the CPU time used: rsync's client, ssh and server side; for the
dagsync modes, both agents (A from the sync's start, B whole, start-up included). On
this 2-core machine wall time follows it: both tools keep about 1.2-1.5 cores busy.

If `no-apply` alone is not well under rsync's time, no receiver-side apply change (a C
extension for the write loop, a separate apply process, fewer syncfs) can bring the
agent to 1.0x. Every process started is tracked and stopped by PID (bench/run.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))
import run as R  # bench/run.py: corpus, nodes, sshd, process tracking
from common import proc_stat

# Loaded by B's interpreter at start-up (site imports `sitecustomize` from sys.path).
DISCARD_APPLY = '''
import asyncio, os, time
_out = os.environ.get("DAGSYNC_FLOOR_OUT")
if _out:
    import dagsync.remote_apply as _ra
    _seen = [0]

    def _discard(self, planned, contents, outcome):
        _seen[0] += len(planned)
        with open(_out, "a") as f:
            f.write(f"{_seen[0]} {time.monotonic():.6f}\\n")
        return False, 0.0

    _ra.RemoteApply._apply_timed = _discard

    async def _discard_round(self, feed, fetch, outcome):
        # a bulk round's chunks one by one through _apply_timed, the next one's content
        # fetched meanwhile (as the real round does; it overlaps two applies besides)
        loop = asyncio.get_running_loop()
        chunk = feed.next()
        fetching = loop.create_task(_ra.fetch_all(self.id, chunk, fetch, outcome)) \
            if chunk is not None else None
        while chunk is not None:
            contents = await fetching
            following = feed.next()
            if following is not None:
                fetching = loop.create_task(_ra.fetch_all(self.id, following, fetch, outcome))
            self._apply_timed(chunk, contents, outcome)
            chunk = following

    _ra.RemoteApply._apply_overlapped = _discard_round
'''


def base_snapshot(rev: str, dst: Path) -> Path:
    """dagsync as committed at `rev`, with its C helper built (as bench/run.py's)."""
    measured = R.SNAPSHOT_INFO.copy()
    out = R.snapshot_source(dst, "head", rev)
    print(f"base snapshot: {R.SNAPSHOT_INFO}", flush=True)
    R.SNAPSHOT_INFO.clear()
    R.SNAPSHOT_INFO.update(measured)
    return out


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores, kernel threads included)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    return (sum(ticks) - ticks[3] - ticks[4]) / R.CLK_TCK  # all but idle and iowait


def all_cpu_ticks() -> dict[int, tuple[str, int]]:
    """utime + stime of every process and kernel thread now alive, by pid, with its
    name (a kernel worker's name changes with the work it is doing)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                name, utime, stime = proc_stat(int(d))
            except OSError:  # ended meanwhile
                continue
            out[int(d)] = name, utime + stime
    return out


def top_others(before: dict[int, tuple[str, int]], skip: set[int], n: int = 4) -> str:
    """The processes besides `skip` that used the most CPU since `before`."""
    used: dict[str, int] = {}
    for pid, (name, ticks) in all_cpu_ticks().items():
        if pid not in skip:
            name = name.split("/")[0].split(":")[0]
            used[name] = used.get(name, 0) + ticks - before.get(pid, ("", 0))[1]
    top = sorted(used.items(), key=lambda kv: -kv[1])[:n]
    return ", ".join(f"{name} {t / R.CLK_TCK:.2f}" for name, t in top if t > 0)


REPORTED = Path("/sys/module/page_reporting/parameters/reported_kib")


def reported_mib() -> float:
    """Guest memory handed back to the host so far (free page reporting; 0 without it):
    a page handed back costs a host fault when it is next touched."""
    try:
        return int(REPORTED.read_text()) / 1024
    except (OSError, ValueError):
        return 0.0


def minor_faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rpartition(")")[2].split()[7])


def faults_hwm(pid: int) -> str:
    """A process's minor page faults and peak resident memory."""
    minflt = minor_faults(pid)
    with open(f"/proc/{pid}/status") as f:
        hwm = next((line.split()[1] for line in f if line.startswith("VmHWM")), "0")
    return f"minflt {minflt}, VmHWM {int(hwm) // 1024} MiB"


def io_counts(pid: int) -> str:
    """What a process has written and read through syscalls (/proc/PID/io): its files'
    content, and everything else (SQLite's WAL and checkpoints, temp files, logs)."""
    with open(f"/proc/{pid}/io") as f:
        io = {k: int(v) for k, v in (line.split(": ") for line in f if ": " in line)}
    return (f"wrote {io['wchar'] / 1e6:.0f} MB in {io['syscw']} calls, read "
            f"{io['rchar'] / 1e6:.0f} MB in {io['syscr']} calls")


def run_delay_s(pid: int) -> float:
    """Seconds a process's live threads spent runnable but waiting for a core
    (/proc/PID/task/TID/schedstat): what a busy machine costs it, apart from the GIL."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[1])
        except (OSError, IndexError, ValueError):  # ended meanwhile
            continue
    return total / 1e9


def drop_page_cache() -> None:
    """Every clean page of the page cache dropped (the machine's, not just ours): the
    next tool starts cold, its source files and its own code read from the disk."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("1\n")


def user_sys_s(pid: int) -> tuple[float, float]:
    _, utime, stime = proc_stat(pid)
    return utime / R.CLK_TCK, stime / R.CLK_TCK


def wait_chunks(path: Path, want: int, t0: float, b: R.Node, timeout: float = 300) -> float:
    """Seconds from t0 until B noted `want` files' content in hand."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        b.alive()
        if path.exists():
            for line in path.read_text().splitlines():
                n, at = line.split()
                if int(n) >= want:
                    return float(at) - t0
        time.sleep(0.01)
    raise R.BenchError(f"no-apply run: B did not receive {want} files within {timeout} s")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    R.probe_options(ap, files=5000, fresh_fs=8)
    ap.add_argument("--modes", default="agent,agent-py,no-apply",
                    help="dagsync variants to time beside rsync, in this order per run")
    ap.add_argument("--base", default=None, metavar="REV",
                    help="also time B running dagsync at this git revision (mode 'base')")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE",
                    help="also time the agent with VAR=VALUE in both agents' environment, as mode "
                         "NAME (an experiment behind an environment switch)")
    ap.add_argument("--churn", type=int, default=0, metavar="N",
                    help="before each run, write N copies of the corpus into the image (kept, "
                         "as the full run's anchors leave theirs) and sync")
    ap.add_argument("--anchors", choices=("off", "st-running", "st-stopped"), default="off",
                    help="before each run, as the full run does: unison over ssh, then a "
                         "Syncthing initial sync to a new B; st-running leaves Syncthing's A "
                         "running through the timed runs (as the full run), st-stopped stops it")
    ap.add_argument("--gap", type=float, default=0.0, metavar="S",
                    help="sleep S seconds before each run (the full run's anchors take ~25 s "
                         "(5,020 files) to ~80 s (20,020) between the agent's runs)")
    ap.add_argument("--cold", action="store_true",
                    help="drop the page cache before each timed tool (root): A's files and "
                         "each tool's own code are read from the disk")
    ap.add_argument("--alternate", action="store_true",
                    help="the dagsync modes before rsync in every other run, as the full run, "
                         "and the modes themselves in reverse order in those runs")
    ap.add_argument("--split", action="store_true",
                    help="per run, also print the machine's busy CPU (all processes and "
                         "kernel threads), each agent's user/system CPU and B's I/O")
    args = ap.parse_args()
    variants: dict[str, dict[str, str]] = {}
    for v in args.variant:
        name, _, assignment = v.partition(":")
        var, eq, value = assignment.partition("=")
        if not (name and var and eq):
            ap.error(f"--variant {v!r}: expected NAME:VAR=VALUE")
        variants.setdefault(name, {})[var] = value  # repeat NAME to set several
    work = args.workdir.resolve()
    R.probe_setup(work, args.fresh_fs, args.agent_python, args.source, "floor")
    print(f"dagsync snapshot: {R.SNAPSHOT_INFO}", flush=True)
    base_src = base_snapshot(args.base, work / "src-base") if args.base else None
    modes = args.modes.split(",") + (["base"] if base_src and "base" not in args.modes else [])
    modes += [name for name in variants if name not in modes]
    probe_dir = R.site_dir(work, "floor", DISCARD_APPLY)
    corpus_dir, _ = R.corpus(work, args.files)
    sshd, a, b, ref, base = R.probe_pair(work, corpus_dir, "floor")
    uni = st_pair = None
    if args.anchors != "off":
        anc_ref = R.anchors.tree(a.dags)
        uni = R.anchors.Unison(base / "unison", sshd.cfg)
        st_pair, _ = R.anchors.initial_syncthing_setup(base / "syncthing", corpus_dir,
                                                      len(anc_ref))
    rsync_dst = base / "rsync-target"
    times: dict[str, list[float]] = {m: [] for m in ["rsync", *modes]}
    cpu: dict[str, list[float]] = {m: [] for m in ["rsync", *modes]}
    try:
        for i in range(args.runs):
            for k in range(args.churn):
                R.copy_tree(corpus_dir, base / f"churn-{i}-{k}")
            if args.churn:
                os.sync()
            if uni is not None and st_pair is not None:
                dst = base / "unison-target"
                uni.reset(dst)
                t_uni = uni.run(a.dags, dst)
                if st_pair.nodes[0].proc is None:
                    st_pair.start([st_pair.nodes[0]])
                t_st = R.anchors.initial_syncthing_run(st_pair, anc_ref)["seconds"]
                if args.anchors == "st-stopped":
                    st_pair.nodes[0].stop()
                print(f"  anchors: unison {t_uni:.2f} s, Syncthing {t_st:.2f} s", flush=True)

            def time_rsync() -> None:
                R.empty_dir(rsync_dst)
                if args.cold:
                    drop_page_cache()
                busy0, ticks0, rep0 = machine_busy_s(), all_cpu_ticks(), reported_mib()
                t, cpu_s = R.timed_rsync(sshd.rsync_cmd(a.dags, rsync_dst), base / "rsync.log",
                                         sshd.pid)
                times["rsync"].append(t)
                cpu["rsync"].append(cpu_s)
                if args.split:
                    print(f"  rsync: machine busy {machine_busy_s() - busy0:.2f} s; "
                          f"reported {reported_mib() - rep0:.0f} MiB; "
                          f"top: {top_others(ticks0, {os.getpid()})}", flush=True)

            def time_modes(i: int = i) -> None:
                for mode in (modes[::-1] if args.alternate and i % 2 else modes):
                    b.stop()
                    b.reset()
                    a.alive()
                    out = base / f"floor-{i}.txt"
                    out.unlink(missing_ok=True)
                    b.env = {"no-apply": {"PYTHONPATH": os.fspath(probe_dir),
                                          "DAGSYNC_FLOOR_OUT": os.fspath(out)},
                             "agent-py": {"DAGSYNC_NO_FASTIO": "1"}, **variants}.get(mode)
                    b.python = sys.executable if mode == "harness-python" else None
                    if (a.env != variants.get(mode) or a.python != b.python  # the sender too
                            or mode == "fresh-a"):
                        a.stop()
                        a.env, a.python = variants.get(mode), b.python
                        a.start()
                        a.wait_ready()
                    os.sync()
                    if args.cold:
                        drop_page_cache()
                    assert a.proc is not None
                    a_cpu0 = R.proc_cpu_s(a.proc.pid)
                    a_us0 = user_sys_s(a.proc.pid)
                    a_wait0 = run_delay_s(a.proc.pid)
                    a_flt0 = minor_faults(a.proc.pid)
                    busy0, ticks0, rep0 = machine_busy_s(), all_cpu_ticks(), reported_mib()
                    t0 = time.monotonic()
                    measured_src = R.DAGSYNC_SRC
                    marks: dict[str, float] = {}
                    if mode == "base":
                        R.DAGSYNC_SRC = base_src
                    try:
                        b.start()
                    finally:
                        R.DAGSYNC_SRC = measured_src
                    if mode != "no-apply":
                        t, _ = R.wait_converged([b], ref, t0, timeout=900, what="agent run",
                                                procs=[a, b], marks=marks,
                                                probe=lambda b0=busy0: machine_busy_s() - b0)
                    else:
                        t = wait_chunks(out, len(ref), t0, b)
                    times[mode].append(t)
                    cpu[mode].append(R.agents_cpu_s([a, b]) - a_cpu0)  # both agents, B whole
                    if args.split:
                        assert b.proc is not None
                        (au, as_), (au0, as0) = user_sys_s(a.proc.pid), a_us0
                        au, as_ = au - au0, as_ - as0
                        bu, bs = user_sys_s(b.proc.pid)
                        print(f"  {mode}: B ready {marks.get('b_ready_s', 0):.2f} s, first file "
                              f"{marks.get('first_file_s', 0):.2f} s; "
                              + (f"machine busy {marks['probe']:.2f} s to the end ("
                                 if "probe" in marks else "machine busy (")
                              + f"{machine_busy_s() - busy0:.2f} s with the harness's "
                              "compare); "
                              f"reported {reported_mib() - rep0:.0f} MiB; "
                              f"A user {au:.2f} sys {as_:.2f} run-queue "
                              f"{run_delay_s(a.proc.pid) - a_wait0:.2f} minflt "
                              f"{minor_faults(a.proc.pid) - a_flt0}; B user {bu:.2f} sys "
                              f"{bs:.2f} run-queue {run_delay_s(b.proc.pid):.2f} "
                              f"({faults_hwm(b.proc.pid)}; {io_counts(b.proc.pid)}); "
                              "others: " + top_others(
                                  ticks0, {os.getpid(), a.proc.pid, b.proc.pid}),
                              flush=True)

            if args.gap:
                time.sleep(args.gap)
            for timed in ((time_modes, time_rsync) if args.alternate and i % 2
                          else (time_rsync, time_modes)):
                timed()
            print(f"run {i + 1}/{args.runs}: "
                  + ", ".join(f"{m} {xs[-1]:.3f} s ({cpu[m][-1]:.2f} s CPU)"
                              for m, xs in times.items()), flush=True)
    finally:
        b.stop()
        a.stop()
        if st_pair is not None:
            st_pair.stop()
        sshd.stop()
    rs, rs_cpu = statistics.median(times["rsync"]), statistics.median(cpu["rsync"])
    for mode, xs in times.items():
        print(f"{mode:9s} min {min(xs):.3f}  median {statistics.median(xs):.3f}  "
              f"max {max(xs):.3f} s  median over rsync {statistics.median(xs) / rs:.2f}x;  "
              f"CPU median {statistics.median(cpu[mode]):.2f} s "
              f"({statistics.median(cpu[mode]) / rs_cpu:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
