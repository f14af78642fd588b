"""ICMP / ICMPv6 echo to the target's address of one family, over probes/echo.py.

An unprivileged ICMP socket first (allowed by `net.ipv4.ping_group_range` on Linux), then a
raw socket (root or CAP_NET_RAW); with neither permitted it reports `icmp_not_permitted`.
Round trips run from the send to the kernel's stamp on the reply. With the target's
`icmp.sizes`, echoes of those sizes with fragmentation forbidden run beside the ping on a
socket of their own (probes/pmtu.py) and give the family's path MTU.
"""

from __future__ import annotations

import asyncio
import statistics

from probes.base import ErrorKind, Outcome, ProbeRequest
from probes.details import IcmpEcho
from probes.echo import OVERHEAD, PING_PAYLOAD, Echoes, EchoSocket, exchange, has_root
from probes.errors import classify, error
from probes.kinds import NORMAL, NOT, Compared, Kind, KindMetric, register
from probes.pmtu import SizeEchoes, echo_sizes

_has_root = has_root  # tests ask whether ICMP may be permitted here


async def probe(req: ProbeRequest) -> Outcome:
    if not req.target.icmp.sizes:
        return await _echo(req, None)
    sizes = asyncio.ensure_future(_sizes(req))
    try:
        return await _echo(req, sizes)
    finally:
        if not sizes.done():  # the ping failed first: its echoes say nothing then
            sizes.cancel()
            await asyncio.wait({sizes})


async def _sizes(req: ProbeRequest) -> SizeEchoes | None:
    """The path-MTU echoes, in the same share of the timeout as the ping (None: no socket)."""
    try:
        return await echo_sizes(
            req,
            req.target.icmp.sizes,
            budget=req.timeout * 0.9,
            rounds=req.target.icmp.count,
            spacing=req.env.icmp_interval,
        )
    except OSError:  # no ICMP socket allowed, or `source` unusable: the ping says which
        return None


async def _ping(req: ProbeRequest) -> Echoes:
    """`icmp.count` echoes `icmp_interval` apart; replies are awaited in nine tenths of the
    timeout, so lost echoes end as icmp_no_reply with the counts, not as a probe timeout."""
    source = req.env.source_addresses.get(req.family)
    with EchoSocket(req.family, req.address, source=source) as sock:
        return await exchange(
            sock,
            [PING_PAYLOAD + OVERHEAD[req.family]],
            rounds=req.target.icmp.count,
            spacing=req.env.icmp_interval,
            budget=req.timeout * 0.9,
            until_answered=False,
        )


async def _echo(req: ProbeRequest, sizes: asyncio.Future[SizeEchoes | None] | None) -> Outcome:
    try:
        echoes = await _ping(req)
    except PermissionError as exc:
        return Outcome(
            success=False,
            error=error(
                ErrorKind.ICMP_NOT_PERMITTED,
                "no ICMP socket allowed: run as root, grant CAP_NET_RAW, or widen "
                f"net.ipv4.ping_group_range ({exc})",
            ),
        )
    except OSError as exc:  # a `source` that cannot be bound, say
        return Outcome(success=False, error=error(ErrorKind.SOCKET_ERROR, exc.strerror or str(exc)))
    measured = await sizes if sizes is not None else None
    sent = len(echoes.sent)
    rtts = [e.seconds for e in echoes.sent if e.seconds is not None]
    mean = statistics.fmean(rtts) if rtts else 0.0
    details = IcmpEcho(
        sent=sent,
        received=len(rtts),
        loss_ratio=round(1 - len(rtts) / sent, 2) if sent else 0.0,
        rtt_min_seconds=min(rtts, default=0.0),
        rtt_avg_seconds=mean,
        rtt_max_seconds=max(rtts, default=0.0),
        path_mtu_bytes=max(measured.answered) if measured and measured.answered else None,
        sizes_answered=measured.answered if measured else (),
        sizes_unanswered=measured.unanswered if measured else (),
    )
    if sent == 0:  # no route, no source address, a local firewall
        why = classify(echoes.send_error) if echoes.send_error else None
        return Outcome(
            success=False,
            error=error(
                why.kind if why else ErrorKind.NETWORK_UNREACHABLE,
                f"no echo request could be sent ({why.message if why else 'none sent'})",
            ),
            details=details,
        )
    if not rtts:
        return Outcome(
            success=False,
            error=error(ErrorKind.ICMP_NO_REPLY, f"no echo reply to {sent} requests"),
            details=details,
        )
    return Outcome(success=True, phases={"rtt": mean}, details=details, duration=mean)


KIND = register(
    Kind(
        name="icmp",
        probe=probe,
        summary="ICMP/ICMPv6 echo of each address: loss and round-trip time, and the path MTU",
        details=(IcmpEcho,),
        compared={
            IcmpEcho: (  # latency is judged apart; loss fails the probe or not
                Compared[IcmpEcho](
                    "echo",
                    lambda d: None,
                    NOT,
                    (
                        "sent",
                        "received",
                        "loss_ratio",
                        "rtt_min_seconds",
                        "rtt_avg_seconds",
                        "rtt_max_seconds",
                    ),
                ),
                # Listed, never a mismatch: a tunnel on one family's path is common and works.
                Compared[IcmpEcho]("path_mtu_bytes", lambda d: d.path_mtu_bytes, NORMAL),
                Compared[IcmpEcho](
                    "sizes", lambda d: None, NOT, ("sizes_answered", "sizes_unanswered")
                ),
            ),
        },
        phases=("rtt",),
        sampled=True,
        metrics=(
            KindMetric(
                name="dualstack_path_mtu_bytes",
                help="The largest of the target's icmp.sizes (whole IP packets) echoed back over "
                "this family with fragmentation forbidden.",
                value=lambda r: (
                    r.details.path_mtu_bytes if isinstance(r.details, IcmpEcho) else None
                ),
                probe_label=False,
            ),
        ),
    )
)
