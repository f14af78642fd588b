"""An IPv6 path-MTU black hole, built for real in network namespaces: client - router - server.

The router drops every IPv6 packet longer than 1280 bytes and sends no Packet Too Big (an
nftables rule on the length), as a tunnel behind a firewall that filters ICMPv6 type 2 does.
The server presents a certificate chain of three RSA certificates, larger than one segment, so
its TLS flight needs full-size packets. Then `probe run`: tcp stays `ok` (the handshake is
small), tls and http2 over IPv6 give `pmtu_blackhole` (IPv4 works: `ipv6_failed`), the icmp
sizes find 1280 over IPv6 and 1500 over IPv4, and the race's winner (IPv6) hangs in TLS.
The control: Packet Too Big allowed, a 1280-byte link on the router instead; the kernel learns
the path MTU and every verdict is `ok`. Every wait is bounded.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import pytest
import trustme
import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from lab.netns import Netns, ip, namespace, nft, veth

ROOT = Path(__file__).resolve().parents[1]
HOST = "blackhole.example.com"
CLIENT = ("198.51.100.2", "2001:db8:1::2")
ROUTER_CLIENT_SIDE = ("198.51.100.1", "2001:db8:1::1")
ROUTER_SERVER_SIDE = ("203.0.113.1", "2001:db8:2::1")
SERVER = ("203.0.113.10", "2001:db8:2::10")
DNS = "203.0.113.53"
MINIMUM_MTU = 1280
TIMEOUT = 3.0
Variant = Literal["blackhole", "packet_too_big"]

SERVER_SCRIPT = """
import asyncio, datetime, sys
from pathlib import Path
from monitor.lab.dnsserver import DnsRecord, DnsServer
from monitor.lab.pki import IssuedCert
from monitor.lab.web import WebServer

host, v4, v6, dns, chain, key = sys.argv[1:7]
cert = IssuedCert(
    label="blackhole", cert_file=Path(chain), key_file=Path(key), issuer="", sans=(host,),
    not_after=datetime.datetime.now(datetime.UTC), sha256="", spki_sha256="",
)

async def main():
    records = {
        "example.com": [DnsRecord(rtype="SOA", value="ns.example.com. h.example.com. 1 1 1 1 1")],
        host: [DnsRecord(rtype="A", value=v4, ttl=5), DnsRecord(rtype="AAAA", value=v6, ttl=5)],
    }
    async with DnsServer(records, ["example.com"], hosts=(dns,), port=53):
        async with WebServer.bind(v4, cert, port=443, h3=False):
            async with WebServer.bind(v6, cert, port=443, h3=False):
                print("ready", flush=True)
                await asyncio.sleep(300)

asyncio.run(main())
"""


def sysctl(ns: Netns, *settings: str) -> None:
    subprocess.run(
        [*ns.exec_prefix(), "sysctl", "-qw", *settings], check=True, capture_output=True, timeout=30
    )


@contextmanager
def path(variant: Variant) -> Iterator[tuple[Netns, Netns]]:
    """client - router - server; yields (client, server)."""
    with (
        namespace("ds-cli") as cli,
        namespace("ds-rtr") as rtr,
        namespace("ds-srv") as srv,
    ):
        _, toward_client = veth(
            cli,
            [f"{CLIENT[0]}/24", f"{CLIENT[1]}/64"],
            rtr,
            [f"{ROUTER_CLIENT_SIDE[0]}/24", f"{ROUTER_CLIENT_SIDE[1]}/64"],
        )
        _, server_dev = veth(
            rtr,
            [f"{ROUTER_SERVER_SIDE[0]}/24", f"{ROUTER_SERVER_SIDE[1]}/64"],
            srv,
            [f"{SERVER[0]}/24", f"{SERVER[1]}/64", f"{DNS}/24"],
        )
        for ns, gateways in ((cli, ROUTER_CLIENT_SIDE), (srv, ROUTER_SERVER_SIDE)):
            ip("route", "add", "default", "via", gateways[0], netns=ns.name)
            ip("-6", "route", "add", "default", "via", gateways[1], netns=ns.name)
        sysctl(rtr, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        # One segment per packet from the server, as on a wire: a multi-segment GSO packet is
        # longer than 1280 bytes as a whole even when each of its segments would fit.
        ip("link", "set", server_dev, "gso_max_segs", "1", netns=srv.name)
        if variant == "blackhole":
            nft(
                rtr,
                "table inet blackhole {\n  chain forward {\n"
                "    type filter hook forward priority 0;\n"
                f"    meta nfproto ipv6 meta length > {MINIMUM_MTU} drop\n  }}\n}}\n",
            )
        else:
            # A smaller link after the router: it answers full-size packets with Packet Too
            # Big (IPv6) or fragmentation needed (IPv4), and the server's kernel adapts.
            ip("link", "set", toward_client, "mtu", str(MINIMUM_MTU), netns=rtr.name)
        yield cli, srv


def long_chain(folder: Path) -> tuple[Path, Path, Path, int]:
    """Root, two intermediates and a leaf, all RSA: (CA file, chain file, key file, bytes of
    the chain the server sends)."""
    rsa = trustme.KeyType.RSA
    root = trustme.CA(key_type=rsa)
    leaf = root.create_child_ca(key_type=rsa).create_child_ca(key_type=rsa)
    cert = leaf.issue_cert(HOST, key_type=rsa)
    ca, chain, key = folder / "ca.pem", folder / "chain.pem", folder / "key.pem"
    root.cert_pem.write_to_path(str(ca))
    chain.write_bytes(b"".join(p.bytes() for p in cert.cert_chain_pems))
    cert.private_key_pem.write_to_path(str(key))
    size = sum(
        len(x509.load_pem_x509_certificate(p.bytes()).public_bytes(Encoding.DER))
        for p in cert.cert_chain_pems
    )
    return ca, chain, key, size


def config(folder: Path, ca: Path) -> Path:
    doc = {
        "vantage": "pmtu-lab",
        "timeout": f"{TIMEOUT:g}s",
        "resolver": {"nameservers": [DNS]},
        "tls": {"ca_file": str(ca)},
        # Learning the path MTU costs time once: ICMPv6 errors are rate limited (1 per second
        # per destination), so of two IPv6 connections meeting the small link together, one
        # gets the Packet Too Big and the other waits a retransmission timeout (~200 ms)
        # first. This test is about failing or not, so no latency verdict for that.
        "parity": {"slower_margin": "1s"},
        "targets": [
            {
                "name": "blackhole",
                "service": "alb",
                "region": "us-east-1",
                "host": HOST,
                "probes": ["dns", "icmp", "tcp", "tls", "http2", "race"],
                "icmp": {"sizes": [MINIMUM_MTU, 1500]},
            }
        ],
    }
    out = folder / "pmtu.yml"
    out.write_text(yaml.safe_dump(doc))
    return out


def wait_ready(proc: subprocess.Popen[str], seconds: float) -> None:
    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout=seconds):
            proc.kill()
            _, err = proc.communicate(timeout=10)
            pytest.fail(f"the server was not ready within {seconds:g} s: {err}")
    line = proc.stdout.readline().strip()
    if line != "ready":
        proc.kill()
        _, err = proc.communicate(timeout=10)
        pytest.fail(f"the server failed to start: {line!r} {err}")


def probe_run(variant: Variant, tmp: Path) -> tuple[int, dict[str, Any]]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    ca, chain, key, size = long_chain(tmp)
    assert size > 1440, "the chain must need more than one full-size segment"
    cfg = config(tmp, ca)
    with path(variant) as (cli, srv):
        files = [str(chain), str(key)]
        server = subprocess.Popen(
            [*srv.exec_prefix(), sys.executable, "-c", SERVER_SCRIPT, HOST, *SERVER, DNS, *files],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            wait_ready(server, 30)
            # A fresh namespace's first packet to a new neighbour can be lost while the path
            # sets up (a SYN retransmitted after 1 s reads as ipv6_slower): warm it first.
            warm = (
                "import socket, sys\n"
                "for a in sys.argv[1:]: socket.create_connection((a, 443), 5).close()"
            )
            subprocess.run(
                [*cli.exec_prefix(), sys.executable, "-c", warm, *SERVER],
                capture_output=True,
                timeout=30,
                check=False,
            )
            t0 = time.monotonic()
            args = ["--config", str(cfg), "--format", "json", "--samples", "1"]
            run = subprocess.run(
                [*cli.exec_prefix(), sys.executable, "-m", "monitor.cli", "run", *args],
                capture_output=True,
                text=True,
                timeout=60,
                env=env,
                check=False,
            )
            elapsed = time.monotonic() - t0
        finally:
            server.kill()
            server.communicate(timeout=10)
    assert run.stdout, run.stderr
    # Every probe is bounded by its timeout (the race and resolution too): a round is quick.
    assert elapsed < 6 * TIMEOUT + 10, elapsed
    return run.returncode, json.loads(run.stdout)


def by_probe(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(r["probe"], r["family"]): r for r in doc["results"]}


@pytest.mark.netns
def test_blackhole_is_named_pmtu_blackhole(tmp_path: Path) -> None:
    rc, doc = probe_run("blackhole", tmp_path)
    verdicts = {p["probe"]: p["verdict"] for p in doc["parity"]}
    assert verdicts == {
        "dns": "ok",
        "icmp": "ok",  # a smaller IPv6 path MTU is a normal difference
        "tcp": "ok",  # the handshake's packets are small: it gets through
        "tls": "ipv6_failed",
        "http2": "ipv6_failed",
    }, doc["parity"]
    assert rc == 1
    results = by_probe(doc)
    for kind in ("tls", "http2"):
        v6, v4 = results[(kind, "ipv6")], results[(kind, "ipv4")]
        assert v4["success"], v4
        assert v6["error"]["kind"] == "pmtu_blackhole", v6
        message = v6["error"]["message"]
        # The MSS that worked, and the default one (1500-byte link: 1440) that did not.
        assert "announcing MSS 1220, while MSS 1440 made no progress twice" in message, message
        assert TIMEOUT / 2 <= v6["duration_seconds"] < TIMEOUT, v6
    icmp = {f: results[("icmp", f)]["details"] for f in ("ipv4", "ipv6")}
    if results[("icmp", "ipv4")]["success"]:  # ICMP permitted (root: a raw socket)
        assert icmp["ipv4"]["path_mtu_bytes"] == 1500
        assert icmp["ipv6"]["path_mtu_bytes"] == MINIMUM_MTU
        assert icmp["ipv6"]["sizes_unanswered"] == [1500]
        icmp_parity = next(p for p in doc["parity"] if p["probe"] == "icmp")
        assert [d["field"] for d in icmp_parity["differences"]] == ["path_mtu_bytes"]
    # A real client: IPv6 wins the TCP race, then its TLS handshake hangs.
    [race] = [r for r in doc["results"] if r["probe"] == "race"]
    assert race["family"] == race["details"]["winner_family"] == "ipv6"
    assert race["details"]["ipv6_penalty_seconds"] == 0
    assert race["error"]["kind"] == "timeout" and race["error"]["message"].startswith(
        "winner's TLS"
    )


@pytest.mark.netns
def test_with_packet_too_big_the_kernel_learns_and_all_is_ok(tmp_path: Path) -> None:
    rc, doc = probe_run("packet_too_big", tmp_path)
    verdicts = {p["probe"]: p["verdict"] for p in doc["parity"]}
    assert verdicts == dict.fromkeys(("dns", "icmp", "tcp", "tls", "http2"), "ok"), doc["parity"]
    assert rc == 0
    results = by_probe(doc)
    assert all(r["success"] for r in results.values()), results
    if results[("icmp", "ipv6")]["details"].get("path_mtu_bytes") is not None:
        assert results[("icmp", "ipv6")]["details"]["path_mtu_bytes"] == MINIMUM_MTU
    [race] = [r for r in doc["results"] if r["probe"] == "race"]
    assert race["details"]["winner_family"] == "ipv6" and race["error"] is None
