"""Every address, in network namespaces: a name with three AAAA, one of them blackholed. A real
client would fail a third of its connections; the monitor says `ipv6_failed` and names the
address, in `probe run` and in `probe serve` (metric: 2 ok, 1 failed). IPv4 stays `ok`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from lab.netns import inside, namespace, project_env, python_in, veth
from prometheus_client.parser import text_string_to_metric_families
from serving import serve

ROOT = Path(__file__).resolve().parents[1]
HOST = "multi.example.com"
V4 = "198.51.100.10"
V6 = ("2001:db8:1::10", "2001:db8:1::11", "2001:db8:1::12")
DEAD = V6[1]
DNS = "198.51.100.53"

SERVER = """
import asyncio, json, sys
from monitor.lab.dnsserver import DnsRecord, DnsServer

v4, v6, dns = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]

async def main():
    records = {
        "example.com": [DnsRecord(rtype="SOA", value="ns.example.com. h.example.com. 1 1 1 1 1")],
        "multi.example.com": [DnsRecord(rtype="A", value=v4, ttl=5)]
        + [DnsRecord(rtype="AAAA", value=a, ttl=5) for a in v6],
    }
    async with DnsServer(records, ["example.com"], hosts=(dns,), port=53):
        servers = [await asyncio.start_server(lambda r, w: w.close(), h, 443) for h in [v4, *v6]]
        print("ready", flush=True)
        await asyncio.sleep(300)

asyncio.run(main())
"""


def config(path: Path) -> Path:
    doc = {
        "vantage": "every-address",
        "interval": "2s",
        "timeout": "1s",
        "resolver": {"nameservers": [DNS]},
        "targets": [
            {
                "name": "multi",
                "service": "s3",
                "region": "us-east-1",
                "host": HOST,
                "probes": ["tcp"],
            }
        ],
    }
    path.write_text(yaml.safe_dump(doc))
    return path


def check_family_results(results: list[dict[str, Any]]) -> None:
    v6 = next(r for r in results if r["family"] == "ipv6")
    v4 = next(r for r in results if r["family"] == "ipv4")
    assert v4["success"] and [a["address"] for a in v4["addresses"]] == [V4]
    assert not v6["success"] and v6["address"] == V6[0]  # the first sorted address
    assert [(a["address"], a["success"]) for a in v6["addresses"]] == [
        (V6[0], True),
        (DEAD, False),
        (V6[2], True),
    ]
    assert v6["error"]["kind"] == "timeout"
    assert v6["error"]["message"] == f"1 of 3 IPv6 addresses failed: {DEAD} timeout"


def serve_and_scrape(cfg: Path) -> tuple[list[dict[str, Any]], dict[str, Any], dict[str, float]]:
    """Runs inside the client namespace: `probe serve` there, its API and /metrics."""
    with serve(cfg) as served:
        served.wait_ready()
        time.sleep(0.5)
        _, body = served.get("/api/v1/results")
        doc = json.loads(body)
        _, text = served.get("/metrics")
    metric: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "dualstack_probe_addresses" and s.labels["family"] == "ipv6":
                metric[s.labels["state"]] = s.value
    return doc["results"], next(p for p in doc["parity"] if p["probe"] == "tcp"), metric


@pytest.mark.netns
def test_one_dead_address_of_three_is_ipv6_failed(tmp_path: Path) -> None:
    env = project_env()
    with namespace("ds-srv") as srv, namespace("ds-cli") as cli:
        veth(
            cli,
            ["198.51.100.2/24", "2001:db8:1::2/64"],
            srv,
            [f"{V4}/24", f"{DNS}/24", *(f"{a}/64" for a in V6)],
        )
        # One address blackholed: its packets vanish, nothing answers (a dead node).
        subprocess.run(
            [*srv.exec_prefix(), "nft", "-f", "-"],
            input="table inet t {\n  chain blackhole {\n"
            "    type filter hook input priority 0;\n"
            f"    ip6 daddr {DEAD} drop\n  }}\n}}\n",
            text=True,
            check=True,
            capture_output=True,
            timeout=30,
        )
        with python_in(srv, SERVER, V4, json.dumps(V6), DNS):
            cfg = config(tmp_path / "cfg.yml")
            run = subprocess.run(
                [
                    *cli.exec_prefix(),
                    sys.executable,
                    "-m",
                    "monitor.cli",
                    "run",
                    "--config",
                    str(cfg),
                    "--format",
                    "json",
                    "--samples",
                    "1",
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                check=False,
            )
            with inside(cli) as there:
                results, parity, metric = there.submit(serve_and_scrape, cfg).result(timeout=120)

    assert run.returncode == 1, run.stdout + run.stderr
    doc = json.loads(run.stdout)
    verdicts = {p["probe"]: p for p in doc["parity"]}
    assert verdicts["tcp"]["verdict"] == "ipv6_failed"
    assert DEAD in verdicts["tcp"]["reason"]
    check_family_results([r for r in doc["results"] if r["probe"] == "tcp"])
    # probe serve: the same judgement, and the metric counts the addresses
    assert parity["verdict"] == "ipv6_failed" and DEAD in parity["reason"]
    check_family_results([r for r in results if r["probe"] == "tcp"])
    assert metric == {"ok": 2.0, "failed": 1.0}
