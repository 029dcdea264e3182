"""A folder's records in memory, packed into one buffer: no Python object per path.

The engine looks records up by path all the time (the scanner's stat compare, deciding
remote entries, serving peers), so they stay in memory. As objects a record costs a
Record, a FileVersion, a LocalStat, a VersionVector, a dozen ints and strings: ~750 B,
15 MB at 20,000 files. Packed beside its path it costs ~230 B. Where the packed bytes
live matters as much as their size: 40,000 small long-lived objects (a key and a value
per path) made during an initial sync land between that sync's short-lived objects and
keep CPython's 1 MiB allocator arenas from ever being freed (measured: an idle receiver
kept ~15 MB of such arenas). So entries live in one bytearray, found through an
open-addressing table of two arrays (key hash, entry offset); both are single large
allocations that the C allocator holds, not the small-object one.

Records are rebuilt on access (a few microseconds); the scanner's hot lookup,
stat(), unpacks the stat fields only. Worker threads (scan, apply) and the event loop
share one store, so every public method holds a lock.
"""

from __future__ import annotations

import struct
import sys
import threading
from array import array
from collections.abc import Iterator, MutableMapping

from dagsync.clock import VersionVector
from dagsync.index import LocalStat, Record
from dagsync.model import FileVersion, Kind

# kind, flags, mode, size, mtime_ns, hlc, seq, stat size, stat mtime_ns, stat inode,
# origin id, vector length, hash length, target length
_HEAD = struct.Struct("<BBIqqqqqqQHHHI")
_STAT = struct.Struct("<qqQ")  # the stat fields, at _STAT_AT
_STAT_AT = struct.calcsize("<BBIqqqq")
_SEQ = struct.Struct("<q")  # the sequence number, at _SEQ_AT
_SEQ_AT = struct.calcsize("<BBIqqq")
_MODE = struct.Struct("<I")  # the mode bits, at _MODE_AT
_MODE_AT = 2
_PAIR = struct.Struct("<HQ")  # one vector entry: node id, counter
_DELETED, _HAS_STAT, _HEX_HASH = 1, 2, 4
_KINDS = list(Kind)
_KIND_CODE = {k: i for i, k in enumerate(_KINDS)}

# An entry in the buffer: key length (its top bit set once the entry is dead), record
# length, the key (UTF-8, surrogateescape), the packed record.
_ENTRY = struct.Struct("<II")
_KLEN = struct.Struct("<I")  # an entry's key length, alone
_DEAD_BIT = 0x8000_0000
_EMPTY, _GONE = -1, -2  # table slots: never used; used by a removed key
_MIN_SLOTS = 8
_COMPACT_AT = 64 * 1024  # dead bytes before compaction is considered


def _encode(path: str) -> bytes:
    return path.encode("utf-8", "surrogateescape")


class _Names:
    """Node names by small id: a record stores ids, not strings."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.ids: dict[str, int] = {}

    def id(self, name: str) -> int:
        found = self.ids.get(name)
        if found is None:
            found = self.ids[name] = len(self.names)
            self.names.append(sys.intern(name))
        return found


def _hash_bytes(h: str) -> tuple[bytes, bool]:
    if len(h) == 32:
        try:
            raw = bytes.fromhex(h)
        except ValueError:
            pass
        else:
            if raw.hex() == h:  # lowercase hex only: it must come back the same
                return raw, True
    return h.encode("utf-8", "surrogateescape"), False


class RecordStore(MutableMapping[str, Record]):
    """path -> Record, stored packed. Mode bits of the stat are the version's (what
    the scanner compares: a chmod alone is a change). Iteration order is not defined."""

    def __init__(self) -> None:
        self._names = _Names()
        self._lock = threading.Lock()
        self._buf = bytearray()
        self._dead = 0  # bytes of dead entries in _buf
        self._len = 0
        self._filled = 0  # slots not _EMPTY (live and _GONE)
        self._hashes = array("q", bytes(8 * _MIN_SLOTS))
        self._offsets = array("q", [_EMPTY]) * _MIN_SLOTS

    # --- the mapping ------------------------------------------------------------

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[str]:
        """A snapshot of the keys: the store may change while the caller iterates."""
        with self._lock:
            keys = [
                bytes(self._buf[at + 8 : at + 8 + klen]).decode("utf-8", "surrogateescape")
                for at, klen, _ in self._entries()
            ]
        return iter(keys)

    def __contains__(self, path: object) -> bool:
        if not isinstance(path, str):
            return False
        with self._lock:
            return self._find(path, _encode(path))[1] >= 0

    def __delitem__(self, path: str) -> None:
        with self._lock:
            slot, at = self._find(path, _encode(path))
            if at < 0:
                raise KeyError(path)
            self._kill(at)
            self._offsets[slot] = _GONE
            self._len -= 1
            self._maybe_compact()

    def __setitem__(self, path: str, rec: Record) -> None:
        with self._lock:
            self._put_packed(path, self._pack(rec))

    def put_fields(
        self, path: str, seq: int, kind: Kind, size: int, mtime_ns: int, mode: int,
        hsh: str, deleted: bool, counters: tuple[tuple[str, int], ...], hlc: int,
        origin: str, target: str, stat: tuple[int, int, int] | None,
    ) -> None:
        """store[path] = Record(FileVersion(path, kind, ...), seq, LocalStat(*stat)),
        without building the record: loading a folder's index at start-up builds none
        (`counters` are the version vector's, `stat` is (size, mtime_ns, inode))."""
        with self._lock:
            self._put_packed(path, self._pack_fields(
                kind, size, mtime_ns, mode, hsh, deleted, counters, hlc, origin, target,
                seq, stat))

    def _put_packed(self, path: str, packed: bytes) -> None:
        """store[path] = the packed record; the caller holds the lock."""
        key = _encode(path)
        slot, at = self._find(path, key)
        if at >= 0:
            klen, rlen = _ENTRY.unpack_from(self._buf, at)
            if rlen == len(packed):  # same shape: overwrite in place
                start = at + 8 + klen
                self._buf[start : start + rlen] = packed
                return
            self._kill(at)
            self._offsets[slot] = self._append(key, packed)
            self._maybe_compact()
            return
        if self._filled + 1 > len(self._offsets) * 2 // 3:
            self._rehash(max(_MIN_SLOTS, 2 * (self._len + 1)))
            slot = self._free_slot(hash(path))
        if self._offsets[slot] == _EMPTY:
            self._filled += 1
        self._hashes[slot] = hash(path)
        self._offsets[slot] = self._append(key, packed)
        self._len += 1

    def __getitem__(self, path: str) -> Record:
        with self._lock:
            start = self._record_at(path)
            if start < 0:
                raise KeyError(path)
            return self._unpack(path, self._buf, start)

    def get(self, path: str, default: Record | None = None) -> Record | None:  # type: ignore[override]
        """One lookup; Mapping.get would raise and catch a KeyError for every miss."""
        if not isinstance(path, str):
            return default
        with self._lock:
            start = self._record_at(path)
            return default if start < 0 else self._unpack(path, self._buf, start)

    def clear(self) -> None:
        with self._lock:
            self._buf = bytearray()
            self._dead = self._len = self._filled = 0
            self._hashes = array("q", bytes(8 * _MIN_SLOTS))
            self._offsets = array("q", [_EMPTY]) * _MIN_SLOTS

    # --- the scanner's and the sender's fast paths ---------------------------------

    def seq(self, path: str) -> int | None:
        """The record's local sequence number, without building the record."""
        with self._lock:
            start = self._record_at(path)
            return None if start < 0 else int(_SEQ.unpack_from(self._buf, start + _SEQ_AT)[0])

    def stat(self, path: str) -> LocalStat | None:
        """known_stat(): the stat of a live record, without building the record."""
        with self._lock:
            start = self._record_at(path)
            if start < 0 or self._buf[start + 1] & (_DELETED | _HAS_STAT) != _HAS_STAT:
                return None
            size, mtime_ns, inode = _STAT.unpack_from(self._buf, start + _STAT_AT)
            mode = _MODE.unpack_from(self._buf, start + _MODE_AT)[0]
            return LocalStat(size, mtime_ns, inode, mode)

    def file_hash(self, path: str) -> str | None:
        """The content hash of a live regular file's record, else None, without building
        the record: serving a peer's read checks it for every file it sends."""
        with self._lock:
            start = self._record_at(path)
            if start < 0:
                return None
            head = _HEAD.unpack_from(self._buf, start)
            kind, flags, npairs, hlen = head[0], head[1], head[11], head[12]
            if flags & _DELETED or _KINDS[kind] is not Kind.FILE:
                return None
            at = start + _HEAD.size + npairs * _PAIR.size
            hsh = bytes(self._buf[at : at + hlen])
        return hsh.hex() if flags & _HEX_HASH else hsh.decode("utf-8", "surrogateescape")

    # --- the table ---------------------------------------------------------------

    def _find(self, path: str, key: bytes) -> tuple[int, int]:
        """(slot, entry offset) of path; offset -1 when absent, slot then the first slot
        an insert may take."""
        h = hash(path)
        mask = len(self._offsets) - 1
        slot = h & mask
        free = -1
        hashes, offsets, buf = self._hashes, self._offsets, self._buf
        while True:
            at = offsets[slot]
            if at == _EMPTY:
                return (slot if free < 0 else free), -1
            if at == _GONE:
                if free < 0:
                    free = slot
            elif (hashes[slot] == h and buf.startswith(key, at + 8)
                  and _KLEN.unpack_from(buf, at)[0] == len(key)):
                return slot, at
            slot = (slot + 1) & mask

    def _free_slot(self, h: int) -> int:
        mask = len(self._offsets) - 1
        slot = h & mask
        while self._offsets[slot] >= 0:
            slot = (slot + 1) & mask
        return slot

    def _record_at(self, path: str) -> int:
        key = _encode(path)
        at = self._find(path, key)[1]
        return -1 if at < 0 else at + 8 + len(key)  # a found entry's key is `key`

    def _append(self, key: bytes, packed: bytes) -> int:
        at = len(self._buf)
        self._buf += _ENTRY.pack(len(key), len(packed))
        self._buf += key
        self._buf += packed
        return at

    def _kill(self, at: int) -> None:
        klen, rlen = _ENTRY.unpack_from(self._buf, at)
        _ENTRY.pack_into(self._buf, at, klen | _DEAD_BIT, rlen)
        self._dead += 8 + klen + rlen

    def _entries(self) -> Iterator[tuple[int, int, int]]:
        """(offset, key length, record length) of every live entry, in buffer order."""
        buf, at, end = self._buf, 0, len(self._buf)
        while at < end:
            klen, rlen = _ENTRY.unpack_from(buf, at)
            if not klen & _DEAD_BIT:
                yield at, klen, rlen
            at += 8 + (klen & ~_DEAD_BIT) + rlen

    def _rehash(self, live: int) -> None:
        """A table with room for `live` entries at under 2/3 load; drops _GONE slots."""
        size = _MIN_SLOTS
        while size * 2 // 3 < live:
            size *= 2
        old_hashes, old_offsets = self._hashes, self._offsets
        self._hashes = array("q", bytes(8 * size))
        self._offsets = array("q", [_EMPTY]) * size
        mask = size - 1
        for h, at in zip(old_hashes, old_offsets, strict=True):
            if at >= 0:
                slot = h & mask
                while self._offsets[slot] != _EMPTY:
                    slot = (slot + 1) & mask
                self._hashes[slot] = h
                self._offsets[slot] = at
        self._filled = self._len

    def _maybe_compact(self) -> None:
        """Rewrite the buffer without dead entries once they are half of it."""
        if self._dead < _COMPACT_AT or self._dead * 2 < len(self._buf):
            return
        old = self._buf
        moved: dict[int, int] = {}
        new = bytearray()
        for at, klen, rlen in self._entries():
            moved[at] = len(new)
            new += old[at : at + 8 + klen + rlen]
        for slot, at in enumerate(self._offsets):
            if at >= 0:
                self._offsets[slot] = moved[at]
        self._buf = new
        self._dead = 0

    # --- packing -------------------------------------------------------------------

    def _pack(self, rec: Record) -> bytes:
        v, st = rec.version, rec.stat
        return self._pack_fields(
            v.kind, v.size, v.mtime_ns, v.mode, v.hash, v.deleted, v.vv.counters, v.hlc,
            v.origin, v.target, rec.seq,
            None if st is None else (st.size, st.mtime_ns, st.inode))

    def _pack_fields(
        self, kind: Kind, size: int, mtime_ns: int, mode: int, hsh_text: str, deleted: bool,
        counters: tuple[tuple[str, int], ...], hlc: int, origin: str, target_text: str,
        seq: int, st: tuple[int, int, int] | None,
    ) -> bytes:
        ids = self._names
        hsh, hexed = _hash_bytes(hsh_text)
        target = target_text.encode("utf-8", "surrogateescape")
        flags = (_DELETED if deleted else 0) | (_HAS_STAT if st is not None else 0) | (
            _HEX_HASH if hexed else 0)
        pairs = b"".join(_PAIR.pack(ids.id(n), c) for n, c in counters)
        ss, sm, si = st if st is not None else (0, 0, 0)
        head = _HEAD.pack(
            _KIND_CODE[kind], flags, mode, size, mtime_ns, hlc, seq, ss, sm, si,
            ids.id(origin), len(counters), len(hsh), len(target),
        )
        return head + pairs + hsh + target

    def _unpack(self, path: str, buf: bytearray, start: int) -> Record:
        (kind, flags, mode, size, mtime_ns, hlc, seq, ss, sm, si, origin, npairs, hlen,
         tlen) = _HEAD.unpack_from(buf, start)
        names = self._names.names
        at = start + _HEAD.size
        counters = []
        for _ in range(npairs):
            node, count = _PAIR.unpack_from(buf, at)
            counters.append((names[node], count))
            at += _PAIR.size
        hsh = bytes(buf[at : at + hlen])
        at += hlen
        target = bytes(buf[at : at + tlen]).decode("utf-8", "surrogateescape")
        version = FileVersion(
            path, _KINDS[kind], size, mtime_ns, mode,
            hsh.hex() if flags & _HEX_HASH else hsh.decode("utf-8", "surrogateescape"),
            bool(flags & _DELETED), VersionVector(tuple(counters)), hlc, names[origin],
            target,
        )
        stat = LocalStat(ss, sm, si, mode) if flags & _HAS_STAT else None
        return Record(version, seq, stat)
