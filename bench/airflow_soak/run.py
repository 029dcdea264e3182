#!/usr/bin/env python3
"""The real client: Apache Airflow's own DAG loader watching a dagsync receiver (issue 6.4).

    python bench/airflow_soak/run.py [--minutes 3] [--seed 1] [--keep]

One command, from the repo's python (the one dagsync is installed in):

1. Creates or reuses a separate virtualenv (default /tmp/dagsync-airflow-venv) with
   `apache-airflow==<--airflow-version>` (a 2.x release that supports Python 3.11),
   installed with the official constraints file
   https://raw.githubusercontent.com/apache/airflow/constraints-<ver>/constraints-3.11.txt
   when GitHub is reachable, else without constraints (recorded in the results).
   AIRFLOW_HOME is a temp dir with a SQLite DB (`airflow db migrate`; some example DAGs
   query it at parse time); no webserver, no scheduler.
2. Two dagsync agents on 127.0.0.1 built with the test harness (tests/cluster.py): A, the
   writer (send-receive), and B, the receiver (receive-only by default, like a worker).
3. Seeds A with Airflow's packaged example DAGs (airflow/example_dags/*.py), drops those
   that fail a first DagBag load on A's folder (they need extra providers), and checks
   which of them can be copied under new dag_ids (every dag_id string of the file gets a
   suffix; a scratch DagBag load confirms the copy yields exactly the renamed ids).
4. A watcher in the Airflow venv (watcher.py) builds `DagBag(dag_folder=<B's folder>,
   include_examples=False, safe_mode=False)` every 0.5 s and records each round.
5. For --minutes, a writer on A rewrites DAG files (appended comments, a changed
   `schedule="@..."`; in place in two writes, or editor-style temp + rename), adds copies
   with new dag_ids, renames (sometimes into another directory) and deletes, at a few
   operations a second with occasional bursts; every ~20 s B's agent is killed with
   SIGKILL and restarted 1-3 s later. A checker reads every file on B every 0.1 s and
   compares its bytes with every version the writer ever produced for that path, and a
   prober process (prober.py) lists B's folder about every millisecond, so the moments
   when a DAG's file is under neither name (gap) or both (overlap) are seen directly.
6. At the end: waits for convergence, loads DagBag once on A and once on B, and compares
   the DAG ids with each other and with the writer's own model.

Reported (and written to bench/airflow_soak/results/<UTC timestamp>.json): parse rounds,
rounds with import errors (must be 0; each one classified: torn content, duplicate
dag_id, file gone during parse, other), DAG ids that vanished between consecutive rounds
without the writer deleting them (must be 0; each one with what the round listed and what
the writer had just done to that DAG's file, and whether the folder really lacked it or
only DagBag's own listing missed it), ids still shown long after their delete, gaps and
overlaps in B's folder, "local changes" B's agent reported on its receive-only folder,
torn files seen, bytes compared, kills and restarts, files changed, final equality. A
second DagBag loop on A's folder is the control: what Airflow itself does when renames
are atomic and nothing passes through dagsync.
Exit status 0 when every must-be-zero figure is zero and the nodes agree, else 1.

Only loopback addresses are used; every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import platform
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))

from tests.cluster import TestNode, make_nodes, wait_converged  # noqa: E402

DEFAULT_VENV = "/tmp/dagsync-airflow-venv"
DEFAULT_AIRFLOW = "2.11.2"
CONSTRAINTS_URL = ("https://raw.githubusercontent.com/apache/airflow/constraints-{ver}/"
                   "constraints-{py}.txt")
INSTALL_RECORD = "dagsync-soak-install.json"
SCHEDULES = ("@once", "@hourly", "@daily", "@weekly", "@monthly", "@yearly")
SCHEDULE_RE = re.compile(r'schedule="(@(?:once|hourly|daily|weekly|monthly|yearly))"')
COPY_MARK = "__c0"  # the suffix used to validate a copy; real copies use __c1, __c2, ...
GRACE_S = 10.0  # propagation allowance before a deleted DAG still shown counts as stale


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --- the Airflow virtualenv ------------------------------------------------------------


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def installed_airflow(venv: Path) -> str | None:
    py = venv_python(venv)
    if not py.exists():
        return None
    # The distribution's metadata, not `import airflow`: an import would create
    # ~/airflow when AIRFLOW_HOME is not set.
    res = subprocess.run([str(py), "-c", "import importlib.metadata as m, sys; "
                          "sys.stdout.write(m.version('apache-airflow'))"],
                         capture_output=True, text=True, env=airflow_env(None), timeout=300)
    return res.stdout.strip() if res.returncode == 0 else None


def ensure_venv(venv: Path, version: str) -> dict[str, Any]:
    """The Airflow venv with `apache-airflow==version`: reused when it already has it."""
    record_path = venv / INSTALL_RECORD
    have = installed_airflow(venv)
    if have == version:
        info = {"reused": True, "venv": str(venv), "airflow": have}
        if record_path.exists():
            info.update({k: v for k, v in json.loads(record_path.read_text()).items()
                         if k not in ("reused", "venv")})
        else:
            info["constraints"] = "unknown: venv not created by this script"
        log(f"reusing {venv} (apache-airflow {have})")
        return info
    py_tag = f"{sys.version_info.major}.{sys.version_info.minor}"
    if not venv_python(venv).exists():
        log(f"creating {venv}")
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pip = [str(venv_python(venv)), "-m", "pip", "--disable-pip-version-check"]
    subprocess.run([*pip, "install", "-q", "--upgrade", "pip", "setuptools", "wheel"],
                   check=True)
    url = CONSTRAINTS_URL.format(ver=version, py=py_tag)
    cmd = [*pip, "install", "-q", f"apache-airflow=={version}"]
    info: dict[str, Any] = {"reused": False, "venv": str(venv), "constraints_url": url}
    try:
        with urllib.request.urlopen(url, timeout=20) as resp:
            body = resp.read()
        cfile = venv / f"constraints-{version}-{py_tag}.txt"
        cfile.write_bytes(body)
        cmd += ["--constraint", str(cfile)]
        info["constraints"] = "used"
    except Exception as exc:  # DNS failure, proxy, 404: install unconstrained, say so
        info["constraints"] = f"not reachable ({type(exc).__name__}: {exc}); installed without"
        log(f"constraints file not reachable ({exc}); installing without constraints")
    log(f"installing apache-airflow=={version} into {venv} (a few minutes)")
    started = time.monotonic()
    subprocess.run(cmd, check=True)
    info["install_seconds"] = round(time.monotonic() - started, 1)
    info["airflow"] = installed_airflow(venv)
    if info["airflow"] != version:
        raise SystemExit(f"apache-airflow {version} did not import from {venv}")
    freeze = subprocess.run([*pip, "freeze"], capture_output=True, text=True).stdout
    info["packages"] = len(freeze.splitlines())
    info["key_versions"] = {
        line.split("==")[0]: line.split("==")[1] for line in freeze.splitlines()
        if "==" in line and line.split("==")[0].lower() in
        ("sqlalchemy", "pendulum", "flask", "pydantic", "apache-airflow")}
    record_path.write_text(json.dumps({k: v for k, v in info.items()
                                       if k not in ("reused", "venv")}, indent=1))
    return info


def airflow_env(home: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env.update({
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "ERROR",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONWARNINGS": "ignore",
    })
    if home is not None:
        env["AIRFLOW_HOME"] = str(home)
    return env


class Airflow:
    """Runs things in the Airflow venv with one AIRFLOW_HOME."""

    def __init__(self, venv: Path, home: Path) -> None:
        self.py = venv_python(venv)
        self.home = home
        self.env = airflow_env(home)
        home.mkdir(parents=True, exist_ok=True)

    def migrate(self) -> None:
        airflow = self.py.parent / "airflow"
        res = subprocess.run([str(airflow), "db", "migrate"], env=self.env,
                             capture_output=True, text=True, timeout=600)
        if res.returncode != 0:
            raise SystemExit(f"airflow db migrate failed:\n{res.stderr[-3000:]}")

    def example_dags(self) -> Path:
        res = subprocess.run([str(self.py), "-c", "import airflow, os, sys; sys.stdout.write("
                              "os.path.join(os.path.dirname(airflow.__file__), "
                              "'example_dags'))"], env=self.env, capture_output=True,
                             text=True, check=True)
        return Path(res.stdout.strip())

    def dagbag_once(self, folder: Path) -> dict[str, Any]:
        res = subprocess.run([str(self.py), str(HERE / "watcher.py"), "--folder", str(folder),
                              "--once"], env=self.env, capture_output=True, text=True,
                             timeout=600)
        if res.returncode != 0:
            raise SystemExit(f"DagBag probe of {folder} failed:\n{res.stderr[-3000:]}")
        out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        return out

    def start_watcher(self, folder: Path, out: Path, stop_file: Path,
                      interval: float, errlog: Path) -> subprocess.Popen[bytes]:
        with errlog.open("ab") as err:
            return subprocess.Popen(
                [str(self.py), str(HERE / "watcher.py"), "--folder", str(folder), "--out",
                 str(out), "--stop-file", str(stop_file), "--interval", str(interval)],
                env=self.env, stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)


def ids_of(round_: dict[str, Any]) -> set[str]:
    return {i for ids in round_["dags"].values() for i in ids}


# --- the corpus ------------------------------------------------------------------------


def add_suffix(text: str, ids: set[str], suffix: str) -> str:
    """Every occurrence of each dag_id string gets `suffix`, longest ids first, in one
    pass (so an id that contains another is renamed once)."""
    if not ids:
        return text
    pattern = re.compile("|".join(re.escape(i) for i in sorted(ids, key=len, reverse=True)))
    return pattern.sub(lambda m: m.group(0) + suffix, text)


class Corpus:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}  # name -> pristine content (on A at the start)
        self.ids: dict[str, frozenset[str]] = {}  # name -> dag ids it defines
        self.copy_ids: dict[str, frozenset[str]] = {}  # copyable name -> ids with COPY_MARK
        self.rename_stable: set[str] = set()  # names whose dag ids do not follow the name
        self.dropped: dict[str, str] = {}  # name -> why (import error on A)
        self.not_copyable: dict[str, str] = {}


def seed(airflow: Airflow, a_dags: Path, scratch: Path) -> Corpus:
    corpus = Corpus()
    src = airflow.example_dags()
    for f in sorted(src.glob("*.py")):
        if f.name != "__init__.py":
            shutil.copy2(f, a_dags / f.name)
    first = airflow.dagbag_once(a_dags)
    for name, err in first["errors"].items():
        corpus.dropped[name] = err["last_line"]
        (a_dags / name).unlink()
    again = airflow.dagbag_once(a_dags)
    if again["errors"]:
        raise SystemExit(f"example DAGs still fail on A after dropping: {again['errors']}")
    for f in sorted(a_dags.glob("*.py")):
        corpus.files[f.name] = f.read_bytes()
        corpus.ids[f.name] = frozenset(again["dags"].get(f.name, []))
    # Which files can be copied under new dag ids: rename every id string in a scratch
    # copy and check that DagBag finds exactly renamed ids (none of the originals).
    # And which can be renamed without changing their ids (some use Path(__file__).stem):
    # the untouched file under another name, in a subdirectory.
    scratch.mkdir(parents=True, exist_ok=True)
    (scratch / "renamed").mkdir()
    for name, ids in corpus.ids.items():
        if ids:
            text = corpus.files[name].decode()
            (scratch / name).write_text(add_suffix(text, set(ids), COPY_MARK))
            (scratch / "renamed" / f"zz_{name}").write_text(text)
    probe = airflow.dagbag_once(scratch)
    for name, ids in corpus.ids.items():
        if set(probe["dags"].get(f"renamed/zz_{name}", [])) == set(ids):
            corpus.rename_stable.add(name)
    all_original = {i for ids in corpus.ids.values() for i in ids}
    for name, ids in corpus.ids.items():
        if not ids:
            corpus.not_copyable[name] = "defines no DAG"
            continue
        got = set(probe["dags"].get(name, []))
        if name in probe["errors"]:
            corpus.not_copyable[name] = probe["errors"][name]["last_line"]
        elif not got or got & all_original or any(COPY_MARK not in i for i in got):
            corpus.not_copyable[name] = f"renamed copy yields ids {sorted(got)}"
        elif len(got) != len(ids):
            corpus.not_copyable[name] = f"{len(ids)} ids became {len(got)}"
        else:
            corpus.copy_ids[name] = frozenset(got)
    shutil.rmtree(scratch)
    return corpus


# --- the writer on A ---------------------------------------------------------------------


class Writer:
    """Edits A's folder and keeps the model: what each path holds, which dag ids it
    defines, every content ever produced per path, and when each dag id came and went."""

    def __init__(self, root: Path, corpus: Corpus, rng: random.Random, min_files: int,
                 max_files: int) -> None:
        self.root = root
        self.corpus = corpus
        self.rng = rng
        self.min_files, self.max_files = min_files, max_files
        self.lock = threading.Lock()
        self.model: dict[str, bytes] = dict(corpus.files)
        self.ids: dict[str, frozenset[str]] = dict(corpus.ids)
        self.base: dict[str, str] = {n: n for n in corpus.files}  # path -> example file
        self.produced: dict[str, set[str]] = {n: {sha(c)} for n, c in corpus.files.items()}
        self.id_added: dict[str, float] = {i: 0.0 for ids in corpus.ids.values() for i in ids}
        self.id_deleted: dict[str, float] = {}
        self.id_path: dict[str, str] = {i: n for n, ids in corpus.ids.items() for i in ids}
        # Every path each dag id ever lived at, and the ids every path ever held (paths
        # are never reused): set before the file appears on A.
        self.id_paths: dict[str, set[str]] = {i: {n} for n, ids in corpus.ids.items()
                                              for i in ids}
        self.path_ids: dict[str, frozenset[str]] = dict(corpus.ids)
        self.events: list[dict[str, Any]] = []
        self.ops: dict[str, int] = {"rewrite_append": 0, "rewrite_schedule": 0, "copy": 0,
                                    "rename": 0, "delete": 0}
        self.write_modes: dict[str, int] = {"in_place_two_writes": 0, "temp_and_rename": 0}
        self.bytes_written = 0
        self.counter = 0
        self.bursts = 0

    # writing ------------------------------------------------------------------------

    def _register(self, path: str, data: bytes) -> None:
        with self.lock:
            self.produced.setdefault(path, set()).add(sha(data))

    def _write(self, path: str, data: bytes) -> None:
        full = self.root / path
        full.parent.mkdir(parents=True, exist_ok=True)
        self.bytes_written += len(data)
        if self.rng.random() < 0.5:
            # In place, in two writes with a short stall (below dagsync's 20 ms settle):
            # a reader that takes the file before it is closed sees half of it.
            self.write_modes["in_place_two_writes"] += 1
            cut = self.rng.randrange(1, max(2, len(data)))
            with open(full, "wb") as fh:
                fh.write(data[:cut])
                fh.flush()
                time.sleep(self.rng.uniform(0, 0.005))
                fh.write(data[cut:])
        else:
            # Editor style: a temp name dagsync ignores (`*~`), then rename over.
            self.write_modes["temp_and_rename"] += 1
            tmp = full.parent / f".{full.name}.{self.counter}~"
            tmp.write_bytes(data)
            os.replace(tmp, full)

    def _event(self, op: str, path: str, ids: frozenset[str], to: str = "") -> None:
        self.events.append({"t": time.monotonic(), "op": op, "path": path, "to": to,
                            "ids": sorted(ids)})

    # operations ---------------------------------------------------------------------

    def rewrite(self) -> None:
        path = self.rng.choice(sorted(self.model))
        text = self.model[path].decode()
        m = SCHEDULE_RE.search(text)
        if m and self.rng.random() < 0.5:
            new_sched = self.rng.choice([s for s in SCHEDULES if s != m.group(1)])
            new = text[: m.start()] + f'schedule="{new_sched}"' + text[m.end():]
            op = "rewrite_schedule"
        else:
            sep = "" if text.endswith("\n") else "\n"
            new = f"{text}{sep}# dagsync soak edit {self.counter} at {time.time():.6f}\n"
            op = "rewrite_append"
        compile(new, path, "exec")  # the writer only ever produces valid Python
        data = new.encode()
        self._register(path, data)
        self._write(path, data)
        with self.lock:
            self.model[path] = data
        self.ops[op] += 1
        self._event(op, path, self.ids[path])

    def copy(self) -> None:
        name = self.rng.choice(sorted(self.corpus.copy_ids))
        n = self.counter
        suffix = f"__c{n}"
        text = add_suffix(self.corpus.files[name].decode(), set(self.corpus.ids[name]), suffix)
        ids = frozenset(i.replace(COPY_MARK, suffix) for i in self.corpus.copy_ids[name])
        where = self.rng.choice(["", "", "copies/", f"team_{n % 4}/"])
        path = f"{where}{Path(name).stem}{suffix}.py"
        data = text.encode()
        self._register(path, data)
        now = time.monotonic()
        with self.lock:
            self.path_ids[path] = ids
            for i in ids:
                self.id_added[i] = now
                self.id_path[i] = path
                self.id_paths.setdefault(i, set()).add(path)
        self._write(path, data)
        with self.lock:
            self.model[path] = data
            self.ids[path] = ids
            self.base[path] = name
        self.ops["copy"] += 1
        self._event("copy", path, ids)

    def rename(self) -> None:
        movable = sorted(p for p in self.model if self.base[p] in self.corpus.rename_stable)
        if not movable:
            self.rewrite()
            return
        path = self.rng.choice(movable)
        stem = re.sub(r"__r\d+$", "", Path(path).stem)
        where = self.rng.choice(["", "", "moved/", f"team_{self.counter % 4}/",
                                 str(Path(path).parent) + "/" if "/" in path else ""])
        new = f"{where}{stem}__r{self.counter}.py"
        data = self.model[path]
        self._register(new, data)
        with self.lock:
            self.path_ids[new] = self.ids[path]
            for i in self.ids[path]:
                self.id_paths[i].add(new)
        (self.root / new).parent.mkdir(parents=True, exist_ok=True)
        os.rename(self.root / path, self.root / new)
        with self.lock:
            self.model[new] = self.model.pop(path)
            self.ids[new] = self.ids.pop(path)
            self.base[new] = self.base.pop(path)
            for i in self.ids[new]:
                self.id_path[i] = new
        self.ops["rename"] += 1
        self._event("rename", path, self.ids[new], to=new)

    def delete(self) -> None:
        path = self.rng.choice(sorted(self.model))
        now = time.monotonic()
        (self.root / path).unlink()
        with self.lock:
            self.model.pop(path)
            ids = self.ids.pop(path)
            self.base.pop(path)
            for i in ids:
                self.id_deleted[i] = now
                self.id_path.pop(i, None)
        self.ops["delete"] += 1
        self._event("delete", path, ids)

    def step(self) -> None:
        self.counter += 1
        r = self.rng.random()
        if r < 0.5:
            self.rewrite()
        elif r < 0.7:
            (self.delete if len(self.model) >= self.max_files else self.copy)()
        elif r < 0.85:
            self.rename()
        else:
            (self.copy if len(self.model) <= self.min_files else self.delete)()

    def run(self, stop: threading.Event, errors: list[str]) -> None:
        try:
            while not stop.is_set():
                if self.rng.random() < 0.03:  # a burst, like a `git pull` of many DAGs
                    self.bursts += 1
                    for _ in range(self.rng.randint(10, 25)):
                        self.step()
                else:
                    self.step()
                stop.wait(self.rng.uniform(0.05, 0.5))
        except Exception as exc:  # surfaced in the results; the run then fails
            errors.append(f"writer: {type(exc).__name__}: {exc}")
            stop.set()

    @property
    def files_changed(self) -> int:
        return sum(self.ops.values())


# --- B's killer and the torn-file checker ----------------------------------------------


class Killer:
    def __init__(self, node: TestNode, rng: random.Random, every: float) -> None:
        self.node, self.rng, self.every = node, rng, every
        self.kills = 0
        self.restarts = 0
        self.windows: list[tuple[float, float]] = []  # (killed, answering again)
        self.restart_seconds: list[float] = []

    def run(self, stop: threading.Event, errors: list[str]) -> None:
        try:
            while not stop.wait(self.rng.uniform(0.75 * self.every, 1.25 * self.every)):
                killed = time.monotonic()
                self.node.kill()  # SIGKILL by PID
                self.kills += 1
                time.sleep(self.rng.uniform(1.0, 3.0))
                began = time.monotonic()
                self.node.start()  # returns once the control socket answers
                up = time.monotonic()
                self.restarts += 1
                self.restart_seconds.append(up - began)
                self.windows.append((killed, up))
        except Exception as exc:
            errors.append(f"killer: {type(exc).__name__}: {exc}")
            stop.set()

    def down_between(self, t0: float, t1: float) -> float:
        return sum(max(0.0, min(t1, b) - max(t0, a)) for a, b in self.windows)

    def near(self, t: float, before: float = 10.0) -> bool:
        return any(a - 1.0 <= t and t - before <= b for a, b in self.windows)


class TornChecker:
    """Reads every file on B and checks its bytes are one version the writer produced for
    that path (SPEC guarantee 3: only whole, verified files ever appear)."""

    def __init__(self, root: Path, writer: Writer) -> None:
        self.root, self.writer = root, writer
        self.passes = 0
        self.files_checked = 0
        self.bytes_compared = 0
        self.torn: list[dict[str, Any]] = []
        self.foreign: list[str] = []
        self.temp_seen = 0

    def run(self, stop: threading.Event) -> None:
        from dagsync.paths import is_temp_name

        while not stop.wait(0.1):
            for dirpath, dirnames, filenames in os.walk(self.root):
                dirnames[:] = [d for d in dirnames if d != "__pycache__"]
                for fn in filenames:
                    if is_temp_name(fn):
                        self.temp_seen += 1
                        continue
                    full = Path(dirpath) / fn
                    rel = full.relative_to(self.root).as_posix()
                    try:
                        data = full.read_bytes()
                    except FileNotFoundError:
                        continue
                    self.files_checked += 1
                    self.bytes_compared += len(data)
                    with self.writer.lock:
                        known = self.writer.produced.get(rel)
                        ok = known is not None and sha(data) in known
                    if known is None and rel not in self.foreign:
                        self.foreign.append(rel)
                    elif not ok and len(self.torn) < 100:
                        self.torn.append({"t": time.monotonic(), "path": rel,
                                          "size": len(data), "sha256": sha(data),
                                          "head": data[:80].decode(errors="replace")})
            self.passes += 1


def fs_gaps(changes: list[dict[str, Any]], writer: Writer, killer: Killer,
            b_log: str) -> tuple[dict[str, Any], dict[str, list[tuple[float, float]]]]:
    """From prober.py's log of B's folder: per DAG id (through the writer's path -> ids
    model), the intervals when no file held it although the writer had not deleted it
    (gaps) and when two files held it at once (overlaps). On A a rename is one atomic
    rename(2), so A never shows either: a gap hands Airflow a listing without the DAG, an
    overlap makes DagBag refuse the second file (AirflowDagDuplicatedIdException).

    The prober's own listing walks directory by directory, so an atomic move between two
    directories can look like a gap or an overlap of about one listing: a window that
    follows a rename B's agent applied as one move (its log says so) and lasts no more
    than two listings is counted as the prober's artifact, not as a window."""
    events_by_id: dict[str, list[dict[str, Any]]] = {}
    for ev in writer.events:
        for i in ev["ids"]:
            events_by_id.setdefault(i, []).append(ev)

    def recent(i: str, t: float) -> list[dict[str, Any]]:
        """What the writer did to that DAG's file in the 2 s before B's folder changed."""
        return [{"op": ev["op"], "path": ev["path"], "to": ev["to"],
                 "seconds_before": round(t - ev["t"], 3)}
                for ev in events_by_id.get(i, []) if t - 2.0 <= ev["t"] <= t]

    held: dict[str, int] = {}
    open_gap: dict[str, float] = {}
    open_ov: dict[str, float] = {}
    gaps: list[dict[str, Any]] = []
    overlaps: list[dict[str, Any]] = []
    by_id: dict[str, list[tuple[float, float]]] = {}
    listings = 0
    for k, line in enumerate(changes):
        if "listings" in line:
            listings = line["listings"]
            continue
        t = line["t"]
        delta: dict[str, int] = {}
        for path in line["add"]:
            for i in writer.path_ids.get(path, frozenset()):
                delta[i] = delta.get(i, 0) + 1
        for path in line["del"]:
            for i in writer.path_ids.get(path, frozenset()):
                delta[i] = delta.get(i, 0) - 1
        for i, d in delta.items():
            before = held.get(i, 0)
            after = before + d
            held[i] = after
            t_del = writer.id_deleted.get(i)
            if k and before > 0 and after == 0 and (t_del is None or t_del > t):
                open_gap[i] = t
            if before == 0 and after > 0 and i in open_gap:
                began = open_gap.pop(i)
                killed = any(a <= t and b >= began for a, b in killer.windows)
                gaps.append({"dag_id": i, "t": round(began, 4), "seconds": round(t - began, 4),
                             "b_killed_meanwhile": killed, "writer_ops": recent(i, began)})
            if before < 2 <= after:
                open_ov[i] = t
            if after < 2 <= before and i in open_ov:
                began = open_ov.pop(i)
                overlaps.append({"dag_id": i, "t": round(began, 4),
                                 "seconds": round(t - began, 4),
                                 "b_killed_within_2s": any(began - 2 <= b_up and a <= t
                                                           for a, b_up in killer.windows),
                                 "writer_ops": recent(i, began)})
    ended_by_delete = [i for i in open_gap if i in writer.id_deleted]
    for i in ended_by_delete:
        by_id.setdefault(i, []).append((open_gap[i], writer.id_deleted[i]))
    period = ((changes[-1]["t"] - changes[0]["t"]) / listings
              if listings and len(changes) > 1 else 0.0)
    times = [ev["t"] for ev in writer.events]
    for w in gaps + overlaps:
        annotate_window(w, times, b_log, period)
    artifacts = [w for w in gaps + overlaps if w.get("probe_artifact")]
    gaps = [g for g in gaps if not g.get("probe_artifact")]
    overlaps = [o for o in overlaps if not o.get("probe_artifact")]
    for g in gaps:
        by_id.setdefault(g["dag_id"], []).append((g["t"], g["t"] + g["seconds"]))

    def stats(xs: list[float]) -> dict[str, float]:
        xs = sorted(xs)
        if not xs:
            return {}
        return {"min_ms": round(xs[0] * 1000, 1),
                "median_ms": round(statistics.median(xs) * 1000, 1),
                "max_ms": round(xs[-1] * 1000, 1)}

    plain = [g["seconds"] for g in gaps if not g["b_killed_meanwhile"]]
    killed = [g["seconds"] for g in gaps if g["b_killed_meanwhile"]]
    report = {
        "listings": listings,
        "seconds_per_listing": round(period, 5) if period else None,
        "probe_artifacts_excluded": len(artifacts),
        "gaps": len(gaps),
        "gaps_without_a_kill": len(plain), "durations_without_a_kill": stats(plain),
        "gaps_across_a_kill": len(killed), "durations_across_a_kill": stats(killed),
        "gaps_ended_by_a_delete": len(ended_by_delete),
        "still_open_at_end": sorted(i for i in open_gap if i not in writer.id_deleted),
        "overlaps": len(overlaps),
        "overlap_durations": stats([o["seconds"] for o in overlaps]),
        "longest_gaps": sorted(gaps, key=lambda g: -g["seconds"])[:10],
        "overlap_samples": overlaps[:20],
    }
    return report, by_id


# --- analysis of the watcher's rounds --------------------------------------------------


# Import errors DagBag raises by itself when a file it listed is removed before it reads
# it (it checks isfile, then the loader opens the file): the same with an atomic mv.
DAGBAG_RACE_ERRORS = ("file_gone_during_parse",)


def classify_error(path: str, err: dict[str, Any], writer: Writer) -> str:
    text = err.get("text", "")
    if "AirflowDagDuplicatedIdException" in text:
        return "duplicate_dag_id"
    if not err.get("exists") or "FileNotFoundError" in text:
        return "file_gone_during_parse"
    if err.get("sha256") is not None and err["sha256"] not in writer.produced.get(path, set()):
        return "torn_content"
    return "other"


# Why a DAG id was missing from a round although the writer had not deleted it.
RACE = "listed, then gone before DagBag parsed it"  # DagBag lists, then parses file by file
ABSENT = "B's folder held no file with it while DagBag listed the folder"
LISTING = ("not in DagBag's listing although no gap was seen in the folder (os.walk and "
           "readdir are not atomic: a rename during the listing; seen on A too)")
PARTIAL = "listed, but DagBag parsed a version the writer never produced (partial)"
IMPORT = "import error on its file"
OTHER = "listed and whole, yet not loaded"
# The causes dagsync answers for on the receiver: a race inside DagBag is Airflow's own
# (it shows on A as well, where a rename is one atomic rename(2)).
DAGSYNC_CAUSES = (ABSENT, PARTIAL, IMPORT, OTHER)


def analyse(rounds: list[dict[str, Any]], writer: Writer, killer: Killer,
            gaps: dict[str, list[tuple[float, float]]] | None) -> dict[str, Any]:
    events_by_id: dict[str, list[dict[str, Any]]] = {}
    for ev in writer.events:
        for i in ev["ids"]:
            events_by_id.setdefault(i, []).append(ev)
    error_rounds = 0
    dagsync_error_rounds = 0
    errors: list[dict[str, Any]] = []
    kinds: dict[str, int] = {}
    vanished: list[dict[str, Any]] = []
    deletes_seen = 0
    stale: dict[str, dict[str, Any]] = {}
    never_intended: set[str] = set()
    for k, cur in enumerate(rounds):
        round_kinds = {p: classify_error(p, e, writer) for p, e in cur["errors"].items()}
        if cur["errors"]:
            error_rounds += 1
            if any(kind not in DAGBAG_RACE_ERRORS for kind in round_kinds.values()):
                dagsync_error_rounds += 1
            for path, err in cur["errors"].items():
                kind = round_kinds[path]
                kinds[kind] = kinds.get(kind, 0) + 1
                if len(errors) < 50:
                    errors.append({"round": cur["round"], "path": path, "kind": kind,
                                   "last_line": err["last_line"], "exists": err["exists"],
                                   "text": err["text"][-800:]})
        cur_ids = ids_of(cur)
        for i in cur_ids:
            if i not in writer.id_added:
                never_intended.add(i)
            t_del = writer.id_deleted.get(i)
            if t_del is not None and cur["t_list"] > t_del:
                late = (cur["t_list"] - t_del) - killer.down_between(t_del, cur["t_list"])
                if late > GRACE_S and i not in stale:
                    stale[i] = {"round": cur["round"], "seconds_after_delete": round(late, 2)}
        if k == 0:
            continue
        prev = rounds[k - 1]
        for i in sorted(ids_of(prev) - cur_ids):
            t_del = writer.id_deleted.get(i)
            if t_del is not None and t_del <= cur["t_end"]:
                deletes_seen += 1
                continue
            history = writer.id_paths.get(i, set())
            listed = sorted(p for p in history if p in cur["files"])
            at_parse = {p: cur.get("no_dag_files", {}).get(p, "loaded") for p in listed}
            errs = [round_kinds[p] for p in history if p in round_kinds]
            if any(k not in DAGBAG_RACE_ERRORS for k in errs):
                cause = IMPORT
            elif errs:
                cause = RACE
            elif not listed:
                window = (cur["t_start"] - 0.002, cur["t_list"] + 0.002)
                seen_gap = any(a <= window[1] and b >= window[0]
                               for a, b in (gaps or {}).get(i, []))
                cause = ABSENT if seen_gap else LISTING
            elif any(d is None for d in at_parse.values()):
                cause = RACE
            elif any(d != "loaded" and d not in writer.produced.get(p, set())
                     for p, d in at_parse.items()):
                cause = PARTIAL
            else:
                cause = OTHER
            vanished.append({
                "round": cur["round"], "dag_id": i, "cause": cause,
                "listed_paths": listed,
                "gone_at_parse": sorted(p for p, d in at_parse.items() if d is None),
                "previous_round_file": next((f for f, ids in prev["dags"].items() if i in ids),
                                            None),
                "writer_ops_within_15s": [
                    {"op": ev["op"], "path": ev["path"], "to": ev["to"],
                     "seconds_before_listing": round(cur["t_list"] - ev["t"], 3)}
                    for ev in events_by_id.get(i, [])
                    if cur["t_list"] - 15 <= ev["t"] <= cur["t_end"]],
                "b_killed_within_10s": killer.near(cur["t_list"]),
            })
    causes: dict[str, int] = {}
    for v in vanished:
        causes[v["cause"]] = causes.get(v["cause"], 0) + 1
    durations = [r["duration"] for r in rounds]
    by_dagsync = [v for v in vanished if v["cause"] in DAGSYNC_CAUSES]
    return {
        "rounds": len(rounds),
        "rounds_with_import_errors": error_rounds,
        "rounds_with_import_errors_dagsync": dagsync_error_rounds,
        "import_errors_by_kind": kinds,
        "import_errors": errors,
        "vanished_not_deleted": len(vanished),
        "vanished_by_cause": causes,
        "vanished_dagsync_causes": len(by_dagsync),
        "vanished_dagbag_race": causes.get(RACE, 0) + causes.get(LISTING, 0),
        "vanished": (by_dagsync + [v for v in vanished if v not in by_dagsync])[:100],
        "deletes_seen_vanishing": deletes_seen,
        "stale_after_delete": len(stale),
        "stale": dict(list(stale.items())[:50]),
        "ids_never_intended": sorted(never_intended),
        "dag_ids_per_round": {"min": min((len(ids_of(r)) for r in rounds), default=0),
                              "max": max((len(ids_of(r)) for r in rounds), default=0)},
        "round_seconds": ({"min": round(min(durations), 3),
                           "median": round(statistics.median(durations), 3),
                           "max": round(max(durations), 3)} if durations else {}),
    }


# --- the run ------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return res.stdout.strip()

    import dagsync

    src = hashlib.sha256()
    for f in sorted((ROOT / "dagsync").rglob("*.py")):
        src.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    cpu = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(),
            "python": platform.python_version(), "dagsync": dagsync.__version__,
            "commit": git("rev-parse", "--short", "HEAD"),
            "dirty": bool(git("status", "--porcelain", "--", "dagsync")),
            "dagsync_source_sha256": src.hexdigest()[:16]}


def log_counts(node: TestNode) -> dict[str, Any]:
    text = node.log.read_text(errors="replace") if node.log.exists() else ""
    lines = text.splitlines()
    def pick(word: str) -> list[str]:
        return [ln for ln in lines if f" {word} " in ln]
    warnings, errs = pick("WARNING"), pick("ERROR")
    tracebacks = text.count("Traceback (most recent call last)")
    def sample(ls: list[str]) -> list[str]:
        seen: dict[str, str] = {}
        for ln in ls:
            key = re.sub(r"[0-9]+", "#", ln.split(" ", 3)[-1])[:100]
            seen.setdefault(key, ln[:300])
        return list(seen.values())[:12]
    # On a receive-only folder nobody edits, a "local edit/delete" is dagsync's own apply
    # that a SIGKILL cut off before the index recorded it (seen after a restart).
    false_local = [ln for ln in lines if "on a receive-only folder" in ln]
    return {"lines": len(lines), "warnings": len(warnings), "errors": len(errs),
            "tracebacks": tracebacks, "receive_only_local_changes": len(false_local),
            "receive_only_samples": [ln[:300] for ln in false_local[:5]],
            "warning_samples": sample(warnings),
            "error_samples": sample(errs)}


def annotate_window(sample: dict[str, Any], times: list[float], b_log: str,
                    period: float) -> None:
    """For a gap or overlap that follows a rename: how B's agent applied that rename (one
    move, or a delete and a create in separate steps), and how busy the writer was."""
    renames = [o for o in sample.get("writer_ops", []) if o["op"] == "rename"]
    if not renames:
        return
    old, new = renames[-1]["path"], renames[-1]["to"]
    if f"moved {old} to {new}" in b_log:
        how = "one move on B"
    elif f"deleted {old} from" in b_log and f"updated {new} from" in b_log:
        how = "B deleted the old name and fetched the new one in separate steps"
    else:
        how = "not found in B's log"
    t = sample["t"] - renames[-1]["seconds_before"]
    sample["b_applied_rename_as"] = how
    sample["writer_changes_within_1s"] = sum(1 for x in times if abs(x - t) <= 0.5)
    if how == "one move on B" and sample["seconds"] <= 2 * period:
        sample["probe_artifact"] = True


def read_rounds(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(ln) for ln in path.read_text().split("\n")[:-1] if ln]  # whole lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=3.0, help="writer duration (default 3)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--venv", default=DEFAULT_VENV)
    ap.add_argument("--airflow-version", default=DEFAULT_AIRFLOW)
    ap.add_argument("--kill-every", type=float, default=20.0,
                    help="mean seconds between kill -9 of B's agent (0: never)")
    ap.add_argument("--interval", type=float, default=0.5, help="pause between DagBag rounds")
    ap.add_argument("--receiver-mode", default="receive-only",
                    choices=("receive-only", "send-receive"))
    ap.add_argument("--scan-interval", default="60s", help="agents' scan_interval")
    ap.add_argument("--min-files", type=int, default=30)
    ap.add_argument("--max-files", type=int, default=120)
    ap.add_argument("--no-control", action="store_true",
                    help="no second DagBag loop on the writer's own folder (A)")
    ap.add_argument("--keep", action="store_true", help="keep the work dir (kept on failure)")
    ap.add_argument("--out", default=str(HERE / "results"), help="results directory")
    args = ap.parse_args()

    info = ensure_venv(Path(args.venv), args.airflow_version)
    at_start = machine()  # others may commit while this runs: compare at the end
    work = Path(tempfile.mkdtemp(prefix="dagsync-airflow-soak-"))
    log(f"work dir {work}")
    airflow = Airflow(Path(args.venv), work / "airflow_home")
    nodes: dict[str, TestNode] = {}
    watchers: dict[str, subprocess.Popen[bytes]] = {}

    def on_signal(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    ok = False
    try:
        airflow.migrate()
        nodes = make_nodes(work / "nodes", ["a", "b"], modes={"b": args.receiver_mode},
                           extra={"scan_interval": args.scan_interval})
        a, b = nodes["a"], nodes["b"]
        corpus = seed(airflow, a.dags, work / "scratch")
        n_ids = sum(len(v) for v in corpus.ids.values())
        log(f"seeded A with {len(corpus.files)} example DAG files ({n_ids} DAGs); dropped "
            f"{len(corpus.dropped)}; {len(corpus.copy_ids)} can be copied under new ids, "
            f"{len(corpus.rename_stable)} renamed without changing their ids")
        a.start()
        b.start()
        wait_converged([a, b], 60)
        # B's folder, the one under test; and A's, a control where every rename is one
        # atomic rename(2) and nothing passes through dagsync.
        watched = {"b": b} if args.no_control else {"b": b, "a": a}
        stop_file = work / "watcher.stop"
        for name, node in watched.items():
            watchers[name] = airflow.start_watcher(node.dags, work / f"rounds_{name}.jsonl",
                                                   stop_file, args.interval,
                                                   work / f"watcher_{name}.err")
        deadline = time.monotonic() + 120
        for name, proc in watchers.items():
            while not read_rounds(work / f"rounds_{name}.jsonl"):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"watcher on {name} did not produce a round:\n"
                                     f"{(work / f'watcher_{name}.err').read_text()[-3000:]}")
                time.sleep(0.2)
        log(f"DagBag is parsing {' and '.join(watched)}; writing for {args.minutes} min, "
            f"killing B every ~{args.kill_every:.0f} s")

        rng = random.Random(args.seed)
        writer = Writer(a.dags, corpus, random.Random(rng.random()), args.min_files,
                        args.max_files)
        killer = Killer(b, random.Random(rng.random()), args.kill_every)
        checker = TornChecker(b.dags, writer)
        changes_file, prober_stop = work / "b_listings.jsonl", work / "prober.stop"
        prober = subprocess.Popen(
            [sys.executable, str(HERE / "prober.py"), "--folder", str(b.dags), "--out",
             str(changes_file), "--stop-file", str(prober_stop)], start_new_session=True)
        watchers["prober"] = prober
        stop, stop_checkers = threading.Event(), threading.Event()
        thread_errors: list[str] = []
        threads = [threading.Thread(target=writer.run, args=(stop, thread_errors))]
        if args.kill_every > 0:
            threads.append(threading.Thread(target=killer.run, args=(stop, thread_errors)))
        checkers = [threading.Thread(target=checker.run, args=(stop_checkers,))]
        started = time.monotonic()
        for t in [*threads, *checkers]:
            t.start()
        try:
            end = started + args.minutes * 60
            while time.monotonic() < end and not stop.is_set():
                time.sleep(1)
                if any(w.poll() is not None for w in watchers.values()):
                    thread_errors.append("a watcher or the prober exited early")
                    break
        finally:
            stop.set()
            for t in threads:
                t.join()
        wrote_for = time.monotonic() - started
        if b.proc is None or b.proc.poll() is not None:
            b.start()
        log(f"writer stopped after {writer.files_changed} changes; waiting for convergence")
        quiet = time.monotonic()
        wait_converged([a, b], 180)
        converge_s = time.monotonic() - quiet
        # Let each watcher take two full rounds of the converged folders, then stop them.
        converged_at = time.monotonic()
        for name in watched:
            proc, path = watchers[name], work / f"rounds_{name}.jsonl"
            while (sum(1 for r in read_rounds(path) if r["t_list"] > converged_at) < 2
                   and proc.poll() is None):
                time.sleep(0.2)
        stop_checkers.set()
        for t in checkers:
            t.join()
        stop_file.touch()
        prober_stop.touch()
        for proc in watchers.values():
            proc.wait(120)
        rounds = {name: read_rounds(work / f"rounds_{name}.jsonl") for name in watched}
        gaps_report, gaps_by_id = fs_gaps(read_rounds(changes_file), writer, killer,
                                          b.log.read_text(errors="replace"))
        # For a later look at a kept work dir: the writer's every step, on the same clock.
        (work / "writer_events.json").write_text(json.dumps(
            {"monotonic_to_wall": time.time() - time.monotonic(), "events": writer.events,
             "kills": killer.windows}))

        final_a = airflow.dagbag_once(a.dags)
        final_b = airflow.dagbag_once(b.dags)
        ids_a, ids_b = ids_of(final_a), ids_of(final_b)
        model_ids = {i for ids in writer.ids.values() for i in ids}
        files_b = {p.relative_to(b.dags).as_posix(): p.read_bytes()
                   for p in b.dags.rglob("*.py")}
        analysis = analyse(rounds["b"], writer, killer, gaps_by_id)
        control = analyse(rounds["a"], writer, killer, None) if "a" in rounds else None
        if control is not None:  # A's own half-written files are the writer's, not torn
            control["vanished"] = control["vanished"][:20]
            control["import_errors"] = control["import_errors"][:10]
        result: dict[str, Any] = {
            "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "command": "python bench/airflow_soak/run.py " + " ".join(sys.argv[1:]),
            "machine": machine(),
            "code_changed_during_run":
                machine()["dagsync_source_sha256"] != at_start["dagsync_source_sha256"],
            "commit_at_start": at_start["commit"],
            "airflow": info,
            "config": {"minutes": args.minutes, "seed": args.seed,
                       "kill_every_s": args.kill_every, "dagbag_interval_s": args.interval,
                       "receiver_mode": args.receiver_mode,
                       "scan_interval": args.scan_interval, "grace_s": GRACE_S},
            "corpus": {"example_files": len(corpus.files), "example_dags": n_ids,
                       "dropped": corpus.dropped, "copyable": len(corpus.copy_ids),
                       "not_copyable": corpus.not_copyable,
                       "rename_changes_ids": sorted(set(corpus.ids) - corpus.rename_stable)},
            "writer": {"seconds": round(wrote_for, 1), "files_changed": writer.files_changed,
                       "ops": writer.ops, "write_modes": writer.write_modes,
                       "bursts": writer.bursts, "bytes_written": writer.bytes_written,
                       "files_at_end": len(writer.model), "dag_ids_at_end": len(model_ids)},
            "kills": killer.kills, "restarts": killer.restarts,
            "restart_seconds": ({"min": round(min(killer.restart_seconds), 2),
                                 "max": round(max(killer.restart_seconds), 2)}
                                if killer.restart_seconds else {}),
            "torn_check": {"passes": checker.passes, "files_checked": checker.files_checked,
                           "bytes_compared": checker.bytes_compared,
                           "torn_files_seen": len(checker.torn), "torn": checker.torn,
                           "files_never_written_by_the_writer": checker.foreign,
                           "dagsync_temp_names_seen_in_folder": checker.temp_seen},
            "parse": analysis,
            "parse_control_a": control,
            "fs_gaps_b": gaps_report,
            "final": {
                "converge_seconds_after_writes_stop": round(converge_s, 2),
                "dag_ids_a": len(ids_a), "dag_ids_b": len(ids_b),
                "equal_a_b": ids_a == ids_b,
                "only_on_a": sorted(ids_a - ids_b), "only_on_b": sorted(ids_b - ids_a),
                "equal_to_writer_model": ids_a == model_ids and ids_b == model_ids,
                "missing_vs_model": sorted(model_ids - ids_b),
                "extra_vs_model": sorted(ids_b - model_ids),
                "import_errors_a": len(final_a["errors"]),
                "import_errors_b": len(final_b["errors"]),
                "files_b_equal_model": files_b == writer.model,
            },
            "agent_logs": {"a": log_counts(a), "b": log_counts(b)},
            "harness_errors": thread_errors,
        }
        fin = result["final"]
        local_b = result["agent_logs"]["b"]["receive_only_local_changes"]
        checks = {
            "no harness errors": not thread_errors,
            "0 rounds with import errors on B (but DagBag's own race)":
                analysis["rounds_with_import_errors_dagsync"] == 0,
            "0 DAGs vanished on B for a reason dagsync answers for":
                analysis["vanished_dagsync_causes"] == 0,
            "0 torn files seen on B": not checker.torn,
            "0 deleted DAGs still shown after the grace": analysis["stale_after_delete"] == 0,
            "0 DAG ids nobody wrote": not analysis["ids_never_intended"],
            "same DAG ids on A and B": fin["equal_a_b"],
            "DAG ids as the writer made them": fin["equal_to_writer_model"],
            "B's files equal the writer's": fin["files_b_equal_model"],
            "0 local changes reported on B (nobody edits B's folder)":
                args.receiver_mode != "receive-only" or local_b == 0,
            "final DagBags without import errors":
                not fin["import_errors_a"] and not fin["import_errors_b"],
        }
        ok = all(checks.values())
        result["checks"] = checks
        result["ok"] = ok
        if not ok or args.keep:
            result["work_dir"] = str(work)
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        out_path = out_dir / f"{dt.datetime.now(dt.UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
        out_path.write_text(json.dumps(result, indent=1, sort_keys=False) + "\n")
        summary(result, out_path)
        return 0 if ok else 1
    finally:
        for proc in watchers.values():
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
        for node in nodes.values():
            with contextlib.suppress(Exception):
                node.stop()
            node.cleanup()
        if ok and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            log(f"work dir kept: {work}")


def summary(r: dict[str, Any], path: Path) -> None:
    p, t, f, g = r["parse"], r["torn_check"], r["final"], r["fs_gaps_b"]
    c = r.get("parse_control_a")
    print()
    print(f"Airflow soak: apache-airflow {r['airflow']['airflow']} "
          f"(constraints: {r['airflow'].get('constraints')}), {r['writer']['seconds']:.0f} s")
    print(f"  corpus           {r['corpus']['example_files']} example files, "
          f"{r['corpus']['example_dags']} DAGs ({len(r['corpus']['dropped'])} dropped)")
    print(f"  writer           {r['writer']['files_changed']} changes {r['writer']['ops']}")
    print(f"  B killed -9      {r['kills']} times, restarted {r['restarts']}")
    print(f"  parse rounds B   {p['rounds']} (DagBag {p['round_seconds']} s)")
    print(f"  import errors B  {p['rounds_with_import_errors_dagsync']} rounds for a cause "
          f"dagsync answers for   [must be 0]; {p['rounds_with_import_errors']} in all "
          f"{p['import_errors_by_kind'] or ''}")
    print(f"  DAGs vanished B  {p['vanished_dagsync_causes']} for a cause dagsync answers for"
          f"   [must be 0]; by cause: {p['vanished_by_cause'] or 'none'}; "
          f"{p['deletes_seen_vanishing']} deletes seen")
    if c is not None:
        print(f"  control on A     {c['rounds']} rounds; import errors in "
              f"{c['rounds_with_import_errors']} {c['import_errors_by_kind'] or ''}; "
              f"vanished by cause: {c['vanished_by_cause'] or 'none'}")
    print(f"  B's folder       {g['listings']} listings ({g['seconds_per_listing']} s apart): "
          f"{g['gaps']} gaps (a DAG's "
          f"file under neither name), {g['gaps_without_a_kill']} without a kill "
          f"{g['durations_without_a_kill']}, {g['gaps_across_a_kill']} across a kill "
          f"{g['durations_across_a_kill']}; {g['overlaps']} overlaps (under both names) "
          f"{g['overlap_durations']}")
    print(f"  stale deletes    {p['stale_after_delete']} shown > {GRACE_S:.0f} s after delete")
    print(f"  B's log          {r['agent_logs']['b']['receive_only_local_changes']} local "
          f"changes reported on a receive-only folder nobody edits   [must be 0]; "
          f"{r['agent_logs']['b']['errors']} ERROR lines")
    print(f"  torn files       {t['torn_files_seen']} in {t['files_checked']} reads, "
          f"{t['bytes_compared']:,} bytes compared   [must be 0]")
    print(f"  final            A {f['dag_ids_a']} ids, B {f['dag_ids_b']} ids, equal "
          f"{f['equal_a_b']}, as written {f['equal_to_writer_model']}, files equal "
          f"{f['files_b_equal_model']} (converged {f['converge_seconds_after_writes_stop']} s "
          f"after the last write)")
    if r["harness_errors"]:
        print(f"  harness errors   {r['harness_errors']}")
    if r["code_changed_during_run"]:
        print(f"  WARNING: dagsync changed during the run ({r['commit_at_start']} -> "
              f"{r['machine']['commit']}): agents may have run different code")
    failed = [k for k, v in r["checks"].items() if not v]
    print(f"  {'OK' if r['ok'] else 'FAILED: ' + '; '.join(failed)}; results: {path}")


if __name__ == "__main__":
    sys.exit(main())
