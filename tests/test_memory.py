"""The agent's heap trimming finds glibc's allocator controls (they are no-ops elsewhere)."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from dagsync import memory
from tests.cluster import wait_converged, write


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_glibc_controls_are_found_and_callable() -> None:
    lib = memory._glibc()
    assert lib is not None
    memory.limit_arenas()
    memory.trim()
    assert lib.malloc_trim(0) in (0, 1)  # 1: memory was released, 0: none to release


def test_agent_loads_asyncssh_without_x509_and_umac() -> None:
    """~2 MiB of every agent's idle RSS and ~75 ms of its start-up (docs/memory.md):
    asyncssh's optional X.509 and UMAC support and its liboqs lookup stay out of the
    process, whatever module reaches asyncssh first."""
    code = ("import sys, ctypes.util; find = ctypes.util.find_library;"
            "import dagsync.cli, dagsync.agent, dagsync.oneshot;"
            "print(sorted(m for m in sys.modules if m.startswith(('cryptography.x509',"
            " 'email', 'asyncssh.crypto.x509', 'asyncssh.crypto.umac'))));"
            "from asyncssh.crypto import pq;"
            "from cryptography.hazmat.backends.openssl import backend;"
            "print(pq.mlkem_available == backend.mlkem_supported(),"
            " ctypes.util.find_library is find)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONSAFEPATH": "1"})
    # nothing optional loaded; ML-KEM key exchange kept; find_library given back
    assert out.stdout.split("\n")[:2] == ["[]", "True True"]


def test_commands_start_without_library_warnings() -> None:
    """cryptography 51+ warns that DSA is deprecated when asyncssh is imported: an
    operator must not see that on every `dagsync` command (dagsync never uses DSA)."""
    out = subprocess.run([sys.executable, "-W", "default", "-c",
                          "import dagsync.cli, dagsync.agent, dagsync.oneshot, dagsync.sshlib"],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert out.stderr == ""


def test_no_module_imports_asyncssh_but_sshlib() -> None:
    package = Path(memory.__file__).parent
    direct = [f.name for f in package.glob("*.py") if f.name != "sshlib.py"
              and re.search(r"^\s*(import asyncssh|from asyncssh)", f.read_text(), re.M)]
    assert direct == []


_HEAPS_AFTER_THREAD = """
import ctypes, sys, threading
from dagsync import memory
if sys.argv[1] == "limit":
    memory.limit_arenas()
def work():
    keep = [bytes(1000) + bytes([i % 256]) for i in range(2000)]  # malloc, not obmalloc
    del keep
t = threading.Thread(target=work); t.start(); t.join()
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
f = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(f)); libc.fclose(ctypes.c_void_p(f))
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc only")
@pytest.mark.parametrize(("mode", "heaps"), [("limit", 1), ("default", 2)])
def test_threads_share_the_main_malloc_arena(tmp_path: Path, mode: str, heaps: int) -> None:
    """malloc_trim gives back only the main arena's free top: a worker thread's own arena
    kept 4-6 MiB resident after serving a sync (docs/memory.md)."""
    out = tmp_path / "malloc.xml"
    subprocess.run([sys.executable, "-c", _HEAPS_AFTER_THREAD, mode, str(out)], check=True,
                   env={**os.environ, "PYTHONSAFEPATH": "1"})
    assert out.read_text().count("<heap nr=") == heaps


def _openssl_libraries(pid: int) -> set[str]:
    with open(f"/proc/{pid}/maps") as maps:
        return {os.path.basename(line.split()[-1]) for line in maps
                if re.search(r"/lib(ssl|crypto)\.so", line)}


def test_agents_replicate_without_the_system_openssl(cluster: Any) -> None:
    """~4.5 MiB of every agent (docs/memory.md): SSH runs on cryptography's own OpenSSL;
    the system's libssl/libcrypto (asyncio's TLS, hashlib's OpenSSL hashes) stay out."""
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    write(a.dags / "etl.py", "from airflow import DAG\n")
    a.start()
    b.start()
    wait_converged([a, b])
    write(b.dags / "back.py", "x = 1\n")
    wait_converged([a, b])
    for n in (a, b):
        assert n.proc is not None
        assert _openssl_libraries(n.proc.pid) == set(), n.name


def _peak_rss(pid: int) -> int:
    """The process's resident high-water mark, in bytes."""
    with open(f"/proc/{pid}/status") as status:
        kib = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
    return int(kib) * 1024


def test_a_new_node_takes_in_big_files_without_holding_them_all(cluster: Any) -> None:
    """A DAG folder with data files beside the DAGs: an empty peer holds a chunk's content
    from its fetch until it is staged, and the next chunk's meanwhile. Chunks of up to
    512 files (64 first) held every one of these 192 MiB at once; now CHUNK_BYTES (32
    MiB) a chunk."""
    nodes = cluster("a", "b")
    a, b = nodes["a"], nodes["b"]
    total = 0
    for i in range(48):
        data = os.urandom(4 * 1024**2)
        write(a.dags / f"data/part_{i:02d}.csv", data)
        total += len(data)
    write(a.dags / "etl.py", "from airflow import DAG\n")
    a.start()
    b.start()
    wait_converged([a, b], timeout=120)
    assert b.proc is not None
    # ~116 MiB (~50 of it the idle agent); 240 MiB when it held them all
    peak = _peak_rss(b.proc.pid)
    assert peak < total, f"B's resident peak {peak / 2**20:.0f} MiB for {total >> 20} MiB"
