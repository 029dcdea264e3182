"""`dagsync status`: health rules and the human rendering of the agent's status reply.

The JSON schema (version 1) is docs/status.schema.json; `health` is the one
place that decides the exit code: 0 healthy, 1 degraded, 2 critical."""

from __future__ import annotations

import os
import time
from typing import Any

from dagsync.config import Config

SCHEMA_VERSION = 1


def offline_status(cfg: Config, reason: str) -> dict[str, Any]:
    """Status from the index alone, when no agent runs (always critical)."""
    from dagsync.index import Index

    folders: list[dict[str, Any]] = []
    db = cfg.node.state_dir / "index.db"
    index = Index(db) if db.exists() else None
    try:
        for f in cfg.folders:
            files, size = index.count(f.id) if index else (0, 0)
            folders.append({"id": f.id, "path": str(f.path), "mode": f.mode.value,
                            "files": files, "bytes": size, "digest": None, "last_scan": None,
                            "readable": f.path.is_dir() and os.access(f.path, os.R_OK),
                            "problems": [], "watcher": None})
    finally:
        if index:
            index.close()
    return {
        "schema": SCHEMA_VERSION, "node": cfg.node.name, "agent": False, "agent_error": reason,
        "folders": folders,
        "peers": [{"name": p.name, "state": "unknown"} for p in cfg.peers],
        "conflicts": [],
    }


def health(data: dict[str, Any]) -> tuple[int, list[str]]:
    data.setdefault("schema", SCHEMA_VERSION)
    critical, degraded = [], []
    if not data.get("agent"):
        critical.append(f"agent not running ({data.get('agent_error', '')})")
    for f in data.get("folders", []):
        if not f.get("readable", True):
            critical.append(f"folder {f['id']} unreadable")
    for p in data.get("peers", []):
        if abs(p.get("clock_skew_ms") or 0) > 1000 and p.get("state") == "connected":
            degraded.append(f"peer {p['name']} clock differs by "
                            f"{p['clock_skew_ms'] / 1000:.1f} s")
        if p.get("state") in ("down", "never seen"):
            degraded.append(f"peer {p['name']} {p['state']}"
                            + (f": {p['last_error']}" if p.get("last_error") else ""))
    if data.get("conflicts"):
        degraded.append(f"{len(data['conflicts'])} conflict(s) not looked at "
                        "(`dagsync conflicts list`)")
    cluster = data.get("cluster")
    if cluster:
        seen = {tuple(sorted(d.items())) for d in cluster.values() if d is not None}
        if len(seen) > 1:
            degraded.append("cluster has not converged")
    if critical:
        return 2, critical + degraded
    if degraded:
        return 1, degraded
    return 0, []


def _ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    secs = max(0.0, time.time() - ts)
    if secs < 120:
        return f"{secs:.0f}s ago"
    if secs < 7200:
        return f"{secs / 60:.0f}m ago"
    return f"{secs / 3600:.1f}h ago"


def render(data: dict[str, Any]) -> str:
    lines = [f"node {data['node']}: " + ("agent running" if data.get("agent")
                                         else "AGENT NOT RUNNING")]
    lines.append("")
    lines.append(f"{'FOLDER':<12} {'MODE':<13} {'FILES':>7} {'BYTES':>12} {'DIGEST':<18} "
                 f"{'LAST SCAN':<10} WATCHER")
    for f in data.get("folders", []):
        digest = (f.get("digest") or "-")[:16]
        lines.append(f"{f['id']:<12} {f['mode']:<13} {f['files']:>7} {f['bytes']:>12} "
                     f"{digest:<18} {_ago(f.get('last_scan')):<10} {f.get('watcher') or '-'}")
        if f.get("local_edits_refused"):
            lines.append(f"  ! {f['local_edits_refused']} local edit(s) refused "
                         "(receive-only; kept in the conflict archive)")
        for problem in f.get("problems", [])[:5]:
            lines.append(f"  ! {problem}")
    lines.append("")
    lines.append(f"{'PEER':<14} {'STATE':<11} {'LAST SEEN':<10} {'LAST SYNC':<10} "
                 f"{'BEHIND':>6} {'SKEW':>7}  LAST ERROR")
    for p in data.get("peers", []):
        skew = p.get("clock_skew_ms") or 0
        lines.append(f"{p['name']:<14} {p.get('state', '?'):<11} "
                     f"{_ago(p.get('last_seen')):<10} {_ago(p.get('last_sync')):<10} "
                     f"{p.get('files_behind', 0):>6} {skew / 1000:>6.1f}s  "
                     f"{p.get('last_error', '')}" + ("  (clock skew > 1 s!)"
                                                     if abs(skew) > 1000 else ""))
    if data.get("conflicts"):
        lines.append("")
        lines.append(f"{len(data['conflicts'])} conflict(s) not looked at; "
                     "see `dagsync conflicts list`")
    cluster = data.get("cluster")
    if cluster:
        lines.append("")
        ref = cluster.get(data["node"])
        same = [n for n, d in cluster.items() if d == ref]
        differ = [n for n, d in cluster.items() if d is not None and d != ref]
        unknown = [n for n, d in cluster.items() if d is None]
        lines.append("cluster: " + ("converged" if not differ else "NOT converged")
                     + f" ({len(same)} node(s) agree"
                     + (f"; differ: {', '.join(differ)}" if differ else "")
                     + (f"; unreachable: {', '.join(unknown)}" if unknown else "") + ")")
        for peer, folders in sorted((data.get("cluster_diff") or {}).items()):
            for fid, paths in sorted(folders.items()):
                lines.append(f"  {peer} differs in {fid}: " + ", ".join(paths[:10])
                             + (f" (+{len(paths) - 10} more)" if len(paths) > 10 else ""))
    code, reasons = data["health"]["code"], data["health"]["reasons"]
    lines.append("")
    lines.append(["healthy", "degraded", "critical"][code] + (": " + "; ".join(reasons)
                                                             if reasons else ""))
    return "\n".join(lines)
