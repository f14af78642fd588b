"""Evidence kept at every verdict change of `probe serve`: a bounded ring of events in memory,
optionally appended to a JSON Lines file rotated by size. Limits: the ring is lost on restart;
the file keeps one old generation (`PATH.1`); a write error is counted, never raised.

A trace started by a verdict change (monitor/serve/tracing.py) ends after its event is
written: it follows as an event of its own, of type `trace`, whose `about` is the `seq` of the
verdict change, so that the ring and the append-only file say it the same way.

Writes are synchronous on the event loop: an event is a few kilobytes and verdicts change
rarely, so a thread would cost more than the write.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO, Literal

from monitor.engine.parity import Parity, Verdict
from monitor.engine.report import iso_utc, parity_json, result_json
from monitor.engine.trace import TargetTrace
from probes.base import ProbeResult, Target

log = logging.getLogger("dualstack.vantage")

DEFAULT_KEEP = 1000
"""Events kept in memory: a verdict flapping every interval for a day is 2,880 of one job."""
DEFAULT_MAX_BYTES = 10 * 1024 * 1024
"""Size at which the events file is rotated (two generations: at most about twice this)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Event:
    """One verdict change of a (target, probe), with what both families saw at that moment."""

    time: float
    """Unix time the new verdict was recorded."""
    vantage: str
    site: str
    target: Target | None
    """The target as configured when it changed (None: gone from the configuration)."""
    parity: Parity
    """The new verdict, its reason and the differences it was judged on."""
    previous: Verdict | None
    """The verdict before; None for the first verdict of the job."""
    results: tuple[ProbeResult, ...]
    """The results the new verdict was judged on, IPv4 first."""
    seq: int = 0
    """Its number among the events since the process started, from 1."""
    type: Literal["verdict_change", "trace"] = "verdict_change"
    """`trace`: the paths traced because of the verdict change `about` (its target, probe,
    verdicts and parity are that change's; no results)."""
    about: int | None = None
    """The `seq` of the verdict change a trace event belongs to."""
    trace: TargetTrace | None = None
    """Both families' paths and their blame (trace events)."""

    @property
    def name(self) -> str:
        return self.parity.target

    @property
    def probe(self) -> str:
        return self.parity.probe

    def to_json(self) -> dict[str, Any]:
        """The event as the API and the file give it; results as `probe run --format json`."""
        out = {
            "seq": self.seq,
            "type": self.type,
            "time": iso_utc(self.time, ms=True),
            "vantage": self.vantage,
            "site": self.site,
            "target": self.parity.target,
            "probe": self.parity.probe,
            "from": str(self.previous) if self.previous is not None else None,
            "to": str(self.parity.verdict),
            "reason": self.parity.reason,
            "parity": parity_json(self.parity, self.target),
            "results": [result_json(r, self.target) for r in self.results],
        }
        if self.type == "trace":
            out["about"] = self.about
            out["trace"] = self.trace.to_json() if self.trace else None
        return out


def is_event(previous: Verdict | None, new: Verdict) -> bool:
    """A change is an event; so is a job's first verdict unless `ok` or `skipped`: a fresh
    vantage with a broken target keeps its evidence, while a healthy start (or one that
    compares nothing, e.g. `families: [ipv4]`) does not fill the ring with one per job."""
    if previous is None:
        return new not in (Verdict.OK, Verdict.SKIPPED)
    return previous is not new


class EventLog:
    """The ring of the last `keep` events, and the optional JSON Lines file."""

    def __init__(
        self,
        *,
        keep: int = DEFAULT_KEEP,
        file: str | None = None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self._ring: deque[Event] = deque(maxlen=keep)
        self._view: tuple[Event, ...] | None = ()
        """The ring as a tuple, made once per change (every snapshot asks for it)."""
        self._file = file
        self._max_bytes = max_bytes
        self._out: BinaryIO | None = None
        self._failing = False
        """The last write failed (logged once; the next success says it is over)."""
        self.total = 0
        """Events recorded since start."""
        self.dropped = 0
        """Events pushed out of the ring at its limit."""
        self.write_errors = 0
        """Events that could not be appended to the file."""

    @property
    def keep(self) -> int:
        return self._ring.maxlen or 0

    @property
    def file(self) -> str | None:
        return self._file

    def configure(self, *, keep: int, file: str | None, max_bytes: int) -> None:
        """A reload: the newest events stay (as many as fit), the file may change."""
        if keep != self.keep:
            self.dropped += max(0, len(self._ring) - keep)
            self._ring = deque(self._ring, maxlen=keep)
            self._view = None
        if file != self._file:
            self._close()
            self._file, self._failing = file, False
        self._max_bytes = max_bytes

    def add(
        self,
        *,
        vantage: str,
        site: str,
        target: Target | None,
        parity: Parity,
        previous: Verdict | None,
        results: Iterable[ProbeResult],
    ) -> Event:
        """Record one event now (on the injected clock), in the ring and the file."""
        return self._keep(
            Event(
                time=self.clock(),
                vantage=vantage,
                site=site,
                target=target,
                parity=parity,
                previous=previous,
                results=tuple(results),
                seq=self.total + 1,
            )
        )

    def add_trace(self, about: Event, trace: TargetTrace) -> Event:
        """Record the trace a verdict change started, now that it is done."""
        return self._keep(
            dataclasses.replace(
                about,
                time=self.clock(),
                results=(),
                seq=self.total + 1,
                type="trace",
                about=about.seq,
                trace=trace,
            )
        )

    def _keep(self, event: Event) -> Event:
        if len(self._ring) == self._ring.maxlen:
            self.dropped += 1
        self._ring.append(event)
        self._view = None
        self.total += 1
        if self._file is not None:
            self._write(event)
        return event

    def events(self) -> tuple[Event, ...]:
        """The ring, oldest first (a copy: the caller may keep it while events are added)."""
        if self._view is None:
            self._view = tuple(self._ring)
        return self._view

    def _write(self, event: Event) -> None:
        line = json.dumps(event.to_json(), default=str, separators=(",", ":")) + "\n"
        data = line.encode("utf-8")
        try:
            out = self._open()
            if out.tell() and out.tell() + len(data) > self._max_bytes:
                out = self._rotate()
            out.write(data)
            out.flush()
        except OSError as exc:
            self._close()  # reopened at the next event: the directory may come back
            self.write_errors += 1
            if not self._failing:
                self._failing = True
                log.error(
                    "cannot write the events file %s: %s (events stay in memory; "
                    "/metrics counts the lost lines)",
                    self._file,
                    exc.strerror or exc,
                    extra={"fields": {"event": "events_write_failed", "file": self._file}},
                )
            return
        if self._failing:
            self._failing = False
            log.info(
                "the events file is written again",
                extra={"fields": {"event": "events_write_recovered", "file": self._file}},
            )

    def _open(self) -> BinaryIO:
        """The file, opened for appending if it is not (its position is then its size)."""
        if self._out is None:
            assert self._file is not None
            self._out = open(self._file, "ab")  # noqa: SIM115 (kept open between events)
        return self._out

    def _rotate(self) -> BinaryIO:
        """PATH becomes PATH.1 (the older PATH.1 goes) and a new PATH is started."""
        assert self._file is not None
        self._close()
        os.replace(self._file, f"{self._file}.1")
        return self._open()

    def _close(self) -> None:
        if self._out is not None:
            out, self._out = self._out, None
            # what it held was flushed, or counted as lost already
            with contextlib.suppress(OSError):
                out.close()

    def close(self) -> None:
        self._close()
