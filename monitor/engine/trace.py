"""Both families' paths toward one target, and the blame of each (probes/trace.py): what
`probe trace` prints and what `probe serve` attaches to a verdict change.

The addresses of one family are traced one after another (routers rate limit their ICMP per
destination), the two families side by side; each path is judged against the other family's
path that got furthest.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from typing import Any

from monitor.config import TraceConfig
from probes.base import Family, Outcome, ProbeEnv, ProbeError
from probes.details import TracePath, details_json
from probes.trace import NO_BLAME, Method, TraceSettings, judge, outcome_line, trace


def settings(
    cfg: TraceConfig, *, method: Method | None = None, max_hops: int | None = None
) -> TraceSettings:
    """The configured trace settings, with `probe trace`'s options over them."""
    return TraceSettings(
        method=method or cfg.method,
        max_hops=max_hops or cfg.max_hops,
        tries=cfg.tries,
        hop_timeout=cfg.hop_timeout,
        gap_limit=cfg.gap_limit,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FamilyTrace:
    """The path toward one address."""

    family: Family
    address: str
    path: TracePath | None
    """None when no trace could run (the error says why)."""
    error: ProbeError | None
    """Why the destination was not reached (or the trace could not run); None: reached."""
    blame: str
    """A `probes.trace.Blame` value, or `none`."""

    @property
    def line(self) -> str:
        """`reached ... at hop 4`, `stopped after hop 1 at ...`, or why it could not run."""
        if self.path is None:
            return self.error.message if self.error else "not traced"
        return outcome_line(self.path)

    def to_json(self) -> dict[str, Any]:
        return {
            "family": self.family,
            "address": self.address,
            "reached": bool(self.path and self.path.reached),
            "line": self.line,
            "blame": self.blame,
            "error": self.error.to_json() if self.error else None,
            "path": details_json(self.path) if self.path else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetTrace:
    """The paths toward a target's addresses, both families, judged."""

    target: str
    started: float
    """Unix time the traces began."""
    seconds: float
    """How long they took, together."""
    settings: TraceSettings
    traces: tuple[FamilyTrace, ...]
    """IPv4's first, each family's addresses in the order given."""
    notes: tuple[str, ...] = ()
    """What was not traced and why (a family without an address)."""

    def blame(self, family: Family) -> str:
        """The family's blame: its first path's that has one, else `none`."""
        return next(
            (t.blame for t in self.traces if t.family == family and t.blame != NO_BLAME), NO_BLAME
        )

    def families(self) -> tuple[Family, ...]:
        return tuple(dict.fromkeys(t.family for t in self.traces))

    def to_json(self) -> dict[str, Any]:
        s = self.settings
        return {
            "target": self.target,
            "started": self.started,
            "seconds": round(self.seconds, 3),
            "method": s.method,
            "max_hops": s.max_hops,
            "tries": s.tries,
            "hop_timeout_seconds": s.hop_timeout,
            "blame": {f: self.blame(f) for f in self.families()},
            "traces": [t.to_json() for t in self.traces],
            "notes": list(self.notes),
        }


def furthest(paths: Sequence[TracePath]) -> TracePath | None:
    """The path that got furthest: one that reached, else the one whose answers went deepest."""
    return max(paths, key=lambda p: (p.reached, p.last_hop), default=None)


def judged(
    outcomes: Sequence[tuple[Family, str, Outcome]],
    *,
    vantage_hops: int,
    service_failed: Collection[Family] = (),
) -> tuple[FamilyTrace, ...]:
    """Each outcome with its blame, against the furthest path of the other family."""
    paths: dict[Family, list[TracePath]] = {}
    for family, _, o in outcomes:
        if isinstance(o.details, TracePath):
            paths.setdefault(family, []).append(o.details)
    out = []
    for family, address, o in outcomes:
        path = o.details if isinstance(o.details, TracePath) else None
        other = furthest(paths.get("ipv4" if family == "ipv6" else "ipv6", []))
        blame = (
            judge(path, other, vantage_hops=vantage_hops, service_failed=family in service_failed)
            if path is not None
            else None
        )
        out.append(
            FamilyTrace(
                family=family,
                address=address,
                path=path,
                error=o.error,
                blame=str(blame) if blame is not None else NO_BLAME,
            )
        )
    return tuple(out)


async def trace_target(
    name: str,
    addresses: Sequence[tuple[Family, str]],
    trace_settings: TraceSettings,
    env: ProbeEnv,
    *,
    port: int,
    vantage_hops: int = 1,
    service_failed: Collection[Family] = (),
    notes: Sequence[str] = (),
) -> TargetTrace:
    """Trace toward every (family, address), the families side by side, and judge each path."""
    started, t0 = time.time(), time.monotonic()

    async def one_family(family: Family) -> list[tuple[Family, str, Outcome]]:
        out = []
        for f, address in addresses:
            if f == family:
                o = await trace(
                    family,
                    address,
                    trace_settings,
                    port=port,
                    source=env.source_addresses.get(family),
                    ranges=env.ip_ranges,
                )
                out.append((family, address, o))
        return out

    families: list[Family] = list(dict.fromkeys(f for f, _ in addresses))
    done = await asyncio.gather(*(one_family(f) for f in sorted(families)))
    outcomes = [o for family in done for o in family]
    return TargetTrace(
        target=name,
        started=started,
        seconds=time.monotonic() - t0,
        settings=trace_settings,
        traces=judged(outcomes, vantage_hops=vantage_hops, service_failed=service_failed),
        notes=tuple(notes),
    )
