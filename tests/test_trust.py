"""Trust, not intermediates: the tls probe reads the chain OpenSSL verified, and parity compares
the root and the issuing organisation, not which intermediate signed (ACM rotates them).
Real TLS servers on 127.0.0.1 and ::1 (one port number), with chains made by trustme."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import trustme

from monitor.engine.check import check_target
from monitor.engine.parity import Parity, Thresholds, Verdict, judge
from monitor.engine.vantage import VantageCheck
from monitor.lab.ports import SocketSpec, bind_same_port
from probes.base import Family, ProbeEnv, ProbeResult, Resolution, Target
from probes.details import TlsHandshake

HOST = "dualstack.trust.us-east-1.elb.amazonaws.com"
TH = Thresholds()


@contextlib.asynccontextmanager
async def two_servers(v4: trustme.LeafCert, v6: trustme.LeafCert) -> AsyncIterator[int]:
    """TLS on 127.0.0.1 with `v4`'s chain and on ::1 with `v6`'s, on one port number."""
    port, socks = bind_same_port(
        [
            SocketSpec(host="127.0.0.1", kind=socket.SOCK_STREAM),
            SocketSpec(host="::1", kind=socket.SOCK_STREAM),
        ]
    )
    servers = []
    try:
        for sock, leaf in zip(socks, (v4, v6), strict=True):
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            leaf.configure_cert(ctx)  # the leaf and its intermediate: the chain a server sends
            sock.listen(16)
            servers.append(await asyncio.start_server(lambda r, w: w.close(), sock=sock, ssl=ctx))
        yield port
    finally:
        for server in servers:
            server.close()
            await server.wait_closed()
        for sock in socks:
            sock.close()


async def probe_both(port: int, cafile: Path) -> tuple[Parity, dict[str, ProbeResult]]:
    target = Target(name="t", service="alb", region="us-east-1", host=HOST, port=port)
    resolutions: dict[Family, Resolution] = {
        "ipv4": Resolution(family="ipv4", addresses=("127.0.0.1",)),
        "ipv6": Resolution(family="ipv6", addresses=("::1",)),
    }
    env = ProbeEnv(ssl_cafile=str(cafile))
    results = await check_target(
        target, ["tls"], ("ipv4", "ipv6"), resolutions, env, None, vantage=VantageCheck(ipv6=True)
    )
    by: dict[str, ProbeResult] = {r.family: r for r in results}
    assert all(r.success for r in results), [r.error for r in results]
    return judge(target, "tls", by["ipv4"], by["ipv6"], thresholds=TH), by


async def test_two_intermediates_of_one_root_is_ok(tmp_path: Path) -> None:
    root = trustme.CA(organization_name="Lab Root Org")
    m02, m03 = root.create_child_ca(), root.create_child_ca()
    cafile = tmp_path / "root.pem"
    root.cert_pem.write_to_path(str(cafile))
    async with two_servers(m02.issue_cert(HOST), m03.issue_cert(HOST)) as port:
        parity, by = await probe_both(port, cafile)
    assert parity.verdict is Verdict.OK, parity
    fields = {d.field: d for d in parity.differences}
    assert not fields["certificate.intermediate"].significant
    assert "certificate.trust_anchor" not in fields
    for r in by.values():
        assert isinstance(r.details, TlsHandshake) and r.details.certificate is not None
        cert = r.details.certificate
        assert cert.trust_anchor is not None and "Lab Root Org" in cert.trust_anchor
        assert len(cert.intermediates) == 1 and cert.intermediates[0] == cert.issuer


async def test_chains_to_different_roots_is_a_mismatch(tmp_path: Path) -> None:
    root_a = trustme.CA(organization_name="Lab Root Org")
    root_b = trustme.CA(organization_name="Lab Root Org")  # same organisation, another root
    cafile = tmp_path / "roots.pem"
    cafile.write_bytes(root_a.cert_pem.bytes() + root_b.cert_pem.bytes())
    v4 = root_a.create_child_ca().issue_cert(HOST)
    v6 = root_b.create_child_ca().issue_cert(HOST)
    async with two_servers(v4, v6) as port:
        parity, _ = await probe_both(port, cafile)
    assert parity.verdict is Verdict.MISMATCH, parity
    significant = [d.field for d in parity.differences if d.significant]
    assert significant == ["certificate.trust_anchor"]
