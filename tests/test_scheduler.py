"""The scheduler with an injected clock: spreading, no drift over a simulated day, overrun
skips, isolation of raising and hanging jobs, the concurrency bound, and reloads."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
from collections import defaultdict

import pytest

from monitor.serve.scheduler import Scheduler, job_offset
from probes.base import ProbeKind, Target


class FakeClock:
    """Virtual time: advance() jumps to the next sleeper once every task has settled."""

    def __init__(self, start: float = 1_000.0) -> None:
        self.t = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def now(self) -> float:
        return self.t

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self.t:
            await asyncio.sleep(0)
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (deadline, next(self._seq), fut))
        await fut

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self.t + seconds)

    @staticmethod
    async def settle() -> None:
        for _ in range(30):
            await asyncio.sleep(0)

    async def advance_to(self, end: float) -> None:
        while True:
            await self.settle()
            while self._sleepers and self._sleepers[0][2].done():
                heapq.heappop(self._sleepers)  # cancelled sleeps
            if not self._sleepers or self._sleepers[0][0] > end:
                self.t = end
                await self.settle()
                return
            deadline = self._sleepers[0][0]
            self.t = deadline
            while self._sleepers and self._sleepers[0][0] <= deadline:
                fut = heapq.heappop(self._sleepers)[2]
                if not fut.done():
                    fut.set_result(None)


def target(
    name: str,
    interval: float = 30.0,
    probes: tuple[ProbeKind, ...] = ("tcp",),
    timeout: float = 5.0,
) -> Target:
    return Target(
        name=name,
        service="custom",
        region="",
        host=f"{name}.example",
        probes=probes,
        interval=interval,
        timeout=timeout,
    )


class Recorder:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.starts: dict[tuple[str, str], list[float]] = defaultdict(list)
        self.active = 0
        self.max_active = 0
        self.durations: dict[str, float] = {}
        self.raises: set[str] = set()

    async def __call__(self, t: Target, probe: ProbeKind) -> None:
        self.starts[(t.name, probe)].append(self.clock.now())
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if t.name in self.raises:
                raise RuntimeError("probe bug")
            await self.clock.sleep(self.durations.get(t.name, 0.5))
        finally:
            self.active -= 1


async def start(sched: Scheduler) -> asyncio.Task[None]:
    return asyncio.create_task(sched.run())


async def stop(sched: Scheduler, task: asyncio.Task[None]) -> None:
    sched.stop()
    await asyncio.wait_for(task, 5)


async def test_starts_are_spread_over_the_interval() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    sched = Scheduler(rec, clock=clock, jitter=0.0, rng=random.Random(1))
    sched.set_targets([target(f"t{i}", 60.0) for i in range(120)])
    task = await start(sched)
    await clock.advance_to(clock.t + 60.0)
    await stop(sched, task)
    firsts = sorted(s[0] - sched.epoch for s in rec.starts.values())
    assert len(firsts) == 120
    buckets = [0] * 6
    for f in firsts:
        buckets[int(f // 10)] += 1
    assert all(8 <= b <= 32 for b in buckets), buckets  # ~20 each, never a herd
    assert sorted(job_offset((f"t{i}", "tcp"), 60.0) for i in range(120)) == pytest.approx(firsts)


async def test_no_drift_over_a_simulated_day() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    sched = Scheduler(rec, clock=clock, jitter=0.01, max_jitter=0.2, rng=random.Random(7))
    sched.set_targets([target("a", 30.0), target("b", 45.0, probes=("tls", "http2"))])
    task = await start(sched)
    day = 86_400.0
    await clock.advance_to(clock.t + day)
    await stop(sched, task)
    for key, starts in rec.starts.items():
        interval = 30.0 if key[0] == "a" else 45.0
        assert abs(len(starts) - day / interval) <= 1
        base = sched.epoch + job_offset(key, interval)
        for k, s in enumerate(starts):
            # Every start is on the grid plus at most the jitter: no accumulated error.
            assert 0.0 <= s - (base + k * interval) <= 0.2 + 1e-6
        assert sched.stats.skipped == {}


async def test_overrunning_job_is_skipped_not_doubled() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    rec.durations["slow"] = 25.0  # 2.5 intervals, under the hard timeout
    sched = Scheduler(rec, clock=clock, jitter=0.0, hard_timeout=lambda t: 100.0)
    sched.set_targets([target("slow", 10.0), target("fast", 10.0)])
    task = await start(sched)
    await clock.advance_to(clock.t + 100.0)
    await stop(sched, task)
    slow = rec.starts[("slow", "tcp")]
    assert all(b - a >= 25.0 for a, b in itertools.pairwise(slow))  # never two at once
    assert len(slow) in (3, 4)  # one run per 30 s (3 slots), skipping the 2 in between
    assert sched.stats.skipped[("slow", "tcp")] >= 5
    assert len(rec.starts[("fast", "tcp")]) == 10
    assert ("fast", "tcp") not in sched.stats.skipped


async def test_raising_and_hanging_jobs_are_isolated() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    rec.raises.add("buggy")
    rec.durations["stuck"] = 1e9
    failures: list[tuple[str, str]] = []
    sched = Scheduler(
        rec,
        clock=clock,
        jitter=0.0,
        on_failure=lambda t, p, e: failures.append((t.name, type(e).__name__)),
    )
    sched.set_targets(
        [target("buggy", 10.0), target("stuck", 10.0, timeout=2.0), target("fine", 10.0)]
    )
    task = await start(sched)
    await clock.advance_to(clock.t + 60.0)
    assert not task.done()  # the loop survived both
    await stop(sched, task)
    assert len(rec.starts[("fine", "tcp")]) == 6
    assert len(rec.starts[("buggy", "tcp")]) == 6
    assert sched.stats.crashed == 6
    # The stuck job is cut at its hard timeout (2 * 2 s + 1 s) and runs again next slot.
    assert len(rec.starts[("stuck", "tcp")]) == 6
    assert sched.stats.hung >= 5
    assert ("buggy", "RuntimeError") in failures and ("stuck", "TimeoutError") in failures


async def test_concurrency_bound_and_lateness() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    sched = Scheduler(rec, clock=clock, concurrency=3, jitter=0.0, epoch=clock.t)
    # Same name prefix, same interval: many jobs, each 0.5 s long, all in one 1 s interval.
    sched.set_targets([target(f"j{i}", 1.0) for i in range(12)])
    task = await start(sched)
    await clock.advance_to(clock.t + 5.0)
    await stop(sched, task)
    assert rec.max_active == 3
    lateness = sched.stats.take_lateness()
    assert lateness and max(lateness) > 0.0  # queued behind the bound: measured, not hidden
    assert sched.stats.take_lateness() == []


async def test_reload_adds_and_removes_without_touching_others() -> None:
    async def run(reload: bool) -> dict[tuple[str, str], list[float]]:
        clock = FakeClock()
        rec = Recorder(clock)
        sched = Scheduler(rec, clock=clock, jitter=0.0, epoch=clock.t)
        sched.set_targets([target("keep", 20.0), target("drop", 20.0)])
        task = await start(sched)
        await clock.advance_to(clock.t + 50.0)
        if reload:
            added, removed = sched.set_targets(
                [target("keep", 20.0), target("new", 20.0, probes=("tcp", "tls"))]
            )
            assert added == {("new", "tcp"), ("new", "tls")}
            assert removed == {("drop", "tcp")}
        await clock.advance_to(clock.t + 100.0)
        await stop(sched, task)
        return dict(rec.starts)

    plain, reloaded = await run(False), await run(True)
    assert reloaded[("keep", "tcp")] == plain[("keep", "tcp")]  # same slots, same count
    assert len(reloaded[("drop", "tcp")]) < len(plain[("drop", "tcp")])
    assert all(s <= 1_050.0 for s in reloaded[("drop", "tcp")])
    assert all(s > 1_050.0 for s in reloaded[("new", "tcp")])
    assert len(reloaded[("new", "tcp")]) == 5


async def test_drain_waits_then_cancels() -> None:
    clock = FakeClock()
    rec = Recorder(clock)
    rec.durations["long"] = 1e9
    sched = Scheduler(rec, clock=clock, jitter=0.0, hard_timeout=lambda t: 1e12)
    sched.set_targets([target("long", 10.0)])
    task = await start(sched)
    await clock.advance_to(clock.t + 11.0)
    assert len(sched.in_flight()) == 1
    cancelled = await sched.drain(timeout=0.05)
    assert cancelled == 1 and sched.in_flight() == []
    await asyncio.wait_for(task, 5)


async def test_on_the_real_clock_the_loop_timers_cut_and_wake() -> None:
    """Without an injected clock the scheduler waits on the loop's own timers (no tasks per
    wake or per job): a job is still dispatched on time, cut at its hard timeout, isolated."""
    starts: list[str] = []
    failures: list[tuple[str, str]] = []

    async def run(t: Target, probe: ProbeKind) -> None:
        starts.append(t.name)
        if t.name == "stuck":
            await asyncio.sleep(60)
        if t.name == "buggy":
            raise RuntimeError("probe bug")

    sched = Scheduler(
        run,
        jitter=0.0,
        hard_timeout=lambda t: 0.2,
        on_failure=lambda t, p, e: failures.append((t.name, type(e).__name__)),
    )
    sched.set_targets([target(n, 0.5) for n in ("stuck", "buggy", "fine")])
    task = await start(sched)
    await asyncio.sleep(1.2)  # the real clock is the point: two or three slots each
    await stop(sched, task)
    await sched.drain(1.0)
    assert 2 <= starts.count("fine") <= 3
    # each stuck run is cut 0.2 s in; the last may still be running when the test stops
    assert 1 <= starts.count("stuck") - 1 <= sched.stats.hung <= starts.count("stuck")
    assert sched.stats.crashed == starts.count("buggy") >= 2
    assert ("stuck", "TimeoutError") in failures and ("buggy", "RuntimeError") in failures
