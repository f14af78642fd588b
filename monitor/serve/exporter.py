"""Prometheus metrics from the Store: a custom collector that yields metric families from a
snapshot on each scrape, and `Exposition`, the same text built faster for `probe serve` (label
text kept per job, samples written without metric objects; byte for byte what prometheus_client
writes, which tests check). Labels come from configuration only (never from what a peer sends),
so cardinality is bounded by targets x probes x families (x phases, kinds, verdicts).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import exposition, openmetrics
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString as _float_to_go

from monitor import __version__
from monitor.engine.parity import VERDICTS
from monitor.serve.state import (
    LATENCY_BUCKETS,
    Histogram,
    PairKey,
    ResultKey,
    Snapshot,
    Store,
)
from probes.base import FAMILIES, NO_REGION, ProbeResult, Target
from probes.details import DnsAnswer, HttpExchange, IcmpEcho, QuicExchange, TlsHandshake

PROBE_LABELS = ["vantage", "target", "service", "region", "probe", "family"]
PAIR_LABELS = ["vantage", "target", "service", "region", "probe"]
TARGET_LABELS = ["vantage", "target", "service", "region"]
HTTP_VERSIONS = ("1.1", "2", "3")


def _region(t: Target | None) -> str:
    return (t.region if t else "") or NO_REGION


class StoreCollector(Collector):
    """The live store, through a snapshot taken on each collect (on the caller's thread)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Metric]:
        if self._store.before_scrape is not None:
            self._store.before_scrape()
        return SnapshotCollector(self._store.snapshot()).collect()


class SnapshotCollector(Collector):
    """One snapshot's metric families, in the order of the exposition."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def collect(self) -> Iterator[Metric]:
        s = self._snap
        yield from _result_families(s)
        yield from _races(s)
        yield from _counter_families(s)
        yield from _tail_families(s)


Labeller = Callable[..., list[str]]


def _labeller(s: Snapshot) -> Labeller:
    v = s.vantage

    def labels(name: str, probe: str, family: str | None = None) -> list[str]:
        t = s.targets.get(name)
        base = [v, name, t.service if t else "", _region(t), probe]
        return base if family is None else [*base, family]

    return labels


def _result_families(s: Snapshot) -> Iterator[Metric]:
    """The families with a series per result (`Store.latest`)."""
    labels = _labeller(s)
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


def _counter_families(s: Snapshot) -> Iterator[Metric]:
    """Latency histograms, runs, errors and parity: a series (or a few) per job."""
    labels = _labeller(s)
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


def _tail_families(s: Snapshot) -> Iterator[Metric]:
    """The vantage's own figures: a handful of series (skipped: a series per skipping job).

    The shards of one vantage each write theirs: with more than one, a `shard` label keeps
    them apart (per-target series need none, each target is in one shard), and
    dualstack_shard_info says which shard is up."""
    v = s.vantage
    own_labels = ["vantage", "shard"] if s.shards > 1 else ["vantage"]
    own = [v, str(s.shard)] if s.shards > 1 else [v]
    shard_info = GaugeMetricFamily(
        "dualstack_shard_info",
        "Which shard (from 0) of how many this process probes of the vantage's targets; always 1.",
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
        failures.add_metric([*own, reason], float(s.job_failures.get(reason, 0)))
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


def _races(s: Snapshot) -> Iterator[Metric]:
    """Happy Eyeballs: who won each target's races, how long the winner took, and what
    IPv6 cost (both win series exist from the start, so a share is defined at once)."""
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
            wins.add_metric([*lv, family], float(s.race_wins.get((name, family), 0)))
        r = s.races.get(name)
        if r is not None and r.connect_seconds is not None:
            connect.add_metric(lv, r.connect_seconds)
        if r is not None and r.ipv6_penalty_seconds is not None:
            penalty.add_metric(lv, r.ipv6_penalty_seconds)
    yield from (wins, connect, penalty)


class _Families(Collector):
    def __init__(self, metrics: Iterable[Metric]) -> None:
        self._metrics = tuple(metrics)

    def collect(self) -> Iterator[Metric]:
        return iter(self._metrics)


Encoder = Callable[[Collector], bytes]
FAST_ESCAPINGS = (openmetrics.exposition.UNDERSCORES, openmetrics.exposition.ALLOWUTF8)
"""Escapings that leave our (legacy) metric and label names as they are: the fast path's."""
CHUNK_LINES = 8192
"""Lines per piece of a render (about 1 MB): a render never holds the whole text."""


def floatToGoString(value: float) -> str:
    """A sample value as prometheus_client writes it: `repr` below a million (its own rule
    differs only for longer integer parts, infinities and NaN), which is most values here."""
    if -1e300 < value < 1e6:
        return repr(value)
    text: str = _float_to_go(value)  # type: ignore[no-untyped-call]
    return text


def _escape(value: str) -> str:
    """A label value as both formats write it (backslash, newline, double quote)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Exposition:
    """`/metrics` for a snapshot, as prometheus_client would write it from `SnapshotCollector`
    but several times faster: the label text of each job is built once and kept while its
    target is unchanged, and the per-job samples are written straight to text. Escapings that
    rename metrics (`dots`, `values`) go through prometheus_client itself. Not thread-safe: one
    render at a time (the web layer's render thread)."""

    def __init__(self) -> None:
        self._labels: dict[ResultKey, tuple[Target | None, str, str, int, int]] = {}
        self._headers: dict[str, tuple[str, ...]] = {}
        self._job_text: dict[ResultKey, Kept] = {}
        """Per result key: what its lines were written from, and its lines of each per-job
        family but the errors (`Kept`)."""
        self._last_rows: tuple[str, set[ResultKey], dict[str, Target], list[Row]] | None = None
        """The rows of the last render, with what they were made from."""
        self._parity_text: dict[PairKey, tuple[object, Target | None, str, str]] = {}
        """Per (target, probe): (verdict, target, vantage label, its lines)."""

    @staticmethod
    def negotiate(accept: str) -> tuple[Encoder, str]:
        """The encoder and content type for an `Accept` header (prometheus_client's choice)."""
        encoder, content_type = exposition.choose_encoder(accept)
        return encoder, content_type

    def content_type(self, accept: str) -> str:
        return self.negotiate(accept)[1]

    def render(self, snap: Snapshot, accept: str) -> Iterator[str]:
        """The exposition for `accept`, in chunks of text."""
        encoder, content_type = self.negotiate(accept)
        func = getattr(encoder, "func", encoder)
        escaping = getattr(encoder, "keywords", {}).get("escaping", FAST_ESCAPINGS[0])
        openmetrics_text = func is openmetrics.exposition.generate_latest
        if escaping not in FAST_ESCAPINGS or not (
            openmetrics_text or func is exposition.generate_latest
        ):
            yield encoder(SnapshotCollector(snap)).decode("utf-8")
            return

        def encode(metrics: Iterable[Metric]) -> str:
            text = encoder(_Families(metrics)).decode("utf-8")
            return text.removesuffix("# EOF\n") if openmetrics_text else text

        headers = self._headers.get(content_type)
        if headers is None:
            empty = Store(vantage="").snapshot()
            headers = tuple(
                encode([m]) for m in (*_result_families(empty), *_counter_families(empty))
            )
            self._headers[content_type] = headers
        rows = self._rows(snap)
        num: dict[float, str] = {0.0: "0.0", 1.0: "1.0"}

        def n(value: float) -> str:
            """floatToGoString, remembered: counts repeat."""
            text = num.get(value)
            if text is None:
                text = num[value] = floatToGoString(value)
            return text

        columns = self._job_columns(snap, rows, n)
        for header, column in zip(
            headers[:_RESULT_FAMILIES], columns[:_RESULT_FAMILIES], strict=True
        ):
            yield from _chunks(header, column)
        yield encode(_races(snap))
        h_latency, h_runs, h_errors, h_parity = headers[-4:]
        yield from _chunks(h_latency, columns[-2], CHUNK_LINES // len(_LATENCY_LINES))
        yield from _chunks(h_runs, columns[-1])
        yield from self._parity_and_errors(snap, rows, h_errors, h_parity, n)
        yield encode(_tail_families(snap))
        if openmetrics_text:
            yield "# EOF\n"

    def _rows(self, snap: Snapshot) -> list[Row]:
        """(family label, the labels after it, all labels, labels before `target`, key) per
        result key, sorted: the text around which every per-job sample is written."""
        v = snap.vantage
        keys = snap.latest.keys() | snap.runs.keys() | snap.latency.keys()
        keys |= {(name, probe, family) for name, probe, family, _ in snap.errors}
        last = self._last_rows
        if (
            last is not None
            and last[0] == v
            and last[1] == keys
            and last[2].keys() == snap.targets.keys()
            and all(snap.targets[name] is t for name, t in last[2].items())
        ):
            return last[3]  # the same jobs of the same targets: the same rows
        rows = []
        cache = self._labels
        fresh: dict[ResultKey, tuple[Target | None, str, str, int, int]] = {}
        for key in sorted(keys):
            t = snap.targets.get(key[0])
            c = cache.get(key)
            if c is None or c[0] is not t or c[1] != v:
                name, probe, family = key
                fam = f'family="{_escape(family)}"'
                before = f'{fam},probe="{_escape(probe)}",region="{_escape(_region(t))}",'
                before += f'service="{_escape(t.service if t else "")}"'
                plain = f'{before},target="{_escape(name)}",vantage="{_escape(v)}"'
                c = (t, v, plain, len(fam), len(before))
            fresh[key] = c
            plain, a, b = c[2], c[3], c[4]
            rows.append((plain[:a], plain[a + 1 :], plain, plain[:b], key))
        self._labels = fresh  # forget jobs that are gone
        self._last_rows = (v, keys, dict(snap.targets), rows)
        return rows

    def _job_columns(
        self, snap: Snapshot, rows: list[Row], n: Callable[[float], str]
    ) -> list[tuple[str, ...]]:
        """Per family with a series per job (the per-result families, the latency histogram,
        runs): its lines, a text per row. A row's texts are written once and kept while its
        result, histogram and label text are the same objects and its run count the same (a
        job's result and histogram are replaced on each run, never changed, so about one job
        in 30 is written afresh per render at a 60 s interval and a render every 2 s)."""
        latest, latency, runs = snap.latest, snap.latency, snap.runs
        kept = self._job_text
        fresh: dict[ResultKey, Kept] = {}
        texts: list[tuple[str, ...]] = []
        for fam, rest, plain, before, key in rows:
            r = latest.get(key)
            h = latency.get(key)
            count = runs.get(key)
            c = kept.get(key)
            if c is None or c[0] is not r or c[1] is not h or c[2] is not plain or c[3] != count:
                lines = (
                    _NO_RESULT
                    if r is None or r.skipped
                    else _result_text(fam, rest, plain, before, r, n)
                )
                hist = "" if h is None else _histogram_text(fam, rest, plain, h, n)
                ran = (
                    ""
                    if count is None
                    else f"dualstack_probe_runs_total{{{plain}}} {n(float(count))}\n"
                )
                c = (r, h, plain, count, (*lines, hist, ran))
            fresh[key] = c
            texts.append(c[4])
        self._job_text = fresh  # forget jobs that are gone
        return list(zip(*texts, strict=True)) if texts else [()] * (_RESULT_FAMILIES + 2)

    def _parity_and_errors(
        self,
        snap: Snapshot,
        rows: list[Row],
        h_errors: str,
        h_parity: str,
        n: Callable[[float], str],
    ) -> Iterator[str]:
        """Errors by kind (a series per job and kind that happened), then the verdicts."""
        out = [h_errors]
        by_key: dict[ResultKey, list[tuple[str, int]]] = {}
        for (name, probe, family, kind), c in snap.errors.items():
            by_key.setdefault((name, probe, family), []).append((kind, c))
        for fam, rest, _, _, key in rows if by_key else ():
            errors = by_key.get(key)
            for kind, c in sorted(errors) if errors else ():
                out.append(
                    f'dualstack_probe_errors_total{{{fam},kind="{_escape(kind)}",{rest}}} '
                    f"{n(float(c))}\n"
                )
        yield "".join(out)
        v = _escape(snap.vantage)
        kept_pairs = self._parity_text
        fresh_pairs: dict[PairKey, tuple[object, Target | None, str, str]] = {}
        lines: list[str] = []
        for (name, probe), par in sorted(snap.parity.items()):
            t = snap.targets.get(name)
            pc = kept_pairs.get((name, probe))
            if pc is None or pc[0] is not par.verdict or pc[1] is not t or pc[2] != v:
                pair = (
                    f'probe="{_escape(probe)}",region="{_escape(_region(t))}",'
                    f'service="{_escape(t.service if t else "")}",target="{_escape(name)}",'
                    f'vantage="{v}"'
                )
                pc = (
                    par.verdict,
                    t,
                    v,
                    "".join(
                        f'dualstack_parity{{{pair},verdict="{verdict}"}} '
                        f"{'1.0' if par.verdict is verdict else '0.0'}\n"
                        for verdict in VERDICTS
                    ),
                )
            fresh_pairs[(name, probe)] = pc
            lines.append(pc[3])
        self._parity_text = fresh_pairs
        yield from _chunks(h_parity, lines, CHUNK_LINES // len(VERDICTS))


Row = tuple[str, str, str, str, ResultKey]
Kept = tuple[ProbeResult | None, Histogram | None, str, int | None, tuple[str, ...]]
"""A job's kept text: (result, histogram, label text, run count) it was written from, and its
lines of each per-result family, the latency histogram and runs, in the exposition's order."""
_RESULT_FAMILIES = 11
"""Families with a series per result, in the order of `_result_families` (and _result_text)."""
_NO_RESULT = ("",) * _RESULT_FAMILIES


def _chunks(header: str, texts: Sequence[str], per: int = CHUNK_LINES) -> Iterator[str]:
    """A family: its header, then its per-job texts joined `per` at a time."""
    if len(texts) <= per:
        yield header + "".join(texts)
        return
    yield header
    for i in range(0, len(texts), per):
        yield "".join(texts[i : i + per])


def _result_text(
    fam: str, rest: str, p: str, before: str, r: ProbeResult, n: Callable[[float], str]
) -> tuple[str, ...]:
    """One result's lines in each of the per-result families ("" where it has none)."""
    g = floatToGoString
    d = r.details
    phases = "".join(
        f'dualstack_probe_phase_duration_seconds{{{fam},phase="{_escape(ph)}",{rest}}} {g(secs)}\n'
        for ph, secs in sorted(r.phases.items())
    )
    records = (
        f"dualstack_dns_records{{{p}}} {n(float(len(d.records)))}\n"
        if isinstance(d, DnsAnswer)
        else ""
    )
    not_after = (
        f"dualstack_tls_cert_not_after_timestamp_seconds{{{p}}} "
        f"{g(d.certificate.not_after_timestamp)}\n"
        if isinstance(d, TlsHandshake) and r.probe == "tls" and d.certificate is not None
        else ""
    )
    status = version = ""
    if isinstance(d, HttpExchange | QuicExchange) and d.status is not None:
        status = f"dualstack_http_status_code{{{p}}} {n(float(d.status or 0))}\n"
        if d.http_version in HTTP_VERSIONS:
            version = f'dualstack_http_version_info{{{p},version="{d.http_version}"}} 1.0\n'
    addresses = ""
    if r.addresses:
        ok = sum(1 for a in r.addresses if a.success)
        after = p[len(before) + 1 :]
        failed = n(float(len(r.addresses) - ok))
        addresses = (
            f'dualstack_probe_addresses{{{before},state="ok",{after}}} {n(float(ok))}\n'
            f'dualstack_probe_addresses{{{before},state="failed",{after}}} {failed}\n'
        )
    in_ranges = (
        f"dualstack_address_in_aws_ranges{{{p}}} {'0.0' if r.aws is None else '1.0'}\n"
        if r.address is not None
        else ""
    )
    path_mtu = (
        f"dualstack_path_mtu_bytes{{{fam},{rest.split(',', 1)[1]}}} {n(float(d.path_mtu_bytes))}\n"
        if isinstance(d, IcmpEcho) and d.path_mtu_bytes is not None
        else ""
    )
    return (
        f"dualstack_probe_success{{{p}}} {'1.0' if r.success else '0.0'}\n",
        f"dualstack_probe_duration_seconds{{{p}}} {g(r.duration_seconds)}\n",
        phases,
        f"dualstack_probe_last_run_timestamp_seconds{{{p}}} {g(r.started)}\n",
        records,
        not_after,
        status,
        version,
        addresses,
        in_ranges,
        path_mtu,
    )


def _histogram_text(fam: str, rest: str, p: str, h: Histogram, n: Callable[[float], str]) -> str:
    """One job's latency histogram: cumulative buckets, +Inf, count and sum."""
    running = 0
    args: list[str] = []
    for c in h.counts:
        running += c
        args += (fam, rest, n(float(running)))
    total = n(float(h.count))
    args += (fam, rest, total, p, total, p, floatToGoString(h.total))
    return _HISTOGRAM % tuple(args)


_LATENCY_LINES = (*LATENCY_BUCKETS, "+Inf", "count", "sum")
_HISTOGRAM = (
    "".join(
        f'dualstack_probe_latency_seconds_bucket{{%s,le="{format(bound, "g")}",%s}} %s\n'
        for bound in LATENCY_BUCKETS
    )
    + 'dualstack_probe_latency_seconds_bucket{%s,le="+Inf",%s} %s\n'
    + "dualstack_probe_latency_seconds_count{%s} %s\n"
    + "dualstack_probe_latency_seconds_sum{%s} %s\n"
)
"""One job's latency histogram, filled with %: (family label, the rest, value) per bucket."""


def make_registry(store: Store) -> CollectorRegistry:
    """A fresh registry per vantage (and per test): no global state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry
