"""The layout of a throw-away node on 127.0.0.1: its folder, key, state dir and config.

`dagsync demo`, the tests and the benchmarks all build small clusters the same way."""

from __future__ import annotations

import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dagsync.transport import generate_node_key, public_key_line


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LocalNode:
    name: str
    base: Path
    port: int
    public_key: str = ""

    @property
    def dags(self) -> Path:
        return self.base / "dags"

    @property
    def state(self) -> Path:
        return self.base / "state"

    @property
    def key(self) -> Path:
        return self.base / "node_key"

    @property
    def config(self) -> Path:
        return self.base / "dagsync.yaml"

    @property
    def log(self) -> Path:
        return self.base / "agent.log"

    @property
    def socket(self) -> Path:
        return self.state / "agent.sock"

    def create(self) -> None:
        """The folder and the node key (the public key is remembered for peers)."""
        self.dags.mkdir(parents=True)
        self.public_key = public_key_line(generate_node_key(self.key))

    def peer_entry(self) -> dict[str, object]:
        """This node as another node lists it under `peers`."""
        return {"name": self.name, "address": f"127.0.0.1:{self.port}",
                "public_key": self.public_key}

    def write_config(self, peers: list[dict[str, object]], *, mode: str = "send-receive",
                     folder_id: str = "dags", **top: Any) -> None:
        cfg: dict[str, object] = {
            "node": {"name": self.name, "listen": f"127.0.0.1:{self.port}",
                     "key": str(self.key), "state_dir": str(self.state)},
            "folders": [{"id": folder_id, "path": str(self.dags), "mode": mode}],
            "peers": peers,
            **top,
        }
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))
