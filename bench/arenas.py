"""What keeps CPython's small-object arenas of a running process resident.

CPython 3.11 takes memory for objects of up to 512 bytes in 1 MiB arenas and gives an
arena back only when every block in it is free, so a few long-lived objects left among
a burst's temporaries keep whole arenas resident (docs/memory.md). This reads another
process's allocator state from /proc/PID/mem (root; libpython's symbol table via `nm`)
and prints, per arena, how much of it is live and, for sparse ones, the types of the
blocks keeping it: which objects to move out of the burst.

    python bench/arenas.py PID [--sparse 0.35]
"""

from __future__ import annotations

import argparse
import bisect
import collections
import contextlib
import os
import re
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

POOL_SIZE = 16 * 1024  # 3.11, 64-bit: 1 MiB arenas of 16 KiB pools
ARENA_SIZE = 1 << 20
POOL_HEADER = 48  # sizeof(struct pool_header), the first block's offset
ARENA_OBJECT = 48  # sizeof(struct arena_object)


@dataclass
class Arena:
    address: int
    pools: list[tuple[int, int, int]]  # (pool address, blocks in use, block size)

    @property
    def live(self) -> int:
        return sum(count * size for _, count, size in self.pools)


class ProcessMemory:
    def __init__(self, pid: int) -> None:
        self.fd = os.open(f"/proc/{pid}/mem", os.O_RDONLY)

    def read(self, addr: int, n: int) -> bytes:
        if not 0 < addr < 1 << 47:  # not a user-space address: a value, not a pointer
            return b""
        try:
            return os.pread(self.fd, n, addr)
        except OSError:
            return b""

    def u64(self, addr: int) -> int:
        b = self.read(addr, 8)
        return struct.unpack("<Q", b)[0] if len(b) == 8 else 0

    def u32(self, addr: int) -> int:
        b = self.read(addr, 4)
        return struct.unpack("<I", b)[0] if len(b) == 4 else 0

    def cstr(self, addr: int, n: int = 64) -> str:
        return self.read(addr, n).split(b"\0")[0].decode("latin-1")


def _libpython(pid: int) -> tuple[int, str]:
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 6 and "libpython3" in parts[5] and int(parts[2], 16) == 0:
                return int(parts[0].split("-")[0], 16), parts[5]
    raise SystemExit(f"process {pid} has no libpython3 mapping")


def _symbols(path: str, names: set[str]) -> dict[str, int]:
    out = {}
    nm = subprocess.run(["nm", path], capture_output=True, text=True, check=True).stdout
    for line in nm.splitlines():
        f = line.split()
        if len(f) == 3 and f[2] in names:
            out[f[2]] = int(f[0], 16)
    missing = names - out.keys()
    if missing:
        raise SystemExit(f"{path}: no symbols {sorted(missing)} (stripped?)")
    return out


class Allocator:
    """The arenas of another CPython 3.11 process, read from its memory."""

    def __init__(self, pid: int) -> None:
        base, path = _libpython(pid)
        sym = _symbols(path, {"arenas", "maxarenas", "PyType_Type"})
        self.mem = ProcessMemory(pid)
        self.type_type = base + sym["PyType_Type"]
        self._arenas = self.mem.u64(base + sym["arenas"])
        self._max = self.mem.u32(base + sym["maxarenas"])
        self._names: dict[int, str | None] = {}
        self.samples: dict[str, list[str]] = {"str": [], "bytes": []}

    def arenas(self) -> list[Arena]:
        m, out = self.mem, []
        for i in range(self._max):
            a = self._arenas + ARENA_OBJECT * i
            address = m.u64(a)
            if not address:
                continue
            carved_to = m.u64(a + 8)  # pool_address: the next pool never used yet
            pools, p = [], (address + POOL_SIZE - 1) & ~(POOL_SIZE - 1)
            while p < carved_to:
                count, szidx = m.u32(p), m.u32(p + 36)
                if count:
                    pools.append((p, count, (szidx + 1) * 16))
                p += POOL_SIZE
            out.append(Arena(address, pools))
        return out

    def type_name(self, tp: int) -> str | None:
        if tp not in self._names:
            m = self.mem
            meta = m.u64(tp + 8)
            name = None
            if meta == self.type_type or m.u64(meta + 8) == self.type_type:
                name = m.cstr(m.u64(tp + 24))  # tp_name
                if not (0 < len(name) < 60 and name.isprintable()):
                    name = None
            self._names[tp] = name
        return self._names[tp]

    def live_blocks(self, arena: Arena) -> collections.Counter[tuple[str, int]]:
        """(type name or '?', block size) of every block in use. A gc-tracked object
        starts 16 bytes into its block (PyGC_Head); '?' is not an object (dict keys,
        a buffer)."""
        m, found = self.mem, collections.Counter[tuple[str, int]]()
        for pool, _, size in arena.pools:
            free, fb = set(), m.u64(pool + 8)
            while fb and len(free) < POOL_SIZE // 16:
                free.add(fb)
                fb = m.u64(fb)
            end = m.u32(pool + 40)  # nextoffset: blocks past it were never handed out
            for off in range(POOL_HEADER, end, size):
                blk = pool + off
                if blk not in free:
                    t = self.type_name(m.u64(blk + 8)) or self.type_name(m.u64(blk + 24))
                    found[(t or "?", size)] += 1
                    if t in ("str", "bytes") and len(self.samples[t]) < 400:
                        self.samples[t].append(self._text(blk, t))
        return found

    def _text(self, obj: int, kind: str) -> str:
        """A str's (compact ASCII) or bytes' content, cut short."""
        m = self.mem
        n = min(m.u64(obj + 16), 60)
        data = m.read(obj + (48 if kind == "str" else 32), n)
        return data.decode("latin-1")


def resident_anon(pid: int, arenas: list[Arena]) -> str:
    """Resident anonymous pages (from /proc/PID/pagemap) inside the arenas and, outside
    them, per mapping: thread heaps are 64 MiB regions, thread stacks 8 MiB."""
    page = os.sysconf("SC_PAGE_SIZE")
    starts = sorted(a.address for a in arenas)
    in_arenas, others = 0, []
    with open(f"/proc/{pid}/maps") as maps, open(f"/proc/{pid}/pagemap", "rb") as pm:
        for line in maps:
            parts = line.split()
            if len(parts) > 5 and parts[5] not in ("[heap]", "[stack]"):
                continue  # file-backed or a special mapping ([vdso], ...)
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            pm.seek(lo // page * 8)
            raw = pm.read((hi - lo) // page * 8)
            outside = 0
            for i, (entry,) in enumerate(struct.iter_unpack("<Q", raw)):
                if not entry >> 63:
                    continue
                addr = lo + i * page
                k = bisect.bisect_right(starts, addr) - 1
                if k >= 0 and addr < starts[k] + ARENA_SIZE:
                    in_arenas += page
                else:
                    outside += page
            if outside:
                label = parts[5] if len(parts) > 5 else "anon"
                others.append((outside, f"{label} {(hi - lo) / 2**20:.1f} MiB map"))
    others.sort(reverse=True)
    rest = sum(n for n, _ in others)
    return (f"resident anon: arenas {in_arenas / 2**20:.1f} MiB, elsewhere {rest / 2**20:.1f}"
            " MiB (" + ", ".join(f"{n / 2**20:.1f} in {what}" for n, what in others[:8]) + ")")


def malloc_heaps(pid: int) -> str:
    """glibc's own account of each malloc arena (malloc_info, called through gdb, which
    stops the process for about a second): bytes taken from the kernel and bytes free
    in it. Free bytes stay resident when they sit in pages shared with live chunks."""
    out = f"/tmp/dagsync-malloc-info.{pid}.xml"
    subprocess.run(["gdb", "-p", str(pid), "-batch", "-ex",
                    f'set $f = (void*)fopen("{out}", "w")', "-ex",
                    "call (int)malloc_info(0, $f)", "-ex", "call (int)fclose($f)"],
                   capture_output=True, timeout=120, check=False)
    try:
        xml = Path(out).read_text()
    except OSError:
        return "malloc_info: gdb could not call it"
    finally:
        with contextlib.suppress(OSError):
            os.unlink(out)
    parts = []
    for heap in re.findall(r'<heap nr="(\d+)">(.*?)</heap>', xml, re.S):
        nr, body = heap
        system = int(re.search(r'<system type="current" size="(\d+)"', body).group(1))
        free = sum(int(x) for x in re.findall(r'<total type="(?:fast|rest)" count="\d+" '
                                                r'size="(\d+)"', body))
        parts.append(f"heap {nr}: {system / 2**20:.1f} MiB from the kernel, "
                     f"{free / 2**20:.1f} free")
    mm = re.search(r'</heap>\s*(?:.*\n)*?<total type="mmap" count="(\d+)" size="(\d+)"', xml)
    if mm:
        parts.append(f"mmapped chunks {mm.group(1)}: {int(mm.group(2)) / 2**20:.1f} MiB")
    return "malloc: " + "; ".join(parts)


def report(pid: int, sparse: float = 0.35, malloc: bool = False) -> str:
    alloc = Allocator(pid)
    arenas = sorted(alloc.arenas(), key=lambda a: a.live)
    live = sum(a.live for a in arenas)
    lines = [f"{len(arenas)} arenas ({len(arenas)} MiB resident at most), "
             f"{live / 2**20:.1f} MiB in live blocks"]
    pinning: collections.Counter[tuple[str, int]] = collections.Counter()
    for a in arenas:
        share = a.live / ARENA_SIZE
        line = f"  arena {a.address:#x}: {len(a.pools):2d} pools in use, " \
               f"{a.live / 1024:5.0f} KiB live ({share:4.0%})"
        if share < sparse:
            blocks = alloc.live_blocks(a)
            pinning.update(blocks)
            line += "  " + ", ".join(f"{n} {t}/{s}" for (t, s), n in blocks.most_common(6))
        lines.append(line)
    for kind, texts in alloc.samples.items():
        if texts:
            common = collections.Counter(texts).most_common(12)
            lines.append(f"  {kind} in sparse arenas, e.g.: " + " | ".join(
                f"{t!r}" + (f" x{n}" if n > 1 else "") for t, n in common))
    lines.append("  " + resident_anon(pid, arenas))
    if malloc:
        lines.append("  " + malloc_heaps(pid))
    lines.append("  blocks in sparse arenas: " + ", ".join(
        f"{n} {t}/{s}" for (t, s), n in pinning.most_common(20)))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("pid", type=int)
    ap.add_argument("--sparse", type=float, default=0.35,
                    help="list the blocks of arenas less than this share live")
    ap.add_argument("--malloc", action="store_true",
                    help="also glibc's malloc_info per arena (through gdb)")
    args = ap.parse_args()
    print(report(args.pid, args.sparse, args.malloc))


if __name__ == "__main__":
    main()
