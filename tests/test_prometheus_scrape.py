"""A real Prometheus scrapes `probe serve` on the lab; its API then holds the series."""

from __future__ import annotations

from pathlib import Path

from promstack import prometheus, write_scrape_config
from serving import serve

from monitor.lab.loopback import LabFacts
from monitor.lab.run import write_config


def test_prometheus_scrapes_the_vantage(lab_session: LabFacts, tmp_path: Path) -> None:
    cfg = write_config(lab_session, tmp_path / "lab.yml", vantage="lab-prom", interval="2s")
    with serve(cfg) as served:
        served.wait_ready()
        prom_cfg = write_scrape_config(
            tmp_path / "prometheus.yml", [served.port], job="any-name-the-rules-never-use"
        )
        with prometheus(prom_cfg, tmp_path) as prom:
            up = prom.wait_for("up == 1")
            assert up[0]["metric"]["instance"] == f"127.0.0.1:{served.port}"
            series = prom.wait_for('dualstack_probe_success{vantage="lab-prom"}', min_results=100)
            assert {s["metric"]["family"] for s in series} == {"ipv4", "ipv6"}
            broken = prom.query(
                'dualstack_parity{target="v4_only",probe="tcp",verdict="ipv6_failed"} == 1'
            )
            assert len(broken) == 1
            assert prom.query('dualstack_parity{target="healthy",verdict="ok"} == 1')
            # p50 from the histogram, both families: positive once a window holds increments.
            hist = prom.wait_for(
                "histogram_quantile(0.5, sum by (le, family) (rate("
                'dualstack_probe_latency_seconds_bucket{target="healthy",probe="tcp"}[20s]))) > 0',
                min_results=2,
            )
            assert {h["metric"]["family"] for h in hist} == {"ipv4", "ipv6"}
            # Metadata made it through: types and help for the families.
            meta = prom.get("/api/v1/metadata?metric=dualstack_parity")["data"]
            assert meta["dualstack_parity"][0]["type"] == "gauge"
            assert prom.query("scrape_samples_scraped > 500")
