"""The per-node SQLite index: records, sequence numbers, peers' progress, metadata."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from dagsync.clock import VersionVector
from dagsync.errors import DagsyncError
from dagsync.index import SEQ_GAP, Index, LocalStat
from dagsync.model import FileVersion, Kind


def fv(path: str, n: int = 1, *, deleted: bool = False, kind: Kind = Kind.FILE) -> FileVersion:
    return FileVersion(
        path=path,
        kind=kind,
        size=0 if deleted else 10 * n,
        mtime_ns=1_700_000_000_000_000_000 + n,
        mode=0o644,
        hash="" if deleted else f"{n:032x}",
        deleted=deleted,
        vv=VersionVector.of({"master1": n, "worker2": 2}),
        hlc=(1_700_000_000_000 << 16) + n,
        origin="master1",
        target="target.py" if kind is Kind.SYMLINK else "",
    )


def st(n: int) -> LocalStat:
    return LocalStat(size=10 * n, mtime_ns=1_700_000_000_000_000_000 + n, inode=1000 + n)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "state" / "index.db"


@pytest.fixture
def index(db: Path) -> Iterator[Index]:
    db.parent.mkdir()
    ix = Index(db)
    yield ix
    ix.close()


def test_put_get_round_trip(index: Index) -> None:
    versions = [
        (fv("a.py", 1), st(1)),
        (fv("sub/b.py", 2, deleted=True), None),
        (fv("link", 3, kind=Kind.SYMLINK), st(3)),
    ]
    recs = index.put("dags", versions)
    assert [r.version for r in recs] == [v for v, _ in versions]
    assert [r.stat for r in recs] == [s for _, s in versions]
    for rec in recs:
        assert index.get("dags", rec.version.path) == rec
    assert index.get("dags", "missing.py") is None
    assert index.get("plugins", "a.py") is None


def test_empty_folder(index: Index) -> None:
    assert index.max_seq("dags") == 0
    assert index.load("dags") == {}
    assert index.since("dags", 0) == []
    assert index.count("dags") == (0, 0)
    assert index.put("dags", []) == []


def test_seq_strictly_increasing_and_never_reused_across_replacements(index: Index) -> None:
    seqs = [r.seq for r in index.put("dags", [(fv("a.py", 1), st(1)), (fv("b.py", 1), st(1))])]
    assert seqs == [1, 2]
    rec = index.put("dags", [(fv("a.py", 2), st(2))])[0]
    assert rec.seq == 3
    rec = index.put("dags", [(fv("a.py", 3), st(3))])[0]
    assert rec.seq == 4  # 3 was replaced, its number is not handed out again
    assert index.max_seq("dags") == 4
    loaded = index.load("dags")
    assert set(loaded) == {"a.py", "b.py"}  # one row per path
    assert loaded["a.py"].version == fv("a.py", 3)
    assert loaded["a.py"].seq == 4
    # folders count separately
    assert index.put("plugins", [(fv("a.py", 1), st(1))])[0].seq == 1
    assert index.max_seq("dags") == 4


def test_same_path_twice_in_one_batch_keeps_the_last(index: Index) -> None:
    recs = index.put("dags", [(fv("a.py", 1), st(1)), (fv("a.py", 2), st(2))])
    assert [r.seq for r in recs] == [1, 2]
    assert index.get("dags", "a.py") == recs[1]


def test_a_put_of_several_statements_keeps_order_and_every_field(index: Index) -> None:
    """A put is written many rows a statement (256 here): 600 records span three
    statements, the last one shorter, and come back field for field in seq order."""
    versions = [(fv(f"d{i % 7}/f{i:04d}.py", i + 1), st(i + 1) if i % 5 else None)
                for i in range(600)]
    recs = index.put("dags", versions)
    assert [r.seq for r in recs] == list(range(1, 601))
    assert index.since("dags", 0, limit=1000) == recs
    assert index.max_seq("dags") == 600


def test_puts_of_every_length_prepare_a_few_statements(index: Index) -> None:
    """The connection keeps every statement it prepared: puts of 1 to 150 records must
    share a few insert lengths (powers of two), not prepare one of each length."""
    from dagsync.index import _insert_sql

    _insert_sql.cache_clear()
    n = 0
    for size in range(1, 151):
        index.put("dags", [(fv(f"f{n + i}.py", n + i + 1), st(n + i + 1))
                           for i in range(size)])
        n += size
    assert _insert_sql.cache_info().currsize <= 8
    assert index.max_seq("dags") == n == len(index.load("dags"))


def _bytes_written() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("wchar")).split()[1])


def test_recording_writes_no_more_than_the_database_holds(index: Index, db: Path) -> None:
    """Recording an initial sync's files, group by group, writes the WAL and nothing
    else: a many-row INSERT's statement journal spilled to a temp file tripled what was
    written (4,000 files: 10.5 MB against the 3.5 MB the database and its WAL hold)."""
    import hashlib

    versions = [(replace(fv(f"dags/t{i % 7}/f{i:05d}.py", i + 1),
                         hash=hashlib.md5(str(i).encode()).hexdigest()), st(i + 1))
                for i in range(4000)]
    before = _bytes_written()
    for start in range(0, len(versions), 500):
        index.put("dags", versions[start:start + 500])
    written = _bytes_written() - before
    wal = db.with_name(db.name + "-wal")
    held = db.stat().st_size + wal.stat().st_size
    assert written < 1.5 * held, f"wrote {written} bytes for a database of {held}"
    assert index.max_seq("dags") == 4000


def test_unusual_text_and_extreme_numbers_come_back_unchanged(index: Index) -> None:
    """Records are read back as one JSON document a query: every character a file name
    may hold and every integer a field may hold must survive it, inode numbers of 2**63
    and more included (st_ino is unsigned; overlayfs with xino gives such numbers)."""
    names = ['quote".py', "back\\slash.py", "new\nline.py", "tab\t.py", "ctl\x01\x1f.py",
             "ünï cødé/日本.py", "emoji 🚀.py", "slash/../dots.py", "\u2028sep.py"]
    versions = [
        (replace(fv(name, i + 1), mtime_ns=-(2**63) + i, hlc=2**63 - 1 - i,
                 size=2**62 + i, origin='o"r\\i\ngin', target=name), LocalStat(
                     size=2**63 - 1, mtime_ns=-1, inode=2**64 - 1 - i if i % 2 else 2**63 + i))
        for i, name in enumerate(names)
    ]
    recs = index.put("dags", versions)
    assert index.since("dags", 0) == recs
    assert index.load("dags") == {r.version.path: r for r in recs}
    assert [index.get("dags", name) for name in names] == recs
    fields = list(index.each_fields("dags", page=4))
    assert [f[0] for f in fields] == sorted(names)
    assert {f[0]: f[12] for f in fields} == {
        r.version.path: (r.stat.size, r.stat.mtime_ns, r.stat.inode) for r in recs if r.stat}
    index.update_stat("dags", names[0], LocalStat(size=1, mtime_ns=2, inode=2**64 - 1))
    assert index.get("dags", names[0]).stat == LocalStat(size=1, mtime_ns=2, inode=2**64 - 1)


def test_since_paginates_in_seq_order(index: Index) -> None:
    index.put("dags", [(fv(f"f{i}.py", i), st(i)) for i in range(1, 26)])
    index.put("dags", [(fv("f3.py", 100), st(100))])  # f3 moves to the end (seq 26)
    seen: list[int] = []
    cursor = 0
    while page := index.since("dags", cursor, limit=10):
        assert len(page) <= 10
        seen.extend(r.seq for r in page)
        cursor = page[-1].seq
    assert seen == [s for s in range(1, 27) if s != 3]
    assert [r.version.path for r in index.since("dags", 25)] == ["f3.py"]
    assert index.since("dags", 26) == []


def test_since_reuses_a_noted_version_only_when_every_field_equals(index: Index) -> None:
    """The sender's echo check: a record equal to the peer's note carries the note
    itself; one differing from it in any field gets a version of its own."""
    index.put("dags", [(fv(f"f{i}.py", i), st(i)) for i in range(1, 13)])
    index.put("dags", [(fv("link.py", 13, kind=Kind.SYMLINK), None),
                       (fv("gone.py", 14, deleted=True), None)])
    same = {f"f{i}.py": fv(f"f{i}.py", i) for i in range(1, 13)}
    same["link.py"] = fv("link.py", 13, kind=Kind.SYMLINK)
    same["gone.py"] = fv("gone.py", 14, deleted=True)
    differing = {  # one field off each
        "f2.py": replace(fv("f2.py", 2), size=1),
        "f3.py": replace(fv("f3.py", 3), mtime_ns=1),
        "f4.py": replace(fv("f4.py", 4), mode=0o600),
        "f5.py": replace(fv("f5.py", 5), hash="f" * 32),
        "f6.py": replace(fv("f6.py", 6), deleted=True),
        "f7.py": replace(fv("f7.py", 7), vv=VersionVector.of({"master1": 7})),
        "f8.py": replace(fv("f8.py", 8), hlc=fv("f1.py", 1).hlc),
        "f9.py": replace(fv("f9.py", 9), origin="worker2"),
        "f10.py": replace(fv("f10.py", 10), target="x"),
        "f11.py": replace(fv("f11.py", 11), kind=Kind.SYMLINK),
    }
    notes = {**same, **differing}
    plain = index.since("dags", 0, 100)
    got = index.since("dags", 0, 100, reuse=notes)
    assert got == plain  # the same records, field for field
    assert [r.seq for r in got] == list(range(1, 15))
    for r in got:
        assert (r.version is notes[r.version.path]) == (r.version.path not in differing)
    assert [r.seq for r in index.since("dags", 10, 3, reuse=notes)] == [11, 12, 13]


def test_update_stat_keeps_seq(index: Index) -> None:
    rec = index.put("dags", [(fv("a.py", 1), st(1))])[0]
    index.update_stat("dags", "a.py", st(9))
    got = index.get("dags", "a.py")
    assert got is not None
    assert got.stat == st(9)
    assert got.seq == rec.seq
    assert got.version == rec.version
    assert index.max_seq("dags") == rec.seq
    index.update_stat("dags", "nothing.py", st(9))  # unknown: no effect
    assert index.get("dags", "nothing.py") is None


def test_count_excludes_deletes(index: Index) -> None:
    index.put(
        "dags",
        [(fv("a.py", 1), st(1)), (fv("b.py", 2), st(2)), (fv("c.py", 3, deleted=True), None)],
    )
    assert index.count("dags") == (2, 30)
    index.put("dags", [(fv("a.py", 1, deleted=True), None)])
    assert index.count("dags") == (1, 20)


def test_peer_progress(index: Index) -> None:
    assert index.peer_progress("worker1", "dags") is None
    index.set_peer_progress("worker1", "dags", 123, 7)
    index.set_peer_progress("worker1", "plugins", 456, 1)
    assert index.peer_progress("worker1", "dags") == (123, 7)
    index.set_peer_progress("worker1", "dags", 124, 2)
    assert index.peer_progress("worker1", "dags") == (124, 2)
    assert index.peer_progress("worker1", "plugins") == (456, 1)
    assert index.peer_progress("worker2", "dags") is None


def test_meta(index: Index) -> None:
    assert index.get_meta("hlc") is None
    index.set_meta("hlc", "42")
    index.set_meta("hlc", "43")
    assert index.get_meta("hlc") == "43"


def test_index_id_is_random_positive_63_bit_and_per_folder(index: Index) -> None:
    a, b = index.index_id("dags"), index.index_id("plugins")
    assert 0 < a < 2**63
    assert 0 < b < 2**63
    assert a != b
    assert index.index_id("dags") == a


def test_reopen_persists_everything(db: Path) -> None:
    db.parent.mkdir()
    with Index(db) as ix:
        ix.put("dags", [(fv("a.py", 1), st(1)), (fv("b.py", 2, deleted=True), None)])
        ix.put("dags", [(fv("a.py", 3), st(3))])
        ix.update_stat("dags", "a.py", st(4))
        ix.set_peer_progress("w1", "dags", 99, 5)
        ix.set_meta("hlc", "77")
        iid = ix.index_id("dags")
        before = ix.load("dags")
    with Index(db) as ix:
        assert ix.load("dags") == before
        assert ix.max_seq("dags") == 3
        assert ix.index_id("dags") == iid
        assert ix.peer_progress("w1", "dags") == (99, 5)
        assert ix.get_meta("hlc") == "77"
        assert ix.put("dags", [(fv("c.py", 1), st(1))])[0].seq == 4


def test_deleted_database_gets_a_new_index_id(db: Path) -> None:
    db.parent.mkdir()
    with Index(db) as ix:
        first = ix.index_id("dags")
        ix.put("dags", [(fv("a.py"), st(1))])
    for f in db.parent.iterdir():
        f.unlink()
    with Index(db) as ix:
        assert ix.index_id("dags") != first
        assert ix.max_seq("dags") == 0


def test_unclean_shutdown_moves_sequence_numbers_ahead(db: Path) -> None:
    """After a crash the last transactions may be lost (synchronous=NORMAL): numbers
    handed out after restart must not collide with ones peers may already have seen."""
    db.parent.mkdir()
    ix = Index(db)
    ix.put("dags", [(fv("a.py", 1), st(1))])
    iid = ix.index_id("dags")
    # simulate a crash: drop the connection without marking the index closed
    conn = ix._conn
    assert conn is not None
    conn.close()
    ix._conn = None
    with Index(db) as ix2:
        assert ix2.index_id("dags") == iid
        assert ix2.max_seq("dags") == 1  # what records exist did not change
        rec = ix2.put("dags", [(fv("b.py", 1), st(1))])[0]
        assert rec.seq == 1 + SEQ_GAP + 1
        assert [r.seq for r in ix2.since("dags", 1)] == [rec.seq]
    with Index(db) as ix3:  # closed cleanly this time: no gap
        assert ix3.put("dags", [(fv("c.py", 1), st(1))])[0].seq == rec.seq + 1


def test_corrupt_file_raises_dagsync_error_naming_the_path(db: Path) -> None:
    db.parent.mkdir()
    db.write_bytes(b"this is not an sqlite database\x00\xff" * 200)
    with pytest.raises(DagsyncError) as info:
        Index(db)
    assert str(db) in str(info.value)


def test_unopenable_path_raises_dagsync_error(tmp_path: Path) -> None:
    db = tmp_path / "no-such-dir" / "index.db"
    with pytest.raises(DagsyncError) as info:
        Index(db)
    assert str(db) in str(info.value)


def test_newer_schema_is_refused(db: Path) -> None:
    db.parent.mkdir()
    Index(db).close()
    conn = sqlite3.connect(db)
    conn.execute("PRAGMA user_version=999")
    conn.close()
    with pytest.raises(DagsyncError, match="newer"):
        Index(db)


def test_schema_is_versioned_and_wal(db: Path) -> None:
    db.parent.mkdir()
    Index(db).close()
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] >= 1
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        conn.close()


def test_paths_with_hash_searches_by_prefix_and_matches_the_whole_hash(index: Index) -> None:
    """Move detection looks files up by content: an index search, never a scan of the
    folder, and a file whose hash only shares the first 8 digits is not a match."""
    a = replace(fv("a.py", 1), hash="abcd1234" + "0" * 24)
    b = replace(fv("b.py", 2), hash="abcd1234" + "f" * 24)
    gone = replace(fv("c.py", 3), hash=a.hash)
    index.put("dags", [(a, st(1)), (b, st(2)), (gone, st(3))])
    index.put("dags", [(replace(gone, deleted=True, hash=""), None)])
    assert index.paths_with_hash("dags", a.hash) == ["a.py"]
    assert index.paths_with_hash("dags", b.hash) == ["b.py"]
    assert index.paths_with_hash("dags", "abcd1234" + "1" * 24) == []
    with index._db() as c:
        plan = " ".join(str(row[-1]) for row in c.execute(
            "EXPLAIN QUERY PLAN SELECT path FROM files WHERE folder=? AND substr(hash, 1, 8)=?"
            " AND +hash=? AND deleted=0 LIMIT ?", ("dags", "abcd1234", a.hash, 8)))
    assert "files_by_hash_prefix (folder=? AND <expr>=?)" in plan


def test_an_index_of_schema_2_is_migrated_and_keeps_its_records(db: Path) -> None:
    """An index written by the dagsync before the hash index took the hash's prefix:
    opened now, its records and their lookups by content are all there."""
    from dagsync.index import _MIGRATIONS

    db.parent.mkdir()
    conn = sqlite3.connect(db)
    for migration in _MIGRATIONS[:2]:
        conn.executescript(migration)
    conn.execute("PRAGMA user_version=2")
    conn.execute("INSERT INTO folders(folder, index_id, last_seq) VALUES('dags', 7, 1)")
    conn.execute(
        "INSERT INTO files(folder, path, seq, kind, size, mtime_ns, mode, hash, deleted, vv,"
        " hlc, origin, target) VALUES('dags', 'a.py', 1, 'file', 10, 5, 420, ?, 0,"
        " '{\"master1\":1}', 9, 'master1', '')", ("e" * 32,))
    conn.commit()
    conn.close()
    ix = Index(db)
    try:
        assert ix.paths_with_hash("dags", "e" * 32) == ["a.py"]
        assert ix.max_seq("dags") == 1
        with ix._db() as c:
            names = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type='index'")}
            assert c.execute("PRAGMA user_version").fetchone()[0] == 3
    finally:
        ix.close()
    assert "files_by_hash_prefix" in names and "files_by_hash" not in names


def test_closed_index_raises_dagsync_error(db: Path) -> None:
    db.parent.mkdir()
    ix = Index(db)
    ix.close()
    ix.close()  # idempotent
    with pytest.raises(DagsyncError):
        ix.max_seq("dags")


def test_usable_from_several_threads(index: Index) -> None:
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            for i in range(50):
                index.put("dags", [(fv(f"t{t}/f{i}.py", i + 1), st(i + 1))])
                index.load("dags")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    seqs = [r.seq for r in index.since("dags", 0, limit=1000)]
    assert seqs == list(range(1, 201))


def test_load_20k_rows_is_not_pathological(index: Index) -> None:
    n = 20_000
    index.put("dags", [(fv(f"dags/team{i % 40}/dag_{i}.py", i + 1), st(i + 1)) for i in range(n)])
    start = time.perf_counter()
    loaded = index.load("dags")
    elapsed = time.perf_counter() - start
    print(f"load of {n} rows: {elapsed * 1000:.1f} ms")
    assert len(loaded) == n
    assert loaded["dags/team7/dag_7.py"].version == fv("dags/team7/dag_7.py", 8)
    assert elapsed < 2.0


def test_each_fields_gives_every_record_as_its_fields_over_several_pages(index: Index) -> None:
    """What a folder's start-up loads (RecordStore.put_fields): the same records, field
    for field, as the Record path; pages end and resume at the right path."""
    from dagsync.recstore import RecordStore

    versions = [(fv(f"d{i % 3}/f{i:03d}.py", i + 1), st(i + 1) if i % 4 else None)
                for i in range(25)]
    versions += [(fv("gone.py", 30, deleted=True), None),
                 (fv("link", 31, kind=Kind.SYMLINK), st(31))]
    index.put("dags", versions)
    index.put("other", [(fv("d0/f000.py", 99), st(99))])
    by_record, by_fields = RecordStore(), RecordStore()
    for path, rec in index.load("dags").items():
        by_record[path] = rec
    fields = list(index.each_fields("dags", page=4))
    assert [f[0] for f in fields] == sorted(index.load("dags"))
    for f in fields:
        by_fields.put_fields(*f)
    assert len(by_fields) == len(by_record) == 27
    for path in by_record:
        assert by_fields[path] == by_record[path], path


def test_a_corrupt_row_fails_the_load_naming_the_database(index: Index, db: Path) -> None:
    index.put("dags", [(fv("a.py", 1), st(1))])
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE files SET kind='directory' WHERE path='a.py'")
    with pytest.raises(DagsyncError, match="corrupt record") as info:
        list(index.each_fields("dags"))
    assert str(db) in str(info.value)
