"""Run simulation seeds from the command line; a failing seed replays identically.

    python -m tests.sim.run --seed 17 --nodes 6 --steps 150 --topology line
    python -m tests.sim.run --seeds 500 --nodes 10 --topology random
    python -m tests.sim.run --seed 17 --trace            # every event of that run
    python -m tests.sim.run --seed 17 --shrink           # fewest steps that still fail
    python -m tests.sim.run --seeds 500 --patched        # with the proposed patches

Exit status 1 when any seed violated an invariant. Each failing seed is printed as
`SEED=<n>` with the exact command that replays it.
"""

from __future__ import annotations

import argparse
import sys
import time

from tests.sim.config import TOPOLOGIES, Faults, Rules, SimConfig
from tests.sim.history import KNOWN_BUGS
from tests.sim.scenario import Result, run


def config(
    args: argparse.Namespace, seed: int, topology: str, steps: int | None = None
) -> SimConfig:
    return SimConfig(
        seed=seed, nodes=args.nodes, steps=args.steps if steps is None else steps,
        topology=topology, faults=Faults.none() if args.no_faults else Faults(),
        rules=Rules.patched() if args.patched else Rules(),
    )


def replay_command(cfg: SimConfig, patched: bool, no_faults: bool) -> str:
    extra = (" --patched" if patched else "") + (" --no-faults" if no_faults else "")
    return (f"python -m tests.sim.run --seed {cfg.seed} --nodes {cfg.nodes} "
            f"--steps {cfg.steps} --topology {cfg.topology}{extra}")


def report(res: Result, args: argparse.Namespace) -> str:
    lines = [f"SEED={res.cfg.seed}  ({res.cfg.topology}, {res.cfg.nodes} nodes, "
             f"{res.cfg.steps} steps, rules {res.cfg.rules.label()})"]
    lines += [f"  {v}" for v in res.violations]
    if res.triggers:
        lines.append("  known dagsync bugs triggered in this run: " + ", ".join(
            f"{name} x{count} ({KNOWN_BUGS[name]})" for name, count in res.triggers.items()))
    lines.append(f"  replay: {replay_command(res.cfg, args.patched, args.no_faults)}")
    return "\n".join(lines)


def shrink(args: argparse.Namespace, seed: int, topology: str) -> int:
    """The fewest steps (a prefix of the same run) that still violate an invariant."""
    lo, hi = 0, int(args.steps)
    if run(config(args, seed, topology)).ok:
        return -1
    while lo + 1 < hi:
        mid = (lo + hi) // 2
        if run(config(args, seed, topology, mid)).ok:
            lo = mid
        else:
            hi = mid
    return hi


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.sim.run", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, help="run this one seed")
    ap.add_argument("--seeds", type=int, default=100, help="else run this many seeds")
    ap.add_argument("--base-seed", type=int, default=0, help="first seed of --seeds")
    ap.add_argument("--nodes", type=int, default=5)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--topology", default="mesh", choices=(*TOPOLOGIES, "all"))
    ap.add_argument("--patched", action="store_true", help="apply the proposed patches")
    ap.add_argument("--no-faults", action="store_true", help="workload only, no faults")
    ap.add_argument("--trace", action="store_true", help="print every event (with --seed)")
    ap.add_argument("--shrink", action="store_true", help="find the fewest failing steps")
    ap.add_argument("--digest", action="store_true", help="print the trace digest")
    args = ap.parse_args(argv)
    topologies = TOPOLOGIES if args.topology == "all" else (args.topology,)
    seeds = [args.seed] if args.seed is not None else list(
        range(args.base_seed, args.base_seed + args.seeds))
    started = time.monotonic()
    failed = runs = 0
    for seed in seeds:
        for topology in topologies:
            res = run(config(args, seed, topology))
            runs += 1
            if args.trace:
                print("\n".join(res.trace))
            if args.digest:
                print(f"seed {seed} {topology}: digest {res.digest()}")
            if not res.ok:
                failed += 1
                print(report(res, args), flush=True)
                if args.shrink:
                    steps = shrink(args, seed, topology)
                    cfg = config(args, seed, topology, steps)
                    print(f"  shrunk to {steps} steps: "
                          f"{replay_command(cfg, args.patched, args.no_faults)}", flush=True)
    took = time.monotonic() - started
    print(f"{runs} runs, {failed} with violations, {took:.1f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
