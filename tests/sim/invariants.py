"""What must hold once the cluster healed and went quiet (ARCHITECTURE.md's invariants).

(1) convergence: every node holds the same record for every path and the same bytes;
(2) last writer wins: for every path, every node holds the SPEC winner, computed from
    the versions alone, independent of delivery order: among all versions ever made for
    the path, those no other version causally follows (by version vector: SPEC 2 makes
    the vector the definition of "causally follows"), the one `reconcile.resolve` folds
    to -- the latest HLC, then node name. The fold must give it in either order;
(3) nothing lost: every version nothing was built on (true lineage, see history.py) that
    lost, is not a delete and holds other bytes than the winner is in some node's
    conflict archive -- unless a version with those same bytes was built on (a user had
    them as the file and edited or deleted it). Lineage, not vectors, because a vector
    that wrongly claims to follow a version would otherwise hide its loss;
(4) no resurrection: a path whose winner is a delete is on no disk (and, online, in
    history.py: no node ever went back to a version a delete it held superseded);
(5) no unverified content: every disk holds exactly the bytes of its records (and,
    online, in history.py: every applied content was the bytes its origin wrote).
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

from dagsync.clock import Order
from dagsync.engine import content_hash
from dagsync.model import FileVersion
from dagsync.reconcile import resolve
from tests.sim.history import short

if TYPE_CHECKING:
    from tests.sim.scenario import Scenario
    from tests.sim.world import SimNode

MAX_REPORTED = 12


def spec_order(v: FileVersion) -> tuple[int, str, bool, str, str]:
    """SPEC guarantee 2 for concurrent versions: later clock, then node name; then the
    deterministic ties reconcile adds (a live version over a delete, hash, target)."""
    return (v.hlc, v.origin, not v.deleted, v.hash, v.target)


def vv_maximal(scn: Scenario, path: str) -> list[FileVersion]:
    """The versions of `path` that no other version's vector dominates."""
    versions = scn.history.by_path.get(path, [])
    return [
        v for v in versions
        if not any(o.vv.compare(v.vv) is Order.AFTER for o in versions)
    ]


def lineage_maximal(scn: Scenario, path: str) -> list[FileVersion]:
    """The versions of `path` nobody built on."""
    versions = scn.history.by_path.get(path, [])
    built_on: set[FileVersion] = set()
    for v in versions:
        built_on |= scn.history.versions[v].ancestors
    return [v for v in versions if v not in built_on]


def check(scn: Scenario, quiet: bool) -> list[str]:
    out: list[str] = list(scn.net.violations) + list(scn.history.violations)
    if not quiet:
        out.append(f"(1) no quiescence after {scn.cfg.max_events} events (livelock)")
    nodes = list(scn.nodes.values())
    for node in nodes:
        out += _disk_matches_index(node.name, node)
    ref = nodes[0]
    for node in nodes[1:]:
        for path in sorted(set(ref.d.records) | set(node.d.records)):
            a, b = ref.version(path), node.version(path)
            if a != b:
                out.append(f"(1) {path}: {ref.name} holds {short(a)}, {node.name} holds {short(b)}")
    for path in sorted(scn.history.by_path):
        out += _winner_and_losers(scn, path)
    return _dedupe(out)


def _disk_matches_index(name: str, node: SimNode) -> list[str]:
    out = []
    for path, rec in sorted(node.d.records.items()):
        data = node.d.disk.get(path)
        if rec.version.deleted:
            if data is not None:
                out.append(f"(4) {name}: {path} is on disk but its record is a delete")
        elif data is None:
            out.append(f"(1) {name}: {path} is recorded but missing on disk")
        elif content_hash(data) != rec.version.hash:
            out.append(f"(5) {name}: {path} on disk does not match its record's hash")
    for path in sorted(node.d.disk):
        if path not in node.d.records:
            out.append(f"(1) {name}: {path} is on disk with no record")
    return out


def _winner_and_losers(scn: Scenario, path: str) -> list[str]:
    out = []
    tops = vv_maximal(scn, path)
    winner = max(tops, key=spec_order)
    folded = functools.reduce(resolve, tops)
    folded_back = functools.reduce(resolve, reversed(tops))
    if folded != winner or folded_back != winner:
        out.append(
            f"(2) {path}: resolve folds the {len(tops)} maximal versions to {short(folded)} "
            f"(reversed: {short(folded_back)}), SPEC names {short(winner)}"
        )
    holders: dict[str, list[str]] = {}
    for node in scn.nodes.values():
        if node.version(path) != winner:
            holders.setdefault(short(node.version(path)), []).append(node.name)
    for held, names in holders.items():
        out.append(f"(2) {path}: {','.join(names)} hold {held}, the SPEC winner is {short(winner)}")
    if winner.deleted:
        on_disk = [n.name for n in scn.nodes.values() if path in n.d.disk]
        if on_disk:
            out.append(f"(4) {path}: deleted, yet on the disk of {','.join(on_disk)}")
    hist = scn.history
    seen = {hist.data(a) for v in scn.history.by_path[path] for a in hist.versions[v].ancestors}
    archived = {e.data for n in scn.nodes.values() for e in n.d.archive if e.path == path}
    for v in lineage_maximal(scn, path):
        if v == winner or v.deleted or v.same_content(winner):
            continue
        data = hist.data(v)
        if data not in seen and data not in archived:
            out.append(f"(3) {path}: the losing version {short(v)} is in no conflict archive")
    return out


def _dedupe(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    if len(out) > MAX_REPORTED:
        out = [*out[:MAX_REPORTED], f"... and {len(out) - MAX_REPORTED} more"]
    return out
