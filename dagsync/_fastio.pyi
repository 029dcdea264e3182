"""Types of the optional C helper (dagsync/_fastio.c); see bulkio.py."""

from collections.abc import Sequence

def stage_files(
    items: Sequence[tuple[int, str, bytes | memoryview, int, bool, int]], threads: int = 1,
) -> list[tuple[int, int] | int]: ...
def place_files(items: Sequence[tuple[int, str, int, str, bool]]) -> list[int]: ...
def read_files(
    items: Sequence[tuple[int, str]], budget: int, ahead: int, window: int,
) -> list[bytes | int]: ...
