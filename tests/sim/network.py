"""Links between nodes, connections over them, and the faults of a real network.

A real peer link is an SSH channel over TCP: an ordered, reliable byte stream for as
long as the connection lives. Messages are never reordered or duplicated *within* a
connection; what a flaky network does instead is break the connection, and the new
connection re-handshakes from each side's *persisted* progress. So a "dropped",
"duplicated" or "reordered" frame is modelled here as the connection breaking at that
frame: everything in flight is lost, the pullers' queued batches and fetches with it,
and after a capped exponential backoff with jitter a new connection re-sends the index
from the progress the receiver persisted -- which re-delivers (duplicates) entries whose
batch was applied but not yet acknowledged, and delivers later entries before earlier
ones whose fetch failed (reordering at the application level).

Frames keep their order per direction (delivery time never decreases) but are cut
into random pieces before `Session.receive_data`, so partial frames and several frames
in one read are exercised.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field

from dagsync import protocol as p
from dagsync.errors import ProtocolError
from tests.sim.config import SimConfig
from tests.sim.endpoint import Endpoint
from tests.sim.sched import Scheduler
from tests.sim.world import SimNode

BACKOFF_BASE_MS = 200
BACKOFF_CAP_MS = 10_000


@dataclass
class Stats:
    frames: dict[str, int] = field(default_factory=dict)  # per sending node
    bytes_sent: int = 0
    connections: int = 0
    breaks: int = 0
    corrupted: int = 0
    refused: int = 0

    def sent(self, node: str, size: int) -> None:
        self.frames[node] = self.frames.get(node, 0) + 1
        self.bytes_sent += size


@dataclass
class Pipe:
    """One direction of a connection: bytes waiting for their delivery time."""

    queue: deque[tuple[int, bytes]] = field(default_factory=deque)
    last_ms: int = 0


class Link:
    """A configured peer pair. `down` counts the partitions that cut it."""

    def __init__(self, a: str, b: str) -> None:
        self.a, self.b = a, b
        self.down = 0
        self.conn: Connection | None = None
        self.attempt = 0
        self.dialing = False

    def __repr__(self) -> str:
        return f"{self.a}-{self.b}"


class Connection:
    def __init__(self, net: Network, link: Link, cid: int) -> None:
        self.net = net
        self.link = link
        self.id = cid
        self.broken = False
        self.ends = {
            link.a: Endpoint(self, net.nodes[link.a], link.b),
            link.b: Endpoint(self, net.nodes[link.b], link.a),
        }
        self.pipes = {link.a: Pipe(), link.b: Pipe()}  # keyed by the sending node

    def other(self, end: Endpoint) -> Endpoint:
        return self.ends[end.peer]

    def established(self) -> None:
        self.link.attempt = 0

    def send(self, src: Endpoint, msg: p.Message) -> None:
        """Frame `msg` through the sender's Session and put it on the wire."""
        if self.broken:
            return
        net = self.net
        if isinstance(msg, p.Response | p.BatchResponse) and net.roll(net.cfg.faults.p_corrupt):
            msg = self._corrupt(msg)
        frame = src.session.send(msg)
        net.stats.sent(src.node.name, len(frame))
        if net.roll(net.cfg.faults.p_break):
            what = net.rng.choice(("drop", "duplicate", "reorder"))
            self.break_(f"{what} of a {type(msg).__name__} frame")
            return
        pipe = self.pipes[src.node.name]
        lo, hi = net.cfg.faults.latency_ms
        when = max(pipe.last_ms, net.sched.now + net.rng.randint(lo, hi))
        pipe.last_ms = when
        pipe.queue.append((when, frame))
        dst = self.other(src)
        net.sched.at(when, lambda: self._deliver(src.node.name, dst))

    def _corrupt(self, msg: p.Response | p.BatchResponse) -> p.Response | p.BatchResponse:
        """Flip one bit of one file's bytes (the frame itself stays well formed)."""
        rng = self.net.rng
        items = [msg.data] if isinstance(msg, p.Response) else [d for _, d in msg.items]
        full = [i for i, d in enumerate(items) if d]
        if not full:
            return msg
        i = rng.choice(full)
        data = bytearray(items[i])
        data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        self.net.stats.corrupted += 1
        if isinstance(msg, p.Response):
            return p.Response(msg.id, msg.status, bytes(data))
        new = list(msg.items)
        new[i] = (new[i][0], bytes(data))
        return p.BatchResponse(msg.id, tuple(new))

    def _deliver(self, sender: str, dst: Endpoint) -> None:
        if self.broken:
            return
        pipe = self.pipes[sender]
        now = self.net.sched.now
        data = bytearray()
        while pipe.queue and pipe.queue[0][0] <= now:
            data += pipe.queue.popleft()[1]
        rng = self.net.rng
        while data and not self.broken:
            cut = rng.randint(1, len(data)) if rng.random() < 0.3 else len(data)
            piece, data = bytes(data[:cut]), data[cut:]
            try:
                msgs = dst.session.receive_data(piece)
                for msg in msgs:
                    if self.broken:
                        return
                    dst.dispatch(msg)
            except ProtocolError as exc:
                self.net.violation(f"protocol error on {self.link}: {exc}")
                self.break_(f"protocol error: {exc}")

    def break_(self, reason: str) -> None:
        if self.broken:
            return
        self.broken = True
        self.net.stats.breaks += 1
        self.net.trace(f"conn {self.id} {self.link} broke: {reason}")
        for end in self.ends.values():
            end.fail_pending()
        if self.link.conn is self:
            self.link.conn = None
        self.net.redial(self.link)


class Network:
    def __init__(
        self, cfg: SimConfig, sched: Scheduler, nodes: dict[str, SimNode],
        edges: list[tuple[str, str]], rng: random.Random, trace: list[str],
    ) -> None:
        self.cfg = cfg
        self.sched = sched
        self.nodes = nodes
        self.rng = rng
        self._trace = trace
        self.stats = Stats()
        self.links = [Link(a, b) for a, b in edges]
        self.by_node: dict[str, list[Link]] = {n: [] for n in nodes}
        for link in self.links:
            self.by_node[link.a].append(link)
            self.by_node[link.b].append(link)
        self.partitions: dict[int, list[Link]] = {}
        self._next_id = 0
        self.violations: list[str] = []
        for node in nodes.values():
            node.on_commit = self._on_commit

    def trace(self, line: str) -> None:
        self._trace.append(f"{self.sched.now} {line}")

    def violation(self, what: str) -> None:
        self.violations.append(what)

    def roll(self, prob: float) -> bool:
        return prob > 0 and self.rng.random() < prob

    # --- connections -----------------------------------------------------------------

    def dial_all(self) -> None:
        for link in self.links:
            self.dial(link)

    def dial(self, link: Link) -> None:
        """Open a connection if the link is usable; both sides send their Hello."""
        link.dialing = False
        if link.conn is not None or link.down or not (
            self.nodes[link.a].alive and self.nodes[link.b].alive
        ):
            return
        self._next_id += 1
        conn = Connection(self, link, self._next_id)
        link.conn = conn
        self.stats.connections += 1
        self.trace(f"conn {conn.id} {link} up")
        for end in conn.ends.values():
            end.start()

    def redial(self, link: Link, *, now: bool = False) -> None:
        """Capped exponential backoff with jitter (SPEC guarantee 5)."""
        if link.dialing:
            return
        link.dialing = True
        if now:
            delay = 0
        else:
            base = min(BACKOFF_CAP_MS, BACKOFF_BASE_MS << min(link.attempt, 10))
            delay = base // 2 + self.rng.randint(0, base // 2)
            link.attempt += 1
        self.sched.after(delay, lambda: self.dial(link))

    def node_down(self, name: str) -> None:
        for link in self.by_node[name]:
            if link.conn is not None:
                link.conn.break_(f"{name} went down")

    def node_up(self, name: str) -> None:
        for link in self.by_node[name]:
            link.attempt = 0
            self.redial(link, now=True)

    def _on_commit(self, node: SimNode) -> None:
        for link in self.by_node[node.name]:
            if link.conn is not None:
                link.conn.ends[node.name].local_commit()

    # --- faults ----------------------------------------------------------------------

    def partition(self, side: set[str]) -> int:
        """Cut every link between `side` and the rest; returns an id for heal()."""
        pid = self.cut([lk for lk in self.links if (lk.a in side) != (lk.b in side)])
        self.trace(f"partition {pid}: {sorted(side)} cut off")
        return pid

    def cut(self, links: list[Link]) -> int:
        """Take `links` down until heal(returned id)."""
        self._next_id += 1
        self.partitions[self._next_id] = links
        for link in links:
            link.down += 1
            if link.conn is not None:
                link.conn.break_("partition")
        return self._next_id

    def link(self, a: str, b: str) -> Link:
        for link in self.by_node[a]:
            if b in (link.a, link.b):
                return link
        raise KeyError(f"no link {a}-{b}")

    def heal(self, pid: int) -> None:
        cut = self.partitions.pop(pid, None)
        if cut is None:
            return
        for link in cut:
            link.down -= 1
            if not link.down:
                self.redial(link)
        self.trace(f"partition {pid} healed")

    def heal_all(self) -> None:
        for pid in sorted(self.partitions):
            self.heal(pid)
