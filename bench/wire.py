"""(f) Bytes on the wire for a one-line edit of a 1 MB text file.

Each tool's traffic to its peer goes through a counting TCP proxy on 127.0.0.1 (bytes in
both directions, TLS/SSH framing included). Both sides first hold the same 1 MB file; then
one line is inserted in the middle of it on the sending side, and the proxy counts what
the tool moves until the receiver holds the new content and the link has been quiet for a
second (acknowledgements included):

* rsync -a over ssh: the bytes of one `rsync` run through the proxy in front of the
  private sshd (ssh handshake, file list, rsync's delta); a no-change run is measured too.
* Syncthing: two nodes that dial each other only through proxies (fsWatcherDelayS=1).
* dagsync: two agents whose peer addresses are proxies.

`measure(...)` runs all three and can be called again on its own (`bench/run.py --only f`),
e.g. once delta transfer lands in dagsync.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from anchors import SyncthingCluster, empty_dir
from common import PROCS, BenchError, free_port, log, stats, tail

FILE_NAME = "big_dag_helpers.py"
FILE_SIZE = 1 << 20


class CountingProxy:
    """127.0.0.1:<port> -> 127.0.0.1:<target>; counts bytes each way over all connections."""

    def __init__(self, target_port: int, name: str) -> None:
        self.target_port, self.name = target_port, name
        self.up = 0  # client -> target
        self.down = 0  # target -> client
        self.connections = 0
        self._lock = threading.Lock()
        self._socks: list[socket.socket] = []
        self._srv = socket.socket()
        self._srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._srv.bind(("127.0.0.1", 0))
        self._srv.listen(64)
        self.port = int(self._srv.getsockname()[1])
        self._closed = False
        threading.Thread(target=self._accept, name=f"proxy-{name}", daemon=True).start()

    @property
    def total(self) -> int:
        with self._lock:
            return self.up + self.down

    def reset(self) -> None:
        with self._lock:
            self.up = self.down = 0

    def _accept(self) -> None:
        while not self._closed:
            try:
                cli, _ = self._srv.accept()
            except OSError:
                return
            try:
                dst = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
                dst.settimeout(None)
            except OSError:
                cli.close()
                continue
            for s in (cli, dst):  # forward small replies at once, as the tools' own
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # sockets do
            with self._lock:
                self.connections += 1
                self._socks += [cli, dst]
            threading.Thread(target=self._pump, args=(cli, dst, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(dst, cli, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
                with self._lock:
                    if up:
                        self.up += len(data)
                    else:
                        self.down += len(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._srv.close()
        with self._lock:
            for s in self._socks:
                with contextlib.suppress(OSError):
                    s.close()


# ---------------------------------------------------------------------------- content


def text_file(seed: int = 7, size: int = FILE_SIZE) -> bytes:
    """A deterministic Python text file of exactly `size` bytes (helper functions)."""
    rng = random.Random(seed)
    words = ["extract", "load", "customer", "orders", "daily", "report", "warehouse",
             "partition", "retry", "schedule", "bucket", "table", "sensor", "upstream"]
    out, total, i = [], 0, 0
    while total < size:
        name = "_".join(rng.choice(words) for _ in range(3))
        block = (f"def {name}_{i:05d}(ctx, limit={rng.randint(1, 999)}):\n"
                 f"    \"\"\"{' '.join(rng.choice(words) for _ in range(8))}.\"\"\"\n"
                 f"    return ctx.get('{rng.choice(words)}', limit) * {rng.randint(2, 97)}\n\n")
        out.append(block)
        total += len(block)
        i += 1
    data = "".join(out).encode()[:size]
    return data[:-1] + b"\n"


def insert_line(data: bytes, k: int) -> bytes:
    """`data` with one new line inserted at the line boundary nearest its middle."""
    mid = data.index(b"\n", len(data) // 2) + 1
    return data[:mid] + f"# edited line {k}: retries bumped to {k + 3}\n".encode() + data[mid:]


def wait_content(path: Path, data: bytes, timeout: float, alive: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    while True:
        with contextlib.suppress(FileNotFoundError), open(path, "rb") as f:
            if f.read() == data:
                return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            alive()
            raise BenchError(f"{path} did not get the edited content within {timeout:.0f} s")
        time.sleep(0.005)


def wait_quiet(proxies: list[CountingProxy], quiet: float = 1.0, cap: float = 15.0) -> float:
    """Until no proxy moved a byte for `quiet` seconds (at most `cap`); seconds waited."""
    t0 = time.monotonic()
    last, since = sum(p.total for p in proxies), time.monotonic()
    while time.monotonic() - t0 < cap:
        time.sleep(0.05)
        now = sum(p.total for p in proxies)
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            break
    return time.monotonic() - t0


def _edit_runs(src: Path, dst: Path, proxies: list[CountingProxy], reps: int,
               alive: Callable[[], None], settle: float = 2.0) -> dict[str, Any]:
    """Edit src `reps` times (a line inserted each time); bytes through the proxies from
    the edit until dst holds it and the links are quiet."""
    data = src.read_bytes()
    totals, ups, downs, arrive = [], [], [], []
    for k in range(reps):
        time.sleep(settle)
        wait_quiet(proxies)
        for p in proxies:
            p.reset()
        data = insert_line(data, k)
        src.write_bytes(data)
        arrive.append(wait_content(dst, data, 120, alive))
        wait_quiet(proxies)
        totals.append(sum(p.total for p in proxies))
        ups.append(sum(p.up for p in proxies))
        downs.append(sum(p.down for p in proxies))
        log(f"(f) edit {k + 1}/{reps}: {totals[-1]:,} bytes on the wire")
    return {"bytes": stats(totals), "sender_to_receiver": ups, "receiver_to_sender": downs,
            "arrived_s": stats(arrive)}


# ---------------------------------------------------------------------------- tools


def wire_rsync(base: Path, ssh_cfg: Path, sshd_port: int, reps: int) -> dict[str, Any]:
    src, dst = base / "rsync-a", base / "rsync-b"
    empty_dir(src)
    empty_dir(dst)
    (src / FILE_NAME).write_bytes(text_file())
    proxy = CountingProxy(sshd_port, "sshd")
    lg = base / "rsync.log"

    def rsync() -> None:
        cmd = ["rsync", "-a", "--stats", "-e", f"ssh -F {ssh_cfg} -p {proxy.port}",
               f"{src}/", f"bench:{dst}/"]
        with lg.open("ab") as f:
            f.write(f"\n$ {' '.join(cmd)}\n".encode())
            f.flush()
            r = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, timeout=300)
        if r.returncode != 0:
            raise BenchError(f"rsync exited {r.returncode}:\n{tail(lg)}")

    try:
        rsync()  # both sides in sync
        proxy.reset()
        rsync()
        nochange = proxy.total
        totals = []
        data = (src / FILE_NAME).read_bytes()
        for k in range(reps):
            data = insert_line(data, k)
            (src / FILE_NAME).write_bytes(data)
            proxy.reset()
            rsync()
            if (dst / FILE_NAME).read_bytes() != data:
                raise BenchError("rsync: target does not hold the edited file")
            totals.append(proxy.total)
            log(f"(f) rsync over ssh, edit {k + 1}/{reps}: {totals[-1]:,} bytes")
        return {"bytes": stats(totals), "nochange_bytes": nochange,
                "what": "one `rsync -a` run over ssh: ssh handshake + file list + delta"}
    finally:
        proxy.close()


def wire_syncthing(base: Path, reps: int) -> dict[str, Any]:
    a, b = base / "st-a", base / "st-b"
    empty_dir(a)
    empty_dir(b)
    (a / FILE_NAME).write_bytes(text_file())
    proxies: dict[str, CountingProxy] = {}

    def dial(me: Any, peer: Any) -> str:
        p = CountingProxy(peer.sync_port, f"st-{me.name}-{peer.name}")
        proxies[f"{me.name}->{peer.name}"] = p
        return f"tcp://127.0.0.1:{p.port}"

    cl = SyncthingCluster(base / "st-homes", [a, b], watcher_delay=1, dial=dial)
    try:
        cl.start()
        wait_content(b / FILE_NAME, (a / FILE_NAME).read_bytes(), 120, cl.alive)
        cl.wait_in_sync(1)
        out = _edit_runs(a / FILE_NAME, b / FILE_NAME, list(proxies.values()), reps, cl.alive)
        out["what"] = "both directions of the nodes' connection (TLS), fsWatcherDelayS=1"
        return out
    finally:
        cl.stop()
        for p in proxies.values():
            p.close()


def wire_dagsync(base: Path, reps: int, python: str, env: dict[str, str]) -> dict[str, Any]:
    from dagsync.transport import generate_node_key, public_key_line

    names = ("a", "b")
    ports = {n: free_port() for n in names}
    keys = {}
    for n in names:
        empty_dir(base / n / "dags")
        keys[n] = public_key_line(generate_node_key(base / n / "node_key"))
    (base / "a" / "dags" / FILE_NAME).write_bytes(text_file())
    proxies = {n: CountingProxy(ports[n], f"dagsync-{n}") for n in names}
    procs = {}

    def alive() -> None:
        for n, p in procs.items():
            if p.poll() is not None:
                raise BenchError(f"dagsync agent {n} exited {p.returncode}:\n"
                                 f"{tail(base / n / 'agent.log')}")

    try:
        for n in names:
            peer = "b" if n == "a" else "a"
            cfg = {"node": {"name": n, "listen": f"127.0.0.1:{ports[n]}",
                            "key": os.fspath(base / n / "node_key"),
                            "state_dir": os.fspath(base / n / "state")},
                   "folders": [{"id": "dags", "path": os.fspath(base / n / "dags"),
                                "mode": "send-receive"}],
                   "peers": [{"name": peer, "address": f"127.0.0.1:{proxies[peer].port}",
                              "public_key": keys[peer]}],
                   "scan_interval": "60s"}
            (base / n / "dagsync.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
            procs[n] = PROCS.start([python, "-m", "dagsync", "agent", "--config",
                                    os.fspath(base / n / "dagsync.yaml")],
                                   f"dagsync-wire-{n}", base / n / "agent.log", env=env)
        wait_content(base / "b" / "dags" / FILE_NAME, text_file(), 120, alive)
        out = _edit_runs(base / "a" / "dags" / FILE_NAME, base / "b" / "dags" / FILE_NAME,
                         list(proxies.values()), reps, alive)
        out["what"] = "both directions of both agents' SSH connections"
        return out
    finally:
        for p in procs.values():
            PROCS.stop(p)
        for p in proxies.values():
            p.close()


def measure(base: Path, ssh_cfg: Path, sshd_port: int, reps: int, python: str,
            env: dict[str, str], anchors: bool = True) -> dict[str, Any]:
    """(f) for every tool; `anchors=False` measures dagsync only."""
    out: dict[str, Any] = {"file_bytes": FILE_SIZE, "edit": "one line (~45 bytes) inserted "
                           "at the line boundary nearest the middle", "reps": reps}
    if anchors:
        out["rsync_ssh"] = wire_rsync(base / "rsync", ssh_cfg, sshd_port, reps)
        out["syncthing"] = wire_syncthing(base / "syncthing", reps)
    out["dagsync"] = wire_dagsync(base / "dagsync", reps, python, env)
    return out
