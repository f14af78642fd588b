"""The long-running vantage point behind `probe serve`: the scheduler's jobs resolve, probe both
families of one (target, probe) in the same tick, judge parity and update the Store; reloads
reconcile jobs; a housekeeping task refreshes the vantage self-check and scheduler figures.
The process around it (HTTP server, signals) is monitor/serve/main.py.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import Counter
from collections.abc import Callable

from monitor.config import Config, ConfigError
from monitor.engine.check import (
    check_target,
    make_env,
    make_resolver,
    nameserver_targets,
    thresholds,
    with_resolver,
)
from monitor.engine.parity import Parity, judge
from monitor.engine.vantage import check_vantage, ipv6_broken
from monitor.serve.events import is_event
from monitor.serve.scheduler import Clock, Scheduler
from monitor.serve.state import Store
from monitor.serve.tracing import Tracer
from probes import kinds
from probes.base import (
    FAMILIES,
    Family,
    ProbeEnv,
    ProbeKind,
    ProbeResult,
    Resolution,
    Target,
)
from probes.errors import classify
from probes.handler import not_run
from probes.resolve import Resolver
from probes.resolvers import listed

log = logging.getLogger("dualstack.vantage")
FAILURE_REMINDER_SECONDS = 600.0
"""A probe that keeps failing the same way is logged when it starts, then at most this often."""


class ResolutionCache:
    """Transport probes of a target reuse its last resolution for as long as its TTL says, as
    a client's resolver would; the dns probe always asks afresh (and refreshes the cache), so
    DNS trouble and a rotation are seen by the dns probe, on time. A failed resolution, or one
    with a TTL of 0, is never reused: the next probe asks again."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._entries: dict[tuple[str, Family], tuple[float, Resolution]] = {}
        """(host, family) -> (when it expires, the resolution)."""

    def peek(self, host: str, family: Family) -> Resolution | None:
        """The resolution still within its TTL, without asking; None when there is none."""
        hit = self._entries.get((host, family))
        return hit[1] if hit is not None and self._clock() < hit[0] else None

    async def get(
        self, resolver: Resolver, host: str, family: Family, *, fresh: bool
    ) -> Resolution:
        key = (host, family)
        if not fresh and (hit := self.peek(host, family)) is not None:
            return hit
        asked = self._clock()
        res = await resolver.resolve(host, family)
        if res.error is None and res.ttl:
            self._entries[key] = (asked + res.ttl, res)
        else:
            self._entries.pop(key, None)
        return res

    def clear(self) -> None:
        self._entries.clear()


class Vantage:
    def __init__(
        self, cfg: Config, *, clock: Clock | None = None, default_external_url: str = ""
    ) -> None:
        self.cfg = cfg
        self.default_external_url = default_external_url
        """`external_url` when the configuration has none (`http://` and the listen address)."""
        env = make_env(cfg)
        self.resolver: Resolver = make_resolver(cfg, env)
        self.env: ProbeEnv = with_resolver(env, self.resolver)
        self.store = Store(
            vantage=cfg.vantage,
            site=cfg.site or cfg.vantage,
            shard=cfg.shard.index,
            shards=cfg.shard.count,
        )
        self.cache = ResolutionCache()
        self.tracer = Tracer(self.store)
        self.tracer.configure(cfg.trace, self.env)
        self.scheduler = Scheduler(
            self.run_job,
            clock=clock,
            concurrency=cfg.concurrency,
            on_failure=self._job_failed,
        )
        self.store.before_scrape = self._sync_scheduler_stats
        self._failing: dict[tuple[str, ProbeKind, Family], tuple[str, float]] = {}
        """(target, probe, family) failing now -> its error kind and when that was logged."""
        self._first_round = True
        """Until every job has a result: its verdicts and failures are said in one summary
        line when it ends (`first_round`), not in one line per job."""

    # -- configuration -----------------------------------------------------------------------

    async def apply(self, cfg: Config) -> None:
        """Adopt a configuration: jobs are added and removed, the others keep their slots.

        What can fail (the probe environment, the zones' name servers, the scheduler's checks
        of every job) happens before anything running is touched: a failure leaves the running
        configuration whole, store and scheduler alike."""
        env = make_env(cfg)
        resolver = make_resolver(cfg, env)
        ns_targets, notes = await nameserver_targets(cfg, resolver) if cfg.zones else ([], [])
        # This shard's targets only (the name servers are already this shard's).
        mine = (t for t in cfg.targets if cfg.shard.owns(t.name))
        targets = {t.name: t for t in (*mine, *ns_targets)}
        added, removed = self.scheduler.set_targets(targets.values())  # checks, then changes
        self.cfg, self.env, self.resolver = cfg, with_resolver(env, resolver), resolver
        self.tracer.configure(cfg.trace, self.env)
        self.cache.clear()
        self.store.vantage = cfg.vantage
        ranges = env.ip_ranges
        self.store.ip_ranges_sync = ranges.sync_timestamp if ranges is not None else None
        self.store.site = cfg.site or cfg.vantage
        self.store.shard, self.store.shards = cfg.shard.index, cfg.shard.count
        self.store.events.configure(
            keep=cfg.events.keep, file=cfg.events.file, max_bytes=cfg.events.max_bytes
        )
        self.store.external_url = cfg.external_url or self.default_external_url
        for note in notes:
            log.warning(note, extra={"fields": {"event": "zone_expansion_failed"}})
        self.store.notes = tuple(notes)
        self.store.set_targets(targets)
        self.store.reload_ok = True
        self.store.reload_time = time.time()
        log.info(
            "configuration applied",
            extra={
                "fields": {
                    "event": "config_applied",
                    "shard": str(cfg.shard),
                    "targets": len(targets),
                    "jobs_added": len(added),
                    "jobs_removed": len(removed),
                }
            },
        )

    async def reload(self, load: Callable[[], Config]) -> bool:
        """Load and apply a configuration; one that fails, whatever the cause, keeps the running
        one whole (and says so: the log, and the reload-success gauge at 0)."""
        try:
            await self.apply(load())
        except Exception as exc:  # a bad file, or a bug: either way the service runs on
            self.store.reload_ok = False
            known = isinstance(exc, ConfigError)
            log.error(
                "reload failed, keeping the running configuration: %s",
                exc if known else f"{type(exc).__name__}: {exc}",
                exc_info=not known,
                extra={"fields": {"event": "reload_failed"}},
            )
            return False
        return True

    # -- jobs --------------------------------------------------------------------------------

    async def run_job(self, target: Target, probe: ProbeKind) -> None:
        if target.resolvers is not None:  # a resolver target: its resolvers, not its name
            resolutions = {f: listed(target, f, self.resolver.nameservers) for f in FAMILIES}
        else:
            resolutions = {
                f: r for f in FAMILIES if probe != "dns" and (r := self.cache.peek(target.host, f))
            }
        # A kind run once over both families (the race) resolves for itself, as a client does.
        if kinds.get(probe).per_family and len(resolutions) < len(FAMILIES):
            missing = [f for f in FAMILIES if f not in resolutions]
            res = await asyncio.gather(
                *(self.cache.get(self.resolver, target.host, f, fresh=True) for f in missing)
            )
            resolutions.update(zip(missing, res, strict=True))
        results = await check_target(
            target,
            [probe],
            self.cfg.families,
            resolutions,
            self.env,
            None,
            vantage=self.store.vantage_check,
        )
        self._record(target, probe, results)

    def _record(self, target: Target, probe: ProbeKind, results: list[ProbeResult]) -> None:
        by = {r.family: r for r in results}
        v6 = by.get("ipv6")
        if self.store.vantage_check.ipv6 is None and v6 is not None and v6.address:
            self.check_vantage()  # the first IPv6 address seen: no need to wait for housekeeping
        judged = kinds.get(probe).per_family  # a kind run once over both has no verdict
        parity = self._judge(target, probe, by.get("ipv4"), v6) if judged else None
        previous = self.store.record(results, parity)
        if (
            self.store.vantage_check.reason == "ipv6_broken"
            and v6 is not None
            and v6.success
            and kinds.get(v6.probe).transport
        ):
            self.check_vantage()  # a target works over IPv6 again: clear at once
        for r in results:
            self._log_failure(r)
        if parity is not None:
            self._changed(previous, parity)
        self._end_first_round()

    def _end_first_round(self) -> None:
        """Once every job has a result: one line for the whole first round."""
        if not self._first_round or not self.store.ready:
            return
        self._first_round = False
        snap = self.store.snapshot()
        verdicts = Counter(str(p.verdict) for p in snap.parity.values())
        said = ", ".join(f"{n} {v}" for v, n in verdicts.most_common()) or "none"
        failed = [r for r in snap.latest.values() if not r.skipped and r.error is not None]
        whys = Counter(r.error.why() for r in failed if r.error is not None).most_common(1)
        common = f" (most common: {whys[0][0]}, {whys[0][1]})" if whys else ""
        if not snap.vantage_probing_ok:
            common += ": every job failed over both families, this vantage cannot probe"
        log.info(
            "first round done: %d verdicts: %s; %d probes failing%s",
            len(snap.parity),
            said,
            len(failed),
            common,
            extra={
                "fields": {
                    "event": "first_round",
                    "verdicts": said,
                    "failing": len(failed),
                    "most_common": whys[0][0] if whys else None,
                    "vantage_probing_ok": snap.vantage_probing_ok,
                }
            },
        )

    def _log_failure(self, r: ProbeResult) -> None:
        """A failure is logged when it starts or changes kind, then reminded at most every
        FAILURE_REMINDER_SECONDS, and its end once: not one line per probe per interval."""
        if r.skipped:
            return
        key = (r.target, r.probe, r.family)
        now = self.scheduler.clock.now()
        seen = self._failing.get(key)
        fields: dict[str, object] = {"target": r.target, "probe": r.probe, "family": r.family}
        if r.error is None:
            if seen is not None:
                del self._failing[key]
                log.info(
                    "probe recovered", extra={"fields": {"event": "probe_recovered", **fields}}
                )
            return
        kind = str(r.error.kind)
        fields |= {"kind": kind, "phase": r.error.phase, "error": r.error.message}
        if self._first_round and seen is None:  # counted in the first round's summary line
            log.debug("probe failed", extra={"fields": {"event": "probe_failed", **fields}})
        elif seen is None or seen[0] != kind:
            log.warning("probe failed", extra={"fields": {"event": "probe_failed", **fields}})
        elif now - seen[1] >= FAILURE_REMINDER_SECONDS:
            log.warning(
                "probe still failing", extra={"fields": {"event": "probe_still_failing", **fields}}
            )
        else:
            return
        self._failing[key] = (kind, now)

    def _judge(
        self, target: Target, probe: ProbeKind, v4: ProbeResult | None, v6: ProbeResult | None
    ) -> Parity:
        check = self.store.vantage_check
        return judge(
            target,
            probe,
            v4,
            v6,
            thresholds=thresholds(self.cfg),
            vantage_ipv6=check.ipv6,
            vantage_reason=check.reason,
        )

    def _rejudge_all(self) -> None:
        """The vantage's judgement changed: every stored verdict is judged again from its
        latest results, so per-target alerts follow at once, not one interval later."""
        latest = self.store.latest
        for (name, probe), previous in list(self.store.parity.items()):
            target = self.store.targets.get(name)
            if target is None:
                continue
            parity = self._judge(
                target, probe, latest.get((name, probe, "ipv4")), latest.get((name, probe, "ipv6"))
            )
            self.store.parity[(name, probe)] = parity
            self._changed(previous, parity)

    def _changed(self, previous: Parity | None, parity: Parity) -> None:
        """A verdict stored: a change is logged and kept as an event with the results it was
        judged on (the store's latest of the job, both families)."""
        was = previous.verdict if previous is not None else None
        target = self.store.targets.get(parity.target)
        if is_event(was, parity.verdict) and target is not None:
            latest = self.store.latest
            event = self.store.events.add(
                vantage=self.store.vantage,
                site=self.store.site,
                target=target,
                parity=parity,
                previous=was,
                results=(
                    r
                    for f in FAMILIES
                    if (r := latest.get((parity.target, parity.probe, f))) is not None
                ),
            )
            self.tracer.on_event(event, target)
        if was is parity.verdict:
            return
        if previous is None and self._first_round:
            return  # said in the first round's summary line
        log.info(
            "verdict %s",
            "set" if previous is None else "changed",
            extra={
                "fields": {
                    "event": "verdict_changed",
                    "target": parity.target,
                    "probe": parity.probe,
                    "from": str(previous.verdict) if previous else None,
                    "to": str(parity.verdict),
                    "reason": parity.reason,
                }
            },
        )

    def _job_failed(self, target: Target, probe: ProbeKind, exc: BaseException) -> None:
        """A job that crashed or hung still leaves a result: both families failed with it."""
        err = classify(exc)
        # both families; one result for a kind run once over both, under the first (as the
        # handler files it when the probe ends on no family)
        families = FAMILIES
        if not kinds.get(probe).per_family:
            families = tuple(f for f in FAMILIES if f in target.families)[:1] or FAMILIES[:1]
        results = [not_run(target, probe, f, error=err) for f in families]
        self._record(target, probe, results)

    # -- housekeeping ------------------------------------------------------------------------

    def _sync_scheduler_stats(self) -> None:
        for value in self.scheduler.stats.take_lateness():
            self.store.lag.observe(value)
        self.store.skipped.clear()
        self.store.skipped.update(self.scheduler.stats.skipped)
        stats = self.scheduler.stats
        self.store.job_failures.update(
            crashed=stats.crashed - self.store.job_failures["crashed"],
            hung=stats.hung - self.store.job_failures["hung"],
        )

    def check_vantage(self) -> None:
        """The route self-check, then the results: every IPv6 target failing while IPv4 works
        is this vantage's IPv6, broken beyond its router (probes keep running, to clear)."""
        families = self.cfg.families
        before = self.store.vantage_check
        if "ipv6" in families:
            check = check_vantage(
                self.store.ipv6_addresses(), self.env.source_addresses.get("ipv6")
            )
            if check.ipv6 and ipv6_broken(self.store.latest.values()):
                check = check.broken()
        else:
            check = dataclasses.replace(self.store.vantage_check, ipv6=None, reason=None)
        self.store.vantage_check = check
        if (check.ipv6, check.reason) != (before.ipv6, before.reason):
            log.info(
                "vantage IPv6: %s%s",
                check.ipv6,
                f" ({check.reason})" if check.reason else "",
                extra={
                    "fields": {
                        "event": "vantage_ipv6_changed",
                        "ipv6": check.ipv6,
                        "reason": check.reason,
                    }
                },
            )
            self._rejudge_all()

    def check_dns(self) -> None:
        """Did any DNS server answer since the last look? None at all (and some query made)
        means this vantage cannot probe: said once when it starts and once when it ends
        (logs, /readyz, the report's vantage_offline), not at every query."""
        reach = self.resolver.take_reach()
        if reach.answered:
            state = None
        elif reach.unanswered:
            state = reach.summary()
        else:
            return  # no query in this window: nothing learnt
        was = self.store.offline
        self.store.offline = state
        if state is not None and was is None:
            log.warning(state, extra={"fields": {"event": "dns_unreachable"}})
        elif state is None and was is not None:
            log.info("a DNS server answers again", extra={"fields": {"event": "dns_reachable"}})

    async def housekeeping(self, every: float = 10.0) -> None:
        while True:
            self.check_vantage()
            self.check_dns()
            self._sync_scheduler_stats()
            await asyncio.sleep(every)
