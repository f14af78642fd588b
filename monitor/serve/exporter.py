"""Prometheus metrics from the Store: a collector that yields the families of `metrics()`
(monitor/serve/metrics.py) from a snapshot, and `Exposition`, which writes the same text straight
from the table for the formats Prometheus asks for (prometheus_client's encoder builds an object
per sample: several seconds and hundreds of MB at 10,000 jobs, benchmarks/README.md); tests check
the two byte for byte. Other formats (escapings that rename metrics) go through the encoder."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics.exposition import ALLOWUTF8, UNDERSCORES
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString as _go_float

from monitor.serve.metrics import metrics
from monitor.serve.state import Histogram, Snapshot, Store

Family = GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily


class SnapshotCollector(Collector):
    """One snapshot's metric families, in the order of `metrics()`."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def collect(self) -> Iterator[Family]:
        s = self._snap
        for m in metrics():
            labels = m.label_names(s)
            if m.type == "histogram":
                h = HistogramMetricFamily(m.name, m.help, labels=labels)
                for values, hist in m.samples(s):
                    assert isinstance(hist, Histogram)
                    h.add_metric(values, hist.cumulative(), hist.total)
                yield h
                continue
            kind = GaugeMetricFamily if m.type == "gauge" else CounterMetricFamily
            family = kind(m.name, m.help, labels=labels)
            for values, value in m.samples(s):
                assert not isinstance(value, Histogram)
                family.add_metric(values, value)
            yield family


class StoreCollector(Collector):
    """The live store, through a snapshot taken on each collect (on the caller's thread)."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterator[Family]:
        if self._store.before_scrape is not None:
            self._store.before_scrape()
        return SnapshotCollector(self._store.snapshot()).collect()


def make_registry(store: Store) -> CollectorRegistry:
    """A fresh registry per vantage (and per test): no global state."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(store))
    return registry


PLAIN_ESCAPINGS = (UNDERSCORES, ALLOWUTF8)
"""Escapings that leave our metric and label names as they are: the written path's."""


def _value(v: float) -> str:
    if -1e300 < v < 1e6:  # repr, as prometheus_client writes these (its Go form differs above)
        return repr(float(v))
    text: str = _go_float(v)  # type: ignore[no-untyped-call]
    return text


def _count(n: int) -> str:
    return f"{n}.0" if 0 <= n < 1_000_000 else _value(n)


def _escape(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


CHUNK = 8192
"""Lines per piece of a render: a render never holds a whole family's text (tens of MB)."""


class _Escaped(dict[str, str]):
    """Label values escaped as the text format wants them, each value escaped once."""

    def __missing__(self, value: str) -> str:
        text = self[value] = _escape(value)
        return text


Labels = Callable[[Sequence[str]], str]


def _labels(names: Sequence[str], escaped: _Escaped, *, first: str = "", last: str = "") -> Labels:
    """The label text of one metric's series from its values, between `first` and `last`:
    labels sorted by name as prometheus_client writes them, values escaped."""
    order = sorted(range(len(names)), key=names.__getitem__)
    pairs = ",".join(f'{names[i]}="{{}}"' for i in order)
    template = _braces(first) + pairs + _braces(last)
    if not order:
        return lambda values: template.format()
    pick = itemgetter(*order) if len(order) > 1 else lambda v: (v[order[0]],)
    get = escaped.__getitem__
    return lambda values: template.format(*map(get, pick(values)))


def _braces(literal: str) -> str:
    return literal.replace("{", "{{").replace("}", "}}")


def write(s: Snapshot, *, open_metrics: bool) -> Iterator[str]:
    """The text of every metric of the table: the Prometheus text format 0.0.4, or OpenMetrics
    1.0.0 (which names counters without `_total` in HELP and TYPE, and ends with `# EOF`)."""
    escaped = _Escaped()
    bounds: dict[tuple[float, ...], list[str]] = {}

    for m in metrics():
        names = m.label_names(s)
        sample = m.name + ("_total" if m.type == "counter" else "")
        family = m.name if open_metrics else sample
        doc = _escape(m.help) if open_metrics else m.help.replace("\\", r"\\").replace("\n", r"\n")
        lines = [f"# HELP {family} {doc}\n# TYPE {family} {m.type}\n"]
        series = _labels(names, escaped, first="{", last="}")
        if m.type == "histogram":  # the `le` label goes in its sorted place
            before = [i for i, k in enumerate(names) if k < "le"]
            after = [i for i, k in enumerate(names) if k > "le"]
            head = _labels([names[i] for i in before], escaped, first=f"{m.name}_bucket{{")
            tail = _labels([names[i] for i in after], escaped, last="} ")
        for values, value in m.samples(s):
            if isinstance(value, Histogram):
                pre = head([values[i] for i in before]) + ("," if before else "")
                post = ("," if after else "") + tail([values[i] for i in after])
                les = bounds.get(value.buckets)
                if les is None:
                    les = bounds[value.buckets] = [format(b, "g") for b in value.buckets]
                running = 0
                for le, n in zip(les, value.counts, strict=True):
                    running += n
                    lines.append(f'{pre}le="{le}"{post}{_count(running)}\n')
                labels = series(values)
                lines.append(f'{pre}le="+Inf"{post}{_count(value.count)}\n')
                lines.append(f"{m.name}_count{labels} {_count(value.count)}\n")
                lines.append(f"{m.name}_sum{labels} {_value(value.total)}\n")
            else:
                lines.append(f"{sample}{series(values)} {_value(value)}\n")
            if len(lines) >= CHUNK:
                yield "".join(lines)
                lines = []
        yield "".join(lines)
    if open_metrics:
        yield "# EOF\n"


class Exposition:
    """`/metrics` in the format an `Accept` header asks for (prometheus_client's choice)."""

    @staticmethod
    def content_type(accept: str) -> str:
        return choose_encoder(accept)[1]

    @staticmethod
    def render(snap: Snapshot, accept: str) -> Iterable[str | bytes]:
        encoder, _ = choose_encoder(accept)
        options = getattr(encoder, "keywords", {})
        base = getattr(encoder, "func", encoder)
        if (
            options.get("escaping", UNDERSCORES) in PLAIN_ESCAPINGS
            and options.get("version", "1.0.0") == "1.0.0"
        ):
            return write(snap, open_metrics=base is openmetrics_latest)
        return (encoder(SnapshotCollector(snap)),)
