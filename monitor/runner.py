"""One round over every target: resolve each name per family, self-check the vantage, run the
probes with a concurrency bound, judge parity. `probe run` makes one round; `probe serve` many.

Route 53 zones are expanded here into name-server targets (their NS set), bounded per zone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import dns.exception

from monitor.config import NAMESERVER_PREFIX, Config
from monitor.parity import Parity, Thresholds, judge
from monitor.vantage import VantageCheck, check_vantage
from probes import run_probe, skipped
from probes.base import FAMILIES, Family, ProbeEnv, ProbeKind, ProbeResult, Resolution, Target
from probes.resolve import Resolver

Progress = Callable[[int, int], None]
LIGHT: frozenset[ProbeKind] = frozenset({"dns", "icmp", "tcp"})
HEAVY: frozenset[ProbeKind] = frozenset({"tls", "http2", "http3"})
STAGES: tuple[frozenset[ProbeKind], ...] = (LIGHT, HEAVY)


@dataclass(frozen=True, slots=True, kw_only=True)
class Report:
    vantage: str
    started: str
    vantage_check: VantageCheck
    targets: tuple[Target, ...]
    results: tuple[ProbeResult, ...]
    parity: tuple[Parity, ...]
    notes: tuple[str, ...] = field(default_factory=tuple)

    def target_map(self) -> dict[str, Target]:
        return {t.name: t for t in self.targets}


def make_env(cfg: Config) -> ProbeEnv:
    return ProbeEnv(
        ssl_cafile=cfg.ca_file,
        source_addresses=dict(cfg.sources),
        resolver_nameservers=cfg.nameservers,
        resolver_port=cfg.resolver_port,
    )


def make_resolver(cfg: Config, env: ProbeEnv) -> Resolver:
    return Resolver(cfg.nameservers, cfg.resolver_port, timeout=cfg.timeout, clock=env.clock)


async def nameserver_targets(cfg: Config, resolver: Resolver) -> tuple[list[Target], list[str]]:
    """Each zone's NS set as targets named `route53-ns-<zone>-<n>`: labels stay bounded by
    configuration (zones x max_nameservers), never named after what DNS answered."""
    targets: list[Target] = []
    notes: list[str] = []
    for zone in cfg.zones:
        try:
            names = (await resolver.nameservers_of(zone))[: cfg.route53.max_nameservers]
        except dns.exception.DNSException as exc:
            notes.append(f"route53 zone {zone}: cannot get its NS set: {exc}")
            continue
        for n, host in enumerate(names, start=1):
            targets.append(
                Target(
                    name=f"{NAMESERVER_PREFIX}{zone}-{n}",
                    service="route53",
                    region="global",
                    host=host,
                    port=cfg.route53.port,
                    probes=tuple(cfg.route53.probes),
                    plane="data",
                    interval=cfg.interval,
                    timeout=cfg.timeout,
                    zone=zone,
                    families=cfg.families,
                    source="route53-zone",
                )
            )
    return targets, notes


async def check_target(
    target: Target,
    kinds: Sequence[ProbeKind],
    families: Sequence[Family],
    resolutions: dict[Family, Resolution],
    env: ProbeEnv,
    sem: asyncio.Semaphore | None,
    *,
    vantage_ipv6: bool | None,
    done: Callable[[], None] = lambda: None,
) -> list[ProbeResult]:
    """Both families of each probe kind, started together so they are comparable."""

    async def one(kind: ProbeKind, family: Family) -> ProbeResult:
        try:
            if family not in families or family not in target.families:
                return skipped(target, kind, family, f"{family} not selected")
            if family == "ipv6" and vantage_ipv6 is False and kind != "dns":
                return skipped(target, kind, family, "this vantage has no IPv6 route")
            if sem is None:  # the caller bounds concurrency (the scheduler does)
                return await run_probe(kind, target, family, resolutions[family], env)
            async with sem:
                return await run_probe(kind, target, family, resolutions[family], env)
        finally:
            done()

    jobs = [one(kind, family) for kind in kinds for family in FAMILIES]
    return list(await asyncio.gather(*jobs))


async def run_round(
    cfg: Config,
    targets: Sequence[Target],
    *,
    kinds: Sequence[ProbeKind] | None = None,
    families: Sequence[Family] = FAMILIES,
    env: ProbeEnv | None = None,
    resolver: Resolver | None = None,
    progress: Progress | None = None,
) -> Report:
    env = env or make_env(cfg)
    resolver = resolver or make_resolver(cfg, env)
    started = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    ns_targets, notes = await nameserver_targets(cfg, resolver) if cfg.zones else ([], [])
    all_targets = [*targets, *ns_targets]
    sem = asyncio.Semaphore(cfg.concurrency)

    async def resolve(t: Target, family: Family) -> Resolution:
        async with sem:
            return await resolver.resolve(t.host, family)

    resolved = await asyncio.gather(*(resolve(t, f) for t in all_targets for f in FAMILIES))
    by_target: dict[str, dict[Family, Resolution]] = {}
    for res, (t, f) in zip(resolved, ((t, f) for t in all_targets for f in FAMILIES), strict=True):
        by_target.setdefault(t.name, {})[f] = res
    v6_addresses = [
        a
        for r in by_target.values()
        for a in r["ipv6"].addresses
        if not r["ipv6"].nat64_synthesized
    ]
    check = (
        check_vantage(v6_addresses, env.source_addresses.get("ipv6"))
        if "ipv6" in families
        else VantageCheck(ipv6=None)
    )
    plan = [(t, [k for k in t.probes if kinds is None or k in kinds]) for t in all_targets]
    total = sum(len(ks) * len(FAMILIES) for _, ks in plan)
    finished = 0

    def done() -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            progress(finished, total)

    results: list[ProbeResult] = []
    for stage in STAGES:
        # Handshakes cost CPU on this one event loop; run alongside light probes, they would
        # delay the timestamps of everything else. Light kinds go first and wide, the heavy
        # ones after and narrower, so latencies are the network's, not the loop's.
        stage_sem = sem if stage is LIGHT else asyncio.Semaphore(max(1, cfg.concurrency // 8))
        per_target = await asyncio.gather(
            *(
                check_target(
                    t,
                    [k for k in ks if k in stage],
                    families,
                    by_target[t.name],
                    env,
                    stage_sem,
                    vantage_ipv6=check.ipv6,
                    done=done,
                )
                for t, ks in plan
            )
        )
        results.extend(r for rs in per_target for r in rs)
    return Report(
        vantage=cfg.vantage,
        started=started,
        vantage_check=check,
        targets=tuple(all_targets),
        results=tuple(results),
        parity=tuple(judge_all(results, cfg, check.ipv6)),
        notes=tuple(notes),
    )


def judge_all(
    results: Sequence[ProbeResult], cfg: Config, vantage_ipv6: bool | None
) -> list[Parity]:
    pairs: dict[tuple[str, ProbeKind], dict[Family, ProbeResult]] = {}
    for r in results:
        pairs.setdefault((r.target, r.probe), {})[r.family] = r
    th = Thresholds(slower_ratio=cfg.slower_ratio, slower_margin=cfg.slower_margin)
    return [
        judge(p.get("ipv4"), p.get("ipv6"), thresholds=th, vantage_ipv6=vantage_ipv6)
        for p in pairs.values()
    ]


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
        "success": r.success,
        "skipped": r.skipped,
        "duration_seconds": r.duration_seconds,
        "started": r.started,
        "phases": dict(r.phases),
        "error": r.error.to_json() if r.error else None,
        "details": dict(r.details),
    }


def report_json(report: Report) -> dict[str, Any]:
    targets = report.target_map()
    return {
        "vantage": report.vantage,
        "started": report.started,
        "vantage_ipv6": report.vantage_check.ipv6,
        "vantage_routes": report.vantage_check.routes,
        "notes": list(report.notes),
        "results": [result_json(r, targets.get(r.target)) for r in report.results],
        "parity": [p.to_json() for p in report.parity],
    }
