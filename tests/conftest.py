from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import TestNode, make_nodes


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[object]:
    """Factory for real nodes; every agent it started is killed (by PID) at the end."""
    made: list[TestNode] = []

    def factory(*names: str, **kw: object) -> dict[str, TestNode]:
        nodes = make_nodes(tmp_path, names, **kw)  # type: ignore[arg-type]
        made.extend(nodes.values())
        return nodes

    yield factory
    for node in made:
        node.cleanup()
