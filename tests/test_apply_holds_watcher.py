"""Watcher reports about paths an apply round is writing are held, not dropped: once the
round has recorded its writes, a real local edit among them is still registered."""

from __future__ import annotations

from pathlib import Path

from dagsync import engine
from dagsync.archive import ConflictArchive
from dagsync.clock import VersionVector
from dagsync.config import FolderConfig
from dagsync.index import Index
from dagsync.model import FileVersion, FolderMode, Kind
from tests.peers import MemoryPeer


def remote(path: str, data: bytes, counter: int) -> FileVersion:
    return FileVersion(path, Kind.FILE, len(data), 1_700_000_000_000_000_000, 0o644,
                       engine.content_hash(data), False, VersionVector.of({"a": counter}),
                       (1 << 40) + counter, "a")


async def test_a_local_edit_reported_during_an_apply_round_is_registered_after_it(
    tmp_path: Path,
) -> None:
    root, state = tmp_path / "dags", tmp_path / "state"
    root.mkdir()
    state.mkdir()
    index = Index(state / "index.db")
    cfg = FolderConfig("dags", root, FolderMode.SEND_RECEIVE, ())
    folder = engine.FolderEngine(cfg, "b", index, ConflictArchive(state),
                                 engine.SharedClock(0), 1 << 20)
    await folder.open()
    try:
        # A report arrives while a round is writing that path: it is held, not scanned.
        (root / "edited.py").write_bytes(b"dag = 'edited here while a round ran'\n")
        folder.applying = {"edited.py"}
        assert await folder.scan_some(["edited.py"]) == 0
        assert folder.version("edited.py") is None and folder.recheck == {"edited.py"}
        folder.applying = set()

        # The round ends: what the watcher reported meanwhile is looked at now.
        data = b"dag = 'from the cluster'\n"
        outcome = await folder.apply_batch([remote("other.py", data, 1)],
                                           MemoryPeer({"other.py": data}))
        assert list(outcome.applied) == ["other.py"] and folder.recheck == set()
        local = folder.version("edited.py")
        assert local is not None and local.origin == "b" and not local.deleted
        assert (root / "other.py").read_bytes() == data
    finally:
        index.close()
