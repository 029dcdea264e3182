"""PeerConnection.close() is called by an agent stopping, for every connection it holds,
at any moment; it must never raise (an agent exited 1 on SIGTERM when a peer's Close had
just ended the session)."""

from __future__ import annotations

from types import SimpleNamespace

from dagsync import protocol as p
from dagsync.peer import PeerConnection


class RecordingStream:
    def __init__(self) -> None:
        self.written: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.written.append(data)

    def close(self) -> None:
        self.closed = True


def connection() -> tuple[PeerConnection, RecordingStream]:
    stream = RecordingStream()
    conn = PeerConnection(SimpleNamespace(), stream, expected_name="b",  # type: ignore[arg-type]
                          initiator=True)
    return conn, stream


def test_close_sends_the_reason_and_closes_the_stream() -> None:
    conn, stream = connection()
    conn.close("agent stopping")
    assert stream.closed and conn.close_reason == "agent stopping"
    assert p.Session().receive_data(b"".join(stream.written)) == [p.Close("agent stopping")]


def test_close_after_the_peer_closed_the_session_does_not_raise() -> None:
    conn, stream = connection()
    peer = p.Session()
    conn.session.receive_data(peer.send(p.Close("agent stopping")))  # the peer's Close
    assert conn.session.closed
    conn.close("agent stopping")  # raised PeerClosed before
    assert stream.closed and conn.close_reason == "agent stopping"
