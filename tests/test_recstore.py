"""The packed in-memory record store gives back exactly what was put in (pure logic)."""

from __future__ import annotations

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


def test_mapping_behaviour() -> None:
    store = RecordStore()
    v = FileVersion("a.py", Kind.FILE, 3, 5, 0o644, "ab" * 16, False,
                    VersionVector.of({"m": 1}), 7, "m")
    store["a.py"] = Record(v, 1, None)
    store["b.py"] = Record(v, 2, LocalStat(3, 5, 9))
    assert len(store) == 2 and "a.py" in store and "c.py" not in store
    assert sorted(store) == ["a.py", "b.py"]
    assert store.get("c.py") is None and store.stat("c.py") is None
    del store["a.py"]
    assert list(store.keys()) == ["b.py"] and store["b.py"].version.path == "b.py"

