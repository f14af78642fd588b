"""NAT64 prefix discovery (RFC 7050) and the flag on synthesized AAAA records.

`nat64_prefixes_from` as a table; then the Resolver against the lab's real DNS server on
loopback, serving `ipv4only.arpa` the way a DNS64 resolver answers it. Addresses are from the
documentation prefixes; nothing connects to them."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator

import pytest
from lab.dnscount import CountingServer

from monitor.lab.dnsserver import DnsRecord, DnsServer
from probes import handler
from probes.base import ErrorKind, ProbeEnv, Target
from probes.details import DnsAnswer
from probes.resolve import WELL_KNOWN_NAT64, nat64_prefixes_from

LEARNT = ipaddress.IPv6Network("2001:db8:64::/96")
OTHER = ipaddress.IPv6Network("2001:db8:46::/96")


@pytest.mark.parametrize(
    ("addresses", "expected"),
    [
        pytest.param([], (), id="empty"),
        pytest.param(["64:ff9b::c000:aa"], (WELL_KNOWN_NAT64,), id="well-known-170"),
        pytest.param(["2001:db8:64::c000:ab"], (LEARNT,), id="network-specific-171"),
        pytest.param(
            ["2001:db8:64::c000:aa", "2001:db8:64::c000:ab"], (LEARNT,), id="duplicates-once"
        ),
        pytest.param(
            ["2001:db8:64::c000:aa", "2001:db8:46::c000:aa"], (LEARNT, OTHER), id="two-in-order"
        ),
        pytest.param(
            ["2001:db8:1::1", "2001:db8:64::c000:aa", "2001:db8:64::c000:ac"],
            (LEARNT,),
            id="others-ignored",
        ),
        # 192.0.0.170 outside the low 32 bits, and a plain address: no /96 found.
        pytest.param(["2001:db8:c000:aa::1", "2001:db8::1"], (), id="none"),
    ],
)
def test_nat64_prefixes_from(
    addresses: list[str], expected: tuple[ipaddress.IPv6Network, ...]
) -> None:
    assert nat64_prefixes_from(addresses) == expected


# --- the Resolver learning the prefix from a real name server ---------------------------------

ZONE = "example.com"
Records = dict[str, list[DnsRecord]]
DNS64_RECORDS: Records = {
    # What a DNS64 resolver with prefix 2001:db8:64::/96 answers for ipv4only.arpa.
    "ipv4only.arpa": [
        DnsRecord(rtype="AAAA", value="2001:db8:64::c000:aa"),
        DnsRecord(rtype="AAAA", value="2001:db8:64::c000:ab"),
    ],
    # 203.0.113.7 behind the learnt prefix: synthesized.
    "synth.example.com": [DnsRecord(rtype="AAAA", value="2001:db8:64::cb00:7107")],
    # Behind the well-known prefix: synthesized too, learnt prefix or not.
    "wellknown.example.com": [DnsRecord(rtype="AAAA", value="64:ff9b::cb00:7107")],
    "native.example.com": [DnsRecord(rtype="AAAA", value="2001:db8:1::7")],
    # One native address among synthesized ones: the name has real IPv6.
    "mixed.example.com": [
        DnsRecord(rtype="AAAA", value="2001:db8:64::cb00:7107"),
        DnsRecord(rtype="AAAA", value="2001:db8:1::7"),
    ],
}


@pytest.fixture
async def dns64() -> AsyncIterator[CountingServer]:
    async with DnsServer(DNS64_RECORDS, (ZONE, "ipv4only.arpa")) as server:
        yield CountingServer(server)


@pytest.fixture
async def no_dns64() -> AsyncIterator[CountingServer]:
    """Serves example.com only: asked for ipv4only.arpa, it answers REFUSED."""
    records = {k: v for k, v in DNS64_RECORDS.items() if k.endswith(ZONE)}
    async with DnsServer(records, (ZONE,)) as server:
        yield CountingServer(server)


async def test_resolver_learns_the_prefix_from_ipv4only_arpa(dns64: CountingServer) -> None:
    resolver = dns64.resolver()
    assert await resolver.nat64_prefixes() == (WELL_KNOWN_NAT64, LEARNT)


async def test_without_dns64_only_the_well_known_prefix(no_dns64: CountingServer) -> None:
    resolver = no_dns64.resolver()
    assert await resolver.nat64_prefixes() == (WELL_KNOWN_NAT64,)
    assert ("ipv4only.arpa", "AAAA") in no_dns64.asked  # it did ask, and was refused


@pytest.mark.parametrize(
    ("host", "synthesized"),
    [
        pytest.param("synth.example.com", True, id="learnt-prefix"),
        pytest.param("wellknown.example.com", True, id="well-known-prefix"),
        pytest.param("native.example.com", False, id="native"),
        pytest.param("mixed.example.com", False, id="one-native-among-synthesized"),
    ],
)
async def test_synthesized_aaaa_is_flagged(
    dns64: CountingServer, host: str, synthesized: bool
) -> None:
    resolution = await dns64.resolver().resolve(host, "ipv6")
    assert resolution.addresses  # the answer itself is kept either way
    assert resolution.nat64_synthesized is synthesized
    if synthesized:
        assert resolution.error is not None
        assert resolution.error.kind is ErrorKind.DNS_NAT64_SYNTHESIZED
        assert resolution.addresses[0] in resolution.error.message
    else:
        assert resolution.error is None


async def test_the_learnt_prefix_matters(no_dns64: CountingServer) -> None:
    """Without ipv4only.arpa the same AAAA counts as native: the flag comes from learning."""
    resolution = await no_dns64.resolver().resolve("synth.example.com", "ipv6")
    assert resolution.addresses == ("2001:db8:64::cb00:7107",)
    assert resolution.nat64_synthesized is False
    assert resolution.error is None


async def test_ipv4only_arpa_is_asked_once_per_resolver(dns64: CountingServer) -> None:
    resolver = dns64.resolver()
    for host in ("synth.example.com", "native.example.com", "wellknown.example.com"):
        await resolver.resolve(host, "ipv6")
    await resolver.resolve("native.example.com", "ipv4")  # A: no NAT64 question at all
    assert dns64.asked.count(("ipv4only.arpa", "AAAA")) == 1


async def test_the_dns_probe_reports_the_synthesized_aaaa(dns64: CountingServer) -> None:
    target = Target(name="synth", service="unit", region="", host="synth.example.com")
    resolution = await dns64.resolver().resolve(target.host, "ipv6")
    result = await handler.run_probe("dns", target, "ipv6", resolution, ProbeEnv())
    assert not result.success
    assert result.error is not None
    assert result.error.kind is ErrorKind.DNS_NAT64_SYNTHESIZED
    assert isinstance(result.details, DnsAnswer)
    assert result.details.nat64_synthesized is True
    assert result.details.records == ("2001:db8:64::cb00:7107",)
