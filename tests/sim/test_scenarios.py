"""The bugs the simulation found, each written down as a short story on 2-3 nodes.

Each story runs with the engine's logic as it is (`Rules()`) and with the proposed
patch. A bug still in dagsync is marked xfail, strict: when dagsync is fixed and the
mirror in world.py / endpoint.py follows, the marker must go.
"""

from __future__ import annotations

import pytest

from tests.sim.config import Rules
from tests.sim.script import Script

HOUR_MS = 3_600_000
P = "dags/etl.py"


def as_is(reason: str) -> pytest.MarkDecorator:
    return pytest.mark.xfail(strict=True, reason=f"dagsync bug: {reason}")


# --- 1. a later edit must not get a lower HLC than the version it replaces -------------
# Found while the engine ticked the HLC alone; fixed meanwhile in engine._hlc_after
# ("An edit's HLC is always above the version it replaces"). Kept as a regression test:
# the HLC itself is still saved only on a clean close (node.py).

def hlc_lost_on_crash(rules: Rules) -> list[str]:
    """Line n0 - n1 - n2. n0's edit reaches n1; then n2 edits too, later, and wins on n1
    (n0's edit is archived there) while n0, cut off, keeps its own. n2 is killed, its
    clock stepped back an hour, and it restarts with the HLC saved at its last clean
    close (none): its next edit, on top of its winning version, gets an HLC below n0's
    version. On n1 that edit replaces its parent (it follows it); on n0 it loses to n0's
    version (concurrent, earlier clock), and n0 never announces its version again (n1
    has processed it). `wins` is no longer transitive: the cluster stays split -- unless
    an edit's HLC is kept above the HLC of the version it replaces."""
    s = Script(3, "line", rules)
    s.n(0).write(P, b"v0\n", 0o644)
    s.settle()
    s.cut(1, 2)
    s.n(0).write(P, b"edit on n0\n", 0o644)
    s.settle()  # n0 and n1 hold n0's edit
    s.cut(0, 1)
    s.n(2).write(P, b"edit on n2, later\n", 0o644)
    s.mend(1, 2)
    s.settle()  # n1: n2's edit won, n0's archived
    s.cut(1, 2)
    s.crash(2, clock_step_ms=-HOUR_MS)
    s.restart(2)
    s.n(2).write(P, b"n2 edits again after the crash\n", 0o644)
    return s.heal()


def test_hlc_lost_on_crash_as_is() -> None:
    assert hlc_lost_on_crash(Rules()) == []


def test_hlc_lost_on_crash_patched() -> None:
    assert hlc_lost_on_crash(Rules.patched()) == []


# --- 2. a node reuses its vector counter after its edit lost a conflict -----------------

def counter_reuse(rules: Rules) -> list[str]:
    """Full mesh, true clocks, no crash. n1 and n2 edit v1 concurrently (n2 later). n0
    sees only n1's edit and edits on top: {n0:2, n1:1}. n1 sees n2's edit win, archives
    its own, and edits on top of n2's: {n0:1, n1:1, n2:1} -- counter n1:1 again. n2 sees
    n0's edit win, archives its own, and edits on top of it: {n0:2, n1:1, n2:1} -- n2:1
    again. That vector dominates n1's second edit, which n2 never saw: on n1 it is
    replaced as if n2 had edited it, and archived nowhere. SPEC 2: nothing lost."""
    s = Script(3, "mesh", rules)
    s.n(0).write(P, b"v1\n", 0o644)
    s.settle()
    s.isolate_all()
    s.n(1).write(P, b"n1's first edit\n", 0o644)
    s.wait(20)
    s.n(2).write(P, b"n2's first edit\n", 0o644)
    s.wait(20)
    s.mend(0, 1)
    s.settle()  # n0 holds n1's edit
    s.cut(0, 1)
    s.n(0).write(P, b"n0 edits n1's edit\n", 0o644)
    s.mend(1, 2)
    s.settle()  # n1: n2's edit won, n1's archived
    s.cut(1, 2)
    s.n(1).write(P, b"n1 edits again: the version that gets lost\n", 0o644)
    s.mend(0, 2)
    s.settle()  # n2: n0's edit won, n2's archived
    s.cut(0, 2)
    s.n(2).write(P, b"n2 edits n0's edit\n", 0o644)
    return s.heal()


def test_counter_reuse_as_is() -> None:
    """Fixed in engine._vv_floor: a node's counter never repeats in a folder."""
    assert counter_reuse(Rules()) == []


@as_is("the earlier floor (wall seconds) let a node reuse a counter: an edit was lost")
def test_counter_reuse_with_the_old_floor() -> None:
    assert counter_reuse(Rules(vv_floor="wall-s")) == []


def test_counter_reuse_with_an_hlc_floor() -> None:
    assert counter_reuse(Rules(vv_floor="hlc")) == []


# --- 3. progress jumps over a failed batch ----------------------------------------------

def progress_skips_failed_batch(rules: Rules) -> list[str]:
    """n0 -> n1. n1's fetch of a.py fails (corrupt content, refused): the batch fails,
    progress stays at 0, a Resend(0) is due in 1 s. n0's next edit (b.py) is announced
    while that Resend is on its way: the batch with b.py arrives after the failures were
    forgotten, applies and moves n1's persisted progress to 2 -- over a.py. If the
    connection breaks before the resent batch is applied, the new connection resumes
    from 2: a.py never reaches n1."""
    s = Script(2, "mesh", rules)
    s.corrupt(1.0)
    s.n(0).write("dags/a.py", b"a\n", 0o644)
    s.run_until(lambda: s.endpoint(1, 0).failures == 1)
    s.corrupt(0.0)
    s.run_until(lambda: s.endpoint(1, 0).failures == 0)  # Resend(0) sent
    s.n(0).write("dags/b.py", b"b\n", 0o644)
    s.run_until(lambda: "dags/b.py" in s.n(1).d.disk)
    s.wait(30)  # the Ack for b.py's batch is out
    link = s.net.link(s.names[0], s.names[1])
    assert link.conn is not None
    link.conn.break_("the network cut it")
    return s.heal()


def test_progress_skips_failed_batch_as_is() -> None:
    """Fixed in peer._puller: progress only moves over contiguous batches."""
    assert progress_skips_failed_batch(Rules()) == []


@as_is("without the fence, progress jumped over a failed batch and a file never arrived")
def test_progress_skips_failed_batch_without_the_fence() -> None:
    assert progress_skips_failed_batch(Rules(progress_fence=False)) == []
