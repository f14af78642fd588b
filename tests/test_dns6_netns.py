"""DNS over IPv6 as resolvers see it, built for real in network namespaces: vantage - server.

The server namespace runs the lab's DNS server (authoritative for example.com, with a DNSKEY
RRset of about 2 KB, and answering recursion for its own names) on 1280-byte links, so the
large answer with EDNS 4096 arrives in fragments over both families. A second server answers
only over IPv4. Then `probe run --format json` in the vantage namespace, with a fault or none:

- IPv6 fragments dropped on the way in (`exthdr frag exists drop`): dns_large over IPv6 is
  `dns_fragments_lost`, over IPv4 `ok`, its verdict `ipv6_failed`; dns and dns_tcp stay ok;
- TCP 53 rejected over IPv6: dns_tcp over IPv6 is `dns_tcp_failed`, its verdict `ipv6_failed`;
- no fault: every question ok over both families.

The resolver targets: one resolver on both families is `ok`; one answering only over IPv4 is
`ipv6_failed` with the transport error. Every wait is bounded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import jsonschema
import pytest
import yaml
from lab.netns import Netns, ip, namespace, nft, probe_cli, python_in, veth

from monitor.engine.schema import report_schema

ROOT = Path(__file__).resolve().parents[1]
VANTAGE = ("198.51.100.2", "2001:db8:1::2")
SERVER = ("198.51.100.53", "2001:db8:1::53")
V4_ONLY = ("198.51.100.54", "2001:db8:1::54")
"""A resolver whose server listens on its IPv4 address only."""
LINK_MTU = 1280
TIMEOUT = 2.0
Fault = Literal["none", "no_v6_fragments", "no_v6_tcp"]

SERVER_SCRIPT = """
import asyncio, sys
from monitor.lab.dnsserver import DnsRecord, DnsServer, dnskey_records

v4, v6, v4_only = sys.argv[1:4]
records = {
    "example.com": dnskey_records(),
    "ns.example.com": [DnsRecord(rtype="A", value=v4), DnsRecord(rtype="AAAA", value=v6)],
    "www.example.com": [
        DnsRecord(rtype="A", value="203.0.113.80"), DnsRecord(rtype="AAAA", value="2001:db8:2::80")
    ],
}

async def main():
    async with DnsServer(records, ["example.com"], hosts=(v4, v6), port=53, recursive=True):
        async with DnsServer(records, ["example.com"], hosts=(v4_only,), port=53, recursive=True):
            print("ready", flush=True)
            await asyncio.sleep(300)

asyncio.run(main())
"""

FAULTS: dict[Fault, str] = {
    "none": "",
    # Before the kernel's reassembly (priority -400): a network that drops IPv6 fragments.
    "no_v6_fragments": (
        "table ip6 nofrag {\n  chain pre {\n    type filter hook prerouting priority -450;\n"
        "    exthdr frag exists drop\n  }\n}\n"
    ),
    # On the server's way in: TCP 53 over IPv6 refused, as a firewall does.
    "no_v6_tcp": (
        "table ip6 notcp {\n  chain input {\n    type filter hook input priority 0;\n"
        "    tcp dport 53 reject with tcp reset\n  }\n}\n"
    ),
}


@contextmanager
def link() -> Iterator[tuple[Netns, Netns]]:
    """vantage - server on one veth of LINK_MTU bytes; yields (vantage, server)."""
    with namespace("ds-v") as vantage, namespace("ds-ns") as server:
        ends = veth(
            vantage,
            [f"{VANTAGE[0]}/24", f"{VANTAGE[1]}/64"],
            server,
            [f"{SERVER[0]}/24", f"{SERVER[1]}/64", f"{V4_ONLY[0]}/24", f"{V4_ONLY[1]}/64"],
        )
        for ns, dev in zip((vantage, server), ends, strict=True):
            ip("link", "set", dev, "mtu", str(LINK_MTU), netns=ns.name)
        yield vantage, server


def config(folder: Path) -> Path:
    doc = {
        "vantage": "dns6-lab",
        "timeout": f"{TIMEOUT:g}s",
        "resolver": {"nameservers": [SERVER[0]]},
        "parity": {"slower_margin": "1s"},
        "targets": [
            {
                "name": "ns",
                "service": "route53",
                "host": "ns.example.com",
                "port": 53,
                "zone": "example.com",
                "probes": ["dns", "dns_tcp", "dns_large"],
            },
            {
                "name": "resolvers",
                "host": "www.example.com",
                "probes": ["resolver"],
                "resolvers": list(SERVER),
            },
            {
                "name": "v4-only-resolver",
                "host": "www.example.com",
                "probes": ["resolver"],
                "resolvers": list(V4_ONLY),
            },
        ],
    }
    out = folder / "dns6.yml"
    out.write_text(yaml.safe_dump(doc))
    return out


def probe_run(fault: Fault, tmp: Path) -> tuple[int, dict[str, Any]]:
    cfg = config(tmp)
    with link() as (vantage, server):
        if fault == "no_v6_fragments":
            nft(vantage, FAULTS[fault])
        elif fault == "no_v6_tcp":
            nft(server, FAULTS[fault])
        with python_in(server, SERVER_SCRIPT, *SERVER, V4_ONLY[0]):
            t0 = time.monotonic()
            run = probe_cli(vantage, "run", "--config", str(cfg), "--format", "json")
            elapsed = time.monotonic() - t0
    assert run.stdout, run.stderr
    assert elapsed < 4 * TIMEOUT + 10, elapsed
    doc = json.loads(run.stdout)
    jsonschema.validate(doc, report_schema())
    return run.returncode, doc


def verdicts(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(p["target"], p["probe"]): p["verdict"] for p in doc["parity"]}


def results(doc: dict[str, Any]) -> dict[tuple[str, str, str], dict[str, Any]]:
    return {(r["target"], r["probe"], r["family"]): r for r in doc["results"]}


def error_kind(result: dict[str, Any]) -> str | None:
    return result["error"]["kind"] if result["error"] else None


RESOLVER_VERDICTS = {
    ("resolvers", "resolver"): "ok",
    ("v4-only-resolver", "resolver"): "ipv6_failed",
}


def name_server(**verdicts: str) -> dict[tuple[str, str], str]:
    """The name server's three questions' verdicts: `ok` but those given."""
    return {("ns", kind): verdicts.get(kind, "ok") for kind in ("dns", "dns_tcp", "dns_large")}


def check_resolvers(doc: dict[str, Any]) -> None:
    rs = results(doc)
    v6 = rs[("v4-only-resolver", "resolver", "ipv6")]
    assert error_kind(v6) == "connect_refused", v6  # nothing listens on its IPv6 address
    assert v6["error"]["phase"] == "udp"
    assert rs[("v4-only-resolver", "resolver", "ipv4")]["success"]
    ok = rs[("resolvers", "resolver", "ipv6")]
    assert ok["address"] == SERVER[1]
    assert ok["details"]["aaaa_records"] == ["2001:db8:2::80"]
    assert ok["details"]["recursion_available"] is True
    parity = next(p for p in doc["parity"] if p["target"] == "v4-only-resolver")
    assert "A over udp" in parity["reason"], parity


@pytest.mark.netns
@pytest.mark.slow(30)
def test_no_fault_every_question_is_ok(tmp_path: Path) -> None:
    rc, doc = probe_run("none", tmp_path)
    assert verdicts(doc) == name_server() | RESOLVER_VERDICTS, doc["parity"]
    assert rc == 1  # the IPv4-only resolver
    rs = results(doc)
    for family in ("ipv4", "ipv6"):
        large = rs[("ns", "dns_large", family)]
        assert large["success"], large
        details = large["details"]
        # Larger than the link: it came in fragments, and they were put together.
        assert details["size_bytes"] > LINK_MTU and not details["truncated"], details
        assert details["edns_buffer"] == 4096 and details["transport"] == "udp"
        assert rs[("ns", "dns_tcp", family)]["success"]
    check_resolvers(doc)


@pytest.mark.netns
@pytest.mark.slow(30)
def test_ipv6_fragments_dropped_is_dns_fragments_lost(tmp_path: Path) -> None:
    rc, doc = probe_run("no_v6_fragments", tmp_path)
    assert verdicts(doc) == name_server(dns_large="ipv6_failed") | RESOLVER_VERDICTS, doc["parity"]
    assert rc == 1
    rs = results(doc)
    v6, v4 = rs[("ns", "dns_large", "ipv6")], rs[("ns", "dns_large", "ipv4")]
    assert error_kind(v6) == "dns_fragments_lost", v6
    assert v4["success"] and v4["details"]["size_bytes"] > LINK_MTU, v4
    parity = next(p for p in doc["parity"] if p["probe"] == "dns_large")
    assert "fragments are lost" in parity["reason"], parity
    for family in ("ipv4", "ipv6"):
        assert rs[("ns", "dns", family)]["success"]


@pytest.mark.netns
@pytest.mark.slow(30)
def test_ipv6_tcp_53_rejected_is_dns_tcp_failed(tmp_path: Path) -> None:
    rc, doc = probe_run("no_v6_tcp", tmp_path)
    assert verdicts(doc) == name_server(dns_tcp="ipv6_failed") | {
        ("resolvers", "resolver"): "ipv6_failed",  # the resolver's TCP is rejected too
        ("v4-only-resolver", "resolver"): "ipv6_failed",
    }, doc["parity"]
    assert rc == 1
    rs = results(doc)
    assert error_kind(rs[("ns", "dns_tcp", "ipv6")]) == "dns_tcp_failed"
    assert rs[("ns", "dns_tcp", "ipv4")]["success"]
    assert error_kind(rs[("resolvers", "resolver", "ipv6")]) == "dns_tcp_failed"
