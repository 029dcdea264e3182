"""The layout of a throw-away node on 127.0.0.1: its folder, key, state dir and config.

`dagsync demo`, the tests and the benchmarks all build small clusters the same way."""

from __future__ import annotations

import random
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from dagsync.transport import generate_node_key, public_key_line

# Listening ports are picked below the kernel's ephemeral range (where bind(0) and every
# outgoing connection's local end come from): a node restarted on its port, as the demo
# and the tests do, once found it taken by some connection made while it was down.
LOWEST_PORT = 10000


def ephemeral_low(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> int:
    """The first port of the kernel's ephemeral range (32768 when it cannot be read)."""
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now, outside the ephemeral range if it can,
    and not one this process was given before (nodes made together get different ones)."""
    high = ephemeral_low() - 1
    for _ in range(100):
        port = random.randint(LOWEST_PORT, high) if high > LOWEST_PORT else 0
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            port = int(s.getsockname()[1])
        _handed_out.add(port)
        return port
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
