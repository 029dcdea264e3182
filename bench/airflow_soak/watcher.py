"""Airflow's own DAG loader, in a loop, over one folder (runs in the Airflow virtualenv).

Started by bench/airflow_soak/run.py with the Airflow venv's python; it never imports
dagsync. Two modes:

    python watcher.py --folder DIR --once              # one DagBag round, JSON on stdout
    python watcher.py --folder DIR --out rounds.jsonl --stop-file STOP [--interval 0.5]

Each round builds `DagBag(dag_folder=DIR, include_examples=False, safe_mode=False)`,
exactly as Airflow's parser would, and records: the time the folder was listed (the
moment `list_py_file_paths` returned; CLOCK_MONOTONIC, which is system-wide on Linux, so
the orchestrator can line rounds up with its own events), the files listed, the DAG ids
found per file, every import error (with whether the file still exists and the sha256 of
its bytes, so a torn file can be told from a race or a harness mistake), for each listed
file that yielded neither a DAG nor an error the sha256 of what it held just before it
was parsed (None: gone by then), and the duration.

Bytecode caching is off (PYTHONDONTWRITEBYTECODE / sys.dont_write_bytecode): dagsync
preserves mtimes, and a stale __pycache__ entry for a same-size rewrite within one second
would make the loader see old code and blur the measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.dont_write_bytecode = True


def _sha256(path: str) -> str | None:
    try:
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()
    except OSError:
        return None


def one_round(folder: str, index: int) -> dict[str, Any]:
    import airflow.models.dagbag as dagbag_mod
    from airflow.models.dagbag import DagBag

    listed: dict[str, Any] = {}
    real_list = dagbag_mod.list_py_file_paths

    def recording_list(*args: Any, **kwargs: Any) -> list[str]:
        paths = list(real_list(*args, **kwargs))
        listed["t"] = time.monotonic()
        listed["paths"] = paths
        return paths

    # What each file held when DagBag came to parse it (read just before): tells a file
    # that was gone by then, or half-written, from one that held no DAG.
    at_parse: dict[str, str | None] = {}
    real_process = DagBag.process_file

    def recording_process(self: DagBag, filepath: str, *args: Any, **kwargs: Any) -> Any:
        at_parse[filepath] = _sha256(filepath)
        return real_process(self, filepath, *args, **kwargs)

    dagbag_mod.list_py_file_paths = recording_list  # type: ignore[assignment]
    DagBag.process_file = recording_process  # type: ignore[method-assign]
    t_start = time.monotonic()
    try:
        bag = DagBag(dag_folder=folder, include_examples=False, safe_mode=False)
    finally:
        dagbag_mod.list_py_file_paths = real_list  # type: ignore[assignment]
        DagBag.process_file = real_process  # type: ignore[method-assign]
    t_end = time.monotonic()

    def rel(path: str) -> str:
        return os.path.relpath(path, folder)

    dags: dict[str, list[str]] = {}
    for dag_id, dag in bag.dags.items():
        dags.setdefault(rel(dag.fileloc), []).append(dag_id)
    errors: dict[str, Any] = {}
    for path, text in bag.import_errors.items():
        lines = [line for line in str(text).strip().splitlines() if line.strip()]
        errors[rel(path)] = {
            "last_line": lines[-1] if lines else "",
            "text": str(text)[-2000:],
            "exists": os.path.exists(path),
            # what the file held when DagBag came to it, else what it holds now
            "sha256": at_parse.get(path) or _sha256(path),
        }
    loaded = {dag.fileloc for dag in bag.dags.values()}
    no_dag = {rel(path): digest for path, digest in at_parse.items()
              if path not in loaded and path not in bag.import_errors}
    return {
        "round": index,
        "t_start": t_start,
        "t_list": listed.get("t", t_start),
        "t_end": t_end,
        "duration": t_end - t_start,
        "files": sorted(rel(p) for p in listed.get("paths", [])),
        "dags": {k: sorted(v) for k, v in sorted(dags.items())},
        "errors": errors,
        "no_dag_files": no_dag,  # rel path -> sha256 at parse time (None: gone by then)
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True)
    ap.add_argument("--once", action="store_true", help="one round, JSON on stdout")
    ap.add_argument("--out", help="append one JSON line per round here")
    ap.add_argument("--stop-file", help="stop after the round during which this file appears")
    ap.add_argument("--interval", type=float, default=0.5, help="pause between rounds (s)")
    args = ap.parse_args()
    folder = os.path.abspath(args.folder)
    if args.once:
        print(json.dumps(one_round(folder, 0)))
        return 0
    if not args.out or not args.stop_file:
        ap.error("--out and --stop-file are required without --once")
    index = 0
    with open(args.out, "a", encoding="utf-8") as out:
        while True:
            record = one_round(folder, index)
            out.write(json.dumps(record) + "\n")
            out.flush()
            index += 1
            if os.path.exists(args.stop_file):
                return 0
            time.sleep(args.interval)


if __name__ == "__main__":
    sys.exit(main())
