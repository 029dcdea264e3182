"""Who is configured as whose peer.

"hubs" is the usual Airflow layout: a few masters peer with each other and every worker
peers with every master (workers do not peer with each other).
"""

from __future__ import annotations

import random


def node_names(n: int) -> list[str]:
    width = max(2, len(str(n - 1)))
    return [f"n{i:0{width}d}" for i in range(n)]


def masters_count(n: int) -> int:
    return max(1, min(3, n // 4)) if n > 1 else 1


def edges(kind: str, names: list[str], rng: random.Random) -> list[tuple[str, str]]:
    n = len(names)
    out: set[tuple[str, str]] = set()

    def add(i: int, j: int) -> None:
        if i != j:
            out.add((names[min(i, j)], names[max(i, j)]))

    if kind == "mesh":
        for i in range(n):
            for j in range(i + 1, n):
                add(i, j)
    elif kind == "line":
        for i in range(n - 1):
            add(i, i + 1)
    elif kind == "star":
        for i in range(1, n):
            add(0, i)
    elif kind == "hubs":
        m = masters_count(n)
        for i in range(m):
            for j in range(i + 1, n):
                add(i, j)
    elif kind == "random":
        order = list(range(n))
        rng.shuffle(order)
        for k in range(1, n):  # a random spanning tree keeps it connected
            add(order[k], order[rng.randrange(k)])
        extra = 2.0 / max(1, n - 1)  # about two more links per node
        for i in range(n):
            for j in range(i + 1, n):
                if rng.random() < extra:
                    add(i, j)
    else:
        raise ValueError(f"unknown topology {kind!r}")
    return sorted(out)
