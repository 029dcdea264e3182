"""Test harness: real dagsync nodes on loopback, each its own config, key, state dir and
folder, run as real processes. Only processes started here are ever signalled, by PID."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from dagsync.localnode import LocalNode, free_port
from dagsync.paths import is_temp_name


@dataclass
class TestNode(LocalNode):
    __test__ = False  # a harness class, not a test

    folder_mode: str = "send-receive"
    peers: list[dict[str, object]] = field(default_factory=list)
    extra: dict[str, object] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None

    def write_config(self) -> None:  # type: ignore[override]
        top: dict[str, object] = {"scan_interval": "1s", **self.extra}
        LocalNode.write_config(self, self.peers, mode=self.folder_mode, **top)

    # --- processes -------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 120, check: bool = False,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "dagsync", *args[:1], "--config", str(self.config),
               *args[1:]]
        if args and args[0] == "conflicts" and len(args) > 1:
            cmd = [sys.executable, "-m", "dagsync", "conflicts", "--config", str(self.config),
                   *args[1:]]
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                             env={**os.environ, **(env or {})})
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} exited {res.returncode}:\n{res.stderr}")
        return res

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None
        logf = self.log.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "dagsync", "--log-level", "debug", "agent",
             "--config", str(self.config)],
            stdout=logf, stderr=subprocess.STDOUT, start_new_session=True,
        )
        logf.close()
        wait_until(lambda: self.answers() or self.proc.poll() is not None,
                   30, f"{self.name} agent start")
        if self.proc.poll() is not None:
            raise AssertionError(f"agent {self.name} exited at start:\n{self.log.read_text()}")

    def answers(self) -> bool:
        """The agent listens on its control socket (a stale socket file refuses)."""
        with socket.socket(socket.AF_UNIX) as s:
            try:
                s.connect(str(self.state / "agent.sock"))
            except OSError:
                return False
        return True

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def stop(self, timeout: float = 10) -> int:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.signal(signal.SIGKILL)
            self.proc.wait(10)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            self.kill()


def make_nodes(tmp: Path, names: Iterable[str], links: dict[str, list[str]] | None = None,
               modes: dict[str, str] | None = None,
               extra: dict[str, object] | None = None) -> dict[str, TestNode]:
    """Nodes with keys and configs. `links` maps a node to the peers it lists (default:
    full mesh)."""
    nodes: dict[str, TestNode] = {}
    for name in names:
        node = TestNode(name, tmp / name, free_port(),
                        folder_mode=(modes or {}).get(name, "send-receive"),
                        extra=dict(extra or {}))
        node.create()
        nodes[name] = node
    for name, node in nodes.items():
        wanted = links[name] if links is not None else [n for n in nodes if n != name]
        node.peers = [nodes[p].peer_entry() for p in wanted]
        node.write_config()
    return nodes


def wait_until(pred: Callable[[], object], timeout: float, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def snapshot(root: Path, meta: bool = True) -> dict[str, tuple[object, ...]]:
    """Every file below root: content, and mode bits and mtime when meta."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for fn in filenames:
            if is_temp_name(fn):
                continue  # in flight; never visible as a DAG
            p = Path(dirpath) / fn
            rel = p.relative_to(root).as_posix()
            try:
                st = p.lstat()
                if p.is_symlink():
                    out[rel] = ("link", os.readlink(p))
                elif meta:
                    out[rel] = (p.read_bytes(), st.st_mode & 0o7777, st.st_mtime_ns)
                else:
                    out[rel] = (p.read_bytes(),)
            except FileNotFoundError:
                continue  # replaced while we looked; the next snapshot sees it
    return out


def converged(nodes: Iterable[TestNode], meta: bool = True) -> bool:
    snaps = [snapshot(n.dags, meta) for n in nodes]
    return all(s == snaps[0] for s in snaps[1:])


def wait_converged(nodes: Iterable[TestNode], timeout: float = 30, meta: bool = True) -> None:
    nodes = list(nodes)
    try:
        wait_until(lambda: converged(nodes, meta), timeout, "convergence")
    except AssertionError:
        detail = []
        snaps = {n.name: snapshot(n.dags, meta) for n in nodes}
        first = nodes[0].name
        for name, snap in snaps.items():
            diff = sorted(set(snap.items()) ^ set(snaps[first].items()))
            detail.append(f"{name} vs {first}: {[d[0] for d in diff][:10]}")
        raise AssertionError("not converged:\n" + "\n".join(detail)) from None


def write(path: Path, text: str | bytes, mode: int | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode() if isinstance(text, str) else text
    path.write_bytes(data)
    if mode is not None:
        os.chmod(path, mode)


@contextlib.contextmanager
def tmpfs_mounted(point: Path, size: str = "16m") -> Iterator[Path]:
    """A tmpfs of its own on `point` (made here), as a volume mounted inside a DAG
    folder; skips the test where mounting is not allowed (CI runs as root)."""
    point.mkdir()
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
            capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield point
    finally:
        subprocess.run(["umount", "--lazy", str(point)], check=True)
