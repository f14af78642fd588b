"""The JSON report, built in one place from typed results, for `probe run --format json` and
`/api/v1/results` alike. Its shape is monitor/schemas/run-report.schema.json."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from monitor.engine.parity import VERDICTS, Parity
from monitor.engine.vantage import VantageCheck
from probes.base import FAMILIES, NO_REGION, Family, ProbeResult, Target
from probes.details import details_json


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    """One view of a vantage's results: a round of `probe run`, or `probe serve`'s latest."""

    vantage: str
    """The vantage's name (the `vantage` label)."""
    started: float
    """Unix time the round (or the oldest result shown) started."""
    vantage_check: VantageCheck
    """Whether this vantage can reach IPv6 at all."""
    targets: tuple[Target, ...]
    """Every target the results refer to, name-server targets included."""
    results: tuple[ProbeResult, ...]
    """One per (target, probe, family); one per (target, probe) for a kind run once over both
    families (the race)."""
    parity: tuple[Parity, ...]
    """One per (target, probe) of a kind judged by parity."""
    notes: tuple[str, ...] = ()
    """What a person should know about the round (a zone whose NS set could not be read)."""
    families: tuple[Family, ...] = FAMILIES
    """The families this round was asked to probe (`--family`, `families`)."""
    offline: str | None = None
    """Why this vantage cannot probe at all (no DNS server answered any query), in one line;
    None when it can."""
    shard: int = 0
    shards: int = 1
    """The results are shard `shard` (from 0) of `shards` of the vantage's targets."""

    def target_map(self) -> dict[str, Target]:
        return {t.name: t for t in self.targets}


def milliseconds(seconds: float) -> str:
    """A latency for people: one decimal place from 1 ms, two below it (a loopback or LAN
    connect of 30 µs reads 0.03 ms, not 0.0 ms), and `<0.01 ms` below that."""
    ms = seconds * 1000
    if ms >= 1:
        return f"{ms:.1f} ms"
    if ms >= 0.005:
        return f"{ms:.2f} ms"
    return "<0.01 ms"


def iso_utc(epoch: float, *, ms: bool = False) -> str:
    """Unix time as ISO 8601 UTC with `Z`, to the second (or the millisecond)."""
    when = datetime.fromtimestamp(epoch, UTC)
    return when.isoformat(timespec="milliseconds" if ms else "seconds").replace("+00:00", "Z")


def _place(t: Target | None) -> dict[str, Any]:
    """What the configuration says of a target, the same in results and parity entries."""
    return {
        "service": t.service if t else "",
        "region": (t.region if t else "") or NO_REGION,
        "host": t.host if t else "",
    }


def result_json(r: ProbeResult, t: Target | None) -> dict[str, Any]:
    return {
        "target": r.target,
        **_place(t),
        "port": t.port if t else 0,
        "probe": r.probe,
        "family": r.family,
        "address": r.address,
        "aws": r.aws.to_json() if r.aws else None,
        "success": r.success,
        "skipped": r.skipped,
        "duration_seconds": r.duration_seconds,
        "duration_min_seconds": r.duration_min_seconds,
        "started": iso_utc(r.started, ms=True),
        "phases": dict(r.phases),
        "error": r.error.to_json() if r.error else None,
        "details": details_json(r.details),
        "addresses": [a.to_json() for a in r.addresses],
        "note": r.note,
    }


def parity_json(p: Parity, t: Target | None) -> dict[str, Any]:
    doc = p.to_json()
    return {"target": doc.pop("target"), **_place(t), **doc}


def counts(parity: Iterable[Parity]) -> dict[str, int]:
    """Every verdict, zeros included: they sum to the number of parity entries."""
    seen = Counter(str(p.verdict) for p in parity)
    return {str(v): seen[str(v)] for v in VERDICTS}


def report_json(report: Report, *, exit_status: int | None = None) -> dict[str, Any]:
    """The document; `exit_status` only from `probe run` (a service has none)."""
    targets = report.target_map()
    doc: dict[str, Any] = {
        "vantage": report.vantage,
        "shard": {"index": report.shard, "count": report.shards},
        "started": iso_utc(report.started),
        "vantage_ipv6": report.vantage_check.ipv6,
        "vantage_ipv6_reason": report.vantage_check.reason,
        "vantage_routes": report.vantage_check.routes,
        "vantage_offline": report.offline,
        "notes": list(report.notes),
        "counts": counts(report.parity),
    }
    if exit_status is not None:
        doc["exit_status"] = exit_status
    doc["results"] = [result_json(r, targets.get(r.target)) for r in report.results]
    doc["parity"] = [parity_json(p, targets.get(p.target)) for p in report.parity]
    return doc
