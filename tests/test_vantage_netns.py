"""A vantage with no IPv6 (a laptop on an IPv4-only network), built from network namespaces:
exit status 3, IPv6 transport probes skipped rather than blamed on the endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from lab.netns import namespace, project_env, python_in, veth

ROOT = Path(__file__).resolve().parents[1]

SERVER = """
import asyncio, socket, sys
from monitor.lab.dnsserver import DnsRecord, DnsServer

async def main():
    records = {
        "example.com": [DnsRecord(rtype="SOA", value="ns.example.com. h.example.com. 1 1 1 1 1")],
        "app.example.com": [DnsRecord(rtype="A", value="198.51.100.2"),
                            DnsRecord(rtype="AAAA", value="2001:db8::2")],
    }
    async with DnsServer(records, ["example.com"], hosts=("198.51.100.2",), port=53):
        server = await asyncio.start_server(lambda r, w: w.close(), "198.51.100.2", 443)
        print("ready", flush=True)
        async with server:
            await asyncio.sleep(60)

asyncio.run(main())
"""


def test_ipv4_only_vantage_exits_3(tmp_path: Path) -> None:
    env = project_env()
    with namespace("ds-srv") as srv, namespace("ds-cli") as cli:
        # IPv4 only between them; the client's veth still gets an fe80:: link-local address,
        # which must not count as IPv6 connectivity.
        veth(cli, ["198.51.100.1/24"], srv, ["198.51.100.2/24", "2001:db8::2/64"])
        with python_in(srv, SERVER):
            cfg = tmp_path / "cfg.yml"
            cfg.write_text(
                yaml.safe_dump(
                    {
                        "vantage": "ipv4-only-laptop",
                        "timeout": "2s",
                        "resolver": {"nameservers": ["198.51.100.2"]},
                        "targets": [
                            {"name": "app", "host": "app.example.com", "probes": ["dns", "tcp"]}
                        ],
                    }
                )
            )
            time.sleep(0.2)  # veth carrier up
            proc = subprocess.run(
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
                ],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                check=False,
            )
    assert proc.returncode == 3, proc.stdout + proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["vantage_ipv6"] is False
    assert doc["vantage_routes"] == {"2001:db8::2": None}
    verdicts = {p["probe"]: p["verdict"] for p in doc["parity"]}
    assert verdicts == {"dns": "ok", "tcp": "skipped"}
    tcp4 = next(r for r in doc["results"] if r["probe"] == "tcp" and r["family"] == "ipv4")
    assert tcp4["success"] and tcp4["address"] == "198.51.100.2"


def test_table_says_the_vantage_has_no_ipv6() -> None:
    from monitor.engine.report import Report
    from monitor.engine.vantage import VantageCheck
    from monitor.run.output import write_table

    report = Report(
        vantage="v",
        started=1795651200.0,  # 2026-11-26T00:00:00Z
        vantage_check=VantageCheck(ipv6=False, routes={"2001:db8::2": None}),
        targets=(),
        results=(),
        parity=(),
    )
    import io

    out = io.StringIO()
    write_table(report, out, width=None)  # whatever $COLUMNS says
    text = out.getvalue()
    assert "This vantage has no working IPv6 (no_route: no route to any target's IPv6" in text
    assert "exit status 3: this vantage has no working IPv6" in text


pytestmark = pytest.mark.netns
