"""Prometheus metrics from the Store: a custom collector that yields metric families from a
snapshot on each scrape, and `Exposition`, the same text built faster for `probe serve` (label
text kept per job, samples written without metric objects, kept compressed in blocks; byte for
byte what prometheus_client writes, which tests check). Per-job series come in schedule order
(`schedule_order`), not sorted by name. Labels come from configuration only (never from what a
peer sends), so cardinality is bounded by targets x probes x families (x phases, kinds,
verdicts).
"""

from __future__ import annotations

import bisect
import platform
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from operator import attrgetter
from typing import Any, Generic, TypeVar

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
from monitor.gz import Deflated, Deflater
from monitor.serve.scheduler import job_offset
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
K = TypeVar("K", bound=tuple[str, ...])
V = TypeVar("V")


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


Order = Callable[[tuple[str, ...]], tuple[float, float, tuple[str, ...]]]
Span = tuple[int, int, tuple[Any, ...], tuple[str, ...]]
"""A block of rows: where it starts and ends in the rows, their keys and label text."""


def schedule_order(s: Snapshot, offsets: dict[tuple[str, str], float] | None = None) -> Order:
    """A sort key for series keys ((target, probe, ...)): the order in which their jobs start
    within an interval (the target's interval, then the scheduler's `job_offset`), then the key.
    A job's series change when it runs, so in this order the series that changed between two
    renders sit together (the exposition keeps its text in blocks). `offsets` remembers each
    job's offset (a hash) from one call to the next."""
    known: dict[tuple[str, str], float] = {} if offsets is None else offsets
    targets = s.targets

    def order(key: tuple[str, ...]) -> tuple[float, float, tuple[str, ...]]:
        job = (key[0], key[1])
        o = known.get(job)
        if o is None:
            o = known[job] = job_offset(job, 1.0)
        t = targets.get(job[0])
        return (t.interval if t else 0.0, o, key)

    return order


def _by_schedule(s: Snapshot, series: Mapping[K, V]) -> list[tuple[K, V]]:
    order = schedule_order(s)
    return sorted(series.items(), key=lambda item: order(item[0]))


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
    for (name, probe, family), r in _by_schedule(s, s.latest):
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
    for (name, probe, family), h in _by_schedule(s, s.latency):
        latency.add_metric(labels(name, probe, family), h.cumulative(), h.total)
    yield latency

    runs = CounterMetricFamily("dualstack_probe_runs", "Probes run.", labels=PROBE_LABELS)
    for (name, probe, family), n in _by_schedule(s, s.runs):
        runs.add_metric(labels(name, probe, family), float(n))
    yield runs
    errors = CounterMetricFamily(
        "dualstack_probe_errors", "Failed probes by error kind.", labels=[*PROBE_LABELS, "kind"]
    )
    for (name, probe, family, kind), n in _by_schedule(s, s.errors):
        errors.add_metric([*labels(name, probe, family), kind], float(n))
    yield errors

    parity = GaugeMetricFamily(
        "dualstack_parity",
        "IPv6 judged against IPv4: 1 for the current verdict, 0 for the others.",
        labels=[*PAIR_LABELS, "verdict"],
    )
    for (name, probe), p in _by_schedule(s, s.parity):
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
    target is unchanged, the per-job samples are written straight to text, and that text is
    kept compressed, in blocks of `BLOCK_ROWS` series in schedule order (`schedule_order`), while
    what it was written from is the same. Escapings that rename metrics (`dots`, `values`) go
    through prometheus_client itself. Not thread-safe: one render at a time (the web layer's
    render thread)."""

    def __init__(self) -> None:
        self._labels: dict[ResultKey, tuple[Target | None, str, str, int, int]] = {}
        self._headers: dict[str, tuple[str, ...]] = {}
        self._offsets: dict[tuple[str, str], float] = {}
        """Each job's place in its interval (`schedule_order`), kept: a hash to compute."""
        self._job_blocks: dict[object, Block] = {}
        """Per block of rows, by the key of its last row: what its series were written from,
        and each family's text."""
        self._job_rows: KeptRows[ResultKey, Row] = KeptRows()
        self._pair_rows: KeptRows[PairKey, PairRow] = KeptRows()
        self._parity_blocks: dict[object, Block] = {}

    @staticmethod
    def negotiate(accept: str) -> tuple[Encoder, str]:
        """The encoder and content type for an `Accept` header (prometheus_client's choice)."""
        encoder, content_type = exposition.choose_encoder(accept)
        return encoder, content_type

    def content_type(self, accept: str) -> str:
        return self.negotiate(accept)[1]

    def render(self, snap: Snapshot, accept: str) -> Iterator[str | Deflated]:
        """The exposition for `accept`: text, and kept pieces already compressed."""
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
        rows, spans = self._rows(snap)
        num: dict[float, str] = {0.0: "0.0", 1.0: "1.0"}

        def n(value: float) -> str:
            """floatToGoString, remembered: counts repeat."""
            text = num.get(value)
            if text is None:
                text = num[value] = floatToGoString(value)
            return text

        families = self._job_pieces(snap, rows, spans, n)
        h_latency, h_runs, h_errors, h_parity = headers[-4:]
        per_result = zip(headers[:_RESULT_FAMILIES], families[:_RESULT_FAMILIES], strict=True)
        for header, pieces in per_result:
            yield header
            yield from pieces
        yield encode(_races(snap))
        for header, pieces in ((h_latency, families[-2]), (h_runs, families[-1])):
            yield header
            yield from pieces
        yield from _errors(snap, rows, h_errors, n)
        yield h_parity
        yield from self._parity_pieces(snap)
        yield encode(_tail_families(snap))
        if openmetrics_text:
            yield "# EOF\n"

    def _order(self, snap: Snapshot, jobs: int) -> Order:
        if len(self._offsets) > 2 * jobs + 1024:
            self._offsets = {}  # forget jobs that are gone
        return schedule_order(snap, self._offsets)

    def _rows(self, snap: Snapshot) -> tuple[list[Row], list[Span]]:
        """(all labels, where the family label ends, where `target` starts, key) per result
        key, in schedule order: the text around which every per-job sample is written; and
        their blocks (`block_spans`)."""
        v = snap.vantage
        keys = snap.latest.keys() | snap.runs.keys() | snap.latency.keys()
        keys |= {(name, probe, family) for name, probe, family, _ in snap.errors}
        cache = self._labels

        def make(key: ResultKey) -> Row:
            t = snap.targets.get(key[0])
            c = cache.get(key)
            if c is None or c[0] is not t or c[1] != v:
                name, probe, family = key
                fam = f'family="{_escape(family)}"'
                before = f'{fam},probe="{_escape(probe)}",region="{_escape(_region(t))}",'
                before += f'service="{_escape(t.service if t else "")}"'
                plain = f'{before},target="{_escape(name)}",vantage="{_escape(v)}"'
                c = cache[key] = (t, v, plain, len(fam), len(before))
            return (c[2], c[3], c[4], key)

        rows, spans = self._job_rows.get(snap, v, keys, make, self._order(snap, len(keys)))
        if len(cache) > len(rows):
            self._labels = {row[3]: cache[row[3]] for row in rows}  # forget jobs that are gone
        return rows, spans

    def _job_pieces(
        self, snap: Snapshot, rows: list[Row], spans: list[Span], n: Callable[[float], str]
    ) -> list[list[Deflated]]:
        """Per family with a series per job (the per-result families, the latency histogram,
        runs): its pieces. A block's pieces are written once and kept while each of its rows
        has the same label text and the same result, histogram and run count (a job's result
        and histogram are replaced on each run, never changed: in schedule order, the jobs
        that ran since the last render are a few blocks)."""
        latest, latency, runs = snap.latest, snap.latency, snap.runs
        got_result, got_histogram, got_runs = latest.get, latency.get, runs.get

        def stamp(keys: tuple[ResultKey, ...]) -> tuple[object, ...]:
            return (
                tuple(map(got_result, keys)),
                tuple(map(got_histogram, keys)),
                tuple(map(got_runs, keys)),
            )

        def texts(row: Row) -> tuple[str, ...]:
            plain, a, b, key = row
            fam, rest, before = plain[:a], plain[a + 1 :], plain[:b]
            r = latest.get(key)
            h = latency.get(key)
            count = runs.get(key)
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
            return (*lines, hist, ran)

        self._job_blocks, pieces = _blocks(
            self._job_blocks, rows, spans, stamp, texts, _RESULT_FAMILIES + 2
        )
        return pieces

    def _parity_pieces(self, snap: Snapshot) -> list[Deflated]:
        """The verdicts, a series per verdict per (target, probe), in schedule order."""
        v = _escape(snap.vantage)

        def make(key: PairKey) -> PairRow:
            name, probe = key
            t = snap.targets.get(name)
            return (
                f'probe="{_escape(probe)}",region="{_escape(_region(t))}",'
                f'service="{_escape(t.service if t else "")}",target="{_escape(name)}",'
                f'vantage="{v}"',
                key,
            )

        pairs = snap.parity.keys()
        rows, spans = self._pair_rows.get(snap, v, pairs, make, self._order(snap, len(pairs)))
        parity = snap.parity
        got_parity = parity.__getitem__

        def stamp(keys: tuple[PairKey, ...]) -> tuple[object, ...]:
            return (tuple(map(_VERDICT, map(got_parity, keys))),)

        def texts(row: PairRow) -> tuple[str, ...]:
            pair, key = row
            current = parity[key].verdict
            return (
                "".join(
                    f'dualstack_parity{{{pair},verdict="{verdict}"}} '
                    f"{'1.0' if current is verdict else '0.0'}\n"
                    for verdict in VERDICTS
                ),
            )

        self._parity_blocks, pieces = _blocks(self._parity_blocks, rows, spans, stamp, texts, 1)
        return pieces[0]


Row = tuple[str, int, int, ResultKey]
"""A job's series: its label text, where the family label ends in it, where `target` starts,
and its key."""
PairRow = tuple[str, PairKey]
"""A verdict's series: its label text but `verdict`, and its (target, probe)."""
Block = tuple[tuple[object, ...], tuple[Deflated | None, ...]]
"""A block of rows: what its text was written from (its label text, then per row what it is
written from), and its text per family (None where it has none), compressed."""
_VERDICT = attrgetter("verdict")
BLOCK_ROWS = 32
"""Rows per block on average: 10,000 jobs (20,000 rows) make about 625 blocks, about 4 MB of
pieces in all."""
MAX_BLOCK_ROWS = 4 * BLOCK_ROWS
"""Rows per block at most."""
_RESULT_FAMILIES = 11
"""Families with a series per result, in the order of `_result_families` (and _result_text)."""
_NO_RESULT = ("",) * _RESULT_FAMILIES

R = TypeVar("R", Row, PairRow)


KR = TypeVar("KR", ResultKey, PairKey)


class KeptRows(Generic[KR, R]):
    """Rows in schedule order (each row's key last), kept from one render to the next while the
    vantage and the targets are the same: the same keys, the same rows; keys added and none
    gone (jobs with a first result, as in a vantage's first interval), those rows put in their
    places; anything else, every row made afresh."""

    def __init__(self) -> None:
        self._made_for: tuple[str, dict[str, Target]] | None = None
        self._keys: set[KR] = set()
        self.rows: list[R] = []
        self.spans: list[Span] = []
        """The rows' blocks (`block_spans`)."""

    def get(
        self,
        snap: Snapshot,
        vantage: str,
        keys: AbstractSet[KR],
        make: Callable[[KR], R],
        order: Order,
    ) -> tuple[list[R], list[Span]]:
        made = self._made_for
        same = (
            made is not None
            and made[0] == vantage
            and made[1].keys() == snap.targets.keys()
            and all(snap.targets[name] is t for name, t in made[1].items())
        )
        if same and self._keys == keys:
            return self.rows, self.spans
        if same and keys > self._keys:
            rows = list(self.rows)
            for key in sorted(keys - self._keys, key=order):
                at = bisect.bisect(rows, order(key), key=lambda row: order(row[-1]))
                rows.insert(at, make(key))
        else:
            rows = [make(key) for key in sorted(keys, key=order)]
            self._made_for = (vantage, dict(snap.targets))
        self._keys = set(keys)
        self.rows, self.spans = rows, block_spans(rows)
        return self.rows, self.spans


def block_spans(rows: Sequence[Row] | Sequence[PairRow]) -> list[Span]:
    """The rows in blocks: a block ends after a row whose key hashes to a multiple of
    `BLOCK_ROWS` (or after `MAX_BLOCK_ROWS` rows). The boundaries depend on the rows around
    them, not on positions, so rows that appear or go (a job's first result, a target added)
    change the block they fall in and not every block after it."""
    spans: list[Span] = []
    start = 0
    for i, row in enumerate(rows, 1):
        if i == len(rows) or hash(row[-1]) % BLOCK_ROWS == 0 or i - start >= MAX_BLOCK_ROWS:
            block = rows[start:i]
            spans.append((start, i, tuple(r[-1] for r in block), tuple(r[0] for r in block)))
            start = i
    return spans


def _blocks(
    kept: dict[object, Block],
    rows: Sequence[R],
    spans: Sequence[Span],
    stamp: Callable[[Any], tuple[object, ...]],
    texts: Callable[[R], tuple[str, ...]],
    families: int,
) -> tuple[dict[object, Block], list[list[Deflated]]]:
    """Rows in blocks (`block_spans`), each block's text per family compressed once and kept,
    by the key of its last row, while the block's label text and `stamp` of its keys (what
    its text is written from, per row) are the same (equal, or the same objects): the blocks
    to keep, and per family its pieces in row order."""
    fresh: dict[object, Block] = {}
    pieces: list[list[Deflated]] = [[] for _ in range(families)]
    deflater: Deflater | None = None
    block_keys: tuple[Any, ...]
    for start, end, block_keys, labels in spans:
        stamps = (labels, *stamp(block_keys))
        last = block_keys[-1]
        done = kept.get(last)
        if done is None or done[0] != stamps:
            deflater = deflater or Deflater()
            columns = zip(*map(texts, rows[start:end]), strict=True)
            done = (stamps, tuple(deflater.piece(t) if t else None for t in map("".join, columns)))
        fresh[last] = done
        for family, piece in zip(pieces, done[1], strict=True):
            if piece is not None:
                family.append(piece)
    return fresh, pieces


def _errors(
    snap: Snapshot, rows: list[Row], header: str, n: Callable[[float], str]
) -> Iterator[str]:
    """Errors by kind: a series per job and kind that happened, in row order."""
    out = [header]
    by_key: dict[ResultKey, list[tuple[str, int]]] = {}
    for (name, probe, family, kind), c in snap.errors.items():
        by_key.setdefault((name, probe, family), []).append((kind, c))
    for plain, a, _, key in rows if by_key else ():
        errors = by_key.get(key)
        for kind, c in sorted(errors) if errors else ():
            out.append(
                f'dualstack_probe_errors_total{{{plain[:a]},kind="{_escape(kind)}",'
                f"{plain[a + 1 :]}}} {n(float(c))}\n"
            )
            if len(out) >= CHUNK_LINES:
                yield "".join(out)
                out = []
    yield "".join(out)


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
