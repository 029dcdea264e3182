"""Folder roles (SPEC guarantee 7) and `dagsync init`."""

from __future__ import annotations

import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tests.cluster import wait_converged, wait_until, write

LIVE = {"scan_interval": "1s"}


def test_receive_only_never_publishes_and_reverts_local_edits(cluster: Any) -> None:
    nodes = cluster("master", "worker", modes={"worker": "receive-only"}, extra=LIVE)
    master, worker = nodes["master"], nodes["worker"]
    write(master.dags / "dag.py", "v = 'cluster'\n")
    master.start()
    worker.start()
    wait_converged([master, worker])
    write(worker.dags / "dag.py", "v = 'hotfix on a worker'\n")
    write(worker.dags / "stray.py", "stray = 1\n")
    wait_until(lambda: (worker.dags / "dag.py").read_text() == "v = 'cluster'\n", 15,
               "the worker's edit to be reverted")
    assert (master.dags / "dag.py").read_text() == "v = 'cluster'\n"
    assert not (master.dags / "stray.py").exists()
    listing = worker.run("conflicts", "list", check=True).stdout
    assert "dag.py" in listing
    shown = worker.run("conflicts", "show", "1", check=True).stdout
    assert "hotfix on a worker" in shown
    # The cluster's own changes still arrive.
    write(master.dags / "dag.py", "v = 'cluster 2'\n")
    wait_until(lambda: (worker.dags / "dag.py").read_text() == "v = 'cluster 2'\n", 10,
               "a new cluster version")


def test_send_only_publishes_and_never_accepts(cluster: Any) -> None:
    nodes = cluster("master", "other", modes={"master": "send-only"}, extra=LIVE)
    master, other = nodes["master"], nodes["other"]
    write(master.dags / "dag.py", "v = 1\n")
    master.start()
    other.start()
    wait_converged([master, other])
    write(other.dags / "dag.py", "v = 'from other'\n")
    write(other.dags / "extra.py", "x = 1\n")
    wait_until(lambda: "send-only" in master.log.read_text(), 10, "the refusal in the log")
    assert (master.dags / "dag.py").read_text() == "v = 1\n"
    assert not (master.dags / "extra.py").exists()


def test_init_creates_a_private_key_once_and_prints_the_peer_line(tmp_path: Path) -> None:
    cfg = tmp_path / "dagsync.yaml"
    cfg.write_text(yaml.safe_dump({
        "node": {"name": "master1", "listen": "127.0.0.1:8022", "key": str(tmp_path / "key"),
                 "state_dir": str(tmp_path / "state")},
        "folders": [{"id": "dags", "path": str(tmp_path / "dags")}],
    }))

    def init() -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "dagsync", "init", "--config", str(cfg)],
                              capture_output=True, text=True, check=True)

    first = init()
    key = tmp_path / "key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "state").is_dir()
    assert "- name: master1" in first.stdout and "address: 127.0.0.1:8022" in first.stdout
    line = next(ln for ln in first.stdout.splitlines() if "public_key" in ln)
    assert "ssh-ed25519 " in line
    before = key.read_bytes()
    second = init()
    assert key.read_bytes() == before
    assert second.stdout == first.stdout
    # The printed block is valid peer config for another node.
    peer = yaml.safe_load(second.stdout)[0]
    assert peer["name"] == "master1" and peer["public_key"].startswith("ssh-ed25519 ")
