"""Deterministic simulation of a dagsync cluster (ARCHITECTURE.md, "Deterministic simulation").

Many in-memory nodes run the REAL pure core -- `clock` (version vectors, HLC), `model`
(FileVersion), `reconcile` (decide / resolve / wins) and `protocol` (every message goes
through a `protocol.Session`, so framing and ordering rules are exercised) -- over a
simulated network that breaks, delays, partitions and corrupts, with nodes that crash
and restart and wall clocks skewed by up to an hour. The engine's and the peer
connection's logic (how local versions are made, how a batch is decided, fetched,
verified and applied, how progress is kept per peer) is mirrored in `world.py` and
`endpoint.py`, with a pointer to the real function on each mirror.

One seed determines everything; `python -m tests.sim.run --seed N` replays it.

Modules: `config` (knobs, and the engine policies under test with their proposed
patches), `sched` (the event queue), `history` (every version ever made, with its true
lineage: the oracle's ground truth, and the triggers of known dagsync bugs), `world`
(SimNode: index, disk, archive, clocks), `endpoint` (one side of one connection),
`network` (links, connections, faults), `topology`, `scenario` (one seeded run),
`invariants` (what must hold after healing), `script` (hand-driven stories), `run` (the
CLI). Tests: `test_sim` (seed sweeps, determinism), `test_scenarios` (each bug found,
told as a short story). Scale: `bench/sim_scale.py`.
"""
