"""The peer protocol (sans-I/O): framing round-trips, handshake order, and hostile input.

SPEC guarantee 8: malformed or hostile frames close that one connection, which means
the session raises ProtocolError and nothing else, whatever bytes arrive.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagsync import protocol as p
from dagsync.clock import VersionVector
from dagsync.errors import ProtocolError
from dagsync.model import FileVersion, Kind

INT64 = 2**63 - 1
U32 = 2**32 - 1

HELLO = p.Hello(
    node="master1",
    folders={"dags": p.FolderOffer(index_id=7, max_seq=42, have_index_id=3, have_seq=40)},
    hlc=123_456,
    wall_ms=1_700_000_000_000,
    software="dagsync test",
    features=p.FEATURES,
)


def frame(code: int, body: bytes) -> bytes:
    return struct.pack(">IB", len(body) + 1, code) + body


def json_frame(code: int, obj: Any) -> bytes:
    return frame(code, json.dumps(obj).encode())


def decoded(msg: p.Message) -> p.Message:
    """A received Index arrives as an IndexFrame (entries still encoded): decode it."""
    return msg.decode() if isinstance(msg, p.IndexFrame) else msg


def decode_frame(data: bytes) -> p.Message:
    length, code = struct.unpack_from(">IB", data)
    assert length == len(data) - 4
    return decoded(p.decode_body(code, data[5:]))


def greeted() -> p.Session:
    """A session whose peer has said a valid Hello."""
    s = p.Session()
    assert s.receive_data(p.encode(HELLO)) == [HELLO]
    return s


def version(**kw: Any) -> FileVersion:
    base: dict[str, Any] = dict(
        path="dags/etl.py", kind=Kind.FILE, size=12, mtime_ns=1_700_000_000_000_000_000,
        mode=0o644, hash="0123456789abcdef0123456789abcdef", deleted=False,
        vv=VersionVector.of({"master1": 2, "worker1": 1}), hlc=99, origin="master1",
    )
    base.update(kw)
    return FileVersion(**base)


# --- strategies -----------------------------------------------------------------------

names = st.text(min_size=1, max_size=40)
u63 = st.integers(0, INT64)
file_versions = st.builds(
    FileVersion,
    path=st.text(min_size=1, max_size=80),
    kind=st.sampled_from(Kind),
    size=u63,
    mtime_ns=u63,
    mode=st.integers(0, 0o7777),
    hash=st.text(max_size=64),
    deleted=st.booleans(),
    vv=st.dictionaries(names, st.integers(1, INT64), max_size=5).map(VersionVector.of),
    hlc=u63,
    origin=st.text(min_size=1, max_size=255),
    target=st.text(max_size=200),
)
offers = st.builds(p.FolderOffer, u63, u63, u63, u63)
messages: st.SearchStrategy[p.Message] = st.one_of(
    st.builds(
        p.Hello, node=st.text(min_size=1, max_size=255),
        folders=st.dictionaries(st.text(max_size=255), offers, max_size=4),
        hlc=u63, wall_ms=u63, software=st.text(max_size=200),
        features=st.lists(st.text(min_size=1, max_size=32), max_size=p.MAX_FEATURES).map(tuple),
    ),
    st.builds(
        p.Index, folder=names, index_id=u63,
        entries=st.lists(file_versions, max_size=4).map(tuple), last_seq=u63,
        caught_up=st.booleans(),
    ),
    st.builds(
        p.Request, id=st.integers(0, U32), folder=names, path=st.text(min_size=1, max_size=300),
        hash=st.text(max_size=64), offset=u63, size=st.integers(0, p.BLOCK_SIZE),
    ),
    st.builds(p.Response, id=st.integers(0, U32), status=st.integers(0, 255),
              data=st.binary(max_size=2000)),
    st.builds(p.Ack, folder=names, index_id=u63, seq=u63),
    st.builds(p.Resend, folder=names, from_seq=u63),
    st.builds(p.Ping, nonce=u63),
    st.builds(p.Pong, nonce=u63),
    st.builds(p.DigestRequest, nonce=u63),
    st.builds(p.DigestReply, nonce=u63,
              digests=st.dictionaries(names, st.text(max_size=128), max_size=4)),
    st.builds(p.Close, reason=st.text(max_size=1000)),
    st.builds(p.SignatureRequest, id=st.integers(0, U32), folder=names,
              path=st.text(min_size=1, max_size=300), hash=st.text(min_size=1, max_size=64)),
    st.builds(p.SignatureReply, id=st.integers(0, U32), status=st.integers(1, 255)),
    st.integers(10, 20).flatmap(lambda bits: st.builds(
        p.SignatureReply, id=st.integers(0, U32), status=st.just(p.Status.OK),
        target=st.just(1 << bits),
        chunks=st.lists(st.tuples(st.integers(1, 16 << bits), st.integers(0, 2**64 - 1)),
                        max_size=50).map(tuple))),
    st.builds(p.RangeRequest, id=st.integers(0, U32), folder=names,
              path=st.text(min_size=1, max_size=300), hash=st.text(min_size=1, max_size=64),
              ranges=st.lists(st.tuples(u63, st.integers(1, 4096)), min_size=1,
                              max_size=p.MAX_RANGES).map(tuple)),
)
after_hello = messages.filter(lambda m: not isinstance(m, p.Hello | p.Close))


# --- round trips ----------------------------------------------------------------------

ONE_OF_EACH: list[p.Message] = [
    HELLO,
    p.Index(folder="dags", index_id=7, entries=(version(), version(path="b", deleted=True,
            hash="", size=0), version(path="l", kind=Kind.SYMLINK, target="../x")),
            last_seq=3, caught_up=True),
    p.Index(folder="dags", index_id=7, entries=(), last_seq=0, caught_up=False),
    p.Request(id=U32, folder="dags", path="a/b.py", hash="ab" * 16, offset=0, size=p.BLOCK_SIZE),
    p.Response(id=5, status=p.Status.OK, data=b"\x00\xff print('hi')\n"),
    p.Response(id=6, status=p.Status.CHANGED),
    p.Ack(folder="dags", index_id=7, seq=3),
    p.Resend(folder="dags", from_seq=2),
    p.Ping(nonce=1),
    p.Pong(nonce=1),
    p.DigestRequest(nonce=9),
    p.DigestReply(nonce=9, digests={"dags": "f" * 32, "plugins": ""}),
    p.SignatureRequest(id=8, folder="dags", path="big.py", hash="ab" * 16),
    p.SignatureReply(id=8, status=p.Status.OK, target=4096,
                     chunks=((4000, 2**64 - 1), (1, 0), (16 * 4096, 12345))),
    p.SignatureReply(id=9, status=p.Status.CHANGED),
    p.RangeRequest(id=10, folder="dags", path="big.py", hash="ab" * 16,
                   ranges=((0, 10), (5000, p.BLOCK_SIZE - 10))),
    p.Close(reason="shutting down"),
    p.Close(reason=""),
]


@pytest.mark.parametrize("msg", ONE_OF_EACH, ids=lambda m: type(m).__name__)
def test_every_message_type_round_trips(msg: p.Message) -> None:
    assert decode_frame(p.encode(msg)) == msg


@settings(max_examples=150, deadline=None)
@given(messages)
def test_any_valid_message_round_trips(msg: p.Message) -> None:
    assert decode_frame(p.encode(msg)) == msg


@settings(max_examples=50, deadline=None)
@given(st.lists(file_versions, min_size=1, max_size=5))
def test_index_entries_round_trip_exactly(entries: list[FileVersion]) -> None:
    msg = p.Index(folder="dags", index_id=1, entries=tuple(entries), last_seq=5, caught_up=False)
    got = decode_frame(p.encode(msg))
    assert isinstance(got, p.Index)
    assert got.entries == tuple(entries)


@settings(max_examples=50, deadline=None)
@given(st.lists(file_versions, max_size=5), st.booleans(), st.integers(0, 1000))
def test_an_index_built_entry_by_entry_decodes_as_the_whole_batch_would(
    entries: list[FileVersion], caught_up: bool, from_seq: int
) -> None:
    builder = p.IndexBuilder()
    for e in entries:
        builder.add(e)
    frame_ = builder.frame("dags", 7, from_seq + 5, caught_up, from_seq)
    assert frame_.count == len(entries)
    whole = p.Index("dags", 7, tuple(entries), from_seq + 5, caught_up, from_seq)
    received = greeted().receive_data(p.encode(frame_))
    assert [decoded(m) for m in received] == [whole]
    assert json.loads(frame_.body) == json.loads(p.encode(whole)[5:])


# paths as a disk gives them: quotes, backslashes, control and non-ASCII characters,
# astral ones, and the lone surrogates of undecodable bytes (surrogateescape)
odd_text = st.text(min_size=1, max_size=80) | st.text(
    st.sampled_from('a/."\\\x00\x1f\x7f\u00e9\u20ac\U0001F600\udc80\udcff'), min_size=1,
    max_size=20)


@settings(max_examples=300, deadline=None)
@given(file_versions, odd_text, odd_text, st.integers(-(2**62), INT64))
def test_a_versions_wire_json_is_the_text_json_dumps_gives(
    v: FileVersion, path: str, target: str, mtime_ns: int
) -> None:
    v = dataclasses.replace(v, path=path, target=target, origin=target, mtime_ns=mtime_ns)
    expected = json.dumps(v.to_wire(), separators=(",", ":"))
    vectors: dict[VersionVector, str] = {}
    assert v.wire_json() == expected
    assert v.wire_json(vectors) == expected and v.wire_json(vectors) == expected
    assert vectors == {v.vv: json.dumps(v.vv.to_wire(), separators=(",", ":"))}


def test_an_index_builder_is_full_at_max_entries_or_near_max_json() -> None:
    small = p.IndexBuilder()
    for i in range(p.MAX_INDEX_ENTRIES):
        assert not small.full
        small.add(version(path=f"f{i}"))
    assert small.full
    big = p.IndexBuilder()
    long_path = "d/" + "x" * 4000
    while not big.full:
        big.add(version(path=long_path, target="t" * 4000, kind=Kind.SYMLINK))
    assert big.count < p.MAX_INDEX_ENTRIES
    # The worst case: 4,096 characters of path and target, each escaped to 6 bytes.
    big.add(version(path="d/" + "é" * 4094, target="é" * 4096, kind=Kind.SYMLINK))
    frame_ = big.frame("dags", 1, 10, False, 0)
    assert len(frame_.body) <= p.MAX_JSON  # so the receiver accepts it
    assert len(greeted().receive_data(p.encode(frame_))) == 1


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=10_000), st.integers(0, U32), st.integers(0, 255))
def test_response_carries_arbitrary_bytes_unchanged(data: bytes, rid: int, status: int) -> None:
    encoded = p.encode(p.Response(rid, status, data))
    assert len(encoded) == 4 + 1 + 5 + len(data)  # raw bytes: never JSON-encoded
    assert decode_frame(encoded) == p.Response(rid, status, data)


def test_type_codes_are_stable_wire_format() -> None:
    codes = {type(m): p.encode(m)[4] for m in ONE_OF_EACH}
    assert codes == {
        p.Hello: 1, p.Index: 2, p.Request: 3, p.Response: 4, p.Ack: 5, p.Resend: 6,
        p.Ping: 7, p.Pong: 8, p.DigestRequest: 9, p.DigestReply: 10, p.Close: 11,
        p.SignatureRequest: 14, p.SignatureReply: 15, p.RangeRequest: 16,
    }


def test_mode_bits_beyond_permissions_are_dropped_on_receipt() -> None:
    raw = version().to_wire() | {"x": 0o100755}  # st_mode with the file-type bits
    assert FileVersion.from_wire(raw).mode == 0o755


# --- session: framing -------------------------------------------------------------------

STREAM: list[p.Message] = [HELLO, *ONE_OF_EACH[1:-2]]


def test_session_reassembles_frames_fed_one_byte_at_a_time() -> None:
    wire = b"".join(p.encode(m) for m in STREAM)
    s = p.Session()
    got: list[p.Message] = []
    for i in range(len(wire)):
        got += s.receive_data(wire[i : i + 1])
    assert [decoded(m) for m in got] == STREAM


def test_session_splits_frames_arriving_in_one_chunk() -> None:
    wire = b"".join(p.encode(m) for m in STREAM)
    assert [decoded(m) for m in p.Session().receive_data(wire)] == STREAM


@settings(max_examples=40, deadline=None)
@given(st.lists(after_hello, max_size=6), st.data())
def test_session_reassembles_any_split_of_any_message_stream(
    msgs: list[p.Message], data: st.DataObject
) -> None:
    sender, receiver = p.Session(), p.Session()
    sent = [HELLO, *msgs]
    wire = b"".join(sender.send(m) for m in sent)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=20)))
    got: list[p.Message] = []
    for lo, hi in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        got += receiver.receive_data(wire[lo:hi])
    assert [decoded(m) for m in got] == sent
    assert not receiver.closed


def test_empty_data_is_harmless() -> None:
    s = greeted()
    assert s.receive_data(b"") == []
    assert not s.closed


def test_a_partial_frame_yields_nothing_until_complete() -> None:
    s = greeted()
    wire = p.encode(p.Ping(5))
    assert s.receive_data(wire[:-1]) == []
    assert s.receive_data(wire[-1:]) == [p.Ping(5)]


def test_messages_after_close_are_not_delivered_and_the_session_ends() -> None:
    s = greeted()
    wire = p.encode(p.Ping(1)) + p.encode(p.Close("bye")) + p.encode(p.Ping(2))
    assert s.receive_data(wire) == [p.Ping(1), p.Close("bye")]
    assert s.closed
    with pytest.raises(ProtocolError):
        s.receive_data(p.encode(p.Ping(3)))


# --- session: handshake order ------------------------------------------------------------


def test_first_message_must_be_hello() -> None:
    s = p.Session()
    with pytest.raises(ProtocolError, match="Hello"):
        s.receive_data(p.encode(p.Ping(1)))
    assert s.closed


def test_close_before_hello_is_accepted() -> None:
    """A peer may refuse us (unknown key, wrong version) before saying Hello."""
    s = p.Session()
    assert s.receive_data(p.encode(p.Close("not configured"))) == [p.Close("not configured")]
    assert s.closed


def test_protocol_version_mismatch_is_refused_naming_both_versions() -> None:
    s = p.Session()
    with pytest.raises(ProtocolError, match=r"2.*1"):
        s.receive_data(p.encode(p.Hello(node="future", folders={}, hlc=1, wall_ms=1,
                                        protocol=2)))
    assert s.closed
    assert s.peer_hello is None


def test_second_hello_is_refused() -> None:
    s = greeted()
    with pytest.raises(ProtocolError, match="second Hello"):
        s.receive_data(p.encode(HELLO))
    assert s.closed


def test_peer_hello_is_kept() -> None:
    assert greeted().peer_hello == HELLO


def test_we_must_send_hello_first() -> None:
    s = p.Session()
    with pytest.raises(ProtocolError):
        s.send(p.Ping(1))
    assert s.send(p.Close("refused")) == p.encode(p.Close("refused"))
    s.send(HELLO)
    assert s.send(p.Ping(1)) == p.encode(p.Ping(1))


def test_a_failed_session_refuses_further_input_and_output() -> None:
    s = p.Session()
    with pytest.raises(ProtocolError):
        s.receive_data(p.encode(p.Ping(1)))
    with pytest.raises(ProtocolError):
        s.receive_data(p.encode(HELLO))
    with pytest.raises(ProtocolError):
        s.send(HELLO)


# --- session: frame limits ---------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1025, 2**32 - 1], ids=["zero", "max+1", "u32max"])
def test_bad_frame_length_is_refused_from_the_header_alone(length: int) -> None:
    s = p.Session(max_frame=1024)
    s.receive_data(p.encode(HELLO))
    with pytest.raises(ProtocolError, match="frame length"):
        s.receive_data(struct.pack(">IB", length, 4))  # no body sent at all
    assert s.closed


def test_frame_of_exactly_max_frame_is_accepted() -> None:
    s = p.Session(max_frame=1024)
    s.receive_data(p.encode(HELLO))
    msg = p.Response(1, 0, b"x" * (1024 - 1 - 5))
    assert s.receive_data(p.encode(msg)) == [msg]


def test_default_max_frame_fits_a_full_block_response() -> None:
    s = greeted()
    msg = p.Response(1, 0, b"\x01" * p.BLOCK_SIZE)
    assert s.receive_data(p.encode(msg)) == [msg]


def test_encode_refuses_a_frame_the_peer_would_refuse() -> None:
    with pytest.raises(ValueError):
        p.encode(p.Response(1, 0, b"x" * p.MAX_FRAME))


def test_control_message_over_max_json_is_refused() -> None:
    body = b'{"reason":"' + b"x" * p.MAX_JSON + b'"}'
    s = greeted()
    with pytest.raises(ProtocolError, match="exceeds"):
        s.receive_data(frame(11, body))


@pytest.mark.parametrize("code", [0, 17, 99, 255])
def test_unknown_type_code_is_refused(code: int) -> None:
    s = greeted()
    with pytest.raises(ProtocolError, match="unknown message type"):
        s.receive_data(frame(code, b"{}"))
    assert s.closed


def test_response_shorter_than_its_header_is_refused() -> None:
    s = greeted()
    with pytest.raises(ProtocolError):
        s.receive_data(frame(4, b"\x00\x00\x00"))


# --- malformed bodies ---------------------------------------------------------------------

GOOD_ENTRY = version().to_wire()
GOOD_HELLO = json.loads(p.encode(HELLO)[5:])


def _entry(**kw: Any) -> dict[str, Any]:
    return GOOD_ENTRY | kw


def _index(entries: Any, **kw: Any) -> dict[str, Any]:
    return {"folder": "dags", "index_id": 1, "last_seq": 1, "caught_up": True,
            "entries": entries} | kw


MALFORMED_BODIES: list[tuple[str, int, bytes]] = [
    ("not JSON", 7, b"{nonce: 1}"),
    ("truncated JSON", 7, b'{"nonce": 1'),
    ("not UTF-8", 7, b'{"nonce": 1, "x": "\xff\xfe\xfa"}'),
    ("empty body", 7, b""),
    ("JSON array", 7, b"[1]"),
    ("JSON string", 11, b'"bye"'),
    ("JSON null", 7, b"null"),
    ("JSON number", 7, b"1"),
    ("JSON NaN nonce", 7, b'{"nonce": NaN}'),
    ("huge integer literal", 7, b'{"nonce": ' + b"9" * 5000 + b"}"),
]


def _mal(name: str, code: int, obj: Any) -> tuple[str, int, bytes]:
    return name, code, json.dumps(obj).encode()


MALFORMED_BODIES += [
    _mal("ping without nonce", 7, {}),
    _mal("ping nonce is a bool", 7, {"nonce": True}),
    _mal("ping nonce is a float", 7, {"nonce": 1.0}),
    _mal("ping nonce is a string", 7, {"nonce": "1"}),
    _mal("ping nonce negative", 7, {"nonce": -1}),
    _mal("ping nonce over int64", 7, {"nonce": 2**63}),
    _mal("hello without node", 1, GOOD_HELLO | {"node": None}),
    _mal("hello empty node", 1, GOOD_HELLO | {"node": ""}),
    _mal("hello node too long", 1, GOOD_HELLO | {"node": "n" * 256}),
    _mal("hello hlc is a bool", 1, GOOD_HELLO | {"hlc": False}),
    _mal("hello negative wall clock", 1, GOOD_HELLO | {"wall_ms": -5}),
    _mal("hello protocol is a string", 1, GOOD_HELLO | {"protocol": "1"}),
    _mal("hello software too long", 1, GOOD_HELLO | {"software": "s" * 201}),
    _mal("hello folders a list", 1, GOOD_HELLO | {"folders": []}),
    _mal("hello folder offer short", 1, GOOD_HELLO | {"folders": {"dags": [1, 2, 3]}}),
    _mal("hello folder offer object", 1, GOOD_HELLO | {"folders": {"dags": {"a": 1}}}),
    _mal("hello folder offer bool", 1, GOOD_HELLO | {"folders": {"dags": [1, 2, True, 4]}}),
    _mal("hello folder offer negative", 1, GOOD_HELLO | {"folders": {"dags": [1, -2, 3, 4]}}),
    _mal("hello folder id too long", 1, GOOD_HELLO | {"folders": {"d" * 256: [1, 2, 3, 4]}}),
    _mal("hello too many folders", 1,
         GOOD_HELLO | {"folders": {f"f{i}": [1, 1, 1, 1] for i in range(1025)}}),
    _mal("hello features not a list", 1, GOOD_HELLO | {"features": "delta"}),
    _mal("hello feature not a string", 1, GOOD_HELLO | {"features": [1]}),
    _mal("hello feature empty", 1, GOOD_HELLO | {"features": [""]}),
    _mal("hello feature too long", 1, GOOD_HELLO | {"features": ["f" * 33]}),
    _mal("hello too many features", 1, GOOD_HELLO | {"features": ["f"] * 33}),
    _mal("signature request without hash", 14, {"id": 1, "folder": "d", "path": "a"}),
    _mal("signature request empty hash", 14, {"id": 1, "folder": "d", "path": "a",
                                              "hash": ""}),
    _mal("signature request id over u32", 14, {"id": 2**32, "folder": "d", "path": "a",
                                               "hash": "h"}),
    _mal("signature request path too long", 14, {"id": 1, "folder": "d", "path": "a" * 4097,
                                                  "hash": "h"}),
    _mal("range request without ranges", 16, {"id": 1, "folder": "d", "path": "a",
                                              "hash": "h"}),
    _mal("range request no ranges", 16, {"id": 1, "folder": "d", "path": "a", "hash": "h",
                                         "ranges": []}),
    _mal("range request too many ranges", 16, {"id": 1, "folder": "d", "path": "a",
                                               "hash": "h",
                                               "ranges": [[0, 1]] * (p.MAX_RANGES + 1)}),
    _mal("range request empty range", 16, {"id": 1, "folder": "d", "path": "a", "hash": "h",
                                           "ranges": [[0, 0]]}),
    _mal("range request negative offset", 16, {"id": 1, "folder": "d", "path": "a",
                                               "hash": "h", "ranges": [[-1, 5]]}),
    _mal("range request range over a block", 16, {"id": 1, "folder": "d", "path": "a",
                                                  "hash": "h",
                                                  "ranges": [[0, p.BLOCK_SIZE + 1]]}),
    _mal("range request over a block in all", 16, {"id": 1, "folder": "d", "path": "a",
                                                   "hash": "h", "ranges": [
                                                       [0, p.BLOCK_SIZE], [p.BLOCK_SIZE, 1]]}),
    _mal("range request range not a pair", 16, {"id": 1, "folder": "d", "path": "a",
                                                "hash": "h", "ranges": [[0, 1, 2]]}),
    _mal("range request range an object", 16, {"id": 1, "folder": "d", "path": "a",
                                               "hash": "h", "ranges": [{"o": 0, "s": 1}]}),
    _mal("range request size a bool", 16, {"id": 1, "folder": "d", "path": "a",
                                           "hash": "h", "ranges": [[0, True]]}),
    _mal("request negative size", 3, {"id": 1, "folder": "d", "path": "a", "hash": "",
                                      "offset": 0, "size": -1}),
    _mal("request size over one block", 3, {"id": 1, "folder": "d", "path": "a", "hash": "",
                                            "offset": 0, "size": p.BLOCK_SIZE + 1}),
    _mal("request negative offset", 3, {"id": 1, "folder": "d", "path": "a", "hash": "",
                                        "offset": -1, "size": 1}),
    _mal("request id over u32", 3, {"id": 2**32, "folder": "d", "path": "a", "hash": "",
                                    "offset": 0, "size": 1}),
    _mal("request path too long", 3, {"id": 1, "folder": "d", "path": "a" * 4097, "hash": "",
                                      "offset": 0, "size": 1}),
    _mal("request hash too long", 3, {"id": 1, "folder": "d", "path": "a", "hash": "h" * 65,
                                      "offset": 0, "size": 1}),
    _mal("request empty folder", 3, {"id": 1, "folder": "", "path": "a", "hash": "",
                                     "offset": 0, "size": 1}),
    _mal("ack seq is a bool", 5, {"folder": "d", "index_id": 1, "seq": True}),
    _mal("ack folder a number", 5, {"folder": 3, "index_id": 1, "seq": 1}),
    _mal("resend negative", 6, {"folder": "d", "from_seq": -1}),
    _mal("digest reply digests a list", 10, {"nonce": 1, "digests": ["a"]}),
    _mal("digest reply digest not a string", 10, {"nonce": 1, "digests": {"d": 5}}),
    _mal("digest reply digest too long", 10, {"nonce": 1, "digests": {"d": "f" * 129}}),
    _mal("close reason too long", 11, {"reason": "r" * 1001}),
    _mal("close reason a number", 11, {"reason": 1}),
    _mal("index entries not a list", 2, _index({})),
    _mal("index entries too many", 2, _index([GOOD_ENTRY] * (p.MAX_INDEX_ENTRIES + 1))),
    _mal("index caught_up an int", 2, _index([], caught_up=1)),
    _mal("index last_seq negative", 2, _index([], last_seq=-1)),
    _mal("index entry not an object", 2, _index([["p", "file"]])),
    _mal("index entry empty path", 2, _index([_entry(p="")])),
    _mal("index entry path a number", 2, _index([_entry(p=1)])),
    _mal("index entry unknown kind", 2, _index([_entry(k="dir")])),
    _mal("index entry negative size", 2, _index([_entry(s=-1)])),
    _mal("index entry size a bool", 2, _index([_entry(s=True)])),
    _mal("index entry size a float", 2, _index([_entry(s=12.0)])),
    _mal("index entry negative mtime", 2, _index([_entry(m=-1)])),
    _mal("index entry mode a string", 2, _index([_entry(x="0644")])),
    _mal("index entry hlc missing", 2, _index([_entry(c=None)])),
    _mal("index entry hash too long", 2, _index([_entry(h="0" * 65)])),
    _mal("index entry deleted an int", 2, _index([_entry(d=0)])),
    _mal("index entry empty origin", 2, _index([_entry(o="")])),
    _mal("index entry origin too long", 2, _index([_entry(o="o" * 256)])),
    _mal("index entry target too long", 2, _index([_entry(t="t" * 4097)])),
    _mal("index entry vv not a list", 2, _index([_entry(v={"a": 1})])),
    _mal("index entry vv counter a bool", 2, _index([_entry(v=[["a", True]])])),
    _mal("index entry vv counter negative", 2, _index([_entry(v=[["a", -1]])])),
    _mal("index entry vv duplicate node", 2, _index([_entry(v=[["a", 1], ["a", 2]])])),
    _mal("index entry vv too long", 2, _index([_entry(v=[[f"n{i}", 1] for i in range(4097)])])),
    _mal("index with one bad entry among good ones", 2,
         _index([GOOD_ENTRY, _entry(s=-1), GOOD_ENTRY])),
]


@pytest.mark.parametrize(
    ("name", "code", "body"), MALFORMED_BODIES, ids=[m[0] for m in MALFORMED_BODIES]
)
def test_malformed_body_is_a_protocol_error(name: str, code: int, body: bytes) -> None:
    """Refused as it arrives, which closes the session, or, for an Index's entries, when
    the batch is decoded to be applied: the whole batch, before any entry is used."""
    with pytest.raises(ProtocolError):
        decoded(p.decode_body(code, body))
    s = p.Session() if code == 1 else greeted()  # a bad Hello must come first
    with pytest.raises(ProtocolError):
        [decoded(m) for m in s.receive_data(frame(code, body))]
    assert s.closed is not name.startswith(("index entry", "index with one bad entry"))


def test_a_hostile_index_is_parsed_no_further_than_its_entry_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A peer may send MAX_JSON bytes of entries, many times the limit: refused after
    the first MAX_INDEX_ENTRIES + 1, not after each became a version."""
    from dagsync.model import FileVersion

    built = 0
    from_wire = FileVersion.from_wire.__func__  # type: ignore[attr-defined]

    def counting(cls: type, d: Any, shared: Any = None) -> FileVersion:
        nonlocal built
        built += 1
        return from_wire(cls, d, shared)  # type: ignore[no-any-return]

    monkeypatch.setattr(FileVersion, "from_wire", classmethod(counting))
    body = json.dumps(_index([GOOD_ENTRY] * (8 * p.MAX_INDEX_ENTRIES))).encode()
    assert len(body) <= p.MAX_JSON
    with pytest.raises(ProtocolError, match="at most"):
        p.decode_body(2, body)
    assert built <= p.MAX_INDEX_ENTRIES


def test_index_of_exactly_max_entries_is_accepted() -> None:
    entries = [_entry(p=f"f{i}") for i in range(p.MAX_INDEX_ENTRIES)]
    msg = decoded(p.decode_body(2, json.dumps(_index(entries)).encode()))
    assert isinstance(msg, p.Index)
    assert len(msg.entries) == p.MAX_INDEX_ENTRIES


def test_unknown_extra_fields_are_ignored_for_forward_compatibility() -> None:
    body = json.dumps({"nonce": 4, "future_field": [1, 2]}).encode()
    assert p.decode_body(7, body) == p.Ping(4)


def test_index_entries_are_checked_whatever_objects_they_hold() -> None:
    """Index bodies are parsed with each entry turned into a version as it is read: an
    entry that also carries an "entries" key is still an entry, an object nested where
    a value belongs is still refused, and a bad entry is named as it was."""
    extra = decoded(p.decode_body(2, json.dumps(_index([_entry(entries=[1])])).encode()))
    assert extra.entries[0].path == GOOD_ENTRY["p"]  # type: ignore[union-attr]
    for bad, reason in [(_entry(p={"p": "x"}), "bad path"), (_entry(s=-1), ""),
                        (_entry(v={"a": 1}), "version vector")]:
        with pytest.raises(ProtocolError, match=f"index: .*{reason}"):
            decoded(p.decode_body(2, json.dumps(_index([GOOD_ENTRY, bad])).encode()))
    with pytest.raises(ProtocolError, match="entries must be a list"):
        p.decode_body(2, json.dumps({"p": "a.py"}).encode())


def test_a_batch_holds_one_object_per_distinct_vector_and_origin() -> None:
    entries = [version(path=f"f{i}.py", vv=VersionVector.of({"m1": 1 + i % 2}))
               for i in range(6)]
    got = decoded(greeted().receive_data(p.encode(p.Index("dags", 1, tuple(entries), 6,
                                                          True)))[0])
    assert isinstance(got, p.Index) and got.entries == tuple(entries)
    assert len({id(e.vv) for e in got.entries}) == 2
    assert len({id(e.origin) for e in got.entries}) == 1


@pytest.mark.parametrize("opener", [b"[", b'{"a":'], ids=["arrays", "objects"])
def test_deeply_nested_json_is_a_protocol_error(opener: bytes) -> None:
    closer = b"]" if opener == b"[" else b"}"
    body = opener * 100_000 + b"1" * (opener != b"[") + closer * 100_000  # < MAX_JSON
    s = greeted()
    with pytest.raises(ProtocolError):
        s.receive_data(frame(7, body))
    assert s.closed


@pytest.mark.parametrize("field", ["c", "m", "s", "x"], ids=["hlc", "mtime_ns", "size", "mode"])
def test_index_entry_integers_beyond_int64_are_a_protocol_error(field: str) -> None:
    """The index stores them as SQLite INTEGERs: a bigger value must die here, as a
    ProtocolError on that connection, not later as an OverflowError in the engine."""
    body = json.dumps(_index([_entry(**{field: 2**63})])).encode()
    with pytest.raises(ProtocolError):
        decoded(p.decode_body(2, body))
    ok = decoded(p.decode_body(2, json.dumps(_index([_entry(**{field: INT64})])).encode()))
    assert isinstance(ok, p.Index) and len(ok.entries) == 1


def test_index_entry_vector_counter_beyond_int64_is_a_protocol_error() -> None:
    body = json.dumps(_index([_entry(v=[["a", 2**63]])])).encode()
    with pytest.raises(ProtocolError):
        decoded(p.decode_body(2, body))


# --- fuzzing ---------------------------------------------------------------------------------


def _feed_expecting_only_protocol_errors(s: p.Session, data: bytes) -> None:
    try:
        s.receive_data(data)
    except ProtocolError:
        assert s.closed


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=2000))
def test_no_bytes_after_hello_raise_anything_but_protocol_error(data: bytes) -> None:
    _feed_expecting_only_protocol_errors(greeted(), data)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=2000))
def test_no_bytes_as_the_first_message_raise_anything_but_protocol_error(data: bytes) -> None:
    _feed_expecting_only_protocol_errors(p.Session(), data)


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # a def, not a multi-line lambda: hypothesis reads the source of `extend` to check
    # it recurses, and a lambda's lines are easy to misread
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                         max_size=4)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    _json_containers,
    max_leaves=6,
)
FIELD_NAMES = ["node", "folders", "hlc", "wall_ms", "protocol", "software", "folder",
               "index_id", "entries", "last_seq", "caught_up", "id", "path", "hash", "offset",
               "size", "seq", "from_seq", "nonce", "digests", "reason", "features",
               "ranges"]
ENTRY_KEYS = list(GOOD_ENTRY)


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from([*range(0, 13), 14, 16]),
    st.dictionaries(st.sampled_from(FIELD_NAMES), json_values, max_size=6),
    st.lists(st.dictionaries(st.sampled_from(ENTRY_KEYS), json_values, max_size=3), max_size=2),
)
def test_well_framed_json_with_hostile_fields_raises_only_protocol_error(
    code: int, fields: dict[str, Any], entries: list[dict[str, Any]]
) -> None:
    """Right framing, plausible field names, arbitrary values: the decoders' type checks."""
    if code == 2 and "entries" not in fields:
        fields["entries"] = [GOOD_ENTRY | e for e in entries]
    body = json.dumps(fields).encode()
    s = greeted() if code != 1 else p.Session()
    try:
        msgs = s.receive_data(frame(code, body))
    except ProtocolError:
        assert s.closed
    else:
        assert len(msgs) == 1
        assert decode_frame(p.encode(msgs[0])) == msgs[0]  # whatever passed is well-formed


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_corrupted_valid_frames_raise_only_protocol_error(data: st.DataObject) -> None:
    msg = data.draw(after_hello)
    wire = bytearray(p.encode(msg))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    _feed_expecting_only_protocol_errors(greeted(), bytes(wire))


def test_batch_request_and_response_round_trip_and_reject_malformed_bodies() -> None:
    req = p.BatchRequest(7, "dags", (("a.py", "h1"), ("b/c.py", "h2")))
    s = greeted()
    assert s.receive_data(p.encode(req)) == [req]
    resp = p.BatchResponse(7, ((p.Status.OK, b"abc"), (p.Status.CHANGED, b""), (0, b"\x00")))
    assert greeted().receive_data(p.encode(resp)) == [resp]
    for bad in (
        b"",  # too short
        struct.pack(">II", 1, 2) + struct.pack(">BI", 0, 1),  # item table cut off
        struct.pack(">II", 1, 1) + struct.pack(">BI", 0, 5) + b"abc",  # item overruns
        struct.pack(">II", 1, 1) + struct.pack(">BI", 0, 1) + b"ab",  # trailing bytes
        struct.pack(">II", 1, 10_000),  # too many items
    ):
        with pytest.raises(ProtocolError):
            greeted().receive_data(frame(13, bad))
    for items in ([], [["a.py"]], [["a.py", 3]], [["a.py", "h"]] * 257):
        body = json.dumps({"id": 1, "folder": "dags", "items": items}).encode()
        with pytest.raises(ProtocolError):
            greeted().receive_data(frame(12, body))


# --- feature "delta": SignatureRequest/SignatureReply, RangeRequest ----------------------


def test_a_hello_without_features_is_an_older_node_announcing_none() -> None:
    body = json.dumps({k: v for k, v in GOOD_HELLO.items() if k != "features"}).encode()
    msg = p.decode_body(1, body)
    assert isinstance(msg, p.Hello) and msg.features == ()


def _sig_body(status: int, target: int, chunks: list[tuple[int, int]], rid: int = 1) -> bytes:
    return struct.pack(">IBI", rid, status, target) + b"".join(
        struct.pack(">IQ", n, h) for n, h in chunks)


def test_signature_reply_is_binary_twelve_bytes_a_chunk() -> None:
    reply = p.SignatureReply(3, p.Status.OK, 4096, tuple((100 + i, i) for i in range(1000)))
    wire = p.encode(reply)
    assert len(wire) == 5 + 9 + 12 * 1000
    assert greeted().receive_data(wire) == [reply]


def test_signature_reply_of_the_most_chunks_fits_a_frame() -> None:
    reply = p.SignatureReply(3, p.Status.OK, 1024, ((1, 0),) * p.MAX_SIGNATURE_CHUNKS)
    assert greeted().receive_data(p.encode(reply)) == [reply]
    with pytest.raises(ValueError):
        p.encode(p.SignatureReply(3, p.Status.OK, 1024, ((1, 0),) * (p.MAX_SIGNATURE_CHUNKS + 1)))


@pytest.mark.parametrize(("name", "body"), [
    ("shorter than its header", struct.pack(">IB", 1, 0)),
    ("a partial chunk entry", _sig_body(0, 4096, [(10, 1)]) + b"\x00" * 5),
    ("too many chunks", _sig_body(0, 1024, [(1, 0)] * (p.MAX_SIGNATURE_CHUNKS + 1))),
    ("a zero-length chunk", _sig_body(0, 4096, [(10, 1), (0, 2)])),
    ("a chunk over the longest", _sig_body(0, 4096, [(16 * 4096 + 1, 1)])),
    ("target not a power of two", _sig_body(0, 3000, [(10, 1)])),
    ("target too small", _sig_body(0, 512, [(10, 1)])),
    ("target too large", _sig_body(0, 1 << 21, [(10, 1)])),
    ("chunks with a failure status", _sig_body(p.Status.CHANGED, 4096, [(10, 1)])),
], ids=lambda x: x if isinstance(x, str) else "")
def test_malformed_signature_reply_is_refused(name: str, body: bytes) -> None:
    s = greeted()
    with pytest.raises(ProtocolError):
        s.receive_data(frame(15, body))
    assert s.closed


def test_range_request_of_exactly_the_limits_is_accepted() -> None:
    ranges = [[i * 16, 16] for i in range(p.MAX_RANGES - 1)] + [
        [10**12, p.BLOCK_SIZE - 16 * (p.MAX_RANGES - 1)]]
    body = json.dumps({"id": 1, "folder": "d", "path": "a", "hash": "h",
                       "ranges": ranges}).encode()
    msg = p.decode_body(16, body)
    assert isinstance(msg, p.RangeRequest)
    assert sum(n for _, n in msg.ranges) == p.BLOCK_SIZE
