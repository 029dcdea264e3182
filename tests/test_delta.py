"""delta.py, pure: content-defined chunks move only near an edit, plans assemble the new
content exactly, and chunking is fast enough to run on the event loop's worker threads."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dagsync import delta


def text(size: int, seed: int = 7) -> bytes:
    """Python-like text of exactly `size` bytes, lines of varied length."""
    rng = random.Random(seed)
    words = ["extract", "load", "customer", "orders", "daily", "report", "table", "retry"]
    out, total, i = [], 0, 0
    while total < size:
        line = (f"def {rng.choice(words)}_{i}(ctx):  # " +
                " ".join(rng.choice(words) for _ in range(rng.randint(0, 12))) + "\n")
        out.append(line)
        total += len(line)
        i += 1
    return "".join(out).encode()[:size]


def roundtrip(old: bytes, new: bytes, max_range: int = 1 << 62) -> delta.Plan:
    plan = delta.plan(delta.signature(new), old, max_range)
    fetched = [new[off : off + ln] for off, ln in plan.fetch]
    assert delta.assemble(plan, old, fetched) == new
    assert plan.size == len(new)
    return plan


def middle_line(data: bytes) -> int:
    return data.index(b"\n", len(data) // 2) + 1


OLD = text(1 << 20)


def test_chunks_cover_the_content_in_order() -> None:
    ends = delta.chunk_ends(OLD)
    assert ends[-1] == len(OLD)
    assert ends == sorted(set(ends))
    sig = delta.signature(OLD)
    assert sig.size == len(OLD) and sig.target == 4096
    assert 2000 < len(OLD) / len(sig.chunks) < 8000  # average chunk near the target


@pytest.mark.parametrize("edit", ["insert", "delete", "replace"])
def test_an_edit_in_the_middle_refetches_only_chunks_near_it(edit: str) -> None:
    mid = middle_line(OLD)
    end = OLD.index(b"\n", mid) + 1
    line = b"# edited: retries bumped to 5\n"
    new = {
        "insert": OLD[:mid] + line + OLD[mid:],
        "delete": OLD[:mid] + OLD[end:],
        "replace": OLD[:mid] + line + OLD[end:],
    }[edit]
    plan = roundtrip(OLD, new)
    assert len(plan.fetch) <= 2
    assert plan.fetch_bytes < 40_000, plan.fetch
    assert all(off <= mid + len(line) and off + ln >= mid - 70_000 for off, ln in plan.fetch)


def test_edits_at_many_places_refetch_little_on_average() -> None:
    rng = random.Random(3)
    fetched = []
    for _ in range(40):
        at = OLD.index(b"\n", rng.randrange(len(OLD) - 1000)) + 1
        new = OLD[:at] + b"x = 1  # new line\n" + OLD[at:]
        fetched.append(roundtrip(OLD, new).fetch_bytes)
    assert sum(fetched) / len(fetched) < 12_000, fetched


def test_identical_content_fetches_nothing_and_unrelated_content_everything() -> None:
    assert roundtrip(OLD, OLD).fetch == []
    other = text(300_000, seed=99)
    plan = roundtrip(OLD, other)
    assert plan.fetch_bytes == len(other)


def test_empty_files() -> None:
    assert delta.chunk_ends(b"") == []
    assert delta.signature(b"").chunks == ()
    assert roundtrip(b"", b"").ops == ()
    assert roundtrip(OLD, b"").fetch == []
    assert roundtrip(b"", b"abc\n").fetch == [(0, 4)]


def test_binary_data_chunks_by_content_too() -> None:
    rng = random.Random(5)
    old = rng.randbytes(1 << 20)
    new = old[:400_000] + b"\x00inserted\xff" + old[400_000:]
    assert roundtrip(old, new).fetch_bytes < 40_000


def test_data_without_newlines_is_cut_at_the_longest_chunk() -> None:
    zeros = bytes(1 << 20)
    sig = delta.signature(zeros)
    assert all(ln <= delta.max_chunk(sig.target) for ln, _ in sig.chunks)
    assert roundtrip(zeros, zeros[:-5]).fetch_bytes < delta.max_chunk(sig.target)
    one_line = b"a" * 300_000 + b"\n" + b"b" * 5
    assert all(ln <= delta.max_chunk(4096) for ln, _ in delta.signature(one_line).chunks)


def test_many_short_equal_lines_do_not_make_tiny_chunks() -> None:
    data = b"\n" * 100_000
    assert min(ln for ln, _ in delta.signature(data).chunks[:-1]) >= 4096 // 16


def test_ranges_are_split_and_batched_within_limits() -> None:
    other = text(50_000, seed=2)
    plan = roundtrip(b"", other, max_range=4000)
    assert all(ln <= 4000 for _, ln in plan.fetch) and plan.fetch_bytes == len(other)
    groups = delta.batches(plan.fetch, 10_000, 2)
    assert [r for g in groups for r in g] == plan.fetch
    assert all(len(g) <= 2 and sum(ln for _, ln in g) <= 10_000 for g in groups)
    with pytest.raises(ValueError):
        delta.batches([(0, 10_001)], 10_000, 2)


def test_assemble_refuses_fetched_data_that_does_not_fit_the_plan() -> None:
    new = OLD[:1000] + b"changed\n" + OLD[1000:]
    plan = delta.plan(delta.signature(new), OLD)
    good = [new[off : off + ln] for off, ln in plan.fetch]
    with pytest.raises(ValueError):
        delta.assemble(plan, OLD, [g + b"x" for g in good])
    with pytest.raises(ValueError):
        delta.assemble(plan, OLD, [*good, b"extra"])
    with pytest.raises(ValueError):
        delta.assemble(plan, OLD, [])
    with pytest.raises(ValueError):
        delta.assemble(plan, OLD[:100], good)  # old content shorter than the plan copies


def test_target_grows_with_the_file_and_is_always_valid() -> None:
    assert delta.target_for(0) == delta.target_for(1 << 20) == 4096
    assert delta.target_for(16 << 20) == 16384
    assert delta.target_for(1 << 40) == delta.MAX_TARGET
    for size in (0, 1, 10**5, 10**7, 10**9):
        assert delta.valid_target(delta.target_for(size))
    with pytest.raises(ValueError):
        delta.chunk_ends(b"abc", 3000)


def test_chunking_is_pinned() -> None:
    """Both sides must cut the same way, whatever their version or platform (fixed hashes,
    integer arithmetic only): a change here makes old and new nodes share no chunks."""
    data = b"".join(b"line %d\n" % i for i in range(5000))
    ends = delta.chunk_ends(data)
    assert (len(ends), ends[:6]) == (13, [4399, 4858, 10620, 14500, 15200, 19830])
    assert delta.signature(data).chunks[0] == (4399, 5780606601177034104)


def test_one_megabyte_is_chunked_in_well_under_20_ms() -> None:
    delta.signature(OLD)  # warm up
    best = min(_timed(lambda: delta.signature(OLD)) for _ in range(5))
    assert best < 0.02, f"signature of 1 MB took {best * 1000:.1f} ms"
    new = OLD[:500_000] + b"x\n" + OLD[500_000:]
    sig = delta.signature(new)
    best = min(_timed(lambda: delta.plan(sig, OLD)) for _ in range(5))
    assert best < 0.02, f"plan against 1 MB took {best * 1000:.1f} ms"


def _timed(fn: object) -> float:
    t0 = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - t0


# --- properties ---------------------------------------------------------------------------

lines = st.lists(st.binary(max_size=120).map(lambda b: b.replace(b"\n", b"") + b"\n"),
                 max_size=200).map(b"".join)
contents = st.one_of(st.binary(max_size=20_000), lines)


@settings(max_examples=200, deadline=None)
@given(contents, contents, st.sampled_from([1024, 4096]), st.integers(1, 5000))
def test_assembling_a_plan_always_gives_the_new_content(old: bytes, new: bytes, target: int,
                                                        max_range: int) -> None:
    sig = delta.signature(new, target)
    assert sig.size == len(new)
    plan = delta.plan(sig, old, max_range)
    fetched = [new[off : off + ln] for off, ln in plan.fetch]
    assert all(0 < ln <= max_range and off + ln <= len(new) for off, ln in plan.fetch)
    assert delta.assemble(plan, old, fetched) == new


@settings(max_examples=100, deadline=None)
@given(lines, st.data())
def test_an_edit_changes_chunks_only_near_it(old: bytes, data: st.DataObject) -> None:
    at = data.draw(st.integers(0, len(old)))
    cut = data.draw(st.integers(0, min(200, len(old) - at)))
    ins = data.draw(st.binary(max_size=200))
    new = old[:at] + ins + old[at + cut :]
    plan = delta.plan(delta.signature(new, 1024), old)
    longest = delta.max_chunk(1024)
    # Everything fetched lies within a few longest chunks of the edit.
    assert all(off + ln >= at - 2 * longest and off <= at + len(ins) + 2 * longest
               for off, ln in plan.fetch)
    assert delta.assemble(plan, old, [new[o : o + n] for o, n in plan.fetch]) == new
