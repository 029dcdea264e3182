#!/usr/bin/env python3
"""Minimal reproductions of what the Airflow soak looks at on the receiver (no Airflow).

    python bench/airflow_soak/repro_receiver.py [--trials 5]

Two agents on 127.0.0.1 (tests/cluster.py): A send-receive, B receive-only. A DAG file
is renamed on A with one rename(2) -- atomic there -- while a thread polls B's folder in a
tight loop for the old and the new name. Three cases:

  new_dir       mv dag.py newdir/dag.py, newdir created just before (mkdir && mv, or a
                git checkout that adds a directory)
  existing_dir  mv dag.py existing/dag.py
  same_dir      mv dag.py other.py

Printed per trial: how long B showed BOTH names (Airflow: AirflowDagDuplicatedIdException,
an import error) and NEITHER name (Airflow: the DAG is missing from that listing).

Then `kill` trials: ten files renamed at once on A; the moment B shows one of them under
neither name, B's agent is killed with SIGKILL and restarted at once. Printed: how long
that file stayed under neither name, and whether the restarted agent reported dagsync's
own delete as a "local delete ... on a receive-only folder".

Then `kill during updates` trials: 40 files rewritten at once on A; the moment B shows
the first new content, B's agent is killed with SIGKILL and restarted. Nobody edits B's
folder, so every "local edit ... on a receive-only folder" the restarted agent reports
(and every conflict archive entry it makes) is dagsync's own apply, cut off by the kill
after the file was in place and before the index recorded it.

Then `kill during creates` trials: 40 new files on A; B is killed as soon as the first
appears there. Printed: files B already showed at the kill that its restarted agent
removed again (for a while Airflow loses those DAGs), and the warnings.

Every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from tests.cluster import TestNode, make_nodes, wait_converged, write  # noqa: E402


def watch(old: Path, new: Path, seconds: float) -> dict[str, float]:
    both = neither = 0.0
    end = time.monotonic() + seconds
    last = time.monotonic()
    while time.monotonic() < end:
        o, n = old.exists(), new.exists()
        now = time.monotonic()
        if o and n:
            both += now - last
        elif not o and not n:
            neither += now - last
        last = now
    return {"both_ms": round(both * 1000, 1), "neither_ms": round(neither * 1000, 1)}


def rename_cases(a: TestNode, b: TestNode, trials: int) -> None:
    k = 0
    for case in ("new_dir", "existing_dir", "same_dir"):
        results = []
        (a.dags / "existing").mkdir(exist_ok=True)
        wait_converged([a, b], 30)
        for _ in range(trials):
            src = f"dag_{k}.py"
            dst = {"new_dir": f"newdir_{k}/dag_{k}.py", "existing_dir": f"existing/dag_{k}.py",
                   "same_dir": f"renamed_{k}.py"}[case]
            k += 1
            out: dict[str, float] = {}
            t = threading.Thread(target=lambda s=src, d=dst, o=out: o.update(
                watch(b.dags / s, b.dags / d, 2.0)))
            t.start()
            time.sleep(0.05)
            (a.dags / dst).parent.mkdir(exist_ok=True)
            os.rename(a.dags / src, a.dags / dst)
            t.join()
            results.append(out)
        print(f"{case:13} " + "  ".join(f"both {r['both_ms']:6.1f} ms / neither "
                                        f"{r['neither_ms']:5.1f} ms" for r in results))


def kill_cases(a: TestNode, b: TestNode, trials: int) -> None:
    wait_converged([a, b], 30)
    before = b.log.read_text(errors="replace").count("on a receive-only folder")
    hits = []
    for trial in range(trials):
        batch = [f"k{trial}_{i}.py" for i in range(10)]
        for name in batch:
            write(a.dags / name, f"# {name}\n" + "x = 1\n" * 2000)
        wait_converged([a, b], 30)
        moved = {n: n.replace(".py", "_moved.py") for n in batch}
        for src, dst in moved.items():
            os.rename(a.dags / src, a.dags / dst)
        deadline = time.monotonic() + 2.0
        gone: list[str] = []
        while time.monotonic() < deadline and not gone:
            gone = [s for s, d in moved.items()
                    if not (b.dags / s).exists() and not (b.dags / d).exists()]
        if not gone:
            continue
        b.kill()
        killed = time.monotonic()
        still = [s for s in gone if not (b.dags / moved[s]).exists()]
        b.start()
        while any(not (b.dags / moved[s]).exists() for s in still):
            time.sleep(0.002)
        hits.append((len(still), time.monotonic() - killed))
    wait_converged([a, b], 30)
    false_alarms = b.log.read_text(errors="replace").count("on a receive-only folder") - before
    print(f"kill inside the window: {len(hits)}/{trials} trials; files under neither name "
          f"until the restarted agent caught up: "
          + ", ".join(f"{n} for {s:.2f} s" for n, s in hits))
    print(f"  'local ... on a receive-only folder' warnings after those restarts: "
          f"{false_alarms} (B's folder is never edited locally)")


def kill_during_updates(a: TestNode, b: TestNode, trials: int) -> None:
    names = [f"u_{i}.py" for i in range(40)]
    for name in names:
        write(a.dags / name, f"# {name} v0\n" + "x = 1\n" * 500)
    wait_converged([a, b], 30)
    before = b.log.read_text(errors="replace").count("on a receive-only folder")
    caught = 0
    for trial in range(1, trials + 1):
        new = {n: (f"# {n} v{trial}\n" + "x = 1\n" * 500).encode() for n in names}
        for n, data in new.items():
            write(a.dags / n, data)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any((b.dags / n).read_bytes() == data for n, data in new.items()):
                break
        b.kill()
        if not all((b.dags / n).read_bytes() == data for n, data in new.items()):
            caught += 1  # killed in the middle of applying the batch
        b.start()
        wait_converged([a, b], 30)
    text = b.log.read_text(errors="replace")
    false_edits = text.count("on a receive-only folder") - before
    archived = len(list((b.state / "conflicts").rglob("u_*.py.*")))
    print(f"kill during updates: {caught}/{trials} kills landed mid-batch; 'local edit ... on "
          f"a receive-only folder' warnings after the restarts: {false_edits}; conflict "
          f"archive entries on B: {archived} (B's folder is never edited locally)")


def kill_during_creates(a: TestNode, b: TestNode, trials: int) -> None:
    before = b.log.read_text(errors="replace").count("on a receive-only folder")
    caught = vanished = 0
    for trial in range(1, trials + 1):
        names = [f"new_{trial}_{i}.py" for i in range(40)]
        for n in names:
            write(a.dags / n, f"# {n}\n" + "x = 1\n" * 500)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any((b.dags / n).exists() for n in names):
            pass
        b.kill()
        present = [n for n in names if (b.dags / n).exists()]
        if len(present) < len(names):
            caught += 1
        b.start()
        # A file B had in its folder at the kill should never leave it again.
        end = time.monotonic() + 3
        gone: set[str] = set()
        while time.monotonic() < end:
            gone |= {n for n in present if not (b.dags / n).exists()}
        vanished += len(gone)
        wait_converged([a, b], 30)
    false_edits = b.log.read_text(errors="replace").count("on a receive-only folder") - before
    print(f"kill during creates: {caught}/{trials} kills landed mid-batch; files present at "
          f"the kill that the restarted agent removed again: {vanished}; 'local ... on a "
          f"receive-only folder' warnings: {false_edits}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="dagsync-repro-receiver-"))
    nodes = make_nodes(tmp, ["a", "b"], modes={"b": "receive-only"},
                       extra={"scan_interval": "60s"})
    a, b = nodes["a"], nodes["b"]
    try:
        for i in range(3 * args.trials):
            write(a.dags / f"dag_{i}.py", f"# dag {i}\n" + "x = 1\n" * 200)
        a.start()
        b.start()
        wait_converged([a, b], 30)
        rename_cases(a, b, args.trials)
        kill_cases(a, b, args.trials)
        kill_during_updates(a, b, args.trials)
        kill_during_creates(a, b, args.trials)
    finally:
        for node in nodes.values():
            node.cleanup()
    print(f"logs: {tmp}/a/agent.log, {tmp}/b/agent.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())
