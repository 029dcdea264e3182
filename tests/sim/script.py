"""Drive a small cluster by hand, to write a found bug down as a short story.

No random faults, no clock skew unless a step sets one, a fixed latency; the random
apply and serve delays still come from a fixed seed, so a story replays identically.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from tests.sim.config import Faults, Rules, SimConfig
from tests.sim.endpoint import Endpoint
from tests.sim.invariants import check
from tests.sim.scenario import Scenario
from tests.sim.world import SimNode


class Script:
    def __init__(
        self, nodes: int = 3, topology: str = "mesh", rules: Rules | None = None,
        latency_ms: int = 20,
    ) -> None:
        faults = dataclasses.replace(
            Faults.none(), latency_ms=(latency_ms, latency_ms), max_skew_ms=0, max_drift_ppm=0,
        )
        self.cfg = SimConfig(seed=0, nodes=nodes, steps=0, topology=topology, faults=faults,
                             rules=rules or Rules())
        self.scn = Scenario(self.cfg)
        self.net = self.scn.net
        self.sched = self.scn.sched
        self.names = list(self.scn.nodes)
        self._cuts: dict[tuple[str, str], int] = {}
        self.net.dial_all()
        self.settle()

    def n(self, i: int) -> SimNode:
        return self.scn.nodes[self.names[i]]

    def endpoint(self, i: int, j: int) -> Endpoint:
        """Node i's side of its connection to node j."""
        link = self.net.link(self.names[i], self.names[j])
        assert link.conn is not None, f"{link} is not connected"
        return link.conn.ends[self.names[i]]

    # --- time --------------------------------------------------------------------------

    def settle(self) -> None:
        assert self.sched.run_to_quiescence(200_000), "no quiescence"

    def wait(self, ms: int) -> None:
        self.sched.run_until(self.sched.now + ms)

    def run_until(self, pred: Callable[[], bool], limit: int = 200_000) -> None:
        while not pred():
            assert limit > 0 and self.sched.pending(), "the condition never came true"
            self.sched.run_until(self.sched._heap[0][0])
            limit -= 1

    # --- faults ------------------------------------------------------------------------

    def cut(self, i: int, j: int) -> None:
        key = (self.names[min(i, j)], self.names[max(i, j)])
        self._cuts[key] = self.net.cut([self.net.link(*key)])

    def mend(self, i: int, j: int) -> None:
        key = (self.names[min(i, j)], self.names[max(i, j)])
        self.net.heal(self._cuts.pop(key))

    def isolate_all(self) -> None:
        for link in self.net.links:
            self.cut(self.names.index(link.a), self.names.index(link.b))

    def corrupt(self, prob: float) -> None:
        """From now on, content responses arrive altered with this probability."""
        faults = dataclasses.replace(self.net.cfg.faults, p_corrupt=prob)
        self.net.cfg = dataclasses.replace(self.net.cfg, faults=faults)

    def crash(self, i: int, clock_step_ms: int = 0) -> None:
        """kill -9 node i; its wall clock is stepped while it is down (NTP, an operator)."""
        node = self.n(i)
        node.crash()
        self.net.node_down(node.name)
        node.wall.offset_ms += clock_step_ms

    def restart(self, i: int) -> None:
        node = self.n(i)
        node.start()
        self.net.node_up(node.name)

    def heal(self) -> list[str]:
        """Mend every link, settle, and return the invariant violations."""
        for key in list(self._cuts):
            self.net.heal(self._cuts.pop(key))
        self.settle()
        return check(self.scn, True)
