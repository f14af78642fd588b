"""The table of probe kinds and the shared handler that runs one (target, probe kind, family).

Adding a protocol is a module with `async def probe(req) -> Outcome` plus one line in PROBES.
The handler owns what every probe shares: the address pinning, the deadline, crash isolation.
Importing it loads every protocol library (aioquic, h2, icmplib): only code that probes does.
"""

from __future__ import annotations

import asyncio
import logging
import time

from probes import dns, http2, http3, icmp, tcp, tls
from probes.base import (
    ErrorKind,
    Family,
    Outcome,
    ProbeEnv,
    ProbeError,
    ProbeFn,
    ProbeKind,
    ProbeRequest,
    ProbeResult,
    Resolution,
    Target,
)
from probes.errors import error
from probes.ipranges import Attribution

PROBES: dict[ProbeKind, ProbeFn] = {
    "dns": dns.probe,
    "icmp": icmp.probe,
    "tcp": tcp.probe,
    "tls": tls.probe,
    "http2": http2.probe,
    "http3": http3.probe,
}

log = logging.getLogger(__name__)


def not_run(
    target: Target,
    kind: ProbeKind,
    family: Family,
    *,
    skipped: str | None = None,
    error: ProbeError | None = None,
) -> ProbeResult:
    """A result for a probe that did not run: skipped (with why), or failed before it could."""
    return ProbeResult(
        target=target.name,
        probe=kind,
        family=family,
        address=None,
        success=False,
        duration_seconds=0.0,
        started=time.time(),
        skipped=skipped,
        error=error,
    )


def skipped(target: Target, kind: ProbeKind, family: Family, reason: str) -> ProbeResult:
    return not_run(target, kind, family, skipped=reason)


async def run_probe(
    kind: ProbeKind,
    target: Target,
    family: Family,
    resolution: Resolution,
    env: ProbeEnv,
) -> ProbeResult:
    """Run one probe for one family against the first resolved address of that family."""
    started = time.time()
    uses_resolution_only = kind == "dns" and target.zone is None
    address = resolution.addresses[0] if resolution.addresses else None
    resolve_phase = {"resolve": resolution.seconds}
    if not uses_resolution_only and (address is None or resolution.error is not None):
        err = resolution.error or error(
            ErrorKind.DNS_NO_ADDRESS, f"{target.host}: no {family} address"
        )
        return ProbeResult(
            target=target.name,
            probe=kind,
            family=family,
            address=address,
            success=False,
            duration_seconds=0.0,
            started=started,
            phases=resolve_phase,
            error=err,
            aws=_attribute(env, address),
        )
    req = ProbeRequest(
        target=target,
        family=family,
        address=address or "",
        timeout=target.timeout,
        env=env,
        resolution=resolution,
    )
    t0 = env.clock()
    try:
        async with asyncio.timeout(target.timeout):
            outcome = await PROBES[kind](req)
    except TimeoutError:
        outcome = Outcome(
            success=False,
            error=error(ErrorKind.TIMEOUT, f"no answer within {target.timeout:g} s"),
        )
    except Exception as exc:  # the isolation boundary: a probe bug is a result, not a crash
        log.exception("probe %s crashed on %s (%s)", kind, target.name, family)
        outcome = Outcome(
            success=False, error=error(ErrorKind.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
        )
    elapsed = env.clock() - t0
    phases = dict(outcome.phases) if uses_resolution_only else {**resolve_phase, **outcome.phases}
    return ProbeResult(
        target=target.name,
        probe=kind,
        family=family,
        address=address,
        success=outcome.success,
        duration_seconds=_duration(outcome, elapsed),
        started=started,
        phases=phases,
        error=outcome.error,
        details=outcome.details,
        aws=_attribute(env, address),
    )


def _attribute(env: ProbeEnv, address: str | None) -> Attribution | None:
    if env.ip_ranges is None or address is None:
        return None
    return env.ip_ranges.lookup(address)


def _duration(outcome: Outcome, elapsed: float) -> float:
    """The latency compared across families: the measured phases (closing the connection is
    not part of it); a failure keeps its wall time, so a timeout shows as its length."""
    if outcome.duration is not None:
        return outcome.duration
    if outcome.success and outcome.phases:
        return sum(outcome.phases.values())
    return elapsed
