"""Echo runs: the records a receiver writes from a peer's versions are noted as they are
written, and its sender passes them without reading them back from the index, with the
same batch as reading them would give (pure logic over a real index database)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from dagsync.clock import VersionVector
from dagsync.folder_link import (
    FolderLink,
    drop_echo_runs,
    next_index_batch,
    note_recorded,
)
from dagsync.index import Index, Record
from dagsync.model import FileVersion, Kind


def version(path: str, counter: int, origin: str = "a") -> FileVersion:
    return FileVersion(
        path=path, kind=Kind.FILE, size=1, mtime_ns=1, mode=0o644, hash="0" * 32,
        deleted=False, vv=VersionVector.of({origin: counter}), hlc=counter, origin=origin,
    )


def _link(ix: Index, max_seq: int) -> FolderLink:
    folder = SimpleNamespace(id="dags", index_id=7, max_seq=max_seq, publishes=lambda v: True)
    return FolderLink(folder=cast(Any, folder), their_index_id=7, their_max_seq=0,
                      sent_seq=0, processed_seq=0)


class CountingIndex:
    """A real index that counts the records `since` reads back."""

    def __init__(self, ix: Index) -> None:
        self.ix = ix
        self.read = 0

    def since(self, *args: Any, **kwargs: Any) -> list[Record]:
        got = self.ix.since(*args, **kwargs)
        self.read += len(got)
        return got


def _write(ix: Index, echoes: list[bool], link: FolderLink) -> list[Record]:
    """Records p0.py.. in one put: where `echoes[i]`, the version is the peer's own
    (its note on the link is that very object), else one of ours it has not seen."""
    versions = []
    for i, echo in enumerate(echoes):
        v = version(f"p{i}.py", 1) if echo else version(f"p{i}.py", 1, origin="b")
        if echo:
            link.echo[v.path] = v
        versions.append(v)
    return ix.put("dags", [(v, None) for v in versions])


def test_records_that_are_the_peers_own_versions_become_runs(tmp_path: Any) -> None:
    ix = Index(tmp_path / "index.db")
    lk = _link(ix, 0)
    records = _write(ix, [True, True, False, True, True, True], lk)
    lk.echo["p4.py"] = version("p4.py", 1)  # equal, not the same object: still an echo
    note_recorded(lk, records)
    assert [(r.first, r.last) for r in lk.echo_runs] == [(1, 2), (4, 6)]
    assert [path for path, _ in lk.echo_runs[1].notes] == ["p3.py", "p4.py", "p5.py"]
    more = ix.put("dags", [(lk.echo["p0.py"], None)])  # the next step's record, seq 7
    note_recorded(lk, more)
    assert [(r.first, r.last) for r in lk.echo_runs] == [(1, 2), (4, 7)]  # run extended
    ix.close()


def test_a_sender_passes_echo_runs_unread_and_sends_the_rest(tmp_path: Any) -> None:
    ix = Index(tmp_path / "index.db")
    echoes = [True] * 300 + [False] * 5 + [True] * 300 + [False]
    lk = _link(ix, len(echoes))
    note_recorded(lk, _write(ix, echoes, lk))
    counting = CountingIndex(ix)
    frame, consumed = next_index_batch(cast(Any, counting), lk, 0)
    assert frame is not None
    assert [e.path for e in frame.decode().entries] == [
        f"p{i}.py" for i, echo in enumerate(echoes) if not echo]
    assert (frame.last_seq, frame.caught_up) == (len(echoes), True)
    assert counting.read == 6  # only the records that are not echoes were read back
    assert len(consumed) == 600  # every note passed is handed back to be dropped
    drop_echo_runs(lk, frame.last_seq)
    assert lk.echo_runs == []
    ix.close()


def test_a_batch_starting_inside_a_run_passes_only_the_rest_of_it(tmp_path: Any) -> None:
    """A batch read from the index before the run was noted may have ended inside it."""
    ix = Index(tmp_path / "index.db")
    lk = _link(ix, 10)
    note_recorded(lk, _write(ix, [True] * 10, lk))
    frame, consumed = next_index_batch(ix, lk, 4)
    assert frame is not None and frame.count == 0
    assert (frame.from_seq, frame.last_seq) == (4, 10)
    assert [path for path, _ in consumed] == [f"p{i}.py" for i in range(4, 10)]
    drop_echo_runs(lk, 7)
    assert [(r.first, r.last) for r in lk.echo_runs] == [(1, 10)]  # not passed whole yet
    ix.close()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.booleans(), min_size=1, max_size=700), st.integers(0, 20))
def test_runs_give_the_batch_reading_everything_back_gives(
    tmp_path_factory: Any, echoes: list[bool], start: int
) -> None:
    """The runs are only a shortcut: the entries sent, where the batch ends and the notes
    handed back are those of the sender that reads every record."""
    ix = Index(tmp_path_factory.mktemp("ix") / "index.db")
    lk = _link(ix, len(echoes))
    note_recorded(lk, _write(ix, echoes, lk))
    start = min(start, len(echoes))
    with_runs = next_index_batch(ix, lk, start, limit=250)
    runs, lk.echo_runs = lk.echo_runs, []
    reading = next_index_batch(ix, lk, start, limit=250)
    lk.echo_runs = runs
    if reading[0] is None:
        assert with_runs[0] is None
    else:
        assert with_runs[0] is not None
        assert with_runs[0].body == reading[0].body
        assert with_runs[0].last_seq == reading[0].last_seq
    assert sorted(p for p, _ in with_runs[1]) == sorted(p for p, _ in reading[1])
    ix.close()


def test_a_batch_after_records_known_to_hold_nothing_to_send_still_starts_at_start(
    tmp_path: Any,
) -> None:
    """While the peer's round runs, a sender holds back batches of echoes only and later
    sends one batch from where the peer is, without passing those records again."""
    ix = Index(tmp_path / "index.db")
    echoes = [True] * 10 + [False] * 3
    lk = _link(ix, len(echoes))
    note_recorded(lk, _write(ix, echoes, lk))
    whole, _ = next_index_batch(ix, lk, 0)
    counting = CountingIndex(ix)
    resumed, consumed = next_index_batch(cast(Any, counting), lk, 0, passed=10)
    assert whole is not None and resumed is not None
    assert (resumed.from_seq, resumed.last_seq, resumed.body) == (0, 13, whole.body)
    assert counting.read == 3 and consumed == []
    ix.close()
