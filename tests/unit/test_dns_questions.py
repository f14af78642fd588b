"""The name server's other questions (dns_tcp, dns_large) and the resolver probe, through the
shared handler against the lab's DNS server on loopback, with its faults: no TCP listener, or
UDP replies above a size never sent (large answers lost on the way, as fragments are)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import yaml

from monitor.config import load_config
from monitor.lab.dnsserver import DnsRecord, DnsServer, dnskey_records
from monitor.serve.vantage import Vantage
from probes import handler
from probes.base import DnsSpec, ErrorKind, Family, ProbeEnv, ProbeResult, Resolution, Target
from probes.details import LargeAnswer, ResolverAnswer, SoaAnswer

LOOPBACK: dict[Family, str] = {"ipv4": "127.0.0.1", "ipv6": "::1"}
ZONE = "example.com"
HOST = "www.example.com"
RECORDS = {
    ZONE: dnskey_records(),
    "small.example.com": [DnsRecord(rtype="TXT", value='"small"')],
    HOST: [
        DnsRecord(rtype="A", value="198.51.100.80"),
        DnsRecord(rtype="AAAA", value="2001:db8::80"),
    ],
}


def ns_target(kind: str, port: int, dns: DnsSpec | None = None, timeout: float = 2.0) -> Target:
    return Target(
        name="ns",
        service="route53",
        region="global",
        host="ns.example.com",
        port=port,
        probes=(kind,),
        timeout=timeout,
        zone=ZONE,
        dns=dns or DnsSpec(),
    )


def resolver_target(port: int) -> Target:
    return Target(
        name="res",
        service="custom",
        region="none",
        host=HOST,
        port=port,
        probes=("resolver",),
        timeout=2.0,
        resolvers=(),
    )


async def run(kind: str, target: Target, family: Family) -> ProbeResult:
    resolution = Resolution(family=family, addresses=(LOOPBACK[family],))
    return await handler.run_probe(kind, target, family, resolution, ProbeEnv())


def server(**kw: object) -> DnsServer:
    return DnsServer(RECORDS, [ZONE], recursive=True, **kw)  # type: ignore[arg-type]


FAMILIES: list[Family] = ["ipv4", "ipv6"]


@pytest.mark.parametrize("family", FAMILIES)
async def test_every_question_answered(family: Family) -> None:
    async with server() as srv:
        tcp = await run("dns_tcp", ns_target("dns_tcp", srv.port), family)
        large = await run("dns_large", ns_target("dns_large", srv.port), family)
    assert tcp.success, tcp.error
    assert isinstance(tcp.details, SoaAnswer) and tcp.details.transport == "tcp"
    assert tcp.details.authoritative and tcp.details.serial == 1 and tcp.details.size_bytes
    assert large.success, large.error
    assert isinstance(large.details, LargeAnswer)
    assert (large.details.rdtype, large.details.name) == ("DNSKEY", ZONE + ".")
    assert large.details.records == 4
    assert large.details.size_bytes > 2000  # more than a packet: fragments on a real path
    assert not large.details.truncated
    assert (large.details.edns_buffer, large.details.transport) == (4096, "udp")


async def test_a_large_answer_above_the_buffer_is_truncated_not_failed() -> None:
    async with server() as srv:
        small = ns_target("dns_large", srv.port, DnsSpec(edns_buffer=1232))
        result = await run("dns_large", small, "ipv6")
    assert result.success, result.error
    assert isinstance(result.details, LargeAnswer)
    assert result.details.truncated
    assert result.details.size_bytes <= 1232


async def test_the_large_question_may_be_any_name_and_type() -> None:
    async with server() as srv:
        spec = DnsSpec(large_name="small.example.com", large_type="TXT")
        result = await run("dns_large", ns_target("dns_large", srv.port, spec), "ipv4")
    assert result.success, result.error
    assert isinstance(result.details, LargeAnswer)
    assert (result.details.name, result.details.rdtype, result.details.records) == (
        "small.example.com.",
        "TXT",
        1,
    )


@pytest.mark.parametrize("family", FAMILIES)
async def test_dns_fragments_lost(family: Family) -> None:
    """UDP replies above 1400 bytes never arrive; the small SOA and TCP do."""
    async with server(udp_drop_above=1400) as srv:
        result = await run("dns_large", ns_target("dns_large", srv.port, timeout=1.0), family)
    assert result.error is not None and result.error.kind is ErrorKind.DNS_FRAGMENTS_LOST
    assert not result.success
    assert isinstance(result.details, LargeAnswer)
    assert result.details.transport == "tcp" and result.details.size_bytes > 2000
    assert 0.5 <= result.duration_seconds < 1.0


async def test_no_answer_at_all_is_a_timeout_not_lost_fragments() -> None:
    async with server(udp_drop_above=0, tcp=False) as srv:
        result = await run("dns_large", ns_target("dns_large", srv.port, timeout=0.5), "ipv4")
    assert result.error is not None and result.error.kind is ErrorKind.TIMEOUT, result.error


@pytest.mark.parametrize("family", FAMILIES)
async def test_dns_tcp_failed(family: Family) -> None:
    async with server(tcp=False) as srv:
        result = await run("dns_tcp", ns_target("dns_tcp", srv.port), family)
    assert result.error is not None and result.error.kind is ErrorKind.DNS_TCP_FAILED
    assert "connect_refused" in result.error.message
    assert result.error.phase == "query"


async def test_neither_tcp_nor_udp_is_the_transport_error() -> None:
    async with server(tcp=False, udp_drop_above=0) as srv:
        result = await run("dns_tcp", ns_target("dns_tcp", srv.port, timeout=0.5), "ipv4")
    assert result.error is not None and result.error.kind is ErrorKind.CONNECT_REFUSED


@pytest.mark.parametrize("family", FAMILIES)
async def test_resolver_answers(family: Family) -> None:
    async with server() as srv:
        result = await run("resolver", resolver_target(srv.port), family)
    assert result.success, result.error
    assert isinstance(result.details, ResolverAnswer)
    assert result.details.a_records == ("198.51.100.80",)
    assert result.details.aaaa_records == ("2001:db8::80",)
    assert result.details.recursion_available and result.details.rcode == "NOERROR"
    assert set(result.phases) == {"resolve", "udp", "tcp"}
    assert [a.address for a in result.addresses] == [LOOPBACK[family]]


async def test_resolver_without_tcp_is_dns_tcp_failed() -> None:
    async with server(tcp=False) as srv:
        result = await run("resolver", resolver_target(srv.port), "ipv6")
    assert result.error is not None and result.error.kind is ErrorKind.DNS_TCP_FAILED
    assert isinstance(result.details, ResolverAnswer)
    assert result.details.failed == (
        "A over tcp: connect_refused",
        "AAAA over tcp: connect_refused",
    )


async def test_resolver_not_answering_is_the_transport_error() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
        sock.bind(("::1", 0))
        port = int(sock.getsockname()[1])
    result = await run("resolver", resolver_target(port), "ipv6")
    assert result.error is not None and result.error.kind is ErrorKind.CONNECT_REFUSED
    assert result.error.phase == "udp"


async def test_serve_asks_a_resolver_targets_resolvers_by_default_the_vantages(
    tmp_path: Path,
) -> None:
    """`probe serve`'s job: the target's name is never looked up; with no `resolvers`, the
    vantage's own name servers are asked, on `resolver.port`."""
    async with server() as srv:
        path = tmp_path / "resolvers.yml"
        path.write_text(
            yaml.safe_dump(
                {
                    "vantage": "unit",
                    "resolver": {"nameservers": ["127.0.0.1", "::1"], "port": srv.port},
                    "targets": [{"name": "res", "host": HOST, "probes": ["resolver"]}],
                }
            )
        )
        cfg = load_config(path)
        [target] = cfg.targets
        assert (target.resolvers, target.port) == ((), srv.port)
        service = Vantage(cfg)
        await service.apply(cfg)
        await service.run_job(target, "resolver")
    latest = service.store.latest
    assert latest[("res", "resolver", "ipv4")].address == "127.0.0.1"
    assert latest[("res", "resolver", "ipv6")].address == "::1"
    assert service.store.parity[("res", "resolver")].verdict == "ok"
