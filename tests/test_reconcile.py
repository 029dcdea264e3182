"""Last writer wins, nothing lost (SPEC guarantee 2), as the pure rule `decide` applies it.

Every case is checked from both sides: what the node holding `a` does on learning of
`b`, and what the node holding `b` does on learning of `a`. Both must end with the same
record (the winner, unchanged), and only a node whose live content lost a concurrent
conflict archives it.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagsync.clock import HybridClock, Order, VersionVector, hlc_ms, hlc_pack
from dagsync.model import ActionKind, FileVersion, Kind
from dagsync.reconcile import decide, resolve, wins

HOUR_MS = 3_600_000
NOW_MS = 1_700_000_000_000


def h(content: str) -> str:
    return hashlib.blake2b(content.encode(), digest_size=16).hexdigest()


def fv(
    origin: str,
    vv: dict[str, int],
    ms: int,
    content: str | None = "v1",
    *,
    counter: int = 0,
    mode: int = 0o644,
    path: str = "dags/etl.py",
) -> FileVersion:
    """A version; `content=None` makes a tombstone."""
    deleted = content is None
    return FileVersion(
        path=path,
        kind=Kind.FILE,
        size=0 if deleted else len(content or ""),
        mtime_ns=ms * 1_000_000,
        mode=mode,
        hash="" if deleted else h(content or ""),
        deleted=deleted,
        vv=VersionVector.of(vv),
        hlc=hlc_pack(ms, counter),
        origin=origin,
    )


def after(local: FileVersion | None, remote: FileVersion) -> FileVersion | None:
    """The record a node holds once it has applied `decide(local, remote)`."""
    action = decide(local, remote)
    if action.kind is ActionKind.KEEP:
        assert action.result is None
        return local
    assert action.result is not None
    return action.result


# --- the table ----------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """`winner` beats `loser`. `l_sees_w`: (kind, archive_local, conflict) of
    decide(loser, winner); the winner's node always keeps its record. `content` is the
    content the final record must carry (None: deleted)."""

    name: str
    winner: FileVersion
    loser: FileVersion
    l_sees_w: tuple[ActionKind, bool, bool]
    content: str | None


CASES = [
    Case(
        "causal successor from a node whose clock is an hour behind",
        winner=fv("slow", {"fast": 1, "slow": 1}, NOW_MS - HOUR_MS, "edited"),
        loser=fv("fast", {"fast": 1}, NOW_MS, "original"),
        l_sees_w=(ActionKind.FETCH, False, False),
        content="edited",
    ),
    Case(
        "causal successor from a node whose clock is a day ahead",
        winner=fv("a", {"a": 2}, NOW_MS + 24 * HOUR_MS, "v2"),
        loser=fv("a", {"a": 1}, NOW_MS, "v1"),
        l_sees_w=(ActionKind.FETCH, False, False),
        content="v2",
    ),
    Case(
        "causal delete with an older clock removes the file, nothing archived",
        winner=fv("slow", {"fast": 1, "slow": 1}, NOW_MS - HOUR_MS, None),
        loser=fv("fast", {"fast": 1}, NOW_MS, "v1"),
        l_sees_w=(ActionKind.DELETE, False, False),
        content=None,
    ),
    Case(
        "causal re-creation after a delete",
        winner=fv("b", {"a": 2, "b": 1}, NOW_MS - HOUR_MS, "reborn"),
        loser=fv("a", {"a": 2}, NOW_MS, None),
        l_sees_w=(ActionKind.FETCH, False, False),
        content="reborn",
    ),
    Case(
        "causal chmod only: recorded, not fetched again",
        winner=fv("b", {"a": 1, "b": 1}, NOW_MS + 1, "same", mode=0o755),
        loser=fv("a", {"a": 1}, NOW_MS, "same", mode=0o644),
        l_sees_w=(ActionKind.RECORD, False, False),
        content="same",
    ),
    Case(
        "concurrent edits: the later clock wins, the loser is archived",
        winner=fv("a", {"a": 1}, NOW_MS + 5, "from a"),
        loser=fv("b", {"b": 1}, NOW_MS, "from b"),
        l_sees_w=(ActionKind.FETCH, True, True),
        content="from a",
    ),
    Case(
        "concurrent edits with the later clock on the alphabetically smaller node",
        winner=fv("alpha", {"alpha": 3, "zulu": 1}, NOW_MS + 1, "alpha's"),
        loser=fv("zulu", {"alpha": 2, "zulu": 2}, NOW_MS, "zulu's"),
        l_sees_w=(ActionKind.FETCH, True, True),
        content="alpha's",
    ),
    Case(
        "concurrent edits, same ms: the logical counter decides",
        winner=fv("a", {"a": 1}, NOW_MS, "from a", counter=2),
        loser=fv("b", {"b": 1}, NOW_MS, "from b", counter=1),
        l_sees_w=(ActionKind.FETCH, True, True),
        content="from a",
    ),
    Case(
        "concurrent edits, identical clocks: the greater node name wins",
        winner=fv("worker2", {"worker2": 1}, NOW_MS, "w2"),
        loser=fv("worker10", {"worker10": 1}, NOW_MS, "w10"),
        l_sees_w=(ActionKind.FETCH, True, True),
        content="w2",
    ),
    Case(
        "identical content created concurrently on two nodes is not a conflict",
        winner=fv("b", {"b": 1}, NOW_MS + 9, "same"),
        loser=fv("a", {"a": 1}, NOW_MS, "same"),
        l_sees_w=(ActionKind.RECORD, False, False),
        content="same",
    ),
    Case(
        "identical content, concurrent, different mode: record the winner's metadata",
        winner=fv("b", {"b": 1}, NOW_MS + 9, "same", mode=0o755),
        loser=fv("a", {"a": 1}, NOW_MS, "same", mode=0o600),
        l_sees_w=(ActionKind.RECORD, False, False),
        content="same",
    ),
    Case(
        "concurrent delete with the later clock beats a modification, which is archived",
        winner=fv("a", {"x": 1, "a": 1}, NOW_MS + 1, None),
        loser=fv("b", {"x": 1, "b": 1}, NOW_MS, "modified"),
        l_sees_w=(ActionKind.DELETE, True, True),
        content=None,
    ),
    Case(
        "concurrent modification with the later clock beats a delete; nothing to archive",
        winner=fv("b", {"x": 1, "b": 1}, NOW_MS + 1, "modified"),
        loser=fv("a", {"x": 1, "a": 1}, NOW_MS, None),
        l_sees_w=(ActionKind.FETCH, False, True),
        content="modified",
    ),
    Case(
        "delete vs modify on identical clocks: the node name decides",
        winner=fv("n2", {"x": 1, "n2": 1}, NOW_MS, "modified"),
        loser=fv("n1", {"x": 1, "n1": 1}, NOW_MS, None),
        l_sees_w=(ActionKind.FETCH, False, True),
        content="modified",
    ),
    Case(
        "concurrent deletes agree: no conflict",
        winner=fv("b", {"x": 1, "b": 1}, NOW_MS + 1, None),
        loser=fv("a", {"x": 1, "a": 1}, NOW_MS, None),
        l_sees_w=(ActionKind.RECORD, False, False),
        content=None,
    ),
    # Unversioned: a file found on disk by a new or rebuilt index (empty vector, HLC
    # from its mtime). It loses to any version the cluster holds, whatever the clocks.
    Case(
        "an unversioned file with a newer mtime loses to the cluster's version, archived",
        winner=fv("a", {"a": 1}, NOW_MS - HOUR_MS, "cluster's"),
        loser=fv("b", {}, NOW_MS + HOUR_MS, "found on disk"),
        l_sees_w=(ActionKind.FETCH, True, True),
        content="cluster's",
    ),
    Case(
        "an unversioned file already holding the cluster's content is just recorded",
        winner=fv("a", {"a": 1}, NOW_MS - HOUR_MS, "same", mode=0o755),
        loser=fv("b", {}, NOW_MS + HOUR_MS, "same"),
        l_sees_w=(ActionKind.RECORD, False, False),
        content="same",
    ),
    Case(
        "an unversioned file does not resurrect a cluster delete; its content is archived",
        winner=fv("a", {"a": 2}, NOW_MS - HOUR_MS, None),
        loser=fv("b", {}, NOW_MS + HOUR_MS, "found on disk"),
        l_sees_w=(ActionKind.DELETE, True, True),
        content=None,
    ),
    Case(
        "two unversioned copies: the newer mtime wins, the other is archived",
        winner=fv("a", {}, NOW_MS + 1, "newer"),
        loser=fv("b", {}, NOW_MS, "older"),
        l_sees_w=(ActionKind.FETCH, True, True),
        content="newer",
    ),
    Case(
        "equal vectors with different content (a reused counter): a conflict like any",
        winner=fv("a", {"a": 3}, NOW_MS + 1, "second life"),
        loser=fv("a", {"a": 3}, NOW_MS, "first life"),
        l_sees_w=(ActionKind.FETCH, True, True),
        content="second life",
    ),
]


def _kac(local: FileVersion, remote: FileVersion) -> tuple[ActionKind, bool, bool]:
    a = decide(local, remote)
    return a.kind, a.archive_local, a.conflict


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_winner_beats_loser_and_never_the_reverse(case: Case) -> None:
    assert wins(case.winner, case.loser)
    assert not wins(case.loser, case.winner)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_the_winners_node_keeps_its_record_and_archives_nothing(case: Case) -> None:
    # Also: a stale copy of the loser arriving later can never come back.
    assert _kac(case.winner, case.loser) == (ActionKind.KEEP, False, False)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_decide_from_the_losers_side(case: Case) -> None:
    assert _kac(case.loser, case.winner) == case.l_sees_w


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_both_sides_end_with_the_same_record_holding_the_winners_content(case: Case) -> None:
    on_winner = after(case.winner, case.loser)
    on_loser = after(case.loser, case.winner)
    assert on_winner == on_loser
    assert on_winner is not None
    if case.content is None:
        assert on_winner.deleted
    else:
        assert not on_winner.deleted
        assert on_winner.hash == h(case.content)
    # The winner's content *and* metadata, whoever made the record.
    assert on_winner == case.winner
    assert resolve(case.winner, case.loser) == resolve(case.loser, case.winner) == case.winner


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_once_settled_neither_side_moves_again(case: Case) -> None:
    final = after(case.loser, case.winner)
    assert final is not None
    assert decide(final, case.winner).kind is ActionKind.KEEP
    assert decide(final, case.loser).kind is ActionKind.KEEP
    assert decide(final, final).kind is ActionKind.KEEP


def test_an_edit_on_top_of_a_conflict_winner_also_beats_the_old_loser() -> None:
    """The loser's vector is not merged into the winner, so the next edit does not
    causally follow the loser: its HLC (stamped above the winner's) must decide."""
    winner = fv("a", {"a": 1}, NOW_MS + 5, "from a")
    loser = fv("b", {"b": 1}, NOW_MS, "from b")
    clock = HybridClock()
    edit = replace(fv("c", {"a": 1, "c": 1}, 0, "edit on a"),
                   hlc=clock.observe(winner.hlc, NOW_MS - HOUR_MS))  # c's clock is slow
    assert edit.vv.compare(loser.vv) is Order.CONCURRENT
    assert wins(edit, loser)
    assert after(loser, edit) == edit
    assert decide(edit, loser).kind is ActionKind.KEEP
    assert decide(edit, winner).kind is ActionKind.KEEP


def test_unknown_path_and_remote_delete_is_recorded_not_deleted() -> None:
    tomb = fv("a", {"a": 2}, NOW_MS, None)
    action = decide(None, tomb)
    assert action.kind is ActionKind.RECORD
    assert action.result == tomb
    assert not action.archive_local
    assert not action.conflict


def test_unknown_path_and_remote_file_is_fetched() -> None:
    v = fv("a", {"a": 1}, NOW_MS, "new dag")
    action = decide(None, v)
    assert action.kind is ActionKind.FETCH
    assert action.result == v
    assert not action.archive_local
    assert not action.conflict


@pytest.mark.parametrize("content", ["v1", None], ids=["file", "tombstone"])
def test_same_version_is_kept(content: str | None) -> None:
    v = fv("a", {"a": 3, "b": 1}, NOW_MS, content)
    assert decide(v, v).kind is ActionKind.KEEP
    assert not wins(v, v)
    assert resolve(v, v) == v


def test_older_remote_version_is_kept_out_even_with_a_later_clock() -> None:
    local = fv("a", {"a": 2}, NOW_MS, "v2")
    stale = fv("a", {"a": 1}, NOW_MS + HOUR_MS, "v1")
    assert decide(local, stale).kind is ActionKind.KEEP


def test_three_way_conflict_with_a_slow_node_is_order_independent() -> None:
    """`fast` edits; `slow` (clock an hour behind) edits on top of it; `z` edits
    concurrently with both. With HLCs stamped the way clock.observe does (above the
    version edited), every delivery order ends with the same record."""
    a = fv("fast", {"fast": 1}, NOW_MS, "a")
    slow_clock = HybridClock()
    slow_clock.tick(NOW_MS - HOUR_MS)
    m_hlc = slow_clock.observe(a.hlc, NOW_MS - HOUR_MS + 5)
    m = replace(fv("slow", {"fast": 1, "slow": 1}, 0, "m"), hlc=m_hlc)
    z = fv("z", {"z": 1}, NOW_MS - 10, "z")
    finals = set()
    for order in itertools.permutations([a, m, z]):
        local: FileVersion | None = None
        for v in order:
            local = after(local, v)
        finals.add(local)
    assert len(finals) == 1
    (final,) = finals
    assert final is not None and final.hash == h("m")  # m follows a and is later than z


# --- properties over simulated histories --------------------------------------------


@dataclass
class History:
    nodes: list[str]
    versions: list[FileVersion]  # every version any node created, in creation order
    states: dict[str, FileVersion | None]  # what each node holds after partial syncs


CONTENTS = ["A", "B", "C"]  # few, so identical content on two nodes happens
SKEWS = [0, 0, 1, -HOUR_MS, HOUR_MS]  # equal clocks too, so ties happen


@st.composite
def histories(draw: st.DrawFn) -> History:
    """Random edits, deletes and partial syncs on 2-5 nodes with skewed, jumpy clocks.
    Each node stamps an edit the way an HLC should: above the version it edits."""
    n = draw(st.integers(2, 5))
    nodes = [f"n{i}" for i in range(n)]
    skew = {node: draw(st.sampled_from(SKEWS)) for node in nodes}
    clocks = {node: HybridClock() for node in nodes}
    states: dict[str, FileVersion | None] = dict.fromkeys(nodes)
    versions: list[FileVersion] = []
    wall = NOW_MS
    steps = draw(st.integers(1, 14))
    for _ in range(steps):
        wall += draw(st.sampled_from([0, 0, 1, 2, -1000]))  # wall clocks also jump back
        node = draw(st.sampled_from(nodes))
        if states[node] is None and draw(st.booleans()):
            # A new or rebuilt index finds the file on disk: unversioned, HLC from mtime.
            mtime_ms = wall + skew[node] + draw(st.sampled_from([0, -5000, HOUR_MS]))
            content = draw(st.sampled_from(CONTENTS))
            v = replace(fv(node, {}, mtime_ms, content), hlc=hlc_pack(mtime_ms, 0))
            versions.append(v)
            states[node] = v
            continue
        if draw(st.booleans()) and any(states.values()):
            # `node` learns the record some other node holds.
            src = draw(st.sampled_from([s for s in nodes if states[s] is not None]))
            remote = states[src]
            assert remote is not None
            states[node] = after(states[node], remote)
            continue
        base = states[node]
        w = wall + skew[node]
        hlc = clocks[node].tick(w) if base is None else clocks[node].observe(base.hlc, w)
        delete = base is not None and not base.deleted and draw(st.booleans())
        content = draw(st.sampled_from(CONTENTS))
        v = FileVersion(
            path="dags/etl.py",
            kind=Kind.FILE,
            size=0 if delete else len(content),
            mtime_ns=max(w, 0) * 1_000_000,
            mode=draw(st.sampled_from([0o644, 0o755])),
            hash="" if delete else h(content),
            deleted=delete,
            vv=(base.vv if base else VersionVector()).bump(node),
            hlc=hlc,
            origin=node,
        )
        versions.append(v)
        states[node] = v
    if not versions:
        node = nodes[0]
        v = fv(node, {node: 1}, wall, "A")
        versions.append(v)
        states[node] = v
    return History(nodes, versions, states)


def fold(start: FileVersion | None, versions: list[FileVersion]) -> FileVersion | None:
    local = start
    for v in versions:
        local = after(local, v)
    return local


@settings(max_examples=60, deadline=None)
@given(histories(), st.data())
def test_every_node_ends_with_the_same_record_whatever_the_delivery_order(
    hist: History, data: st.DataObject
) -> None:
    reference = fold(None, hist.versions)
    for _ in range(3):
        order = data.draw(st.permutations(hist.versions))
        assert fold(None, order) == reference
    for node in hist.nodes:
        order = data.draw(st.permutations(hist.versions))
        assert fold(hist.states[node], order) == reference
    assert reference is not None
    # The final record is one of the versions made, unchanged, beaten by none of them:
    # no version anyone made (or a stale copy of it) can come back.
    assert reference in hist.versions
    for v in hist.versions:
        assert not wins(v, reference)
        assert decide(reference, v).kind is ActionKind.KEEP


@settings(max_examples=60, deadline=None)
@given(histories())
def test_resolve_is_commutative_and_wins_is_a_strict_total_order(hist: History) -> None:
    vs = hist.versions
    for a, b in itertools.combinations(vs, 2):
        assert resolve(a, b) == resolve(b, a)
        assert resolve(a, b) in (a, b)
        assert wins(a, b) != wins(b, a)  # exactly one of two distinct edits wins
        if a.vv.compare(b.vv) is Order.AFTER:
            assert wins(a, b)  # causality first, whatever the clocks
    # Transitive, so `wins` ranks all the versions and the winner does not depend on
    # which pairs a node happened to compare.
    for a, b, c in itertools.permutations(vs[:8], 3):
        if wins(a, b) and wins(b, c):
            assert wins(a, c)


@settings(max_examples=60, deadline=None)
@given(histories(), st.data())
def test_archive_exactly_when_content_nobody_saw_is_overwritten(
    hist: History, data: st.DataObject
) -> None:
    """Nothing lost: live content replaced by different content whose author had not
    seen it (a concurrent edit, or any version over an unversioned file) is archived;
    content a later edit knowingly replaced is not."""
    order = data.draw(st.permutations(hist.versions))
    local: FileVersion | None = None
    for remote in order:
        action = decide(local, remote)
        if action.archive_local:
            assert local is not None and action.result is not None
            assert not wins(local, remote)  # the archived version is never the winner
            assert action.conflict
            assert action.kind in (ActionKind.FETCH, ActionKind.DELETE)
        if local is not None and action.result is not None:
            overwritten = not local.deleted and not action.result.same_content(local)
            seen_by_author = (
                local.vv.compare(remote.vv) is Order.BEFORE
                if not local.vv.empty
                else local.vv != remote.vv  # an unversioned file vs a real version:
                and local.mtime_ns // 1_000_000 <= hlc_ms(action.result.hlc)  # made after it
            )
            assert action.archive_local == (overwritten and not seen_by_author)
            if action.conflict:
                assert not local.same_content(remote)
        local = after(local, remote)


# --- the precondition the rule relies on ---------------------------------------------
# `wins` is a total order only if a version's HLC is above the HLC of every version it
# causally follows. With concurrent versions unmerged, a causal successor stamped
# *below* its predecessor closes a cycle: fast's `a` (clock ahead) beats z by HLC, z
# beats slow's `m` by HLC, m beats a causally. Nodes then end with different records
# depending on arrival order, and keep fetching each other's forever. The engine must
# therefore stamp a local edit above the version it edits, whatever the clocks say.
# (Concrete cycle: a = {fast:1} at +25 h, m = {fast:1, slow:1} at now, z = {z:1} at
# now + 1 min: wins(m, a), wins(a, z) and wins(z, m) all hold.)


async def _edit_on_top_of_remote(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, remote_ms: int, local_wall_ms: int
) -> tuple[FileVersion, FileVersion]:
    """A node whose wall clock reads `local_wall_ms` applies a remote version stamped
    `remote_ms`, then its user edits the file. Returns (remote, the local edit)."""
    from dagsync import engine
    from dagsync.archive import ConflictArchive
    from dagsync.config import FolderConfig
    from dagsync.index import Index
    from dagsync.model import FolderMode

    root, state = tmp_path / "dags", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    monkeypatch.setattr(engine, "wall_ms", lambda: local_wall_ms)
    index = Index(state / "index.db")
    try:
        folder = engine.FolderEngine(
            FolderConfig("dags", root, FolderMode.SEND_RECEIVE, ()), "local", index,
            ConflictArchive(state), engine.SharedClock(0), 1 << 20,
        )
        await folder.open()
        data = b"print('from remote')\n"
        remote = replace(fv("remote", {"remote": 1}, remote_ms, path="etl.py"),
                         size=len(data), hash=engine.content_hash(data))

        class Source:
            """The remote peer, serving exactly that content."""

            async def fetch(self, v: FileVersion) -> bytes:
                return data

            async def fetch_many(self, vs: list[FileVersion]) -> list[bytes | BaseException]:
                return [data for _ in vs]

        outcome = await folder.apply_batch([remote], Source())
        assert list(outcome.applied) == ["etl.py"]
        (root / "etl.py").write_bytes(b"print('edited here')\n")
        await folder.scan()
        edit = folder.version("etl.py")
        assert edit is not None and edit.origin == "local"
        assert edit.vv.compare(remote.vv) is Order.AFTER
        return remote, edit
    finally:
        index.close()


async def test_an_edit_on_a_node_an_hour_behind_is_stamped_after_the_version_it_edits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote, edit = await _edit_on_top_of_remote(
        tmp_path, monkeypatch, remote_ms=NOW_MS, local_wall_ms=NOW_MS - HOUR_MS
    )
    assert edit.hlc > remote.hlc


async def test_an_edit_on_top_of_a_version_from_a_clock_a_day_ahead_is_stamped_after_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    remote, edit = await _edit_on_top_of_remote(
        tmp_path, monkeypatch, remote_ms=NOW_MS + 25 * HOUR_MS, local_wall_ms=NOW_MS
    )
    assert edit.hlc > remote.hlc


async def test_one_version_from_a_broken_clock_does_not_hide_the_others_in_its_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An apply observes the newest clock of a batch only; when that one is refused (a
    day ahead), every other version of the batch must still move the clock past it."""
    from dagsync import engine
    from dagsync.archive import ConflictArchive
    from dagsync.config import FolderConfig
    from dagsync.index import Index
    from dagsync.model import FolderMode

    root, state = tmp_path / "dags", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    monkeypatch.setattr(engine, "wall_ms", lambda: NOW_MS)
    index = Index(state / "index.db")
    try:
        clock = engine.SharedClock(0)
        folder = engine.FolderEngine(
            FolderConfig("dags", root, FolderMode.SEND_RECEIVE, ()), "local", index,
            ConflictArchive(state), clock, 1 << 20,
        )
        await folder.open()
        data = b"print('from remote')\n"
        broken, ahead = (replace(fv("remote", {"remote": 1}, ms, path=path), size=len(data),
                                 hash=engine.content_hash(data))
                         for ms, path in ((NOW_MS + 25 * HOUR_MS, "broken.py"),
                                          (NOW_MS + HOUR_MS, "ahead.py")))

        class Source:
            async def fetch(self, v: FileVersion) -> bytes:
                return data

            async def fetch_many(self, vs: list[FileVersion]) -> list[bytes | BaseException]:
                return [data for _ in vs]

        outcome = await folder.apply_batch([broken, ahead], Source())
        assert sorted(outcome.applied) == ["ahead.py", "broken.py"]
        assert ahead.hlc < clock.last < broken.hlc
    finally:
        index.close()


def test_an_unversioned_record_relayed_from_another_node_is_no_conflict() -> None:
    """After a fresh start every node holds the adopting node's unversioned records; the
    first real edit of such a file must not look like a conflict anywhere else."""
    adopted = fv("a", {}, NOW_MS, "original")
    stale = fv("m", {"m": 1}, NOW_MS - 5, "made before the file was last touched")
    for node in ("a", "b"):
        # An edit made after the file's mtime: its author could see it. No conflict.
        edit = decide(adopted, fv("m", {"m": 1}, NOW_MS + 5, "edited"), self_node=node)
        assert edit.kind is ActionKind.FETCH and not edit.archive_local and not edit.conflict
    # A version older than the local file: on the node that found it, the file is kept.
    assert decide(adopted, stale, self_node="a").archive_local
    assert not decide(adopted, stale, self_node="b").archive_local


async def test_files_written_here_but_not_yet_scanned_are_kept_when_remote_versions_arrive(
    tmp_path: Path,
) -> None:
    """An apply looks for unrecorded files on disk (fsio.existing) before writing: each
    local file is registered and decided, so its content ends in the folder or in the
    conflict archive, never overwritten unseen; paths nothing holds are simply written."""
    from dagsync import engine
    from dagsync.archive import ConflictArchive
    from dagsync.config import FolderConfig
    from dagsync.index import Index
    from dagsync.model import FolderMode

    root, state = tmp_path / "dags", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    index = Index(state / "index.db")
    try:
        archive = ConflictArchive(state)
        folder = engine.FolderEngine(
            FolderConfig("dags", root, FolderMode.SEND_RECEIVE, ()), "local", index,
            archive, engine.SharedClock(0), 1 << 20,
        )
        await folder.open()
        local = {"team/a.py": b"a here\n", "team/b.py": b"b here\n", "solo.py": b"s here\n"}
        for rel, data in local.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)  # not scanned: the folder has no record of them
        paths = [*local, "team/new.py", "fresh/dir/new.py"]
        theirs = {rel: f"{rel} from remote\n".encode() for rel in paths}
        remotes = [replace(fv("remote", {"remote": 1}, NOW_MS, path=rel),
                           size=len(theirs[rel]), hash=engine.content_hash(theirs[rel]))
                   for rel in paths]

        class Source:
            async def fetch(self, v: FileVersion) -> bytes:
                return theirs[v.path]

            async def fetch_many(self, vs: list[FileVersion]) -> list[bytes | BaseException]:
                return [theirs[v.path] for v in vs]

        await folder.apply_batch(remotes, Source())
        archived = {e.path: archive.read(e.id) for e in archive.list()}
        for rel, data in local.items():
            assert {(root / rel).read_bytes(), archived.get(rel)} == {data, theirs[rel]}, rel
        for rel in ("team/new.py", "fresh/dir/new.py"):
            assert (root / rel).read_bytes() == theirs[rel]
            assert rel not in archived
    finally:
        index.close()


async def test_remote_entries_the_folders_ignore_rules_match_are_refused(tmp_path: Path) -> None:
    """The receiving side applies its own ignore rules to what peers send: an entry in an
    ignored directory or with an ignored name is refused and never written."""
    from dagsync import engine
    from dagsync.archive import ConflictArchive
    from dagsync.config import FolderConfig
    from dagsync.index import Index
    from dagsync.model import FolderMode

    root, state = tmp_path / "dags", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    index = Index(state / "index.db")
    try:
        folder = engine.FolderEngine(
            FolderConfig("dags", root, FolderMode.SEND_RECEIVE,
                         ("logs/", "team/tmp_*.py", "*.bak", "!keep.bak")),
            "local", index, ConflictArchive(state), engine.SharedClock(0), 1 << 20,
        )
        await folder.open()
        data = b"x = 1\n"
        paths = {"team/dag.py": None, "team/tmp_1.py": "ignored name",
                 "team/logs/x.py": "inside an ignored directory",
                 "logs/deep/y.py": "inside an ignored directory", "a.bak": "ignored name",
                 "keep.bak": None, "team/__pycache__/m.pyc": "inside an ignored directory",
                 "other/tmp_1.py": None}
        remotes = [replace(fv("remote", {"remote": 1}, NOW_MS, path=rel), size=len(data),
                           hash=engine.content_hash(data)) for rel in paths]

        class Source:
            async def fetch(self, v: FileVersion) -> bytes:
                return data

            async def fetch_many(self, vs: list[FileVersion]) -> list[bytes | BaseException]:
                return [data for _ in vs]

        outcome = await folder.apply_batch(remotes, Source())
        assert dict(outcome.refused) == {p: r for p, r in paths.items() if r is not None}
        assert sorted(outcome.applied) == sorted(p for p, r in paths.items() if r is None)
        for rel, reason in paths.items():
            assert (root / rel).exists() == (reason is None), rel
    finally:
        index.close()
