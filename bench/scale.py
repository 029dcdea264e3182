"""Scale on paper: 10, 50 and 200 nodes, 100,000 files.

Two sources, kept apart in the report:

* the deterministic simulation (bench/sim_scale.py over tests/sim, the real protocol
  encoder, 10 ms links, no faults): connections, frames to connect, and per edit the
  frames, bytes and relay rounds until every node holds it, for a full mesh and for
  masters as hubs;
* a stated model for what grows with the number of files F (the simulation's folders
  are small): the index a node must receive when it starts empty or with a lost state,
  from the size of one index record as dagsync's encoder writes it, times F, times the
  peers that send it; memory and rescan time from this run's measurements at two corpus
  sizes, extrapolated linearly.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from common import log

HERE = Path(__file__).resolve().parent
SIZES = (10, 50, 200)
FILES = 100_000
LATENCY_MS = 10


def masters(n: int) -> int:
    """Masters in the hubs layout (tests/sim/topology.py: 1-3, a quarter of the nodes)."""
    return max(1, min(3, n // 4)) if n > 1 else 1


def connections(n: int, layout: str) -> int:
    if layout == "mesh":
        return n * (n - 1) // 2
    m = masters(n)
    return m * (m - 1) // 2 + m * (n - m)


def index_record_bytes(samples: int = 2000) -> float:
    """Bytes per entry of an Index message as dagsync encodes it (a full batch of
    entries with corpus-like paths, each version edited once on one node)."""
    from dagsync import protocol
    from dagsync.clock import VersionVector
    from dagsync.model import FileVersion, Kind

    entries = tuple(
        FileVersion(path=f"dags/finance/ledger_{i % 100:02d}/finance_daily_orders_{i:05d}.py",
                    kind=Kind.FILE, size=8192 + i, mtime_ns=1_763_900_000_000_000_000 + i,
                    mode=0o100644, hash=f"{i:032x}", deleted=False,
                    vv=VersionVector.of({"worker-017": 1 + i % 7}),
                    hlc=(1_763_900_000_000 << 16) + i, origin="worker-017")
        for i in range(samples))
    msg = protocol.Index(folder="dags", index_id=123456789, entries=entries,
                         last_seq=samples, caught_up=True)
    return len(protocol.encode(msg)) / samples


def sim_rows(sizes: tuple[int, ...], edits: int) -> list[dict[str, Any]]:
    spec = importlib.util.spec_from_file_location("sim_scale", HERE / "sim_scale.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["sim_scale"] = mod
    spec.loader.exec_module(mod)
    rows = []
    for n in sizes:
        for layout in ("mesh", "hubs"):
            t0 = time.monotonic()
            m = mod.measure(n, layout, edits, 1_000_000)
            rows.append({"nodes": n, "layout": layout, "masters": masters(n), **m,
                         "wall_s": round(time.monotonic() - t0, 1)})
            log(f"scale: {n} nodes, {layout}: {m['connections']} connections, "
                f"{m['frames']:.0f} frames and {m['kib']:.0f} KiB per edit, "
                f"{m['ms']:.0f} ms (simulated)")
    return rows


def model(record_bytes: float, files: int = FILES) -> list[dict[str, Any]]:
    """Per size and layout: connections, and the index a node receives at an empty or
    lost-state start (each of its peers sends its whole index once)."""
    rows = []
    for n in SIZES:
        for layout in ("mesh", "hubs"):
            m = masters(n)
            # a worker's peers: every other node (mesh) or the masters (hubs)
            peers_worker = n - 1 if layout == "mesh" else m
            # a master's peers are every other node either way
            rows.append({
                "nodes": n, "layout": layout, "masters": m,
                "connections": connections(n, layout),
                "worker_peers": peers_worker,
                "worker_start_index_mb": peers_worker * files * record_bytes / 1e6,
                "master_start_index_mb": (n - 1) * files * record_bytes / 1e6,
                "cluster_cold_start_index_gb": 2 * connections(n, layout) * files
                * record_bytes / 1e9,
            })
    return rows


def measure(quick: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"files": FILES, "sizes": list(SIZES), "latency_ms": LATENCY_MS}
    try:
        out["index_record_bytes"] = index_record_bytes()
        out["model"] = model(out["index_record_bytes"])
    except Exception as exc:  # the encoder's API moved: say so, keep the rest
        out["model_error"] = f"{type(exc).__name__}: {exc}"
    try:
        out["edits"] = 2 if quick else 5
        out["sim"] = sim_rows(SIZES, out["edits"])
    except Exception as exc:
        out["sim_error"] = f"{type(exc).__name__}: {exc}"
        out["sim_traceback"] = traceback.format_exc()[-2000:]
    return out
