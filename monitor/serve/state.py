"""The vantage's state between scrapes: the latest result per (target, probe, family), the
latest parity per (target, probe), counters and histograms. Only `probe serve` writes it, from
one event loop (no locks needed); the exporter, the status page and the API read a `Snapshot`,
which is cheap to take on the loop (shallow copies of dicts of immutable values) and safe to
read from another thread while the loop goes on writing the store.
"""

from __future__ import annotations

import bisect
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from monitor.engine.parity import Parity
from monitor.engine.report import Report
from monitor.engine.vantage import VantageCheck, nothing_works
from monitor.serve.events import Event, EventLog
from probes import kinds
from probes.base import FAMILIES, ErrorKind, Family, ProbeKind, ProbeResult, Target

# 1 ms to 10 s: loopback labs to intercontinental TLS handshakes.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
LAG_BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0)

ResultKey = tuple[str, ProbeKind, Family]
PairKey = tuple[str, ProbeKind]


@dataclass(slots=True)
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        if not self.counts:
            self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.count += 1

    def observed(self, value: float) -> Histogram:
        """A new histogram with `value` observed: the store replaces rather than mutates its
        per-job histograms, so a snapshot may hold the old one while the loop records."""
        h = Histogram(self.buckets, list(self.counts), self.total, self.count)
        h.observe(value)
        return h

    def copy(self) -> Histogram:
        return Histogram(self.buckets, list(self.counts), self.total, self.count)

    def cumulative(self) -> list[tuple[str, float]]:
        out, running = [], 0
        for bound, n in zip(self.buckets, self.counts, strict=True):
            running += n
            out.append((format(bound, "g"), float(running)))
        out.append(("+Inf", float(self.count)))
        return out


@dataclass(slots=True)
class Store:
    vantage: str
    site: str = ""
    """The `site` label; empty: the vantage name."""
    shard: int = 0
    shards: int = 1
    """This process probes shard `shard` (from 0) of `shards` of the vantage's targets."""
    targets: dict[str, Target] = field(default_factory=dict)
    latest: dict[ResultKey, ProbeResult] = field(default_factory=dict)
    parity: dict[PairKey, Parity] = field(default_factory=dict)
    runs: Counter[ResultKey] = field(default_factory=Counter)
    errors: Counter[tuple[str, ProbeKind, Family, str]] = field(default_factory=Counter)
    latency: dict[ResultKey, Histogram] = field(default_factory=dict)
    lag: Histogram = field(default_factory=lambda: Histogram(LAG_BUCKETS))
    skipped: Counter[PairKey] = field(default_factory=Counter)
    ip_ranges_sync: float | None = None
    """syncToken (Unix seconds) of the AWS ranges the results are attributed with."""
    job_failures: Counter[str] = field(default_factory=Counter)
    """Jobs that crashed or hung (by reason), from the scheduler."""
    vantage_check: VantageCheck = field(default_factory=lambda: VantageCheck(ipv6=None))
    reload_ok: bool = True
    reload_time: float = field(default_factory=time.time)
    started: float = field(default_factory=time.time)
    notes: tuple[str, ...] = ()
    offline: str | None = None
    """Why this vantage cannot probe at all (no DNS server answered in the last window)."""
    configured: bool = False
    """A configuration has been applied (until then nothing is ready, however empty)."""
    before_scrape: Callable[[], None] | None = None
    """Set by the service: pull scheduler figures in just before a scrape or API read."""
    counted: dict[tuple[str, ProbeKind, Family, str], float] = field(default_factory=dict)
    """The kinds' own counters (`Kind.metrics`), per (target, probe, family, metric name)."""
    events: EventLog = field(default_factory=EventLog)
    """The verdict changes, with their evidence (monitor/serve/events.py)."""
    external_url: str = ""
    """Where people reach this process (config `external_url`), for links from alerts."""
    trace_runs: Counter[str] = field(default_factory=Counter)
    """Traces on a verdict change, by result (monitor/serve/tracing.py, TRACE_RESULTS)."""
    path_blame: dict[tuple[str, Family], str] = field(default_factory=dict)
    """The blame of the latest trace per (target, family)."""

    def set_targets(self, targets: dict[str, Target]) -> None:
        """New configuration: forget every series of targets that are gone (or lost a probe)."""
        self.targets = dict(targets)
        self.configured = True
        keep = {(t.name, p) for t in targets.values() for p in t.probes}
        for store in (self.latest, self.runs, self.latency):
            for key in [k for k in store if (k[0], k[1]) not in keep]:
                del store[key]
        for ekey in [k for k in self.errors if (k[0], k[1]) not in keep]:
            del self.errors[ekey]
        for pkey in [k for k in self.parity if k not in keep]:
            del self.parity[pkey]
        for pkey in [k for k in self.skipped if k not in keep]:
            del self.skipped[pkey]
        for ckey in [k for k in self.counted if (k[0], k[1]) not in keep]:
            del self.counted[ckey]
        for bkey in [k for k in self.path_blame if k[0] not in targets]:
            del self.path_blame[bkey]

    def record(self, results: list[ProbeResult], parity: Parity | None = None) -> Parity | None:
        """Store one tick of a (target, probe): its results (never none) replace the job's (a
        kind run once per target files its one result under the family it ended on), and its
        verdict (None for such a kind: it has none). Returns the previous parity (for flip
        logs)."""
        target, probe = results[0].target, results[0].probe
        t = self.targets.get(target)
        if t is None or probe not in t.probes:
            return None  # removed by a reload while it ran
        spec = kinds.get(probe)
        for family in FAMILIES:
            if not any(r.family == family for r in results):
                self.latest.pop((target, probe, family), None)
        for r in results:
            key = (r.target, r.probe, r.family)
            self.latest[key] = r
            if r.skipped:
                continue
            self.runs[key] += 1
            for m in spec.metrics:
                if m.type == "counter" and isinstance(v := m.value(r), int | float):
                    ckey = (*key, m.name)
                    self.counted[ckey] = self.counted.get(ckey, 0.0) + v
            if r.error is not None:
                self.errors[(r.target, r.probe, r.family, str(r.error.kind))] += 1
            elif r.success and self._compared_latency(t, spec):
                h = self.latency.get(key) or Histogram(LATENCY_BUCKETS)
                self.latency[key] = h.observed(r.duration_seconds)
        if parity is None:
            return None
        pkey = (target, probe)
        previous = self.parity.get(pkey)
        self.parity[pkey] = parity
        return previous

    @staticmethod
    def _compared_latency(t: Target, kind: kinds.Kind) -> bool:
        """Latencies the histogram (and its IPv6-over-IPv4 alerts) compares across families:
        not the dns probe of a host (no `zone`), which times A against AAAA lookups, not
        compared (docs/probes.md), nor a kind run once over both families (the race)."""
        return kind.per_family and not (kind.name == "dns" and t.zone is None)

    @property
    def ready(self) -> bool:
        """Every (target, probe) has a verdict: the first round is done."""
        return _ready(self.configured, self.targets, self.latest)

    def ipv6_addresses(self) -> list[str]:
        return [
            r.address
            for (_, _, fam), r in self.latest.items()
            # A DNS64-synthesized AAAA says nothing about this host's own IPv6.
            if fam == "ipv6"
            and r.address
            and not (r.error and r.error.kind is ErrorKind.DNS_NAT64_SYNTHESIZED)
        ]

    def report(self) -> Report:
        """The latest result of every job, as one report (the JSON of `probe run`)."""
        return self.snapshot().report()

    def snapshot(self) -> Snapshot:
        """The store as it is now, for a reader in another thread. Costs shallow copies of
        its dicts, not of their values: every value in them is immutable or, for the per-job
        histograms, replaced and never changed once stored."""
        return Snapshot(
            taken=time.time(),
            vantage=self.vantage,
            site=self.site,
            targets=dict(self.targets),
            latest=dict(self.latest),
            parity=dict(self.parity),
            runs=dict(self.runs),
            errors=dict(self.errors),
            latency=dict(self.latency),
            lag=self.lag.copy(),
            skipped=dict(self.skipped),
            ip_ranges_sync=self.ip_ranges_sync,
            job_failures=dict(self.job_failures),
            vantage_check=self.vantage_check,
            reload_ok=self.reload_ok,
            reload_time=self.reload_time,
            started=self.started,
            notes=self.notes,
            offline=self.offline,
            configured=self.configured,
            counted=dict(self.counted),
            shard=self.shard,
            shards=self.shards,
            events=self.events.events(),
            events_total=self.events.total,
            events_dropped=self.events.dropped,
            events_write_errors=self.events.write_errors,
            external_url=self.external_url,
            trace_runs=dict(self.trace_runs),
            path_blame=dict(self.path_blame),
            vantage_probing_ok=not nothing_works(self.latest.values()),
        )


def _ready(
    configured: bool, targets: Mapping[str, Target], latest: Mapping[ResultKey, ProbeResult]
) -> bool:
    """Every job has its results (and a verdict, which comes with them, if its kind has one)."""
    return configured and all(
        any((t.name, p, f) in latest for f in FAMILIES) for t in targets.values() for p in t.probes
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """What the store held at `taken`: read by the exporter, the API and the status page,
    outside the event loop. Nobody writes it (the histograms in it included)."""

    taken: float
    """Unix time the snapshot was taken."""
    vantage: str
    site: str
    targets: Mapping[str, Target]
    latest: Mapping[ResultKey, ProbeResult]
    parity: Mapping[PairKey, Parity]
    runs: Mapping[ResultKey, int]
    errors: Mapping[tuple[str, ProbeKind, Family, str], int]
    latency: Mapping[ResultKey, Histogram]
    lag: Histogram
    skipped: Mapping[PairKey, int]
    ip_ranges_sync: float | None
    job_failures: Mapping[str, int]
    vantage_check: VantageCheck
    reload_ok: bool
    reload_time: float
    started: float
    notes: tuple[str, ...]
    offline: str | None
    configured: bool
    counted: Mapping[tuple[str, ProbeKind, Family, str], float]
    shard: int = 0
    shards: int = 1
    """This process probes shard `shard` (from 0) of `shards` of the vantage's targets."""
    events: tuple[Event, ...] = ()
    """The verdict changes kept, oldest first."""
    events_total: int = 0
    """Events recorded since start."""
    events_dropped: int = 0
    """Events pushed out of the ring at its limit."""
    events_write_errors: int = 0
    """Events not appended to the events file."""
    external_url: str = ""
    """Where people reach this process (the `external_url` label of the vantage info metric)."""
    trace_runs: Mapping[str, int] = field(default_factory=dict)
    """Traces on a verdict change, by result."""
    path_blame: Mapping[tuple[str, Family], str] = field(default_factory=dict)
    """The blame of the latest trace per (target, family)."""
    vantage_probing_ok: bool = True
    """False when the latest result of every job (3 targets or more) failed, over both
    families: nothing works from here, so per-target failures blame
    the vantage (alert DualstackVantageCannotProbe). True before any result, and as soon as
    one job works over either family."""

    @property
    def ready(self) -> bool:
        """Every (target, probe) had a verdict: the first round was done."""
        return _ready(self.configured, self.targets, self.latest)

    def report(self) -> Report:
        """The latest result of every job, as one report (the JSON of `probe run`)."""
        started = min((r.started for r in self.latest.values()), default=self.started)
        return Report(
            vantage=self.vantage,
            started=started,
            vantage_check=self.vantage_check,
            targets=tuple(self.targets.values()),
            results=tuple(r for _, r in sorted(self.latest.items())),
            parity=tuple(p for _, p in sorted(self.parity.items())),
            notes=self.notes,
            offline=self.offline,
            shard=self.shard,
            shards=self.shards,
        )
