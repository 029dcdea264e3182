#!/usr/bin/env python3
"""The syscall floor of applying an initial sync, without dagsync around it.

    python bench/apply_floor.py DIR [--files 5000] [--variant named|tmpfile]
                                    [--busy-thread] [--switch-interval S]

Writes --files new files (1-16 KB) under DIR/dst in chunks of 512, as dagsync's apply does
(docs/initial-sync.md): each staged in a private temp dir (create, write, utime, fstat,
close), one syncfs, each linked into place and its temp unlinked, a second syncfs.
`--variant tmpfile` stages with O_TMPFILE and links through /proc/self/fd instead.
`--busy-thread` runs a pure-Python thread beside it (as an event loop decoding frames
would be) to show what giving the GIL away at every syscall costs; `--switch-interval`
sets sys.setswitchinterval. Use an empty directory on a fresh file system (bench/run.py
--fresh-fs mounts one; a churned ext4 slows creates for minutes).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import threading
import time
from pathlib import Path

CHUNK = 512
DIRS = 100
_libc = ctypes.CDLL(None, use_errno=True)


def syncfs(fd: int) -> float:
    started = time.perf_counter()
    if _libc.syncfs(fd) != 0:
        raise OSError(ctypes.get_errno(), "syncfs failed")
    return time.perf_counter() - started


def spin(stop: threading.Event) -> None:
    doc = json.dumps([{"path": f"d/{i}.py", "hash": "ab" * 16, "vv": {"a": i}} for i in range(50)])
    while not stop.is_set():
        json.loads(doc)


def stage(tmp_fd: int, i: int, data: bytes, variant: str) -> int | str:
    """One file staged: its open fd (tmpfile) or its temp name (named)."""
    if variant == "tmpfile":
        fd = os.open(".", os.O_WRONLY | os.O_TMPFILE | os.O_CLOEXEC, 0o644, dir_fd=tmp_fd)
        os.write(fd, data)
        os.utime(fd, ns=(1, 1))
        os.fstat(fd)
        return fd
    name = f".t{i}"
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644, dir_fd=tmp_fd)
    os.write(fd, data)
    os.utime(fd, ns=(1, 1))
    os.fstat(fd)
    os.close(fd)
    return name


def place(tmp_fd: int, dir_fd: int, staged: int | str, name: str) -> None:
    if isinstance(staged, int):
        os.link(f"/proc/self/fd/{staged}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        os.close(staged)
    else:
        os.link(staged, name, src_dir_fd=tmp_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
        os.unlink(staged, dir_fd=tmp_fd)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dir", type=Path)
    ap.add_argument("--files", type=int, default=5000)
    ap.add_argument("--variant", choices=("named", "tmpfile"), default="named")
    ap.add_argument("--busy-thread", action="store_true")
    ap.add_argument("--switch-interval", type=float, default=None)
    args = ap.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    (args.dir / "tmp").mkdir(parents=True)
    dir_fds = []
    for d in range(DIRS):
        (args.dir / "dst" / f"d{d}").mkdir(parents=True)
        dir_fds.append(os.open(args.dir / "dst" / f"d{d}", os.O_RDONLY | os.O_DIRECTORY))
    tmp_fd = os.open(args.dir / "tmp", os.O_RDONLY | os.O_DIRECTORY)
    data = [os.urandom(1024 + (i * 7919) % 15360) for i in range(args.files)]
    syncfs(tmp_fd)
    stop = threading.Event()
    if args.busy_thread:
        threading.Thread(target=spin, args=(stop,), daemon=True).start()
    started = time.perf_counter()
    in_syncfs = 0.0
    for first in range(0, args.files, CHUNK):
        batch = range(first, min(args.files, first + CHUNK))
        staged = [stage(tmp_fd, i, data[i], args.variant) for i in batch]
        in_syncfs += syncfs(tmp_fd)
        for i, s in zip(batch, staged, strict=True):
            place(tmp_fd, dir_fds[i % DIRS], s, f"f{i}.py")
        in_syncfs += syncfs(tmp_fd)
    elapsed = time.perf_counter() - started
    stop.set()
    print(f"{args.variant}{' + busy thread' if args.busy_thread else ''}: {args.files} files "
          f"in {elapsed:.3f} s, syncfs {in_syncfs:.3f} s, "
          f"{(elapsed - in_syncfs) / args.files * 1e6:.1f} us a file besides syncfs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
