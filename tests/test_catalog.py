"""scripts/gen_catalog.py, configs/catalog.yml and docs/catalog.md: every listed host rests on
evidence, the check fails on a planted undocumented name, and the committed files are current.

No network: the generator reads only scripts/catalog_sources.yml, botocore's bundled data and
probes/data/aws-ip-ranges.json.
"""

from __future__ import annotations

import copy
import difflib
import json
import subprocess
import sys
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.config import load_config

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gen_catalog.py"
SOURCES = REPO / "scripts" / "catalog_sources.yml"
CATALOG = REPO / "configs" / "catalog.yml"
DOC = REPO / "docs" / "catalog.md"
IP_RANGES = REPO / "probes" / "data" / "aws-ip-ranges.json"

SERVICES = {"cloudfront", "ec2", "iam", "route53", "s3", "s3-control", "sts"}
PROBE_KINDS = {"dns", "icmp", "tcp", "tls", "http2", "http3"}
EVIDENCE_KINDS = {"aws_doc", "botocore_variant", "botocore_ruleset_endpoint"}
BASES = {"aws_doc", "observed_not_documented", "not_documented"}

# The names the issue found on every round of the old default config: template-only, undocumented.
UNDOCUMENTED = "elasticloadbalancing.us-east-1.api.aws"


def run_generator(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def committed_text() -> str:
    assert CATALOG.is_file(), f"{CATALOG} is missing; run `python scripts/gen_catalog.py`"
    return CATALOG.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def catalog(committed_text: str) -> dict[str, Any]:
    data = yaml.safe_load(committed_text)
    assert isinstance(data, dict)
    return data


def endpoints(catalog: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(name, ep) for name, svc in catalog["services"].items() for ep in svc["endpoints"]]


def lines_naming(stderr: str, entry: str) -> list[str]:
    return [line for line in stderr.splitlines() if f": {entry}:" in line]


# -- Determinism and currency -----------------------------------------------------------------


def test_generator_is_deterministic(tmp_path: Path) -> None:
    outs = []
    for run in ("first", "second"):
        out, doc = tmp_path / f"{run}.yml", tmp_path / f"{run}.md"
        result = run_generator("--output", str(out), "--doc", str(doc))
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""
        outs.append((out.read_bytes(), doc.read_bytes()))
    assert outs[0] == outs[1]


def test_committed_catalog_and_doc_are_current(tmp_path: Path, catalog: dict[str, Any]) -> None:
    recorded = catalog["botocore_version"]
    try:
        installed = version("botocore")
    except PackageNotFoundError:
        pytest.fail(f"botocore is not installed; install botocore=={recorded} (the dev extra)")
    assert installed == recorded, (
        f"installed botocore {installed} != {recorded} recorded in {CATALOG.name}: install "
        f"botocore=={recorded}, or move the pin and regenerate with scripts/gen_catalog.py"
    )
    out, doc = tmp_path / "catalog.yml", tmp_path / "catalog.md"
    result = run_generator("--output", str(out), "--doc", str(doc))
    assert result.returncode == 0, result.stderr
    for generated, committed in ((out, CATALOG), (doc, DOC)):
        new, old = generated.read_text(encoding="utf-8"), committed.read_text(encoding="utf-8")
        diff = "".join(
            difflib.unified_diff(
                old.splitlines(keepends=True), new.splitlines(keepends=True), "committed", "new"
            )
        )
        assert new == old, f"{committed.name}: run python scripts/gen_catalog.py:\n{diff[:4000]}"

    result = run_generator("--check")
    assert result.returncode == 0, result.stderr
    stale = tmp_path / "stale.yml"
    stale.write_text(CATALOG.read_text(encoding="utf-8").replace("  iam:", "  iam2:", 1))
    result = run_generator("--check", "--output", str(stale))
    assert result.returncode == 1
    assert "out of date" in result.stderr
    assert stale.read_text(encoding="utf-8") != CATALOG.read_text(encoding="utf-8")  # not written


def test_ip_ranges_snapshot_is_the_one_recorded(catalog: dict[str, Any]) -> None:
    data = json.loads(IP_RANGES.read_text(encoding="utf-8"))
    assert catalog["ip_ranges"] == {
        "file": "probes/data/aws-ip-ranges.json",
        "syncToken": data["syncToken"],
        "createDate": data["createDate"],
    }


# -- What the committed catalog says ----------------------------------------------------------


def test_catalog_header(committed_text: str, catalog: dict[str, Any]) -> None:
    header = [line for line in committed_text.splitlines() if line.startswith("#")][:5]
    text = "\n".join(header)
    assert "DO NOT EDIT BY HAND" in text
    assert "python scripts/gen_catalog.py" in text
    assert f"botocore {catalog['botocore_version']}" in text


def test_catalog_structure(catalog: dict[str, Any]) -> None:
    assert set(catalog["services"]) == SERVICES
    for name, svc in catalog["services"].items():
        assert svc["title"], name
        kinds = [ep["kind"] for ep in svc["endpoints"]]
        assert kinds and len(kinds) == len(set(kinds)), f"{name}: kinds {kinds}"

    for name, ep in endpoints(catalog):
        where = f"{name}/{ep['kind']}"
        assert ep["plane"] in {"data", "control"}, where
        assert isinstance(ep["port"], int) and 0 < ep["port"] < 65536, where
        assert set(ep["probes"]) <= PROBE_KINDS, where
        assert "icmp" not in ep["probes"], f"{where}: no AWS endpoint promises ICMP echo"
        http3 = ep["expect"]["http3"]
        documented_h3 = http3["value"] is True and http3["basis"] == "aws_doc"
        assert ("http3" in ep["probes"]) is documented_h3, where
        assert ep["evidence"], f"{where}: no evidence"
        assert {e["kind"] for e in ep["evidence"]} <= EVIDENCE_KINDS, where
        for item in ep["evidence"]:
            if item["kind"] == "aws_doc":
                assert item["url"].startswith(
                    ("https://docs.aws.amazon.com/", "https://repost.aws/")
                )
                assert item["pattern"] in f"{item['sentence']} {item.get('naming', '')}", where
        backed = {r for item in ep["evidence"] for r in item["regions"]}
        assert set(ep["hosts"]) <= backed, f"{where}: hosts without evidence"
        for field in ("http_version", "alpn", "http3", "unauthenticated_status"):
            fact = ep["expect"][field]
            assert fact["basis"] in BASES, (where, field)
            assert fact.get("source") or fact.get("note"), (where, field)
        assert ep["expect_status"] == ep["expect"]["unauthenticated_status"]["value"], where
        assert set(ep["ip_ranges_service"]) == {"ipv4", "ipv6"}, where
        if ep["pattern"].endswith(".api.aws"):  # control-plane names: AMAZON only, never a key
            assert set(ep["ip_ranges_service"].values()) == {"AMAZON"}, where
        hosts: dict[str, str] = ep["hosts"]
        assert hosts, f"{where}: no hosts"
        assert list(hosts) == sorted(hosts), f"{where}: regions not sorted"
        for region, host in hosts.items():
            assert host.endswith((".amazonaws.com", ".api.aws")), f"{where} {region}: {host}"
            assert "fips" not in host and "fips" not in region, f"{where} {region}: {host}"
            assert region != "aws-global", where
            assert host == ep["pattern"].replace("{region}", region), f"{where} {region}: {host}"


def test_catalog_known_hosts(catalog: dict[str, Any]) -> None:
    services = catalog["services"]
    (s3,) = services["s3"]["endpoints"]
    assert s3["plane"] == "data"
    assert s3["hosts"]["us-east-1"] == "s3.dualstack.us-east-1.amazonaws.com"
    assert s3["hosts"]["ap-northeast-1"] == "s3.dualstack.ap-northeast-1.amazonaws.com"
    assert "ap-east-2" not in s3["hosts"]  # only S3's service-wide template names it
    assert s3["expect"]["http_version"]["value"] == "1.1"
    assert s3["expect"]["alpn"]["value"] == ["http/1.1"]
    assert s3["ip_ranges_service"] == {"ipv4": "S3", "ipv6": "S3"}

    (control,) = services["s3-control"]["endpoints"]
    assert control["hosts"]["us-east-1"] == "s3-control.dualstack.us-east-1.amazonaws.com"

    (ec2,) = services["ec2"]["endpoints"]
    assert ec2["hosts"]["us-east-1"] == "ec2.us-east-1.api.aws"
    assert ec2["ip_ranges_service"] == {"ipv4": "AMAZON", "ipv6": "AMAZON"}

    (sts,) = services["sts"]["endpoints"]
    assert sts["hosts"]["ap-northeast-1"] == "sts.ap-northeast-1.api.aws"
    assert [e["scope"] for e in sts["evidence"]] == ["partition"]

    (iam,) = services["iam"]["endpoints"]
    assert iam["hosts"] == {"global": "iam.global.api.aws"}
    assert {e["kind"] for e in iam["evidence"]} == EVIDENCE_KINDS

    for name in ("route53", "cloudfront"):
        (api,) = services[name]["endpoints"]
        assert api["hosts"] == {"global": f"{name}.global.api.aws"}
        assert [e["kind"] for e in api["evidence"]] == ["botocore_ruleset_endpoint"]

    every_host = {h for _, ep in endpoints(catalog) for h in ep["hosts"].values()}
    template_only = ("elasticloadbalancing.", "iot.", "data-ats.")
    assert not {h for h in every_host if h.startswith(template_only)}

    users = catalog["user_targets"]
    assert users["alb"]["pattern"] == "dualstack.<name>.<region>.elb.amazonaws.com"
    edge = users["cloudfront"]
    assert "http3" in edge["probes"]
    assert edge["expect"]["http3"] == {**edge["expect"]["http3"], "value": True, "basis": "aws_doc"}


def test_default_config_probes_only_documented_names() -> None:
    """Each target of the shipped default rests on an AWS page, not on botocore alone."""
    catalog = yaml.safe_load(CATALOG.read_text(encoding="utf-8"))
    cfg = load_config(REPO / "configs" / "default.yml")
    assert cfg.targets
    for target in cfg.targets:
        assert target.source == "catalog", target.name
        (ep,) = [
            ep
            for ep in catalog["services"][target.service]["endpoints"]
            if ep["hosts"].get(target.region) == target.host
        ]
        assert "aws_doc" in {e["kind"] for e in ep["evidence"]}, target.name
        assert "icmp" not in target.probes and "http3" not in target.probes, target.name


# -- The cross-check can fail -----------------------------------------------------------------


def _planted_alb(ep: dict[str, Any]) -> dict[str, Any]:
    planted = copy.deepcopy(ep)
    planted.update(
        kind="api",
        pattern="elasticloadbalancing.{region}.api.aws",
        botocore={"endpoints": "elasticloadbalancing", "ruleset": "elbv2"},
        hosts={"us-east-1": UNDOCUMENTED},
    )
    return planted


def _no_evidence(cat: dict[str, Any]) -> str:
    (ec2,) = cat["services"]["ec2"]["endpoints"]
    cat["services"]["alb"] = {"title": "ELB", "endpoints": [{**_planted_alb(ec2), "evidence": []}]}
    return "alb/api"


def _template_posing_as_variant(cat: dict[str, Any]) -> str:
    (ec2,) = cat["services"]["ec2"]["endpoints"]
    planted = _planted_alb(ec2)
    planted["evidence"] = [
        {
            "kind": "botocore_variant",
            "file": "botocore/data/endpoints.json",
            "key": "partitions[partition=aws].services.elasticloadbalancing.endpoints.{region}"
            ".variants[tags=dualstack].hostname",
            "regions": ["us-east-1"],
        }
    ]
    cat["services"]["alb"] = {"title": "ELB", "endpoints": [planted]}
    return "alb/api"


def _generic_name_for_s3(cat: dict[str, Any]) -> str:
    (s3,) = cat["services"]["s3"]["endpoints"]
    s3["hosts"]["us-east-1"] = "s3.us-east-1.api.aws"  # the partition template's name
    return "s3/s3"


def _misquoted_page(cat: dict[str, Any]) -> str:
    (iam,) = cat["services"]["iam"]["endpoints"]
    iam["evidence"][0]["sentence"] = "IAM provides a dual-stack public endpoint."
    return "iam/api"


def _icmp_by_default(cat: dict[str, Any]) -> str:
    (sts,) = cat["services"]["sts"]["endpoints"]
    sts["probes"] = ["dns", "icmp", "tcp"]
    return "sts/api"


@pytest.mark.parametrize(
    "plant",
    [
        _no_evidence,
        _template_posing_as_variant,
        _generic_name_for_s3,
        _misquoted_page,
        _icmp_by_default,
    ],
    ids=lambda f: f.__name__.strip("_"),
)
def test_check_names_each_entry_its_evidence_does_not_back(
    tmp_path: Path, catalog: dict[str, Any], plant: Callable[[dict[str, Any]], str]
) -> None:
    planted = copy.deepcopy(catalog)
    entry = plant(planted)
    path = tmp_path / "planted.yml"
    path.write_text(yaml.safe_dump(planted, sort_keys=False), encoding="utf-8")
    result = run_generator("--check", "--output", str(path))
    assert result.returncode == 1
    assert lines_naming(result.stderr, entry), result.stderr
    blamed = [line for line in result.stderr.splitlines() if "is out of date" not in line]
    assert all(line.startswith(f"gen_catalog: {path}: {entry}: ") for line in blamed), blamed


def _write_sources(tmp_path: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    sources = yaml.safe_load(SOURCES.read_text(encoding="utf-8"))
    change(sources)
    path = tmp_path / "sources.yml"
    path.write_text(yaml.safe_dump(sources, sort_keys=False), encoding="utf-8")
    return path


def test_generation_refuses_a_source_without_evidence(tmp_path: Path) -> None:
    def plant(sources: dict[str, Any]) -> None:
        ec2 = sources["services"]["ec2"]["endpoints"][0]
        alb = {
            **ec2,
            "pattern": "elasticloadbalancing.{region}.api.aws",
            "botocore": {"endpoints": "elasticloadbalancing", "ruleset": "elbv2"},
            "docs": [],
        }
        sources["services"]["alb"] = {"title": "ELB", "endpoints": [alb]}

    path = _write_sources(tmp_path, plant)
    out, doc = tmp_path / "catalog.yml", tmp_path / "catalog.md"
    result = run_generator("--sources", str(path), "--output", str(out), "--doc", str(doc))
    assert result.returncode == 1
    (line,) = lines_naming(result.stderr, "alb/api")
    assert "no evidence" in line
    assert not out.exists() and not doc.exists()  # nothing is written
    assert UNDOCUMENTED not in result.stderr.replace(line, "")


def test_a_page_that_disagrees_with_botocore_fails(tmp_path: Path) -> None:
    def plant(sources: dict[str, Any]) -> None:
        (doc,) = sources["services"]["sts"]["endpoints"][0]["docs"]
        doc["naming"] = (
            "Commercial AWS Regions | Regular endpoints: https://sts.<region>.amazonaws.com"
        )
        doc["pattern"] = "sts.<region>.amazonaws.com"

    path = _write_sources(tmp_path, plant)
    result = run_generator("--check", "--sources", str(path))
    assert result.returncode == 1
    named = lines_naming(result.stderr, "sts/api")
    wrong = "botocore resolves sts.us-east-1.api.aws, not sts.us-east-1.amazonaws.com"
    assert any(wrong in line for line in named), result.stderr


def test_regions_are_checked_against_ip_ranges(tmp_path: Path) -> None:
    data = json.loads(IP_RANGES.read_text(encoding="utf-8"))
    data["ipv6_prefixes"] = [
        p for p in data["ipv6_prefixes"] if (p["service"], p["region"]) != ("S3", "ap-northeast-1")
    ]
    ranges = tmp_path / "ip-ranges.json"
    ranges.write_text(json.dumps(data), encoding="utf-8")
    result = run_generator("--check", "--ip-ranges", str(ranges))
    assert result.returncode == 1
    named = lines_naming(result.stderr, "s3/s3")
    assert any(
        "ap-northeast-1: ip-ranges.json lists no S3 ipv6 prefix there" in line for line in named
    ), result.stderr
