"""The `site` configuration key and what the exporter makes of it: the `site` label of
dualstack_build_info and dualstack_vantage_ipv6_available (default: the vantage's name, also
after --vantage renames it), which the alert rules join in. Also: the dns probe of a host (an
A against an AAAA lookup, not compared) stays out of the latency histogram."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
from prometheus_client.registry import CollectorRegistry

from monitor.config import ConfigError, load_config
from monitor.engine.parity import Parity, Verdict
from monitor.engine.vantage import VantageCheck
from monitor.serve.exporter import make_registry
from monitor.serve.state import Store
from monitor.serve.vantage import Vantage
from probes.base import ProbeResult, Target


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vantage.yml"
    path.write_text(text, encoding="utf-8")
    return path


def labels_of(registry: CollectorRegistry, name: str) -> list[dict[str, str]]:
    return [
        dict(sample.labels)
        for family in registry.collect()
        for sample in family.samples
        if sample.name == name
    ]


def test_site_is_optional_and_a_name(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "vantage: a\ntargets: []\n")).site is None
    cfg = load_config(write(tmp_path, "vantage: a\nsite: tokyo-1\ntargets: []\n"))
    assert cfg.site == "tokyo-1"
    with pytest.raises(ConfigError) as err:
        load_config(write(tmp_path, "vantage: a\nsite: 'two words'\ntargets: []\n"))
    assert str(err.value).endswith(
        "vantage.yml: site: 'two words': use letters, digits and . _ : - (at most 63)"
    )


def test_build_info_and_ipv6_available_carry_the_site() -> None:
    store = Store(vantage="v1", site="home")
    store.vantage_check = VantageCheck(ipv6=True)
    registry = make_registry(store)
    [build] = labels_of(registry, "dualstack_build_info")
    assert (build["vantage"], build["site"]) == ("v1", "home")
    assert labels_of(registry, "dualstack_vantage_ipv6_available") == [
        {"vantage": "v1", "site": "home"}
    ]
    # Without a site, the vantage's own name: a vantage alone is its own site.
    alone = Store(vantage="v2")
    alone.vantage_check = VantageCheck(ipv6=False)
    registry = make_registry(alone)
    assert labels_of(registry, "dualstack_build_info")[0]["site"] == "v2"
    assert labels_of(registry, "dualstack_vantage_ipv6_available") == [
        {"vantage": "v2", "site": "v2"}
    ]


def test_the_default_site_follows_the_vantage_override(tmp_path: Path) -> None:
    """`probe serve --vantage X` renames the vantage; a config without `site` then reports
    site X, not the config's vantage name."""
    cfg = load_config(write(tmp_path, "vantage: from-file\ntargets: []\n"))
    assert Vantage(dataclasses.replace(cfg, vantage="from-flag")).store.site == "from-flag"
    cfg = load_config(write(tmp_path, "vantage: from-file\nsite: lab\ntargets: []\n"))
    assert Vantage(dataclasses.replace(cfg, vantage="from-flag")).store.site == "lab"


def _success(target: str) -> list[ProbeResult]:
    return [
        ProbeResult(
            target=target,
            probe="dns",
            family=family,
            address=None,
            success=True,
            duration_seconds=0.01,
            started=time.time(),
        )
        for family in ("ipv4", "ipv6")
    ]


def test_the_dns_probe_of_a_host_stays_out_of_the_latency_histogram() -> None:
    store = Store(vantage="v")
    store.set_targets(
        {
            "host": Target(name="host", service="s3", region="r", host="h.example.com"),
            "ns": Target(
                name="ns", service="route53", region="", host="ns.example.com", zone="example.com"
            ),
        }
    )
    for name in ("host", "ns"):
        store.record(_success(name), Parity(target=name, probe="dns", verdict=Verdict.OK))
    # The name server's dns probe times the same query over each family: comparable.
    assert sorted(store.latency) == [("ns", "dns", "ipv4"), ("ns", "dns", "ipv6")]
    # Both still count as runs.
    assert store.runs[("host", "dns", "ipv6")] == 1
