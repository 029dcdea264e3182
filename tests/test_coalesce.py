"""Index batches waiting in a link's inbox merge into one apply round (pure logic)."""

from __future__ import annotations

from typing import Any, cast

from dagsync import protocol as p
from dagsync.clock import VersionVector
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
    _forget_echoes(lk, entries, applied=["applied.py"])
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
