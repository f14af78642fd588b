"""The resolver probe: a recursive resolver asked one name's A and AAAA over UDP and over TCP.

A resolver target lists resolvers (`resolvers`, default the vantage's own name servers); each
family asks the addresses of its own family (the handler dials each one), so a resolver
listed by its IPv6 address is judged against its IPv4 siblings. `listed` is the family's
"resolution" of such a target: its addresses, no lookup.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from probes import dnsquery, dnswire
from probes.base import ErrorKind, Family, Outcome, ProbeError, ProbeRequest, Resolution, Target
from probes.details import ResolverAnswer
from probes.dnsquery import rcode_kind
from probes.errors import error
from probes.kinds import NORMAL, NOT, SIG, Compared, Kind, register
from probes.resolve import ip_family

_QUESTIONS = ((dnswire.A, False), (dnswire.AAAA, False), (dnswire.A, True), (dnswire.AAAA, True))
_TYPES = {dnswire.A: "A", dnswire.AAAA: "AAAA"}
"""(type, over TCP) of each question, asked together."""


def listed(target: Target, family: Family, default: Sequence[str]) -> Resolution:
    """The addresses of `family` among the target's resolvers (`default` when it lists none)."""
    chosen = target.resolvers or tuple(default)
    addresses = tuple(a for a in chosen if ip_family(a) == family)
    if addresses:
        return Resolution(family=family, addresses=addresses)
    return Resolution(
        family=family,
        error=error(ErrorKind.DNS_NO_ADDRESS, f"no {family} resolver listed"),
    )


def _records(message: dnswire.Message, rdtype: int) -> tuple[str, ...]:
    return tuple(sorted(str(r.value) for r in message.answer if r.rtype == rdtype))


async def probe(req: ProbeRequest) -> Outcome:
    name = req.target.host.rstrip(".") + "."

    async def one(rdtype: int, tcp: bool) -> dnsquery.Reply | ProbeError:
        query = dnswire.query(name, rdtype, payload=None)  # RD set: the resolver's recursion
        return await dnsquery.ask_target(req, query, timeout=req.timeout * 0.9, tcp=tcp)

    answers = await asyncio.gather(*(one(t, tcp) for t, tcp in _QUESTIONS))
    failures: list[tuple[str, bool, ProbeError]] = []
    replies: list[dnsquery.Reply] = []
    for (rdtype, tcp), got in zip(_QUESTIONS, answers, strict=True):
        what = f"{_TYPES[rdtype]} over {'tcp' if tcp else 'udp'}"
        if isinstance(got, dnsquery.Reply):
            replies.append(got)
            rcode = dnswire.rcode_text(got.message.rcode)
            if rcode != "NOERROR":
                failure = error(rcode_kind(got.message.rcode), f"{name} {what}: {rcode}")
                failures.append((what, tcp, failure))
        else:
            failures.append((what, tcp, got))
    a_udp, aaaa_udp = answers[0], answers[1]
    details = ResolverAnswer(
        name=name,
        rcode=dnswire.rcode_text(a_udp.message.rcode) if isinstance(a_udp, dnsquery.Reply) else "",
        a_records=_records(a_udp.message, dnswire.A) if isinstance(a_udp, dnsquery.Reply) else (),
        aaaa_records=_records(aaaa_udp.message, dnswire.AAAA)
        if isinstance(aaaa_udp, dnsquery.Reply)
        else (),
        recursion_available=bool(replies) and all(r.message.flags & dnswire.RA for r in replies),
        failed=tuple(f"{what}: {err.kind}" for what, _, err in failures),
    )
    udp_seconds = [r.seconds for r in replies if not r.tcp]
    tcp_seconds = [r.seconds for r in replies if r.tcp]
    phases = {
        **({"udp": max(udp_seconds)} if udp_seconds else {}),
        **({"tcp": max(tcp_seconds)} if tcp_seconds else {}),
    }
    duration = max(udp_seconds) if udp_seconds else None
    if not failures:
        return Outcome(success=True, phases=phases, details=details, duration=duration)
    udp_failed = [f for f in failures if not f[1]]
    if not udp_failed:  # only TCP fails: a resolver that cannot take a truncated answer's retry
        what, _, err = failures[0]
        failure = error(
            ErrorKind.DNS_TCP_FAILED,
            f"{what} fails ({err.kind}: {err.message}) while UDP is answered",
            phase="tcp",
        )
    else:
        what, _, err = udp_failed[0]
        failure = error(err.kind, f"{what}: {err.message}", phase="udp")
    return Outcome(success=False, phases=phases, error=failure, details=details)


KIND = register(
    Kind(
        name="resolver",
        probe=probe,
        summary="A recursive resolver asked one name's A and AAAA over UDP and TCP, per family",
        details=(ResolverAnswer,),
        compared={
            ResolverAnswer: (
                Compared[ResolverAnswer]("rcode", lambda d: d.rcode, SIG),
                Compared[ResolverAnswer](
                    "recursion_available", lambda d: d.recursion_available, SIG
                ),
                Compared[ResolverAnswer]("a_records", lambda d: d.a_records, NORMAL),
                Compared[ResolverAnswer]("aaaa_records", lambda d: d.aaaa_records, NORMAL),
                Compared[ResolverAnswer]("name", lambda d: d.name, NOT),
                Compared[ResolverAnswer]("failed", lambda d: d.failed, NOT),
            ),
        },
        phases=("udp", "tcp"),
        default=False,
        per_address=True,
    )
)
