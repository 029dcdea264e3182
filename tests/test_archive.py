"""The conflict archive under <state_dir>/conflicts/: nothing lost, nothing escapes."""

from __future__ import annotations

import json
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from dagsync import paths
from dagsync.archive import ConflictArchive, ConflictEntry
from dagsync.errors import PathRefused

T0 = datetime(2026, 11, 23, 14, 15, 3, 123456, tzinfo=UTC)


@pytest.fixture
def archive(tmp_path: Path) -> ConflictArchive:
    return ConflictArchive(tmp_path / "state")


def store(
    a: ConflictArchive,
    path: str = "etl/daily.py",
    data: bytes = b"lost",
    *,
    loser_origin: str = "worker1",
    mode: int = 0o644,
    when: datetime = T0,
) -> ConflictEntry:
    return a.store(
        "dags", path, data, loser_origin=loser_origin, winner_origin="master1", mode=mode, when=when
    )


def test_store_keeps_copy_under_state_dir_with_spec_name(
    archive: ConflictArchive, tmp_path: Path
) -> None:
    e = store(archive, mode=0o755)
    assert e.id == 1
    assert e.file == tmp_path / "state/conflicts/dags/etl/daily.py.20261123T141503.123Z.worker1"
    assert e.file.read_bytes() == b"lost"
    assert not e.file.name.endswith(".py")  # Airflow would never mistake it for a DAG
    assert stat.S_IMODE(e.file.stat().st_mode) == 0o600
    assert (e.folder, e.path, e.size, e.seen, e.mode) == ("dags", "etl/daily.py", 4, False, 0o755)
    assert (e.loser_origin, e.winner_origin) == ("worker1", "master1")
    assert e.archived_at == "2026-11-23T14:15:03.123Z"


def test_ids_increase_and_list_is_oldest_first(archive: ConflictArchive) -> None:
    ids = [
        store(archive, f"d{i}.py", b"%d" % i, when=T0 + timedelta(seconds=i)).id for i in range(5)
    ]
    assert ids == [1, 2, 3, 4, 5]
    assert [e.id for e in archive.list()] == ids
    assert [e.path for e in archive.list()] == [f"d{i}.py" for i in range(5)]


def test_get_read_and_restore_content(archive: ConflictArchive) -> None:
    first = store(archive, data=b"version A")
    second = store(archive, data=b"version B", loser_origin="master2")
    assert archive.get(first.id) == first
    assert archive.read(first.id) == b"version A"
    assert archive.read(second.id) == b"version B"
    assert ConflictArchive(archive.dir.parent).get(second.id) == second  # survives restart
    with pytest.raises(KeyError):
        archive.get(99)
    with pytest.raises(KeyError):
        archive.read(99)


def test_same_name_gets_a_numeric_suffix(archive: ConflictArchive) -> None:
    a, b, c = (store(archive, data=bytes([i])) for i in range(3))
    assert a.file.name == "daily.py.20261123T141503.123Z.worker1"
    assert b.file.name == a.file.name + ".1"
    assert c.file.name == a.file.name + ".2"
    assert [archive.read(e.id) for e in (a, b, c)] == [b"\x00", b"\x01", b"\x02"]


def test_times_are_converted_to_utc(archive: ConflictArchive) -> None:
    plus2 = timezone(timedelta(hours=2))
    e = store(archive, when=datetime(2026, 11, 23, 16, 15, 3, 123000, tzinfo=plus2))
    assert e.archived_at == "2026-11-23T14:15:03.123Z"
    assert ".20261123T141503.123Z." in e.file.name


def test_mark_seen(archive: ConflictArchive) -> None:
    a, b = store(archive), store(archive)
    archive.mark_seen([a.id])
    archive.mark_seen([a.id])  # idempotent
    assert [e.seen for e in archive.list()] == [True, False]
    with pytest.raises(KeyError):
        archive.mark_seen([42])
    assert archive.get(b.id).seen is False


def test_torn_last_line_is_ignored_and_next_store_is_clean(archive: ConflictArchive) -> None:
    a = store(archive)
    catalogue = archive.dir / "archive.jsonl"
    with catalogue.open("ab") as f:
        f.write(b'{"id": 2, "folder": "dags", "pa')  # crash in the middle of a line
    assert [e.id for e in archive.list()] == [a.id]
    b = store(archive, data=b"after crash")
    assert [e.id for e in archive.list()] == [a.id, b.id]
    assert b.id == 2
    for line in catalogue.read_text().splitlines():
        json.loads(line)  # every line whole again


def test_whole_last_line_without_newline_is_kept(archive: ConflictArchive) -> None:
    store(archive)
    catalogue = archive.dir / "archive.jsonl"
    catalogue.write_bytes(catalogue.read_bytes() + b'{"seen": 1}')
    assert archive.get(1).seen
    store(archive)
    assert [e.seen for e in archive.list()] == [True, False]


def test_damaged_middle_line_is_skipped(
    archive: ConflictArchive, caplog: pytest.LogCaptureFixture
) -> None:
    store(archive)
    catalogue = archive.dir / "archive.jsonl"
    catalogue.write_bytes(catalogue.read_bytes() + b"garbage\n")
    store(archive)
    assert [e.id for e in archive.list()] == [1, 2]
    assert "skipping unreadable line" in caplog.text


def test_prune_by_count_keeps_newest(archive: ConflictArchive) -> None:
    entries = [store(archive, f"d{i}.py", when=T0 + timedelta(hours=i)) for i in range(5)]
    removed = archive.prune(keep=2)
    assert [e.id for e in removed] == [1, 2, 3]
    assert [e.id for e in archive.list()] == [4, 5]
    assert not any(e.file.exists() for e in entries[:3])
    assert all(e.file.exists() for e in entries[3:])
    assert store(archive).id == 6  # ids are never reused


def test_prune_by_age(archive: ConflictArchive) -> None:
    old = store(archive, "old.py", when=T0 - timedelta(days=40))
    mid = store(archive, "sub/mid.py", when=T0 - timedelta(days=10))
    new = store(archive, "new.py", when=T0)
    removed = archive.prune(max_age_days=30, now=T0)
    assert removed == [old]
    assert [e.id for e in archive.list()] == [mid.id, new.id]
    removed = archive.prune(max_age_days=5, now=T0)
    assert removed == [mid]
    assert not (archive.dir / "dags" / "sub").exists()  # emptied directories go too


def test_prune_everything_then_ids_continue(archive: ConflictArchive) -> None:
    store(archive)
    store(archive)
    archive.mark_seen([2])
    assert [e.id for e in archive.prune(keep=0)] == [1, 2]
    assert archive.list() == []
    assert store(archive).id == 3


def test_prune_keeps_seen_flags_and_removes_temps(archive: ConflictArchive) -> None:
    a, b = store(archive), store(archive)
    archive.mark_seen([b.id])
    crash = archive.dir / "dags" / paths.temp_name("x", "dead")
    crash.write_bytes(b"half")
    assert archive.prune(keep=1) == [a]
    assert archive.get(b.id).seen
    assert not crash.exists()
    lines = (archive.dir / "archive.jsonl").read_text().splitlines()
    assert all(json.loads(line) for line in lines)


def test_prune_with_nothing_to_do(archive: ConflictArchive) -> None:
    assert archive.prune(keep=10) == []
    store(archive)
    assert archive.prune(keep=10, max_age_days=1, now=T0) == []
    with pytest.raises(ValueError):
        archive.prune(keep=-1)


@pytest.mark.parametrize(
    "path",
    ["../../etc/cron.d/x", "/etc/passwd", "a/../../x", "a\0b", "", "a//b", ".~dagsync.1.tmp"],
)
def test_hostile_paths_are_refused(archive: ConflictArchive, tmp_path: Path, path: str) -> None:
    with pytest.raises(PathRefused):
        store(archive, path)
    assert archive.list() == []
    outside = [p for p in tmp_path.rglob("*") if archive.dir not in (p, *p.parents)]
    assert [p for p in outside if p.is_file()] == []


@pytest.mark.parametrize("folder", ["..", "a/b", "/abs", "", "archive.jsonl", "x\ny"])
def test_hostile_folder_ids_are_refused(archive: ConflictArchive, folder: str) -> None:
    with pytest.raises(PathRefused):
        archive.store(folder, "dag.py", b"x", loser_origin="n", winner_origin="m")


def test_hostile_node_name_cannot_shape_the_file_name(archive: ConflictArchive) -> None:
    e = store(archive, loser_origin="../../../../tmp/evil\0x")
    assert e.file.parent == archive.dir / "dags" / "etl"
    assert "/" not in e.file.name.split(".20261123T141503.123Z.")[1]
    assert e.loser_origin == "../../../../tmp/evil\0x"  # recorded exactly


def test_long_names_fit_the_name_limit(archive: ConflictArchive) -> None:
    e = store(archive, "x" * 255, loser_origin="n" * 200)
    assert len(e.file.name.encode()) <= paths.MAX_NAME_BYTES
    assert archive.read(e.id) == b"lost"
