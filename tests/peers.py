"""In-process stand-ins for a connected peer, for tests that drive a FolderEngine
directly (no network): the Fetch protocol of dagsync/fetching.py over a dict."""

from __future__ import annotations

from dagsync.model import FileVersion


class MemoryPeer:
    """A peer holding every file's content in memory, by path."""

    def __init__(self, contents: dict[str, bytes]) -> None:
        self.contents = contents

    async def fetch(self, v: FileVersion) -> bytes:
        return self.contents[v.path]

    async def fetch_many(self, vs: list[FileVersion]) -> list[bytes | BaseException]:
        return [self.contents[v.path] for v in vs]
