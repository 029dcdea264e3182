"""Index batches waiting in a link's inbox merge into one apply round, and a running
round takes in the batches that follow on from it (pure logic)."""

from __future__ import annotations

from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from dagsync import folder_link
from dagsync import protocol as p
from dagsync.clock import VersionVector
from dagsync.folder_link import Round
from dagsync.model import FileVersion, Kind
from dagsync.peer import FolderLink, _coalesce


def version(path: str, counter: int) -> FileVersion:
    return FileVersion(
        path=path, kind=Kind.FILE, size=1, mtime_ns=1, mode=0o644, hash="0" * 32,
        deleted=False, vv=VersionVector.of({"a": counter}), hlc=counter, origin="a",
    )


def index(from_seq: int, last_seq: int, *entries: FileVersion, caught_up: bool = False
          ) -> p.Index:
    return p.Index("dags", 7, tuple(entries), last_seq, caught_up, from_seq)


def link() -> FolderLink:
    return FolderLink(folder=cast(Any, None), their_index_id=7, their_max_seq=0,
                      sent_seq=0, processed_seq=0)


def test_a_lone_batch_is_left_as_it_is() -> None:
    lk = link()
    msg = index(0, 2, version("a.py", 1))
    assert _coalesce(lk, msg) is msg


def test_contiguous_batches_merge_and_a_later_version_of_a_path_wins() -> None:
    lk = link()
    lk.inbox.put_nowait(index(2, 4, version("b.py", 3), version("a.py", 4)))
    lk.inbox.put_nowait(index(4, 5, version("c.py", 5), caught_up=True))
    merged = _coalesce(lk, index(0, 2, version("a.py", 1), version("x.py", 2)))
    assert (merged.from_seq, merged.last_seq, merged.caught_up) == (0, 5, True)
    assert {e.path: e.hlc for e in merged.entries} == {"a.py": 4, "x.py": 2, "b.py": 3,
                                                       "c.py": 5}
    assert lk.inbox.empty() and lk.held is None


def test_a_gap_stops_merging_and_the_batch_after_it_is_held() -> None:
    lk = link()
    after_gap = index(9, 12, version("z.py", 12))
    lk.inbox.put_nowait(index(2, 3, version("b.py", 3)))
    lk.inbox.put_nowait(after_gap)
    lk.inbox.put_nowait(index(12, 13, version("y.py", 13)))
    merged = _coalesce(lk, index(0, 2, version("a.py", 2)))
    assert (merged.from_seq, merged.last_seq) == (0, 3)
    assert [e.path for e in merged.entries] == ["a.py", "b.py"]
    assert lk.held is after_gap and lk.inbox.qsize() == 1


def test_a_running_round_takes_in_the_batches_that_follow_it() -> None:
    lk = link()
    first = index(0, 2, version("a.py", 1), version("x.py", 2))
    rnd = Round(lk, first)
    assert rnd.more() == ()  # nothing waiting yet: the round may end
    second = index(2, 4, version("b.py", 3), version("a.py", 4))
    lk.inbox.put_nowait(second)
    lk.inbox.put_nowait(index(4, 5, caught_up=True))  # "caught up", no entries
    lk.inbox.put_nowait(index(5, 6, version("c.py", 6)))
    assert rnd.more() == second.entries
    assert (rnd.last_seq, rnd.caught_up) == (4, False)
    assert [e.path for e in rnd.more()] == ["c.py"]  # the empty batch is passed over
    assert (rnd.last_seq, rnd.caught_up) == (6, False)
    assert rnd.more() == ()
    assert set(lk.echo) == {"b.py", "a.py", "c.py"}  # taken-in versions: never sent back
    assert lk.echo["a.py"].hlc == 4


def test_a_round_takes_in_no_batch_after_a_gap_and_holds_it() -> None:
    lk = link()
    rnd = Round(lk, index(0, 2, version("a.py", 2)))
    after_gap = index(9, 12, version("z.py", 12))
    lk.inbox.put_nowait(after_gap)
    lk.inbox.put_nowait(index(12, 13, version("y.py", 13)))
    assert rnd.more() == ()
    assert lk.held is after_gap and lk.inbox.qsize() == 1
    assert rnd.last_seq == 2
    assert rnd.more() == ()  # a held batch waits for a round of its own


def test_a_round_stops_growing_at_its_limit(monkeypatch: Any) -> None:
    """Progress is saved and acknowledged when a round ends: a long initial sync must
    still end a round now and then."""
    monkeypatch.setattr(folder_link, "GROW_ENTRIES", 3)
    lk = link()
    rnd = Round(lk, index(0, 2, version("a.py", 1), version("b.py", 2)))
    lk.inbox.put_nowait(index(2, 3, version("c.py", 3)))
    lk.inbox.put_nowait(index(3, 4, version("d.py", 4)))
    assert [e.path for e in rnd.more()] == ["c.py"]
    assert rnd.more() == ()
    assert lk.inbox.qsize() == 1 and rnd.last_seq == 3


def test_echo_notes_the_sender_will_never_consume_are_dropped() -> None:
    """After a round, a note is kept only for a path whose record the sender has yet to
    send (it is consumed then); others would stay in memory for the connection's life."""
    from types import SimpleNamespace

    from dagsync.index import Record
    from dagsync.peer import _forget_echoes
    from dagsync.recstore import RecordStore

    records = RecordStore()
    for seq, path in enumerate(["sent.py", "unsent.py", "applied.py"], start=1):
        records[path] = Record(version(path, seq), seq * 10, None)
    lk = FolderLink(folder=cast(Any, SimpleNamespace(records=records)), their_index_id=7,
                    their_max_seq=0, sent_seq=15, processed_seq=0)
    entries = [version(p, 1) for p in ("sent.py", "unsent.py", "applied.py", "unknown.py")]
    lk.echo.update((e.path, e) for e in entries)
    _forget_echoes(lk, applied=["applied.py"])
    assert sorted(lk.echo) == ["applied.py", "unsent.py"]


def received(msg: p.Index) -> p.IndexFrame:
    """`msg` as a Session hands it over: checked, its entries still encoded."""
    frame = p.decode_body(2, p.encode(msg)[5:])
    assert isinstance(frame, p.IndexFrame)
    return frame


def test_received_batches_wait_encoded_and_merge_when_applied() -> None:
    lk = link()
    second = received(index(2, 4, version("b.py", 3), version("a.py", 4), caught_up=True))
    assert (second.from_seq, second.last_seq, second.count) == (2, 4, 2)
    assert p.encode(second) == p.encode(second.decode())  # relayed as it came
    lk.inbox.put_nowait(second)
    merged = _coalesce(lk, received(index(0, 2, version("a.py", 1))))
    assert isinstance(merged, p.Index)
    assert (merged.from_seq, merged.last_seq, merged.caught_up) == (0, 4, True)
    assert {e.path: e.hlc for e in merged.entries} == {"a.py": 4, "b.py": 3}


def test_a_round_stops_merging_at_its_entry_cap(monkeypatch: Any) -> None:
    """An initial sync arrives as many batches; a round takes a few, the rest wait."""
    import dagsync.folder_link as fl

    monkeypatch.setattr(fl, "COALESCE_ENTRIES", 4)
    lk = link()
    for n in range(1, 5):  # four more batches of two entries each
        lk.inbox.put_nowait(received(index(2 * n, 2 * n + 2, version(f"{n}a.py", 2 * n + 1),
                                           version(f"{n}b.py", 2 * n + 2))))
    merged = _coalesce(lk, received(index(0, 2, version("x.py", 1), version("y.py", 2))))
    assert (merged.from_seq, merged.last_seq, len(merged.entries)) == (0, 4, 4)
    assert lk.inbox.qsize() == 3 and all(isinstance(m, p.IndexFrame)
                                         for m in lk.inbox._queue)  # type: ignore[attr-defined]


def _sending_link(tmp_path: Any, publish: Any = lambda v: True) -> tuple[Any, FolderLink]:
    """A link over a real index database holding versions of p0.py .. p599.py."""
    from types import SimpleNamespace

    from dagsync.index import Index

    ix = Index(tmp_path / "index.db")
    recs = ix.put("dags", [(version(f"p{i}.py", 1), None) for i in range(600)])
    folder = SimpleNamespace(id="dags", index_id=7, max_seq=recs[-1].seq, publishes=publish)
    return ix, FolderLink(folder=cast(Any, folder), their_index_id=7, their_max_seq=0,
                          sent_seq=0, processed_seq=0)


def test_the_next_index_batch_leaves_out_echoes_and_unpublished_versions(tmp_path: Any) -> None:
    """What the peer sent us is not sent back, a version it sent that we replaced is;
    every note looked at is handed back for the caller to drop; the batch still covers
    every record read, so progress moves past the ones left out."""
    from dagsync.folder_link import next_index_batch

    ix, lk = _sending_link(tmp_path, publish=lambda v: v.path != "p3.py")
    lk.echo["p1.py"] = version("p1.py", 1)  # exactly ours: an echo
    lk.echo["p2.py"] = version("p2.py", 0)  # the peer's older version: ours goes out
    frame_, consumed = next_index_batch(ix, lk, 0)
    assert frame_ is not None
    sent = [e.path for e in frame_.decode().entries]
    assert len(sent) == 598 and "p1.py" not in sent and "p3.py" not in sent
    assert "p2.py" in sent and sorted(path for path, _ in consumed) == ["p1.py", "p2.py"]
    assert (frame_.from_seq, frame_.last_seq, frame_.caught_up) == (0, 600, True)
    assert next_index_batch(ix, lk, 600) == (None, [])
    ix.close()


def test_an_echo_note_replaced_while_the_batch_was_read_is_kept(tmp_path: Any) -> None:
    """The puller may note a newer version from the peer while the sender's batch is read
    in a worker thread; dropping the batch's notes must not drop that one, or the peer's
    own newer version would be sent back to it."""
    from dagsync.folder_link import drop_echoes, next_index_batch

    ix, lk = _sending_link(tmp_path)
    lk.echo["p1.py"] = version("p1.py", 1)
    lk.echo["p2.py"] = version("p2.py", 1)
    _, consumed = next_index_batch(ix, lk, 0)
    newer = version("p2.py", 2)
    lk.echo["p2.py"] = newer  # arrived meanwhile
    drop_echoes(lk, consumed)
    assert lk.echo == {"p2.py": newer}
    drop_echoes(lk, [("p2.py", newer)])
    assert lk.echo == {}
    ix.close()


def test_a_full_index_batch_ends_at_the_last_record_it_took(tmp_path: Any,
                                                            monkeypatch: Any) -> None:
    from dagsync import folder_link

    monkeypatch.setattr(p, "MAX_INDEX_ENTRIES", 260)
    ix, lk = _sending_link(tmp_path)
    first, _ = folder_link.next_index_batch(ix, lk, 0)
    assert first is not None and (first.count, first.last_seq, first.caught_up) == (260, 260,
                                                                                     False)
    second, _ = folder_link.next_index_batch(ix, lk, first.last_seq)
    assert second is not None and second.from_seq == 260
    assert second.decode().entries[0].path == "p260.py"
    ix.close()


def test_a_limited_index_batch_stops_at_its_limit_and_the_next_goes_on(tmp_path: Any) -> None:
    """The first batch of a connection is short (FIRST_BATCH_ENTRIES), so a new node
    starts applying sooner; the batches after it are full again and cover the rest."""
    from dagsync import folder_link

    ix, lk = _sending_link(tmp_path)
    first, _ = folder_link.next_index_batch(ix, lk, 0, limit=250)
    assert first is not None and (first.count, first.last_seq, first.caught_up) == (250, 250,
                                                                                     False)
    rest, _ = folder_link.next_index_batch(ix, lk, first.last_seq)
    assert rest is not None and (rest.from_seq, rest.count, rest.caught_up) == (250, 350, True)
    assert [e.path for e in rest.decode().entries][:1] == ["p250.py"]
    from dagsync.remote_apply import APPLY_CHUNK, BULK_ROUND, FIRST_CHUNK

    # an initial sync's first round is still a bulk one, which takes in the batches after,
    # and its first batch is cut into whole chunks
    assert BULK_ROUND <= folder_link.FIRST_BATCH_ENTRIES <= p.MAX_INDEX_ENTRIES
    assert (folder_link.FIRST_BATCH_ENTRIES - FIRST_CHUNK) % APPLY_CHUNK == 0
    ix.close()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.lists(st.text(st.characters(blacklist_characters="\0"), min_size=1,
                                 max_size=30), max_size=6), max_size=6))
def test_applied_paths_give_back_every_path_in_order(chunks: list[list[str]]) -> None:
    """A round's applied paths, packed one string per chunk, come back as they went in
    (paths never hold NUL: check_relpath refuses it and a file system cannot)."""
    from dagsync.folder_state import AppliedPaths

    applied = AppliedPaths()
    for chunk in chunks:
        applied.extend(chunk)
    flat = [path for chunk in chunks for path in chunk]
    assert list(applied) == flat and len(applied) == len(flat)
    assert bool(applied) is bool(flat)
    applied.append("one/more.py")
    assert list(applied)[-1] == "one/more.py" and len(applied) == len(flat) + 1
