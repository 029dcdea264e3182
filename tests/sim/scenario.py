"""One seeded run: build the cluster, run the workload with faults, heal, quiesce, check.

Three independent random streams come from the seed: setup (clocks, index ids, the
random topology), work (what the users and the faults do, step by step) and net
(latency, frame cuts, drops, corruption). A run with fewer steps is a prefix of the
same run, which is what `run --shrink` relies on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import random
from dataclasses import dataclass

from dagsync.model import FileVersion
from tests.sim.config import SimConfig
from tests.sim.history import History
from tests.sim.invariants import check
from tests.sim.network import Network, Stats
from tests.sim.sched import Scheduler
from tests.sim.topology import edges, node_names
from tests.sim.world import SimNode, WallClock


@dataclass
class Result:
    cfg: SimConfig
    violations: list[str]
    trace: list[str]
    stats: Stats
    versions: int  # versions made by local edits
    conflicts: int  # concurrent, different versions met while applying
    archived: int  # conflict archive entries over all nodes
    refused: int  # corrupt content responses refused
    heal_ms: int  # simulated time from healing to quiescence
    heal_frames: int  # frames sent while healing
    events: int
    final: dict[str, FileVersion]
    triggers: dict[str, int]  # known dagsync bugs whose precondition occurred

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def known(self) -> bool:
        """Violations, explained by a known dagsync bug that was triggered."""
        return bool(self.violations) and bool(self.triggers)

    def digest(self) -> str:
        """One hash of the whole trace: equal digests, identical runs."""
        h = hashlib.sha256()
        for line in self.trace:
            h.update(line.encode())
            h.update(b"\n")
        return h.hexdigest()[:16]


class Scenario:
    def __init__(self, cfg: SimConfig) -> None:
        self.cfg = cfg
        setup = random.Random(f"setup-{cfg.seed}")
        self.work = random.Random(f"work-{cfg.seed}")
        self.sched = Scheduler()
        self.history = History()
        self.trace: list[str] = []
        f = cfg.faults
        self.nodes: dict[str, SimNode] = {}
        for name in node_names(cfg.nodes):
            wall = WallClock(setup.randint(-f.max_skew_ms, f.max_skew_ms),
                             setup.randint(-f.max_drift_ppm, f.max_drift_ppm))
            self.nodes[name] = SimNode(
                name, setup.getrandbits(62) + 1, wall, lambda: self.sched.now, self.history,
                cfg.rules, self._trace,
            )
        self.net = Network(cfg, self.sched, self.nodes,
                           edges(cfg.topology, list(self.nodes), setup),
                           random.Random(f"net-{cfg.seed}"), self.trace)
        self.made = 0
        # b"" is one of the common bodies: empty files are in the mix too
        self.bodies = [b""] + [
            f"# dag {i}\nfrom airflow import DAG\n".encode() * i for i in range(1, cfg.contents)
        ]

    def _trace(self, line: str) -> None:
        self.trace.append(f"{self.sched.now} {line}")

    # --- the workload ----------------------------------------------------------------

    def step(self) -> None:
        w, f = self.work, self.cfg.faults
        self.sched.run_until(self.sched.now + w.randint(*self.cfg.step_ms))
        choices = ("write", "delete", "rename", "crash", "stop", "partition", "break", "idle")
        weights = (f.w_write, f.w_delete, f.w_rename, f.w_crash, f.w_stop, f.w_partition,
                   f.w_break, f.w_idle)
        what = w.choices(choices, weights)[0]
        alive = [n for n in self.nodes.values() if n.alive]
        if not alive or what == "idle":
            return
        node = w.choice(alive)
        paths = self.cfg.paths
        live = [p for p in paths if p in node.d.disk]
        if what == "delete" and live:
            node.delete(w.choice(live))
        elif what == "rename" and live:
            src = w.choice(live)
            node.rename(src, w.choice([p for p in paths if p != src]))
        elif what in ("write", "delete", "rename"):
            hot = paths[: self.cfg.hot_paths]
            path = w.choice(hot) if w.random() < 0.7 else w.choice(paths)
            node.write(path, self._body(), 0o755 if w.random() < 0.1 else 0o644)
        elif what in ("crash", "stop"):
            if len(alive) > 1 or w.random() < 0.5:
                self._down(node, clean=what == "stop")
        elif what == "partition" and len(self.nodes) > 1:
            names = list(self.nodes)
            side = set(w.sample(names, w.randint(1, len(names) - 1)))
            pid = self.net.partition(side)
            self.sched.after(w.randint(200, 6000), lambda: self.net.heal(pid))
        elif what == "break":
            conns = [lk.conn for lk in self.net.links if lk.conn is not None]
            if conns:
                w.choice(conns).break_("the network cut it")

    def _body(self) -> bytes:
        """Mostly new bytes (so a lost version is noticed); sometimes one of a few
        common bodies (so equal content from two nodes happens)."""
        if self.work.random() < 0.3:
            return self.work.choice(self.bodies)
        self.made += 1
        return f"# dag body {self.made}\n".encode() * self.work.randint(1, 3)

    def _down(self, node: SimNode, *, clean: bool) -> None:
        if clean:
            node.stop()
        else:
            node.crash()
        self._trace(f"{node.name} {'stopped' if clean else 'crashed'}")
        self.net.node_down(node.name)
        jump = self.work.random() < 0.3
        offset = self.work.randint(-self.cfg.faults.max_skew_ms, self.cfg.faults.max_skew_ms)
        self.sched.after(self.work.randint(100, 6000),
                         lambda: self._up(node, offset if jump else None))

    def _up(self, node: SimNode, new_offset: int | None) -> None:
        if node.alive:
            return
        if new_offset is not None:  # its clock was stepped (NTP, an operator) meanwhile
            node.wall.offset_ms = new_offset
        node.start()
        self._trace(f"{node.name} restarted (hlc {node.clock.last})")
        self.net.node_up(node.name)

    # --- healing ---------------------------------------------------------------------

    def heal(self) -> bool:
        """Stop every fault, bring everything back, run until nothing is left to do."""
        faults = dataclasses.replace(self.cfg.faults, p_break=0.0, p_corrupt=0.0)
        self.net.cfg = dataclasses.replace(self.cfg, faults=faults)
        self._trace("heal")
        self.net.heal_all()
        for node in self.nodes.values():
            if not node.alive:
                self._up(node, None)
        for link in self.net.links:
            if link.conn is None:
                link.attempt = 0
                self.net.redial(link, now=True)
        return self.sched.run_to_quiescence(self.cfg.max_events)

    def run(self) -> Result:
        self.net.dial_all()
        for _ in range(self.cfg.steps):
            self.step()
        heal_start, frames_before = self.sched.now, sum(self.net.stats.frames.values())
        quiet = self.heal()
        violations = check(self, quiet)
        return Result(
            cfg=self.cfg, violations=violations, trace=self.trace, stats=self.net.stats,
            versions=len(self.history.versions),
            conflicts=sum(n.conflicts for n in self.nodes.values()),
            archived=sum(len(n.d.archive) for n in self.nodes.values()),
            refused=self.net.stats.refused, heal_ms=self.sched.now - heal_start,
            heal_frames=sum(self.net.stats.frames.values()) - frames_before,
            events=self.sched.events_run,
            final={p: v for p in self.cfg.paths
                   if (v := next(iter(self.nodes.values())).version(p)) is not None},
            triggers=dict(sorted(self.history.triggers.items())),
        )


def run(cfg: SimConfig) -> Result:
    return Scenario(cfg).run()
