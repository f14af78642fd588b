"""ICMP / ICMPv6 echo to the target's address of one family, via icmplib.

Tries an unprivileged ICMP socket first (allowed by `net.ipv4.ping_group_range` on Linux and by
default on macOS), then a raw socket; with neither permitted it reports `icmp_not_permitted`.
With the target's `icmp.sizes`, echoes of those sizes with fragmentation forbidden run beside
the ping on a socket of their own (probes/pmtu.py) and give the family's path MTU.
"""

from __future__ import annotations

import asyncio
import os

import icmplib

from probes.base import ErrorKind, Outcome, ProbeRequest
from probes.details import IcmpEcho
from probes.errors import classify, error
from probes.kinds import NORMAL, NOT, Compared, Cost, Kind, register
from probes.pmtu import SizeEchoes, echo_sizes


def _has_root() -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


async def _ping(req: ProbeRequest, privileged: bool) -> icmplib.Host:
    count = req.target.icmp.count
    # icmplib waits for each echo in turn: split the probe timeout (with a margin) between them,
    # so lost echoes end as icmp_no_reply with the counts rather than as a probe timeout.
    budget = req.timeout * 0.9 - (count - 1) * req.env.icmp_interval
    per_reply = max(0.05, budget / count)
    return await icmplib.async_ping(
        req.address,
        count=count,
        interval=req.env.icmp_interval,
        timeout=per_reply,
        source=req.env.source_addresses.get(req.family),
        family=6 if req.family == "ipv6" else 4,
        privileged=privileged,
    )


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


async def _echo(req: ProbeRequest, sizes: asyncio.Future[SizeEchoes | None] | None) -> Outcome:
    host = None
    last_denied: Exception | None = None
    for privileged in (False, True):
        if privileged and not _has_root():
            break
        try:
            host = await _ping(req, privileged)
            break
        except icmplib.SocketPermissionError as exc:
            last_denied = exc
        except icmplib.ICMPLibError as exc:
            return Outcome(success=False, error=error(ErrorKind.SOCKET_ERROR, str(exc)))
        except OSError as exc:
            return Outcome(success=False, error=classify(exc))
    if host is None:
        return Outcome(
            success=False,
            error=error(
                ErrorKind.ICMP_NOT_PERMITTED,
                "no ICMP socket allowed: run as root, grant CAP_NET_RAW, or widen "
                f"net.ipv4.ping_group_range ({last_denied})",
            ),
        )
    measured = await sizes if sizes is not None else None
    details = IcmpEcho(
        sent=host.packets_sent,
        received=host.packets_received,
        loss_ratio=host.packet_loss,
        rtt_min_seconds=host.min_rtt / 1000,
        rtt_avg_seconds=host.avg_rtt / 1000,
        rtt_max_seconds=host.max_rtt / 1000,
        path_mtu_bytes=max(measured.answered) if measured and measured.answered else None,
        sizes_answered=measured.answered if measured else (),
        sizes_unanswered=measured.unanswered if measured else (),
    )
    if host.packets_sent == 0:  # icmplib swallows send errors: no route, no source address
        return Outcome(
            success=False,
            error=error(ErrorKind.NETWORK_UNREACHABLE, "no echo request could be sent"),
            details=details,
        )
    if host.packets_received == 0:
        return Outcome(
            success=False,
            error=error(ErrorKind.ICMP_NO_REPLY, f"no echo reply to {host.packets_sent} requests"),
            details=details,
        )
    return Outcome(
        success=True,
        phases={"rtt": host.avg_rtt / 1000},
        details=details,
        duration=host.avg_rtt / 1000,
    )


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
        transport=True,
        cost=Cost.LIGHT,
        sampled=True,
        per_address=True,
    )
)
