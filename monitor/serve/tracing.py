"""The traces `probe serve` runs when a (target, probe) verdict turns `ipv6_failed` or recovers
from it: both families toward the addresses of the change's results, in a task of their own
(never in the scheduler's slots, so no scheduled probe waits for one), attached to the change
as a `trace` event when done, and the blame kept per (target, family) for the metrics.

Kept cheap: at most `trace.budget` traces started in any minute by this process, and one
trace per target and direction (failed, recovered) per `trace.cooldown`: three probes of a
target failing together start one trace. What is not started is counted, never queued.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from monitor.config import TraceConfig
from monitor.engine.parity import Verdict
from monitor.engine.trace import TargetTrace, settings, trace_target
from monitor.serve.events import Event
from monitor.serve.state import Store
from probes.base import Family, ProbeEnv, ProbeResult, Target

log = logging.getLogger("dualstack.vantage")

TRACE_RESULTS: tuple[str, ...] = ("traced", "failed", "over_budget", "cooldown")
"""The `result` label of the trace runs counter: ran (whatever it found), could not run
(no socket allowed, a bug), not started (the minute's budget spent, the target's cooldown)."""
WINDOW = 60.0
"""The budget is per minute."""


def direction(event: Event) -> str | None:
    """`failed` (to ipv6_failed), `recovered` (from it), or None: not a change to trace."""
    now, was = event.parity.verdict, event.previous
    if now is Verdict.IPV6_FAILED and was is not Verdict.IPV6_FAILED:
        return "failed"
    if was is Verdict.IPV6_FAILED and now is not Verdict.IPV6_FAILED:
        return "recovered"
    return None


def addresses(results: tuple[ProbeResult, ...]) -> list[tuple[Family, str]]:
    """Whom to trace toward: per family, the first address whose probe failed (the failing
    one), else the first dialled."""
    out: list[tuple[Family, str]] = []
    for r in results:
        failed = next((a.address for a in r.addresses if not a.success), None)
        address = failed or r.address
        if address is not None and not r.skipped:
            out.append((r.family, address))
    return out


class Tracer:
    """Starts the traces of verdict changes within the budget, and records what they found."""

    def __init__(self, store: Store, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.clock = clock
        self.cfg = TraceConfig()
        self.env = ProbeEnv()
        self._started: deque[float] = deque()
        """When the traces of the last minute started."""
        self._last: dict[tuple[str, str], float] = {}
        """(target, direction) -> when its last trace started."""
        self._tasks: set[asyncio.Task[None]] = set()

    def configure(self, cfg: TraceConfig, env: ProbeEnv) -> None:
        self.cfg, self.env = cfg, env

    @property
    def running(self) -> int:
        return len(self._tasks)

    def on_event(self, event: Event, target: Target) -> None:
        """A verdict change was recorded: trace it if it is one to trace and the budget and
        the target's cooldown allow (on the running loop; returns at once)."""
        way = direction(event)
        if way is None or not self.cfg.on_verdict_change:
            return
        pairs = addresses(event.results)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # judged outside a loop (a test of verdicts alone): no trace
            return
        if not pairs:
            return
        now = self.clock()
        key = (target.name, way)
        last = self._last.get(key)
        if last is not None and now - last < self.cfg.cooldown:
            self.store.trace_runs["cooldown"] += 1
            return
        while self._started and now - self._started[0] >= WINDOW:
            self._started.popleft()
        if len(self._started) >= self.cfg.budget:
            self.store.trace_runs["over_budget"] += 1
            return
        self._started.append(now)
        self._last[key] = now
        task = loop.create_task(self._run(event, target, pairs, way))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self, event: Event, target: Target, pairs: list[tuple[Family, str]], way: str
    ) -> None:
        failed: tuple[Family, ...] = ("ipv6",) if way == "failed" else ()
        try:
            result = await trace_target(
                target.name,
                pairs,
                settings(self.cfg),
                self.env,
                port=target.port,
                vantage_hops=self.cfg.vantage_hops,
                service_failed=failed,
            )
        except Exception:  # a bug: said, counted, and the service goes on
            log.exception("trace of %s failed", target.name)
            self.store.trace_runs["failed"] += 1
            return
        self.record(event, target, result)

    def record(self, event: Event, target: Target, result: TargetTrace) -> None:
        ran = any(t.path is not None for t in result.traces)
        self.store.trace_runs["traced" if ran else "failed"] += 1
        if target.name not in self.store.targets:
            return  # removed by a reload while it ran
        for family in result.families():
            self.store.path_blame[(target.name, family)] = result.blame(family)
        self.store.events.add_trace(event, result)
        log.info(
            "trace of %s done",
            target.name,
            extra={
                "fields": {
                    "event": "trace_done",
                    "target": target.name,
                    "probe": event.probe,
                    "about": event.seq,
                    **{f"blame_{f}": result.blame(f) for f in result.families()},
                }
            },
        )

    async def close(self) -> None:
        """Cancel the traces still running (the process is stopping)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
