"""A crash between changing the folder and recording it: the restart adopts what landed."""

from __future__ import annotations

import json
from pathlib import Path

from dagsync import engine
from dagsync.archive import ConflictArchive
from dagsync.clock import VersionVector
from dagsync.config import FolderConfig
from dagsync.index import Index
from dagsync.model import FileVersion, FolderMode, Kind


async def test_changes_applied_just_before_a_crash_are_not_taken_for_local_edits(
    tmp_path: Path,
) -> None:
    root, state = tmp_path / "dags", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    data = b"dag = 'from the cluster'\n"
    landed = FileVersion("landed.py", Kind.FILE, len(data), 1_700_000_000_000_000_000, 0o644,
                         engine.content_hash(data), False, VersionVector.of({"a": 7}), 1 << 40,
                         "a")
    missed = FileVersion("missed.py", Kind.FILE, 3, 1, 0o644, engine.content_hash(b"abc"),
                         False, VersionVector.of({"a": 8}), (1 << 40) + 1, "a")
    index = Index(state / "index.db")
    # The agent wrote its intent, put landed.py in place, and was killed before recording.
    index.set_meta("intent:dags", json.dumps([landed.to_wire(), missed.to_wire()]))
    (root / "landed.py").write_bytes(data)
    cfg = FolderConfig("dags", root, FolderMode.RECEIVE_ONLY, ())
    folder = engine.FolderEngine(cfg, "b", index, ConflictArchive(state),
                                 engine.SharedClock(0), 1 << 20)
    await folder.open()
    assert folder.version("landed.py") == landed
    assert folder.version("missed.py") is None  # never landed: fetched again later
    summary = await folder.scan()
    assert summary.new_versions == 0
    assert folder.local_edits_refused == 0 and folder.archive.list() == []
    assert (root / "landed.py").read_bytes() == data
    assert index.get_meta("intent:dags") == "[]"
    index.close()
