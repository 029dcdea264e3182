"""A folder's records in memory, packed: one bytes object per path.

The engine looks records up by path all the time (the scanner's stat compare, deciding
remote entries, serving peers), so they stay in memory. As objects a record costs a
Record, a FileVersion, a LocalStat, a VersionVector, a dozen ints and strings: ~750 B,
15 MB at 20,000 files, most of an idle agent's heap. Packed into one bytes object
beside its path it costs ~200 B. Records are rebuilt on access (a few microseconds);
the scanner's hot lookup, known_stat(), unpacks the stat fields only.
"""

from __future__ import annotations

import struct
import sys
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
_PAIR = struct.Struct("<HQ")  # one vector entry: node id, counter
_DELETED, _HAS_STAT, _HEX_HASH = 1, 2, 4
_KINDS = list(Kind)
_KIND_CODE = {k: i for i, k in enumerate(_KINDS)}


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
    the scanner compares: a chmod alone is a change)."""

    def __init__(self) -> None:
        self._packed: dict[str, bytes] = {}
        self._names = _Names()

    def __len__(self) -> int:
        return len(self._packed)

    def __iter__(self) -> Iterator[str]:
        return iter(self._packed)

    def __contains__(self, path: object) -> bool:
        return path in self._packed

    def __delitem__(self, path: str) -> None:
        del self._packed[path]

    def __setitem__(self, path: str, rec: Record) -> None:
        self._packed[path] = self._pack(rec)

    def __getitem__(self, path: str) -> Record:
        return self._unpack(path, self._packed[path])

    def seq(self, path: str) -> int | None:
        """The record's local sequence number, without building the record."""
        raw = self._packed.get(path)
        return None if raw is None else int(_SEQ.unpack_from(raw, _SEQ_AT)[0])

    def stat(self, path: str) -> LocalStat | None:
        """known_stat(): the stat of a live record, without building the record."""
        raw = self._packed.get(path)
        if raw is None or raw[1] & (_DELETED | _HAS_STAT) != _HAS_STAT:
            return None
        size, mtime_ns, inode = _STAT.unpack_from(raw, _STAT_AT)
        return LocalStat(size, mtime_ns, inode, int.from_bytes(raw[2:6], "little"))

    def _pack(self, rec: Record) -> bytes:
        v, st = rec.version, rec.stat
        ids = self._names
        hsh, hexed = _hash_bytes(v.hash)
        target = v.target.encode("utf-8", "surrogateescape")
        flags = (_DELETED if v.deleted else 0) | (_HAS_STAT if st is not None else 0) | (
            _HEX_HASH if hexed else 0)
        pairs = b"".join(_PAIR.pack(ids.id(n), c) for n, c in v.vv.counters)
        head = _HEAD.pack(
            _KIND_CODE[v.kind], flags, v.mode, v.size, v.mtime_ns, v.hlc, rec.seq,
            st.size if st else 0, st.mtime_ns if st else 0, st.inode if st else 0,
            ids.id(v.origin), len(v.vv.counters), len(hsh), len(target),
        )
        return head + pairs + hsh + target

    def _unpack(self, path: str, raw: bytes) -> Record:
        (kind, flags, mode, size, mtime_ns, hlc, seq, ss, sm, si, origin, npairs, hlen,
         tlen) = _HEAD.unpack_from(raw)
        names = self._names.names
        at = _HEAD.size
        counters = []
        for _ in range(npairs):
            node, count = _PAIR.unpack_from(raw, at)
            counters.append((names[node], count))
            at += _PAIR.size
        hsh = raw[at : at + hlen]
        at += hlen
        target = raw[at : at + tlen].decode("utf-8", "surrogateescape")
        version = FileVersion(
            path, _KINDS[kind], size, mtime_ns, mode,
            hsh.hex() if flags & _HEX_HASH else hsh.decode("utf-8", "surrogateescape"),
            bool(flags & _DELETED), VersionVector(tuple(counters)), hlc, names[origin],
            target,
        )
        stat = LocalStat(ss, sm, si, mode) if flags & _HAS_STAT else None
        return Record(version, seq, stat)
