"""The dns probe, in its two meanings (documented in docs/probes.md):

- host target: the name's A (family ipv4) and AAAA (family ipv6) answer through the resolver;
- name-server target (`zone` set): the zone's SOA asked of the server itself over its IPv4 and
  its IPv6 address, so "family" is the transport (Route 53's "queries over IPv6").
"""

from __future__ import annotations

from probes import dnsquery, dnswire
from probes.base import ErrorKind, Outcome, ProbeRequest, Resolution
from probes.details import DnsAnswer, SoaAnswer
from probes.errors import classify, error
from probes.kinds import NORMAL, NOT, SIG, Compared, Cost, Kind, KindMetric, register


def _from_resolution(res: Resolution) -> Outcome:
    details = DnsAnswer(
        rcode=res.rcode,
        records=res.addresses,
        ttl=res.ttl,
        cname_chain=res.cname_chain,
        nameserver=res.nameserver,
        nat64_synthesized=res.nat64_synthesized,
        not_native=res.not_native,
    )
    return Outcome(
        success=res.error is None and bool(res.addresses),
        error=res.error,
        phases={"query": res.seconds},
        details=details,
        duration=res.seconds,
    )


def soa_query(zone: str) -> dnswire.Query:
    """The zone's SOA, asked of the authority itself (no recursion wanted, no EDNS)."""
    return dnswire.query(zone, dnswire.SOA, rd=False, payload=None)


async def _ask_soa(req: ProbeRequest) -> Outcome:
    zone = req.target.zone or ""
    clock = req.env.clock
    try:
        query = soa_query(zone)
    except ValueError as exc:
        return Outcome(success=False, error=error(ErrorKind.DNS_BAD_RESPONSE, str(exc)))
    source = req.env.source_addresses.get(req.family)
    t0 = clock()
    try:
        # strict: a name server is judged by what it sends, so a reply that is not one to
        # this query is dns_bad_response rather than ignored
        reply = await dnsquery.exchange(
            query, req.address, req.target.port, timeout=req.timeout, source=source, strict=True
        )
    except TimeoutError:
        return Outcome(success=False, error=error(ErrorKind.TIMEOUT, "no DNS answer"))
    except OSError as exc:
        return Outcome(success=False, error=classify(exc), phases={"query": clock() - t0})
    except dnswire.BadMessage as exc:
        return Outcome(success=False, error=error(ErrorKind.DNS_BAD_RESPONSE, str(exc)))
    response = reply.message
    seconds = reply.seconds
    rcode = dnswire.rcode_text(response.rcode)
    soa = next((rr for rr in response.answer if rr.rtype == dnswire.SOA), None)
    details = SoaAnswer(
        rcode=rcode,
        zone=zone,
        authoritative=response.authoritative,
        serial=soa.value if soa and isinstance(soa.value, int) else None,
        transport="tcp" if reply.tcp else "udp",
    )
    phases = {"query": seconds}
    if rcode != "NOERROR":
        kind = {"REFUSED": ErrorKind.DNS_REFUSED, "NXDOMAIN": ErrorKind.DNS_NXDOMAIN}.get(
            rcode, ErrorKind.DNS_SERVFAIL
        )
        return Outcome(
            success=False,
            error=error(kind, f"SOA {zone}: {rcode}"),
            phases=phases,
            details=details,
            duration=seconds,
        )
    if soa is None or not details.authoritative:
        return Outcome(
            success=False,
            error=error(ErrorKind.DNS_BAD_RESPONSE, f"SOA {zone}: no authoritative answer"),
            phases=phases,
            details=details,
            duration=seconds,
        )
    return Outcome(success=True, phases=phases, details=details, duration=seconds)


async def probe(req: ProbeRequest) -> Outcome:
    if req.target.zone:
        return await _ask_soa(req)
    if req.resolution is None:
        return Outcome(success=False, error=error(ErrorKind.INTERNAL_ERROR, "not resolved"))
    return _from_resolution(req.resolution)


KIND = register(
    Kind(
        name="dns",
        probe=probe,
        summary="A/AAAA lookups of a host, or a name server's SOA, over each family",
        details=(DnsAnswer, SoaAnswer),
        compared={
            DnsAnswer: (
                Compared[DnsAnswer]("cname_chain", lambda d: d.cname_chain, NORMAL),
                Compared[DnsAnswer]("records", lambda d: d.records, NOT),  # A against AAAA
                Compared[DnsAnswer]("ttl", lambda d: d.ttl, NOT),
                Compared[DnsAnswer]("rcode", lambda d: d.rcode, NOT),  # both answered to get here
                Compared[DnsAnswer]("nameserver", lambda d: d.nameserver, NOT),
                Compared[DnsAnswer]("nat64_synthesized", lambda d: d.nat64_synthesized, NOT),
                Compared[DnsAnswer]("not_native", lambda d: d.not_native, NOT),  # judged as missing
            ),
            SoaAnswer: (
                Compared[SoaAnswer]("authoritative", lambda d: d.authoritative, SIG),
                Compared[SoaAnswer](
                    "serial", lambda d: d.serial, NORMAL
                ),  # zone transfer in progress
                Compared[SoaAnswer]("rcode", lambda d: d.rcode, NOT),
                Compared[SoaAnswer]("zone", lambda d: d.zone, NOT),
                Compared[SoaAnswer]("transport", lambda d: d.transport, NOT),
            ),
        },
        phases=("query",),
        transport=False,
        cost=Cost.LIGHT,
        sampled=False,
        per_address=False,
        metrics=(
            KindMetric(
                name="dualstack_dns_records",
                help="Addresses in the last A (ipv4) or AAAA (ipv6) answer.",
                value=lambda r: (
                    len(r.details.records) if isinstance(r.details, DnsAnswer) else None
                ),
            ),
        ),
    )
)
