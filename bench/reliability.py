#!/usr/bin/env python3
"""The fault and adversary campaign in one command; regenerates docs/reliability.md.

    python bench/reliability.py [--soak N] [--sim-seeds S] [--airflow [--airflow-minutes M]]
    python bench/reliability.py --render-only   # redo the doc: embedded test figures + latest soak

(a) Runs the fault and adversary tests with real agents and the deterministic simulation:

        DAGSYNC_SOAK=N python -m pytest -q tests/test_faults.py \\
            tests/test_crash_and_hostile.py tests/sim -p no:cacheprovider \\
            -p dagsync_reliability_plugin --junitxml=... -o junit_logging=system-out

    and reads each test's outcome and duration from the JUnit XML. This file is also the
    pytest plugin loaded with `-p` (through a link in a temp dir): without touching
    the tests, it counts what they do not report themselves -- SIGKILL/SIGSTOP actually
    delivered to agents and agent starts (tests/cluster.py TestNode), bytes compared by
    the convergence checks that held and by the kill -9 test's after-kill comparisons,
    refusals and rejections in every agent's log, and every simulation run (seed,
    topology, nodes, invariants violated, old (fixed) behaviour replayed, conflicts, refusals).
(b) Reads the latest Airflow soak (bench/airflow_soak/results/*.json), or runs it first
    with --airflow (bench/airflow_soak/run.py --minutes M).
(c) Writes docs/reliability.md: each fault and attack, how many times, what held, the
    figures of this run, the machine, the date, and the command to refresh it. The
    figures are also embedded in the doc (an HTML comment) so --render-only can redo the
    text without rerunning.

Exit status: 0 when every test passed or failed as expected (strict xfail = a regression
story replaying the old, fixed behaviour),
1 otherwise (the doc is written either way and says what failed).
"""

from __future__ import annotations

import argparse
import ast
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "reliability.md"
SOAK_RESULTS = ROOT / "bench" / "airflow_soak" / "results"
TEST_FILES = ["tests/test_faults.py", "tests/test_crash_and_hostile.py", "tests/sim"]
FIGURES_MARK = "<!-- reliability-figures"
PLUGIN = "dagsync_reliability_plugin"

# --- the pytest plugin (`-p dagsync_reliability_plugin`) ---------------------------------
# Counts per test, keyed by the test's node id; written to $DAGSYNC_RELIABILITY_OUT at
# the end of the session. Only wraps harness functions; never changes what they do.

REFUSAL_PATTERNS = {
    "refused remote entry": "remote entries refused (paths, names, sizes)",
    "does not match its hash": "content not matching its announced hash",
    "frame length": "oversize frame lengths",
    "unknown message type": "unknown message types",
    "expected Hello first": "messages before the handshake",
    "response to unknown request": "unsolicited responses",
    "which is not shared": "requests for folders not shared",
    "not pinned": "unpinned keys",
    "too many unauthenticated connections": "connections over the unauthenticated cap",
    "No space left on device": "writes failed for a full disk (old file kept)",
    "Operation not permitted": "writes refused by the file system (old file kept)",
    "Read-only file system": "writes refused by the file system (old file kept)",
}

_current: list[str] = [""]
_in_cleanup: list[bool] = [False]
_counts: dict[str, dict[str, Any]] = {}
_sim: list[dict[str, Any]] = []


def _bump(key: str, n: int = 1) -> None:
    test = _counts.setdefault(_current[0], {})
    test[key] = test.get(key, 0) + n


def _size(snap: dict[str, tuple[object, ...]]) -> int:
    return sum(len(v[0]) for v in snap.values() if isinstance(v[0], bytes | str))


def _install_wrappers() -> None:
    import signal

    from tests import cluster

    node_cls = cluster.TestNode
    real_signal, real_start, real_cleanup = node_cls.signal, node_cls.start, node_cls.cleanup
    real_converged, real_snapshot = cluster.converged, cluster.snapshot

    def signal_(self: Any, sig: int) -> None:
        real_signal(self, sig)
        if _in_cleanup[0]:
            return  # the fixture's teardown kill is not a fault
        name = {signal.SIGKILL: "sigkill", signal.SIGSTOP: "sigstop",
                signal.SIGTERM: "sigterm", signal.SIGHUP: "sighup"}.get(sig)
        if name:
            _bump(name)

    def start(self: Any) -> None:
        real_start(self)
        _bump("agent_starts")

    def cleanup(self: Any) -> None:
        _in_cleanup[0] = True
        try:
            real_cleanup(self)
        finally:
            _in_cleanup[0] = False
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return
        for pattern in REFUSAL_PATTERNS:
            n = text.count(pattern)
            if n:
                _bump(f"log:{pattern}", n)

    def converged(nodes: Any, meta: bool = True) -> bool:
        nodes = list(nodes)
        held: bool = real_converged(nodes, meta)
        if held:  # what the check that held compared: every node's copy of every file
            snaps = [real_snapshot(n.dags, meta) for n in nodes]
            _bump("convergence_checks_held")
            _bump("bytes_compared", sum(_size(s) for s in snaps))
            _bump("files_compared", sum(len(s) for s in snaps))
        return held

    node_cls.signal = signal_  # type: ignore[method-assign]
    node_cls.start = start  # type: ignore[method-assign]
    node_cls.cleanup = cleanup  # type: ignore[method-assign]
    cluster.converged = converged

    try:
        from tests import test_crash_and_hostile as crash
    except ImportError:
        return
    real_visible = crash._visible_files

    def visible(root: Path) -> dict[str, bytes]:
        out: dict[str, bytes] = real_visible(root)
        if _current[0].split("::")[-1].startswith("test_kill9"):
            _bump("bytes_compared", sum(len(v) for v in out.values()))
            _bump("files_compared", len(out))
        return out

    crash._visible_files = visible


def _wrap_sim() -> None:
    try:
        from tests.sim import test_sim
    except ImportError:
        return
    real_run = getattr(test_sim, "run", None)
    if real_run is None:
        return

    def run(cfg: Any) -> Any:
        res = real_run(cfg)
        rules = cfg.rules.label() if hasattr(cfg.rules, "label") else str(cfg.rules)
        _sim.append({
            "test": _current[0], "seed": cfg.seed, "topology": cfg.topology,
            "nodes": cfg.nodes, "steps": cfg.steps, "rules": rules,
            "violations": len(res.violations), "known": bool(getattr(res, "known", False)),
            "triggers": dict(getattr(res, "triggers", {})),
            "conflicts": getattr(res, "conflicts", 0), "archived": getattr(res, "archived", 0),
            "refused": getattr(res, "refused", 0), "versions": getattr(res, "versions", 0),
            "breaks": getattr(getattr(res, "stats", None), "breaks", 0),
            "events": getattr(res, "events", 0),
        })
        return res

    test_sim.run = run


def pytest_collection_finish(session: Any) -> None:
    _install_wrappers()
    _wrap_sim()


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _current[0] = nodeid


def pytest_runtest_logfinish(nodeid: str, location: Any) -> None:
    _current[0] = ""


def pytest_sessionfinish(session: Any, exitstatus: int) -> None:
    out = os.environ.get("DAGSYNC_RELIABILITY_OUT")
    if out:
        Path(out).write_text(json.dumps({"tests": _counts, "sim": _sim}))


# --- running ---------------------------------------------------------------------------


def run_tests(soak: int, sim_seeds: int | None, work: Path) -> dict[str, Any]:
    xml, counts = work / "junit.xml", work / "counts.json"
    # The plugin is this file, reached through a link in a private directory: putting
    # bench/ itself on the path would let bench/profile.py shadow the standard library.
    plugin_dir = work / "plugin"
    plugin_dir.mkdir()
    (plugin_dir / f"{PLUGIN}.py").symlink_to(Path(__file__).resolve())
    env = {**os.environ, "DAGSYNC_SOAK": str(soak), "DAGSYNC_RELIABILITY_OUT": str(counts),
           "PYTHONPATH": os.pathsep.join(
               [str(plugin_dir), str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    if sim_seeds is not None:
        env["DAGSYNC_SIM_SEEDS"] = str(sim_seeds)
    cmd = [sys.executable, "-m", "pytest", "-q", *TEST_FILES, "-p", "no:cacheprovider",
           "-p", PLUGIN, f"--junitxml={xml}", "-o", "junit_logging=system-out"]
    print(f"$ DAGSYNC_SOAK={soak}"
          + (f" DAGSYNC_SIM_SEEDS={sim_seeds}" if sim_seeds is not None else "")
          + " python " + " ".join(cmd[1:]), flush=True)
    started = time.monotonic()
    proc = subprocess.run(cmd, cwd=ROOT, env=env)
    wall = time.monotonic() - started
    tests = parse_junit(xml) if xml.exists() else []
    if not tests:
        raise SystemExit(f"pytest ran no tests (exit {proc.returncode}); "
                         f"{DOC.relative_to(ROOT)} left as it was")
    extra = json.loads(counts.read_text()) if counts.exists() else {"tests": {}, "sim": []}
    for t in tests:
        t["counts"] = extra["tests"].get(t["nodeid"], {})
    return {"exit": proc.returncode, "seconds": round(wall, 1), "tests": tests,
            "sim": extra["sim"], "soak": soak,
            "sim_seeds_env": sim_seeds, "command": " ".join(cmd[1:])}


def parse_junit(path: Path) -> list[dict[str, Any]]:
    out = []
    for case in ET.parse(path).getroot().iter("testcase"):
        classname, name = case.get("classname", ""), case.get("name", "")
        module = classname.replace(".", "/") + ".py"
        outcome, detail = "passed", ""
        for child in case:
            if child.tag in ("failure", "error"):
                outcome = "failed" if child.tag == "failure" else "error"
                detail = (child.get("message") or "")[:400]
            elif child.tag == "skipped":
                kind = child.get("type", "")
                outcome = "xfailed" if kind == "pytest.xfail" else "skipped"
                detail = (child.get("message") or "")[:600]
        stdout = "".join(c.text or "" for c in case if c.tag == "system-out")
        out.append({"nodeid": f"{module}::{name}", "module": module, "name": name,
                    "func": name.split("[")[0], "outcome": outcome, "detail": detail,
                    "seconds": round(float(case.get("time", "0")), 2),
                    "stdout": stdout[-2000:]})
    return out


def latest_soak() -> dict[str, Any] | None:
    files = sorted(SOAK_RESULTS.glob("*.json")) if SOAK_RESULTS.is_dir() else []
    if not files:
        return None
    data: dict[str, Any] = json.loads(files[-1].read_text())
    data["_file"] = files[-1].relative_to(ROOT).as_posix()
    return data


def run_soak(minutes: float) -> None:
    cmd = [sys.executable, str(ROOT / "bench" / "airflow_soak" / "run.py"),
           "--minutes", str(minutes)]
    print("$ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=ROOT)  # its verdict is in its results file


def docstrings() -> dict[str, str]:
    """The first line of each test function's docstring, by function name."""
    out: dict[str, str] = {}
    for f in [ROOT / "tests" / "test_faults.py", ROOT / "tests" / "test_crash_and_hostile.py",
              *sorted((ROOT / "tests" / "sim").glob("test_*.py"))]:
        try:
            tree = ast.parse(f.read_text())
        except (OSError, SyntaxError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test"):
                doc = ast.get_docstring(node) or ""
                out[node.name] = " ".join(doc.split())
    return out


def source_sha() -> str:
    """One hash of dagsync/ and tests/ as they are on disk (others may commit meanwhile)."""
    import hashlib

    h = hashlib.sha256()
    for sub in ("dagsync", "tests"):
        for f in sorted((ROOT / sub).rglob("*.py")):
            h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


def machine() -> dict[str, Any]:
    def git(*args: str) -> str:
        res = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True)
        return res.stdout.strip()

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        kb = int(Path("/proc/meminfo").read_text().split()[1])
        mem = f"{kb / 1024 / 1024:.0f} GiB"
    except (OSError, ValueError, IndexError):
        pass
    import dagsync

    return {"platform": platform.platform(), "cpu": cpu, "cores": os.cpu_count(), "ram": mem,
            "python": platform.python_version(), "dagsync": dagsync.__version__,
            "commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted": bool(git("status", "--porcelain", "--", "dagsync", "tests"))}


# --- the catalogue: what each test does to the agents ----------------------------------
# Times are from the test's own parameters (scaled by DAGSYNC_SOAK where the test says
# so); `measured` adds what the plugin counted in this run.

Times = Callable[[int, dict[str, Any]], str]


def _fixed(text: str) -> Times:
    return lambda soak, c: text


def _kills(soak: int, c: dict[str, Any]) -> str:
    return (f"{5 * soak} kill -9 cycles (5 x DAGSYNC_SOAK); {c.get('sigkill', 0)} SIGKILLs "
            f"delivered, {c.get('agent_starts', 0)} agent starts")


def _blackhole(soak: int, c: dict[str, Any]) -> str:
    if soak < 2:
        return "not run (needs DAGSYNC_SOAK >= 2)"
    secs = 25 * max(1, soak // 2)
    return f"one {secs} s hang (25 x max(1, DAGSYNC_SOAK // 2) s), ~{secs} edits through it"


CATALOGUE: dict[str, tuple[str, str, str, Times, str]] = {
    # func: (group, fault or attack, what is done, times, what must hold)
    "test_kill9_during_large_transfer_never_leaves_a_torn_file": (
        "crash", "kill -9 of the receiver during a large transfer",
        "SIGKILL at a random 0.05-0.8 s into a 39.7 MB transfer (60 x 256 KiB + 24 MiB), "
        "restart, again", _kills,
        "after every kill each visible file is byte-identical to the source (no torn or "
        "foreign file); no temp file survives a restart; converges"),
    "test_blackholed_link_does_not_delay_the_others_and_heals": (
        "network", "a hung (blackholed) link a-c, TCP proxy",
        "6 edits on a and 6 on c while the link eats every byte", _fixed("12 edits, 1 hang"),
        "a -> b within 3 s each; c's edits reach a through b; converges after the heal"),
    "test_cut_link_heals_and_catches_up_from_the_last_sequence": (
        "network", "a cut link (connections reset, new ones refused)",
        "400 files in sync, then edits on both sides while cut, then heal",
        _fixed("1 cut, 2 edits across it"),
        "resumes from the last sequence number (1 new record, not 400); < 30 KB on the wire"),
    "test_slow_link_still_converges_a_burst": (
        "network", "a slow link (50 ms on every chunk, both ways)",
        "a 200-file burst from a and 5 files back from b", _fixed("205 files"),
        "converges in < 30 s with all 200 files"),
    "test_long_blackhole_is_detected_and_heals": (
        "network", "a hang longer than the keepalives", "one edit a second during the hang",
        _blackhole, "a -> b within 3 s each; a logs the hung link; reconnects after the heal"),
    "test_losing_an_established_link_is_logged_as_a_warning": (
        "network", "loss of a long-established link", "cut after the link is stable",
        _fixed("1"), "the loss is logged at WARNING"),
    "test_full_disk_on_the_receiver_keeps_the_old_file_and_resumes": (
        "disk", "a full disk on the receiver (tmpfs of 2-3 MB)",
        "a 4 MB new version of a 300 KB file; the DAG folder alone, or folder + state dir "
        "on one small disk", _fixed("2 layouts"),
        "ENOSPC reported and retried; old file intact; other files still arrive; no temp "
        "file left; converges when space returns"),
    "test_unwritable_target_is_reported_retried_and_converges": (
        "disk", "a target file that cannot be replaced (chattr +i, or a read-only bind)",
        "a new version of it arrives", _fixed("1"),
        "error names the file; other files move both ways; retried; converges after "
        "release; nothing archived as a conflict"),
    "test_retries_of_a_write_that_keeps_failing_back_off": (
        "disk", "a write that keeps failing", "6 s of failures with unrelated edits",
        _fixed("1"), "retries back off (1, 2, 5 ... s)"),
    "test_a_conflict_whose_apply_keeps_failing_is_archived_once": (
        "disk", "a conflict whose apply keeps failing", "retries every ~1 s",
        _fixed("1"), "the losing version is archived once"),
    "test_first_edit_of_a_file_present_at_first_start_is_not_a_conflict": (
        "state", "first edit of a file that predates dagsync", "edit after first sync",
        _fixed("1"), "not archived as a conflict (regression)"),
    "test_deleted_index_is_rebuilt_without_loss_or_resurrection": (
        "state", "index.db deleted while the agent is stopped",
        "meanwhile a deletes, edits and adds, and b's copy is edited", _fixed("1"),
        "no file lost, the delete not resurrected; b's edit made without an index is "
        "reverted to the cluster's version and kept in b's conflict archive (the trade-off)"),
    "test_corrupt_index_is_refused_with_a_clear_error_then_rebuilt": (
        "state", "index.db overwritten with 64 KB of garbage", "start the agent",
        _fixed("1"), "one-line error naming the file, exit 1; once moved away, rebuilt as "
        "above"),
    "test_corrupt_index_is_moved_aside_and_rebuilt": (
        "state", "index.db overwritten with 64 KB of garbage while the agent is stopped",
        "meanwhile a deletes, edits and adds, and b's copy is edited; start b",
        _fixed("1"), "the corrupt file is moved aside (index.db.corrupt-*) and the index "
        "rebuilt: no file lost, nothing resurrected, b's gap edit archived"),
    "test_a_file_rewritten_while_hashed_never_arrives_torn": (
        "files", "a file rewritten in place while hashed and sent",
        "2 s of in-place rewrites of 1 KB-2 MB with stalls mid-write",
        _fixed("> 20 versions"),
        "every content the receiver ever showed is one the writer produced"),
    "test_clock_ticks_stay_strictly_increasing_across_a_jump_back": (
        "clock", "the wall clock jumps back 1 h", "100 + 100 ticks, then 4 threads x 500",
        _fixed("2,200 ticks"), "strictly increasing, no duplicates; follows the wall again"),
    "test_an_edit_made_after_the_clock_jumped_back_still_wins": (
        "clock", "an edit made after the clock jumped back 1 h", "decide both ways",
        _fixed("1"), "a causal edit wins whatever the clock; concurrent edits are decided "
        "the same on both nodes"),
    "test_a_clock_that_went_back_is_pulled_forward_by_its_peers": (
        "clock", "a node whose clock went back 1 h", "observe a peer's clock",
        _fixed("1"), "its next tick is above the peer's"),
    "test_a_peer_clock_more_than_a_day_ahead_is_not_followed": (
        "clock", "a peer clock 1 day + 1 min ahead", "observe it", _fixed("1"),
        "not followed"),
    "test_unpinned_key_is_refused": (
        "adversary", "a peer with an unknown key", "SSH login with a fresh ed25519 key",
        _fixed("1"), "PermissionDenied; logged as not pinned"),
    "test_hostile_peer_is_refused_and_agent_keeps_serving": (
        "adversary", "a pinned peer sending hostile entries and frames",
        "9 entries (.., absolute, a/../../, through a symlinked dir, NUL, __pycache__, "
        "dagsync temp name, 2 escaping symlinks), a 2^31-byte frame length, an unknown "
        "message type", _fixed("11 bad inputs, 3 connections"),
        "nothing written outside or inside the root; each refused and logged; connection "
        "closed on bad frames; honest peer served; clean SIGTERM"),
    "test_unsolicited_response_and_out_of_order_messages_are_refused": (
        "adversary", "out-of-order and unsolicited messages",
        "a Response nobody asked for, an Index before the Hello, a Resend for a folder "
        "not shared", _fixed("3 connections"),
        "each connection closed and logged; nothing written; honest peer served"),
    "test_content_that_does_not_match_its_hash_is_never_written": (
        "adversary", "content that does not match its announced hash",
        "same size, different bytes, served to every request and retry", _fixed("1 file"),
        "never written, no temp left, not relayed; honest peer served"),
    "test_a_ping_flood_does_not_stop_the_agent_serving_an_honest_peer": (
        "adversary", "a ping flood", "2,000 Pings in 10 bursts", _fixed("2,000 messages"),
        "all answered; an honest edit still arrives within 2 s"),
    "test_connections_that_never_authenticate_are_dropped_and_do_not_block_peers": (
        "adversary", "connections that never authenticate",
        "40 TCP connections, half sending an SSH banner and nothing more",
        _fixed("40 connections"),
        "capped and closed within the login timeout + 5 s; the established honest link "
        "unaffected; a new honest connection served after"),
    "test_an_honest_peer_dialling_in_gets_through_a_sustained_connection_flood": (
        "adversary", "a sustained flood of idle connections",
        "40 idle connections kept open and reopened", _fixed("1"),
        "an honest peer that can only dial in gets through"),
}

PARTIAL_CAUSE = "listed, but DagBag parsed a version the writer never produced (partial)"

GROUPS = [("crash", "Crashes"), ("network", "Network faults (tests/faultnet.py proxy)"),
          ("disk", "The receiver's disk"), ("files", "Files changing under the agent"),
          ("state", "State database lost or corrupt"), ("clock", "Clocks"),
          ("adversary", "Adversaries")]


# --- rendering ---------------------------------------------------------------------------


def fmt_ms(d: dict[str, float] | None) -> str:
    if not d:
        return ""
    return f"{d['min_ms']:g}-{d['max_ms']:g} ms, median {d['median_ms']:g} ms"


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def verdict(outcome: str) -> str:
    return {"passed": "held",
            "xfailed": "**regression story** (strict xfail: replays the old, fixed behaviour)",
            "skipped": "skipped", "failed": "**FAILED**", "error": "**ERROR**"}.get(outcome,
                                                                               outcome)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def summarise(fig: dict[str, Any]) -> dict[str, Any]:
    tests = fig["tests"]["tests"]
    proc = [t for t in tests if not t["module"].startswith("tests/sim")]
    total: dict[str, int] = {}
    for t in tests:
        for k, v in t.get("counts", {}).items():
            total[k] = total.get(k, 0) + v
    outcomes: dict[str, int] = {}
    for t in tests:
        outcomes[t["outcome"]] = outcomes.get(t["outcome"], 0) + 1
    kill_test = [t for t in proc if t["func"].startswith("test_kill9")]
    sim = fig["tests"]["sim"]
    soak = fig.get("airflow")
    return {
        "outcomes": outcomes, "total": total, "kill_test": kill_test, "sim": sim,
        "bad": [t for t in tests if t["outcome"] in ("failed", "error")],
        "soak": soak,
        "refusals": {k: total.get(f"log:{k}", 0) for k in REFUSAL_PATTERNS},
    }


def render(fig: dict[str, Any]) -> str:
    s = summarise(fig)
    m, run = fig["machine"], fig["tests"]
    soak_n = run["soak"]
    docs = fig.get("docstrings", {})
    tests = run["tests"]
    by_func: dict[str, list[dict[str, Any]]] = {}
    for t in tests:
        by_func.setdefault(t["func"], []).append(t)
    L: list[str] = []
    w = L.append
    w("# dagsync reliability: faults, crashes and adversaries")
    w("")
    w(f"Generated by `python bench/reliability.py --soak {soak_n}"
      + (f" --sim-seeds {run['sim_seeds_env']}" if run.get("sim_seeds_env") else "")
      + f"` on {fig['when']}. Do not edit by hand: rerun that command to refresh it "
      "(`--airflow` also reruns the Airflow soak; `--render-only` redoes this text from "
      "the figures embedded at the end).")
    w("")
    w(f"Machine: {m['cpu'] or 'unknown CPU'}, {m['cores']} cores, {m['ram']}, "
      f"{m['platform']}, Python {m['python']}. dagsync {m['dagsync']} at commit "
      f"`{m['commit']}`" + (" with uncommitted changes in dagsync/ or tests/"
                            if m["uncommitted"] else "") + ".")
    w("")
    w(f"Tests: `DAGSYNC_SOAK={soak_n} python -m pytest -q {' '.join(TEST_FILES)} "
      f"-p no:cacheprovider` ({run['seconds']:.0f} s, pytest exit {run['exit']})."
      + (" **dagsync/ or tests/ changed on disk while the tests ran.**"
         if run.get("code_changed_during_run") else ""))
    w("")
    # headline
    o, tot = s["outcomes"], s["total"]
    kills = tot.get("sigkill", 0)
    soak = s["soak"]
    sim = s["sim"]
    w("## The figures of this run")
    w("")
    w("| | |")
    w("| --- | --- |")
    w(f"| tests | {o.get('passed', 0)} held, {o.get('xfailed', 0)} regression stories "
      "(strict xfail: the old, fixed behaviour replayed), "
      f"{o.get('skipped', 0)} skipped, {o.get('failed', 0) + o.get('error', 0)} failed |")
    kill_line = f"{kills} SIGKILLs to real agents in the fault tests"
    if soak:
        kill_line += (f" + {soak['kills']} in the Airflow soak, each followed by a restart "
                      f"({soak['restarts']})")
    w(f"| kill -9 cycles survived | {kill_line} |")
    w(f"| SIGSTOP hangs | {tot.get('sigstop', 0)}"
      + (" (SIGSTOP of a peer is exercised in tests/test_live.py, outside this run)"
         if not tot.get("sigstop") else "") + " |")
    bc = tot.get("bytes_compared", 0)
    bytes_line = (f"{fmt_bytes(bc)} in {tot.get('files_compared', 0):,} file copies compared "
                  "by checks that held")
    if soak:
        bytes_line += (f"; {fmt_bytes(soak['torn_check']['bytes_compared'])} in "
                       f"{soak['torn_check']['files_checked']:,} reads checked against the "
                       "writer's versions in the Airflow soak")
    w(f"| bytes compared | {bytes_line} |")
    lost = "0" if not s["bad"] else "see the failures below"
    if soak and not soak["final"]["files_b_equal_model"]:
        lost = "see the Airflow soak below"
    w(f"| files lost | {lost} (every convergence and equality assertion held"
      + ("" if lost == "0" else " except where noted") + ") |")
    torn = 0 if not any(t["outcome"] in ("failed", "error") and
                        ("torn" in t["func"] or "kill9" in t["func"]) for t in tests) else "?"
    torn_line = f"{torn} in the crash and rewrite-while-hashed tests"
    if soak:
        torn_line += f"; {soak['torn_check']['torn_files_seen']} in the Airflow soak"
    w(f"| torn files seen | {torn_line} |")
    refused = sum(v for k, v in s["refusals"].items()
                  if k not in ("No space left on device", "Operation not permitted",
                               "Read-only file system"))
    w(f"| bad inputs refused | {refused} refusals logged by the agents under attack "
      "(breakdown below) |")
    if sim:
        viol = sum(1 for r in sim if r["violations"])
        known = sum(1 for r in sim if r["violations"] and r["known"])
        w(f"| simulation | {len(sim):,} seeded runs, {viol} with an invariant violated "
          f"({known} explained by a known, triggered dagsync bug, {viol - known} unexplained) |")
    if soak:
        p = soak["parse"]
        w(f"| Airflow soak | {p['rounds']} DagBag rounds on the receiver, "
          f"{p.get('rounds_with_import_errors_dagsync', p['rounds_with_import_errors'])} "
          "with import errors caused by dagsync, "
          f"{p['vanished_dagsync_causes']} DAGs vanished for a cause dagsync answers for; "
          f"final DAG ids equal: {soak['final']['equal_a_b']} "
          f"([details](#the-real-client-airflows-dagbag-on-a-receiving-node)) |")
    w("")
    if s["bad"]:
        w("### Failed in this run")
        w("")
        for t in s["bad"]:
            w(f"- `{t['nodeid']}`: {cell(t['detail'])}")
        w("")
    # catalogue
    w("## Each fault and attack")
    w("")
    w("\"Times\" comes from the test's own parameters (scaled by `DAGSYNC_SOAK` where the "
      "test says so); where this run counted something the test does not report (signals "
      "delivered, agent starts, bytes compared, refusals in the agents' logs), it was "
      "counted by this script's pytest plugin, which wraps the harness "
      "(tests/cluster.py) without changing it.")
    w("")
    seen: set[str] = set()
    for group, title in GROUPS:
        funcs = [f for f, entry in CATALOGUE.items() if entry[0] == group and f in by_func]
        if not funcs:
            continue
        w(f"### {title}")
        w("")
        w("| fault or attack | what is done | times | what must hold | result | s |")
        w("| --- | --- | --- | --- | --- | --- |")
        for f in funcs:
            seen.add(f)
            _, fault, done, times, held = CATALOGUE[f]
            for t in by_func[f]:
                param = t["name"][len(f):]
                c = t.get("counts", {})
                extra = []
                if c.get("sigkill") and not f.startswith("test_kill9"):
                    extra.append(f"{c['sigkill']} SIGKILLs")
                if c.get("bytes_compared"):
                    extra.append(f"{fmt_bytes(c['bytes_compared'])} compared")
                refusals = {k: c[f"log:{k}"] for k in REFUSAL_PATTERNS if c.get(f"log:{k}")}
                if refusals:
                    extra.append("logged: " + ", ".join(f"{v} x \"{k}\""
                                                        for k, v in refusals.items()))
                how_many = times(soak_n, c) + (f" ({'; '.join(extra)})" if extra else "")
                res = verdict(t["outcome"])
                if t["outcome"] == "xfailed":
                    res += f": {t['detail'].removeprefix('reason: ')}"
                w(f"| {cell(fault + param)} | {cell(done)} | {cell(how_many)} | "
                  f"{cell(held)} | {cell(res)} | {t['seconds']:.1f} |")
        w("")
    others = [t for t in tests if t["func"] not in seen and not t["module"].startswith(
        "tests/sim")]
    if others:
        w("### Other tests in these files")
        w("")
        w("| test | what it checks | result | s |")
        w("| --- | --- | --- | --- |")
        for t in others:
            w(f"| `{t['name']}` | {cell(docs.get(t['func'], '')[:200])} | "
              f"{cell(verdict(t['outcome']))} | {t['seconds']:.1f} |")
        w("")
    # refusals
    w("### Bad inputs refused, by kind (from the agents' logs)")
    w("")
    w("| log line | meaning | count |")
    w("| --- | --- | --- |")
    for k, meaning in REFUSAL_PATTERNS.items():
        w(f"| `{k}` | {meaning} | {s['refusals'][k]} |")
    w("")
    # simulation
    sim_tests = [t for t in tests if t["module"].startswith("tests/sim")]
    w("## Deterministic simulation (tests/sim)")
    w("")
    w("Many in-memory nodes run dagsync's pure core (clock, reconcile, protocol, index "
      "logic) over a simulated network that drops, delays, duplicates, reorders and "
      "partitions messages, crashes nodes (losing what was not durable) and skews clocks "
      "by up to an hour; every seed replays identically. After healing: all nodes "
      "converge, each path's winner is the one SPEC guarantee 2 names, every losing "
      "version is archived, no delete is resurrected, no unverified content is applied.")
    w("")
    if sim:
        w("| rules | topology | runs | nodes | ok | violations, old behaviour replayed | "
          "violations, "
          "unexplained | conflicts | archived | corrupt content refused | link breaks |")
        w("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
        keys = sorted({(r["rules"], r["topology"]) for r in sim})
        for rules, topo in keys:
            rs = [r for r in sim if r["rules"] == rules and r["topology"] == topo]
            nodes = sorted({r["nodes"] for r in rs})
            w(f"| {rules} | {topo} | {len(rs)} | {nodes[0]}-{nodes[-1]} | "
              f"{sum(1 for r in rs if not r['violations'])} | "
              f"{sum(1 for r in rs if r['violations'] and r['known'])} | "
              f"{sum(1 for r in rs if r['violations'] and not r['known'])} | "
              f"{sum(r['conflicts'] for r in rs):,} | {sum(r['archived'] for r in rs):,} | "
              f"{sum(r['refused'] for r in rs):,} | {sum(r['breaks'] for r in rs):,} |")
        w("")
        triggers: dict[str, int] = {}
        for r in sim:
            if r["violations"]:
                for name in r["triggers"]:
                    triggers[name] = triggers.get(name, 0) + 1
        if triggers:
            w("Runs with a violation, by the known dagsync bug they triggered: "
              + ", ".join(f"`{k}` {v}" for k, v in sorted(triggers.items())) + ".")
            w("")
    w("| test | result | s |")
    w("| --- | --- | --- |")
    for t in sim_tests:
        res = verdict(t["outcome"])
        if t["outcome"] == "xfailed":
            res += f": {t['detail'].removeprefix('reason: ')}"
        w(f"| `{t['module'].removeprefix('tests/sim/')}::{t['name']}` | {cell(res)} | "
          f"{t['seconds']:.1f} |")
    w("")
    render_soak(w, soak)
    # how to refresh
    w("## Refreshing this page")
    w("")
    w("```")
    w(f"python bench/reliability.py --soak {soak_n}            # tests + latest Airflow soak")
    w(f"python bench/reliability.py --soak {soak_n} --airflow  # also reruns the soak (3 min)")
    w("python bench/airflow_soak/run.py --minutes 3         # the soak alone")
    w("```")
    w("")
    w("`--soak N` sets `DAGSYNC_SOAK=N` (kill -9 cycles = 5 x N; the long blackhole runs "
      "from N >= 2); `--sim-seeds S` sets `DAGSYNC_SIM_SEEDS` (seeds per topology). The "
      "process-level tests need root for tmpfs mounts and `chattr`; without it they skip "
      "(and fail under `CI`).")
    w("")
    w(f"{FIGURES_MARK}")
    w(json.dumps(strip(fig), separators=(",", ":")).replace("--", "-\\u002d"))
    w("-->")
    return "\n".join(L) + "\n"


def render_soak(w: Callable[[str], None], soak: dict[str, Any] | None) -> None:
    w("## The real client: Airflow's DagBag on a receiving node")
    w("")
    if not soak:
        w("No Airflow soak results yet: run `python bench/airflow_soak/run.py`.")
        w("")
        return
    a, wr, p, t, f, g = (soak["airflow"], soak["writer"], soak["parse"], soak["torn_check"],
                         soak["final"], soak["fs_gaps_b"])
    c = soak.get("parse_control_a")
    w(f"From `{soak['_file']}` ({soak['when']}; `{soak['command']}`): apache-airflow "
      f"{a['airflow']} in its own virtualenv (constraints file: {a.get('constraints')}). "
      f"Node A (send-receive) is the writer; node B ({soak['config']['receiver_mode']}) is "
      f"the folder Airflow parses: `DagBag(dag_folder=B, include_examples=False, "
      f"safe_mode=False)` every {soak['config']['dagbag_interval_s']} s, plus the same loop "
      "on A's folder as a control (A's renames are atomic and nothing there passes "
      "through dagsync).")
    w("")
    w(f"Corpus: Airflow's {soak['corpus']['example_files']} packaged example DAG files "
      f"({soak['corpus']['example_dags']} DAGs; {len(soak['corpus']['dropped'])} dropped "
      f"for import errors on A). For {wr['seconds']:.0f} s the writer made "
      f"{wr['files_changed']:,} changes ({', '.join(f'{k} {v}' for k, v in wr['ops'].items())}"
      f"; {wr['write_modes']['in_place_two_writes']} in place in two writes, "
      f"{wr['write_modes']['temp_and_rename']} editor-style temp + rename; {wr['bursts']} "
      f"bursts) while B's agent was killed with SIGKILL {soak['kills']} times and restarted "
      f"{soak['restarts']} times.")
    w("")
    w("| figure | value | must be |")
    w("| --- | --- | --- |")
    w(f"| DagBag rounds on B | {p['rounds']} (each {p['round_seconds'].get('min')}-"
      f"{p['round_seconds'].get('max')} s, median {p['round_seconds'].get('median')} s) | |")
    kinds = ", ".join(f"{k}: {v}" for k, v in p["import_errors_by_kind"].items()) or "none"
    w(f"| rounds with import errors on B, for a cause dagsync answers for | "
      f"{p.get('rounds_with_import_errors_dagsync', p['rounds_with_import_errors'])} | 0 |")
    w(f"| rounds with import errors on B, all causes | {p['rounds_with_import_errors']} "
      f"({kinds}; `file_gone_during_parse` is DagBag's own race) | |")
    w(f"| DAGs vanished on B, for a cause dagsync answers for | "
      f"{p['vanished_dagsync_causes']} | 0 |")
    w(f"| DAGs vanished on B, DagBag's own list-then-parse race | "
      f"{p['vanished_dagbag_race']} (control on A: "
      f"{(c or {}).get('vanished_dagbag_race', 'n/a')}) | (Airflow's) |")
    w(f"| deleted DAGs still shown > {soak['config']['grace_s']:.0f} s after the delete | "
      f"{p['stale_after_delete']} | 0 |")
    w(f"| torn files seen on B | {t['torn_files_seen']} in {t['files_checked']:,} reads "
      f"({fmt_bytes(t['bytes_compared'])} compared with the writer's versions) | 0 |")
    every = g.get("seconds_per_listing")
    every_txt = f"listed every {every * 1000:.1f} ms" if every else "listed every ~3 ms"
    if g.get("probe_artifacts_excluded"):
        every_txt += (f"; {g['probe_artifacts_excluded']} one-listing windows after a rename "
                      "B applied as one move left out as the prober's own walk")
    w(f"| B's folder without a DAG's file under either name ({every_txt}) | "
      f"{g['gaps']}: {g['gaps_without_a_kill']} without a kill "
      f"({fmt_ms(g['durations_without_a_kill']) or '-'}), {g['gaps_across_a_kill']} across "
      f"a kill ({fmt_ms(g['durations_across_a_kill']) or '-'}) | ideally 0 (a DagBag "
      "listing inside one counts above) |")
    w(f"| B's folder with a DAG's file under both names | {g['overlaps']} "
      f"({fmt_ms(g['overlap_durations']) or '-'}) | ideally 0 (a DagBag round inside one "
      "fails with a duplicate dag_id, counted above) |")
    logs_b = soak.get("agent_logs", {}).get("b", {})
    if "receive_only_local_changes" in logs_b:
        w(f"| local changes B reported on its receive-only folder (nobody edits it) | "
          f"{logs_b['receive_only_local_changes']} | 0 |")
    w(f"| final DAG ids, A / B | {f['dag_ids_a']} / {f['dag_ids_b']}, equal: "
      f"{f['equal_a_b']}; as the writer made them: {f['equal_to_writer_model']}; "
      f"files byte-equal: {f['files_b_equal_model']} | equal |")
    if c is not None:
        ckinds = ", ".join(f"{k}: {v}" for k, v in c["import_errors_by_kind"].items())
        causes = ", ".join(f"{k}: {v}" for k, v in c["vanished_by_cause"].items())
        half = (c["import_errors_by_kind"].get("torn_content", 0)
                + c["vanished_by_cause"].get(PARTIAL_CAUSE, 0))
        w(f"| control, DagBag on A's own folder | import errors in "
          f"{c['rounds_with_import_errors']} of {c['rounds']} rounds ({ckinds or 'none'}); "
          f"DAGs missing from a round: {causes or 'none'}"
          + (f" ({half} times DagBag on A read the writer's in-place write half done; B "
             "never showed a half-written file)" if half else "") + " | |")
    w("")
    w(f"Verdict of that run: **{'all checks held' if soak['ok'] else 'FAILED'}**"
      + ("" if soak["ok"] else ": " + "; ".join(k for k, v in soak["checks"].items()
                                                 if not v)) + ".")
    w("")
    findings = soak_findings(soak)
    if findings:
        w("What the soak found:")
        w("")
        for line in findings:
            w(f"- {line}")
        w("")


def _ops(sample: dict[str, Any]) -> str:
    ops = sample.get("writer_ops") or []
    steps = [f"{o['op']} `{o['path']}`" + (f" -> `{o['to']}`" if o["to"] else "")
             + f" {o['seconds_before'] * 1000:.0f} ms before" for o in ops[-3:]]
    text = "; ".join(steps) or "no writer step on it in the 2 s before"
    if sample.get("b_applied_rename_as"):
        text += (f" ({sample['b_applied_rename_as']}; the writer made "
                 f"{sample['writer_changes_within_1s']} changes within that second)")
    return text


def _distinct(samples: list[dict[str, Any]], n: int = 3) -> list[dict[str, Any]]:
    """One sample per event: the DAGs of one file share a window."""
    out, seen = [], set()
    for x in samples:
        if x["t"] not in seen:
            seen.add(x["t"])
            out.append(x)
    return out[:n]


def soak_findings(soak: dict[str, Any]) -> list[str]:
    p, g = soak["parse"], soak["fs_gaps_b"]
    local = soak.get("agent_logs", {}).get("b", {}).get("receive_only_local_changes", 0)
    out = []
    if soak.get("code_changed_during_run"):
        out.append(f"**dagsync's source changed while this soak ran** (commit "
                   f"{soak.get('commit_at_start')} -> {soak['machine']['commit']}): agents "
                   "started after the change ran the new code.")
    dup = p["import_errors_by_kind"].get("duplicate_dag_id", 0)
    if dup or g["overlaps"]:
        samples = _distinct(g.get("overlap_samples", []))
        out.append(
            f"B's folder held a DAG's file under two names at once {g['overlaps']} times "
            "(per DAG id) "
            f"({fmt_ms(g['overlap_durations'])}); {dup} DagBag rounds on B failed with "
            "`AirflowDagDuplicatedIdException` (Airflow shows it as an import error). A "
            "rename on A is one rename(2); dagsync moves B's copy with one rename(2) only "
            "when it pairs the delete with a create of the same content "
            "(`FolderEngine._apply_locked`, dagsync/remote_apply.py); otherwise the new name is "
            "put in place first and the old one deleted after. What the writer had just "
            "done: " + " | ".join(f"`{x['dag_id']}` ({x['seconds'] * 1000:.1f} ms): {_ops(x)}"
                                  for x in samples) + ".")
    if g["gaps"] or p["vanished_dagsync_causes"]:
        samples = _distinct(g.get("longest_gaps", g.get("samples", [])))
        out.append(
            f"B's folder held no file with a DAG {g['gaps']} times (per DAG id) although "
            "the writer had "
            f"not deleted it ({fmt_ms(g['durations_without_a_kill'])} without a kill, "
            f"{g['gaps_across_a_kill']} across a kill); {p['vanished_dagsync_causes']} "
            "DagBag listings on B fell in one. Within one batch B puts new files in place "
            "before it deletes (`FolderEngine._apply_locked`), so a gap means the old name's "
            "delete was applied in an earlier batch than the new name: the two halves of the "
            "rename reached B apart (how B applied each one is noted below). Airflow's DAG "
            "file processor lists the "
            "folder every `dag_dir_list_interval` (300 s by default), deactivates DAGs whose "
            "file is not in the list and parses only listed files, so a listing taken in a "
            "gap drops the DAG until the next listing. Longest: "
            + " | ".join(f"`{x['dag_id']}` ({x['seconds'] * 1000:.1f} ms): {_ops(x)}"
                         for x in samples) + ".")
    if local:
        out.append(
            f"**B's agent reported {local} local changes on its receive-only folder, which "
            "nobody edits**: dagsync's own applies, cut off by a SIGKILL before the index "
            "recorded them, taken for local edits after the restart (logged as `local edit "
            "of X on a receive-only folder`, archived as conflicts this node lost, and for "
            "files the index did not know yet removed until fetched again). See B's log "
            "samples in the results file; `repro_receiver.py` (kill during updates and "
            "creates) reproduces it.")
    else:
        out.append(
            f"After each of the {soak['kills']} SIGKILLs B's restarted agent reported no "
            "local change on its receive-only folder and archived nothing: what a kill cut "
            "off mid-apply was recorded, not taken for a local edit (also exercised by "
            "`repro_receiver.py`'s kills during a batch of updates and of new files).")
    if p["vanished_dagbag_race"]:
        out.append(
            f"{p['vanished_dagbag_race']} times a DAG was missing from one DagBag round on "
            "B although B's folder always held its file: DagBag lists the folder (os.walk, "
            "not atomic) and then parses file by file, so a rename during the listing or "
            "between listing and parsing hides the DAG for one round. The control loop on "
            "A, where renames are atomic and dagsync writes nothing, shows the same "
            f"({(soak.get('parse_control_a') or {}).get('vanished_dagbag_race', 'n/a')} "
            "times), so it is Airflow's and not counted against dagsync; so is an import "
            "error of kind `file_gone_during_parse` (DagBag checks `isfile`, then the "
            "loader opens the file).")
    out.append("Reproduce without Airflow: `python bench/airflow_soak/repro_receiver.py` "
               "(both-names and neither-name windows for moves into a new directory, an "
               "existing one and the same one; then SIGKILLs of the receiver inside a "
               "rename, during a batch of updates and during a batch of new files).")
    return out


def strip(fig: dict[str, Any]) -> dict[str, Any]:
    """The figures embedded in the doc: without bulky per-test stdout."""
    out = json.loads(json.dumps(fig))
    for t in out["tests"]["tests"]:
        t.pop("stdout", None)
    soak = out.get("airflow")
    if soak:
        for key in ("vanished", "import_errors", "stale"):
            soak["parse"][key] = soak["parse"][key][:5] if isinstance(
                soak["parse"][key], list) else {}
        if soak.get("parse_control_a"):
            soak["parse_control_a"]["vanished"] = []
            soak["parse_control_a"]["import_errors"] = []
        soak["agent_logs"] = {}
        for key in ("samples", "longest_gaps", "overlap_samples"):
            if key in soak["fs_gaps_b"]:
                soak["fs_gaps_b"][key] = soak["fs_gaps_b"][key][:3]
    return out


def embedded_figures() -> dict[str, Any]:
    text = DOC.read_text()
    start = text.index(FIGURES_MARK) + len(FIGURES_MARK)
    body = text[start: text.index("-->", start)].strip()
    data: dict[str, Any] = json.loads(body)
    return data


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--soak", type=int, default=1, help="DAGSYNC_SOAK for the tests")
    ap.add_argument("--sim-seeds", type=int, help="DAGSYNC_SIM_SEEDS (seeds per topology)")
    ap.add_argument("--airflow", action="store_true", help="rerun the Airflow soak first")
    ap.add_argument("--airflow-minutes", type=float, default=3.0)
    ap.add_argument("--render-only", action="store_true",
                    help="rewrite the doc from the test figures embedded in it and the "
                    "latest Airflow soak results")
    ap.add_argument("--out", default=str(DOC))
    args = ap.parse_args()
    if args.render_only:
        fig = embedded_figures()
        fig["airflow"] = latest_soak() or fig.get("airflow")
        fig["docstrings"] = docstrings()
    else:
        if args.airflow:
            run_soak(args.airflow_minutes)
        before = source_sha()
        with tempfile.TemporaryDirectory(prefix="dagsync-reliability-") as tmp:
            tests = run_tests(args.soak, args.sim_seeds, Path(tmp))
        tests["code_changed_during_run"] = source_sha() != before
        fig = {"when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(), "tests": tests, "airflow": latest_soak(),
               "docstrings": docstrings()}
    docs = fig.pop("docstrings")
    text = render({**fig, "docstrings": docs})
    Path(args.out).write_text(text)
    s = summarise(fig)
    print(f"wrote {args.out}: " + ", ".join(f"{v} {k}" for k, v in s["outcomes"].items()))
    bad = s["bad"]
    for t in bad:
        print(f"  FAILED {t['nodeid']}: {t['detail'][:200]}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
