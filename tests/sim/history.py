"""Ground truth for the oracle: every version ever made, with its true lineage.

The version vector is what dagsync *believes* about causality. The simulation also
knows the truth: a version made by a local edit is built on exactly one parent, the
record the node held when the edit happened (engine._observed_version / _vanished
bump that record's vector). `ancestors` is that lineage, independent of vectors and
of delivery order, so the oracle can name the SPEC winner and catch a vector that
claims a causality that never happened.

History also watches every record change on every node, online, for what must never
happen at any moment: content applied that is not the bytes its origin wrote
(invariant 5), a node going back to an ancestor of what it held, in particular a
version a delete it held had superseded (invariant 4, no resurrection).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from dagsync.model import FileVersion

# The preconditions of the dagsync bugs this simulation found (tests/sim/test_scenarios.py
# tells each as a story). A run with violations in which one of them occurred is
# explained by that bug; a run with violations and none of them is a new finding.
KNOWN_BUGS = {
    "vv-reuse": "a node reused its vector counter for a path (after its edit lost)",
    "progress-gap": "a puller persisted progress over a batch that had failed",
}


@dataclass(frozen=True)
class Created:
    version: FileVersion
    parent: FileVersion | None
    data: bytes | None  # None for a delete
    node: str
    time_ms: int
    ancestors: frozenset[FileVersion]


@dataclass
class History:
    versions: dict[FileVersion, Created] = field(default_factory=dict)
    by_path: dict[str, list[FileVersion]] = field(default_factory=dict)
    # (node, path) -> tombstones that node held at some point
    tombstones: dict[tuple[str, str], list[FileVersion]] = field(default_factory=dict)
    violations: list[str] = field(default_factory=list)
    applied_fetches: int = 0
    # How often each known dagsync bug's precondition occurred (see KNOWN_BUGS)
    triggers: dict[str, int] = field(default_factory=dict)
    _own_counters: dict[tuple[str, str], set[int]] = field(default_factory=dict)

    def create(
        self, node: str, version: FileVersion, parent: FileVersion | None, data: bytes | None,
        time_ms: int,
    ) -> None:
        if version in self.versions:
            self.violations.append(f"sim: version made twice: {version}")
            return
        if parent is not None and parent not in self.versions:
            self.violations.append(f"sim: parent of a new version is unknown: {parent}")
            ancestors: frozenset[FileVersion] = frozenset()
        elif parent is None:
            ancestors = frozenset()
        else:
            ancestors = self.versions[parent].ancestors | {parent}
        if parent is not None and version.hlc <= parent.hlc:
            self.violations.append(f"(2) {node} made {_short(version)} with an HLC not above "
                                   f"the version it replaces, {_short(parent)}")
        used = self._own_counters.setdefault((node, version.path), set())
        if version.vv.get(node) in used:
            self.trigger("vv-reuse")
        used.add(version.vv.get(node))
        self.versions[version] = Created(version, parent, data, node, time_ms, ancestors)
        self.by_path.setdefault(version.path, []).append(version)
        self._held(node, version)

    def trigger(self, bug: str) -> None:
        self.triggers[bug] = self.triggers.get(bug, 0) + 1

    def data(self, version: FileVersion) -> bytes | None:
        return self.versions[version].data

    def is_ancestor(self, a: FileVersion, b: FileVersion) -> bool:
        """True when `b` was (transitively) built on `a`."""
        created = self.versions.get(b)
        return created is not None and a in created.ancestors

    def replaced(
        self, node: str, old: FileVersion | None, new: FileVersion, data: bytes | None,
        fetched: bool,
    ) -> None:
        """A node's record for a path changed from `old` to `new` by applying a remote
        version. `data` is what was written to its disk when `fetched`."""
        if new not in self.versions:
            self.violations.append(f"(5) {node} applied a version nobody made: {new}")
            return
        if fetched:
            self.applied_fetches += 1
            if data != self.versions[new].data:
                self.violations.append(
                    f"(5) {node} applied {new.path} from {new.origin} with content that is "
                    f"not the version's (unverified content)"
                )
        if old is not None and self.is_ancestor(new, old):
            self.violations.append(
                f"(4) {node} went back on {new.path}: replaced {_short(old)} by its ancestor "
                f"{_short(new)}"
            )
        if not new.deleted:
            for tomb in self.tombstones.get((node, new.path), ()):
                if self.is_ancestor(new, tomb):
                    self.violations.append(
                        f"(4) {node} resurrected {new.path}: applied {_short(new)}, which the "
                        f"delete {_short(tomb)} it had held superseded"
                    )
        self._held(node, new)

    def _held(self, node: str, version: FileVersion) -> None:
        if version.deleted:
            self.tombstones.setdefault((node, version.path), []).append(version)


def _short(v: FileVersion) -> str:
    kind = "delete" if v.deleted else f"content {v.hash[:6]}"
    return f"[{kind} by {v.origin} hlc={v.hlc} vv={v.vv.as_dict()}]"


def short(v: FileVersion | None) -> str:
    return "none" if v is None else _short(v)
