"""The dns_large probe of a name-server target: a large answer over UDP with EDNS, per family.

A DNSSEC-signed answer (the zone's DNSKEY with DO set, by default) is larger than the path MTU
and arrives in IP fragments, which many IPv6 networks drop (RFC 8900). When no answer comes in
half the timeout, the zone's small SOA over UDP and the same question over TCP are asked right
then (a cost only on failure): both answered, the failure is `dns_fragments_lost`.
"""

from __future__ import annotations

import asyncio

import dns.rdatatype

from probes import dnsquery, dnswire
from probes.base import ErrorKind, Outcome, ProbeError, ProbeRequest
from probes.details import LargeAnswer
from probes.dns import soa_query
from probes.dnsquery import rcode_kind
from probes.errors import error
from probes.kinds import NORMAL, NOT, SIG, Compared, Kind, register

FIRST_SHARE = 0.5
"""The share of the timeout the large answer may take; the rest is for the two checks."""


def large_query(req: ProbeRequest) -> dnswire.Query:
    """The large question, as a validating resolver asks it: EDNS with the target's buffer and
    DO set, no recursion wanted (the type's name was checked with the configuration)."""
    spec = req.target.dns
    name = spec.large_name or req.target.zone or ""
    rdtype = dns.rdatatype.from_text(spec.large_type)
    return dnswire.query(name, rdtype, rd=False, payload=spec.edns_buffer, do=True)


def _details(query: dnswire.Query, reply: dnsquery.Reply, buffer: int) -> LargeAnswer:
    return LargeAnswer(  # the reply's question is the query's: dnsquery checked it
        rcode=dnswire.rcode_text(reply.message.rcode),
        name=query.name,
        rdtype=dns.rdatatype.to_text(dns.rdatatype.RdataType(query.rtype)),
        records=len(reply.message.answer),
        size_bytes=reply.size,
        truncated=reply.truncated,
        edns_buffer=buffer,
        transport="tcp" if reply.tcp else "udp",
    )


async def probe(req: ProbeRequest) -> Outcome:
    query = large_query(req)
    got = await dnsquery.ask_target(req, query, timeout=req.timeout * FIRST_SHARE)
    if isinstance(got, ProbeError):
        if got.kind is not ErrorKind.TIMEOUT:
            return Outcome(success=False, error=got)
        return await _why_lost(req, query, got)
    details = _details(query, got, req.target.dns.edns_buffer)
    phases = {"query": got.seconds}
    failure = None
    if details.rcode != "NOERROR":
        failure = error(
            rcode_kind(got.message.rcode), f"{details.rdtype} {details.name}: {details.rcode}"
        )
    return Outcome(
        success=failure is None,
        error=failure,
        phases=phases,
        details=details,
        duration=got.seconds,
    )


async def _why_lost(req: ProbeRequest, query: dnswire.Query, lost: ProbeError) -> Outcome:
    """The small SOA over UDP and the large question over TCP, together: both answered, the
    large UDP answer was lost on the way (its fragments); else the timeout stands."""
    left = req.timeout * (1 - FIRST_SHARE) * 0.9
    small, over_tcp = await asyncio.gather(
        dnsquery.ask_target(req, soa_query(req.target.zone or ""), timeout=left),
        dnsquery.ask_target(req, query, timeout=left, tcp=True),
    )
    if isinstance(small, ProbeError) or isinstance(over_tcp, ProbeError):
        return Outcome(success=False, error=lost)
    details = _details(query, over_tcp, req.target.dns.edns_buffer)
    return Outcome(
        success=False,
        error=error(
            ErrorKind.DNS_FRAGMENTS_LOST,
            f"{details.rdtype} {details.name} with EDNS {details.edns_buffer}: no answer over UDP "
            f"while the small SOA over UDP and the same question over TCP ({details.size_bytes} "
            "bytes) are answered: the large answer's fragments are lost",
            phase="query",
        ),
        details=details,
    )


KIND = register(
    Kind(
        name="dns_large",
        probe=probe,
        summary="A name server's large answer (DNSKEY with DO) over UDP with EDNS",
        details=(LargeAnswer,),
        compared={
            LargeAnswer: (
                Compared[LargeAnswer]("truncated", lambda d: d.truncated, SIG),
                Compared[LargeAnswer]("records", lambda d: d.records, NORMAL),
                Compared[LargeAnswer]("size_bytes", lambda d: d.size_bytes, NORMAL),
                Compared[LargeAnswer]("rcode", lambda d: d.rcode, NOT),
                Compared[LargeAnswer]("name", lambda d: d.name, NOT),
                Compared[LargeAnswer]("rdtype", lambda d: d.rdtype, NOT),
                Compared[LargeAnswer]("edns_buffer", lambda d: d.edns_buffer, NOT),
                Compared[LargeAnswer]("transport", lambda d: d.transport, NOT),
            ),
        },
        phases=("query",),
        default=False,
        per_address=False,
    )
)
