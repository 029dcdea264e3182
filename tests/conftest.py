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


@pytest.fixture
def sshd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    """A private OpenSSH server on 127.0.0.1 (tests/sshd.py): `.port`, `.known_hosts`,
    `.authorize(public_key_line, command)`, `.env()` for DAGSYNC_SSH. Skipped without
    /usr/sbin/sshd, except under CI (env CI set), where that is a failure. Killed by PID."""
    import os

    from tests.sshd import SSHD, sshd_available, start_sshd

    if not sshd_available():
        if os.environ.get("CI"):
            pytest.fail(f"{SSHD} is missing under CI: .ci/run installs openssh-server")
        pytest.skip(f"{SSHD} is missing (apt-get install openssh-server); set CI to fail instead")
    server = start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()
