"""The agent's heap trimming finds glibc's allocator controls (they are no-ops elsewhere)."""

from __future__ import annotations

import platform

import pytest

from dagsync import memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_controls_are_found_and_callable() -> None:
    lib = memory._glibc()
    assert lib is not None
    memory.limit_arenas(2)
    memory.trim()
    assert lib.malloc_trim(0) in (0, 1)  # 1: memory was released, 0: none to release
