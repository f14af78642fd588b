"""TCP connect to the target's IP literal for one family: the time the handshake takes.

Measures only the three-way handshake; nothing is sent on the connection.
"""

from __future__ import annotations

from probes.base import Outcome, ProbeRequest
from probes.details import TcpConnect
from probes.errors import classify
from probes.netutil import close_stream, connect_seconds, open_stream


async def probe(req: ProbeRequest) -> Outcome:
    clock = req.env.clock
    t0 = clock()
    try:
        _reader, writer = await open_stream(req)
    except OSError as exc:
        return Outcome(success=False, error=classify(exc), phases={"connect": clock() - t0})
    connect = connect_seconds(writer, clock() - t0)
    sockname = writer.get_extra_info("sockname")
    await close_stream(writer)
    return Outcome(
        success=True,
        phases={"connect": connect},
        details=TcpConnect(source_address=sockname[0] if sockname else None),
    )
