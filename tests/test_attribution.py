"""AWS address attribution against the lab, with ranges files of the test's own: where each
family's address lies in the published prefixes, what parity makes of it, the metrics (in a
real Prometheus scrape), and a ranges file that cannot be used."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from promstack import prometheus, write_scrape_config
from serving import serve

from monitor.cli import main
from monitor.config import load_config
from monitor.engine.parity import Verdict
from monitor.engine.report import Report
from monitor.engine.round import run_round
from monitor.lab.loopback import LabFacts
from monitor.lab.run import write_config

SYNC = "1790000000"


def ranges(v4: list[tuple[str, str, str]], v6: list[tuple[str, str, str]]) -> dict[str, Any]:
    """An ip-ranges.json: (prefix, region, service) per family."""
    return {
        "syncToken": SYNC,
        "createDate": "2026-09-21-12-00-00",
        "prefixes": [
            {"ip_prefix": p, "region": r, "service": s, "network_border_group": r} for p, r, s in v4
        ],
        "ipv6_prefixes": [
            {"ipv6_prefix": p, "region": r, "service": s, "network_border_group": r}
            for p, r, s in v6
        ],
    }


# The lab answers on 127.0.0.1 and ::1; a /8 of AMAZON holds a /24 of S3 (longest match).
V4 = [("127.0.0.0/8", "us-east-1", "AMAZON"), ("127.0.0.0/24", "us-east-1", "S3")]
V6_ELSEWHERE = [("::1/128", "eu-west-1", "AMAZON")]


def lab_config(lab: LabFacts, tmp_path: Path, doc: dict[str, Any], **extra: Any) -> Path:
    """The lab's `healthy` endpoint (tcp, tls) attributed with `doc` as ip_ranges.file."""
    base = write_config(lab, tmp_path / "base.yml", **extra)
    data = yaml.safe_load(base.read_text())
    (tmp_path / "ranges.json").write_text(json.dumps(doc))
    data["ip_ranges"] = {"file": "ranges.json"}
    data["route53"] = {"zones": []}
    data["targets"] = [
        {**t, "probes": ["tcp", "tls"]} for t in data["targets"] if t["name"] == "healthy"
    ]
    path = tmp_path / "lab.yml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(path: Path) -> Report:
    cfg = load_config(path)
    return asyncio.run(run_round(cfg, cfg.targets))


def test_ipv6_outside_every_prefix_is_a_mismatch(lab_session: LabFacts, tmp_path: Path) -> None:
    report = run(lab_config(lab_session, tmp_path, ranges(V4, [])))
    for p in report.parity:
        assert p.verdict is Verdict.MISMATCH, p
        diff = {d.field: d for d in p.differences}["address.in_aws_ranges"]
        assert (diff.ipv4, diff.ipv6, diff.significant) == (True, False, True)
    by = {(r.probe, r.family): r for r in report.results}
    v4 = by[("tcp", "ipv4")].aws
    assert v4 is not None and v4.prefix == "127.0.0.0/24"  # the longest match
    assert v4.services == ("AMAZON", "S3") and v4.region == "us-east-1"
    assert by[("tcp", "ipv6")].aws is None


def test_families_in_different_regions_is_normal(lab_session: LabFacts, tmp_path: Path) -> None:
    report = run(lab_config(lab_session, tmp_path, ranges(V4, V6_ELSEWHERE)))
    for p in report.parity:
        assert p.verdict is Verdict.OK, p
        diffs = {d.field: d for d in p.differences}
        assert not diffs["address.region"].significant
        assert (diffs["address.region"].ipv4, diffs["address.region"].ipv6) == (
            "us-east-1",
            "eu-west-1",
        )
        assert "address.in_aws_ranges" not in diffs


def test_ipv4_outside_while_ipv6_inside_is_normal(lab_session: LabFacts, tmp_path: Path) -> None:
    report = run(lab_config(lab_session, tmp_path, ranges([], V6_ELSEWHERE)))
    for p in report.parity:
        assert p.verdict is Verdict.OK, p
        diff = {d.field: d for d in p.differences}["address.in_aws_ranges"]
        assert (diff.ipv4, diff.ipv6, diff.significant) == (False, True, False)


def test_custom_targets_are_not_judged_by_aws_ranges(lab_session: LabFacts, tmp_path: Path) -> None:
    path = lab_config(lab_session, tmp_path, ranges(V4, []))
    data = yaml.safe_load(path.read_text())
    data["targets"][0]["service"] = "custom"
    path.write_text(yaml.safe_dump(data))
    report = run(path)
    assert {p.verdict for p in report.parity} == {Verdict.OK}
    assert all(r.aws is not None for r in report.results if r.family == "ipv4")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("{", "not JSON"),
        (json.dumps(ranges([("127.0.0.300/8", "x", "AMAZON")], [])), "prefixes[0].ip_prefix"),
    ],
)
def test_a_ranges_file_that_cannot_be_used_is_exit_2(
    lab_session: LabFacts,
    tmp_path: Path,
    content: str | None,
    message: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = lab_config(lab_session, tmp_path, ranges(V4, []))
    if content is None:
        (tmp_path / "ranges.json").unlink()
    else:
        (tmp_path / "ranges.json").write_text(content)
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "ip_ranges.file" in err and message in err, err


def test_the_metric_in_a_real_prometheus(lab_session: LabFacts, tmp_path: Path) -> None:
    path = lab_config(lab_session, tmp_path, ranges(V4, []), vantage="lab-ranges", interval="2s")
    with serve(path) as served:
        served.wait_ready()
        prom_cfg = write_scrape_config(tmp_path / "prometheus.yml", [served.port], job="ranges")
        with prometheus(prom_cfg, tmp_path) as prom:
            got = prom.wait_for(
                'dualstack_address_in_aws_ranges{vantage="lab-ranges",target="healthy"}',
                min_results=4,
            )
            values = {(s["metric"]["probe"], s["metric"]["family"]): s["value"][1] for s in got}
            assert values == {
                ("tcp", "ipv4"): "1",
                ("tcp", "ipv6"): "0",
                ("tls", "ipv4"): "1",
                ("tls", "ipv6"): "0",
            }
            sync = prom.wait_for('dualstack_ip_ranges_sync_timestamp_seconds{vantage="lab-ranges"}')
            assert sync[0]["value"][1] == SYNC
            mismatch = prom.wait_for(
                'dualstack_parity{vantage="lab-ranges",verdict="mismatch"} == 1', min_results=2
            )
            assert {s["metric"]["probe"] for s in mismatch} == {"tcp", "tls"}
