"""Prometheus metrics from the Store: a custom collector that yields metric families from a
snapshot on each scrape. Labels come from configuration only (never from what a peer sends),
so cardinality is bounded by targets x probes x families (x phases, kinds, verdicts).
"""

from __future__ import annotations

import platform
from collections.abc import Iterator

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from monitor import __version__
from monitor.engine.parity import VERDICTS
from monitor.serve.state import Store
from probes.base import FAMILIES, NO_REGION, Target
from probes.details import DnsAnswer, HttpExchange, IcmpEcho, QuicExchange, TlsHandshake

PROBE_LABELS = ["vantage", "target", "service", "region", "probe", "family"]
PAIR_LABELS = ["vantage", "target", "service", "region", "probe"]
TARGET_LABELS = ["vantage", "target", "service", "region"]
HTTP_VERSIONS = ("1.1", "2", "3")


def _region(t: Target | None) -> str:
    return (t.region if t else "") or NO_REGION


class StoreCollector(Collector):
    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        s = self._store
        if s.before_scrape is not None:
            s.before_scrape()
        v = s.vantage

        def labels(name: str, probe: str, family: str | None = None) -> list[str]:
            t = s.targets.get(name)
            base = [v, name, t.service if t else "", _region(t), probe]
            return base if family is None else [*base, family]

        success = GaugeMetricFamily(
            "dualstack_probe_success",
            "1 if the last probe of this family succeeded.",
            labels=PROBE_LABELS,
        )
        duration = GaugeMetricFamily(
            "dualstack_probe_duration_seconds",
            "Latency of the last probe (its measured phases; ICMP: mean RTT).",
            labels=PROBE_LABELS,
        )
        phase = GaugeMetricFamily(
            "dualstack_probe_phase_duration_seconds",
            "Duration of each phase of the last probe.",
            labels=[*PROBE_LABELS, "phase"],
        )
        last_run = GaugeMetricFamily(
            "dualstack_probe_last_run_timestamp_seconds",
            "Unix time the last probe started.",
            labels=PROBE_LABELS,
        )
        records = GaugeMetricFamily(
            "dualstack_dns_records",
            "Addresses in the last A (ipv4) or AAAA (ipv6) answer.",
            labels=PROBE_LABELS,
        )
        not_after = GaugeMetricFamily(
            "dualstack_tls_cert_not_after_timestamp_seconds",
            "Expiry (Unix time) of the leaf certificate presented over this family.",
            labels=PROBE_LABELS,
        )
        status = GaugeMetricFamily(
            "dualstack_http_status_code",
            "HTTP status of the last response over this family.",
            labels=PROBE_LABELS,
        )
        version = GaugeMetricFamily(
            "dualstack_http_version_info",
            "1 for the HTTP version negotiated over this family.",
            labels=[*PROBE_LABELS, "version"],
        )
        addresses = GaugeMetricFamily(
            "dualstack_probe_addresses",
            "Addresses of this family's answer the last probe dialled, by state (ok, failed).",
            labels=[*PROBE_LABELS, "state"],
        )
        path_mtu = GaugeMetricFamily(
            "dualstack_path_mtu_bytes",
            "The largest of the target's icmp.sizes (whole IP packets) echoed back over this "
            "family with fragmentation forbidden.",
            labels=[*TARGET_LABELS, "family"],
        )
        in_ranges = GaugeMetricFamily(
            "dualstack_address_in_aws_ranges",
            "1 if the address probed over this family is in a prefix of AWS's published "
            "ip-ranges.json, 0 if in none.",
            labels=PROBE_LABELS,
        )
        for (name, probe, family), r in sorted(s.latest.items()):
            if r.skipped:
                continue
            lv = labels(name, probe, family)
            success.add_metric(lv, 1.0 if r.success else 0.0)
            if r.address is not None:
                in_ranges.add_metric(lv, 0.0 if r.aws is None else 1.0)
            if r.addresses:
                ok = sum(1 for a in r.addresses if a.success)
                addresses.add_metric([*lv, "ok"], float(ok))
                addresses.add_metric([*lv, "failed"], float(len(r.addresses) - ok))
            duration.add_metric(lv, r.duration_seconds)
            last_run.add_metric(lv, r.started)
            for ph, secs in sorted(r.phases.items()):
                phase.add_metric([*lv, ph], secs)
            d = r.details
            if isinstance(d, DnsAnswer):
                records.add_metric(lv, float(len(d.records)))
            elif isinstance(d, IcmpEcho) and d.path_mtu_bytes is not None:
                path_mtu.add_metric([*lv[:4], family], float(d.path_mtu_bytes))
            elif isinstance(d, TlsHandshake) and probe == "tls" and d.certificate is not None:
                not_after.add_metric(lv, d.certificate.not_after_timestamp)
            elif isinstance(d, HttpExchange | QuicExchange) and d.status is not None:
                status.add_metric(lv, float(d.status))
                if d.http_version in HTTP_VERSIONS:  # a value we negotiated, not peer text
                    version.add_metric([*lv, d.http_version], 1.0)
        yield from (
            success,
            duration,
            phase,
            last_run,
            records,
            not_after,
            status,
            version,
            addresses,
            in_ranges,
            path_mtu,
        )
        yield from self._races()

        latency = HistogramMetricFamily(
            "dualstack_probe_latency_seconds", "Latency of successful probes.", labels=PROBE_LABELS
        )
        for (name, probe, family), h in sorted(s.latency.items()):
            latency.add_metric(labels(name, probe, family), h.cumulative(), h.total)
        yield latency

        runs = CounterMetricFamily("dualstack_probe_runs", "Probes run.", labels=PROBE_LABELS)
        for (name, probe, family), n in sorted(s.runs.items()):
            runs.add_metric(labels(name, probe, family), float(n))
        yield runs
        errors = CounterMetricFamily(
            "dualstack_probe_errors", "Failed probes by error kind.", labels=[*PROBE_LABELS, "kind"]
        )
        for (name, probe, family, kind), n in sorted(s.errors.items()):
            errors.add_metric([*labels(name, probe, family), kind], float(n))
        yield errors

        parity = GaugeMetricFamily(
            "dualstack_parity",
            "IPv6 judged against IPv4: 1 for the current verdict, 0 for the others.",
            labels=[*PAIR_LABELS, "verdict"],
        )
        for (name, probe), p in sorted(s.parity.items()):
            lv = labels(name, probe)
            for verdict in VERDICTS:
                parity.add_metric([*lv, str(verdict)], 1.0 if p.verdict is verdict else 0.0)
        yield parity

        # The vantage's own series (not per target). The shards of one vantage each write
        # theirs: with more than one, a `shard` label keeps them apart (per-target series need
        # none, each target is in one shard), and dualstack_shard_info says which shard is up.
        own_labels = ["vantage", "shard"] if s.shards > 1 else ["vantage"]
        own = [v, str(s.shard)] if s.shards > 1 else [v]
        shard_info = GaugeMetricFamily(
            "dualstack_shard_info",
            "Which shard (from 0) of how many this process probes of the vantage's targets; "
            "always 1.",
            labels=["vantage", "shard", "shards"],
        )
        shard_info.add_metric([v, str(s.shard), str(s.shards)], 1.0)
        yield shard_info

        ipv6 = GaugeMetricFamily(
            "dualstack_vantage_ipv6_available",
            "1 if this vantage has a usable route to a target's IPv6 address (0: none; "
            "absent: no IPv6 address to test).",
            labels=[*own_labels, "site"],
        )
        site = s.site or v  # vantages that share a network and uplink (config `site`)
        if s.vantage_check.ipv6 is not None:
            ipv6.add_metric([*own, site], 1.0 if s.vantage_check.ipv6 else 0.0)
        yield ipv6

        lag = HistogramMetricFamily(
            "dualstack_scheduler_lag_seconds",
            "How late probes start after their slot.",
            labels=own_labels,
        )
        lag.add_metric(own, s.lag.cumulative(), s.lag.total)
        yield lag
        skipped = CounterMetricFamily(
            "dualstack_scheduler_skipped",
            "Runs skipped because the previous run of the job was still going.",
            labels=["vantage", "target", "probe"],
        )
        for (name, probe), n in sorted(s.skipped.items()):
            skipped.add_metric([v, name, probe], float(n))
        yield skipped
        failures = CounterMetricFamily(
            "dualstack_scheduler_job_failures",
            "Job runs that crashed (a bug) or hung past the hard timeout; each still leaves a "
            "failed result.",
            labels=[*own_labels, "reason"],
        )
        for reason in ("crashed", "hung"):
            failures.add_metric([*own, reason], float(s.job_failures[reason]))
        yield failures
        jobs = GaugeMetricFamily(
            "dualstack_scheduler_jobs", "Scheduled (target, probe) jobs.", labels=own_labels
        )
        jobs.add_metric(own, float(sum(len(t.probes) for t in s.targets.values())))
        yield jobs

        reload_ok = GaugeMetricFamily(
            "dualstack_config_last_reload_successful",
            "1 if the last configuration (re)load succeeded.",
            labels=own_labels,
        )
        reload_ok.add_metric(own, 1.0 if s.reload_ok else 0.0)
        yield reload_ok
        reload_ts = GaugeMetricFamily(
            "dualstack_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful configuration load.",
            labels=own_labels,
        )
        reload_ts.add_metric(own, s.reload_time)
        yield reload_ts
        sync = GaugeMetricFamily(
            "dualstack_ip_ranges_sync_timestamp_seconds",
            "syncToken (Unix time) of the AWS ip-ranges.json that addresses are attributed with.",
            labels=own_labels,
        )
        if s.ip_ranges_sync is not None:
            sync.add_metric(own, s.ip_ranges_sync)
        yield sync
        build = GaugeMetricFamily(
            "dualstack_build_info",
            "Build information; always 1.",
            labels=[*own_labels, "site", "version", "python"],
        )
        build.add_metric([*own, site, __version__, platform.python_version()], 1.0)
        yield build

    def _races(self) -> Iterator[Metric]:
        """Happy Eyeballs: who won each target's races, how long the winner took, and what
        IPv6 cost (both win series exist from the start, so a share is defined at once)."""
        s = self._store
        wins = CounterMetricFamily(
            "dualstack_race_wins",
            "Happy Eyeballs (RFC 8305) races won, by the family of the first completed connect.",
            labels=[*TARGET_LABELS, "family"],
        )
        connect = GaugeMetricFamily(
            "dualstack_race_connect_seconds",
            "The last race's time from its first connection attempt to the winner's connect.",
            labels=TARGET_LABELS,
        )
        penalty = GaugeMetricFamily(
            "dualstack_race_ipv6_penalty_seconds",
            "What IPv6 cost the last race: 0 when IPv6 won, else its connect time less a "
            "direct IPv4 connect.",
            labels=TARGET_LABELS,
        )
        for name, t in sorted(s.targets.items()):
            if "race" not in t.probes:
                continue
            lv = [s.vantage, name, t.service, _region(t)]
            for family in FAMILIES:
                wins.add_metric([*lv, family], float(s.race_wins[(name, family)]))
            r = s.races.get(name)
            if r is not None and r.connect_seconds is not None:
                connect.add_metric(lv, r.connect_seconds)
            if r is not None and r.ipv6_penalty_seconds is not None:
                penalty.add_metric(lv, r.ipv6_penalty_seconds)
        yield from (wins, connect, penalty)


def make_registry(store: Store) -> CollectorRegistry:
    """A fresh registry per vantage (and per test): no global state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry
