"""Delta transfer, pure: content-defined chunks, signatures, and what to fetch.

A receiver that holds an older version of a file asks the sender for the signature of
the new version (each chunk's length and a 64-bit hash), cuts its own old content into
chunks the same way, and fetches only the chunks it does not hold. The whole-file
xxh3-128 hash is checked after assembly as for any fetch, so a wrong signature or a
chunk-hash collision costs a whole-file fetch, never wrong content.

Chunk boundaries depend on content only, so inserting or deleting bytes moves the
boundaries near the edit and no others. Boundaries fall at line ends: a line of `ln`
bytes that ends a chunk-so-far of `cs` bytes cuts there when the xxh32 of the line, as
a fraction of 2**32, is below ln * cs * pi / (2 * target**2). The chance to cut grows
with the chunk, so chunk sizes follow a Rayleigh distribution of mean `target` instead
of a geometric one: fewer long chunks, so the chunk around an edit (the bytes refetched)
averages ~1.3 x target instead of ~2 x target, whatever the line lengths. Boundaries
resynchronise a few lines after an edit. Lines are found by `bytes.split`, so chunking
runs at C speed per line (a 1 MB Python file: a few milliseconds). Random binary data
holds a newline byte every 256 bytes on average, so it chunks by content too; a stretch
longer than `16 * target` with no cut is cut at fixed offsets. Integer arithmetic only,
so every platform cuts the same way.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import xxhash

MIN_TARGET = 1024
MAX_TARGET = 1 << 20
DEFAULT_TARGET = 4096
_CUT_SCALE = 6746518852  # round(2**32 * pi / 2)
SIGNATURE_ENTRY = 12  # bytes per chunk on the wire: u32 length + u64 hash


def target_for(size: int) -> int:
    """Average chunk size for a file of `size` bytes: about sqrt(12 * size) (signature
    bytes balanced against the chunk refetched around one edit), a power of two in
    [DEFAULT_TARGET, MAX_TARGET]. 4 KiB up to 1.4 MB, 16 KiB at 16 MB."""
    ideal = math.isqrt(SIGNATURE_ENTRY * max(size, 1))
    target = DEFAULT_TARGET
    while target < ideal and target < MAX_TARGET:
        target *= 2
    return target


def valid_target(target: int) -> bool:
    return MIN_TARGET <= target <= MAX_TARGET and target & (target - 1) == 0


def max_chunk(target: int) -> int:
    return 16 * target


def chunk_ends(data: bytes, target: int = DEFAULT_TARGET) -> list[int]:
    """The end offset of every chunk of `data`, in order (the last is len(data))."""
    if not valid_target(target):
        raise ValueError(f"bad chunk target {target}")
    n = len(data)
    if n == 0:
        return []
    t2 = target * target
    lo = target // 16
    hi = max_chunk(target)
    h = xxhash.xxh32_intdigest
    ends: list[int] = []
    start = 0  # where the current chunk began
    pos = 0  # where the current line begins
    lines = data.split(b"\n")
    lines.pop()  # the text after the last newline: handled below
    for line in lines:
        ln = len(line) + 1
        end = pos + ln
        if end - start > hi:
            while end - start > hi:
                start += hi
                ends.append(start)
        cs = end - start
        if cs >= lo and h(line) * t2 < ln * cs * _CUT_SCALE:
            ends.append(end)
            start = end
        pos = end
    while n - start > hi:
        start += hi
        ends.append(start)
    if start < n:
        ends.append(n)
    return ends


def chunk_hash(data: bytes | memoryview) -> int:
    return xxhash.xxh3_64_intdigest(data)


@dataclass(frozen=True, slots=True)
class Signature:
    """A file's chunks as (length, 64-bit hash), in order, and the target they were cut
    with (the receiver cuts its old content the same way)."""

    target: int
    chunks: tuple[tuple[int, int], ...]

    @property
    def size(self) -> int:
        return sum(length for length, _ in self.chunks)


def signature(data: bytes, target: int | None = None) -> Signature:
    target = target_for(len(data)) if target is None else target
    mv = memoryview(data)
    chunks = []
    start = 0
    for end in chunk_ends(data, target):
        chunks.append((end - start, chunk_hash(mv[start:end])))
        start = end
    return Signature(target, tuple(chunks))


COPY = 0  # from the receiver's old content
FETCH = 1  # from the sender


@dataclass(frozen=True, slots=True)
class Plan:
    """How to build the new content: `ops` are (source, offset, length) in order, where
    the offset is into the old content (COPY) or the new file (FETCH); `fetch` lists the
    FETCH ranges (offset, length) of the new file, in the same order."""

    size: int
    ops: tuple[tuple[int, int, int], ...]

    @property
    def fetch(self) -> list[tuple[int, int]]:
        return [(off, ln) for src, off, ln in self.ops if src == FETCH]

    @property
    def fetch_bytes(self) -> int:
        return sum(ln for src, _, ln in self.ops if src == FETCH)


Holdings = dict[tuple[int, int], int]  # (length, chunk hash) -> offset in the old content


def holdings(old: bytes, target: int) -> Holdings:
    """The chunks of `old`, cut with `target`, by (length, hash): where each starts."""
    have: Holdings = {}
    mv = memoryview(old)
    start = 0
    for end in chunk_ends(old, target):
        have.setdefault((end - start, chunk_hash(mv[start:end])), start)
        start = end
    return have


def plan(sig: Signature, old: bytes, max_range: int = 1 << 62,
         have: Holdings | None = None) -> Plan:
    """Which parts of the new file (described by `sig`) `old` already holds, and which
    ranges must be fetched; no range is longer than `max_range`. `have` may be passed
    when already computed as holdings(old, sig.target)."""
    if max_range < 1:
        raise ValueError("max_range must be positive")
    if have is None:
        have = holdings(old, sig.target)
    ops: list[tuple[int, int, int]] = []

    def add(src: int, off: int, ln: int) -> None:
        if ops:
            psrc, poff, pln = ops[-1]
            if psrc == src and poff + pln == off:
                ops[-1] = (src, poff, pln + ln)
                return
        ops.append((src, off, ln))

    new_off = 0
    for length, hsh in sig.chunks:
        at = have.get((length, hsh))
        if at is None:
            add(FETCH, new_off, length)
        else:
            add(COPY, at, length)
        new_off += length
    split: list[tuple[int, int, int]] = []
    for src, off, ln in ops:
        if src == FETCH:
            split.extend((FETCH, o, min(max_range, off + ln - o))
                         for o in range(off, off + ln, max_range))
        else:
            split.append((src, off, ln))
    return Plan(new_off, tuple(split))


def batches(ranges: Iterable[tuple[int, int]], max_bytes: int,
            max_count: int) -> list[list[tuple[int, int]]]:
    """Ranges grouped in order into requests of at most `max_count` ranges and
    `max_bytes` bytes (a range longer than `max_bytes` must have been split already)."""
    out: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    total = 0
    for off, ln in ranges:
        if ln > max_bytes:
            raise ValueError(f"range of {ln} bytes exceeds {max_bytes}")
        if cur and (len(cur) >= max_count or total + ln > max_bytes):
            out.append(cur)
            cur, total = [], 0
        cur.append((off, ln))
        total += ln
    if cur:
        out.append(cur)
    return out


def assemble(p: Plan, old: bytes, fetched: Sequence[bytes]) -> bytes:
    """The new content from `old` and the fetched ranges (in `p.fetch` order)."""
    parts: list[bytes | memoryview] = []
    mv = memoryview(old)
    i = 0
    for src, off, ln in p.ops:
        if src == COPY:
            if off + ln > len(old):
                raise ValueError("plan copies past the end of the old content")
            parts.append(mv[off : off + ln])
        else:
            if i >= len(fetched) or len(fetched[i]) != ln:
                raise ValueError("fetched ranges do not match the plan")
            parts.append(fetched[i])
            i += 1
    if i != len(fetched):
        raise ValueError("more fetched ranges than the plan asks for")
    return b"".join(parts)
