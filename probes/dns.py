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
    return soa_outcome(zone, reply)


SOA_ROWS = (
    Compared[SoaAnswer]("authoritative", lambda d: d.authoritative, SIG),
    Compared[SoaAnswer]("serial", lambda d: d.serial, NORMAL),  # zone transfer in progress
    Compared[SoaAnswer]("rcode", lambda d: d.rcode, NOT),
    Compared[SoaAnswer]("zone", lambda d: d.zone, NOT),
    Compared[SoaAnswer]("transport", lambda d: d.transport, NOT),
    Compared[SoaAnswer]("size_bytes", lambda d: d.size_bytes, NOT),
)
"""What parity compares in a name server's SOA answer (the dns probe's, and dns_tcp's)."""


def soa_outcome(zone: str, reply: dnsquery.Reply, how: str = "") -> Outcome:
    """A name server's reply to the zone's SOA judged: NOERROR with an authoritative SOA, else
    the rcode's error kind or dns_bad_response (`how` names the transport in messages)."""
    response = reply.message
    rcode = dnswire.rcode_text(response.rcode)
    soa = next((rr for rr in response.answer if rr.rtype == dnswire.SOA), None)
    details = SoaAnswer(
        rcode=rcode,
        zone=zone,
        authoritative=response.authoritative,
        serial=soa.value if soa and isinstance(soa.value, int) else None,
        transport="tcp" if reply.tcp else "udp",
        size_bytes=reply.size,
    )
    failure = None
    if rcode != "NOERROR":
        failure = error(dnsquery.rcode_kind(response.rcode), f"SOA {zone}{how}: {rcode}")
    elif soa is None or not details.authoritative:
        failure = error(ErrorKind.DNS_BAD_RESPONSE, f"SOA {zone}{how}: no authoritative answer")
    return Outcome(
        success=failure is None,
        error=failure,
        phases={"query": reply.seconds},
        details=details,
        duration=reply.seconds,
    )


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
            SoaAnswer: SOA_ROWS,
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
