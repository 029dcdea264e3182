"""Helpers shared by the benchmark modules: logging, the process registry that stops
everything a run started, /proc readers, statistics and the DAG text generator."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

T_START = time.monotonic()


CLK_TCK = os.sysconf("SC_CLK_TCK")


def log(msg: str) -> None:
    print(f"[{time.monotonic() - T_START:7.1f}s] {msg}", flush=True)


class BenchError(RuntimeError):
    """A benchmark step failed; the message says which and why."""


class Procs:
    """Every process this harness starts: own session, PID recorded in WORK/pids, stopped
    by PID (SIGTERM, then SIGKILL) on exit, on an exception and on SIGINT/SIGTERM/SIGHUP."""

    def __init__(self) -> None:
        self.live: dict[int, tuple[subprocess.Popen[bytes], str]] = {}
        self.groups: set[int] = set()  # pids whose whole process group is stopped with them
        self.pidfile: Path | None = None

    def _write(self) -> None:
        if self.pidfile is None:
            return
        lines = [f"{pid} {name}\n" for pid, (p, name) in self.live.items() if p.poll() is None]
        self.pidfile.write_text("".join(lines))

    def start(self, cmd: list[str], name: str, logfile: Path,
              env: dict[str, str] | None = None, group: bool = False,
              cwd: Path | None = None) -> subprocess.Popen[bytes]:
        """Start `cmd` in its own session (so its process group id is its pid). `group`:
        stop the whole group with it (daemons that fork workers: Syncthing's monitor and
        its child, lsyncd's rsync/ssh children)."""
        logfile.parent.mkdir(parents=True, exist_ok=True)
        with logfile.open("ab") as lf:
            lf.write(f"\n$ {' '.join(cmd)}\n".encode())
            lf.flush()
            p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env, start_new_session=True,
                                 cwd=cwd)
        self.live[p.pid] = (p, name)
        if group:
            self.groups.add(p.pid)
        self._write()
        return p

    def run_timed(self, cmd: list[str], name: str, logfile: Path, timeout: float,
                  env: dict[str, str] | None = None) -> tuple[int, float]:
        """Run a foreground command to completion, tracked like the daemons (stopped by
        PID if the harness is interrupted); (exit code, wall seconds)."""
        with logfile.open("ab") as lf:
            lf.write(f"\n$ {' '.join(cmd)}\n".encode())
            lf.flush()
            t0 = time.perf_counter()
            p = subprocess.Popen(cmd, stdout=lf, stderr=subprocess.STDOUT,
                                 stdin=subprocess.DEVNULL, env=env)
            self.live[p.pid] = (p, name)
            try:
                rc = p.wait(timeout)
            finally:
                self.live.pop(p.pid, None)
            return rc, time.perf_counter() - t0

    def stop(self, p: subprocess.Popen[bytes] | None, timeout: float = 10) -> int | None:
        if p is None:
            return None
        group = p.pid in self.groups
        # own session: the process group id is the pid, and only what it started is in it
        kill = os.killpg if group else os.kill
        if p.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"pid {p.pid} ({self.live.get(p.pid, (None, '?'))[1]}) ignored SIGTERM "
                    f"for {timeout:.0f} s: SIGKILL")
                with contextlib.suppress(ProcessLookupError):
                    kill(p.pid, signal.SIGKILL)
                p.wait(10)
        if group:  # the leader is gone; stop any member that outlived it
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGKILL)
            self.groups.discard(p.pid)
        self.live.pop(p.pid, None)
        self._write()
        return p.returncode

    def stop_all(self) -> None:
        for pid in reversed(list(self.live)):
            p, name = self.live.get(pid, (None, ""))
            if p is None:
                continue
            try:
                if p.poll() is None:
                    log(f"stopping {name} pid {pid}")
                self.stop(p, timeout=5)
            except Exception as exc:  # keep going: stop the others
                print(f"stopping {name} pid {pid} failed: {exc}", file=sys.stderr)


PROCS = Procs()


def run_cmd(cmd: list[str], timeout: float = 600, check: bool = True,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and res.returncode != 0:
        raise BenchError(f"command failed (exit {res.returncode}): {' '.join(cmd)}\n"
                         f"{res.stderr.strip()[-2000:]}")
    return res


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    raise BenchError(f"127.0.0.1:{port} did not open within {timeout:.0f} s")


def tail(path: Path, n: int = 25) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return f"(no log at {path})"
    return "\n".join(f"    {line}" for line in lines[-n:])


def proc_stat(pid: int) -> tuple[str, int, int]:
    """A process's (or thread's) name, utime and stime in clock ticks (fields 2, 14, 15
    of /proc/PID/stat; the name may hold spaces and parentheses)."""
    with open(f"/proc/{pid}/stat") as f:
        head, _, rest = f.read().rpartition(")")
    fields = rest.split()
    return head.partition("(")[2], int(fields[11]), int(fields[12])


def proc_cpu_ticks(pid: int) -> int:
    _, utime, stime = proc_stat(pid)
    return utime + stime


def proc_mem_kib(pid: int) -> dict[str, int]:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


def stats(xs: Iterable[float]) -> dict[str, Any]:
    xs = list(xs)
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "min": min(xs), "median": statistics.median(xs), "max": max(xs),
            "mean": statistics.fmean(xs),
            "samples": [round(x, 4) for x in xs]}


def pct(xs: list[float], p: float) -> float:
    """Nearest-rank percentile."""
    s = sorted(xs)
    return s[max(1, math.ceil(p / 100 * len(s))) - 1]


def dag_text(tag: str, size: int = 4096) -> bytes:
    """A DAG-like Python file of exactly `size` bytes, unique per tag."""
    head = (f'"""Benchmark DAG {tag}."""\n'
            "from datetime import datetime, timedelta\n\n"
            "from airflow import DAG\n"
            "from airflow.operators.empty import EmptyOperator\n\n"
            f"with DAG('bench_{tag.replace('-', '_')}', start_date=datetime(2024, 1, 1),\n"
            "         schedule=None, default_args={'retries': 2,\n"
            "         'retry_delay': timedelta(minutes=5)}) as dag:\n")
    lines = [head]
    i = 0
    total = len(head)
    while True:
        line = f"    t{i} = EmptyOperator(task_id='{tag}_task_{i:03d}')\n"
        if total + len(line) + 8 > size:
            break
        lines.append(line)
        total += len(line)
        i += 1
    text = "".join(lines).encode()
    pad = size - len(text)
    return text + (b"#" * (pad - 1) + b"\n" if pad > 0 else b"")


def children(pid: int) -> list[int]:
    """Direct children of `pid`, over all its threads (Go forks from any thread)."""
    out: list[int] = []
    with contextlib.suppress(OSError):
        for t in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{t}/children") as f:
                out += [int(x) for x in f.read().split()]
    return out


def first_line(cmd: list[str]) -> str:
    """First line of a command's output (for version strings); never raises."""
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
        lines = (r.stdout + r.stderr).strip().splitlines()
        return lines[0] if lines else "?"
    except Exception as exc:
        return f"?? {exc}"


class FileCounter:
    """The file count of a tree under sync, for a completion poll that stays off the CPU
    of the tool being timed.

    The poll shares the machine with the tool it times: walking all 20,020 files every
    20 ms cost ~12 ms of CPU each time (5,020 files: ~3 ms), about a third of a core taken
    from the tool, and each listing holds the directory's lock while the tool creates
    files in it. A tool timed by its exit (rsync, unison) pays none of that. So a directory
    is listed only until it holds as many files as the reference has there; `reset()`
    (after a failed full compare) lists everything again. Files in directories the
    reference lacks are not counted: the full compare that follows a matching count
    finds them.
    """

    def __init__(self, root: Path, relpaths: Iterable[str],
                 skip: Callable[[str], bool]) -> None:
        self.root = os.fspath(root)
        self.want = Counter(os.path.dirname(p) for p in relpaths)
        self.skip = skip
        self.done: set[str] = set()

    def count(self) -> int:
        n = 0
        for d, want in self.want.items():
            if d in self.done:
                n += want
                continue
            listed = self._files_in(d)
            if listed == want:
                self.done.add(d)
            n += listed
        return n

    def reset(self) -> None:
        self.done.clear()

    def _files_in(self, reldir: str) -> int:
        n = 0
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), \
                os.scandir(os.path.join(self.root, reldir)) as it:
            for e in it:
                if not e.is_dir(follow_symlinks=False) and not self.skip(e.name):
                    n += 1
        return n
