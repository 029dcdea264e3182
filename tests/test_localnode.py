"""Ports for throw-away nodes (demo, tests): below the ephemeral range, so a node
restarted on its port cannot find it taken by an outgoing connection's local end."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from dagsync.localnode import LOWEST_PORT, ephemeral_low, free_port


def test_free_port_is_free_and_below_the_ephemeral_range() -> None:
    low = ephemeral_low()
    picked = [free_port() for _ in range(20)]
    ports = set(picked)
    assert all(LOWEST_PORT <= port < low for port in ports)
    assert len(ports) == len(picked)  # never the same one twice in a process
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    import dagsync.localnode as ln

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        busy = taken.getsockname()[1]
        picks = iter([busy, busy])
        monkeypatch.setattr(ln.random, "randint", lambda lo, hi: next(picks, lo + 7))
        monkeypatch.setattr(ln, "ephemeral_low", lambda: 65535)
        monkeypatch.setattr(ln, "_handed_out", set())
        assert free_port() == LOWEST_PORT + 7


def test_ephemeral_low_reads_the_range_and_falls_back(tmp_path: Path) -> None:
    f = tmp_path / "range"
    f.write_text("40000\t60999\n")
    assert ephemeral_low(str(f)) == 40000
    assert ephemeral_low(str(tmp_path / "missing")) == 32768
    f.write_text("junk")
    assert ephemeral_low(str(f)) == 32768
