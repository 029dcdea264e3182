"""The last-writer-wins rule of SPEC guarantee 2, as pure functions.

`wins(a, b)` is the rule; `decide(local, remote)` turns it into an action. Keeping them
apart (as Syncthing keeps WinsConflict apart from moveForConflict) lets the rule be
table-tested and property-tested without any I/O.
"""

from __future__ import annotations

from dagsync.clock import Order, hlc_ms
from dagsync.model import Action, ActionKind, FileVersion


def wins(a: FileVersion, b: FileVersion) -> bool:
    """True when `a` beats `b`. Causality first; for concurrent versions the later HLC,
    then the greater origin node name, then the content hash, so every node agrees."""
    order = a.vv.compare(b.vv)
    if order is Order.AFTER:
        return True
    if order is Order.BEFORE:
        return False
    return _tiebreak(a) > _tiebreak(b)


def _tiebreak(v: FileVersion) -> tuple[int, str, bool, str, str]:
    return (v.hlc, v.origin, not v.deleted, v.hash, v.target)


def resolve(a: FileVersion, b: FileVersion) -> FileVersion:
    """The record every node ends with once it has seen both `a` and `b`: the winner,
    unchanged.

    The loser's vector is deliberately not merged into the winner: every node still
    holding the loser then sees the conflict itself and archives its own copy (so the
    node where an edit lost has it in its archive). A later edit on top of the winner
    still beats a stale copy of the loser, because nodes observe the HLC of every
    version they apply: that edit's HLC is above the winner's, which is above the
    loser's.
    """
    return a if wins(a, b) or a == b else b


def decide(
    local: FileVersion | None, remote: FileVersion, *, self_node: str | None = None
) -> Action:
    """What a node holding `local` does on learning of `remote` for the same path.

    `self_node` is the deciding node: unversioned content it found on its own disk
    (a new or rebuilt index) is archived when the cluster overrides it with a version
    made *before* that file was last modified, i.e. by someone who cannot have seen it.
    An unversioned record merely relayed from another node was never this node's data.
    (None: treat every unversioned local record as the node's own.)"""
    if local is None:
        if remote.deleted:
            return Action(ActionKind.RECORD, result=remote)
        return Action(ActionKind.FETCH, result=remote)
    result = resolve(local, remote)
    if result == local:
        return Action(ActionKind.KEEP)
    order = local.vv.compare(remote.vv)
    # Equal vectors with different content only arise from unversioned files found on
    # disk (a new or rebuilt index) or a lost counter: treat them like concurrent edits.
    conflict = order in (Order.CONCURRENT, Order.EQUAL) and not local.same_content(remote)
    # Unversioned local content that the cluster overrides is kept too, never dropped.
    own = self_node is None or local.origin == self_node
    if (
        local.vv.empty and own and not local.deleted and not result.same_content(local)
        and local.mtime_ns // 1_000_000 > hlc_ms(result.hlc)
    ):
        conflict = True
    if result.same_content(local):
        # Our bytes stand; only the record changes (the winner's metadata).
        return Action(ActionKind.RECORD, result=result, conflict=conflict)
    archive = conflict and not local.deleted
    if result.deleted:
        return Action(ActionKind.DELETE, result=result, archive_local=archive, conflict=conflict)
    return Action(ActionKind.FETCH, result=result, archive_local=archive, conflict=conflict)
