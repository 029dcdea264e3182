"""A discrete-event scheduler: simulated milliseconds, events run in (time, insertion) order.

Insertion order breaks ties, so two runs of the same seed execute the same events in the
same order. Cancellation is done by the callers (they check an epoch or a flag), which
keeps the queue a plain heap.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable


class Scheduler:
    def __init__(self) -> None:
        self.now = 0
        self.events_run = 0
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._order = itertools.count()

    def at(self, when: int, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (max(when, self.now), next(self._order), fn))

    def after(self, delay_ms: int, fn: Callable[[], None]) -> None:
        self.at(self.now + delay_ms, fn)

    def pending(self) -> int:
        return len(self._heap)

    def run_until(self, when: int) -> None:
        """Run every event due at or before `when`, then set the clock to `when`."""
        while self._heap and self._heap[0][0] <= when:
            self._pop_and_run()
        self.now = max(self.now, when)

    def run_to_quiescence(self, max_events: int) -> bool:
        """Run until nothing is scheduled. False if `max_events` ran first (a livelock)."""
        budget = max_events
        while self._heap:
            if budget <= 0:
                return False
            self._pop_and_run()
            budget -= 1
        return True

    def _pop_and_run(self) -> None:
        when, _, fn = heapq.heappop(self._heap)
        self.now = when
        self.events_run += 1
        fn()
