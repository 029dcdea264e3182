"""The packed in-memory record store gives back exactly what was put in (pure logic)."""

from __future__ import annotations

import sys

from hypothesis import given
from hypothesis import strategies as st

from dagsync.clock import VersionVector
from dagsync.index import LocalStat, Record
from dagsync.model import FileVersion, Kind
from dagsync.recstore import RecordStore

names = st.sampled_from(["master1", "worker-01", "wörker", "n" * 60])
hashes = st.one_of(st.just(""), st.text("0123456789abcdefABCDEF", min_size=32, max_size=32),
                   st.text(min_size=0, max_size=40))
ints64 = st.integers(min_value=0, max_value=2**62)


@st.composite
def records(draw: st.DrawFn) -> Record:
    vv = VersionVector.of(draw(st.dictionaries(names, st.integers(1, 2**63 - 1), max_size=4)))
    version = FileVersion(
        path=draw(st.text(min_size=1, max_size=30)), kind=draw(st.sampled_from(list(Kind))),
        size=draw(ints64), mtime_ns=draw(st.integers(-(2**62), 2**62)),
        mode=draw(st.integers(0, 0o7777)), hash=draw(hashes), deleted=draw(st.booleans()),
        vv=vv, hlc=draw(ints64), origin=draw(names), target=draw(st.text(max_size=50)),
    )
    stat = draw(st.none() | st.builds(LocalStat, ints64, st.integers(-(2**62), 2**62),
                                      st.integers(0, 2**64 - 1)))
    return Record(version, draw(ints64), stat)


@given(records())
def test_a_record_comes_back_equal_with_the_versions_mode_in_its_stat(rec: Record) -> None:
    store = RecordStore()
    store[rec.version.path] = rec
    got = store[rec.version.path]
    assert got.version == rec.version and got.seq == rec.seq
    if rec.stat is None:
        assert got.stat is None
    else:
        assert got.stat == LocalStat(rec.stat.size, rec.stat.mtime_ns, rec.stat.inode,
                                     rec.version.mode)
    live = rec.stat is not None and not rec.version.deleted
    assert store.stat(rec.version.path) == (got.stat if live else None)
    v = rec.version
    assert store.file_hash(v.path) == (v.hash if v.kind is Kind.FILE and not v.deleted
                                       else None)
    assert store.file_hash(v.path + "/nope") is None
    by_fields = RecordStore()  # as a folder's records are loaded at start-up
    by_fields.put_fields(v.path, rec.seq, v.kind, v.size, v.mtime_ns, v.mode, v.hash,
                         v.deleted, v.vv.counters, v.hlc, v.origin, v.target,
                         None if rec.stat is None else
                         (rec.stat.size, rec.stat.mtime_ns, rec.stat.inode))
    assert by_fields[v.path] == got


def test_mapping_behaviour() -> None:
    store = RecordStore()
    v = FileVersion("a.py", Kind.FILE, 3, 5, 0o644, "ab" * 16, False,
                    VersionVector.of({"m": 1}), 7, "m")
    store["a.py"] = Record(v, 1, None)
    store["b.py"] = Record(v, 2, LocalStat(3, 5, 9))
    assert len(store) == 2 and "a.py" in store and "c.py" not in store
    assert sorted(store) == ["a.py", "b.py"]
    assert store.get("c.py") is None and store.stat("c.py") is None
    assert store.get(7) is None and store.get("c.py", store["b.py"]) == store["b.py"]  # type: ignore[call-overload]
    del store["a.py"]
    assert list(store.keys()) == ["b.py"] and store["b.py"].version.path == "b.py"


def _rec(path: str, seq: int, size: int = 3, vv: dict[str, int] | None = None) -> Record:
    v = FileVersion(path, Kind.FILE, size, 5, 0o644, "ab" * 16, False,
                    VersionVector.of(vv or {"m": seq}), seq, "m")
    return Record(v, seq, LocalStat(size, 5, seq, 0o644))


ops = st.lists(st.tuples(st.sampled_from(["set", "set", "del", "grow"]),
                         st.sampled_from([f"d{i % 7}/f{i}.py" for i in range(40)] + ["é/ü.py"]),
                         st.integers(1, 10**6)), max_size=300)


@given(ops)
def test_any_sequence_of_writes_and_deletes_reads_like_a_dict(
    seq_ops: list[tuple[str, str, int]],
) -> None:
    """The open-addressing table, in-place overwrites, appends of reshaped records,
    tombstones, rehashing and compaction never lose or confuse an entry."""
    store, model = RecordStore(), {}
    for op, path, n in seq_ops:
        if op == "set":
            store[path] = model[path] = _rec(path, n)
        elif op == "grow":  # a longer vector: the packed record changes size
            store[path] = model[path] = _rec(path, n, vv={"m": n, "other-node": n + 1})
        elif path in model:
            del store[path]
            del model[path]
        else:
            assert path not in store
    assert len(store) == len(model)
    assert sorted(store) == sorted(model)
    for path, rec in model.items():
        assert store[path] == rec and store.seq(path) == rec.seq
        assert store.get(path) == rec
    for path in {p for _, p, _ in seq_ops} - model.keys():
        assert store.get(path) is None and store.get(path, model.get("x")) is None


def test_many_entries_survive_growth_and_compaction() -> None:
    store = RecordStore()
    for i in range(5000):
        store[f"dags/{i}.py"] = _rec(f"dags/{i}.py", i + 1)
    for i in range(0, 5000, 2):
        del store[f"dags/{i}.py"]
    for i in range(1, 5000, 2):  # reshaped: appended, the old entry dead
        store[f"dags/{i}.py"] = _rec(f"dags/{i}.py", i + 1, vv={"m": i, "n2": 1})
    assert len(store) == 2500
    assert store._dead < len(store._buf)  # compacted at least once on the way
    assert all(store[f"dags/{i}.py"].seq == i + 1 for i in range(1, 5000, 2))
    assert "dags/0.py" not in store and store.get("dags/0.py") is None
    store.clear()
    assert len(store) == 0 and list(store) == []


def test_iteration_is_a_snapshot_so_the_store_may_change_meanwhile() -> None:
    store = RecordStore()
    for i in range(100):
        store[f"{i}.py"] = _rec(f"{i}.py", i + 1)
    for path in store:
        del store[path]
    assert len(store) == 0


def test_no_small_object_per_entry() -> None:
    """The point of the layout: entries do not become small-allocator blocks (they would
    pin its arenas for good after a sync; see the module docstring)."""
    store = RecordStore()
    recs = [_rec(f"dags/{i}.py", i + 1) for i in range(2000)]
    before = sys.getallocatedblocks()
    for r in recs:
        store[r.version.path] = r
    assert sys.getallocatedblocks() - before < 100  # not one per entry
    assert sys.getsizeof(store._buf) < 2000 * 300
