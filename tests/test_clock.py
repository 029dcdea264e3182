"""Version vectors (which edit follows which) and the hybrid logical clock (which of two
concurrent edits is later): the causality and ordering SPEC guarantee 2 is built on."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagsync.clock import (
    LOGICAL_BITS,
    HybridClock,
    Order,
    VersionVector,
    hlc_ms,
    hlc_observe,
    hlc_pack,
    hlc_tick,
)

VV = VersionVector.of
QUICK = settings(max_examples=50, deadline=None)
NODES = st.sampled_from(["a", "b", "c", "d", "e"])
vectors = st.dictionaries(NODES, st.integers(min_value=0, max_value=20), max_size=5).map(VV)

# --- version vectors: compare ------------------------------------------------------

COMPARE_TABLE = [
    # (a, b, a.compare(b))
    ({}, {}, Order.EQUAL),
    ({"a": 1}, {"a": 1}, Order.EQUAL),
    ({"a": 1, "b": 2}, {"b": 2, "a": 1}, Order.EQUAL),
    ({"a": 1, "b": 0}, {"a": 1}, Order.EQUAL),  # a zero counter is an absent one
    ({}, {"a": 1}, Order.BEFORE),
    ({"a": 1}, {"a": 2}, Order.BEFORE),
    ({"a": 1}, {"a": 1, "b": 1}, Order.BEFORE),
    ({"a": 1, "b": 1}, {"a": 2, "b": 3}, Order.BEFORE),
    ({"a": 1}, {}, Order.AFTER),
    ({"a": 5}, {"a": 4}, Order.AFTER),
    ({"a": 2, "b": 1, "c": 7}, {"a": 2, "c": 7}, Order.AFTER),
    ({"a": 1}, {"b": 1}, Order.CONCURRENT),
    ({"a": 2, "b": 1}, {"a": 1, "b": 2}, Order.CONCURRENT),
    ({"a": 1, "b": 1}, {"a": 1, "c": 1}, Order.CONCURRENT),
    ({"a": 3}, {"a": 2, "b": 1}, Order.CONCURRENT),
]

_OPPOSITE = {
    Order.EQUAL: Order.EQUAL,
    Order.BEFORE: Order.AFTER,
    Order.AFTER: Order.BEFORE,
    Order.CONCURRENT: Order.CONCURRENT,
}


@pytest.mark.parametrize(("a", "b", "expected"), COMPARE_TABLE)
def test_compare_orders_vectors_by_causality(
    a: dict[str, int], b: dict[str, int], expected: Order
) -> None:
    assert VV(a).compare(VV(b)) is expected


@pytest.mark.parametrize(("a", "b", "expected"), COMPARE_TABLE)
def test_compare_read_backwards_gives_the_opposite_order(
    a: dict[str, int], b: dict[str, int], expected: Order
) -> None:
    assert VV(b).compare(VV(a)) is _OPPOSITE[expected]


def test_equal_vectors_are_equal_values_whatever_the_insertion_order() -> None:
    assert VV({"b": 2, "a": 1}) == VV([("a", 1), ("b", 2)])
    assert hash(VV({"b": 2, "a": 1})) == hash(VV({"a": 1, "b": 2}))
    assert VV({"a": 0}) == VersionVector()


# --- bump ---------------------------------------------------------------------------


def test_bump_makes_a_version_that_follows_the_one_it_edits() -> None:
    base = VV({"a": 3, "b": 1})
    edited = base.bump("b")
    assert edited.get("b") == 2
    assert edited.get("a") == 3
    assert edited.compare(base) is Order.AFTER
    assert base == VV({"a": 3, "b": 1})  # immutable: the base is untouched


def test_bump_of_a_new_node_starts_its_counter_at_one() -> None:
    assert VersionVector().bump("n1") == VV({"n1": 1})
    assert VV({"a": 1}).bump("z").get("z") == 1


def test_edits_on_two_nodes_from_the_same_base_are_concurrent() -> None:
    base = VV({"a": 1})
    assert base.bump("a").compare(base.bump("b")) is Order.CONCURRENT


def test_bump_with_a_floor_never_reuses_a_counter_after_a_lost_database() -> None:
    """A node whose index was wiped restarts from an empty vector; flooring its counter
    at the wall clock (seconds) keeps its new edits from colliding with old ones."""
    fresh = VersionVector().bump("a", floor=1_700_000_000)
    assert fresh.get("a") == 1_700_000_000
    assert fresh.compare(VV({"a": 41})) is Order.AFTER
    assert VV({"a": 1_800_000_000}).bump("a", floor=1_700_000_000).get("a") == 1_800_000_001
    assert VV({"a": 1, "b": 2}).bump("a", floor=0) == VV({"a": 2, "b": 2})


@QUICK
@given(vectors, NODES, st.integers(0, 10**10))
def test_bump_with_any_floor_follows_the_base(base: VersionVector, node: str, floor: int) -> None:
    bumped = base.bump(node, floor)
    assert bumped.compare(base) is Order.AFTER
    assert bumped.get(node) >= floor


def test_only_a_vector_no_node_ever_bumped_is_empty() -> None:
    assert VersionVector().empty
    assert VV({"a": 0}).empty
    assert not VV({"a": 1}).empty
    assert VersionVector().compare(VV({"a": 1})) is Order.BEFORE  # loses to any edit


def test_get_of_an_unknown_node_is_zero() -> None:
    assert VV({"a": 4}).get("nobody") == 0


# --- merge (hypothesis) -------------------------------------------------------------



@QUICK
@given(vectors, vectors)
def test_merge_is_commutative(a: VersionVector, b: VersionVector) -> None:
    assert a.merge(b) == b.merge(a)


@QUICK
@given(vectors, vectors, vectors)
def test_merge_is_associative(a: VersionVector, b: VersionVector, c: VersionVector) -> None:
    assert a.merge(b).merge(c) == a.merge(b.merge(c))


@QUICK
@given(vectors)
def test_merge_is_idempotent(a: VersionVector) -> None:
    assert a.merge(a) == a


@QUICK
@given(vectors, vectors)
def test_merge_dominates_both_inputs_and_is_the_least_such(
    a: VersionVector, b: VersionVector
) -> None:
    m = a.merge(b)
    assert m.compare(a) in (Order.AFTER, Order.EQUAL)
    assert m.compare(b) in (Order.AFTER, Order.EQUAL)
    for node in a.as_dict().keys() | b.as_dict().keys():
        assert m.get(node) == max(a.get(node), b.get(node))


@QUICK
@given(vectors, vectors)
def test_merge_of_ordered_vectors_is_the_later_one(a: VersionVector, b: VersionVector) -> None:
    order = a.compare(b)
    if order is Order.AFTER:
        assert a.merge(b) == a
    elif order in (Order.BEFORE, Order.EQUAL):
        assert a.merge(b) == b
    else:
        assert a.merge(b) not in (a, b)


@QUICK
@given(vectors, NODES)
def test_compare_agrees_with_its_mirror(a: VersionVector, node: str) -> None:
    b = a.bump(node)
    assert a.compare(b) is Order.BEFORE
    assert b.compare(a) is Order.AFTER


# --- wire format --------------------------------------------------------------------


@QUICK
@given(vectors)
def test_wire_round_trip(a: VersionVector) -> None:
    assert VersionVector.from_wire(a.to_wire()) == a


def test_from_wire_accepts_the_largest_allowed_vector() -> None:
    raw = [[f"n{i}", i + 1] for i in range(4096)]
    assert len(VersionVector.from_wire(raw).counters) == 4096


def test_from_wire_accepts_the_largest_int64_counter() -> None:
    assert VersionVector.from_wire([["a", 2**63 - 1]]).get("a") == 2**63 - 1


def test_from_wire_drops_zero_counters() -> None:
    assert VersionVector.from_wire([["a", 0], ["b", 2]]) == VV({"b": 2})
    assert VersionVector.from_wire([["a", 0]]) == VV({}) == VersionVector.from_wire([])
    assert VersionVector.from_wire([["b", 2], ["a", 1]]) == VV({"a": 1, "b": 2})  # sorted


MALFORMED: list[tuple[str, Any]] = [
    ("not a list: dict", {"a": 1}),
    ("not a list: str", "a"),
    ("not a list: int", 1),
    ("not a list: None", None),
    ("not a list: tuple", (("a", 1),)),
    ("entry not a list", ["a", 1]),
    ("entry is a tuple", [("a", 1)]),
    ("entry too short", [["a"]]),
    ("entry too long", [["a", 1, 2]]),
    ("empty entry", [[]]),
    ("node not a string", [[1, 1]]),
    ("node None", [[None, 1]]),
    ("counter is True", [["a", True]]),
    ("counter is False", [["a", False]]),
    ("counter negative", [["a", -1]]),
    ("counter beyond int64", [["a", 2**63]]),
    ("counter float", [["a", 1.0]]),
    ("counter string", [["a", "1"]]),
    ("counter None", [["a", None]]),
    ("duplicate node", [["a", 1], ["a", 2]]),
    ("duplicate node, same counter", [["a", 1], ["b", 1], ["a", 1]]),
    ("too many entries", [[f"n{i}", 1] for i in range(4097)]),
]


@pytest.mark.parametrize("raw", [m[1] for m in MALFORMED], ids=[m[0] for m in MALFORMED])
def test_from_wire_rejects_malformed_vectors(raw: Any) -> None:
    with pytest.raises(ValueError):
        VersionVector.from_wire(raw)


# --- hybrid logical clock -----------------------------------------------------------


def test_packing_keeps_ms_and_counter() -> None:
    assert hlc_ms(hlc_pack(1_700_000_000_123, 7)) == 1_700_000_000_123
    assert hlc_pack(5, 3) & ((1 << LOGICAL_BITS) - 1) == 3


@QUICK
@given(
    st.tuples(st.integers(0, 2**45), st.integers(0, 2**LOGICAL_BITS - 1)),
    st.tuples(st.integers(0, 2**45), st.integers(0, 2**LOGICAL_BITS - 1)),
)
def test_packed_order_is_the_order_of_ms_then_counter(
    a: tuple[int, int], b: tuple[int, int]
) -> None:
    pa, pb = hlc_pack(*a), hlc_pack(*b)
    assert (pa < pb) == (a < b)
    assert (pa == pb) == (a == b)


def test_tick_follows_the_wall_clock_when_it_moves_forward() -> None:
    clock = HybridClock()
    assert clock.tick(1000) == hlc_pack(1000, 0)
    assert clock.tick(1005) == hlc_pack(1005, 0)


def test_tick_within_one_millisecond_counts_up() -> None:
    clock = HybridClock()
    values = [clock.tick(1000) for _ in range(3)]
    assert values == [hlc_pack(1000, 0), hlc_pack(1000, 1), hlc_pack(1000, 2)]


def test_tick_when_the_wall_clock_goes_back_an_hour_still_moves_forward() -> None:
    clock = HybridClock()
    before = clock.tick(10_000_000)
    after = clock.tick(10_000_000 - 3_600_000)
    assert after > before
    assert hlc_ms(after) == 10_000_000  # stays on the highest time seen, not the wall


def test_tick_keeps_increasing_when_the_logical_counter_overflows() -> None:
    clock = HybridClock(hlc_pack(1000, 2**LOGICAL_BITS - 1))
    assert clock.tick(1000) > hlc_pack(1000, 2**LOGICAL_BITS - 1)


@QUICK
@given(st.lists(st.integers(0, 10**13), min_size=1, max_size=30), st.integers(0, 2**60))
def test_tick_is_strictly_increasing_whatever_the_wall_clock_does(
    walls: list[int], start: int
) -> None:
    clock = HybridClock(start)
    last = start
    for wall in walls:
        now = clock.tick(wall)
        assert now > last
        assert now >= hlc_pack(wall, 0)  # never behind the wall clock either
        assert clock.last == now
        last = now


@QUICK
@given(st.integers(0, 2**60), st.integers(0, 2**60), st.integers(0, 10**13))
def test_observe_moves_strictly_past_the_remote_and_the_local_value(
    last: int, remote: int, wall: int
) -> None:
    clock = HybridClock(last)
    now = clock.observe(remote, wall)
    assert now > remote
    assert now > last
    assert now == hlc_observe(last, remote, wall)
    assert clock.tick(wall) > now


def test_observe_of_a_clock_an_hour_ahead_pulls_the_local_clock_past_it() -> None:
    clock = HybridClock()
    clock.tick(1_000)
    remote = hlc_pack(1_000 + 3_600_000, 4)
    assert clock.observe(remote, 1_001) == remote + 1
    assert clock.tick(1_002) > remote  # later local edits are ordered after it too


def test_observe_of_an_old_remote_value_follows_the_wall_clock() -> None:
    assert hlc_observe(hlc_pack(50, 0), hlc_pack(10, 9), 100) == hlc_pack(100, 0)


def test_tick_function_is_pure() -> None:
    assert hlc_tick(hlc_pack(10, 0), 5) == hlc_pack(10, 1)
    assert hlc_tick(hlc_pack(10, 0), 5) == hlc_pack(10, 1)
