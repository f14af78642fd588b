"""Every dashboard query, run against a real Prometheus that scraped `probe serve` on the lab.

The lab's real servers, `probe serve` probing them every 2 s, and Debian's Prometheus scraping
it every 1 s, once for this module. After WINDOW seconds of scraping every panel query runs as an
instant query, its template variables at "All" and then at concrete values, and must return
data unless grafana/panel-expectations.json marks it empty by design (a firing-alerts panel);
those must still be valid PromQL. Each template variable's label_values() goes through the label
API, as Grafana asks it.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from dashboards import PanelQuery, Values, panel_queries, variable_queries
from promstack import Prometheus, prometheus, write_scrape_config
from serving import serve

from monitor.config import nameserver_name
from monitor.lab.loopback import ZONE, LabFacts
from monitor.lab.run import write_config
from probes import kinds

pytestmark = pytest.mark.slow(40)  # a Prometheus fed 25 s before the first query, once

VANTAGE = "lab-dash"
WINDOW = 25.0  # seconds of 1 s scrapes (2 s probe rounds) before the first query
# Grafana's interval variables for an instant query: windows that hold several scrapes.
BUILTINS = {"__rate_interval": "30s", "__interval": "10s", "__range": "1m"}
# Concrete values as a user would pick them: the lab's faults are all alb in us-east-1.
CONCRETE: Values = {"vantage": VANTAGE, "service": "alb", "region": "us-east-1"}

# The kinds only name servers run have data only there: the zone's (service route53).
NAMESERVERS: Values = {"vantage": VANTAGE, "service": "route53", "region": "global"}


def _nameservers_only(q: PanelQuery) -> bool:
    return any(f'probe="{k}"' in q.expr for k in kinds.NAMESERVER_ONLY)


ALL_QUERIES = list(panel_queries(builtins=BUILTINS))
CONCRETE_QUERIES = [
    ns if _nameservers_only(alb) else alb
    for alb, ns in zip(
        panel_queries(CONCRETE, builtins=BUILTINS),
        panel_queries(NAMESERVERS, builtins=BUILTINS),
        strict=True,
    )
]


@dataclass
class Live:
    prom: Prometheus
    window: float  # seconds Prometheus had scraped when the queries began


@pytest.fixture(scope="module")
def live(lab_session: LabFacts, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("dashboards-live")
    cfg = write_config(lab_session, tmp / "lab.yml", vantage=VANTAGE, interval="2s")
    with serve(cfg) as served:
        served.wait_ready()
        prom_cfg = write_scrape_config(tmp / "prometheus.yml", [served.port])
        with prometheus(prom_cfg, tmp) as prom:
            prom.wait_for(f'dualstack_build_info{{vantage="{VANTAGE}"}}')
            first = time.monotonic()
            time.sleep(WINDOW)
            yield Live(prom, time.monotonic() - first)


def _id(q: PanelQuery) -> str:
    return f"{q.dashboard}/{q.panel}"


def _check(live: Live, q: PanelQuery) -> list[dict[str, Any]]:
    result = live.prom.query(q.expr)  # asserts Prometheus accepted it
    if not q.empty_by_design:
        assert result, (
            f"{q.dashboard} / {q.panel}: no data after {live.window:.0f} s of scraping\n{q.expr}"
        )
    return result


@pytest.mark.parametrize("q", ALL_QUERIES, ids=_id)
def test_panel_query_with_all(live: Live, q: PanelQuery) -> None:
    _check(live, q)


@pytest.mark.parametrize("q", CONCRETE_QUERIES, ids=_id)
def test_panel_query_with_concrete_values(live: Live, q: PanelQuery) -> None:
    _check(live, q)


def label_values(prom: Prometheus, label: str, selector: str) -> list[str]:
    q = urllib.parse.urlencode({"match[]": selector})
    doc = prom.get(f"/api/v1/label/{label}/values?{q}")
    assert doc["status"] == "success", doc
    return list(doc["data"])


def test_template_variables_through_the_label_api(live: Live) -> None:
    expected = {
        "vantage": {VANTAGE},
        "service": {"alb", "custom"},
        "region": {"us-east-1", "none"},
        "target": {"healthy", "v4_only", "alias", "no_aaaa", "missing"},
    }
    for v in variable_queries():
        got = set(label_values(live.prom, v.label, v.selector))
        assert got >= expected[v.name], f"{v.dashboard} ${v.name}: {sorted(got)}"
    # Chained: picking service=alb leaves the alias target (service custom) out of $target.
    for v in variable_queries(CONCRETE):
        got = set(label_values(live.prom, v.label, v.selector))
        assert got, f"{v.dashboard} ${v.name} with {CONCRETE}: no values"
        if v.name == "target":
            assert "v4_only" in got and "alias" not in got, sorted(got)
        if v.name == "region":
            assert got == {"us-east-1"}, sorted(got)


def _query(dashboard: str, panel: str) -> PanelQuery:
    return next(q for q in ALL_QUERIES if (q.dashboard, q.panel) == (dashboard, panel))


def test_the_matrix_shows_the_labs_faults(live: Live) -> None:
    """Beyond "has data": the parity panels say what the lab is built to show."""
    severity = {"ok": "0", "mismatch": "5", "ipv6_missing": "6", "ipv6_failed": "7"}
    per_probe = {
        probe: _check(live, q)
        for q in ALL_QUERIES
        if (q.dashboard, q.panel) == ("Dualstack parity", "Verdict per target and probe")
        for probe in re.findall(r'probe="(\w+)"', q.expr)[:1]
    }
    # A column for every kind run by default, a name server's ones too.
    assert sorted(per_probe) == sorted({*kinds.default_names(), *kinds.NAMESERVER_DEFAULT})
    cells = {
        (r["metric"]["target"], probe): r["value"][1]
        for probe, rows in per_probe.items()
        for r in rows
        if r["metric"]["vantage"] == VANTAGE
    }
    assert cells[("healthy", "tcp")] == severity["ok"]
    assert cells[("v4_only", "tcp")] == severity["ipv6_failed"]
    assert cells[("cert_differs_v6", "tls")] == severity["mismatch"]
    assert cells[("no_aaaa", "dns")] == severity["ipv6_missing"]
    nameserver = nameserver_name(ZONE, 1)
    assert [cells[(nameserver, k)] for k in kinds.NAMESERVER_ONLY] == [severity["ok"]] * 2
    assert ("healthy", "dns_tcp") not in cells  # a host target does not run it: an empty cell
    worst = _check(live, _query("Dualstack parity", "Worst verdict by service and region"))
    by_cell = {(r["metric"]["service"], r["metric"]["region"]): r["value"][1] for r in worst}
    assert by_cell[("alb", "us-east-1")] == "7"  # ipv6_failed is the worst there
    for title in ("Targets with IPv6 failed", "Targets with IPv6 missing"):
        [count] = _check(live, _query("Dualstack parity", title))
        assert float(count["value"][1]) >= 1, title
    [mismatch_or_zero] = _check(live, _query("Dualstack parity", "Targets with a mismatch"))
    assert float(mismatch_or_zero["value"][1]) >= 0
    # Who lost IPv6: the lab's v4_only endpoint is there (not ok), the healthy one is not.
    lost = _check(
        live, _query("Dualstack parity", "Who lost IPv6, and since when: vantage · target")
    )
    targets = {r["metric"]["target"] for r in lost}
    assert "v4_only" in targets and "healthy" not in targets


def test_the_race_panels_show_who_won(live: Live) -> None:
    """The lab races healthy (IPv6 wins) and v6_timeout (IPv6 blackholed: IPv4 wins)."""
    share = {
        r["metric"]["target"]: float(r["value"][1])
        for r in _check(live, _query("Dualstack endpoint", "Races IPv4 won, per target"))
        if r["metric"]["vantage"] == VANTAGE
    }
    assert share == {"healthy": 0.0, "v6_timeout": 1.0}
    cost = {
        r["metric"]["target"]: float(r["value"][1])
        for r in _check(live, _query("Dualstack endpoint", "What IPv6 cost the race, per target"))
    }
    # About the connection attempt delay (250 ms): IPv4 starts then, and its connect on a loaded
    # machine adds what the scheduler makes it wait (0.47 s once with the machine at load 4).
    assert cost["healthy"] == 0.0 and 0.2 <= cost["v6_timeout"] <= 1.0
