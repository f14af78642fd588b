"""The dns_tcp probe of a name-server target: the zone's SOA over TCP only, per family.

A resolver retries over TCP when an answer is truncated, and TCP 53 is filtered more often over
IPv6 than over IPv4. When TCP fails, the same SOA over UDP is asked right then (a cost only on
failure): answered, the failure is `dns_tcp_failed`; not, it stays what TCP gave.
"""

from __future__ import annotations

from probes import dnsquery
from probes.base import ErrorKind, Outcome, ProbeError, ProbeRequest
from probes.details import SoaAnswer
from probes.dns import soa_outcome, soa_query
from probes.errors import error
from probes.kinds import Kind, register

FIRST_SHARE = 0.5
"""The share of the timeout the TCP question may take; the rest is for the UDP check."""


async def probe(req: ProbeRequest) -> Outcome:
    zone = req.target.zone or ""
    got = await dnsquery.ask_target(
        req, soa_query(zone), timeout=req.timeout * FIRST_SHARE, tcp=True
    )
    if isinstance(got, ProbeError):
        return Outcome(success=False, error=await _why(req, got))
    return soa_outcome(zone, got, " over TCP")


async def _why(req: ProbeRequest, tcp_error: ProbeError) -> ProbeError:
    """`dns_tcp_failed` when the SOA over UDP is answered now; else TCP's own error."""
    udp = await dnsquery.ask_target(
        req, soa_query(req.target.zone or ""), timeout=req.timeout * (1 - FIRST_SHARE) * 0.9
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
        details=(SoaAnswer,),  # compared as the dns probe declares it
        phases=("query",),
        default=False,
        per_address=False,
    )
)
