"""TCP connect to the target's IP literal for one family: the time the handshake takes.

Measures only the three-way handshake; nothing is sent on the connection. A bare socket and
the loop's sock_connect, no stream: the probe needs neither a transport nor a protocol.
"""

from __future__ import annotations

import asyncio
import socket

from probes.base import Outcome, ProbeRequest, passed
from probes.details import TcpConnect
from probes.errors import classify
from probes.kinds import NOT, Compared, Kind, register
from probes.netutil import connect_seconds, local_addr


async def probe(req: ProbeRequest) -> Outcome:
    clock = req.env.clock
    af = socket.AF_INET6 if req.family == "ipv6" else socket.AF_INET
    t0 = clock()
    try:
        sock = socket.socket(af, socket.SOCK_STREAM)
    except OSError as exc:
        return Outcome(success=False, error=classify(exc), phases={"connect": clock() - t0})
    try:
        sock.setblocking(False)
        source = local_addr(req)
        if source is not None:
            sock.bind(source)
        t0 = clock()
        await asyncio.get_running_loop().sock_connect(sock, (req.address, req.target.port))
        connect = connect_seconds(sock, clock() - t0)
        passed("connect")
        sockname = sock.getsockname()
    except OSError as exc:
        return Outcome(success=False, error=classify(exc), phases={"connect": clock() - t0})
    finally:
        sock.close()  # an orderly FIN; nothing was sent, nothing is waited for
    return Outcome(
        success=True,
        phases={"connect": connect},
        details=TcpConnect(source_address=sockname[0] if sockname else None),
    )


KIND = register(
    Kind(
        name="tcp",
        probe=probe,
        summary="TCP connect to each address: the three-way handshake",
        details=(TcpConnect,),
        compared={
            TcpConnect: (Compared[TcpConnect]("source_address", lambda d: d.source_address, NOT),),
        },
        phases=("connect",),
        sampled=True,
    )
)
