"""`probe serve` against the lab: a real scrape shows every metric with the right values for
healthy and faulty endpoints; the API and status page agree with /metrics; reloads, lifecycle
and SIGTERM behave."""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from promstack import promtool_check_metrics
from serving import Served, serve

from monitor.config import load_config
from monitor.engine.parity import VERDICTS
from monitor.engine.schema import report_schema
from monitor.lab.loopback import NAMESERVERS, LabFacts
from monitor.lab.run import EXPECTED, expected, write_config

SCHEMA = report_schema()
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(served: Served) -> tuple[str, Samples]:
    status, text = served.get("/metrics")
    assert status == 200
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, frozenset(s.labels.items()))] = s.value
    return text, samples


def number(samples: Samples, name: str, **labels: str) -> float:
    """The sample's value; the series must exist."""
    found = value(samples, name, **labels)
    assert found is not None, f"no series {name}{labels}"
    return found


def value(samples: Samples, name: str, **labels: str) -> float | None:
    want = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and want <= ls]
    assert len(found) <= 1, f"{name}{labels} is ambiguous: {found}"
    return found[0] if found else None


@pytest.fixture(scope="module")
def config(lab_session: LabFacts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(
        lab_session,
        tmp_path_factory.mktemp("serve") / "lab.yml",
        vantage="lab-serve",
        interval="3s",
    )


@pytest.fixture(scope="module")
def served(config: Path) -> Iterator[Served]:
    with serve(config, "--web.enable-lifecycle") as s:
        s.wait_ready()
        yield s
    assert s.proc.returncode == 0


def errors_of(served: Served, target: str, probe: str) -> list[object]:
    """The latest results' errors of a (target, probe), to say why a verdict was not met."""
    _, body = served.get("/api/v1/results")
    return [
        (r["family"], r["error"])
        for r in json.loads(body)["results"]
        if r["target"] == target and r["probe"] == probe
    ]


def configured_jobs(config: Path) -> int:
    """(target, probe) jobs of the config: its targets' probes plus the lab zone's name
    servers (found through DNS at run time, so counted from the lab's own NS set)."""
    cfg = load_config(config)
    ns_jobs = len(cfg.zones) * len(NAMESERVERS) * len(cfg.route53.probes)
    return sum(len(t.probes) for t in cfg.targets) + ns_jobs


def test_promtool_check_metrics_is_clean(served: Served, tmp_path: Path) -> None:
    text, _ = scrape(served)
    assert promtool_check_metrics(text) == ""


def test_metric_values_for_healthy_and_faulty(served: Served, config: Path) -> None:
    _, m = scrape(served)
    v = "lab-serve"
    for fam in ("ipv4", "ipv6"):
        assert (
            value(
                m, "dualstack_probe_success", vantage=v, target="healthy", probe="http2", family=fam
            )
            == 1.0
        )
        assert (
            value(m, "dualstack_http_status_code", target="healthy", probe="http2", family=fam)
            == 200.0
        )
        assert (
            value(
                m,
                "dualstack_http_version_info",
                target="healthy",
                probe="http3",
                family=fam,
                version="3",
            )
            == 1.0
        )
        assert value(m, "dualstack_dns_records", target="healthy", probe="dns", family=fam) == 1.0
        assert (
            number(
                m,
                "dualstack_probe_phase_duration_seconds",
                target="healthy",
                probe="tls",
                family=fam,
                phase="handshake",
            )
            > 0
        )
        count = value(
            m, "dualstack_probe_latency_seconds_count", target="healthy", probe="tcp", family=fam
        )
        assert count is not None and count >= 1
        assert (
            number(m, "dualstack_probe_runs_total", target="healthy", probe="tcp", family=fam) >= 1
        )
    # v6 broken, v4 fine
    assert value(m, "dualstack_probe_success", target="v4_only", probe="tcp", family="ipv6") == 0.0
    assert (
        number(
            m,
            "dualstack_probe_errors_total",
            target="v4_only",
            probe="tcp",
            family="ipv6",
            kind="connect_refused",
        )
        >= 1
    )
    # no AAAA: success 0 with dns_no_address, verdict ipv6_missing (not ipv6_failed)
    assert value(m, "dualstack_probe_success", target="no_aaaa", probe="tcp", family="ipv6") == 0.0
    assert (
        number(
            m,
            "dualstack_probe_errors_total",
            target="no_aaaa",
            probe="tcp",
            family="ipv6",
            kind="dns_no_address",
        )
        >= 1
    )
    assert value(m, "dualstack_dns_records", target="no_aaaa", probe="dns", family="ipv6") == 0
    cert_v6 = value(
        m,
        "dualstack_tls_cert_not_after_timestamp_seconds",
        target="expired_v6",
        probe="tls",
        family="ipv6",
    )
    cert_v4 = value(
        m,
        "dualstack_tls_cert_not_after_timestamp_seconds",
        target="expired_v6",
        probe="tls",
        family="ipv4",
    )
    assert cert_v6 is not None and cert_v4 is not None and cert_v6 < time.time() < cert_v4
    # vantage health
    assert value(m, "dualstack_vantage_ipv6_available", vantage=v) == 1.0
    assert value(m, "dualstack_config_last_reload_successful", vantage=v) == 1.0
    assert value(m, "dualstack_build_info", vantage=v) == 1.0
    assert number(m, "dualstack_scheduler_lag_seconds_count", vantage=v) >= 1
    assert value(m, "dualstack_scheduler_jobs", vantage=v) == float(configured_jobs(config))
    # no label carries what a peer sent: addresses, certificate text, status text
    label_values = {
        val for (_, ls) in m for key, val in ls if key not in ("le", "version", "python")
    }
    assert not [
        x for x in label_values if re.fullmatch(r"[0-9a-f:.]+", x) and ("." in x or ":" in x)
    ]
    assert {k for (_, ls) in m for k, _ in ls} <= {
        "vantage",
        "target",
        "service",
        "region",
        "probe",
        "family",
        "phase",
        "kind",
        "verdict",
        "reason",
        "state",
        "le",
        "version",
        "python",
        "site",  # from configuration (default: the vantage name)
        "shard",  # dualstack_shard_info: from configuration (default: 0 of 1)
        "shards",
        "external_url",  # dualstack_vantage_info: config `external_url`, default --listen's
        "blame",  # dualstack_path_blame: the closed set of probes/trace.py's BLAMES
        "result",  # dualstack_trace_runs_total: monitor/serve/tracing.py's TRACE_RESULTS
    }


def test_parity_gauge_one_per_verdict(served: Served) -> None:
    _, m = scrape(served)
    for name, probes in EXPECTED.items():
        for probe, verdict in probes.items():
            want = expected(name, probe, icmp_permitted=True)
            got = {
                dict(ls)["verdict"]: val
                for (n, ls), val in m.items()
                if n == "dualstack_parity"
                and dict(ls)["target"] == name
                and dict(ls)["probe"] == probe
            }
            assert got[want] == 1.0, (name, probe, got, errors_of(served, name, probe))
            assert sum(got.values()) == 1.0 and len(got) == len(VERDICTS)
            # EXPECTED is the lab's contract: its verdict is the one served (icmp aside,
            # which is both_failed where ICMP is not permitted)
            assert want == verdict or (probe == "icmp" and want == "both_failed")


def test_api_and_status_page_agree_with_metrics(served: Served, config: Path) -> None:
    _, m = scrape(served)
    status, body = served.get("/api/v1/results")
    assert status == 200
    doc = json.loads(body)
    jsonschema.validate(doc, SCHEMA)
    assert doc["vantage"] == "lab-serve" and doc["vantage_ipv6"] is True
    assert "exit_status" not in doc  # a service has none; `probe run` adds it
    assert sum(doc["counts"].values()) == len(doc["parity"])
    # The lab's verdicts are stable, so the API and /metrics agree on every one of them.
    disagree = [
        (p["target"], p["probe"], p["verdict"])
        for p in doc["parity"]
        if value(m, "dualstack_parity", target=p["target"], probe=p["probe"], verdict=p["verdict"])
        != 1.0
    ]
    assert disagree == []
    # A race job (the lab races two endpoints) gives one result, not a verdict.
    races = [r for r in doc["results"] if r["probe"] == "race"]
    assert sorted(r["target"] for r in races) == ["healthy", "v6_timeout"]
    assert len(doc["parity"]) + len(races) == configured_jobs(config)
    for r in doc["results"]:
        if r["skipped"]:
            continue
        got = value(
            m, "dualstack_probe_success", target=r["target"], probe=r["probe"], family=r["family"]
        )
        assert got == (1.0 if r["success"] else 0.0), r
    status, page = served.get("/")
    assert status == 200
    cells = dict(
        ((t, pr), v)
        for t, pr, v in re.findall(
            r'data-target="([^"]+)" data-probe="([^"]+)" data-verdict="([^"]+)"', page
        )
    )
    assert cells[("v4_only", "tcp")] == "ipv6_failed"
    assert cells[("healthy", "tls")] == "ok"
    assert cells[("no_aaaa", "http2")] == "ipv6_missing"


def test_no_region_is_none_everywhere(served: Served, config: Path) -> None:
    """The alias target has no region: `none` in the JSON, the metrics, the status page and
    `probe targets`' table, never "", "-" or "global"."""
    _, m = scrape(served)
    doc = json.loads(served.get("/api/v1/results")[1])
    assert {r["region"] for r in doc["results"] if r["target"] == "alias"} == {"none"}
    assert {p["region"] for p in doc["parity"] if p["target"] == "alias"} == {"none"}
    assert value(m, "dualstack_parity", target="alias", probe="tcp", verdict="ok", region="none")
    page = served.get("/")[1]
    row = page[page.index('<span class="tname">alias</span>') :]
    assert row.split("</th>")[0].count("custom · none") == 1
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor.cli",
            "targets",
            "--config",
            str(config),
            "--target",
            "alias",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
        env={**os.environ, "COLUMNS": "200"},  # a line per target
    )
    assert proc.stdout.splitlines()[3].split()[:3] == ["alias", "custom", "none"]


def test_health_endpoints(served: Served) -> None:
    assert served.get("/healthz") == (200, "ok\n")
    assert served.get("/readyz") == (200, "ready\n")
    assert served.get("/probe?target=example.com")[0] == 404  # no SSRF endpoint


def test_logs_one_line_per_failure_and_flip(served: Served) -> None:
    # The first round is one summary line, not a line per job: its verdicts and failures.
    [first] = served.events("first_round")
    assert "ipv6_failed" in str(first["verdicts"]) and int(str(first["failing"])) > 0
    assert first["vantage_probing_ok"] is True
    flips = served.events("verdict_changed")
    assert not any(e["from"] is None for e in flips), flips  # "set" was the summary's
    failures = served.events("probe_failed")
    assert all(e["level"] == "warning" and e.get("phase") for e in failures)
    assert not any(e.get("target") == "healthy" for e in failures), [
        e for e in failures if e.get("target") == "healthy"
    ]
    # A persistent failure is one line when it starts, not one per interval (3 s here).
    deadline = time.monotonic() + 30
    labels = {"target": "v4_only", "probe": "tcp", "family": "ipv6"}
    while (value(scrape(served)[1], "dualstack_probe_runs_total", **labels) or 0) < 3:
        assert time.monotonic() < deadline, "v4_only/tcp did not run three times"
        time.sleep(0.5)
    said = [
        (e["event"], e.get("kind"))
        for e in list(served.logs)
        if e.get("event") in ("probe_failed", "probe_still_failing", "probe_recovered")
        and labels.items() <= e.items()
    ]
    # never the same failure twice in a row (a busy machine may turn a refusal into a
    # timeout: that is a change, said once)
    # (failing since the first round: in its summary line, so possibly no line here at all)
    assert all(a != b for a, b in itertools.pairwise(said)), said
    assert ("probe_still_failing", "connect_refused") not in said  # 10 minutes: not yet
    # The libraries' own warnings (aioquic, aiohttp, asyncio) are not in the log at info.
    ours = ("dualstack", "monitor", "probes")
    strangers = [
        e
        for e in list(served.logs)
        if str(e.get("logger", "dualstack")).split(".")[0] not in ours and e.get("level") != "error"
    ]
    assert strangers == []


def test_reload_adds_removes_and_survives_bad_config(served: Served, config: Path) -> None:
    original = config.read_text()
    data = yaml.safe_load(original)
    data["targets"] = [t for t in data["targets"] if t["name"] != "rotated_v6"]
    data["targets"].append(
        {
            **next(t for t in data["targets"] if t["name"] == "healthy"),
            "name": "healthy-copy",
            "probes": ["tcp"],
        }
    )
    try:
        config.write_text(yaml.safe_dump(data))
        served.proc.send_signal(signal.SIGHUP)
        served.wait_event("config_applied", count=2)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            _, m = scrape(served)
            if (
                value(
                    m, "dualstack_probe_success", target="healthy-copy", probe="tcp", family="ipv6"
                )
                == 1.0
            ):
                break
            time.sleep(0.3)
        else:
            pytest.fail("the added target never showed up")
        assert (
            value(m, "dualstack_probe_success", target="rotated_v6", probe="tcp", family="ipv4")
            is None
        )
        assert (
            value(m, "dualstack_probe_success", target="healthy", probe="tcp", family="ipv4") == 1.0
        )
        applied = served.events("config_applied")[-1]
        assert applied["jobs_added"] == 1 and applied["jobs_removed"] == 6
        # A broken config keeps the running one and says so.
        config.write_text("targets: [oops\n")
        assert served.post("/-/reload") == 500
        _, m = scrape(served)
        assert value(m, "dualstack_config_last_reload_successful", vantage="lab-serve") == 0.0
        assert (
            value(m, "dualstack_probe_success", target="healthy-copy", probe="tcp", family="ipv4")
            is not None
        )
    finally:
        config.write_text(original)
        assert served.post("/-/reload") == 200
    _, m = scrape(served)
    assert value(m, "dualstack_config_last_reload_successful", vantage="lab-serve") == 1.0


def test_lifecycle_endpoint_needs_the_flag(config: Path) -> None:
    with serve(config) as s:
        req = urllib.request.Request(s.url + "/-/reload", data=b"", method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(req, timeout=30)
        assert refused.value.code == 404
        body = refused.value.read().decode()
        assert body.count("\n") == 1 and body.startswith("Lifecycle API is not enabled")
        assert "--web.enable-lifecycle" in body
        start = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=30) == 0
        assert time.monotonic() - start < 15  # drained within the bound
    assert s.events("stopped")


def test_bad_listen_and_config_exit_2(tmp_path: Path) -> None:
    import sys

    for argv in (["--listen", "localhost:80"], ["--listen", "[::1]"]):
        proc = subprocess.run(
            [sys.executable, "-m", "monitor.cli", "serve", "--config", "/nonexistent", *argv],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert proc.returncode == 2 and "bad --listen" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "serve", "--config", str(tmp_path / "none.yml")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 2 and "cannot read" in proc.stderr


def test_web_config_basic_auth(config: Path, tmp_path: Path) -> None:
    import base64

    import bcrypt

    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(yaml.safe_dump({"basic_auth_users": {"prometheus": hashed}}))
    with serve(config, "--web.config.file", str(web)) as s:
        assert s.get("/metrics")[0] == 401
        assert s.get("/api/v1/results")[0] == 401
        assert s.get("/")[0] == 401
        assert s.get("/healthz") == (200, "ok\n")  # liveness carries no credentials
        good = "Basic " + base64.b64encode(b"prometheus:s3cret").decode()
        bad = "Basic " + base64.b64encode(b"prometheus:wrong").decode()
        assert s.get("/metrics", headers={"Authorization": bad})[0] == 401
        assert s.get("/metrics", headers={"Authorization": good})[0] == 200
