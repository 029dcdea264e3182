"""Lists a folder's *.py files in a tight loop and logs every change of the set.

    python prober.py --folder DIR --out changes.jsonl --stop-file STOP [--pause 0.001]

Run by bench/airflow_soak/run.py as its own process (so the orchestrator's threads do
not slow it down), on the receiving node's folder. Each line is
`{"t": <CLOCK_MONOTONIC>, "add": [...], "del": [...]}` with paths relative to the folder,
written when a listing differs from the one before; the first line is the initial set and
the last `{"t": ..., "listings": n}`. From it the orchestrator rebuilds, per DAG id, when
no file held it (a gap) and when two files held it at once (an overlap). One listing
takes well under a millisecond for a few hundred files; with `--pause` 1 ms a gap of a
couple of milliseconds is seen.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time


def listing(root: str) -> set[str]:
    out: set[str] = set()
    stack = [("", root)]
    while stack:
        rel_dir, path = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for e in entries:
            if e.name == "__pycache__":
                continue
            rel = f"{rel_dir}{e.name}"
            try:
                if e.is_dir(follow_symlinks=False):
                    stack.append((rel + "/", e.path))
                elif e.name.endswith(".py"):
                    out.add(rel)
            except OSError:
                continue
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--stop-file", required=True)
    ap.add_argument("--pause", type=float, default=0.001)
    args = ap.parse_args()
    before: set[str] = set()
    n = 0
    with open(args.out, "w", encoding="utf-8") as out:
        while True:
            now = listing(args.folder)
            t = time.monotonic()
            n += 1
            if now != before or n == 1:
                out.write(json.dumps({"t": t, "add": sorted(now - before),
                                      "del": sorted(before - now)}) + "\n")
                before = now
            if n % 200 == 0:
                out.flush()
                if os.path.exists(args.stop_file):
                    break
            time.sleep(args.pause)
        out.write(json.dumps({"t": time.monotonic(), "listings": n}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
