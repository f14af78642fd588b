"""scripts/gen_catalog.py and the committed configs/catalog.yml: deterministic, current, sane.

No network: the generator only reads the endpoint data bundled with the installed botocore.
"""

from __future__ import annotations

import difflib
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "gen_catalog.py"
CATALOG = REPO / "configs" / "catalog.yml"

SERVICES = {"s3", "route53", "iot", "cloudfront", "alb"}
PROBE_KINDS = {"dns", "icmp", "tcp", "tls", "http2", "http3"}


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


def test_generator_is_deterministic(tmp_path: Path) -> None:
    first, second = tmp_path / "first.yml", tmp_path / "second.yml"
    for out in (first, second):
        result = run_generator("--output", str(out))
        assert result.returncode == 0, result.stderr
    assert first.read_bytes() == second.read_bytes()


def test_committed_catalog_is_current(tmp_path: Path, catalog: dict[str, Any]) -> None:
    recorded = catalog["botocore_version"]
    try:
        installed = version("botocore")
    except PackageNotFoundError:
        pytest.fail(f"botocore is not installed; install botocore=={recorded} (the dev extra)")
    assert installed == recorded, (
        f"installed botocore {installed} != {recorded} recorded in {CATALOG.name}: install "
        f"botocore=={recorded}, or move the pin and regenerate with scripts/gen_catalog.py"
    )

    out = tmp_path / "catalog.yml"
    result = run_generator("--output", str(out))
    assert result.returncode == 0, result.stderr
    generated, committed = out.read_text(encoding="utf-8"), CATALOG.read_text(encoding="utf-8")
    diff = "".join(
        difflib.unified_diff(
            committed.splitlines(keepends=True),
            generated.splitlines(keepends=True),
            "committed",
            "generated",
        )
    )
    assert generated == committed, f"regenerate with python scripts/gen_catalog.py:\n{diff[:4000]}"

    assert run_generator("--check").returncode == 0
    stale = tmp_path / "stale.yml"
    stale.write_text(committed.replace("us-east-1:", "us-east-9:", 1), encoding="utf-8")
    result = run_generator("--check", "--output", str(stale))
    assert result.returncode == 1
    assert "out of date" in result.stderr
    assert stale.read_text(encoding="utf-8") != generated  # --check never writes


def test_catalog_header(committed_text: str, catalog: dict[str, Any]) -> None:
    header = [line for line in committed_text.splitlines() if line.startswith("#")][:5]
    text = "\n".join(header)
    assert "DO NOT EDIT BY HAND" in text
    assert "python scripts/gen_catalog.py" in text
    assert f"botocore {catalog['botocore_version']}" in text


def test_catalog_structure(catalog: dict[str, Any]) -> None:
    assert set(catalog["services"]) == SERVICES
    assert isinstance(catalog["botocore_version"], str)
    for name, svc in catalog["services"].items():
        assert svc["title"], name
        kinds = [ep["kind"] for ep in svc["endpoints"]]
        assert kinds and len(kinds) == len(set(kinds)), f"{name}: kinds {kinds}"

    for name, ep in endpoints(catalog):
        where = f"{name}/{ep['kind']}"
        assert ep["plane"] in {"data", "control"}, where
        assert isinstance(ep["port"], int) and 0 < ep["port"] < 65536, where
        assert set(ep["probes"]) <= PROBE_KINDS, where
        assert ep["http3"] is ("http3" in ep["probes"]), where
        assert ep["alpn"], where
        assert all(100 <= status < 600 for status in ep["expect_status"]), where
        assert str(ep["source"]).startswith("https://docs.aws.amazon.com/"), where
        hosts: dict[str, str] = ep["hosts"]
        assert hosts, f"{where}: no hosts"
        assert list(hosts) == sorted(hosts), f"{where}: regions not sorted"
        for region, host in hosts.items():
            assert host.endswith((".amazonaws.com", ".api.aws")), f"{where} {region}: {host}"
            assert "fips" not in host and "fips" not in region, f"{where} {region}: {host}"
            assert region != "aws-global", where


def test_catalog_known_hosts(catalog: dict[str, Any]) -> None:
    services = catalog["services"]
    (s3,) = services["s3"]["endpoints"]
    assert s3["plane"] == "data"
    assert s3["hosts"]["us-east-1"] == "s3.dualstack.us-east-1.amazonaws.com"
    assert s3["hosts"]["ap-northeast-1"] == "s3.dualstack.ap-northeast-1.amazonaws.com"
    assert s3["alpn"] == ["http/1.1"]
    assert s3["http3"] is False

    (route53,) = services["route53"]["endpoints"]
    assert route53["hosts"] == {"global": "route53.global.api.aws"}
    assert route53["plane"] == "control"

    (cloudfront,) = services["cloudfront"]["endpoints"]
    assert cloudfront["hosts"] == {"global": "cloudfront.global.api.aws"}
    assert cloudfront["plane"] == "control"
    assert cloudfront["http3"] is False  # the API, not an edge

    iot = {ep["kind"]: ep for ep in services["iot"]["endpoints"]}
    assert iot["api"]["plane"] == "control"
    assert iot["data-ats"]["plane"] == "data"
    assert iot["api"]["hosts"]["us-east-1"] == "iot.us-east-1.api.aws"
    assert iot["data-ats"]["hosts"]["us-east-1"] == "data-ats.iot.us-east-1.api.aws"

    (alb,) = services["alb"]["endpoints"]
    assert alb["hosts"]["us-east-1"] == "elasticloadbalancing.us-east-1.api.aws"
