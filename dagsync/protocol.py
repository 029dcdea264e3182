"""The peer protocol as a sans-I/O session: bytes in, messages out, and back.

Wire format: every frame is `u32 length | u8 type | body` (length counts type + body).
Control messages carry a JSON object; a Response carries `u32 request id | u8 status |
raw bytes`, so file content is never JSON-encoded. The first frame each way must be a
Hello. Anything malformed, oversize, unknown or out of order raises ProtocolError, and
the caller closes that one connection. Model: h11's Connection.

Optional abilities are announced in the Hello's `features` (older nodes ignore the
field and announce none), and a node sends a message of a feature only to a peer that
announced it: "delta" is SignatureRequest/SignatureReply and RangeRequest (delta.py).
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from typing import Any

from dagsync import delta
from dagsync.clock import VersionVector
from dagsync.errors import ProtocolError
from dagsync.model import FileVersion

PROTOCOL_VERSION = 1
MAX_FRAME = 8 * 1024 * 1024  # largest frame accepted (block + header)
MAX_JSON = 4 * 1024 * 1024  # largest control message
_compact_json = json.JSONEncoder(separators=(",", ":")).encode  # json.dumps builds one a call
BLOCK_SIZE = 4 * 1024 * 1024  # largest content slice one Request may ask for
MAX_INDEX_ENTRIES = 2000  # entries per Index message
MAX_NAME = 255
MAX_BATCH_FILES = 256  # files per BatchRequest
MAX_RANGES = MAX_BATCH_FILES  # ranges per RangeRequest (answered by a BatchResponse)
MAX_SIGNATURE_CHUNKS = 1 << 18  # chunks per SignatureReply: at most 3 MiB
MAX_FEATURES = 32
FEATURE_DELTA = "delta"
FEATURES: tuple[str, ...] = (FEATURE_DELTA,)  # what this node's Hello announces

_HEADER = struct.Struct(">IB")
_RESPONSE_HEAD = struct.Struct(">IB")
_BATCH_HEAD = struct.Struct(">II")
_BATCH_ITEM = struct.Struct(">BI")
_SIG_HEAD = struct.Struct(">IBI")  # request id, status, chunk target
_SIG_ENTRY = struct.Struct(">IQ")  # chunk length, xxh3-64 of the chunk
assert _SIG_ENTRY.size == delta.SIGNATURE_ENTRY


@dataclass(frozen=True, slots=True)
class FolderOffer:
    """One folder in a Hello: our index id and length, and how much of yours we hold."""

    index_id: int
    max_seq: int
    have_index_id: int = 0  # your index id we last processed
    have_seq: int = 0  # your highest sequence number we fully processed


@dataclass(frozen=True, slots=True)
class Hello:
    node: str
    folders: dict[str, FolderOffer]
    hlc: int
    wall_ms: int
    protocol: int = PROTOCOL_VERSION
    software: str = ""
    features: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Index:
    """A batch of records of the sender's index, in sequence order.

    The entries are the sender's records with sequence numbers in (`from_seq`,
    `last_seq`]; `caught_up` says the sender had nothing newer when it sent this batch.
    A receiver counts its progress only over contiguous batches.
    """

    folder: str
    index_id: int
    entries: tuple[FileVersion, ...]
    last_seq: int
    caught_up: bool
    from_seq: int = 0

    @property
    def count(self) -> int:
        return len(self.entries)

    def decode(self) -> Index:
        return self


@dataclass(frozen=True, slots=True)
class IndexFrame:
    """An Index as a Session receives it: the header checked, the entries still encoded.

    A receiver may hold many batches before it applies them (an initial sync arrives
    as a stream of them); as decoded entries they would be tens of thousands of small
    objects alive at once, whose short lives leave the allocator's arenas fragmented
    for good. As one bytes object each, they cost their size and go back whole.
    The Session checked the framing, the JSON and the header; `decode()` checks each
    entry (ProtocolError for a batch with a bad one, before any of it is applied).
    """

    folder: str
    index_id: int
    last_seq: int
    caught_up: bool
    from_seq: int
    count: int
    body: bytes

    def decode(self) -> Index:
        index = _decode_json(Index, _index_object(self.body))
        assert isinstance(index, Index)
        return index


class IndexBuilder:
    """An Index encoded entry by entry, for a sender.

    Encoding a whole batch at once holds all of its versions, their wire dicts and the
    JSON encoder's pieces alive together (~100,000 small objects per 2,000 entries, per
    peer); built one entry at a time, each entry's objects are freed before the next,
    and the body is one growing buffer. The entries come first in the body because the
    header (`last_seq`, `caught_up`) is known only once they are all in. `full` says
    when the batch holds `limit` entries (at most MAX_INDEX_ENTRIES) or one more could
    take the body past MAX_JSON."""

    # More than the largest entry and the header: a path and a target of 4,096 characters
    # each, every one escaped as \uXXXX (6 bytes), ~49 KB.
    _ROOM = 64 * 1024

    def __init__(self, limit: int | None = None) -> None:
        self._buf = bytearray(b'{"entries":[')
        self.count = 0
        self.limit = MAX_INDEX_ENTRIES if limit is None else min(limit, MAX_INDEX_ENTRIES)
        self._vectors: dict[VersionVector, str] = {}  # a batch's entries share a few

    @property
    def full(self) -> bool:
        return self.count >= self.limit or len(self._buf) > MAX_JSON - self._ROOM

    def add(self, version: FileVersion) -> None:
        if self.count:
            self._buf += b","
        self._buf += version.wire_json(self._vectors).encode("ascii")
        self.count += 1

    def frame(self, folder: str, index_id: int, last_seq: int, caught_up: bool,
              from_seq: int) -> IndexFrame:
        head = _compact_json(_index_head(folder, index_id, last_seq, from_seq,
                                         caught_up)).encode()
        body = bytes(self._buf) + b"]," + head[1:]
        return IndexFrame(folder=folder, index_id=index_id, last_seq=last_seq,
                          caught_up=caught_up, from_seq=from_seq, count=self.count, body=body)


@dataclass(frozen=True, slots=True)
class Request:
    id: int
    folder: str
    path: str
    hash: str
    offset: int
    size: int


class Status:
    OK = 0
    NO_SUCH_FILE = 1
    CHANGED = 2  # the file no longer has the requested hash
    REFUSED = 3
    ERROR = 4


@dataclass(frozen=True, slots=True)
class Response:
    id: int
    status: int
    data: bytes = b""


@dataclass(frozen=True, slots=True)
class BatchRequest:
    """Whole small files in one round trip: (path, hash) pairs, at most MAX_BATCH_FILES
    files and BLOCK_SIZE bytes in all."""

    id: int
    folder: str
    items: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class BatchResponse:
    """One (status, data) per requested item, in order."""

    id: int
    items: tuple[tuple[int, bytes], ...]


@dataclass(frozen=True, slots=True)
class SignatureRequest:
    """Feature "delta": the chunk signature of `path`, which must have content `hash`."""

    id: int
    folder: str
    path: str
    hash: str


@dataclass(frozen=True, slots=True)
class SignatureReply:
    """The chunks of the requested version (status OK), cut with `target` (delta.py);
    no chunks otherwise. Binary: `u32 id | u8 status | u32 target | (u32 length | u64
    hash) per chunk`, at most MAX_SIGNATURE_CHUNKS chunks."""

    id: int
    status: int
    target: int = 0
    chunks: tuple[tuple[int, int], ...] = ()


@dataclass(frozen=True, slots=True)
class RangeRequest:
    """Feature "delta": byte ranges (offset, size) of `path` at content `hash`, answered
    by a BatchResponse with one item per range; at most MAX_RANGES ranges and BLOCK_SIZE
    bytes in all."""

    id: int
    folder: str
    path: str
    hash: str
    ranges: tuple[tuple[int, int], ...]


@dataclass(frozen=True, slots=True)
class Ack:
    """The receiver has processed the sender's index up to `seq`."""

    folder: str
    index_id: int
    seq: int


@dataclass(frozen=True, slots=True)
class Resend:
    """Please send your index again from `from_seq` (after a failed fetch)."""

    folder: str
    from_seq: int


@dataclass(frozen=True, slots=True)
class Ping:
    nonce: int


@dataclass(frozen=True, slots=True)
class Pong:
    nonce: int


@dataclass(frozen=True, slots=True)
class DigestRequest:
    nonce: int
    paths: bool = False  # also list every live path with its content hash


@dataclass(frozen=True, slots=True)
class DigestReply:
    nonce: int
    digests: dict[str, str] = field(default_factory=dict)  # folder id -> digest
    files: dict[str, dict[str, str]] | None = None  # folder id -> {path: hash}


@dataclass(frozen=True, slots=True)
class Close:
    reason: str


# Close reasons by which one of two crossed connections between a pair of nodes gives way
# to the other (both sides keep the one the smaller node name opened).
CLOSE_DUPLICATE = "duplicate connection"
CLOSE_REPLACED = "replaced by a preferred connection"
SUPERSEDED_REASONS = frozenset({CLOSE_DUPLICATE, CLOSE_REPLACED})
# A one-shot peer's Close once it holds all we have and we acked all it has: it vouches
# for its half of the round (our own later sequence numbers are its versions, not news).
CLOSE_ROUND_COMPLETE = "round complete"


Message = (
    Hello | Index | IndexFrame | Request | Response | Ack | Resend | Ping | Pong | DigestRequest
    | DigestReply | Close | BatchRequest | BatchResponse | SignatureRequest | SignatureReply
    | RangeRequest
)

# Type codes are part of the wire format: never renumber.
_CODES: dict[type, int] = {
    Hello: 1, Index: 2, Request: 3, Response: 4, Ack: 5, Resend: 6, Ping: 7, Pong: 8,
    DigestRequest: 9, DigestReply: 10, Close: 11, BatchRequest: 12, BatchResponse: 13,
    SignatureRequest: 14, SignatureReply: 15, RangeRequest: 16,
}
_TYPES = {code: cls for cls, code in _CODES.items()}


def _int(d: dict[str, Any], key: str, lo: int = 0, hi: int = 2**63 - 1) -> int:
    v = d.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ProtocolError(f"field {key!r} must be an integer in [{lo}, {hi}]")
    return v


def _str(d: dict[str, Any], key: str, max_len: int = MAX_NAME, allow_empty: bool = False) -> str:
    v = d.get(key)
    if not isinstance(v, str) or len(v) > max_len or (not v and not allow_empty):
        raise ProtocolError(f"field {key!r} must be a string of at most {max_len} characters")
    return v


def _encode_json(msg: Message) -> dict[str, Any]:
    if isinstance(msg, Hello):
        return {
            "protocol": msg.protocol, "node": msg.node, "hlc": msg.hlc, "wall_ms": msg.wall_ms,
            "software": msg.software, "features": list(msg.features),
            "folders": {
                fid: [o.index_id, o.max_seq, o.have_index_id, o.have_seq]
                for fid, o in msg.folders.items()
            },
        }
    if isinstance(msg, Index):
        return {**_index_head(msg.folder, msg.index_id, msg.last_seq, msg.from_seq,
                              msg.caught_up),
                "entries": [e.to_wire() for e in msg.entries]}
    if isinstance(msg, Request):
        return {
            "id": msg.id, "folder": msg.folder, "path": msg.path, "hash": msg.hash,
            "offset": msg.offset, "size": msg.size,
        }
    if isinstance(msg, Ack):
        return {"folder": msg.folder, "index_id": msg.index_id, "seq": msg.seq}
    if isinstance(msg, SignatureRequest):
        return {"id": msg.id, "folder": msg.folder, "path": msg.path, "hash": msg.hash}
    if isinstance(msg, RangeRequest):
        return {"id": msg.id, "folder": msg.folder, "path": msg.path, "hash": msg.hash,
                "ranges": [list(r) for r in msg.ranges]}
    if isinstance(msg, BatchRequest):
        return {"id": msg.id, "folder": msg.folder, "items": [list(i) for i in msg.items]}
    if isinstance(msg, Resend):
        return {"folder": msg.folder, "from_seq": msg.from_seq}
    if isinstance(msg, DigestRequest):
        return {"nonce": msg.nonce, "paths": msg.paths}
    if isinstance(msg, Ping | Pong):
        return {"nonce": msg.nonce}
    if isinstance(msg, DigestReply):
        out: dict[str, Any] = {"nonce": msg.nonce, "digests": msg.digests}
        if msg.files is not None:
            out["files"] = msg.files
        return out
    if isinstance(msg, Close):
        return {"reason": msg.reason}
    raise TypeError(f"not a JSON message: {msg!r}")


def _index_head(folder: str, index_id: int, last_seq: int, from_seq: int,
                caught_up: bool) -> dict[str, Any]:
    """An Index's fields besides its entries, as sent (whole or by IndexBuilder)."""
    return {"folder": folder, "index_id": index_id, "last_seq": last_seq,
            "from_seq": from_seq, "caught_up": caught_up}


def _index_header(d: dict[str, Any], body: bytes = b"") -> IndexFrame:
    """An Index's header fields, checked; `body` is kept as the frame's entries."""
    raw = d.get("entries")
    if not isinstance(raw, list) or len(raw) > MAX_INDEX_ENTRIES:
        raise ProtocolError(_TOO_MANY)
    caught_up = d.get("caught_up")
    if not isinstance(caught_up, bool):
        raise ProtocolError("index: caught_up must be a boolean")
    last_seq = _int(d, "last_seq")
    from_seq = _int(d, "from_seq") if "from_seq" in d else 0
    if from_seq > last_seq:
        raise ProtocolError("index: from_seq is after last_seq")
    return IndexFrame(folder=_str(d, "folder"), index_id=_int(d, "index_id"),
                      last_seq=last_seq, caught_up=caught_up, from_seq=from_seq,
                      count=len(raw), body=body)


def _index_entries(d: dict[str, Any]) -> tuple[FileVersion, ...]:
    """An Index's entries (after _index_header checked they are a list), each checked.
    `_index_object` already turned the well-formed ones into versions."""
    entries = d["entries"]
    for i, e in enumerate(entries):
        if isinstance(e, FileVersion):
            continue
        if isinstance(e, _BadEntry):
            raise ProtocolError(f"index: {e.reason}")
        try:  # not seen by the hook as an entry (a list, a number, or an object that
            entries[i] = FileVersion.from_wire(e)  # also has a key "entries")
        except ValueError as exc:
            raise ProtocolError(f"index: {exc}") from None
    return tuple(entries)


class _BadEntry:
    """An index entry that failed its check inside json.loads, with the reason: an
    object_hook that raised would turn into 'not valid JSON'."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class _EntryReader:
    """json object_hook for an Index body (called for every object, innermost first):
    each entry becomes a FileVersion as soon as it is parsed, so a batch never holds
    its 2,000 entry dicts at once (~1.5 MB of small objects), and the batch's equal
    vectors and origins are one object each. The header, the object with "entries",
    stays a dict."""

    def __init__(self, build: bool = True) -> None:
        self.shared: dict[Any, Any] = {}
        self.left = MAX_INDEX_ENTRIES  # objects past it: a hostile batch, parsed no further
        self.build = build  # False: entries are counted and dropped (an arrival check)

    def __call__(self, d: dict[str, Any]) -> Any:
        if "entries" in d:
            return d
        self.left -= 1
        if self.left < 0:
            raise _TooManyEntries
        if not self.build:
            return None
        try:
            return FileVersion.from_wire(d, self.shared)
        except ValueError as exc:
            return _BadEntry(str(exc))


class _TooManyEntries(Exception):
    """Raised out of json.loads by _EntryReader (not a ValueError: that would read as
    invalid JSON)."""


_TOO_MANY = f"index: entries must be a list of at most {MAX_INDEX_ENTRIES}"


def _index_object(body: bytes, build: bool = True) -> dict[str, Any]:
    """An Index body parsed with its entries as versions (see _EntryReader), or without
    `build` as None each: the header alone, at a fifth of the cost."""
    if len(body) > MAX_JSON:
        raise ProtocolError(f"control message of {len(body)} bytes exceeds {MAX_JSON}")
    try:
        d = json.loads(body, object_hook=_EntryReader(build))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError("Index: body is not valid JSON") from None
    except _TooManyEntries:
        raise ProtocolError(_TOO_MANY) from None
    if isinstance(d, dict):
        return d
    return _json_object(Index, body)  # a hostile body: parsed plainly, for the same errors


def _decode_json(cls: type, d: dict[str, Any]) -> Message:
    if cls is Hello:
        folders_raw = d.get("folders")
        if not isinstance(folders_raw, dict) or len(folders_raw) > 1024:
            raise ProtocolError("hello: folders must be an object")
        folders: dict[str, FolderOffer] = {}
        for fid, offer in folders_raw.items():
            if not isinstance(offer, list) or len(offer) != 4 or len(fid) > MAX_NAME:
                raise ProtocolError("hello: bad folder offer")
            vals = dict(zip(("a", "b", "c", "d"), offer, strict=True))
            folders[fid] = FolderOffer(*(_int(vals, k) for k in "abcd"))
        features = d.get("features", [])
        if not isinstance(features, list) or len(features) > MAX_FEATURES or not all(
            isinstance(f, str) and 0 < len(f) <= 32 for f in features
        ):
            raise ProtocolError(f"hello: features must be a list of at most {MAX_FEATURES} "
                                "short strings")
        return Hello(
            node=_str(d, "node"), folders=folders, hlc=_int(d, "hlc"),
            wall_ms=_int(d, "wall_ms"), protocol=_int(d, "protocol", 0, 65535),
            software=_str(d, "software", 200, allow_empty=True), features=tuple(features),
        )
    if cls is Index:
        head = _index_header(d)
        return Index(head.folder, head.index_id, _index_entries(d), head.last_seq,
                     head.caught_up, head.from_seq)
    if cls is Request:
        return Request(
            id=_int(d, "id", 0, 2**32 - 1), folder=_str(d, "folder"),
            path=_str(d, "path", 4096), hash=_str(d, "hash", 64, allow_empty=True),
            offset=_int(d, "offset"), size=_int(d, "size", 0, BLOCK_SIZE),
        )
    if cls is Ack:
        return Ack(folder=_str(d, "folder"), index_id=_int(d, "index_id"), seq=_int(d, "seq"))
    if cls is SignatureRequest:
        return SignatureRequest(
            id=_int(d, "id", 0, 2**32 - 1), folder=_str(d, "folder"),
            path=_str(d, "path", 4096), hash=_str(d, "hash", 64),
        )
    if cls is RangeRequest:
        return _decode_range_request(d)
    if cls is BatchRequest:
        raw = d.get("items")
        if not isinstance(raw, list) or not 0 < len(raw) <= MAX_BATCH_FILES or not all(
            isinstance(i, list) and len(i) == 2 and isinstance(i[0], str)
            and isinstance(i[1], str) and len(i[0]) <= 4096 and len(i[1]) <= 64 for i in raw
        ):
            raise ProtocolError(f"batch request: items must be 1..{MAX_BATCH_FILES} "
                                "[path, hash] pairs")
        return BatchRequest(id=_int(d, "id", 0, 2**32 - 1), folder=_str(d, "folder"),
                            items=tuple((i[0], i[1]) for i in raw))
    if cls is Resend:
        return Resend(folder=_str(d, "folder"), from_seq=_int(d, "from_seq"))
    if cls is DigestRequest:
        paths = d.get("paths", False)
        if not isinstance(paths, bool):
            raise ProtocolError("digest request: paths must be a boolean")
        return DigestRequest(nonce=_int(d, "nonce"), paths=paths)
    if cls in (Ping, Pong):
        return cls(nonce=_int(d, "nonce"))  # type: ignore[no-any-return,unused-ignore]
    if cls is DigestReply:
        digests = d.get("digests")
        if not isinstance(digests, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and len(v) <= 128 for k, v in digests.items()
        ):
            raise ProtocolError("digest reply: digests must map folder ids to strings")
        files = d.get("files")
        if files is not None and not (
            isinstance(files, dict)
            and all(isinstance(k, str) and isinstance(v, dict) for k, v in files.items())
            and all(isinstance(p, str) and isinstance(h, str)
                    for v in files.values() for p, h in v.items())
        ):
            raise ProtocolError("digest reply: files must map folder ids to {path: hash}")
        return DigestReply(nonce=_int(d, "nonce"), digests=digests, files=files)
    if cls is Close:
        return Close(reason=_str(d, "reason", 1000, allow_empty=True))
    raise ProtocolError(f"unexpected message type {cls.__name__}")


def _decode_range_request(d: dict[str, Any]) -> RangeRequest:
    raw = d.get("ranges")
    if not isinstance(raw, list) or not 0 < len(raw) <= MAX_RANGES:
        raise ProtocolError(f"range request: ranges must be a list of 1..{MAX_RANGES}")
    ranges = []
    for r in raw:
        if not isinstance(r, list) or len(r) != 2:
            raise ProtocolError("range request: a range is [offset, size]")
        vals = {"offset": r[0], "size": r[1]}
        ranges.append((_int(vals, "offset"), _int(vals, "size", 1, BLOCK_SIZE)))
    if sum(size for _, size in ranges) > BLOCK_SIZE:
        raise ProtocolError(f"range request: more than {BLOCK_SIZE} bytes in all")
    return RangeRequest(
        id=_int(d, "id", 0, 2**32 - 1), folder=_str(d, "folder"),
        path=_str(d, "path", 4096), hash=_str(d, "hash", 64), ranges=tuple(ranges),
    )


def encode(msg: Message) -> bytes:
    """One message as one frame."""
    if isinstance(msg, IndexFrame):  # as it was received
        return _HEADER.pack(len(msg.body) + 1, _CODES[Index]) + msg.body
    code = _CODES[type(msg)]
    if isinstance(msg, Response | BatchResponse):  # content: copied once, into the frame
        return _content_frame(msg, code)
    if isinstance(msg, SignatureReply):
        if len(msg.chunks) > MAX_SIGNATURE_CHUNKS:
            raise ValueError(f"signature of {len(msg.chunks)} chunks exceeds "
                             f"{MAX_SIGNATURE_CHUNKS}")
        body = _SIG_HEAD.pack(msg.id, msg.status, msg.target) + b"".join(
            _SIG_ENTRY.pack(length, h) for length, h in msg.chunks)
    else:
        body = _compact_json(_encode_json(msg)).encode()
        if len(body) > MAX_JSON:
            raise ValueError(f"{type(msg).__name__} too large ({len(body)} bytes)")
    if len(body) + 1 > MAX_FRAME:
        raise ValueError(f"frame too large ({len(body)} bytes)")
    return _HEADER.pack(len(body) + 1, code) + body


def _content_frame(msg: Response | BatchResponse, code: int) -> bytes:
    if isinstance(msg, Response):
        parts = [_RESPONSE_HEAD.pack(msg.id, msg.status), msg.data]
    else:
        parts = [_BATCH_HEAD.pack(msg.id, len(msg.items))]
        parts += [_BATCH_ITEM.pack(status, len(data)) for status, data in msg.items]
        parts += [data for _, data in msg.items]
    size = sum(map(len, parts))
    if size + 1 > MAX_FRAME:
        raise ValueError(f"frame too large ({size} bytes)")
    return b"".join([_HEADER.pack(size + 1, code), *parts])


def _decode_batch_response(body: bytes | memoryview) -> BatchResponse:
    if len(body) < _BATCH_HEAD.size:
        raise ProtocolError("batch response too short")
    req_id, count = _BATCH_HEAD.unpack_from(body)
    data_at = _BATCH_HEAD.size + count * _BATCH_ITEM.size
    if count > MAX_BATCH_FILES or data_at > len(body):
        raise ProtocolError("batch response: bad item count")
    items = []
    offset = data_at
    for i in range(count):
        status, length = _BATCH_ITEM.unpack_from(body, _BATCH_HEAD.size + i * _BATCH_ITEM.size)
        if offset + length > len(body):
            raise ProtocolError("batch response: item overruns the frame")
        items.append((status, bytes(body[offset : offset + length])))
        offset += length
    if offset != len(body):
        raise ProtocolError("batch response: trailing bytes")
    return BatchResponse(id=req_id, items=tuple(items))


def _decode_signature_reply(body: bytes) -> SignatureReply:
    if len(body) < _SIG_HEAD.size or (len(body) - _SIG_HEAD.size) % _SIG_ENTRY.size:
        raise ProtocolError("signature reply: bad length")
    req_id, status, target = _SIG_HEAD.unpack_from(body)
    count = (len(body) - _SIG_HEAD.size) // _SIG_ENTRY.size
    if count > MAX_SIGNATURE_CHUNKS:
        raise ProtocolError(f"signature reply: more than {MAX_SIGNATURE_CHUNKS} chunks")
    if status != Status.OK:
        if count:
            raise ProtocolError("signature reply: chunks with a failure status")
        return SignatureReply(id=req_id, status=status, target=target)
    if not delta.valid_target(target):
        raise ProtocolError(f"signature reply: bad chunk target {target}")
    chunks = tuple(_SIG_ENTRY.iter_unpack(memoryview(body)[_SIG_HEAD.size :]))
    longest = delta.max_chunk(target)
    if not all(0 < length <= longest for length, _ in chunks):
        raise ProtocolError("signature reply: chunk length out of range")
    return SignatureReply(id=req_id, status=status, target=target, chunks=chunks)


def decode_body(code: int, body: bytes | memoryview) -> Message:
    """One frame's body as a message; ProtocolError on anything malformed. Contents are
    copied out of `body`: the message never refers to the buffer it came from."""
    cls = _TYPES.get(code)
    if cls is None:
        raise ProtocolError(f"unknown message type {code}")
    if cls is BatchResponse:
        return _decode_batch_response(body)
    if cls is Response:
        if len(body) < _RESPONSE_HEAD.size:
            raise ProtocolError("response frame too short")
        req_id, status = _RESPONSE_HEAD.unpack_from(body)
        return Response(id=req_id, status=status, data=bytes(body[_RESPONSE_HEAD.size :]))
    body = bytes(body)
    if cls is SignatureReply:
        return _decode_signature_reply(body)
    if cls is Index:
        # The framing, the JSON and the header are checked here; the entries when the
        # batch is decoded to be applied (IndexFrame.decode). Checking and building
        # them here too cost ~10 ms per 2,000 entries of the event loop, and holding
        # them as objects until applied would fragment the allocator (IndexFrame).
        return _index_header(_index_object(body, build=False), body)
    return _decode_json(cls, _json_object(cls, body))


def _json_object(cls: type, body: bytes) -> dict[str, Any]:
    if len(body) > MAX_JSON:
        raise ProtocolError(f"control message of {len(body)} bytes exceeds {MAX_JSON}")
    try:
        d = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ProtocolError(f"{cls.__name__}: body is not valid JSON") from None
    if not isinstance(d, dict):
        raise ProtocolError(f"{cls.__name__}: body is not a JSON object")
    return d


class Session:
    """Framing and ordering rules for one connection, with no I/O.

    Feed received bytes to `receive_data`; it returns complete messages. Call `send`
    to turn a message into bytes for the transport. The peer's first message must be
    a Hello with our protocol version, and ours must be too.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buf = bytearray()
        self.peer_hello: Hello | None = None
        self.sent_hello = False
        self.closed = False

    def send(self, msg: Message) -> bytes:
        if self.closed:
            raise ProtocolError("session is closed")
        if not self.sent_hello and not isinstance(msg, Hello | Close):
            raise ProtocolError("the first message sent must be a Hello")
        if isinstance(msg, Hello):
            self.sent_hello = True
        return encode(msg)

    def receive_data(self, data: bytes) -> list[Message]:
        if self.closed:
            raise ProtocolError("session is closed")
        self._buf += data
        out: list[Message] = []
        while len(self._buf) >= _HEADER.size:
            length, code = _HEADER.unpack_from(self._buf)
            if length < 1 or length > self.max_frame:
                self.closed = True
                raise ProtocolError(f"frame length {length} outside 1..{self.max_frame}")
            if len(self._buf) < 4 + length:
                break
            try:
                # Decoded straight from the buffer: file contents are copied once, into
                # their own bytes, not first into a frame copy (tens of MB in a sync).
                with memoryview(self._buf) as view:
                    msg = decode_body(code, view[_HEADER.size : 4 + length])
                self._check_order(msg)
            except ProtocolError:
                self.closed = True
                raise
            del self._buf[: 4 + length]
            out.append(msg)
            if isinstance(msg, Close):
                self.closed = True
                break
        return out

    def _check_order(self, msg: Message) -> None:
        if self.peer_hello is None:
            if isinstance(msg, Close):
                return
            if not isinstance(msg, Hello):
                got = "Index" if isinstance(msg, IndexFrame) else type(msg).__name__
                raise ProtocolError(f"expected Hello first, got {got}")
            if msg.protocol != PROTOCOL_VERSION:
                raise ProtocolError(
                    f"peer speaks protocol {msg.protocol}, this node speaks {PROTOCOL_VERSION}"
                )
            self.peer_hello = msg
        elif isinstance(msg, Hello):
            raise ProtocolError("second Hello on one connection")
