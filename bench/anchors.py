"""The tools dagsync is compared with, driven on 127.0.0.1: unison, Syncthing and lsyncd.

rsync over ssh (and the private sshd every ssh-based tool here uses) lives in run.py.
Adapted from ../shared/bench-anchors/bench.py: the same settings (discovery, relays, NAT,
usage and crash reporting and upgrades off for Syncthing; lsyncd's default.rsync over the
private sshd), but every figure is taken with the probes run.py uses for dagsync, so the
numbers compare within one run:

* a tree is complete when its file count matches and every file's size and SHA-256 match
  the source (tool markers and temp files excluded);
* an edit has arrived when the target file's bytes equal the new content (polled every
  1 ms); a burst has arrived when every file of it is there with its content.

Every process is started through `common.PROCS` (own session, PID file, stopped on exit
and on signals); Syncthing is asked to shut down through its API first and its process
group (monitor + main process) is stopped with it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import statistics
import subprocess
import time
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from common import (
    CLK_TCK,
    PROCS,
    BenchError,
    FileCounter,
    children,
    dag_text,
    first_line,
    free_port,
    log,
    pct,
    proc_cpu_ticks,
    proc_mem_kib,
    stats,
    tail,
    wait_port,
)

HERE = Path(__file__).resolve().parent
INSTALL = HERE / "install_anchors.sh"
BINARIES = {"unison": "/usr/bin/unison", "syncthing": "/usr/bin/syncthing",
            "lsyncd": "/usr/bin/lsyncd"}

# names that are not part of a synced tree: tool markers, temp and archive files
MARKERS = {".stfolder", ".stversions", ".stignore"}
TEMP_PREFIXES = (".syncthing.", ".unison", ".~")

Tree = dict[str, tuple[int, str]]


# ---------------------------------------------------------------------------- setup


def ensure_tools() -> None:
    """Install unison, Syncthing and lsyncd from Debian's packages when one is missing."""
    missing = [n for n, b in BINARIES.items() if not os.path.exists(b)]
    if not missing:
        return
    log(f"anchors: {', '.join(missing)} missing; running {INSTALL}")
    r = subprocess.run(["bash", os.fspath(INSTALL)], capture_output=True, text=True)
    if r.returncode != 0:
        raise BenchError(f"{INSTALL} failed (exit {r.returncode}):\n{r.stderr[-2000:]}")


def versions() -> dict[str, str]:
    return {
        "unison": first_line(["unison", "-version"]),
        "syncthing": first_line(["syncthing", "--version"]),
        "lsyncd": first_line(["lsyncd", "--version"]),
    }


# ---------------------------------------------------------------------------- trees


def _skip(name: str) -> bool:
    return name in MARKERS or name.startswith(TEMP_PREFIXES) or ".sync-conflict-" in name


def count_files(root: Path) -> int:
    n = 0
    stack = [os.fspath(root)]
    while stack:
        d = stack.pop()
        with contextlib.suppress(FileNotFoundError, NotADirectoryError), os.scandir(d) as it:
            for e in it:
                if _skip(e.name):
                    continue
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                else:
                    n += 1
    return n


def tree(root: Path) -> Tree:
    """{relpath: (size, sha256)} of the regular files below root, markers excluded."""
    out: Tree = {}
    base = os.fspath(root)
    for dp, dns, fns in os.walk(base):
        dns[:] = [d for d in dns if not _skip(d)]
        for fn in fns:
            if _skip(fn):
                continue
            p = os.path.join(dp, fn)
            with open(p, "rb") as f:
                data = f.read()
            out[os.path.relpath(p, base)] = (len(data), hashlib.sha256(data).hexdigest())
    return out


def conflict_copies(root: Path) -> list[str]:
    return [os.path.join(dp, f) for dp, _, fns in os.walk(root) for f in fns
            if ".sync-conflict-" in f]


def wait_tree(roots: list[Path], ref: Tree, t0: float, timeout: float, what: str,
              alive: Callable[[], None] = lambda: None, poll: float = 0.02) -> float:
    """Seconds from t0 to the poll that saw every root with ref's file count (counted as
    common.FileCounter does for dagsync), verified afterwards to hold ref's content."""
    want = len(ref)
    deadline = time.monotonic() + timeout
    counts: list[int] = []
    counters = [FileCounter(r, ref, _skip) for r in roots]
    while time.monotonic() < deadline:
        counts = [fc.count() for fc in counters]
        seen = time.perf_counter()
        if all(c == want for c in counts):
            if all(tree(r) == ref for r in roots):
                return seen - t0
            for fc in counters:
                fc.reset()
        alive()
        time.sleep(poll)
    raise BenchError(f"{what}: not complete within {timeout:.0f} s (files {counts}, want "
                     f"{want})")


def copy_tree(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["cp", "-a", os.fspath(src), os.fspath(dst)], check=True)


def empty_dir(d: Path) -> None:
    if d.exists():
        shutil.rmtree(d)
    d.mkdir(parents=True)


# ---------------------------------------------------------------------------- probes


def edit_latency(src: Path, targets: list[Path], tag: str, timeout: float = 60,
                 alive: Callable[[], None] = lambda: None) -> list[float]:
    """Rewrite `src` in place with new 4,096-byte content; seconds until each target
    holds it (polled every 1 ms)."""
    new = dag_text(tag)
    t0 = time.perf_counter()
    with open(src, "wb") as f:
        f.write(new)
    done: list[float | None] = [None] * len(targets)
    while any(d is None for d in done):
        for i, p in enumerate(targets):
            if done[i] is None:
                with contextlib.suppress(FileNotFoundError), open(p, "rb") as f:
                    if f.read() == new:
                        done[i] = time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            alive()
            raise BenchError(f"edit {tag} did not reach {targets} within {timeout:.0f} s")
        time.sleep(0.001)
    return [d for d in done if d is not None]


def latency_trials(src_root: Path, target_roots: list[Path], n: int, label: str,
                   gap: tuple[float, float] = (1.0, 2.0), seed: int = 42,
                   alive: Callable[[], None] = lambda: None) -> dict[str, Any]:
    """n edits of one probe file on the source, each 1-2 s (random) after the previous one
    arrived everywhere: the watchers' delay timers are hit at a random phase."""
    rel = Path("bench_latency") / "latency_dag.py"
    src = src_root / rel
    targets = [r / rel for r in target_roots]
    src.parent.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    edit_latency(src, targets, f"{label}-warmup", timeout=120, alive=alive)
    both, first = [], []
    for k in range(n):
        time.sleep(rng.uniform(*gap))
        lat = edit_latency(src, targets, f"{label}-{k:04d}", timeout=120, alive=alive)
        both.append(max(lat))
        first.append(lat[0])
        log(f"  {label}: edit {k + 1}/{n}: {max(lat) * 1000:.1f} ms")
    return {"both_s": {**stats(both), "p50": pct(both, 50), "p99": pct(both, 99)},
            "b_s": {**stats(first), "p50": pct(first, 50), "p99": pct(first, 99)},
            "targets": len(targets), "gap_s": list(gap), "poll_s": 0.001}


def burst(src_root: Path, target_roots: list[Path], count: int, tag: str,
          timeout: float = 300, alive: Callable[[], None] = lambda: None
          ) -> tuple[float, float]:
    """Write `count` new 4 KB DAG files on the source (10 folders); (seconds from the
    first write until every target holds all of them, seconds the writing took)."""
    top = f"bench_burst_{tag}"
    files = {f"{top}/team_{i % 10:02d}/burst_dag_{i:04d}.py": dag_text(f"burst-{tag}-{i:04d}")
             for i in range(count)}
    os.sync()
    t0 = time.perf_counter()
    for rel, data in files.items():
        p = src_root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        with open(p, "wb") as f:
            f.write(data)
    written = time.perf_counter() - t0
    deadline = time.monotonic() + timeout
    while True:
        counts = [count_files(r / top) for r in target_roots]
        seen = time.perf_counter()
        if all(c == count for c in counts) and all(
                (r / rel).read_bytes() == data for r in target_roots
                for rel, data in files.items()):
            return seen - t0, written
        alive()
        if time.monotonic() > deadline:
            raise BenchError(f"burst {tag}: targets hold {counts} of {count} files after "
                             f"{timeout:.0f} s")
        time.sleep(0.01)


def idle_usage(pids: dict[str, list[int]], window: float) -> dict[str, dict[str, float]]:
    """CPU (% of one core, utime+stime over `window`) and RSS (KiB) per named group of
    processes."""
    t0 = {k: sum(proc_cpu_ticks(p) for p in v) for k, v in pids.items()}
    w0 = time.monotonic()
    time.sleep(window)
    elapsed = time.monotonic() - w0
    out = {}
    for k, v in pids.items():
        ticks = sum(proc_cpu_ticks(p) for p in v) - t0[k]
        mem = [proc_mem_kib(p) for p in v]
        out[k] = {"cpu_pct": 100.0 * ticks / CLK_TCK / elapsed,
                  "rss_kib": sum(m["VmRSS"] for m in mem),
                  "rss_kib_each": [m["VmRSS"] for m in mem],
                  "hwm_kib_each": [m["VmHWM"] for m in mem]}
    return out


# ---------------------------------------------------------------------------- unison


class Unison:
    """`unison -batch -times` over the private sshd, with separate archive dirs for the
    client and the server side ($UNISON), so every initial run starts from nothing."""

    def __init__(self, base: Path, ssh_cfg: Path) -> None:
        self.base = base
        self.ssh_cfg = ssh_cfg
        self.client, self.server = base / "client", base / "server"
        self.log = base / "unison.log"
        base.mkdir(parents=True, exist_ok=True)
        self.wrapper = base / "unison-server.sh"
        self.wrapper.write_text(f'#!/bin/sh\nUNISON={self.server} exec /usr/bin/unison "$@"\n')
        self.wrapper.chmod(0o755)

    def command(self, src: Path, dst: Path) -> list[str]:
        return ["unison", os.fspath(src), f"ssh://bench/{dst}", "-batch", "-times", "-terse",
                "-log=false", "-ui", "text", "-sshargs", f"-F {self.ssh_cfg}",
                "-servercmd", os.fspath(self.wrapper)]

    def reset(self, dst: Path) -> None:
        """Fresh archives on both sides and an empty target."""
        for d in (self.client, self.server):
            empty_dir(d)
        empty_dir(dst)

    def run(self, src: Path, dst: Path) -> float:
        """One timed run (after `sync`: no dirty pages pending)."""
        cmd = self.command(src, dst)
        os.sync()
        rc, elapsed = PROCS.run_timed(cmd, "unison", self.log, 1800,
                                      env={**os.environ, "UNISON": os.fspath(self.client)})
        if rc != 0:
            raise BenchError(f"unison exited {rc}:\n{tail(self.log)}")
        return elapsed


# ---------------------------------------------------------------------------- Syncthing


class SyncthingNode:
    """One Syncthing instance: own home (keys, config, database), GUI/API and sync ports on
    127.0.0.1, one folder `dags`. Syncthing 1.19 runs a monitor process that starts the
    real one as its child even with --no-restart; both are measured."""

    def __init__(self, name: str, base: Path, folder: Path) -> None:
        self.name, self.folder = name, folder
        self.home = base / f"st-{name}"
        self.gui_port, self.sync_port = free_port(), free_port()
        self.apikey = f"dagsyncbench-{name}"
        self.proc: subprocess.Popen[bytes] | None = None
        empty_dir(self.home)
        subprocess.run(["syncthing", "generate", f"--home={self.home}", "--no-default-folder",
                        "--skip-port-probing"], check=True, capture_output=True)
        self.id = subprocess.run(["syncthing", "serve", f"--home={self.home}", "--device-id"],
                                 check=True, capture_output=True, text=True).stdout.strip()
        folder.mkdir(parents=True, exist_ok=True)
        (folder / ".stfolder").mkdir(exist_ok=True)

    @property
    def address(self) -> str:
        return f"tcp://127.0.0.1:{self.sync_port}"

    def configure(self, peers: list[tuple[SyncthingNode, str]],
                  watcher_delay: int | None = None) -> int:
        """Write config.xml: the peers (node, address to dial it at), folder `dags` shared
        with all of them. Returns the folder's fsWatcherDelayS."""
        cfgp = self.home / "config.xml"
        doc = ET.parse(cfgp)
        root = doc.getroot()
        gui = root.find("gui")
        assert gui is not None
        gui.find("address").text = f"127.0.0.1:{self.gui_port}"  # type: ignore[union-attr]
        gui.find("apikey").text = self.apikey  # type: ignore[union-attr]
        opts = root.find("options")
        assert opts is not None
        for k, v in {"listenAddress": f"tcp://127.0.0.1:{self.sync_port}",
                     "globalAnnounceEnabled": "false", "localAnnounceEnabled": "false",
                     "relaysEnabled": "false", "natEnabled": "false", "startBrowser": "false",
                     "urAccepted": "-1", "autoUpgradeIntervalH": "0",
                     "crashReportingEnabled": "false", "announceLANAddresses": "false"}.items():
            el = opts.find(k)
            if el is None:
                el = ET.SubElement(opts, k)
            el.text = v
        for el in opts.findall("globalAnnounceServer"):
            el.text = ""
        me = root.find("device")
        assert me is not None
        at = list(root).index(me) + 1
        for peer, address in peers:
            pd = ET.fromstring(ET.tostring(me))
            pd.set("id", peer.id)
            pd.set("name", peer.name)
            pd.find("address").text = address  # type: ignore[union-attr]
            root.insert(at, pd)
            at += 1
        defaults = root.find("defaults")
        assert defaults is not None
        tmpl = defaults.find("folder")
        assert tmpl is not None
        fo = ET.fromstring(ET.tostring(tmpl))
        fo.set("id", "dags")
        fo.set("label", "dags")
        fo.set("path", os.fspath(self.folder))
        fo.set("type", "sendreceive")
        if watcher_delay is not None:
            fo.set("fsWatcherDelayS", str(watcher_delay))
        for peer, _ in peers:
            dev = ET.SubElement(fo, "device")
            dev.set("id", peer.id)
            dev.set("introducedBy", "")
            ET.SubElement(dev, "encryptionPassword")
        root.insert(at, fo)
        doc.write(cfgp)
        return int(fo.get("fsWatcherDelayS") or 10)

    def start(self) -> None:
        env = {**os.environ, "STNODEFAULTFOLDER": "1", "STNOUPGRADE": "1", "STNORESTART": "1",
               "HOME": os.fspath(self.home)}
        self.proc = PROCS.start(["syncthing", "serve", f"--home={self.home}", "--no-browser",
                                 "--no-restart", "--no-upgrade", "--no-default-folder"],
                                f"syncthing-{self.name}", self.home / "syncthing.log",
                                env=env, group=True)

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"syncthing {self.name} is not running; log "
                             f"{self.home / 'syncthing.log'}:\n"
                             f"{tail(self.home / 'syncthing.log')}")

    def api(self, path: str, method: str = "GET", body: Any = None,
            timeout: float = 10) -> Any:
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.gui_port}{path}", method=method,
            headers={"X-API-Key": self.apikey, "Content-Type": "application/json"},
            data=json.dumps(body).encode() if body is not None else None)
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data = r.read()
            return json.loads(data) if data else None

    def try_api(self, path: str) -> Any:
        try:
            return self.api(path, timeout=2)
        except (OSError, urllib.error.URLError, ValueError):
            return None

    def status(self) -> dict[str, Any]:
        return self.try_api("/rest/db/status?folder=dags") or {}

    def pids(self) -> list[int]:
        """[monitor, main] (main missing while the monitor restarts it)."""
        assert self.proc is not None
        return [self.proc.pid, *children(self.proc.pid)[:1]]

    def wait_api(self, timeout: float = 60) -> None:
        wait_port(self.gui_port, timeout)
        deadline = time.monotonic() + timeout
        while not self.try_api("/rest/system/ping"):
            self.alive()
            if time.monotonic() > deadline:
                raise BenchError(f"syncthing {self.name}: API not up in {timeout:.0f} s")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(OSError, urllib.error.URLError):
                self.api("/rest/system/shutdown", method="POST", timeout=5)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(15)
        PROCS.stop(self.proc)
        self.proc = None

    def reset_database(self) -> None:
        """A brand-new node with the same identity: no database, empty folder."""
        assert self.proc is None
        for p in self.home.glob("index-*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        empty_dir(self.folder)
        (self.folder / ".stfolder").mkdir()


class SyncthingCluster:
    """n Syncthing nodes in a full mesh, each dialing the others at their sync port (or at
    the address `dial` gives, e.g. a counting proxy)."""

    def __init__(self, base: Path, folders: list[Path], watcher_delay: int | None = None,
                 dial: Callable[[SyncthingNode, SyncthingNode], str] | None = None) -> None:
        names = "ABCDEFGH"
        self.nodes = [SyncthingNode(names[i], base, f) for i, f in enumerate(folders)]
        self.default_delay = 10
        for n in self.nodes:
            peers = [(p, dial(n, p) if dial else p.address) for p in self.nodes if p is not n]
            self.default_delay = n.configure(peers, watcher_delay)

    def alive(self) -> None:
        for n in self.nodes:
            n.alive()

    def start(self, nodes: Iterable[SyncthingNode] | None = None) -> None:
        for n in nodes if nodes is not None else self.nodes:
            n.start()
        for n in nodes if nodes is not None else self.nodes:
            n.wait_api()

    def wait_in_sync(self, files: int | None = None, timeout: float = 1800) -> float:
        """Until every node is idle, needs nothing and holds `files` files (None: the same
        number on every node); seconds."""
        t0 = time.perf_counter()
        deadline = time.monotonic() + timeout
        while True:
            sts = [n.status() for n in self.nodes]
            want = files if files is not None else sts[0].get("localFiles")
            if all(s.get("state") == "idle" and s.get("needTotalItems") == 0
                   and s.get("localFiles") == want for s in sts):
                conns = [n.try_api("/rest/system/connections") or {} for n in self.nodes]
                if all(sum(1 for c in cs.get("connections", {}).values() if c.get("connected"))
                       == len(self.nodes) - 1 for cs in conns):
                    return time.perf_counter() - t0
            self.alive()
            if time.monotonic() > deadline:
                raise BenchError(f"syncthing not in sync within {timeout:.0f} s: "
                                 + "; ".join(f"{n.name} {s.get('state')} local "
                                             f"{s.get('localFiles')} need "
                                             f"{s.get('needTotalItems')}"
                                             for n, s in zip(self.nodes, sts, strict=True)))
            time.sleep(0.1)

    def set_watcher_delay(self, delay: int) -> None:
        for n in self.nodes:
            n.api("/rest/config/folders/dags", method="PATCH", body={"fsWatcherDelayS": delay})
        time.sleep(1.0)  # the folder restarts on a config change
        self.wait_in_sync(timeout=120)

    def rescan(self, node: SyncthingNode) -> float:
        """POST /rest/db/scan (returns when the scan is done), then until idle again."""
        t0 = time.perf_counter()
        node.api("/rest/db/scan?folder=dags", method="POST", timeout=600)
        while node.status().get("state") != "idle":
            time.sleep(0.01)
        return time.perf_counter() - t0

    def pids(self) -> dict[str, list[int]]:
        return {n.name: n.pids() for n in self.nodes}

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()


# ---------------------------------------------------------------------------- lsyncd


class Lsyncd:
    """lsyncd with `default.rsync` from one source to one or more targets over the private
    sshd (one `sync {}` block per target; each batch starts `rsync -e ssh`)."""

    def __init__(self, base: Path, src: Path, targets: list[Path], ssh_cfg: Path,
                 delay: int | None, tag: str) -> None:
        self.base, self.src, self.targets, self.tag = base, src, targets, tag
        base.mkdir(parents=True, exist_ok=True)
        self.cfg = base / f"lsyncd-{tag}.lua"
        self.logf = base / f"lsyncd-{tag}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        lines = ["settings {", f'  logfile = "{self.logf}",',
                 f'  statusFile = "{base}/status-{tag}.txt",', "  nodaemon = true,", "}"]
        for t in targets:
            lines += ["sync {", "  default.rsync,", f'  source = "{src}",',
                      f'  target = "bench:{t}",']
            if delay is not None:
                lines.append(f"  delay = {delay},")
            lines += [f'  rsync = {{ rsh = "/usr/bin/ssh -F {ssh_cfg}" }},', "}"]
        self.cfg.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 900) -> float:
        """Start; seconds until every target's startup rsync (full tree) finished."""
        self.logf.unlink(missing_ok=True)
        os.sync()
        t0 = time.perf_counter()
        self.proc = PROCS.start(["lsyncd", os.fspath(self.cfg)], f"lsyncd-{self.tag}",
                                self.base / f"lsyncd-{self.tag}.stdout", group=True)
        while True:
            self.alive()
            with contextlib.suppress(FileNotFoundError):
                txt = self.logf.read_text(errors="replace")
                if sum(1 for line in txt.splitlines()
                       if "Startup of" in line and "finished" in line) >= len(self.targets):
                    return time.perf_counter() - t0
            if time.perf_counter() - t0 > timeout:
                raise BenchError(f"lsyncd {self.tag}: startup not finished in {timeout:.0f} s")
            time.sleep(0.02)

    def alive(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            raise BenchError(f"lsyncd {self.tag} is not running; log {self.logf}:\n"
                             f"{tail(self.logf)}")

    def pids(self) -> list[int]:
        assert self.proc is not None
        return [self.proc.pid]

    def stop(self) -> None:
        PROCS.stop(self.proc)
        self.proc = None


# ---------------------------------------------------------------------------- figures


def initial_syncthing_setup(base: Path, corpus: Path, files: int
                            ) -> tuple[SyncthingCluster, float]:
    """A holds the corpus (scanned before any timed run, like dagsync's A agent); B is
    stopped. Returns the pair and A's first scan time."""
    a_dir, b_dir = base / "a", base / "b"
    copy_tree(corpus, a_dir)
    empty_dir(b_dir)
    pair = SyncthingCluster(base / "homes", [a_dir, b_dir])
    a = pair.nodes[0]
    t0 = time.perf_counter()
    pair.start([a])
    deadline = time.monotonic() + 1800
    while not (a.status().get("state") == "idle" and a.status().get("localFiles") == files):
        a.alive()
        if time.monotonic() > deadline:
            raise BenchError("syncthing A did not finish its first scan")
        time.sleep(0.1)
    return pair, time.perf_counter() - t0


def initial_syncthing_run(pair: SyncthingCluster, ref: Tree, timeout: float = 1800
                          ) -> dict[str, float]:
    """B brand new (same identity, no database, empty folder); seconds from starting B
    until B's tree is byte-identical to A's. B is stopped again once timed: left running,
    it goes on working (its database, the announcements to A) through the next tool's
    timed run."""
    b = pair.nodes[1]
    b.stop()
    b.reset_database()
    os.sync()
    t0 = time.perf_counter()
    b.start()
    t = wait_tree([b.folder], ref, t0, timeout, "syncthing initial sync", alive=pair.alive)
    b.stop()
    return {"seconds": t}


def steady_state(base: Path, corpus: Path, files: int, ssh_cfg: Path, runs: int,
                 window: float, settle: float) -> dict[str, Any]:
    """At the big corpus: unison no-change runs, Syncthing rescans and idle usage of 3
    nodes, lsyncd's startup against an in-sync target and its idle usage."""
    out: dict[str, Any] = {"files": files}
    ref = tree(corpus)

    # unison: one untimed initial run, then no-change runs
    uni = Unison(base / "unison", ssh_cfg)
    src, dst = base / "unison-a", base / "unison-b"
    copy_tree(corpus, src)
    uni.reset(dst)
    first = uni.run(src, dst)
    if tree(dst) != ref:
        raise BenchError("unison: target differs after the initial run")
    out["unison"] = {"initial_untimed_s": first,
                     "nochange_s": stats(uni.run(src, dst) for _ in range(runs))}
    log(f"(b) unison no-change, {files} files: median "
        f"{out['unison']['nochange_s']['median']:.3f} s")
    shutil.rmtree(dst)

    # Syncthing: 3 nodes, A seeded, B and C empty; in sync; rescans; idle usage
    dirs = [base / "st-a", base / "st-b", base / "st-c"]
    cl, sync_s = synced_syncthing(base, corpus, dirs, ref, files)
    try:
        log(f"(b) syncthing: 3 nodes in sync with {files} files after {sync_s:.1f} s")
        a = cl.nodes[0]
        rescans = [cl.rescan(a) for _ in range(runs)]
        log(f"(b) syncthing rescan: median {statistics.median(rescans):.3f} s")
        time.sleep(settle)
        usage = idle_usage(cl.pids(), window)
        out["syncthing"] = {"three_node_sync_s": sync_s, "rescan_s": stats(rescans),
                            "idle": usage, "window_s": window, "settle_s": settle,
                            "conflict_copies": len(conflict_copies(base))}
        log("(e) syncthing idle: " + ", ".join(
            f"{k} {v['cpu_pct']:.2f} % CPU, {v['rss_kib'] / 1024:.1f} MiB (monitor + main)"
            for k, v in usage.items()))
    finally:
        cl.stop()
    for d in dirs[1:]:
        shutil.rmtree(d, ignore_errors=True)

    # lsyncd: target already in sync (cp -a), so startup = one no-change rsync of the tree
    tgt = base / "lsyncd-b"
    copy_tree(corpus, tgt)
    ls = Lsyncd(base / "lsyncd", dirs[0], [tgt], ssh_cfg, None, "steady")
    try:
        startup = ls.start()
        time.sleep(settle)
        usage = idle_usage({"lsyncd": ls.pids()}, window)["lsyncd"]
        out["lsyncd"] = {"startup_in_sync_s": startup, "idle": usage, "window_s": window}
        log(f"(e) lsyncd: startup against an in-sync target {startup:.2f} s; idle "
            f"{usage['cpu_pct']:.2f} % CPU, {usage['rss_kib'] / 1024:.1f} MiB")
    finally:
        ls.stop()
    return out


def synced_syncthing(base: Path, corpus: Path, dirs: list[Path], ref: Tree,
                     files: int) -> tuple[SyncthingCluster, float]:
    """A Syncthing full mesh over `dirs` with the corpus on the first, started and in
    sync; (the cluster, seconds it took). The caller stops it."""
    copy_tree(corpus, dirs[0])
    for d in dirs[1:]:
        empty_dir(d)
    cl = SyncthingCluster(base / "st-homes", dirs)
    try:
        t0 = time.perf_counter()
        cl.start()
        wait_tree(dirs[1:], ref, t0, 3600, "syncthing 3-node sync", alive=cl.alive)
        cl.wait_in_sync(files)
    except BaseException:
        cl.stop()
        raise
    return cl, time.perf_counter() - t0


def propagation_and_burst(base: Path, corpus: Path, files: int, ssh_cfg: Path,
                          slow_trials: int, fast_trials: int, bursts: int,
                          burst_files: int, st_fast_delay: int = 1,
                          lsyncd_fast_delay: int = 0) -> dict[str, Any]:
    """Syncthing, 3 nodes in a full mesh, and lsyncd from A to B and C: single-edit
    latency and 1,000-file bursts, each with the tool's default delay and its fastest."""
    out: dict[str, Any] = {"files": files, "syncthing": {}, "lsyncd": {}}
    ref = tree(corpus)
    dirs = [base / "a", base / "b", base / "c"]

    cl, sync_s = synced_syncthing(base, corpus, dirs, ref, files)
    try:
        st = out["syncthing"]
        st["three_node_sync_s"] = sync_s
        st["default_fsWatcherDelayS"] = cl.default_delay
        for label, delay, n in ((f"fsWatcherDelayS={cl.default_delay} (default)", None,
                                 slow_trials),
                                (f"fsWatcherDelayS={st_fast_delay}", st_fast_delay,
                                 fast_trials)):
            if delay is not None:
                cl.set_watcher_delay(delay)
            log(f"(c) syncthing {label}: {n} edits")
            res = latency_trials(dirs[0], dirs[1:], n, f"syncthing-{delay or 'default'}",
                                 alive=cl.alive)
            times, writes = [], []
            for r in range(bursts):
                time.sleep(1.0)
                t, w = burst(dirs[0], dirs[1:], burst_files, f"st{delay or 'd'}-{r}",
                             alive=cl.alive)
                times.append(t)
                writes.append(w)
                log(f"(d) syncthing {label}: burst {r + 1}/{bursts}: {t:.2f} s")
            res["burst_s"] = stats(times)
            res["burst_write_s"] = stats(writes)
            st[label] = res
        st["conflict_copies"] = len(conflict_copies(base))
    finally:
        cl.stop()

    # lsyncd: A -> B and A -> C; B and C start as copies of A (startup rsync has little to do)
    for d in dirs[1:]:
        copy_tree(dirs[0], d)
    for label, delay, n in (("default delay", None, slow_trials),
                            (f"delay={lsyncd_fast_delay}", lsyncd_fast_delay, fast_trials)):
        ls = Lsyncd(base / "lsyncd", dirs[0], dirs[1:], ssh_cfg, delay,
                    "default" if delay is None else f"d{delay}")
        try:
            ls.start()
            log(f"(c) lsyncd {label}: {n} edits")
            res = latency_trials(dirs[0], dirs[1:], n, f"lsyncd-{ls.tag}", alive=ls.alive)
            times, writes = [], []
            for r in range(bursts):
                time.sleep(1.0)
                t, w = burst(dirs[0], dirs[1:], burst_files, f"ls{ls.tag}-{r}", alive=ls.alive)
                times.append(t)
                writes.append(w)
                log(f"(d) lsyncd {label}: burst {r + 1}/{bursts}: {t:.2f} s")
            res["burst_s"] = stats(times)
            res["burst_write_s"] = stats(writes)
            out["lsyncd"][label] = res
        finally:
            ls.stop()
    return out
