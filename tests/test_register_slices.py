"""A big scan registers in slices (memory), with the same outcome as in one go."""

from __future__ import annotations

from pathlib import Path

import pytest

from dagsync import engine, local_changes
from dagsync.archive import ConflictArchive
from dagsync.config import FolderConfig
from dagsync.index import Index
from dagsync.model import FolderMode


async def test_a_scan_larger_than_a_slice_records_every_change_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local_changes, "REGISTER_SLICE", 3)
    root, state = tmp_path / "dags", tmp_path / "state"
    (root / "team").mkdir(parents=True)
    state.mkdir()
    for i in range(8):
        (root / "team" / f"dag_{i}.py").write_text(f"dag = {i}\n")
    index = Index(state / "index.db")
    cfg = FolderConfig("dags", root, FolderMode.SEND_RECEIVE, ())
    folder = engine.FolderEngine(cfg, "a", index, ConflictArchive(state),
                                 engine.SharedClock(0), 1 << 20)
    await folder.open()
    first = await folder.scan()
    assert first.new_versions == 8  # over three slices
    assert folder.max_seq == 8
    assert sorted(folder.records[f"team/dag_{i}.py"].seq for i in range(8)) == list(range(1, 9))

    # A rename, a delete and new files in one scan spanning two slices: each gone path
    # is tombstoned exactly once, the moved and new files recorded.
    (root / "team" / "dag_0.py").rename(root / "team" / "z_moved.py")
    (root / "team" / "dag_1.py").unlink()
    for i in range(8, 13):
        (root / "team" / f"dag_{i}.py").write_text(f"dag = {i}\n")
    second = await folder.scan()
    assert second.new_versions == 8  # 1 moved + 2 tombstones + 5 new
    assert folder.max_seq == 16
    gone = [folder.version(f"team/dag_{i}.py") for i in (0, 1)]
    assert all(v is not None and v.deleted for v in gone)
    moved = folder.version("team/z_moved.py")
    assert moved is not None and not moved.deleted
    assert all(folder.version(f"team/dag_{i}.py") is not None for i in range(8, 13))
    index.close()
