"""Every metric `probe serve` exports, defined once: name, type, help, labels, and how its samples
come from a snapshot; a kind's own metrics are declared with the kind (`Kind.metrics`) and their
rows built here from the registry (`metrics()`). Label values come from configuration only,
never from what a peer sends."""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, TypeVar

from monitor import __version__
from monitor.engine.parity import VERDICTS
from monitor.serve.state import Histogram, Snapshot
from monitor.serve.tracing import TRACE_RESULTS
from probes import kinds as registry
from probes.base import FAMILIES, NO_REGION, ProbeResult
from probes.kinds import KindMetric
from probes.trace import BLAMES

PROBE_LABELS = ("vantage", "target", "service", "region", "probe", "family")
TARGET_LABELS = PROBE_LABELS[:4]
K = TypeVar("K", bound=tuple[str, ...])
Sample = tuple[Sequence[str], float | Histogram]
"""Label values (in the order of the label names) and a value, or a histogram."""
Samples = Callable[[Snapshot], Iterable[Sample]]
Type = Literal["gauge", "counter", "histogram"]


@dataclass(frozen=True, slots=True)
class Metric:
    """One metric family: what the exposition says of it and where its samples come from."""

    name: str
    """Without `_total` for a counter (prometheus_client adds it)."""
    help: str
    labels: tuple[str, ...]
    samples: Samples
    type: Type = "gauge"
    own: bool = False
    """A series of the process: with more than one shard, a `shard` label follows `vantage`
    (per-target series need none: each target is in one shard)."""

    def label_names(self, s: Snapshot) -> tuple[str, ...]:
        sharded = self.own and s.shards > 1
        return ("vantage", "shard", *self.labels[1:]) if sharded else self.labels


Value = Callable[[ProbeResult], float | Mapping[str, float] | None]


def per_result(
    name: str,
    help: str,
    value: Value,
    by: str = "",
    *,
    probe: bool = True,
    family: bool = True,
    of: tuple[str, ...] = (),
) -> Metric:
    """A gauge read by `value` from each job's latest result (skipped results have none): no
    series for None, one per key of a mapping (label `by`). `probe`, `family`: with those
    labels. `of`: only the results of these kinds (default: every kind's)."""
    labels = (
        *TARGET_LABELS,
        *(("probe",) if probe else ()),
        *(("family",) if family else ()),
        *filter(None, [by]),
    )

    def samples(s: Snapshot) -> Iterator[Sample]:
        for (target, kind, fam), r in sorted(s.latest.items()):
            if of and kind not in of:
                continue
            v = None if r.skipped else value(r)
            base = [*_target(s, target), *((kind,) if probe else ()), *((fam,) if family else ())]
            if isinstance(v, Mapping):
                yield from (([*base, key], x) for key, x in v.items())
            elif v is not None:
                yield base, v

    return Metric(name, help, labels, samples)


def _target(s: Snapshot, name: str) -> list[str]:
    t = s.targets.get(name)
    return [s.vantage, name, t.service if t else "", (t.region if t else "") or NO_REGION]


def own(
    name: str, help: str, samples: Samples, labels: tuple[str, ...] = (), type: Type = "gauge"
) -> Metric:
    """A metric of the process (labels: `vantage`, `shard` when sharded, `labels`)."""
    return Metric(name, help, ("vantage", *labels), samples, type, own=True)


def one(
    name: str, help: str, read: Callable[[Snapshot], float | Histogram], type: Type = "gauge"
) -> Metric:
    """A metric of the process with one series, its value read from the snapshot."""
    return own(name, help, lambda s: [(_own(s), read(s))], type=type)


def _own(s: Snapshot, *more: str) -> list[str]:
    return [s.vantage, str(s.shard), *more] if s.shards > 1 else [s.vantage, *more]


def _per_job(s: Snapshot, series: Mapping[K, float | Histogram]) -> Iterator[Sample]:
    """A series per key ((target, probe, family, ...)), in key order."""
    return (([*_target(s, key[0]), *key[1:]], series[key]) for key in sorted(series))


def _parity(s: Snapshot) -> Iterator[Sample]:
    for (name, probe), p in sorted(s.parity.items()):
        for verdict in VERDICTS:
            yield [*_target(s, name), probe, str(verdict)], float(p.verdict is verdict)


def counted(m: KindMetric, of: tuple[str, ...]) -> Metric:
    """A kind's counter (the Store adds up what `m.value` gives per result): a series per
    family for every target listing one of the kinds `of`, 0 until counted, so a share is
    defined at once."""
    labels = (*TARGET_LABELS, *(("probe",) if m.probe_label else ()), "family")

    def samples(s: Snapshot) -> Iterator[Sample]:
        for name, t in sorted(s.targets.items()):
            for kind in (k for k in of if k in t.probes):
                base = [*_target(s, name), *((kind,) if m.probe_label else ())]
                for f in FAMILIES:
                    yield [*base, f], s.counted.get((name, kind, f, m.name), 0)

    return Metric(m.name, m.help, labels, samples, "counter")


def _blame(s: Snapshot) -> Iterator[Sample]:
    for (name, family), blame in sorted(s.path_blame.items()):
        for label in BLAMES:
            yield [*_target(s, name), family, label], float(label == blame)


def kind_metrics() -> tuple[Metric, ...]:
    """The rows of the metrics the registered kinds declare (`Kind.metrics`), in kind order; a
    declaration shared by several kinds is one row over their results."""
    declared: dict[str, tuple[KindMetric, list[str]]] = {}
    for kind in registry.kinds():
        for m in kind.metrics:
            known, of = declared.setdefault(m.name, (m, []))
            if known is not m:
                raise ValueError(f"metric {m.name} is declared twice (kind {kind.name})")
            of.append(kind.name)
    return tuple(
        counted(m, tuple(of))
        if m.type == "counter"
        else per_result(
            m.name,
            m.help,
            m.value,
            m.by,
            probe=m.probe_label,
            family=m.family_label,
            of=tuple(of),
        )
        for m, of in declared.values()
    )


def _addresses(r: ProbeResult) -> Mapping[str, float] | None:
    ok = sum(1 for a in r.addresses if a.success)
    return {"ok": ok, "failed": len(r.addresses) - ok} if r.addresses else None


RESULTS: tuple[Metric, ...] = (
    per_result(
        "dualstack_probe_success",
        "1 if the last probe of this family succeeded.",
        lambda r: float(r.success),
    ),
    per_result(
        "dualstack_probe_duration_seconds",
        "Latency of the last probe (its measured phases; ICMP: mean RTT).",
        lambda r: r.duration_seconds,
    ),
    per_result(
        "dualstack_probe_phase_duration_seconds",
        "Duration of each phase of the last probe.",
        lambda r: dict(sorted(r.phases.items())),
        "phase",
    ),
    per_result(
        "dualstack_probe_last_run_timestamp_seconds",
        "Unix time the last probe started.",
        lambda r: r.started,
    ),
    per_result(
        "dualstack_probe_addresses",
        "Addresses of this family's answer the last probe dialled, by state (ok, failed).",
        _addresses,
        "state",
    ),
    per_result(
        "dualstack_address_in_aws_ranges",
        "1 if the address probed over this family is in a prefix of AWS's published "
        "ip-ranges.json, 0 if in none.",
        lambda r: None if r.address is None else float(r.aws is not None),
    ),
)
"""The common per-result rows, before the kinds' own (`kind_metrics`)."""

PROCESS: tuple[Metric, ...] = (
    Metric(
        "dualstack_probe_latency_seconds",
        "Latency of successful probes.",
        PROBE_LABELS,
        lambda s: _per_job(s, s.latency),
        "histogram",
    ),
    Metric(
        "dualstack_probe_runs",
        "Probes run.",
        PROBE_LABELS,
        lambda s: _per_job(s, s.runs),
        "counter",
    ),
    Metric(
        "dualstack_probe_errors",
        "Failed probes by error kind.",
        (*PROBE_LABELS, "kind"),
        lambda s: _per_job(s, s.errors),
        "counter",
    ),
    Metric(
        "dualstack_parity",
        "IPv6 judged against IPv4: 1 for the current verdict, 0 for the others.",
        (*PROBE_LABELS[:5], "verdict"),
        _parity,
    ),
    Metric(
        "dualstack_path_blame",
        "Whose network the latest trace of this family toward the target blames (vantage, "
        "transit, aws_edge, endpoint): 1 for it, 0 for the others and none.",
        (*TARGET_LABELS, "family", "blame"),
        _blame,
    ),
    own(
        "dualstack_trace_runs",
        "Traces on a verdict change to or from ipv6_failed: traced, failed (could not run), "
        "or not started (over_budget, cooldown).",
        lambda s: ((_own(s, r), s.trace_runs.get(r, 0)) for r in TRACE_RESULTS),
        ("result",),
        "counter",
    ),
    Metric(
        "dualstack_shard_info",
        "Which shard (from 0) of how many this process probes of the vantage's targets; always 1.",
        ("vantage", "shard", "shards"),
        lambda s: [([s.vantage, str(s.shard), str(s.shards)], 1.0)],
    ),
    own(
        "dualstack_vantage_ipv6_available",
        "1 if this vantage has a usable route to a target's IPv6 address (0: none; "
        "absent: no IPv6 address to test).",
        # `site`: vantages that share a network and uplink (config `site`; default the vantage)
        lambda s: [
            (_own(s, s.site or s.vantage), v) for v in [s.vantage_check.ipv6] if v is not None
        ],
        ("site",),
    ),
    own(
        "dualstack_vantage_probing_ok",
        "0 when the latest result of every job of this vantage (3 targets or more) failed over "
        "both families: nothing works from here, the vantage cannot probe; 1 otherwise (also "
        "before any result).",
        lambda s: [(_own(s, s.site or s.vantage), float(s.vantage_probing_ok))],
        ("site",),
    ),
    one(
        "dualstack_scheduler_lag_seconds",
        "How late probes start after their slot.",
        lambda s: s.lag,
        type="histogram",
    ),
    Metric(
        "dualstack_scheduler_skipped",
        "Runs skipped because the previous run of the job was still going.",
        ("vantage", "target", "probe"),
        lambda s: (([s.vantage, *k], n) for k, n in sorted(s.skipped.items())),
        "counter",
    ),
    own(
        "dualstack_scheduler_job_failures",
        "Job runs that crashed (a bug) or hung past the hard timeout; each still leaves a "
        "failed result.",
        lambda s: ((_own(s, why), s.job_failures.get(why, 0)) for why in ("crashed", "hung")),
        ("reason",),
        "counter",
    ),
    own(
        "dualstack_scheduler_jobs",
        "Scheduled (target, probe) jobs.",
        lambda s: [(_own(s), sum(len(t.probes) for t in s.targets.values()))],
    ),
    one(
        "dualstack_config_last_reload_successful",
        "1 if the last configuration (re)load succeeded.",
        lambda s: s.reload_ok,
    ),
    one(
        "dualstack_config_last_reload_success_timestamp_seconds",
        "Unix time of the last successful configuration load.",
        lambda s: s.reload_time,
    ),
    own(
        "dualstack_ip_ranges_sync_timestamp_seconds",
        "syncToken (Unix time) of the AWS ip-ranges.json that addresses are attributed with.",
        lambda s: [(_own(s), v) for v in [s.ip_ranges_sync] if v is not None],
    ),
    own(
        "dualstack_vantage_info",
        "Where people reach this process (config `external_url`, default http:// and the "
        "--listen address), for alerts' evidence_url; always 1.",
        lambda s: [(_own(s, s.site or s.vantage, s.external_url), 1)] if s.external_url else [],
        ("site", "external_url"),
    ),
    one(
        "dualstack_events",
        "Events kept (GET /api/v1/events) since the process started: verdict changes and the "
        "traces that follow them.",
        lambda s: s.events_total,
        "counter",
    ),
    one(
        "dualstack_events_dropped",
        "Events pushed out of the in-memory ring at its limit (config events.keep).",
        lambda s: s.events_dropped,
        "counter",
    ),
    one(
        "dualstack_events_write_errors",
        "Events that could not be appended to the events file (config events.file); the log "
        "says why once.",
        lambda s: s.events_write_errors,
        "counter",
    ),
    own(
        "dualstack_build_info",
        "Build information; always 1.",
        lambda s: [(_own(s, s.site or s.vantage, __version__, platform.python_version()), 1)],
        ("site", "version", "python"),
    ),
)
"""The rows after the kinds' own: per-job counters and histograms, parity, the process."""


def metrics() -> tuple[Metric, ...]:
    """Every metric, in exposition order, for the kinds registered now (a kind registered from
    outside the package brings its own)."""
    return (*RESULTS, *kind_metrics(), *PROCESS)
