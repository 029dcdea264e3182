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


_KIND_OF = {k.value: k for k in Kind}


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
        if type(d) is not dict:  # exact types throughout: JSON gives no subclasses
            raise ValueError("file entry is not an object")
        get = d.get
        path, kind, size, mtime, mode = get("p"), get("k"), get("s"), get("m"), get("x")
        hsh, deleted, hlc, origin, target = get("h"), get("d"), get("c"), get("o"), get("t")
        if type(path) is not str or not path:
            raise ValueError("bad path")
        kind_ = _KIND_OF.get(kind) if type(kind) is str else None
        if kind_ is None:
            raise ValueError(f"bad kind for {path!r}")
        if type(size) is not int or not 0 <= size < 2**63:
            raise ValueError(f"bad size for {path!r}")
        if type(mtime) is not int or not 0 <= mtime < 2**63:
            raise ValueError(f"bad mtime for {path!r}")
        if type(mode) is not int or not 0 <= mode < 2**63:
            raise ValueError(f"bad mode for {path!r}")
        if type(hlc) is not int or not 0 <= hlc < 2**63:
            raise ValueError(f"bad hlc for {path!r}")
        if type(hsh) is not str or len(hsh) > 64:
            raise ValueError(f"bad hash for {path!r}")
        if type(deleted) is not bool:
            raise ValueError(f"bad deleted flag for {path!r}")
        if type(origin) is not str or not origin or len(origin) > 255:
            raise ValueError(f"bad origin for {path!r}")
        if type(target) is not str or len(target) > 4096:
            raise ValueError(f"bad symlink target for {path!r}")
        vv = VersionVector.from_wire(get("v"))
        if shared is not None:
            vv = shared.setdefault(vv, vv)
            origin = shared.setdefault(origin, origin)
        return cls(path, kind_, size, mtime, mode & 0o7777, hsh, deleted, vv, hlc, origin,
                   target)


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
