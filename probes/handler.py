"""The shared handler that runs one (target, probe kind, family), whatever the kind (or, for a
kind that covers both families at once, one (target, probe kind): `run_once`).

The kind's declaration (probes/kinds.py) says what to call and how; the handler owns what every
probe shares: the address pinning, the deadline, crash isolation. Importing it loads every
built-in protocol library (aioquic, h2): only code that probes does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import statistics
import time
from collections.abc import Mapping, Sequence

from probes import kinds
from probes.base import (
    AddressResult,
    ErrorKind,
    Family,
    Outcome,
    ProbeEnv,
    ProbeError,
    ProbeKind,
    ProbeRequest,
    ProbeResult,
    Resolution,
    Target,
    recording_phases,
)
from probes.errors import error, in_phase
from probes.ipranges import Attribution

kinds.kinds()  # the built-in kinds, loaded here so that a probe never waits for an import

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


SAMPLE_SPACING = 0.05


async def run_probe(
    kind: ProbeKind,
    target: Target,
    family: Family,
    resolution: Resolution,
    env: ProbeEnv,
) -> ProbeResult:
    """Run one probe for one family against every resolved address of that family (sorted,
    at most `target.max_addresses`), concurrently within the probe's deadline. The family
    succeeds only when every address did."""
    started = time.time()
    spec = kinds.get(kind)
    # A kind that asks once (dns) of a host target times the resolution itself.
    uses_resolution_only = not spec.per_address and target.zone is None
    address = resolution.addresses[0] if resolution.addresses else None
    resolve_phase = {"resolve": resolution.seconds}
    note = _dropped_note(resolution)
    if not uses_resolution_only and (address is None or resolution.error is not None):
        err = in_phase(
            resolution.error
            or error(ErrorKind.DNS_NO_ADDRESS, f"{target.host}: no {family} address"),
            "resolve",
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
            note=note,
        )
    if not spec.per_address:  # asks once: the lookup itself, or the name server's first address
        dialled: tuple[str, ...] = (address or "",)
    else:
        dialled = resolution.addresses[: target.max_addresses]
    samples = env.samples if spec.sampled else 1
    if len(dialled) == 1:  # the common case: no task of its own
        per_address = [
            await _one_address(kind, target, family, dialled[0], resolution, env, samples)
        ]
    else:
        per_address = await asyncio.gather(
            *(_one_address(kind, target, family, a, resolution, env, samples) for a in dialled)
        )
    first = per_address[0]
    failed = [r for r in per_address if not r.success]
    family_error = failed[0].error if failed else None
    if failed and len(per_address) > 1 and family_error is not None:
        label = "IPv6" if family == "ipv6" else "IPv4"
        which = ", ".join(f"{r.address} {r.error.kind if r.error else 'failed'}" for r in failed)
        family_error = ProbeError(
            kind=family_error.kind,
            phase=family_error.phase,
            message=f"{len(failed)} of {len(per_address)} {label} addresses failed: {which}",
        )
    phases = _median_phases([r.phases for r in per_address])
    mins = [r.duration_min_seconds for r in per_address if r.duration_min_seconds is not None]
    return ProbeResult(
        target=target.name,
        probe=kind,
        family=family,
        address=address,
        success=not failed,
        duration_seconds=_median([r.duration_seconds for r in per_address]),
        duration_min_seconds=min(mins) if mins else None,
        started=started,
        phases=phases if uses_resolution_only else {**resolve_phase, **phases},
        error=family_error,
        details=first.details,
        aws=_attribute(env, address),
        addresses=tuple(per_address) if spec.per_address else (),
        note=note,
    )


async def run_once(
    kind: ProbeKind, target: Target, families: Sequence[Family], env: ProbeEnv
) -> ProbeResult:
    """Run a kind that covers both families at once (`Kind.per_family` False: the race) over
    `families`, which must not be empty: one result, under the family the probe ended on (else
    the first of `families`). It resolves for itself, so it gets two timeouts, one for its
    lookups and one for the rest: a backstop, the kind keeps its own deadline within them."""
    started = time.time()
    req = ProbeRequest(
        target=target,
        family=families[0],
        address="",
        timeout=target.timeout,
        env=env,
        families=tuple(families),
    )
    outcome, elapsed = await _attempt(kind, req, 2 * target.timeout)
    return ProbeResult(
        target=target.name,
        probe=kind,
        family=outcome.family or req.family,
        address=outcome.address,
        success=outcome.success,
        duration_seconds=_duration(outcome, elapsed),
        started=started,
        phases=dict(outcome.phases),
        error=outcome.error,
        details=outcome.details,
        aws=_attribute(env, outcome.address),
    )


async def _one_address(
    kind: ProbeKind,
    target: Target,
    family: Family,
    address: str,
    resolution: Resolution,
    env: ProbeEnv,
    samples: int,
) -> AddressResult:
    """One address, `samples` times (spaced, within one deadline): the median latency; a
    failed sample fails the address."""
    req = ProbeRequest(
        target=target,
        family=family,
        address=address,
        timeout=target.timeout,
        env=env,
        resolution=resolution,
    )
    durations: list[float] = []
    phase_runs: list[Mapping[str, float]] = []
    outcome = Outcome(success=False)
    deadline = env.clock() + target.timeout
    for n in range(samples):
        if n:
            if deadline - env.clock() < SAMPLE_SPACING:
                break  # the deadline is the probe's: fewer samples, not a later answer
            await asyncio.sleep(SAMPLE_SPACING)
        outcome, elapsed = await _attempt(kind, req, max(0.0, deadline - env.clock()))
        if not outcome.success:
            durations, phase_runs = [_duration(outcome, elapsed)], [outcome.phases]
            break
        durations.append(_duration(outcome, elapsed))
        phase_runs.append(outcome.phases)
    return AddressResult(
        address=address,
        success=outcome.success,
        error=outcome.error,
        duration_seconds=_median(durations),
        duration_min_seconds=min(durations) if len(durations) > 1 else None,
        phases=_median_phases(phase_runs),
        aws=_attribute(env, address),
        details=outcome.details,
    )


async def _attempt(kind: ProbeKind, req: ProbeRequest, budget: float) -> tuple[Outcome, float]:
    clock = req.env.clock
    t0 = clock()
    with recording_phases() as done:
        try:
            async with asyncio.timeout(budget):
                outcome = await kinds.get(kind).probe(req)
        except TimeoutError:
            outcome = Outcome(
                success=False,
                error=error(ErrorKind.TIMEOUT, f"no answer within {req.timeout:g} s"),
            )
        except Exception as exc:  # the isolation boundary: a probe bug is a result, not a crash
            log.exception("probe %s crashed on %s (%s)", kind, req.target.name, req.family)
            outcome = Outcome(
                success=False,
                error=error(ErrorKind.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}"),
            )
    if outcome.error is not None and outcome.error.phase is None:
        failed_in = _failed_phase(kind, req, outcome.error, done)
        outcome = dataclasses.replace(outcome, error=in_phase(outcome.error, failed_in))
    return outcome, clock() - t0


def _failed_phase(kind: ProbeKind, req: ProbeRequest, err: ProbeError, done: list[str]) -> str:
    """Where a probe that did not say so failed: the first of the kind's declared phases it had
    not completed (the last one when it completed them all: the answer was judged wrong). The
    dns kind's answer is the resolution: its DNS errors are the resolution's."""
    said = req.resolution.error if req.resolution is not None else None
    if said is not None and err.kind == said.kind and req.target.zone is None:
        return "resolve"
    declared = kinds.get(kind).phases or ("probe",)
    return next((p for p in declared if p not in done), declared[-1])


def _median(values: Sequence[float]) -> float:
    return values[0] if len(values) == 1 else statistics.median(values)


def _median_phases(runs: Sequence[Mapping[str, float]]) -> dict[str, float]:
    if len(runs) == 1:  # one address, one sample: the common case
        return dict(runs[0])
    names = dict.fromkeys(name for run in runs for name in run)
    return {n: statistics.median(run[n] for run in runs if n in run) for n in names}


def _dropped_note(resolution: Resolution) -> str | None:
    if not resolution.not_native or not resolution.addresses:
        return None
    shown = ", ".join(resolution.not_native)
    return f"dropped AAAA not native IPv6 (never dialled): {shown}"


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
