#!/usr/bin/env python3
"""CPU of a bulk transfer through asyncssh on loopback, by SSH packet size.

    python bench/ssh_bulk.py [--mb 68.5] [--pktsize 131072 262144 ...] [--repeat 3]
                             [--busy-ms 2]

A server process writes the bytes to its channel in writes of 870 KB (one batch of 64
DAG files, as dagsync's content replies); the client reads them all. Both ends use
dagsync's asyncssh set-up (AES-GCM, 16 MiB window) with the given max_pktsize. Prints
each end's CPU time for the transfer alone. Only 127.0.0.1 is used.

--busy-ms keeps the receiver's event loop busy that long after each read of its stream
(its CPU not counted), as an agent's loop is with the rest of a sync: the socket then
holds several packets at each read, as in a real sync, where a receiver that keeps up
sees them one by one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parent.parent))
from dagsync.sshlib import asyncssh  # the trimmed asyncssh the agent uses
from dagsync.transport import ENCRYPTION_ALGS, WINDOW

WRITE = 870_000
READ = 256 * 1024  # dagsync.peer.READ_SIZE


async def serve(port: int, pktsize: int, total: int, keyfile: str) -> None:
    done = asyncio.Event()
    cpu = [0.0]

    async def handle(proc: asyncssh.SSHServerProcess[bytes]) -> None:
        data = os.urandom(WRITE)
        started = time.process_time()
        sent = 0
        while sent < total:
            proc.stdout.write(data)
            sent += len(data)
            await proc.stdout.drain()
        cpu[0] = time.process_time() - started
        proc.exit(0)
        done.set()

    class NoAuth(asyncssh.SSHServer):
        def begin_auth(self, username: str) -> bool:
            return False

    server = await asyncssh.create_server(
        NoAuth, "127.0.0.1", port, server_host_keys=[asyncssh.read_private_key(keyfile)],
        process_factory=handle, encoding=None, encryption_algs=ENCRYPTION_ALGS,
        window=WINDOW, max_pktsize=pktsize)
    print("ready", flush=True)
    await done.wait()
    await asyncio.sleep(0.2)
    server.close()
    print(f"{cpu[0]:.4f}", flush=True)


def spin(ms: float) -> float:
    """Busy for `ms` milliseconds of wall time; returns the CPU seconds it took."""
    cpu, until = time.process_time(), time.perf_counter() + ms / 1000
    while time.perf_counter() < until:
        pass
    return time.process_time() - cpu


async def receive(port: int, pktsize: int, busy_ms: float) -> tuple[float, float, int]:
    async with asyncssh.connect(
        "127.0.0.1", port, known_hosts=None, username="bench", client_keys=None,
        password=None, agent_path=None, config=[], encryption_algs=ENCRYPTION_ALGS,
        window=WINDOW, max_pktsize=pktsize,
    ) as conn:
        cpu, wall = time.process_time(), time.perf_counter()
        proc = await conn.create_process(encoding=None)
        got, busy = 0, 0.0
        while chunk := await proc.stdout.read(READ):
            got += len(chunk)
            if busy_ms:
                busy += spin(busy_ms)
        return time.process_time() - cpu - busy, time.perf_counter() - wall, got


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def one(pktsize: int, total: int, keyfile: str, busy_ms: float) -> str:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port), str(pktsize),
                               str(total), keyfile], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        if server.stdout.readline().strip() != "ready":
            raise SystemExit("ssh_bulk: the server did not start")
        cpu, wall, got = asyncio.run(receive(port, pktsize, busy_ms))
        sender_cpu = float(server.stdout.readline())
        server.wait(30)
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
    return (f"max_pktsize {pktsize:>7}: {got / 1e6:.1f} MB in {wall:.3f} s; CPU: receiver "
            f"{cpu:.3f} s, sender {sender_cpu:.3f} s")


def main() -> int:
    if sys.argv[1:2] == ["--serve"]:
        port, pktsize, total = map(int, sys.argv[2:5])
        asyncio.run(serve(port, pktsize, total, sys.argv[5]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=68.5)
    ap.add_argument("--pktsize", type=int, nargs="+", default=[32768, 131072, 262144])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--busy-ms", type=float, default=0.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        keyfile = os.path.join(tmp, "host_key")
        asyncssh.generate_private_key("ssh-ed25519").write_private_key(keyfile)
        for _ in range(args.repeat):  # alternating sizes, so drift hits them alike
            for pktsize in args.pktsize:
                print(one(pktsize, int(args.mb * 1e6), keyfile, args.busy_ms), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
