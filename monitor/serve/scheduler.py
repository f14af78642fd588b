"""Drive every (target, probe) job on its interval from one asyncio loop, both families per tick.

Starts sit on a fixed grid (epoch + per-job offset + k * interval, plus a small per-run jitter),
so load is spread and nothing drifts over hours. A job still running at its next slot is skipped
and counted; a bound caps concurrency; a job that raises or hangs is recorded, never fatal.
The clock is injected, so tests drive a simulated day without real sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from probes.base import ProbeKind, Target

log = logging.getLogger(__name__)

JobKey = tuple[str, ProbeKind]


class Clock(Protocol):
    def now(self) -> float:
        """Monotonic seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None: ...


class MonotonicClock:
    def now(self) -> float:
        return time.monotonic()

    async def sleep_until(self, deadline: float) -> None:
        await asyncio.sleep(max(0.0, deadline - time.monotonic()))


def job_offset(key: tuple[str, str], interval: float) -> float:
    """Where in its interval a job starts: stable across restarts and reloads, spread evenly."""
    digest = hashlib.sha256(f"{key[0]}\0{key[1]}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 * interval


@dataclass(slots=True)
class Job:
    key: JobKey
    target: Target
    interval: float
    offset: float
    k: int = -1
    """Index of the next slot on this job's grid: slot = epoch + offset + k * interval."""
    slot: float = 0.0
    """The grid time of the next run (jitter excluded)."""
    due: float = 0.0
    """slot + this run's jitter: when it should start."""
    seq: int = 0
    """Identifies this job's live heap entry; older entries are stale."""
    task: asyncio.Task[None] | None = None

    @property
    def probe(self) -> ProbeKind:
        return self.key[1]


@dataclass(slots=True)
class SchedulerStats:
    """What the exporter shows about the scheduler itself."""

    lateness: list[float] = field(default_factory=list)
    """Start lateness samples not yet taken by the exporter (seconds)."""
    skipped: dict[JobKey, int] = field(default_factory=dict)
    crashed: int = 0
    """Runs that raised (exported as job failures, reason="crashed")."""
    hung: int = 0
    """Runs cut at the hard timeout (reason="hung")."""

    def take_lateness(self) -> list[float]:
        out, self.lateness = self.lateness, []
        return out


RunJob = Callable[[Target, ProbeKind], Awaitable[None]]
OnFailure = Callable[[Target, ProbeKind, BaseException], None]


class Scheduler:
    def __init__(
        self,
        run_job: RunJob,
        *,
        clock: Clock | None = None,
        concurrency: int = 64,
        jitter: float = 0.01,
        max_jitter: float = 1.0,
        hard_timeout: Callable[[Target], float] = lambda t: 2 * t.timeout + 1.0,
        on_failure: OnFailure | None = None,
        rng: random.Random | None = None,
        epoch: float | None = None,
    ) -> None:
        self._run_job = run_job
        self.clock: Clock = clock or MonotonicClock()
        self._real_clock = type(self.clock) is MonotonicClock
        """Time is the loop's own (monotonic): its timers can stand for sleep_until."""
        self._sem = asyncio.Semaphore(concurrency)
        self._jitter = jitter
        self._max_jitter = max_jitter
        self._hard_timeout = hard_timeout
        self._on_failure = on_failure
        self._rng = rng or random.Random()
        self.epoch = self.clock.now() if epoch is None else epoch
        self.jobs: dict[JobKey, Job] = {}
        self._heap: list[tuple[float, int, JobKey]] = []
        self._seq = 0
        self._wake = asyncio.Event()
        self._stopping = False
        self.stats = SchedulerStats()

    # -- the job set -------------------------------------------------------------------------

    def set_targets(self, targets: Iterable[Target]) -> tuple[set[JobKey], set[JobKey]]:
        """Reconcile jobs with a new target list. Unchanged jobs keep their schedule and any
        run in flight; returns (added, removed). Raises ValueError, changing nothing, when a
        target's interval or timeout is not a positive finite number."""
        wanted: dict[JobKey, Target] = {}
        for t in targets:
            for value, what in ((t.interval, "interval"), (t.timeout, "timeout")):
                if not (math.isfinite(value) and value > 0):
                    raise ValueError(f"target {t.name}: {what} {value!r} is not a positive number")
            for probe in t.probes:
                wanted[(t.name, probe)] = t
        removed = set(self.jobs) - set(wanted)
        for key in removed:
            del self.jobs[key]  # a run in flight finishes; its heap entry is ignored
        added: set[JobKey] = set()
        now = self.clock.now()
        for key, target in wanted.items():
            job = self.jobs.get(key)
            if job is not None and job.interval == target.interval:
                job.target = target  # same slot, new settings from the next run on
                continue
            if job is None:
                added.add(key)
            job = Job(
                key=key,
                target=target,
                interval=target.interval,
                offset=job_offset(key, target.interval),
            )
            if key in self.jobs:  # new interval: a new slot, but never two runs at once
                job.task = self.jobs[key].task
            self.jobs[key] = job
            self._plan(job, after=now)
        self._wake.set()
        return added, removed

    def _plan(self, job: Job, *, after: float) -> None:
        """The first grid slot after `after` and after the current one. Slots are counted in
        whole intervals from the epoch (an integer index, no float accumulation): no drift."""
        base = self.epoch + job.offset
        job.k = max(job.k + 1, math.floor((after - base) / job.interval) + 1, 0)
        job.slot = base + job.k * job.interval
        spread = min(self._max_jitter, self._jitter * job.interval)
        job.due = job.slot + (self._rng.random() * spread if spread > 0 else 0.0)
        self._seq += 1
        job.seq = self._seq
        heapq.heappush(self._heap, (job.due, job.seq, job.key))

    # -- the loop ----------------------------------------------------------------------------

    async def run(self) -> None:
        """Dispatch due jobs until stop(); never returns early because of a job."""
        while not self._stopping:
            due = self._next_due()
            if due is None:
                await self._wait_wake(None)
                continue
            if due > self.clock.now():
                await self._wait_wake(due)
                continue
            self._dispatch_due()

    def _next_due(self) -> float | None:
        while self._heap:
            due, seq, key = self._heap[0]
            job = self.jobs.get(key)
            if job is None or job.seq != seq:
                heapq.heappop(self._heap)  # stale entry: removed or rescheduled job
                continue
            return due
        return None

    async def _wait_wake(self, deadline: float | None) -> None:
        self._wake.clear()
        if self._real_clock:
            # The loop's own timer, not two tasks a wake: this runs once per dispatch.
            with contextlib.suppress(TimeoutError):
                delay = None if deadline is None else max(0.0, deadline - self.clock.now())
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            return
        waker = asyncio.ensure_future(self._wake.wait())
        tasks: set[asyncio.Future[Any]] = {waker}
        if deadline is not None:
            tasks.add(asyncio.ensure_future(self.clock.sleep_until(deadline)))
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _dispatch_due(self) -> None:
        now = self.clock.now()
        while self._heap and self._heap[0][0] <= now:
            _, seq, key = heapq.heappop(self._heap)
            job = self.jobs.get(key)
            if job is None or job.seq != seq:
                continue
            if job.task is not None and not job.task.done():
                self.stats.skipped[key] = self.stats.skipped.get(key, 0) + 1
                log.warning("job %s/%s still running at its next slot: skipped", *key)
            else:
                job.task = asyncio.create_task(self._execute(job, job.due), name=f"job {key}")
            # A loop that was held up (suspend) moves on to the next future slot instead of
            # bursting through the missed ones.
            self._plan(job, after=now)

    async def _execute(self, job: Job, due: float) -> None:
        async with self._sem:
            self.stats.lateness.append(max(0.0, self.clock.now() - due))
            target = job.target
            try:
                await self._bounded(self._run_job(target, job.probe), self._hard_timeout(target))
            except TimeoutError as exc:
                self.stats.hung += 1
                log.error("job %s/%s exceeded its hard timeout", *job.key)
                self._failed(target, job.probe, exc)
            except Exception as exc:  # isolation: a crashing probe is a record, not the end
                self.stats.crashed += 1
                log.exception("job %s/%s crashed", *job.key)
                self._failed(target, job.probe, exc)

    async def _bounded(self, work: Awaitable[None], limit: float) -> None:
        """Await `work` for at most `limit` seconds of the injected clock (not the loop's)."""
        if self._real_clock:  # the loop's timer is that clock: no task and timer task per job
            try:
                async with asyncio.timeout(limit) as cm:
                    await work
            except TimeoutError:
                if cm.expired():
                    raise TimeoutError(f"no result within {limit:g} s") from None
                raise
            return
        task = asyncio.ensure_future(work)
        timer = asyncio.ensure_future(self.clock.sleep_until(self.clock.now() + limit))
        try:
            await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            if not task.done():
                task.cancel()
            await asyncio.gather(task, timer, return_exceptions=True)
        if task.cancelled():
            raise TimeoutError(f"no result within {limit:g} s")
        task.result()

    def _failed(self, target: Target, probe: ProbeKind, exc: BaseException) -> None:
        if self._on_failure is not None:
            try:
                self._on_failure(target, probe, exc)
            except Exception:  # the failure hook must not take the loop down either
                log.exception("failure hook raised")

    # -- shutdown ----------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    def in_flight(self) -> list[asyncio.Task[None]]:
        return [j.task for j in self.jobs.values() if j.task is not None and not j.task.done()]

    async def drain(self, timeout: float) -> int:
        """Stop starting jobs, give the running ones `timeout` seconds, cancel the rest.
        Returns how many had to be cancelled."""
        self.stop()
        running = self.in_flight()
        if not running:
            return 0
        _done, pending = await asyncio.wait(running, timeout=timeout)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        return len(pending)
