"""`probe trace TARGET`: both families' paths toward a target (a configured target's name, a host
name or an address), hop by hop, each hop attributed to AWS's ranges, and the blame of a family
whose path breaks (docs/probes.md, "Where IPv6 breaks"). A table, or one JSON document.

Exit status: 0 every path traced reached its address, 1 one did not (or could not be traced),
2 a usage error, or nothing to trace (the name does not resolve, no address of the family).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TextIO

from monitor.config import Config, ConfigError
from monitor.engine.check import make_env, make_resolver
from monitor.engine.report import milliseconds
from monitor.engine.trace import TargetTrace, settings, trace_target
from probes.base import Family, Resolution
from probes.details import Hop
from probes.resolve import ip_family
from probes.trace import Method

EXIT_REACHED, EXIT_NOT_REACHED = 0, 1


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """What the command line asked for."""

    target: str
    families: tuple[Family, ...]
    method: Method | None
    max_hops: int | None
    addresses: tuple[str, ...] = ()
    port: int | None = None


async def run(cfg: Config, req: Request) -> TargetTrace:
    """Resolve (unless given addresses), then trace. Raises ConfigError (exit 2) when there is
    nothing to trace, with the one line that says why."""
    configured = {t.name: t for t in cfg.targets}.get(req.target)
    host = configured.host if configured else req.target
    port = req.port or (configured.port if configured else 443)
    max_addresses = configured.max_addresses if configured else cfg.max_addresses
    env = make_env(cfg)
    notes: list[str] = []
    pairs: list[tuple[Family, str]] = []
    if req.addresses:
        for address in req.addresses:
            family = ip_family(address)
            if family is None:
                raise ConfigError(f"--address {address!r} is not an IP address")
            if family in req.families:
                pairs.append((family, address))
        if not pairs:
            raise ConfigError(f"--address: none of {', '.join(req.families)}")
    else:
        resolver = make_resolver(cfg, env)
        for family in req.families:
            res: Resolution = await resolver.resolve(host, family)
            if res.error is not None or not res.addresses:
                why = f"{res.error.kind}: {res.error.message}" if res.error else "no address"
                notes.append(f"{host} has no {family} address ({why})")
                continue
            pairs.extend((family, a) for a in sorted(res.addresses)[:max_addresses])
        if not pairs:
            raise ConfigError("; ".join(notes) or f"{host} does not resolve")
    return await trace_target(
        configured.name if configured else host,
        pairs,
        settings(cfg.trace, method=req.method, max_hops=req.max_hops),
        env,
        port=port,
        vantage_hops=cfg.trace.vantage_hops,
        notes=notes,
    )


def exit_status(result: TargetTrace) -> int:
    reached = all(t.path is not None and t.path.reached for t in result.traces)
    return EXIT_REACHED if reached else EXIT_NOT_REACHED


def write_json(result: TargetTrace, out: TextIO) -> None:
    json.dump(result.to_json(), out, indent=2)
    out.write("\n")


def _rtt(seconds: float | None) -> str:
    return "*" if seconds is None else milliseconds(seconds)


def _aws(hop: Hop) -> str:
    if hop.aws is None:
        return ""
    services = [s for s in hop.aws.services if s != "AMAZON"] or list(hop.aws.services)
    return f"AWS {hop.aws.region} {','.join(services)}"


def write_table(result: TargetTrace, out: TextIO) -> None:
    s = result.settings
    out.write(
        f"trace {result.target} over {s.method}: at most {s.max_hops} hops, {s.tries} tries a "
        f"hop, {s.hop_timeout:g} s a hop (worst case {s.worst_case:g} s)\n"
    )
    for note in result.notes:
        out.write(f"{note}\n")
    for t in result.traces:
        out.write(f"\n{t.family} to {t.address}\n")
        if t.path is not None:
            for hop in t.path.hops:
                who = hop.address or "no answer"
                rtts = "  ".join(f"{_rtt(r):>9}" for r in hop.rtts)
                out.write(f"  {hop.hop:>3}  {who:<39} {rtts}  {_aws(hop)}".rstrip() + "\n")
        blame = f"; blame: {t.blame}" if t.blame != "none" else ""
        out.write(f"  {t.line}{blame}\n")
