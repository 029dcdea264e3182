"""Value types shared by every layer: file versions and what to do with them."""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from json.encoder import encode_basestring_ascii as json_str  # the C escaper json uses
from typing import Any

from dagsync.clock import VersionVector


class Kind(enum.StrEnum):
    FILE = "file"
    SYMLINK = "symlink"


class FolderMode(enum.StrEnum):
    SEND_RECEIVE = "send-receive"
    SEND_ONLY = "send-only"
    RECEIVE_ONLY = "receive-only"


@dataclass(frozen=True, slots=True)
class FileVersion:
    """One version of one path in one folder, as every node records and announces it.

    `hash` is the hex xxh3-128 of the content ("" for deletes); for symlinks `target`
    holds the link text and `hash` is the hash of that text. `hlc` is a hybrid logical
    clock value (see clock.py); `origin` is the node that made this version.
    """

    path: str
    kind: Kind
    size: int
    mtime_ns: int
    mode: int
    hash: str
    deleted: bool
    vv: VersionVector
    hlc: int
    origin: str
    target: str = ""

    def same_content(self, other: FileVersion) -> bool:
        """True when both versions hold the same bytes (or are both deletes)."""
        if self.deleted or other.deleted:
            return self.deleted and other.deleted
        return (self.kind, self.hash, self.target) == (other.kind, other.hash, other.target)

    def same_version(self, other: FileVersion) -> bool:
        """True when both records describe exactly the same version."""
        return self == other

    def with_vv(self, vv: VersionVector) -> FileVersion:
        return replace(self, vv=vv)

    def to_wire(self) -> dict[str, Any]:
        return {
            "p": self.path,
            "k": self.kind.value,
            "s": self.size,
            "m": self.mtime_ns,
            "x": self.mode,
            "h": self.hash,
            "d": self.deleted,
            "v": self.vv.to_wire(),
            "c": self.hlc,
            "o": self.origin,
            "t": self.target,
        }

    def wire_json(self, vectors: dict[VersionVector, str] | None = None) -> str:
        """to_wire() as compact JSON, the same text json.dumps(separators=(",", ":"))
        gives, built without the dict: a sender encodes every entry of its index and a
        receiver every version of its write-ahead intent. `vectors` (one per batch)
        encodes each distinct vector once."""
        vv = self.vv
        if vectors is None:
            vv_json = vv.wire_json()
        else:
            found = vectors.get(vv)
            vv_json = vectors[vv] = found if found is not None else vv.wire_json()
        return (f'{{"p":{json_str(self.path)},"k":{json_str(self.kind.value)},'
                f'"s":{self.size:d},"m":{self.mtime_ns:d},"x":{self.mode:d},'
                f'"h":{json_str(self.hash)},"d":{"true" if self.deleted else "false"},'
                f'"v":{vv_json},"c":{self.hlc:d},"o":{json_str(self.origin)},'
                f'"t":{json_str(self.target)}}}')

    @classmethod
    def from_wire(cls, d: Any, shared: dict[Any, Any] | None = None) -> FileVersion:
        """Build from an untrusted peer's dict; raises ValueError on any malformed field.
        `shared` (one per batch) gives equal vectors and origins one object: most of a
        batch's entries share a few of each."""
        if not isinstance(d, dict):
            raise ValueError("file entry is not an object")
        path, kind, size, mtime, mode = d.get("p"), d.get("k"), d.get("s"), d.get("m"), d.get("x")
        hsh, deleted, hlc = d.get("h"), d.get("d"), d.get("c")
        origin, target = d.get("o"), d.get("t")
        if not isinstance(path, str) or not path:
            raise ValueError("bad path")
        if kind not in ("file", "symlink"):
            raise ValueError(f"bad kind for {path!r}")
        for name, val in (("size", size), ("mtime", mtime), ("mode", mode), ("hlc", hlc)):
            if not isinstance(val, int) or isinstance(val, bool) or not 0 <= val < 2**63:
                raise ValueError(f"bad {name} for {path!r}")
        if not isinstance(hsh, str) or len(hsh) > 64:
            raise ValueError(f"bad hash for {path!r}")
        if not isinstance(deleted, bool):
            raise ValueError(f"bad deleted flag for {path!r}")
        if not isinstance(origin, str) or not origin or len(origin) > 255:
            raise ValueError(f"bad origin for {path!r}")
        if not isinstance(target, str) or len(target) > 4096:
            raise ValueError(f"bad symlink target for {path!r}")
        assert isinstance(mode, int) and isinstance(size, int)
        assert isinstance(mtime, int) and isinstance(hlc, int)
        vv = VersionVector.from_wire(d.get("v"))
        if shared is not None:
            vv = shared.setdefault(vv, vv)
            origin = shared.setdefault(origin, origin)
        return cls(
            path=path,
            kind=Kind(kind),
            size=size,
            mtime_ns=mtime,
            mode=mode & 0o7777,
            hash=hsh,
            deleted=deleted,
            vv=vv,
            hlc=hlc,
            origin=origin,
            target=target,
        )


class ActionKind(enum.StrEnum):
    KEEP = "keep"  # local record stands; nothing to do
    RECORD = "record"  # store a new record; the bytes on disk already match it
    FETCH = "fetch"  # fetch the remote content and write it into place
    DELETE = "delete"  # remove the local file


@dataclass(frozen=True, slots=True)
class Action:
    """What reconcile.decide wants done for one path.

    `result` is the record to store once done (None for KEEP). `archive_local` asks for
    the current local content to go to the conflict archive first: it lost a conflict.
    `conflict` marks that the two versions were concurrent and different.
    """

    kind: ActionKind
    result: FileVersion | None = None
    archive_local: bool = False
    conflict: bool = False
