"""What a simulation run is made of: size, topology, fault rates and the policies under test.

`Rules` names the places where the simulation mirrors engine logic that is not in the
pure core (how a restarted node's clock starts, how a new version's vector is bumped,
how a failed batch is retried). The defaults are what dagsync does today; the other
values are patches proposed in the report, so a run can show a patch removes a failure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

TOPOLOGIES = ("mesh", "line", "star", "hubs", "random")

# A few hot files most edits go to (so conflicts happen), and colder ones whose last
# version must still arrive everywhere (so a lost announcement is not hidden by a newer one).
HOT_PATHS = (
    "dags/etl.py",
    "dags/report.py",
    "dags/sub/clean.py",
    "dags/sub/load.py",
    "plugins/hooks.py",
)
PATHS = HOT_PATHS + tuple(f"dags/generated/dag_{i:02d}.py" for i in range(15))


@dataclass(frozen=True)
class Rules:
    """Engine policies the simulation mirrors (defaults: dagsync as it is).

    hlc_restore: where a restarted node's HLC starts. "meta" is node.py today: the value
        saved at the last clean close, so a kill -9 forgets every tick since. "durable"
        is a proposed patch: the HLC is saved in every index transaction.
    vv_floor: the floor of a node's own counter when it bumps a vector. "own" is the
        engine today (engine._vv_floor): above every counter the node ever used in the
        folder (persisted) and at least the wall clock in seconds. "wall-s" was the
        engine before: two edits by one node in the same second, or after its clock
        stepped back, could reuse a counter. "hlc" was a proposed alternative.
    progress_fence: the puller advances its persisted progress only with a batch that
        starts at or below it (peer._puller; Index carries its start). False mirrors the
        engine before that fix.
    """

    hlc_restore: str = "meta"
    vv_floor: str = "own"
    progress_fence: bool = True

    @classmethod
    def patched(cls) -> Rules:
        return cls(hlc_restore="durable", vv_floor="hlc", progress_fence=True)

    def label(self) -> str:
        on = [
            name for name, val in (
                ("durable-hlc", self.hlc_restore != "meta"), ("vv-floor-hlc",
                                                             self.vv_floor != "wall-s"),
                ("progress-fence", self.progress_fence),
            ) if val
        ]
        return "+".join(on) or "as-is"


@dataclass(frozen=True)
class Faults:
    """Fault rates while the workload runs; all are switched off for healing."""

    p_break: float = 0.01  # per frame: the connection breaks (drop, duplicate, reorder)
    p_corrupt: float = 0.08  # per content response: the bytes arrive altered
    latency_ms: tuple[int, int] = (1, 40)  # one-way delay of a frame, uniform
    max_skew_ms: int = 3_600_000  # wall clock offset of a node, uniform in +-this
    max_drift_ppm: int = 200  # wall clock drift of a node, uniform in +-this
    # weights of what one workload step does
    w_write: int = 40
    w_delete: int = 12
    w_rename: int = 6
    w_crash: int = 3
    w_stop: int = 1  # clean stop (the HLC is saved), restarted later
    w_partition: int = 2
    w_break: int = 3  # one connection breaks
    w_idle: int = 10

    @classmethod
    def none(cls) -> Faults:
        return cls(p_break=0.0, p_corrupt=0.0, w_crash=0, w_stop=0, w_partition=0, w_break=0)


@dataclass(frozen=True)
class SimConfig:
    seed: int
    nodes: int = 5
    steps: int = 120
    topology: str = "mesh"
    paths: tuple[str, ...] = PATHS
    hot_paths: int = len(HOT_PATHS)  # the first ones; 70 % of writes go to them
    contents: int = 6  # distinct file bodies: small, so equal content on two nodes happens
    batch_limit: int = 3  # entries per Index message (real: 2000); small to exercise batching
    step_ms: tuple[int, int] = (0, 120)  # simulated time between workload steps
    faults: Faults = field(default_factory=Faults)
    rules: Rules = field(default_factory=Rules)
    max_events: int = 3_000_000  # healing that does not quiesce by then is a livelock

    def __post_init__(self) -> None:
        if self.topology not in TOPOLOGIES:
            raise ValueError(f"unknown topology {self.topology!r}; one of {TOPOLOGIES}")
        if self.nodes < 1:
            raise ValueError("at least one node")
