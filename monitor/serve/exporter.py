"""Prometheus metrics from the Store: a collector that yields the families of `METRICS`
(monitor/serve/metrics.py) from a snapshot, written by prometheus_client's own exposition."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector, CollectorRegistry

from monitor.serve.metrics import METRICS
from monitor.serve.state import Histogram, Snapshot, Store

Family = GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily


class SnapshotCollector(Collector):
    """One snapshot's metric families, in the order of `METRICS`."""

    def __init__(self, snap: Snapshot) -> None:
        self._snap = snap

    def collect(self) -> Iterator[Family]:
        s = self._snap
        for m in METRICS:
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


class Exposition:
    """`/metrics` in the format an `Accept` header asks for (prometheus_client's choice)."""

    @staticmethod
    def content_type(accept: str) -> str:
        return choose_encoder(accept)[1]

    @staticmethod
    def render(snap: Snapshot, accept: str) -> bytes:
        return choose_encoder(accept)[0](SnapshotCollector(snap))
