#!/usr/bin/env python3
"""dagsync benchmarks on this machine, in one run, beside rsync, unison, Syncthing, lsyncd.

    python bench/run.py [--files 5000] [--initial-runs 8] [--quick] [--no-anchors] [--only a,...]

Besides the dagsync figures below, every section measures the other tools in the same run
(bench/anchors.py; --no-anchors skips them): unison and Syncthing in (a); unison no-change
runs, Syncthing rescans and idle usage of 3 Syncthing nodes and of lsyncd in (b)/(e);
Syncthing (3 nodes) and lsyncd (fan-out to 2 targets) latency and bursts at their default
and fastest delays in (c)/(d); (f) bytes on the wire for a one-line edit of a 1 MB file
(bench/wire.py); (s) the scale section (bench/scale.py). Plots: bench/plots.py.

Measures (all traffic on 127.0.0.1; every process started here is tracked and killed by
PID on exit, error or signal):

  (a) initial sync of the anchors' corpus (gen_corpus.py, seed 42) to an EMPTY peer:
      dagsync agent -> agent, dagsync one-shot `sync` -> agent, and `rsync -a --delete`
      over ssh to a private sshd (interleaved, `sync` before every timed run);
  (b) rescan of 20,000 unchanged files (Node.scan_all and scanner.scan_folder, warm
      index), plus a no-change rsync over ssh for reference;
  (c) edit propagation latency between 3 agents (full mesh, default settle);
  (d) a 1,000-file burst on A converging on 3 nodes;
  (e) idle CPU and RSS of 3 agents holding 20,000 files.

Writes bench/results/<UTC timestamp>.json and regenerates docs/benchmarks.md
(`--render-only JSON` re-renders the doc from a results file without measuring).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import calendar
import contextlib
import datetime as dt
import hashlib
import io
import json
import os
import platform
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import yaml


def _bench_module(name: str) -> Any:
    """Import bench/<name>.py by path and register it as `name`, so the sibling modules
    can import each other. bench/ is not put on sys.path: bench/profile.py would shadow
    the standard library's profile module (which cProfile imports) for any importer."""
    if name in sys.modules:
        return sys.modules[name]
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parent /
                                                  f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


_bench_module("common")
anchors = _bench_module("anchors")
wire = _bench_module("wire")
scale = _bench_module("scale")
plots_mod = _bench_module("plots")
h2h = _bench_module("h2h")
agent_python = _bench_module("agent_python")
from common import (  # noqa: E402  (loaded by path just above)
    CLK_TCK,
    PROCS,
    T_START,
    BenchError,
    FileCounter,
    dag_text,
    free_port,
    log,
    pct,
    proc_cpu_ticks,
    proc_mem_kib,
    run_cmd,
    stats,
    tail,
    wait_port,
)

REPO = Path(__file__).resolve().parent.parent

# dagsync is imported from a snapshot of this checkout's dagsync/ taken when the run starts
# (load_dagsync), and every agent runs that snapshot (PYTHONPATH): other people edit and
# commit dagsync/ while a run is in progress, and one run must measure one version.
DAGSYNC_SRC: Path | None = None

GEN_CORPUS = REPO / "bench" / "gen_corpus.py"  # a copy of the anchors' generator
RESULTS_DIR = REPO / "bench" / "results"
DOC = REPO / "docs" / "benchmarks.md"
IMG_DIR = REPO / "docs" / "img"


# Goals (stated in the doc with PASS/MISS).
IDLE_TRIM_WAIT_S = 12  # an agent trims its heap once quiet for 5 s + 2 s: measure after
GOAL_INITIAL_RATIO = 1.0  # dagsync initial sync <= 1.0x rsync over ssh (medians)
GOAL_RESCAN_S = 0.3  # rescan of 20,000 unchanged files
GOAL_P50_S = 0.050
GOAL_P99_S = 0.250
GOAL_BURST_S = 2.0
GOAL_IDLE_CPU_PCT = 1.0  # "near 0": <= 1 % of one core over the window
GOAL_RSS_BYTES = 60 * 1000 * 1000  # 60 MB (decimal, the stricter reading)


SNAPSHOT_INFO: dict[str, str] = {}

# The interpreter agents and one-shots run on (bench/agent_python.py: by default the one
# the Debian package runs dagsync on), and what was chosen, for the results.
AGENT_PYTHON: str = sys.executable
AGENT_PYTHON_INFO: dict[str, str] = {"choice": "harness"}


def use_agent_python(choice: str) -> None:
    """Pick the agents' interpreter: before snapshot_source, which builds for it."""
    global AGENT_PYTHON, AGENT_PYTHON_INFO
    chosen = agent_python.resolve(choice, log)
    AGENT_PYTHON, AGENT_PYTHON_INFO = chosen.exe, chosen.info
    log(f"agents run on {chosen.info['agents']}")


def snapshot_source(dst: Path, source: str = "head", rev: str = "HEAD") -> Path:
    """Put the dagsync/ package to measure in dst/dagsync; return dst. `head`: as committed
    at `rev` (`git archive`), so uncommitted work in progress by others is not measured;
    `worktree`: the files as they are in the checkout now."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    if source == "head":
        sha = run_cmd(["git", "-C", os.fspath(REPO), "rev-parse", rev]).stdout.strip()
        data = subprocess.run(["git", "-C", os.fspath(REPO), "archive", "--format=tar", sha,
                               "dagsync", "setup.py"], capture_output=True, check=True).stdout
        with tarfile.open(fileobj=io.BytesIO(data)) as tf:
            tf.extractall(dst, filter="data")
        SNAPSHOT_INFO.update(source="git HEAD", commit=sha[:12])
    else:
        shutil.copytree(REPO / "dagsync", dst / "dagsync",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.so"))
        shutil.copy(REPO / "setup.py", dst / "setup.py")
        SNAPSHOT_INFO.update(source="work tree")
    # The C helper, as pip builds it at install (dagsync/_fastio.c, optional: without a
    # compiler the agents run bulkio's Python loops, and the results say so).
    if (dst / "setup.py").exists() and (dst / "dagsync" / "_fastio.c").exists():
        built = subprocess.run([AGENT_PYTHON, "setup.py", "-q", "build_ext", "--inplace"],
                               cwd=dst, capture_output=True, text=True)
        SNAPSHOT_INFO["fastio"] = "built" if built.returncode == 0 and any(
            (dst / "dagsync").glob("_fastio*.so")) else "not built"
    # Byte-compiled as an installed package is (pip and the .deb compile it): this
    # environment may set PYTHONDONTWRITEBYTECODE, and an agent importing from source
    # would otherwise compile every module at each start (~0.15 s, ~1 MB of RSS).
    for python in {AGENT_PYTHON, sys.executable}:  # the harness imports the snapshot too
        run_cmd([python, "-m", "compileall", "-q", os.fspath(dst / "dagsync")])
    SNAPSHOT_INFO["byte_compiled"] = "yes"
    return dst


def load_dagsync(src: Path) -> None:
    """Import dagsync from `src` (a snapshot) in this process and in every agent."""
    global DAGSYNC_SRC, dagsync, is_temp_name, generate_node_key, public_key_line
    DAGSYNC_SRC = src
    sys.path.insert(0, os.fspath(src))
    import dagsync as _d
    from dagsync.paths import is_temp_name as _t
    from dagsync.transport import generate_node_key as _g
    from dagsync.transport import public_key_line as _p

    if Path(_d.__file__).resolve().parent != (src / "dagsync").resolve():
        raise BenchError(f"dagsync imported from {_d.__file__}, not the snapshot in {src}")
    dagsync, is_temp_name, generate_node_key, public_key_line = _d, _t, _g, _p


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for dagsync processes: the snapshot first on PYTHONPATH."""
    env = {**os.environ, **(extra or {})}
    # `python -m dagsync` would put the working directory first on sys.path: run from a
    # checkout, every agent would import the checkout's dagsync/, not the snapshot.
    env["PYTHONSAFEPATH"] = "1"
    if DAGSYNC_SRC is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            x for x in (os.fspath(DAGSYNC_SRC), env.get("PYTHONPATH", "")) if x)
    return env






# ---------------------------------------------------------------------------- processes






def _on_signal(signum: int, _frame: object) -> None:
    log(f"signal {signum}: stopping everything this run started")
    raise SystemExit(128 + signum)










# ---------------------------------------------------------------------------- /proc






def sys_cpu() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs."""
    with open("/proc/stat") as f:
        vals = [int(x) for x in f.readline().split()[1:]]
    idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
    return sum(vals) - idle, sum(vals)


def our_ticks() -> int:
    """CPU jiffies used by this harness and everything it started (live processes: their
    own + reaped children's; exited ones are in our children times once reaped)."""
    t = os.times()
    total = (t.user + t.system + t.children_user + t.children_system) * CLK_TCK
    for pid, (p, _) in list(PROCS.live.items()):
        if p.returncode is not None:
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
        except (OSError, ValueError, IndexError):
            pass
    return int(total)


def pressure_us(resource_name: str = "cpu") -> int | None:
    """PSI: total µs during which some task waited for `cpu` or `io`."""
    try:
        with open(f"/proc/pressure/{resource_name}") as f:
            line = f.readline()
        return int(line.rsplit("total=", 1)[1])
    except (OSError, ValueError, IndexError):
        return None


def cpu_pressure_us() -> int | None:
    return pressure_us("cpu")


class CpuMeter:
    """Machine CPU use over an interval, split into this harness's process tree and
    everything else (other users of the machine), in % of all cores."""

    def __init__(self) -> None:
        self.b0, self.t0 = sys_cpu()
        self.o0 = our_ticks()
        self.p0 = cpu_pressure_us()
        self.io0 = pressure_us("io")
        self.w0 = time.monotonic()

    def read(self) -> dict[str, float | None]:
        b1, t1 = sys_cpu()
        o1 = our_ticks()
        p1 = cpu_pressure_us()
        io1 = pressure_us("io")
        wall = max(1e-9, time.monotonic() - self.w0)
        total = max(1, t1 - self.t0)
        busy, ours = b1 - self.b0, o1 - self.o0
        return {
            "busy_pct": round(100 * busy / total, 1),
            "ours_pct": round(100 * min(ours, busy) / total, 1),
            "others_pct": round(100 * max(0, busy - ours) / total, 1),
            "cpu_pressure_pct": (round(100 * (p1 - self.p0) / 1e6 / wall, 1)
                                 if p1 is not None and self.p0 is not None else None),
            "io_pressure_pct": (round(100 * (io1 - self.io0) / 1e6 / wall, 1)
                                if io1 is not None and self.io0 is not None else None),
        }


class Section:
    """Context for one benchmark section: wall time, load and whole-machine CPU busy %
    while it ran (other engineers' test suites share these 2 cores)."""

    def __init__(self, res: dict[str, Any], key: str, title: str) -> None:
        self.res, self.key, self.title = res, key, title

    def __enter__(self) -> dict[str, Any]:
        log(f"=== {self.title}")
        self.t0 = time.monotonic()
        self.meter = CpuMeter()
        self.load0 = os.getloadavg()
        self.out: dict[str, Any] = {}
        self.res[self.key] = self.out
        return self.out

    def __exit__(self, et: object, ev: object, tb: object) -> None:
        cpu = self.meter.read()
        self.out["_section"] = {
            "wall_s": round(time.monotonic() - self.t0, 1),
            "machine_cpu_busy_pct": cpu["busy_pct"],
            "bench_cpu_pct": cpu["ours_pct"],
            "others_cpu_pct": cpu["others_pct"],
            "cpu_pressure_pct": cpu["cpu_pressure_pct"],
            "io_pressure_pct": cpu["io_pressure_pct"],
            "loadavg_start": [round(x, 2) for x in self.load0],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        }
        log(f"=== {self.title}: {self.out['_section']['wall_s']} s (machine busy "
            f"{cpu['busy_pct']} %: this bench {cpu['ours_pct']} %, others {cpu['others_pct']} %)")


# ---------------------------------------------------------------------------- stats






# ---------------------------------------------------------------------------- trees


def count_files(root: Path) -> int:
    """Non-directory entries below root, not counting dagsync's temp files."""
    n = 0
    stack = [os.fspath(root)]
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        stack.append(e.path)
                    elif not is_temp_name(e.name):
                        n += 1
        except FileNotFoundError:
            pass
    return n


def snapshot(root: Path) -> dict[str, tuple[int, str, int, int]]:
    """{relpath: (size, sha256, mode bits, mtime_ns)} of every non-directory entry."""
    out = {}
    base = os.fspath(root)
    for dp, dns, fns in os.walk(base):
        dns.sort()
        for fn in fns:
            p = os.path.join(dp, fn)
            rel = os.path.relpath(p, base)
            st = os.lstat(p)
            if os.path.islink(p):
                digest = "link:" + os.readlink(p)
            else:
                with open(p, "rb") as f:
                    digest = hashlib.sha256(f.read()).hexdigest()
            out[rel] = (st.st_size, digest, st.st_mode & 0o7777, st.st_mtime_ns)
    return out


def compare(ref: dict[str, tuple[int, str, int, int]],
            other: dict[str, tuple[int, str, int, int]]) -> dict[str, int]:
    missing = len(ref.keys() - other.keys())
    extra = len(other.keys() - ref.keys())
    common = ref.keys() & other.keys()
    content = sum(1 for k in common if ref[k][:2] != other[k][:2])
    meta = sum(1 for k in common if ref[k][:2] == other[k][:2] and ref[k][2:] != other[k][2:])
    return {"missing": missing, "extra": extra, "content_differs": content,
            "meta_differs": meta}


def identical(diff: dict[str, int]) -> bool:
    return diff["missing"] == diff["extra"] == diff["content_differs"] == 0


# Trees the benchmark is done with are renamed aside, never deleted mid-run: ext4 will not
# reuse an inode freed in the last 60-300 s (recently_deleted() in its inode allocator), so
# after `rm -r` of a 5,000-file target every create scans past the freed inodes -- we
# measured creates 16x slower for minutes afterwards. Deleting between timed runs made
# each run pay for the previous one's cleanup. Retired trees are removed at exit.
RETIRED: list[Path] = []


def retire(d: Path) -> None:
    """Move `d` out of the way (one rename); it is deleted when the benchmark ends."""
    if not d.exists():
        return
    dest = d.with_name(f".retired-{d.name}-{len(RETIRED)}-{os.getpid()}")
    d.rename(dest)
    RETIRED.append(dest)


def remove_retired() -> None:
    while RETIRED:
        shutil.rmtree(RETIRED.pop(), ignore_errors=True)


FRESH_FS: dict[str, str] = {}  # the loop device of --fresh-fs, for the results' metadata


def mount_fresh_fs(work: Path, gib: int) -> None:
    """Mount a brand-new ext4 file system on `work` (a sparse image beside it).

    Every tool is measured on a file system no earlier run or test has churned: ext4's
    inode allocator skips inodes freed in the last minutes (recently_deleted()), so on a
    shared disk the previous test run's cleanup decides how fast creates are -- we saw
    16x differences from one minute to the next. Unmounted and deleted at exit."""
    if os.path.ismount(work):
        raise BenchError(f"{work} is already a mount point; pass --fresh-fs 0 to use it")
    image = work.with_name(work.name + ".img")
    image.unlink(missing_ok=True)
    with open(image, "wb") as f:
        f.truncate(gib << 30)
    run_cmd(["mkfs.ext4", "-q", "-F", os.fspath(image)])
    # Direct I/O to the image: a buffered loop device caches every block twice and turns
    # each flush into writeback of the image file's page cache plus the host's journal,
    # so durability cost 2-5x what it costs on this machine's own disk (syncfs after
    # 512 new 10 KB files: ~5.8 ms on the root ext4, 8.7-9.3 ms with direct I/O,
    # 10-28 ms buffered, growing as the image fills). rsync never syncs; dagsync and
    # Syncthing do, so a buffered loop device measured mostly the loop device.
    made = subprocess.run(["losetup", "--show", "-f", "--direct-io=on", os.fspath(image)],
                          capture_output=True, text=True)
    if made.returncode != 0:  # an older losetup, or the image's file system refuses O_DIRECT
        made = subprocess.run(["losetup", "--show", "-f", os.fspath(image)],
                              capture_output=True, text=True, check=True)
    device = made.stdout.strip()
    # what the kernel does, not what was asked: it may keep a device buffered
    flag = Path("/sys/block", Path(device).name, "loop", "dio")
    dio = "on" if flag.exists() and flag.read_text().strip() == "1" else "off"
    run_cmd(["mount", device, os.fspath(work)])
    FRESH_FS.update(device=device, direct_io=dio)

    def unmount() -> None:
        os.chdir("/")
        for _ in range(10):
            if subprocess.run(["umount", os.fspath(work)], capture_output=True).returncode == 0:
                break
            time.sleep(0.5)
        else:
            # Still busy (a file this process holds there): detach it lazily. The kernel
            # frees the file system, the loop device (losetup -d on a busy device sets
            # autoclear) and the unlinked image once the last holder is gone, at our exit.
            if subprocess.run(["umount", "-l", os.fspath(work)],
                              capture_output=True).returncode != 0:
                log(f"note: could not unmount {work}; image {image} left in place on {device}")
                return
            log(f"note: {work} was busy at exit; unmounted lazily, freed when this exits")
        subprocess.run(["losetup", "-d", device], capture_output=True)
        image.unlink(missing_ok=True)

    atexit.register(unmount)  # registered first, so it runs after the agents are stopped
    log(f"fresh ext4 file system ({gib} GiB sparse image {image} on {device}, direct I/O "
        f"{dio}) mounted on {work}")


def copy_tree(src: Path, dst: Path) -> None:
    retire(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    run_cmd(["cp", "-a", os.fspath(src), os.fspath(dst)])


def empty_dir(d: Path) -> None:
    retire(d)
    d.mkdir(parents=True)


# ---------------------------------------------------------------------------- corpus


def corpus(work: Path, files: int) -> tuple[Path, dict[str, Any]]:
    out = work / f"corpus-{files}-s42"
    run_cmd([sys.executable, os.fspath(GEN_CORPUS), os.fspath(out), "--files", str(files)],
            timeout=1800)
    manifest = json.loads((work / f"corpus-{files}-s42.manifest.json").read_text())
    info = {k: manifest[k] for k in ("file_count", "dir_count", "total_bytes", "digest",
                                     "params")}
    log(f"corpus {out}: {info['file_count']} files, {info['total_bytes'] / 1e6:.1f} MB, "
        f"digest {info['digest'][:16]}")
    return out, info




# ---------------------------------------------------------------------------- sshd


class SSHD:
    """A private OpenSSH server on 127.0.0.1 with generated host and user keys; remote
    user root. root's login shell is bash and its ~/.bashrc runs `pyenv init` on every
    ssh command (bash sources ~/.bashrc when started by sshd with SHLVL < 2). A forced
    environment, `SetEnv SHLVL=1` in sshd_config, makes bash skip ~/.bashrc, so each ssh
    command costs what it would for a user with a plain shell; checked at start."""

    def __init__(self, work: Path) -> None:
        self.dir = work / "ssh"
        self.port = free_port()
        self.cfg = self.dir / "ssh_config"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        d = self.dir
        d.mkdir(parents=True, exist_ok=True)
        for k in ("host_ed25519", "id_ed25519"):
            if not (d / k).exists():
                run_cmd(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", os.fspath(d / k)])
        shutil.copy(d / "id_ed25519.pub", d / "authorized_keys")
        (d / "sshd_config").write_text(f"""Port {self.port}
ListenAddress 127.0.0.1
HostKey {d}/host_ed25519
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
UseDNS no
PrintMotd no
PrintLastLog no
MaxStartups 100:30:200
LogLevel ERROR
SetEnv SHLVL=1
""")
        self.cfg.write_text(f"""Host bench
  HostName 127.0.0.1
  Port {self.port}
  User root
  IdentityFile {d}/id_ed25519
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile /dev/null
  BatchMode yes
  LogLevel ERROR
""")
        Path("/run/sshd").mkdir(exist_ok=True)
        self.proc = PROCS.start(["/usr/sbin/sshd", "-D", "-e", "-f", os.fspath(d / "sshd_config")],
                                "sshd", d / "sshd.log")
        wait_port(self.port)
        out = run_cmd(["ssh", "-F", os.fspath(self.cfg), "bench",
                       'echo "ok ${PYENV_ROOT:-no-pyenv} $SHLVL"']).stdout.split()
        if out[:2] != ["ok", "no-pyenv"]:
            raise BenchError(f"ssh to the private sshd: ~/.bashrc still runs ({out}); "
                             "rsync timings would include pyenv init")
        log(f"sshd pid {self.proc.pid} on 127.0.0.1:{self.port} (remote user root, "
            f"~/.bashrc skipped via SetEnv SHLVL=1)")

    def roundtrip(self, n: int = 5) -> dict[str, Any]:
        xs = []
        for _ in range(n):
            t0 = time.perf_counter()
            run_cmd(["ssh", "-F", os.fspath(self.cfg), "bench", "true"])
            xs.append(time.perf_counter() - t0)
        return stats(xs)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def rsync_cmd(self, src: Path, dst: Path, fsync: bool = False) -> list[str]:
        return ["rsync", "-a", "--delete", *(["--fsync"] if fsync else []), "-e",
                f"ssh -F {self.cfg}", os.fspath(src) + "/", f"bench:{dst}/"]

    def stop(self) -> None:
        PROCS.stop(self.proc)
        self.proc = None


def children_cpu_s() -> float:
    """CPU seconds of every child this process has reaped so far (and their children)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def proc_cpu_s(pid: int) -> float:
    return proc_cpu_ticks(pid) / CLK_TCK


def reaped_cpu_s(pid: int) -> float:
    """cutime + cstime of a live process: CPU of the children it has reaped."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / CLK_TCK


def sshd_sessions_done(pid: int, timeout: float = 3.0) -> None:
    """Wait until the sshd master has reaped its per-connection children."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        kids = []
        with contextlib.suppress(OSError):
            for t in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{t}/children") as f:
                    kids += f.read().split()
        if not kids:
            return
        time.sleep(0.02)


def timed_rsync(cmd: list[str], logfile: Path, sshd_pid: int | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the rsync client + its ssh + the server side)."""
    os.sync()
    if sshd_pid is not None:
        sshd_sessions_done(sshd_pid)
    srv0 = reaped_cpu_s(sshd_pid) if sshd_pid else 0.0
    cli0 = children_cpu_s()
    rc, elapsed = PROCS.run_timed(cmd, "rsync", logfile, 600)
    if rc != 0:
        raise BenchError(f"rsync exited {rc}: {' '.join(cmd)}\n{tail(logfile)}")
    cpu = children_cpu_s() - cli0
    if sshd_pid is not None:
        sshd_sessions_done(sshd_pid)
        cpu += reaped_cpu_s(sshd_pid) - srv0
    return elapsed, cpu


# ---------------------------------------------------------------------------- dagsync nodes


class Node:
    """One dagsync node: own dir with folder `dags`, state dir, key and config."""

    def __init__(self, name: str, base: Path) -> None:
        self.name = name
        self.base = base
        self.port = free_port()
        self.dags = base / "dags"
        self.state = base / "state"
        self.key = base / "node_key"
        self.config = base / "dagsync.yaml"
        self.log = base / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.global_args: list[str] = []  # e.g. ["--log-format", "json"] (bench/profile.py)
        self.env: dict[str, str] | None = None  # extra environment for the agent
        self.python: str | None = None  # another interpreter than AGENT_PYTHON
        if base.exists():
            retire(base)
        self.dags.mkdir(parents=True)
        self.public_key = public_key_line(generate_node_key(self.key))

    def peer_entry(self) -> dict[str, str]:
        return {"name": self.name, "address": f"127.0.0.1:{self.port}",
                "public_key": self.public_key}

    def write_config(self, peers: list[Node], scan_interval: str = "60s") -> None:
        cfg = {
            "node": {"name": self.name, "listen": f"127.0.0.1:{self.port}",
                     "key": os.fspath(self.key), "state_dir": os.fspath(self.state)},
            "folders": [{"id": "dags", "path": os.fspath(self.dags), "mode": "send-receive"}],
            "peers": [p.peer_entry() for p in peers],
            "scan_interval": scan_interval,  # settle: default (20ms)
        }
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    @property
    def sock(self) -> Path:
        return self.state / "agent.sock"

    def reset(self) -> None:
        """Empty folder and a fresh state dir (a brand-new node with the same key)."""
        assert self.proc is None or self.proc.poll() is not None
        empty_dir(self.dags)
        retire(self.state)

    def start(self) -> subprocess.Popen[bytes]:
        assert self.proc is None or self.proc.poll() is not None
        with contextlib.suppress(FileNotFoundError):
            self.sock.unlink()  # stale from a killed agent: readiness is its re-creation
        python = self.python or AGENT_PYTHON
        self.proc = PROCS.start([python, "-m", "dagsync", *self.global_args, "agent",
                                 "--config", os.fspath(self.config)],
                                f"dagsync-agent-{self.name}", self.log,
                                env=child_env(self.env))
        return self.proc

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            rc = self.proc.returncode if self.proc else None
            raise BenchError(f"agent {self.name} is not running (exit {rc}); log {self.log}:\n"
                             f"{tail(self.log)}")

    def wait_ready(self, timeout: float = 300) -> float:
        """Seconds until the control socket exists (first scan done, server listening)."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        while not self.sock.exists():
            self.alive()
            if time.monotonic() > deadline:
                raise BenchError(f"agent {self.name} not ready within {timeout:.0f} s:\n"
                                 f"{tail(self.log)}")
            time.sleep(0.01)
        return time.perf_counter() - t0

    def stop(self) -> None:
        if self.proc is not None:
            rc = PROCS.stop(self.proc, timeout=15)
            if rc not in (0, None, -signal.SIGTERM):
                log(f"agent {self.name} exited {rc} on SIGTERM (log {self.log})")
            self.proc = None


def initial_pair(base: Path, corpus_dir: Path) -> tuple[Node, Node, dict[str, Any]]:
    """For the initial-sync probes (bench/profile.py, bench/floor.py): A running and
    indexed with the corpus, B configured and empty, not started yet; and the reference
    tree B must end up holding."""
    a, b = Node("a", base / "a"), Node("b", base / "b")
    mesh([a, b])
    copy_tree(corpus_dir, a.dags)
    ref = snapshot(a.dags)
    a.start()
    a.wait_ready()
    os.sync()
    return a, b, ref


def probe_pair(work: Path, corpus_dir: Path, name: str
               ) -> tuple[SSHD, Node, Node, dict[str, Any], Path]:
    """The private sshd rsync goes through (started), and initial_pair of `corpus_dir`
    under work/name: (sshd, A, B, the reference tree, work/name)."""
    sshd = SSHD(work)
    sshd.start()
    base = work / name
    a, b, ref = initial_pair(base, corpus_dir)
    return sshd, a, b, ref, base


def probe_options(ap: argparse.ArgumentParser, files: int, fresh_fs: int) -> None:
    """The options every initial-sync probe takes (bench/floor.py, bench/lanes.py);
    probe_setup uses them."""
    ap.add_argument("--files", type=int, default=files)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--fresh-fs", type=int, default=fresh_fs, metavar="GIB")
    ap.add_argument("--source", choices=("head", "worktree"), default="head")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dagsync-bench"))
    agent_python.add_option(ap)


def probe_setup(work: Path, fresh_fs: int, agent_python_choice: str, source: str,
                name: str, src: Path | None = None) -> None:
    """The start of a single-question probe (bench/floor.py, bench/lanes.py,
    bench/profile.py): its work dir, on a fresh file system of `fresh_fs` GiB unless 0;
    the agents' interpreter; the dagsync they run (`src`, else a new snapshot of
    `source`); every process started stopped by PID at exit or on a signal."""
    work.mkdir(parents=True, exist_ok=True)
    if fresh_fs:
        mount_fresh_fs(work, fresh_fs)
    use_agent_python(agent_python_choice)
    load_dagsync(src if src is not None else snapshot_source(work / f"src-{name}", source))
    PROCS.pidfile = work / f"pids-{name}"
    atexit.register(PROCS.stop_all)  # after the unmount's: runs before it
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def site_dir(work: Path, name: str, code: str) -> Path:
    """A new directory holding `code` as sitecustomize.py: an agent with it on its
    PYTHONPATH runs the code first thing (a probe's instrumentation, never dagsync's)."""
    site = Path(tempfile.mkdtemp(prefix=f"{name}-site-", dir=work))
    (site / "sitecustomize.py").write_text(code)
    return site


def agents_cpu_s(nodes: list[Node]) -> float:
    total = 0.0
    for n in nodes:
        n.alive()
        assert n.proc is not None
        total += proc_cpu_s(n.proc.pid)
    return total


def mesh(nodes: list[Node], scan_interval: str = "60s") -> None:
    for n in nodes:
        n.write_config([p for p in nodes if p is not n], scan_interval)


NEAR_END = 0.9  # share of the files after which wait_converged polls every NEAR_END_POLL
NEAR_END_POLL = 0.002


def wait_converged(targets: list[Node], ref: dict[str, tuple[int, str, int, int]], t0: float,
                   timeout: float, poll: float = 0.02, what: str = "sync",
                   procs: Iterable[Node] = (),
                   marks: dict[str, float] | None = None,
                   probe: Callable[[], float] | None = None) -> tuple[float, int]:
    """Poll the file count of every target every `poll` s, and every NEAR_END_POLL s
    once each target holds NEAR_END of the files (common.FileCounter: a directory is
    listed until it is complete); when all counts match the reference, compare the
    trees in full (content). Returns (seconds from t0 to the poll that saw the
    complete, later verified, trees; number of full compares done). A tool timed by
    its exit (rsync) is timed to the millisecond; polled, the end is seen up to one
    poll late, on average half of one: ~10 ms at 20 ms, ~1 ms near the end.
    `marks` gets `first_file_s` (first poll with any file on every target) and, per
    target, `<name>_ready_s` (first poll that saw its control socket)."""
    want = len(ref)
    compares = 0
    deadline = time.monotonic() + timeout
    last_diff: dict[str, Any] = {}
    counters = [FileCounter(n.dags, ref, is_temp_name) for n in targets]
    while True:
        counts = [fc.count() for fc in counters]
        seen = time.perf_counter()
        if marks is not None:
            if "first_file_s" not in marks and all(counts):
                marks["first_file_s"] = seen - t0
            for n in targets:
                if f"{n.name}_ready_s" not in marks and n.sock.exists():
                    marks[f"{n.name}_ready_s"] = seen - t0
        if all(c == want for c in counts):
            if probe is not None and marks is not None:
                marks["probe"] = probe()  # e.g. CPU used so far, read before the compare
            compares += 1
            diffs = {n.name: compare(ref, snapshot(n.dags)) for n in targets}
            if all(identical(d) for d in diffs.values()):
                return seen - t0, compares
            last_diff = diffs
            for fc in counters:
                fc.reset()
        for n in procs:
            n.alive()
        if time.monotonic() > deadline:
            raise BenchError(
                f"{what}: not converged within {timeout:.0f} s (counts {counts}, want {want}; "
                f"last compare {last_diff}); agent logs: "
                + ", ".join(os.fspath(n.log) for n in procs))
        # Near the end the incomplete directories are few (a tree fills directory by
        # directory), so a listing costs ~0.1 ms: poll often enough to see the end.
        near_end = all(c >= NEAR_END * want for c in counts)
        time.sleep(min(poll, NEAR_END_POLL) if near_end else poll)


# ---------------------------------------------------------------------------- (a) initial


SLOW_RUN_LOGS = Path.home() / ".cache" / "dagsync-bench" / "slow-runs"
RUN_STAMP = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def log_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def json_log_time(ts: str) -> float:
    """An agent's JSON log timestamp ("2026-12-07T21:11:21.123Z", UTC, ms) as epoch
    seconds."""
    return calendar.timegm(time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")) + float("0" + ts[19:-1])


def last_recorded_at(log: Path, start: int, end: int) -> float | None:
    """Wall-clock time (epoch seconds) of the last "N file(s) updated" line an agent
    logged (`--log-format json`) between byte offsets `start` and `end`: when it
    recorded the last files of a bulk round in its index. (a) times the files' arrival;
    this says how long B's bookkeeping ran on after it (docs/initial-sync.md, tenth
    session: recording held to a round's end was measured and not kept)."""
    with log.open("rb") as f:
        f.seek(start)
        lines = f.read(max(0, end - start)).splitlines()
    for line in reversed(lines):
        if b"file(s) updated" not in line:
            continue
        try:
            return json_log_time(json.loads(line)["ts"])
        except (ValueError, KeyError):
            continue
    return None


def keep_slow_run_logs(key: str, times: list[float],
                       parts: list[dict[str, tuple[Path, int, int]]]) -> list[str]:
    """Copy the agents' log lines of each run over 1.4x the median out of the work dir
    (a fresh file system, gone after the bench): an occasional ~1.2 s stall in a
    5,020-file sync was seen twice and never reproduced (docs/initial-sync.md)."""
    if len(times) < 3:
        return []
    median = statistics.median(times)
    kept = []
    for i, (t, logs) in enumerate(zip(times, parts, strict=True)):
        if t <= 1.4 * median:
            continue
        for name, (path, start, end) in logs.items():
            dst = SLOW_RUN_LOGS / f"{RUN_STAMP}-{key}-run{i + 1}-{name}.log"
            dst.parent.mkdir(parents=True, exist_ok=True)
            with path.open("rb") as f:
                f.seek(start)
                dst.write_bytes(f.read(max(0, end - start)))
            kept.append(os.fspath(dst))
        log(f"({key}) run {i + 1}: {t:.3f} s, over 1.4x the median {median:.3f} s: the "
            f"agents' logs of that run kept in {SLOW_RUN_LOGS}")
    return kept


def bench_initial(res: dict[str, Any], work: Path, corpus_dir: Path, runs: int,
                  sshd: SSHD, key: str = "initial", oneshot: bool = True,
                  with_anchors: bool = True) -> None:
    """Initial sync to an empty peer; per run, interleaved: unison and Syncthing
    (with_anchors), rsync over ssh and dagsync agent -> agent (taking turns to go
    first), dagsync one-shot (oneshot), `rsync --fsync` (with_anchors) last: a tool
    right after its fsyncs ran ~10 % slower (docs/initial-sync.md)."""
    base = work / key
    a, b = Node("a", base / "a"), Node("b", base / "b")
    for n in (a, b):  # milliseconds in the log lines a slow run leaves (keep_slow_run_logs)
        n.global_args = ["--log-format", "json"]
    mesh([a, b])
    copy_tree(corpus_dir, a.dags)
    ref = snapshot(a.dags)
    log(f"(a) A holds {len(ref)} files")
    rsync_dst = base / "rsync-target"
    rsync_log = base / "rsync.log"
    rs, ag, ag_compares, one, one_exit, one_compares = [], [], [], [], [], []
    rs_fsync: list[float] = []
    ag_marks: list[dict[str, float]] = []
    ag_logs: list[dict[str, tuple[Path, int, int]]] = []  # each run's part of the agents' logs
    cpu: dict[str, list[dict[str, float | None]]] = {"rsync": [], "agent": [], "oneshot": []}
    cpu_secs: dict[str, list[float]] = {"rsync": [], "agent": [], "oneshot": []}
    meta: dict[str, Any] = {}
    out: dict[str, Any] = {"files": len(ref)}
    anc: dict[str, Any] = {}
    st_pair = None
    uni = None
    if with_anchors:
        anc_ref = anchors.tree(a.dags)
        uni = anchors.Unison(base / "unison", sshd.cfg)
        st_pair, st_scan = anchors.initial_syncthing_setup(base / "syncthing", corpus_dir,
                                                          len(anc_ref))
        anc = {"unison": {"initial_s": []}, "syncthing": {"initial_s": [],
                                                          "a_first_scan_s": st_scan}}
        log(f"(a) Syncthing A scanned {len(anc_ref)} files in {st_scan:.2f} s (not timed)")
    def time_rsync(i: int) -> None:
        """rsync -a --delete over ssh to an empty target."""
        empty_dir(rsync_dst)
        cmd = sshd.rsync_cmd(a.dags, rsync_dst)
        meter = CpuMeter()
        t, cpu_s = timed_rsync(cmd, rsync_log, sshd.pid)
        cpu["rsync"].append(meter.read())
        cpu_secs["rsync"].append(cpu_s)
        d = compare(ref, snapshot(rsync_dst))
        if not identical(d):
            raise BenchError(f"rsync run {i + 1}: target differs from A: {d}")
        rs.append(t)
        log(f"(a) run {i + 1}/{runs} rsync over ssh: {t:.3f} s; others' CPU "
            f"{cpu['rsync'][-1]['others_pct']} %")

    def time_agent(i: int) -> None:
        """dagsync agent -> agent: A running, B empty and brand new."""
        b.stop()
        b.reset()
        a.alive()
        os.sync()
        log_from = {n.name: log_size(n.log) for n in (a, b)}
        meter = CpuMeter()
        marks: dict[str, float] = {}
        assert a.proc is not None
        a_cpu0 = proc_cpu_s(a.proc.pid)
        t0, t0_wall = time.perf_counter(), time.time()
        b.start()
        t, c = wait_converged([b], ref, t0, timeout=900, what=f"agent run {i + 1}",
                              procs=[a, b], marks=marks,
                              probe=lambda a0=a_cpu0: agents_cpu_s([a, b]) - a0)
        cpu_secs["agent"].append(marks["probe"])
        cpu["agent"].append(meter.read())
        ag.append(t)
        ag_compares.append(c)
        ag_marks.append(marks)
        meta["agent"] = compare(ref, snapshot(b.dags))
        b.stop()  # its rescan after the round must not run into rsync's timing
        ag_logs.append({n.name: (n.log, log_from[n.name], log_size(n.log))
                        for n in (a, b)})
        recorded = last_recorded_at(b.log, log_from["b"], log_size(b.log))
        if recorded is not None:
            marks["b_recorded_s"] = recorded - t0_wall
        log(f"(a) run {i + 1}/{runs} dagsync agent->agent: {t:.3f} s (B ready "
            f"{marks.get('b_ready_s', 0):.2f} s, first file "
            f"{marks.get('first_file_s', 0):.2f} s; {c} full compare(s)); others' CPU "
            f"{cpu['agent'][-1]['others_pct']} %")

    a.start()
    out["a_first_index_s"] = a.wait_ready()
    log(f"(a) A indexed {len(ref)} files in {out['a_first_index_s']:.2f} s (agent start)")
    for i in range(runs):
        if uni is not None and st_pair is not None:
            dst = base / "unison-target"
            uni.reset(dst)
            t = uni.run(a.dags, dst)
            if anchors.tree(dst) != anc_ref:
                raise BenchError(f"unison run {i + 1}: target differs from A")
            anc["unison"]["initial_s"].append(t)
            log(f"(a) run {i + 1}/{runs} unison over ssh: {t:.3f} s")
            t = anchors.initial_syncthing_run(st_pair, anc_ref)["seconds"]
            anc["syncthing"]["initial_s"].append(t)
            log(f"(a) run {i + 1}/{runs} Syncthing A -> new B: {t:.3f} s")

        # rsync and the agent take turns going first: the agent was slower right after
        # rsync, for a reason not found (docs/initial-sync.md).
        for timed in ((time_rsync, time_agent) if i % 2 == 0 else (time_agent, time_rsync)):
            timed(i)

        if oneshot:
            # dagsync one-shot `sync` on A (no agent there) -> agent on empty B
            a.stop()
            b.stop()
            b.reset()
            b.start()
            b.wait_ready()
            os.sync()
            meter = CpuMeter()
            assert b.proc is not None
            b_cpu0 = proc_cpu_s(b.proc.pid)
            cli0 = children_cpu_s()
            t0 = time.perf_counter()
            p = PROCS.start([AGENT_PYTHON, "-m", "dagsync", "sync", "--config",
                             os.fspath(a.config), "--strict", "--timeout", "900"],
                            "dagsync-sync-a", base / "oneshot.log", env=child_env())
            try:
                rc = p.wait(960)
            finally:
                PROCS.stop(p)
            t_exit = time.perf_counter() - t0
            if rc != 0:
                raise BenchError(f"one-shot sync run {i + 1} exited {rc}:\n"
                                 f"{tail(base / 'oneshot.log')}")
            t, c = wait_converged([b], ref, t0, timeout=120, what=f"one-shot run {i + 1}",
                                  procs=[b], marks=(marks := {}),
                                  probe=lambda b0=b_cpu0: agents_cpu_s([b]) - b0)
            cpu["oneshot"].append(meter.read())
            cpu_secs["oneshot"].append(children_cpu_s() - cli0 + marks["probe"])
            one.append(max(t, t_exit))
            one_exit.append(t_exit)
            one_compares.append(c)
            meta["oneshot"] = compare(ref, snapshot(b.dags))
            log(f"(a) run {i + 1}/{runs} dagsync one-shot sync: exit {t_exit:.3f} s, B complete "
                f"{max(t, t_exit):.3f} s")
            b.stop()
            a.start()
            a.wait_ready()
        if with_anchors:  # reference, last: rsync as durable as dagsync (fsync per file)
            empty_dir(rsync_dst)
            t = timed_rsync(sshd.rsync_cmd(a.dags, rsync_dst, fsync=True), rsync_log)[0]
            d = compare(ref, snapshot(rsync_dst))
            if not identical(d):
                raise BenchError(f"rsync --fsync run {i + 1}: target differs from A: {d}")
            rs_fsync.append(t)
            log(f"(a) run {i + 1}/{runs} rsync --fsync over ssh: {t:.3f} s")
    out["last_run_diff"] = meta  # meta_differs: same bytes, other mode bits or mtime
    # rsync no-change (reference), target already complete
    noch = [timed_rsync(sshd.rsync_cmd(a.dags, rsync_dst), rsync_log)[0] for _ in range(5)]
    a.stop()
    b.stop()
    if st_pair is not None:
        st_pair.stop()
        for k in anc:
            anc[k]["initial_s"] = stats(anc[k]["initial_s"])
        out["anchors"] = anc
    out["rsync_ssh"] = {"initial_s": stats(rs), "nochange_s": stats(noch),
                        "command": " ".join(sshd.rsync_cmd(Path("A"), Path("B"))),
                        "cpu_per_run": cpu["rsync"], "cpu_s": stats(cpu_secs["rsync"])}
    if rs_fsync:
        out["rsync_ssh_fsync"] = {"initial_s": stats(rs_fsync), "command": " ".join(
            sshd.rsync_cmd(Path("A"), Path("B"), fsync=True))}
    out["dagsync_agent"] = {"initial_s": stats(ag), "full_compares": ag_compares,
                            "marks_per_run": ag_marks, "cpu_per_run": cpu["agent"],
                            "cpu_s": stats(cpu_secs["agent"]),
                            "b_ready_s": stats(m["b_ready_s"] for m in ag_marks
                                               if "b_ready_s" in m),
                            "first_file_s": stats(m["first_file_s"] for m in ag_marks
                                                  if "first_file_s" in m),
                            "b_recorded_s": stats(m["b_recorded_s"] for m in ag_marks
                                                  if "b_recorded_s" in m)}
    slow_logs = keep_slow_run_logs(key, ag, ag_logs)
    if slow_logs:
        out["dagsync_agent"]["slow_run_logs"] = slow_logs
    out["dagsync_oneshot"] = {"initial_s": stats(one), "process_exit_s": stats(one_exit),
                              "full_compares": one_compares, "cpu_per_run": cpu["oneshot"],
                              "cpu_s": stats(cpu_secs["oneshot"])}
    for k in ("dagsync_agent", "dagsync_oneshot"):
        m = out[k]["initial_s"]
        if not m.get("n"):
            continue
        out[k]["ratio_vs_rsync"] = {
            "median": m["median"] / out["rsync_ssh"]["initial_s"]["median"],
            "min": m["min"] / out["rsync_ssh"]["initial_s"]["min"],
        }
    res[key].update(out)


# ---------------------------------------------------------------------------- (b) rescan


def bench_rescan(res: dict[str, Any], work: Path, corpus_dir: Path, runs: int,
                 sshd: SSHD) -> None:
    from dagsync.config import load_config
    from dagsync.node import Node as DNode
    from dagsync.scanner import scan_folder

    base = work / "rescan"
    empty_dir(base)
    folder = base / "dags"
    copy_tree(corpus_dir, folder)
    files = count_files(folder)
    key = base / "node_key"
    generate_node_key(key)
    cfg_path = base / "dagsync.yaml"
    cfg_path.write_text(yaml.safe_dump({
        "node": {"name": "rescan", "listen": "127.0.0.1:1", "key": os.fspath(key),
                 "state_dir": os.fspath(base / "state")},
        "folders": [{"id": "dags", "path": os.fspath(folder)}],
    }))

    async def measure() -> dict[str, Any]:
        node = DNode(load_config(cfg_path))
        try:
            await node.open()
            t0 = time.perf_counter()
            first = await node.scan_all()
            first_s = time.perf_counter() - t0
            log(f"(b) first scan (index {first} new files): {first_s:.2f} s")
            await node.scan_all()  # warm-up: page cache, dentry cache, code paths
            full = []
            for i in range(runs):
                t0 = time.perf_counter()
                n = await node.scan_all()
                full.append(time.perf_counter() - t0)
                if n:
                    raise BenchError(f"rescan {i + 1} of unchanged files found {n} changes")
            eng = node.folders["dags"]
            direct = []
            changed = None
            for _ in range(runs):
                t0 = time.perf_counter()
                r = scan_folder(eng.root, eng, eng.ignore, eng.max_file_size)
                direct.append(time.perf_counter() - t0)
                changed = len(r.changed)
            if changed:
                raise BenchError(f"scan_folder of unchanged files reported {changed} changed")
            return {"first_scan_s": first_s, "first_scan_new_versions": first,
                    "scan_all_s": stats(full), "scan_folder_s": stats(direct)}
        finally:
            node.close()

    out = asyncio.run(measure())
    out["files"] = files
    log(f"(b) rescan {files} files: scan_all median {out['scan_all_s']['median']:.3f} s, "
        f"scan_folder median {out['scan_folder_s']['median']:.3f} s")
    dst = base / "rsync-target"
    empty_dir(dst)
    lg = base / "rsync.log"
    timed_rsync(sshd.rsync_cmd(folder, dst), lg)
    noch = [timed_rsync(sshd.rsync_cmd(folder, dst), lg)[0] for _ in range(runs)]
    out["rsync_ssh_nochange_s"] = stats(noch)
    log(f"(b) rsync over ssh, no change, {files} files: median {statistics.median(noch):.3f} s")
    retire(dst)
    res["rescan"].update(out)


# ---------------------------------------------------------------------------- (c)+(d) cluster


def agent_mem(nodes: list[Node]) -> dict[str, dict[str, int]]:
    out = {}
    for n in nodes:
        n.alive()
        assert n.proc is not None
        out[n.name] = proc_mem_kib(n.proc.pid)
    return out


def idle_cpu(nodes: list[Node], window: float) -> dict[str, float]:
    t0 = {}
    for n in nodes:
        assert n.proc is not None
        t0[n.name] = proc_cpu_ticks(n.proc.pid)
    start = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - start
    out = {}
    for n in nodes:
        assert n.proc is not None
        out[n.name] = 100.0 * (proc_cpu_ticks(n.proc.pid) - t0[n.name]) / CLK_TCK / elapsed
    return out


def start_cluster(base: Path, corpus_dir: Path,
                  timeout: float) -> tuple[list[Node], dict[str, Any], dict[str, Any]]:
    """A holds the corpus; B and C are empty; full mesh. Returns nodes, reference snapshot
    and the initial sync timing (A indexed first, then B and C started)."""
    nodes = [Node(n, base / n) for n in ("a", "b", "c")]
    mesh(nodes)
    a, b, c = nodes
    copy_tree(corpus_dir, a.dags)
    ref = snapshot(a.dags)
    a.start()
    index_s = a.wait_ready(timeout)
    os.sync()
    assert a.proc is not None
    a0 = proc_cpu_s(a.proc.pid)
    t0 = time.perf_counter()
    b.start()
    c.start()
    marks: dict[str, float] = {}
    t, _ = wait_converged([b, c], ref, t0, timeout=timeout, poll=0.05,
                          what="3-node initial sync", procs=nodes, marks=marks,
                          probe=lambda: agents_cpu_s(nodes) - a0)
    info = {"files": len(ref), "a_index_s": index_s, "b_and_c_complete_s": t,
            "agents_cpu_s": marks.get("probe")}
    log(f"cluster {base.name}: A indexed {len(ref)} files in {index_s:.2f} s; B and C "
        f"complete {t:.2f} s after their agents started")
    return nodes, ref, info


def bench_propagation(res: dict[str, Any], nodes: list[Node], edits: int, gap: float) -> None:
    rel = "bench_latency/latency_dag.py"
    pa, pb, pc = (n.dags / rel for n in nodes)
    pa.parent.mkdir(parents=True, exist_ok=True)
    first = dag_text("latency-0000")
    pa.write_bytes(first)
    deadline = time.monotonic() + 30
    while not all(p.exists() and p.read_bytes() == first for p in (pb, pc)):
        if time.monotonic() > deadline:
            raise BenchError("(c) the latency probe file did not reach B and C in 30 s")
        time.sleep(0.01)
    time.sleep(1.0)
    lat, lat_b, lat_c, late_start = [], [], [], 0
    next_start = time.perf_counter()
    for k in range(1, edits + 1):
        new = dag_text(f"latency-{k:04d}")
        assert len(new) == 4096
        now = time.perf_counter()
        if now < next_start:
            time.sleep(next_start - now)
        else:
            late_start += k > 1
        t0 = time.perf_counter()
        with open(pa, "wb") as f:  # in-place rewrite, like an editor or `cp`
            f.write(new)
        next_start = t0 + gap
        done_b = done_c = None
        while done_b is None or done_c is None:
            if done_b is None:
                with contextlib.suppress(FileNotFoundError), open(pb, "rb") as f:
                    if f.read() == new:
                        done_b = time.perf_counter() - t0
            if done_c is None:
                with contextlib.suppress(FileNotFoundError), open(pc, "rb") as f:
                    if f.read() == new:
                        done_c = time.perf_counter() - t0
            if time.perf_counter() - t0 > 30:
                for n in nodes:
                    n.alive()
                logs = [os.fspath(n.log) for n in nodes]
                raise BenchError(f"(c) edit {k} not on B and C within 30 s "
                                 f"(B {done_b}, C {done_c}); logs {logs}")
            time.sleep(0.001)
        lat.append(max(done_b, done_c))
        lat_b.append(done_b)
        lat_c.append(done_c)
        if k % 50 == 0 or k == edits:
            log(f"(c) {k}/{edits} edits, p50 so far {statistics.median(lat) * 1000:.1f} ms, "
                f"max {max(lat) * 1000:.1f} ms")
    out = res["propagation"]
    out.update({
        "edits": edits, "gap_s": gap, "file_bytes": 4096, "poll_s": 0.001,
        "edits_started_late": late_start,
        "both_s": {**stats(lat), "p50": pct(lat, 50), "p90": pct(lat, 90),
                   "p99": pct(lat, 99)},
        "b_s": {"p50": pct(lat_b, 50), "p99": pct(lat_b, 99), "max": max(lat_b)},
        "c_s": {"p50": pct(lat_c, 50), "p99": pct(lat_c, 99), "max": max(lat_c)},
    })


def bench_burst(res: dict[str, Any], nodes: list[Node], runs: int, count: int) -> None:
    a, b, c = nodes
    times, write_s, cpu_s = [], [], []
    for r in range(runs):
        top = f"bench_burst_{r}"
        files = {f"{top}/team_{i % 10:02d}/burst_dag_{i:04d}.py": dag_text(f"burst-{r}-{i:04d}")
                 for i in range(count)}
        time.sleep(1.0)
        os.sync()
        cpu0 = agents_cpu_s(nodes)
        t0 = time.perf_counter()
        for rel, data in files.items():
            p = a.dags / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                f.write(data)
        written = time.perf_counter() - t0
        deadline = time.monotonic() + 300
        while True:
            counts = [count_files(n.dags / top) for n in (b, c)]
            seen = time.perf_counter()
            if all(x == count for x in counts):
                cpu_used = agents_cpu_s(nodes) - cpu0
                bad = [(n.name, rel) for n in (b, c) for rel, data in files.items()
                       if (n.dags / rel).read_bytes() != data]
                if not bad:
                    break
            for n in nodes:
                n.alive()
            if time.monotonic() > deadline:
                raise BenchError(f"(d) burst {r + 1}: B/C have {counts} of {count} files "
                                 "after 300 s")
            time.sleep(0.01)
        times.append(seen - t0)
        write_s.append(written)
        cpu_s.append(cpu_used)
        log(f"(d) burst {r + 1}/{runs}: {count} files written in {written:.3f} s, on B and C "
            f"{seen - t0:.3f} s after the first write")
    # all three trees identical (not just the burst dirs)
    ref = snapshot(a.dags)
    diffs = {n.name: compare(ref, snapshot(n.dags)) for n in (b, c)}
    if not all(identical(d) for d in diffs.values()):
        raise BenchError(f"(d) trees differ after the bursts: {diffs}")
    res["burst"].update({"files_per_burst": count, "file_bytes": 4096, "poll_s": 0.01,
                         "converged_s": stats(times), "write_s": stats(write_s),
                         "agents_cpu_s": stats(cpu_s),
                         "after_last_write_s": stats(t - w for t, w in zip(times, write_s,
                                                                            strict=True)),
                         "tree_files_after": len(ref), "meta_check": diffs})


def bench_cluster_5k(res: dict[str, Any], work: Path, corpus_dir: Path, edits: int,
                     bursts: int, burst_files: int) -> None:
    nodes, _ref, info = start_cluster(work / "cluster", corpus_dir, timeout=900)
    try:
        res["propagation"]["cluster_initial"] = info
        time.sleep(IDLE_TRIM_WAIT_S)
        res["propagation"]["agent_mem_kib_before"] = agent_mem(nodes)
        bench_propagation(res, nodes, edits, 0.1)
        log("(c) p50 {:.1f} ms, p90 {:.1f} ms, p99 {:.1f} ms, max {:.1f} ms".format(
            *(res["propagation"]["both_s"][k] * 1000 for k in ("p50", "p90", "p99", "max"))))
        if bursts:
            with Section(res, "burst", "(d) 1,000-file burst on 3 nodes"):
                res["burst"]["cluster_files_before"] = count_files(nodes[0].dags)
                bench_burst(res, nodes, bursts, burst_files)
                res["burst"]["agent_mem_kib_after"] = agent_mem(nodes)
    finally:
        for n in nodes:
            n.stop()


def bench_idle(res: dict[str, Any], work: Path, corpus_dir: Path, window: float,
               settle: float, long_window: float) -> None:
    nodes, ref, info = start_cluster(work / "idle", corpus_dir, timeout=1800)
    try:
        out = res["idle"]
        out["cluster_initial"] = info
        log(f"(e) initial sync settled; waiting {settle:.0f} s before measuring")
        time.sleep(settle)
        out["window_s"] = window
        out["cpu_pct"] = idle_cpu(nodes, window)
        out["mem_kib"] = agent_mem(nodes)
        if long_window > 0:
            log(f"(e) CPU over {long_window:.0f} s (one full scan_interval)")
            out["long_window_s"] = long_window
            out["cpu_pct_long"] = idle_cpu(nodes, long_window)
            out["mem_kib_after_long"] = agent_mem(nodes)
        diffs = {n.name: compare(ref, snapshot(n.dags)) for n in nodes[1:]}
        if not all(identical(d) for d in diffs.values()):
            raise BenchError(f"(e) trees differ after the idle window: {diffs}")
        log("(e) idle CPU % " + ", ".join(f"{k} {v:.2f}" for k, v in out["cpu_pct"].items())
            + "; RSS MiB " + ", ".join(f"{k} {v['VmRSS'] / 1024:.1f}"
                                       for k, v in out["mem_kib"].items()))
    finally:
        for n in nodes:
            n.stop()


# ---------------------------------------------------------------------------- meta


def source_digest(root: Path = REPO) -> str:
    h = hashlib.sha256()
    for f in sorted((root / "dagsync").glob("*.py")):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def versions() -> dict[str, Any]:
    from importlib import metadata

    def first(cmd: list[str]) -> str:
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            return (r.stdout + r.stderr).strip().splitlines()[0]
        except Exception as exc:
            return f"?? {exc}"

    v: dict[str, Any] = {
        "dagsync": dagsync.__version__,
        "python": platform.python_version(),
        "agent_python": dict(AGENT_PYTHON_INFO),
        "rsync": first(["rsync", "--version"]),
        "openssh": first(["ssh", "-V"]),
    }
    for pkg in ("asyncssh", "cryptography", "watchdog", "xxhash", "PyYAML", "pathspec"):
        try:
            v[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            v[pkg] = None
    try:
        pk = run_cmd(["dpkg-query", "-W", "-f", "${Package} ${Version}\\n", "rsync",
                      "openssh-server", "openssh-client"]).stdout
        v["debian_packages"] = pk.strip().splitlines()
    except Exception:
        pass
    assert DAGSYNC_SRC is not None
    v["dagsync_source_sha256"] = source_digest(DAGSYNC_SRC)  # exactly what was measured
    v["dagsync_snapshot"] = os.fspath(DAGSYNC_SRC)
    v["dagsync_snapshot_from"] = dict(SNAPSHOT_INFO)
    git = ["git", "-C", os.fspath(REPO)]
    with contextlib.suppress(Exception):
        v["git_commit"] = run_cmd([*git, "rev-parse", "--short", "HEAD"]).stdout.strip()
        dirty = run_cmd([*git, "status", "--porcelain", "--", "dagsync"]).stdout.strip()
        v["dagsync_worktree"] = "modified" if dirty else "clean"
    return v


def host_info(work: Path) -> dict[str, Any]:
    cpu = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    osr = "?"
    with contextlib.suppress(OSError), open("/etc/os-release") as f:
        for line in f:
            if line.startswith("PRETTY_NAME="):
                osr = line.split("=", 1)[1].strip().strip('"')
    fs = "?"
    with contextlib.suppress(Exception):
        fs = run_cmd(["df", "-T", os.fspath(work)]).stdout.splitlines()[1].split()[1]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gib": round(mem, 1),
            "kernel": platform.release(), "os": osr, "workdir": os.fspath(work),
            "workdir_fs": fs, "loop_device": dict(FRESH_FS)}


# ---------------------------------------------------------------------------- report


def f_s(x: float | None, unit: str = "s") -> str:
    if x is None:
        return ""
    if unit == "ms":
        return f"{x * 1000:.1f} ms"
    return f"{x:.3f} s" if x < 10 else f"{x:.2f} s"


def row_stats(name: str, what: str, s: dict[str, Any] | None, note: str = "",
              unit: str = "s") -> str:
    if not s or not s.get("n"):
        return f"| {name} | {what} | | | | 0 | not measured |"
    return (f"| {name} | {what} | {f_s(s['min'], unit)} | {f_s(s['median'], unit)} | "
            f"{f_s(s['max'], unit)} | {s['n']} | {note} |")


def verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("**PASS**" if ok else "**MISS**")


def render(res: dict[str, Any], json_rel: str, plots: dict[str, str] | None = None) -> str:
    m = res["meta"]
    h, v = m["host"], m["versions"]
    L: list[str] = []
    w = L.append
    w("# dagsync benchmarks")
    w("")
    link = json_rel if os.path.isabs(json_rel) else f"../{json_rel}"
    w("Generated by `bench/run.py` from "
      f"[`{json_rel}`]({link}) — do not edit by hand; re-run instead.")
    w("")
    w("Re-run everything, dagsync beside rsync, unison, Syncthing and lsyncd (from the "
      "repository root, as root; a full run takes ~25-35 min on this 2-core machine). "
      "`bench/install_anchors.sh` (apt-get: rsync, openssh-server, unison, syncthing, "
      "lsyncd) runs by itself when a tool is missing:")
    w("")
    w("```bash")
    w("python3 -m venv .venv && .venv/bin/pip install -e '.[bench]'   # matplotlib for plots")
    w(".venv/bin/python bench/run.py            # --quick: a few samples of everything")
    w("```")
    w("")
    w(f"This document came from `{m['command']}`. `--no-anchors` measures dagsync and rsync "
      "only; `--only f` re-measures just the bytes on the wire; `--render-only JSON` "
      "re-renders from a results file.")
    w("")
    if m.get("checkout_changed_during_run"):
        w(f"> The checkout changed while this run was in progress "
          f"({m['checkout_changed_during_run']}); every figure is from the snapshot taken at "
          "the start of the run.")
        w("")
    if m.get("nice"):
        w(f"> Run at nice {m['nice']} (harness, agents, sshd and rsync alike) because the "
          "machine was shared with other work; see the per-section load lines.")
        w("")
    if m.get("quick"):
        w("> **QUICK RUN** (`--quick`): one or a few samples per figure and possibly small "
          "corpora; figures are indicative only and not the published benchmark.")
        w("")
    w(f"* Date: {m['date']} (total wall time {m.get('total_wall_s', 0):.0f} s)")
    w(f"* Machine: {h['cpu']}, {h['cores']} cores, {h['mem_gib']} GiB RAM, {h['os']}, "
      f"kernel {h['kernel']}; work dir `{h['workdir']}` on {h['workdir_fs']}"
      + (f", a fresh {m['args']['fresh_fs']} GiB loop-mounted file system made for this run "
         "(ext4 slows creates for minutes after mass deletes: a shared, churned disk would "
         "measure the previous run's cleanup)"
         + ("; its loop device does direct I/O to the image, so a flush costs about what it "
            "costs on the machine's own disk, not a second page cache's writeback"
            if h.get("loop_device", {}).get("direct_io") == "on" else "")
         if m.get("args", {}).get("fresh_fs") else "")
      + " (every node's folder on the same file system, warm page cache, all traffic over "
      "127.0.0.1).")
    snap = v.get("dagsync_snapshot_from") or {}
    if snap.get("source") == "git HEAD":
        what = f"dagsync/ as committed at `{snap['commit']}`"
    else:
        what = (f"dagsync/ from the work tree (HEAD `{v.get('git_commit', '?')}`, dagsync/ "
                f"{v.get('dagsync_worktree', '?')})")
    w(f"* dagsync {v['dagsync']}: {what}, copied when the run started (sha256 of "
      f"dagsync/*.py `{v.get('dagsync_source_sha256', '?')}`)"
      + (", byte-compiled as an installed package is" if snap.get("byte_compiled") else "")
      + f" and run by every agent via PYTHONPATH; asyncssh {v.get('asyncssh')}, "
      f"cryptography {v.get('cryptography')}, watchdog {v.get('watchdog')}, "
      f"xxhash {v.get('xxhash')}")
    ap = v.get("agent_python") or {}
    if ap.get("agents") and ap["agents"] != ap.get("harness"):
        why = (": the interpreter the Debian package runs dagsync on "
               "(`packaging/build-deb.sh`)" if ap.get("choice") == "packaged" else "")
        w(f"* Agents and one-shots run on {ap['agents']}{why}, with the harness's versions "
          f"of dagsync's dependencies. The harness runs on {ap['harness']}; the in-process "
          "rescan figure (b) is taken there (`bench/agent_python.py`)")
    else:
        w(f"* Agents, one-shots and the harness run on Python {v['python']}"
          + (f" ({ap['fallback']})" if ap.get("fallback") else ""))
    w(f"* rsync: `{v['rsync']}`; OpenSSH: `{v['openssh']}`")
    for tool, ver in (v.get("anchors") or {}).items():
        w(f"* {tool}: `{ver}`")
    for key, c in m["corpora"].items():
        w(f"* Corpus {key}: `gen_corpus.py --files {c['params']['files']}` (seed "
          f"{c['params']['seed']}): {c['file_count']:,} files, {c['dir_count']} dirs, "
          f"{c['total_bytes'] / 1e6:.1f} MB, digest `{c['digest'][:16]}`")
    w("")
    gh = res.get("goals_h2h") or {}
    if gh:
        w("## Goals: dagsync against the other tools (issue 7)")
        w("")
        w("Ratios from this run (dagsync and the tool it is compared with measured in the "
          "same invocation).")
        w("")
        w("| Goal | Target | Measured | Verdict |")
        w("|---|---|---|---|")
        for item in gh.values():
            w(f"| {item['goal']} | {item['target']} | {item['measured']} | "
              f"{verdict(item['ok'])} |")
        w("")
    # goals
    g = res.get("goals", {})
    w("## Goals: dagsync alone (issues 2 and 3)")
    w("")
    w("| Goal | Target | Measured | Verdict |")
    w("|---|---|---|---|")
    for item in g.values():
        w(f"| {item['goal']} | {item['target']} | {item['measured']} | "
          f"{verdict(item['ok'])} |")
    w("")
    w("Every timed initial sync starts after `sync` (no dirty pages pending) into a fresh, "
      "empty target; min / median / max over n runs. Load from other work on this machine "
      "is recorded per section (machine-wide CPU busy % while it ran, 100 % = both cores).")
    w("")

    L.extend(h2h.render(res, plots or {}))
    if res.get("meta", {}).get("versions", {}).get("anchors"):
        w("## dagsync in detail")
        w("")
        w("The dagsync side of the figures above, with what is inside them. Where an "
          "initial sync spends its time, and what is left to gain: "
          "[initial-sync.md](initial-sync.md); where an idle agent's memory goes: "
          "[memory.md](memory.md).")
        w("")
    ini = res.get("initial")
    if ini and "rsync_ssh" in ini:
        w(f"## (a) Initial sync to an empty peer — {ini['files']:,} files")
        w("")
        w("| Tool | What is timed | Min | Median | Max | n | Notes |")
        w("|---|---|---|---|---|---|---|")
        w(row_stats("rsync -a --delete over ssh", "start → exit (empty target)",
                    ini["rsync_ssh"]["initial_s"],
                    "private sshd on 127.0.0.1, remote user root, ~/.bashrc skipped"))
        fs = ini.get("rsync_ssh_fsync")
        if fs:
            w(row_stats("rsync -a --delete --fsync over ssh", "start → exit (empty target)",
                        fs["initial_s"], "reference, not the goal's baseline: rsync with "
                        "each file fsynced, as durable as dagsync's writes"))
        ag = ini["dagsync_agent"]
        w(row_stats("dagsync agent → agent", "start of B's agent → B byte-identical to A",
                    ag["initial_s"],
                    f"ratio to rsync: median {ag['ratio_vs_rsync']['median']:.2f}x, min "
                    f"{ag['ratio_vs_rsync']['min']:.2f}x; includes B's interpreter start, "
                    "connect, index exchange, transfer, durable writes"))
        one = ini["dagsync_oneshot"]
        w(row_stats("dagsync one-shot `sync` → agent",
                    "start of `dagsync sync` on A (no agent on A) → B identical",
                    one["initial_s"],
                    f"ratio to rsync: median {one['ratio_vs_rsync']['median']:.2f}x, min "
                    f"{one['ratio_vs_rsync']['min']:.2f}x; process exit median "
                    f"{f_s(one['process_exit_s']['median'])}; A's index kept from its agent"))
        w(row_stats("rsync -a --delete over ssh", "no-change resync",
                    ini["rsync_ssh"]["nochange_s"], "reference"))
        rt = ini.get("ssh_roundtrip_s")
        if rt:
            w(row_stats("ssh", "connect + auth + `true`", rt, "per-command cost rsync pays"))
        w("")
        w("Runs are interleaved: unison and Syncthing, then rsync and the agent taking turns "
          "to go first (rsync in odd runs, the agent in even ones: in the runs of 2026-12-07 "
          "the agent was slower when it went second, for a reason not found; "
          "docs/initial-sync.md), then the one-shot "
          "and last `rsync --fsync`; then again. "
          f"A's agent indexed the "
          f"{ini['files']:,} files in {f_s(ini['a_first_index_s'])} before the first run "
          "(not part of any figure). Agent → agent timing polls B's file count every 20 ms "
          "(each directory is listed until it holds its expected number of files, so the "
          "poll takes little of the CPU the two agents share with it) and compares the "
          "whole tree (paths, sizes, SHA-256) when the count matches; the figure is the "
          "poll that saw the verified tree. Syncthing is timed the same way. rsync command: "
          f"`{ini['rsync_ssh']['command']}`.")
        w("")
        if ag.get("cpu_s", {}).get("n"):
            w("CPU time (user + system, seconds) of everything each tool ran, both ends. On "
              "this VM it is inflated by other load too (2 vCPUs shared with other work), so "
              "compare tools within a run, not across runs:")
            w("")
            w("| Tool | Processes counted | Min | Median | Max | n |")
            w("|---|---|---|---|---|---|")
            for label, key, procs in (
                ("rsync over ssh", "rsync_ssh", "rsync client + ssh + sshd session + "
                 "remote rsync"),
                ("dagsync agent → agent", "dagsync_agent", "agent A (during the run) + agent B "
                 "(from its start)"),
                ("dagsync one-shot", "dagsync_oneshot", "`dagsync sync` process + agent B"),
            ):
                c = ini[key].get("cpu_s") or {}
                if c.get("n"):
                    w(f"| {label} | {procs} | {c['min']:.2f} | {c['median']:.2f} | "
                      f"{c['max']:.2f} | {c['n']} |")
            w("")
        mk = ag.get("b_ready_s") or {}
        ff = ag.get("first_file_s") or {}
        if mk.get("n") and ff.get("n"):
            w(f"Inside the agent → agent figure (medians): B's agent had its control socket "
              f"(interpreter start, imports, empty first scan, server up) at "
              f"{f_s(mk['median'])}; the first file appeared on B at {f_s(ff['median'])}.")
            rec = ag.get("b_recorded_s") or {}
            if rec.get("n"):
                w(f"B recorded the last files in its index at {f_s(rec['median'])} (median; "
                  f"{f_s(rec['min'])}-{f_s(rec['max'])}), from its log: its bookkeeping "
                  "after the last file arrived.")
            w("")
        per, io = [], []
        for label, key in (("rsync", "rsync_ssh"), ("agent → agent", "dagsync_agent"),
                           ("one-shot", "dagsync_oneshot")):
            runs_cpu = ini[key].get("cpu_per_run") or []
            if runs_cpu:
                per.append(f"{label} " + " / ".join(f"{c['others_pct']:.0f}" for c in runs_cpu))
            if runs_cpu and all(c.get("io_pressure_pct") is not None for c in runs_cpu):
                io.append(f"{label} " + " / ".join(f"{c['io_pressure_pct']:.0f}"
                                                    for c in runs_cpu))
        if per:
            w("CPU used by other work on the machine during each timed run (% of 2 cores): "
              + "; ".join(per) + ".")
            if io:
                w("Share of each timed run during which some task waited for I/O (PSI, %): "
                  + "; ".join(io) + ".")
            w("")
        w(_section_line(ini))
        w("")

    rsc = res.get("rescan")
    if rsc and "scan_all_s" in rsc:
        w(f"## (b) Rescan of {rsc['files']:,} unchanged files")
        w("")
        w("| What | Min | Median | Max | n | Notes |")
        w("|---|---|---|---|---|---|")
        for label, key, note in (
            ("`await Node.scan_all()` (what the agent's periodic scan runs)", "scan_all_s",
             "second and later scans; index warm in memory"),
            ("`scanner.scan_folder(...)` alone (walk + stat compare)", "scan_folder_s",
             "against the engine's in-memory records"),
            ("rsync -a --delete over ssh, no change (reference)", "rsync_ssh_nochange_s",
             "includes one ssh connection"),
        ):
            s = rsc[key]
            w(f"| {label} | {f_s(s['min'])} | {f_s(s['median'])} | {f_s(s['max'])} | "
              f"{s['n']} | {note} |")
        w("")
        w(f"First scan (hashing every file into a new index): {f_s(rsc['first_scan_s'])}.")
        w("")
        w(_section_line(rsc))
        w("")

    pr = res.get("propagation")
    anc = res.get("anchors", {})
    if pr and "both_s" in pr:
        b = pr["both_s"]
        w("## (c) Edit propagation latency, 3 agents")
        w("")
        ci = pr["cluster_initial"]
        w(f"Full mesh A, B, C; default `settle` (20 ms), `scan_interval: 60s`; "
          f"{ci['files']:,}-file corpus in the folder. {pr['edits']} in-place rewrites of one "
          f"4,096-byte DAG file on A, each {pr['gap_s'] * 1000:.0f} ms after the previous "
          "one started (or as soon as it converged, if later: "
          f"{pr['edits_started_late']} edits). Latency = from just before the write on A "
          "until B **and** C both hold the new content (each polled every 1 ms).")
        w("")
        w("| Tool | Setting | p50 | p90 | p99 | max | n | Source |")
        w("|---|---|---|---|---|---|---|---|")
        w(f"| dagsync (A → B and C) | defaults | {f_s(b['p50'], 'ms')} | {f_s(b['p90'], 'ms')} "
          f"| {f_s(b['p99'], 'ms')} | {f_s(b['max'], 'ms')} | {b['n']} | this run |")
        w(f"| dagsync (A → B only) | | {f_s(pr['b_s']['p50'], 'ms')} | | "
          f"{f_s(pr['b_s']['p99'], 'ms')} | {f_s(pr['b_s']['max'], 'ms')} | {b['n']} | this run |")
        src = (f"anchors' run on this machine, {anc.get('syncthing_date', '?')[:10]} (not this "
               "run)")
        for key, label in (("fsWatcherDelayS=10 (default)", "fsWatcherDelayS=10 (default)"),
                           ("fsWatcherDelayS=1", "fsWatcherDelayS=1")):
            s = (anc.get("syncthing_latency_s") or {}).get(key)
            if s:
                w(f"| Syncthing 1.19 (A → B) | {label} | {f_s(s['median'], 'ms')} (median) | "
                  f"| | {f_s(s['max'], 'ms')} | {s['n']} | {src} |")
        src = f"anchors' run on this machine, {anc.get('lsyncd_date', '?')[:10]} (not this run)"
        for key in ("default delay", "delay=1", "delay=0"):
            s = (anc.get("lsyncd_latency_s") or {}).get(key)
            if s:
                w(f"| lsyncd 2.2.3 → rsync/ssh (A → B) | {key} | {f_s(s['median'], 'ms')} "
                  f"(median) | | | {f_s(s['max'], 'ms')} | {s['n']} | {src} |")
        w("")
        w("The anchors measured one peer (A → B), 10 ms polling, 1-2 s between edits; their "
          "figures are medians of few trials, so only p50-vs-median is comparable.")
        w("")
        w(f"3-node initial sync before the edits: A indexed {ci['files']:,} files in "
          f"{f_s(ci['a_index_s'])}; B and C (empty) were complete "
          f"{f_s(ci['b_and_c_complete_s'])} after their agents started"
          + (f" ({ci['agents_cpu_s']:.1f} CPU s over the three agents)."
             if ci.get("agents_cpu_s") else "."))
        w("")
        w(_section_line(pr))
        w("")

    bu = res.get("burst")
    if bu and "converged_s" in bu:
        w("## (d) 1,000-file burst on A, converging on 3 nodes")
        w("")
        w("| What | Min | Median | Max | n | Notes |")
        w("|---|---|---|---|---|---|")
        s = bu["converged_s"]
        w(f"| {bu['files_per_burst']:,} new 4 KB files written on A → on B and C | "
          f"{f_s(s['min'])} | {f_s(s['median'])} | {f_s(s['max'])} | {s['n']} | from the "
          "first write until B and C hold every file (count polled every 10 ms, then content "
          f"checked); writing them took median {f_s(bu['write_s']['median'])} |")
        w("")
        lag = bu.get("after_last_write_s") or stats(
            t - x for t, x in zip(s["samples"], bu["write_s"]["samples"], strict=True))
        w(f"The writer (this harness, Python, one file after another) took "
          f"{f_s(bu['write_s']['min'])}-{f_s(bu['write_s']['max'])} per burst on this loaded "
          f"machine; B and C were complete {f_s(lag['min'])}-{f_s(lag['max'])} after the last "
          "file was written (median " f"{f_s(lag['median'])}).")
        w("")
        if bu.get("agents_cpu_s", {}).get("n"):
            w(f"CPU time of the three agents per burst (until B and C were complete): median "
              f"{bu['agents_cpu_s']['median']:.2f} s.")
            w("")
        w(f"Each burst goes into a new directory of the running 3-node cluster of (c) "
          f"({bu['cluster_files_before']:,} files before the first burst); after the bursts "
          "all three trees were verified identical.")
        w("")
        w(_section_line(bu))
        w("")

    idle = res.get("idle")
    if idle and "cpu_pct" in idle:
        ci = idle["cluster_initial"]
        w(f"## (e) Idle agents holding {ci['files']:,} files")
        w("")
        w(f"3 agents (full mesh, `scan_interval: 60s`); A indexed the corpus in "
          f"{f_s(ci['a_index_s'])}, B and C (empty) were complete "
          f"{f_s(ci['b_and_c_complete_s'])} after their agents started"
          + (f" ({ci['agents_cpu_s']:.1f} CPU s over the three agents)"
             if ci.get("agents_cpu_s") else "") + ". Then "
          f"{idle['settle_s']:.0f} s of quiet, then CPU over {idle['window_s']:.0f} s from "
          "`/proc/<pid>/stat` (utime+stime, % of one core) and VmRSS / VmHWM from "
          "`/proc/<pid>/status`.")
        w("")
        lw = idle.get("long_window_s")
        w(f"| Process | CPU % ({idle['window_s']:.0f} s) | CPU % ({lw or 0:.0f} s) | RSS | "
          "peak RSS (VmHWM) | Source |")
        w("|---|---|---|---|---|---|")
        for name in sorted(idle["cpu_pct"]):
            mem = idle["mem_kib"][name]
            long_cpu = (f"{idle['cpu_pct_long'][name]:.2f}" if idle.get("cpu_pct_long")
                        else "")
            w(f"| dagsync agent {name.upper()} | {idle['cpu_pct'][name]:.2f} | {long_cpu} | "
              f"{mem['VmRSS'] / 1024:.1f} MiB | {mem['VmHWM'] / 1024:.1f} MiB | this run |")
        stm = anc.get("syncthing_memory") or {}
        src = (f"anchors' run on this machine, {(anc.get('syncthing_date') or '?')[:10]}, "
               "5,020 files (not this run)")
        for nm in ("A", "B"):
            if nm in stm:
                w(f"| Syncthing 1.19 node {nm} (main process) | | | "
                  f"{stm[nm]['idle_rss_kib_median'] / 1024:.1f} MiB | "
                  f"{stm[nm]['peak_rss_kib_after_initial'] / 1024:.1f} MiB | {src}; + "
                  f"{stm[nm]['monitor_rss_kib'] / 1024:.1f} MiB monitor process |")
        lsm = (anc.get("lsyncd_memory") or {}).get("default delay")
        if lsm:
            w(f"| lsyncd 2.2.3 | | | {lsm['idle_rss_kib_median'] / 1024:.1f} MiB | | "
              f"anchors' run (not this run); excludes its rsync/ssh children |")
        w("")
        mem5 = (res.get("propagation") or {}).get("agent_mem_kib_before")
        if mem5:
            w(f"Same agents with the 5,020-file corpus (cluster of (c), {IDLE_TRIM_WAIT_S} s after "
              "their initial sync, past the idle trim, before the edits): "
              + ", ".join(f"{k.upper()} {v['VmRSS'] / 1024:.1f} MiB" for k, v in
                          sorted(mem5.items())) + ".")
            w("")
        w(_section_line(idle))
        w("")

    scale_lines = h2h.render_scale(res)
    if scale_lines:
        L.extend(scale_lines)
        w("")
    hist = history_rows(json_rel)
    if len(hist) > 1:
        w("## All runs on this machine (bench/results/)")
        w("")
        w("Same harness, same corpora; the spread between runs is mostly the machine's other "
          "load (shared CPU and disk), so compare a change against several runs.")
        w("")
        w("| Run (UTC) | dagsync measured | (a) rsync / agent, median | ratio | (b) rescan "
          "| (c) p50 / p99 | (d) burst | (e) idle CPU / RSS max | others' CPU in (a) |")
        w("|---|---|---|---|---|---|---|---|---|")
        for row in hist:
            w(row)
        w("")
    prof = res.get("profile_notes")
    if prof:
        w("## Where the time goes (profiles)")
        w("")
        for line in prof:
            w(line)
        w("")
    w("## Method notes and caveats")
    w("")
    for line in NOTES:
        w(line)
    w("")
    return "\n".join(L)


def history_rows(current_rel: str) -> list[str]:
    rows = []
    for f in sorted(RESULTS_DIR.glob("*.json")):
        if f.name.endswith("-FAILED.json"):
            continue
        try:
            d = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        m, v = d.get("meta", {}), d.get("meta", {}).get("versions", {})
        snap = v.get("dagsync_snapshot_from") or {}
        ver = (f"`{snap['commit'][:7]}`" if snap.get("commit")
               else f"`{v.get('git_commit', '?')}` ({v.get('dagsync_worktree', '?')} tree)")
        ini, rsc = d.get("initial") or {}, d.get("rescan") or {}
        pr, bu, idle = d.get("propagation") or {}, d.get("burst") or {}, d.get("idle") or {}

        def med(x: dict[str, Any] | None) -> str:
            return f"{x['median']:.2f} s" if x and x.get("n") else "—"

        a = "—"
        ratio = "—"
        if ini.get("dagsync_agent"):
            a = f"{med(ini['rsync_ssh']['initial_s'])} / {med(ini['dagsync_agent']['initial_s'])}"
            ratio = f"{ini['dagsync_agent']['ratio_vs_rsync']['median']:.2f}x"
        c = (f"{pr['both_s']['p50'] * 1000:.0f} / {pr['both_s']['p99'] * 1000:.0f} ms"
             if pr.get("both_s") else "—")
        e = "—"
        if idle.get("cpu_pct"):
            e = (f"{max(idle['cpu_pct'].values()):.1f} % / "
                 f"{max(x['VmRSS'] for x in idle['mem_kib'].values()) / 1024:.0f} MiB")
        others = (f"{ini['_section']['others_cpu_pct']:.0f} %"
                  if ini.get("_section", {}).get("others_cpu_pct") is not None else "—")
        if m.get("note"):
            ver += f"; {m['note']}"
        name = f.stem + (" (this doc)" if os.fspath(f.relative_to(REPO)) == current_rel else "")
        if m.get("quick"):
            name += " quick"
        rows.append(f"| {name} | {ver} | {a} | {ratio} | {med(rsc.get('scan_all_s'))} | {c} | "
                    f"{med(bu.get('converged_s'))} | {e} | {others} |")
    return rows


def _section_line(sec: dict[str, Any]) -> str:
    s = sec.get("_section")
    if not s:
        return ""
    extra = ""
    if s.get("others_cpu_pct") is not None:
        extra = (f" (this benchmark {s['bench_cpu_pct']} %, other work on the machine "
                 f"{s['others_cpu_pct']} %)")
    psi = ""
    if s.get("cpu_pressure_pct") is not None:
        psi = f"; some task waiting for a CPU {s['cpu_pressure_pct']} % of the time"
        if s.get("io_pressure_pct") is not None:
            psi += f", for I/O {s['io_pressure_pct']} % (PSI)"
        else:
            psi += " (PSI)"
    return (f"_Section wall time {s['wall_s']} s; machine-wide CPU busy while it ran "
            f"{s['machine_cpu_busy_pct']} % of 2 cores{extra}{psi}; load average "
            f"{s['loadavg_start'][0]} → {s['loadavg_end'][0]}._")


NOTES = [
    "* **Same machine, one run**: every figure in this document (dagsync, rsync, unison, "
    "Syncthing, lsyncd) comes from the same invocation of `bench/run.py`, on the same corpora "
    "(`bench/gen_corpus.py`, a copy of the anchors' generator: same seed, same bytes). The "
    "tool drivers are `bench/anchors.py` (unison, Syncthing, lsyncd; adapted from "
    "../shared/bench-anchors) and `bench/wire.py` (the counting proxy).",
    "* **rsync over ssh fairness**: the private sshd (generated host and user keys in the work "
    "dir, `UsePAM no`, remote user root, OpenSSH's default key exchange) has `SetEnv SHLVL=1`. "
    "bash only sources `~/.bashrc` for an sshd-started command when `SHLVL` < 2, so root's "
    "`pyenv init` does not run per ssh command; the harness checks this at start. The anchors "
    "used a dedicated `/bin/sh` user instead; the effect is the same.",
    "* **dagsync writes durably** (in chunks of up to 512 files: temp files in a private "
    "directory, a new directory written whole as a staged copy there, one `syncfs`, each file "
    "or staged directory put into place, its record written only after the next `syncfs`); "
    "`rsync -a` does not fsync, so that difference is part of the initial-sync figures. The "
    "row `rsync -a "
    "--fsync` in (a) is rsync made durable (it fsyncs each file it writes): a reference for "
    "what durability costs, not the goal's baseline. `syncfs` also flushes whatever else is "
    "dirty on the same file system.",
    "* **Shared machine**: other engineers' test suites ran on the same 2 cores during the "
    "run (see the per-section CPU busy %). Treat min as the cost and the spread as noise.",
    "* Agents run with the default log level (info) writing to a file; `python -m dagsync "
    "agent` started with the interpreter that runs the harness.",
    "* Percentiles are nearest-rank over all samples.",
    "* Idle CPU: every agent rescans its folder every `scan_interval` (60 s); whether that "
    "rescan falls inside the 10 s window decides most of the 10 s figure, so the 60 s window "
    "(one full interval) is shown beside it.",
    "* Numbers move a lot between runs on this shared VM (see \"All runs\"); CPU seconds are "
    "inflated by contention too (2 vCPUs). Compare dagsync with rsync within one run.",
]


def goals(res: dict[str, Any]) -> dict[str, Any]:
    g: dict[str, Any] = {}
    ini = res.get("initial") or {}
    if "dagsync_agent" in ini:
        # the goal holds at every size measured (issue 7: 5,000 and 20,000 files)
        ratios = [(x["files"], x["dagsync_agent"]["ratio_vs_rsync"])
                  for x in (ini, res.get("initial_big") or {})
                  if "ratio_vs_rsync" in x.get("dagsync_agent", {})]
        r1 = ini["dagsync_oneshot"]["ratio_vs_rsync"]
        g["initial"] = {"goal": "(a) initial sync vs rsync over ssh (agent → agent)",
                        "target": "≤ 1.0x (median / median), at each size",
                        "measured": "; ".join(
                            f"{files:,} files {r['median']:.2f}x median ({r['min']:.2f}x "
                            f"min/min)" for files, r in ratios)
                        + f"; one-shot {r1['median']:.2f}x",
                        "ok": all(r["median"] <= GOAL_INITIAL_RATIO for _, r in ratios)}
    rsc = res.get("rescan") or {}
    if "scan_all_s" in rsc:
        s = rsc["scan_all_s"]
        g["rescan"] = {"goal": f"(b) rescan {rsc['files']:,} unchanged files (scan_all)",
                       "target": f"≤ {GOAL_RESCAN_S} s (median)",
                       "measured": f"{s['median']:.3f} s median ({s['min']:.3f}-{s['max']:.3f});"
                                   f" scan_folder alone {rsc['scan_folder_s']['median']:.3f} s",
                       "ok": s["median"] <= GOAL_RESCAN_S}
    pr = res.get("propagation") or {}
    if "both_s" in pr:
        b = pr["both_s"]
        g["p50"] = {"goal": "(c) edit propagation p50 (A → B and C)",
                    "target": f"≤ {GOAL_P50_S * 1000:.0f} ms",
                    "measured": f"{b['p50'] * 1000:.1f} ms", "ok": b["p50"] <= GOAL_P50_S}
        g["p99"] = {"goal": "(c) edit propagation p99", "target": f"≤ {GOAL_P99_S * 1000:.0f} ms",
                    "measured": f"{b['p99'] * 1000:.1f} ms (max {b['max'] * 1000:.1f} ms)",
                    "ok": b["p99"] <= GOAL_P99_S}
    bu = res.get("burst") or {}
    if "converged_s" in bu:
        s = bu["converged_s"]
        g["burst"] = {"goal": "(d) 1,000-file burst converged on 3 nodes",
                      "target": f"≤ {GOAL_BURST_S:.0f} s (median)",
                      "measured": f"{s['median']:.2f} s median (max {s['max']:.2f} s)",
                      "ok": s["median"] <= GOAL_BURST_S}
    idle = res.get("idle") or {}
    if "cpu_pct" in idle:
        cpu = max(idle["cpu_pct"].values())
        rss = max(v["VmRSS"] for v in idle["mem_kib"].values()) * 1024
        g["idle_cpu"] = {"goal": f"(e) idle CPU, {idle['cluster_initial']['files']:,} files",
                         "target": f"near 0 (≤ {GOAL_IDLE_CPU_PCT:.0f} % of a core, each agent)",
                         "measured": f"max {cpu:.2f} % over {idle['window_s']:.0f} s"
                                     + (f"; max {max(idle['cpu_pct_long'].values()):.2f} % over "
                                        f"{idle['long_window_s']:.0f} s"
                                        if idle.get("cpu_pct_long") else ""),
                         "ok": cpu <= GOAL_IDLE_CPU_PCT}
        g["idle_rss"] = {"goal": f"(e) idle RSS, {idle['cluster_initial']['files']:,} files",
                         "target": "≤ 60 MB (60,000,000 bytes; each agent)",
                         "measured": f"max {rss / 1e6:.1f} MB ({rss / 2**20:.1f} MiB)",
                         "ok": rss <= GOAL_RSS_BYTES}
    return g


def write_outputs(res: dict[str, Any], path: Path, doc: Path | None,
                  img_dir: Path = IMG_DIR) -> None:
    """The results JSON at `path`; with `doc`, the Markdown there and its PNG plots in
    img_dir."""
    res["goals"] = goals(res)
    res["goals_h2h"] = h2h.goals(res)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(res, indent=1, sort_keys=False) + "\n")
    log(f"results: {path}")
    if doc is not None:
        doc.parent.mkdir(parents=True, exist_ok=True)
        plots = h2h.plot_links(plots_mod.make(res, img_dir), doc)
        if not plots:
            log("no plots: matplotlib is not installed (pip install -e '.[bench]')")
        try:
            rel = os.fspath(path.relative_to(REPO))
        except ValueError:
            rel = os.fspath(path)
        doc.write_text(render(res, rel, plots))
        log(f"doc: {doc} (plots: {', '.join(os.fspath(p) for p in plots.values()) or 'none'})")


# ---------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--files", type=int, default=5000,
                    help="DAG files of the corpus for (a), (c), (d) (default 5000)")
    ap.add_argument("--big-files", type=int, default=20000,
                    help="DAG files of the corpus for (b) and (e) (default 20000)")
    ap.add_argument("--runs", type=int, default=5, help="bursts (default 5)")
    ap.add_argument("--initial-runs", type=int, default=8,
                    help="initial-sync runs at --files (default 8: even, so rsync and the "
                         "agent each go first in half of them)")
    ap.add_argument("--rescan-runs", type=int, default=7)
    ap.add_argument("--edits", type=int, default=200)
    ap.add_argument("--idle-window", type=float, default=10.0)
    ap.add_argument("--idle-long", type=float, default=60.0,
                    help="second idle CPU window covering one scan_interval (0: skip)")
    ap.add_argument("--nice", type=int, default=0,
                    help="run the harness and everything it starts at this nice level "
                         "(e.g. -10 on a machine shared with other work; default 0)")
    ap.add_argument("--big-runs", type=int, default=8,
                    help="initial-sync runs at --big-files (default 8, even as --initial-runs; "
                         "at 20,020 files one run's ratio spreads by ±0.15)")
    ap.add_argument("--slow-trials", type=int, default=5,
                    help="anchor edits at their default delays (Syncthing 10 s, lsyncd 15 s; "
                         "default 5)")
    ap.add_argument("--fast-trials", type=int, default=20,
                    help="anchor edits at their fastest settings (default 20)")
    ap.add_argument("--wire-reps", type=int, default=3, help="(f) edits per tool (default 3)")
    ap.add_argument("--no-anchors", action="store_true",
                    help="dagsync and rsync only (no unison, Syncthing, lsyncd)")
    ap.add_argument("--quick", action="store_true",
                    help="fewer samples: 1 run, 30 edits, 3 rescans, 1 burst, 1 + 3 anchor "
                         "edits, 1 wire edit; the doc says it is a quick run")
    ap.add_argument("--only", default="a,b,c,d,e,f,s",
                    help="sections to run, comma-separated (default all): a initial sync, "
                         "b rescan, c latency, d burst (c and d share clusters), e idle, "
                         "f bytes on the wire, s scale on paper (simulation)")
    ap.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                    help="where the results JSON goes (default bench/results)")
    ap.add_argument("--doc", type=Path, default=DOC,
                    help="the Markdown written (default docs/benchmarks.md); plots go to "
                         "--img-dir")
    ap.add_argument("--img-dir", type=Path, default=IMG_DIR,
                    help="PNG plots (default docs/img)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/dagsync-bench"))
    ap.add_argument("--source", choices=("head", "worktree"), default="head",
                    help="measure dagsync/ as committed at HEAD (default) or as it is in the "
                         "work tree")
    ap.add_argument("--fresh-fs", type=int, default=32 if os.geteuid() == 0 else 0,
                    metavar="GIB",
                    help="run everything on a new ext4 file system of this size (a sparse "
                         "loop image beside --workdir, removed at exit; default 32 as root, "
                         "0 = use --workdir as it is)")
    agent_python.add_option(ap)
    ap.add_argument("--no-doc", action="store_true", help="do not regenerate docs/benchmarks.md")
    ap.add_argument("--keep-workdir", action="store_true",
                    help="keep node folders, states and logs (default: removed on success)")
    ap.add_argument("--render-only", type=Path, metavar="JSON",
                    help="re-render docs/benchmarks.md from a results file and exit")
    args = ap.parse_args()

    if args.render_only:
        res = json.loads(args.render_only.read_text())
        write_outputs(res, args.render_only.resolve(), doc=args.doc.resolve(),
                      img_dir=args.img_dir.resolve())
        return 0
    if args.quick:
        args.runs, args.edits, args.rescan_runs, args.idle_long = 1, 30, 3, 0.0
        args.initial_runs = 1
        args.big_runs, args.slow_trials, args.fast_trials, args.wire_reps = 1, 1, 3, 1
    with_anchors = not args.no_anchors
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    for tool in ("/usr/sbin/sshd", shutil.which("rsync"), shutil.which("ssh")):
        if not tool or not os.path.exists(tool):
            raise SystemExit("bench: needs rsync, ssh and /usr/sbin/sshd "
                             "(apt-get install rsync openssh-server)")

    if with_anchors:
        anchors.ensure_tools()
    if args.nice:
        os.setpriority(os.PRIO_PROCESS, 0, args.nice)  # inherited by every child
    work: Path = args.workdir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    if args.fresh_fs:
        mount_fresh_fs(work, args.fresh_fs)
    use_agent_python(args.agent_python)
    load_dagsync(snapshot_source(work / "src", args.source))
    PROCS.pidfile = work / "pids"
    atexit.register(remove_retired)  # runs last: after the agents are stopped
    RETIRED.extend(work.glob("*/.retired-*"))  # left by an interrupted run
    atexit.register(PROCS.stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)

    cmd = "python bench/run.py " + " ".join(
        a for a in sys.argv[1:] if not a.startswith("--render-only"))
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    res: dict[str, Any] = {
        "meta": {"date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
                 "command": cmd.strip(), "args": {k: os.fspath(v) if isinstance(v, Path) else v
                                                  for k, v in vars(args).items()},
                 "quick": args.quick, "nice": os.getpriority(os.PRIO_PROCESS, 0),
                 "host": host_info(work), "versions": versions(),
                 "corpora": {}},
    }
    if with_anchors:
        res["meta"]["versions"]["anchors"] = anchors.versions()
    for key in ("initial", "initial_big", "rescan", "propagation", "burst", "idle", "wire",
                "scale"):
        res[key] = {}
    out_path = args.results_dir.resolve() / f"{stamp}.json"
    sshd = None
    try:
        small, small_info = corpus(work, args.files)
        res["meta"]["corpora"][f"{args.files}"] = small_info
        big = None
        if only & {"a", "b", "e"}:
            big, big_info = corpus(work, args.big_files)
            res["meta"]["corpora"][f"{args.big_files}"] = big_info
        if only & {"a", "b", "c", "d", "f"}:
            sshd = SSHD(work)
            sshd.start()
        if "a" in only:
            assert sshd is not None and big is not None
            with Section(res, "initial", f"(a) initial sync, {args.files} files") as out:
                out["ssh_roundtrip_s"] = sshd.roundtrip()
                bench_initial(res, work, small, args.initial_runs, sshd,
                              with_anchors=with_anchors)
            with Section(res, "initial_big", f"(a) initial sync, {args.big_files} files"):
                bench_initial(res, work, big, args.big_runs, sshd, key="initial_big",
                              oneshot=False, with_anchors=with_anchors)
        if "b" in only:
            assert sshd is not None and big is not None
            with Section(res, "rescan", f"(b) rescan, {args.big_files} files"):
                bench_rescan(res, work, big, args.rescan_runs, sshd)
        if with_anchors and only & {"b", "e"}:
            assert sshd is not None and big is not None
            with Section(res, "steady", f"(b)+(e) anchors at rest, {args.big_files} files"):
                res["steady"].update(anchors.steady_state(
                    work / "steady", big, res["meta"]["corpora"][f"{args.big_files}"]
                    ["file_count"], sshd.cfg, args.rescan_runs if not args.quick else 2,
                    args.idle_window, 5.0))
        if only & {"c", "d"}:
            with Section(res, "propagation", "(c) propagation latency, 3 agents"):
                edits = args.edits if "c" in only else 5
                bench_cluster_5k(res, work, small, edits,
                                 args.runs if "d" in only else 0, 1000)
            if "d" not in only:
                res["burst"] = {}
            if with_anchors:
                assert sshd is not None
                with Section(res, "anchors_live", "(c)+(d) Syncthing and lsyncd, 3 nodes"):
                    res["anchors_live"].update(anchors.propagation_and_burst(
                        work / "live", small, small_info["file_count"], sshd.cfg,
                        args.slow_trials, args.fast_trials,
                        args.runs if "d" in only else 0, 1000))
        if "e" in only:
            assert big is not None
            with Section(res, "idle", f"(e) idle agents, {args.big_files} files") as out:
                out["settle_s"] = 5.0
                bench_idle(res, work, big, args.idle_window, 5.0, args.idle_long)
        if "f" in only:
            assert sshd is not None and sshd.proc is not None
            with Section(res, "wire", "(f) bytes on the wire, one-line edit of 1 MB"):
                res["wire"].update(wire.measure(work / "wire", sshd.cfg, sshd.port,
                                                args.wire_reps, AGENT_PYTHON, child_env(),
                                                anchors=with_anchors))
        if sshd is not None:
            sshd.stop()
        if "s" in only:
            with Section(res, "scale", "scale on paper (simulation)"):
                res["scale"].update(scale.measure(args.quick))
    except BaseException as exc:
        PROCS.stop_all()
        res["error"] = f"{type(exc).__name__}: {exc}"
        res["traceback"] = traceback.format_exc()
        failed = out_path.parent / f"{stamp}-FAILED.json"
        with contextlib.suppress(Exception):
            write_outputs(res, failed, doc=None)
        if isinstance(exc, SystemExit):
            raise
        print(f"\nBENCH FAILED: {exc}\n(partial results in {failed}; logs under {work})",
              file=sys.stderr)
        return 1
    finally:
        PROCS.stop_all()
    res["meta"]["total_wall_s"] = round(time.monotonic() - T_START, 1)
    if SNAPSHOT_INFO.get("source") == "git HEAD":
        with contextlib.suppress(Exception):
            head = run_cmd(["git", "-C", os.fspath(REPO), "rev-parse", "HEAD"]).stdout.strip()
            if head[:12] != SNAPSHOT_INFO["commit"]:
                res["meta"]["checkout_changed_during_run"] = f"HEAD now {head[:12]}"
    elif source_digest() != res["meta"]["versions"]["dagsync_source_sha256"]:
        res["meta"]["checkout_changed_during_run"] = f"dagsync/*.py now {source_digest()}"
    if res["meta"].get("checkout_changed_during_run"):
        log("note: the checkout changed during the run; the run measured the snapshot "
            "taken at its start")
    write_outputs(res, out_path, doc=None if args.no_doc else args.doc.resolve(),
                  img_dir=args.img_dir.resolve())
    if not args.keep_workdir:
        for d in ("initial", "initial_big", "rescan", "cluster", "idle", "steady", "live",
                  "wire"):
            shutil.rmtree(work / d, ignore_errors=True)
    for item in res["goals"].values():
        log(f"{verdict(item['ok']):>10}  {item['goal']}: {item['measured']} "
            f"(target {item['target']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
