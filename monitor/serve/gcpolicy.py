"""Garbage collection for a long-running vantage: survivors frozen, a complete pass now and then.

CPython's full collection walks every tracked object that has survived before. At 10,000 jobs
that is some 170,000 objects (each job's latest results, histograms, verdicts and tasks) and
took 30-290 ms, 17 times a minute in a trial (benchmarks/scheduler_bench.py): each one held the
GIL, so it stalled the event loop (probes in flight timed it) and the render thread.

Here the survivors of each full collection are frozen (`gc.freeze`): the next full collection
walks only what survived since, so it stays short. A frozen object is still freed by reference
counting, which is how results, histograms and verdicts go (they are replaced, never in a
cycle); only a garbage cycle through a frozen object waits, until the complete pass that
`run` makes every `complete_every` seconds (unfreeze, collect everything, freeze again): one
longer pause every few minutes instead of many.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from typing import Any

log = logging.getLogger(__name__)

COMPLETE_EVERY = 600.0
"""Seconds between complete passes: the longest a garbage cycle through a frozen object lives."""


class FreezeSurvivors:
    """Installed by `probe serve` for its lifetime (`start`, `stop`): not for short processes."""

    def __init__(self, complete_every: float = COMPLETE_EVERY) -> None:
        self.complete_every = complete_every
        self.started = False
        self.freezes = 0
        """Full collections whose survivors were frozen (tests and benchmarks read it)."""

    def start(self) -> None:
        """Freeze what exists now (the configuration, the jobs) and every full collection's
        survivors from now on."""
        if not self.started:
            gc.callbacks.append(self._after_collection)
            self.started = True
        gc.freeze()

    def stop(self) -> None:
        """Back to CPython's own collection: nothing frozen, no callback."""
        if self.started:
            gc.callbacks.remove(self._after_collection)
            self.started = False
        gc.unfreeze()

    def _after_collection(self, phase: str, info: dict[str, Any]) -> None:
        # At the end of a full collection the younger generations have been merged into the
        # oldest and its garbage freed: what is left is exactly the survivors.
        if phase == "stop" and info["generation"] == 2:
            gc.freeze()
            self.freezes += 1

    def complete(self) -> tuple[int, float]:
        """Collect everything, frozen objects included (their garbage cycles): (objects
        collected, seconds). The survivors are frozen again."""
        start = time.perf_counter()
        gc.unfreeze()
        collected = gc.collect()  # the callback freezes the survivors
        return collected, time.perf_counter() - start

    async def run(self) -> None:
        """A complete pass every `complete_every` seconds, until cancelled."""
        while True:
            await asyncio.sleep(self.complete_every)
            collected, seconds = self.complete()
            log.debug(
                "complete garbage collection: %d objects in %.3f s",
                collected,
                seconds,
                extra={"fields": {"event": "gc_complete", "collected": collected}},
            )
