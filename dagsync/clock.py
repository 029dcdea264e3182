"""Version vectors (causality) and the hybrid logical clock (ordering of concurrent edits).

A version vector says which edits a version has seen; it alone decides "this version
follows that one". Only when two versions are concurrent does the hybrid logical clock
decide, so a node with a wrong wall clock can never undo a causally later edit.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring_ascii as json_str  # the C escaper json uses
from typing import Any

# An HLC value packs wall-clock milliseconds and a logical counter into one int:
# hlc = ms << LOGICAL_BITS | counter. Plain int comparison orders it.
LOGICAL_BITS = 16
_LOGICAL_MASK = (1 << LOGICAL_BITS) - 1


class Order(enum.Enum):
    EQUAL = "equal"
    BEFORE = "before"  # self happened before other
    AFTER = "after"  # self follows other
    CONCURRENT = "concurrent"


@dataclass(frozen=True, slots=True)
class VersionVector:
    """Immutable mapping node -> counter, kept sorted so equal vectors compare equal."""

    counters: tuple[tuple[str, int], ...] = ()

    @classmethod
    def of(cls, items: Mapping[str, int] | Iterable[tuple[str, int]]) -> VersionVector:
        pairs = items.items() if isinstance(items, Mapping) else items
        return cls(tuple(sorted((n, c) for n, c in pairs if c > 0)))

    def get(self, node: str) -> int:
        for name, count in self.counters:
            if name == node:
                return count
        return 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.counters)

    def bump(self, node: str, floor: int = 0) -> VersionVector:
        """The vector of a new edit made on `node` on top of this version.

        `floor` (the node passes its wall clock in seconds, as Syncthing does) keeps a
        node whose database was lost from reusing a counter value it already handed out.
        """
        d = self.as_dict()
        d[node] = max(d.get(node, 0) + 1, floor)
        return VersionVector.of(d)

    @property
    def empty(self) -> bool:
        """No node ever edited this version: a file found on disk and not yet versioned."""
        return not self.counters

    def merge(self, other: VersionVector) -> VersionVector:
        """Pairwise maximum: the vector of a version that has seen both."""
        d = self.as_dict()
        for node, count in other.counters:
            d[node] = max(d.get(node, 0), count)
        return VersionVector.of(d)

    def compare(self, other: VersionVector) -> Order:
        mine, theirs = self.as_dict(), other.as_dict()
        less = greater = False
        for node in mine.keys() | theirs.keys():
            a, b = mine.get(node, 0), theirs.get(node, 0)
            if a < b:
                less = True
            elif a > b:
                greater = True
        if less and greater:
            return Order.CONCURRENT
        if less:
            return Order.BEFORE
        if greater:
            return Order.AFTER
        return Order.EQUAL

    def to_wire(self) -> list[list[Any]]:
        return [[n, c] for n, c in self.counters]

    def wire_json(self) -> str:
        """to_wire() as compact JSON, the same text json.dumps gives, without the lists."""
        return "[" + ",".join(f"[{json_str(n)},{c}]" for n, c in self.counters) + "]"

    @classmethod
    def from_wire(cls, raw: Any) -> VersionVector:
        """Parse an untrusted peer's vector; raises ValueError when malformed. (Exact type
        checks: JSON gives no subclasses, and a bool is not a counter.)"""
        if type(raw) is not list or len(raw) > 4096:
            raise ValueError("bad version vector")
        pairs: dict[str, int] = {}
        for item in raw:
            if type(item) is not list or len(item) != 2:
                raise ValueError("bad version vector entry")
            name, count = item
            if (type(name) is not str or type(count) is not int or not 0 <= count < 2**63
                    or name in pairs):
                raise ValueError("bad version vector entry")
            pairs[name] = count
        if len(pairs) == 1:  # most versions: one node ever edited them
            ((name, count),) = pairs.items()
            return cls(((name, count),) if count else ())
        return cls.of(pairs)


def hlc_pack(ms: int, counter: int) -> int:
    return (ms << LOGICAL_BITS) | (counter & _LOGICAL_MASK)


def hlc_ms(hlc: int) -> int:
    return hlc >> LOGICAL_BITS


def hlc_tick(last: int, wall_ms: int) -> int:
    """Next local HLC value: the wall clock when it moved on, else the last value + 1."""
    candidate = hlc_pack(wall_ms, 0)
    return candidate if candidate > last else last + 1


def hlc_observe(last: int, remote: int, wall_ms: int) -> int:
    """HLC after receiving a remote value: strictly above both, and near the wall clock."""
    return hlc_tick(max(last, remote), wall_ms)


class HybridClock:
    """A node's HLC. The caller passes the wall clock in, so this stays pure and testable."""

    def __init__(self, last: int = 0) -> None:
        self.last = last

    def tick(self, wall_ms: int) -> int:
        self.last = hlc_tick(self.last, wall_ms)
        return self.last

    def observe(self, remote: int, wall_ms: int) -> int:
        self.last = hlc_observe(self.last, remote, wall_ms)
        return self.last
