"""The dns_tcp probe of a name-server target: the zone's SOA over TCP only, per family.

A resolver retries over TCP when an answer is truncated, and TCP 53 is filtered more often over
IPv6 than over IPv4. When TCP fails, the same SOA over UDP is asked right then (a cost only on
failure): answered, the failure is `dns_tcp_failed`; not, it stays what TCP gave.
"""

from __future__ import annotations

from probes import dnsquery, dnswire
from probes.base import ErrorKind, Outcome, ProbeError, ProbeRequest
from probes.details import SoaOverTcp
from probes.dns import soa_query
from probes.dnsquery import rcode_kind
from probes.errors import error
from probes.kinds import NORMAL, NOT, SIG, Compared, Cost, Kind, register

FIRST_SHARE = 0.5
"""The share of the timeout the TCP question may take; the rest is for the UDP check."""


async def probe(req: ProbeRequest) -> Outcome:
    zone = req.target.zone or ""
    source = req.env.source_addresses.get(req.family)
    port = req.target.port
    got = await dnsquery.ask(
        soa_query(zone),
        req.address,
        port,
        timeout=req.timeout * FIRST_SHARE,
        source=source,
        tcp=True,
    )
    if isinstance(got, ProbeError):
        return Outcome(success=False, error=await _why(req, got))
    response = got.message
    rcode = dnswire.rcode_text(response.rcode)
    soa = next((rr for rr in response.answer if rr.rtype == dnswire.SOA), None)
    details = SoaOverTcp(
        rcode=rcode,
        zone=zone,
        authoritative=response.authoritative,
        serial=soa.value if soa and isinstance(soa.value, int) else None,
        size_bytes=got.size,
    )
    phases = {"query": got.seconds}
    failure: ProbeError | None = None
    if rcode != "NOERROR":
        failure = error(rcode_kind(response.rcode), f"SOA {zone} over TCP: {rcode}")
    elif soa is None or not details.authoritative:
        failure = error(ErrorKind.DNS_BAD_RESPONSE, f"SOA {zone} over TCP: no authoritative answer")
    return Outcome(
        success=failure is None,
        error=failure,
        phases=phases,
        details=details,
        duration=got.seconds,
    )


async def _why(req: ProbeRequest, tcp_error: ProbeError) -> ProbeError:
    """`dns_tcp_failed` when the SOA over UDP is answered now; else TCP's own error."""
    udp = await dnsquery.ask(
        soa_query(req.target.zone or ""),
        req.address,
        req.target.port,
        timeout=req.timeout * (1 - FIRST_SHARE) * 0.9,
        source=req.env.source_addresses.get(req.family),
    )
    if isinstance(udp, ProbeError):
        return tcp_error
    return error(
        ErrorKind.DNS_TCP_FAILED,
        f"TCP {req.target.port} fails ({tcp_error.kind}: {tcp_error.message}) "
        "while the same SOA over UDP is answered",
        phase="query",
    )


KIND = register(
    Kind(
        name="dns_tcp",
        probe=probe,
        summary="A name server's SOA over TCP only (what a resolver does after a truncation)",
        details=(SoaOverTcp,),
        compared={
            SoaOverTcp: (
                Compared[SoaOverTcp]("authoritative", lambda d: d.authoritative, SIG),
                Compared[SoaOverTcp]("serial", lambda d: d.serial, NORMAL),
                Compared[SoaOverTcp]("rcode", lambda d: d.rcode, NOT),
                Compared[SoaOverTcp]("zone", lambda d: d.zone, NOT),
                Compared[SoaOverTcp]("size_bytes", lambda d: d.size_bytes, NOT),
            ),
        },
        phases=("query",),
        transport=True,
        cost=Cost.LIGHT,
        sampled=False,
        default=False,
        per_address=False,
    )
)
