"""One round over every target, as `probe run` makes it: resolve each name per family,
self-check the vantage, run the probes with a concurrency bound, judge parity, report.

Route 53 zones are expanded into name-server targets (their NS set), bounded per zone.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence

from monitor.config import Config
from monitor.engine.check import (
    check_target,
    judge_results,
    make_env,
    make_resolver,
    nameserver_targets,
    thresholds,
    with_resolver,
)
from monitor.engine.report import Report
from monitor.engine.vantage import (
    VantageCheck,
    cannot_probe,
    check_vantage,
    ipv6_broken,
    nothing_works,
)
from probes import kinds as registry
from probes.base import (
    FAMILIES,
    Family,
    ProbeEnv,
    ProbeKind,
    ProbeResult,
    Resolution,
    Target,
)
from probes.kinds import Cost
from probes.resolve import Resolver
from probes.resolvers import listed

Progress = Callable[[int, int], None]
Pick = Callable[[Target], Target | None]
"""A selection: the target as it is to be probed (its probe kinds narrowed), or None."""


async def run_round(
    cfg: Config,
    targets: Sequence[Target],
    *,
    kinds: Sequence[ProbeKind] | None = None,
    families: Sequence[Family] = FAMILIES,
    env: ProbeEnv | None = None,
    resolver: Resolver | None = None,
    progress: Progress | None = None,
    samples: int = 1,
    pick: Pick | None = None,
) -> Report:
    """One round over `targets` and the name servers of `cfg.zones`, which `pick` (the
    command line's filters) narrows once they are known."""
    env = dataclasses.replace(env or make_env(cfg), samples=samples)
    resolver = resolver or make_resolver(cfg, env)
    env = with_resolver(env, resolver)
    started = time.time()
    ns_targets, notes = await nameserver_targets(cfg, resolver) if cfg.zones else ([], [])
    if pick is not None:
        ns_targets = [p for t in ns_targets if (p := pick(t)) is not None]
    all_targets = [*targets, *ns_targets]
    sem = asyncio.Semaphore(cfg.concurrency)

    async def resolve(t: Target, family: Family) -> Resolution:
        if t.resolvers is not None:  # a resolver target: its resolvers, not its name
            return listed(t, family, resolver.nameservers)
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
    # A kind run once over both families (the race) is one step of progress, not two.
    total = sum(len(FAMILIES) if registry.get(k).per_family else 1 for _, ks in plan for k in ks)
    finished = 0

    def done() -> None:
        nonlocal finished
        finished += 1
        if progress is not None:
            progress(finished, total)

    results: list[ProbeResult] = []
    for stage in Cost:
        # Handshakes cost CPU on this one event loop; run alongside light probes, they would
        # delay the timestamps of everything else. Light kinds go first and wide, the heavy
        # ones after and narrower, so latencies are the network's, not the loop's; last and
        # apart, the kinds timed as one client (the race), whose timers the others would skew.
        narrow = stage is Cost.HEAVY
        stage_sem = asyncio.Semaphore(max(1, cfg.concurrency // 8)) if narrow else sem
        per_target = await asyncio.gather(
            *(
                check_target(
                    t,
                    [k for k in ks if registry.get(k).cost is stage],
                    families,
                    by_target[t.name],
                    env,
                    stage_sem,
                    vantage=check,
                    done=done,
                )
                for t, ks in plan
            )
        )
        results.extend(r for rs in per_target for r in rs)
    if check.ipv6 and ipv6_broken(results):
        check = check.broken()
    target_map = {t.name: t for t in all_targets}
    return Report(
        vantage=cfg.vantage,
        started=started,
        vantage_check=check,
        targets=tuple(all_targets),
        results=tuple(results),
        parity=tuple(judge_results(results, target_map, thresholds(cfg), check)),
        notes=tuple(notes),
        families=tuple(families),
        offline=_offline(resolver, cfg, results),
        shard=cfg.shard.index,
        shards=cfg.shard.count,
    )


def _offline(resolver: Resolver, cfg: Config, results: Sequence[ProbeResult]) -> str | None:
    """Why this vantage cannot probe at all, or None: no DNS server answered, or everything
    failed over every family (then the failures blame the vantage, not the targets)."""
    reach = resolver.reach()
    if reach.offline:
        return reach.summary()
    if nothing_works(results):
        return cannot_probe(results, resolver_names(resolver, cfg.resolver_port))
    return None


def resolver_names(resolver: Resolver, port: int) -> list[str]:
    """The name servers in use as `address:port` (`[v6]:port`)."""
    return [f"[{ns}]:{port}" if ":" in ns else f"{ns}:{port}" for ns in resolver.nameservers]
