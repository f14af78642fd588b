"""The JSON report, built in one place from typed results, for `probe run --format json` and
`/api/v1/results` alike. Its shape is monitor/schemas/run-report.schema.json."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from monitor.engine.parity import Parity
from monitor.engine.vantage import VantageCheck
from probes.base import ProbeResult, Target
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
    """One per (target, probe, family)."""
    parity: tuple[Parity, ...]
    """One per (target, probe)."""
    notes: tuple[str, ...] = ()
    """What a person should know about the round (a zone whose NS set could not be read)."""
    shard: int = 0
    shards: int = 1
    """The results are shard `shard` (from 0) of `shards` of the vantage's targets."""

    def target_map(self) -> dict[str, Target]:
        return {t.name: t for t in self.targets}


def iso_utc(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def result_json(r: ProbeResult, t: Target | None) -> dict[str, Any]:
    return {
        "target": r.target,
        "service": t.service if t else "",
        "region": t.region if t else "",
        "host": t.host if t else "",
        "port": t.port if t else 0,
        "probe": r.probe,
        "family": r.family,
        "address": r.address,
        "aws": r.aws.to_json() if r.aws else None,
        "success": r.success,
        "skipped": r.skipped,
        "duration_seconds": r.duration_seconds,
        "duration_min_seconds": r.duration_min_seconds,
        "started": r.started,
        "phases": dict(r.phases),
        "error": r.error.to_json() if r.error else None,
        "details": details_json(r.details),
        "addresses": [a.to_json() for a in r.addresses],
        "note": r.note,
    }


def report_json(report: Report) -> dict[str, Any]:
    targets = report.target_map()
    return {
        "vantage": report.vantage,
        "shard": {"index": report.shard, "count": report.shards},
        "started": iso_utc(report.started),
        "vantage_ipv6": report.vantage_check.ipv6,
        "vantage_ipv6_reason": report.vantage_check.reason,
        "vantage_routes": report.vantage_check.routes,
        "notes": list(report.notes),
        "results": [result_json(r, targets.get(r.target)) for r in report.results],
        "parity": [p.to_json() for p in report.parity],
    }
