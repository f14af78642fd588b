"""What `probe run` and `probe serve` share for one target: the probe environment and resolver
from the configuration, Route 53 zones expanded into name-server targets, both families of a
target's probes run together, and each (target, probe) judged."""

from __future__ import annotations

import asyncio
import dataclasses
import socket
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

from monitor.config import Config, ConfigError, nameserver_name, nameserver_target
from monitor.engine.parity import Parity, Thresholds, judge
from monitor.engine.vantage import VantageCheck
from probes import ipranges
from probes import kinds as registry
from probes.base import FAMILIES, Family, ProbeEnv, ProbeKind, ProbeResult, Resolution, Target
from probes.handler import run_once, run_probe, skipped
from probes.resolve import LookupFailed, Resolver
from probes.text import peer_text


def check_sources(cfg: Config) -> None:
    """Each `source` address must be one of this host's, or every probe of its family would
    fail and the vantage would look like it has no route: binding to it says (no packet)."""
    for family, address in sorted(cfg.sources.items()):
        kind = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
        try:
            with socket.socket(kind, socket.SOCK_DGRAM) as sock:
                sock.bind((address, 0))
        except OSError as exc:
            raise ConfigError(
                f"{cfg.path}: source.{family}: {address} is not an address of this host "
                f"({exc.strerror or exc})"
            ) from None


def make_env(cfg: Config) -> ProbeEnv:
    return ProbeEnv(
        ssl_cafile=cfg.ca_file,
        source_addresses=dict(cfg.sources),
        ip_ranges=cfg.ip_ranges or ipranges.load(),
    )


def make_resolver(cfg: Config, env: ProbeEnv) -> Resolver:
    return Resolver(cfg.nameservers, cfg.resolver_port, timeout=cfg.timeout, clock=env.clock)


def with_resolver(env: ProbeEnv, resolver: Resolver) -> ProbeEnv:
    """The environment with the resolver a kind that resolves for itself uses (the race)."""
    return dataclasses.replace(env, resolver=resolver)


def thresholds(cfg: Config) -> Thresholds:
    return Thresholds(slower_ratio=cfg.slower_ratio, slower_margin=cfg.slower_margin)


async def nameserver_targets(cfg: Config, resolver: Resolver) -> tuple[list[Target], list[str]]:
    """Each zone's NS set as targets named `route53-ns-<zone>-<n>`: labels stay bounded by
    configuration (zones x max_nameservers), never named after what DNS answered. Only this
    shard's (`sharding`): they are assigned by name, as every target is."""
    targets: list[Target] = []
    notes: list[str] = []
    for zone in cfg.zones:
        try:
            names = (await resolver.nameservers_of(zone))[: cfg.route53.max_nameservers]
        except (LookupFailed, ValueError) as exc:  # no NS set, a bad reply, a bad zone name
            notes.append(peer_text(f"route53 zone {zone}: cannot get its NS set: {exc}"))
            continue
        targets.extend(
            nameserver_target(cfg, zone, n, host)
            for n, host in enumerate(names, start=1)
            if cfg.shard.owns(nameserver_name(zone, n))  # else another shard probes it
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
    vantage: VantageCheck,
    done: Callable[[], None] = lambda: None,
) -> list[ProbeResult]:
    """Both families of each probe kind, started together so they are comparable; a kind that
    covers both at once (the race) runs once, over the families selected."""

    async def once(kind: ProbeKind) -> ProbeResult:
        try:
            fams = [f for f in FAMILIES if f in families and f in target.families]
            if not fams:
                return skipped(target, kind, FAMILIES[0], "no family selected")
            if sem is None:
                return await run_once(kind, target, fams, env)
            async with sem:
                return await run_once(kind, target, fams, env)
        finally:
            done()

    async def one(kind: ProbeKind, family: Family) -> ProbeResult:
        try:
            if family not in families or family not in target.families:
                return skipped(target, kind, family, f"{family} not selected")
            if family == "ipv6" and vantage.skips_ipv6 and kind != "dns":
                return skipped(target, kind, family, "this vantage has no IPv6 route")
            if sem is None:  # the caller bounds concurrency (the scheduler does)
                return await run_probe(kind, target, family, resolutions[family], env)
            async with sem:
                return await run_probe(kind, target, family, resolutions[family], env)
        finally:
            done()

    jobs: list[Coroutine[Any, Any, ProbeResult]] = []
    for kind in kinds:
        if registry.get(kind).per_family:
            jobs.extend(one(kind, family) for family in FAMILIES)
        else:
            jobs.append(once(kind))
    return list(await asyncio.gather(*jobs))


def judge_results(
    results: Sequence[ProbeResult],
    targets: dict[str, Target],
    th: Thresholds,
    vantage: VantageCheck,
) -> list[Parity]:
    """One verdict per (target, probe) of `results`, in the order they first appear; none for a
    kind run once over both families (nothing to compare)."""
    pairs: dict[tuple[str, ProbeKind], dict[Family, ProbeResult]] = {}
    for r in results:
        if registry.get(r.probe).per_family:
            pairs.setdefault((r.target, r.probe), {})[r.family] = r
    return [
        judge(
            targets[name],
            kind,
            p.get("ipv4"),
            p.get("ipv6"),
            thresholds=th,
            vantage_ipv6=vantage.ipv6,
            vantage_reason=vantage.reason,
        )
        for (name, kind), p in pairs.items()
    ]
