"""Path MTU: naming an IPv6 path-MTU black hole, and measuring the path MTU with ICMP echoes.

An IPv6 router never fragments: a full-size packet on a path with a smaller link is dropped,
and only the router's Packet Too Big tells the sender. When that ICMPv6 message is filtered,
small exchanges (the TCP handshake, DNS, ping) work and a large TLS certificate chain hangs.
The tls and http2 probes cut such a stalled IPv6 attempt at half their timeout and try once
more announcing MSS 1220, which keeps every segment coming back within 1280 bytes (the IPv6
minimum MTU); if that one works and the default MSS stalls once more, the failure is named
`pmtu_blackhole`, not `timeout` (a server merely slow to answer is not a black hole).
The echoes forbid fragmentation (IPV6_DONTFRAG, IP_PMTUDISC_DO) on an ICMP socket of their own
(probes/echo.py, the icmp probe's socket layer).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import socket
import struct
import termios
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass

from probes.base import ErrorKind, Outcome, ProbeRequest
from probes.details import Details
from probes.echo import OVERHEAD, EchoSocket, exchange
from probes.errors import error

PMTU_MSS = 1220
"""1280 (the IPv6 minimum MTU) less a 40-byte IPv6 header and a 20-byte TCP header."""


class Stalled(Exception):
    """The TCP handshake completed, then nothing more did before the cut (half the timeout)."""

    def __init__(
        self, *, mss: int | None, phases: Mapping[str, float], details: Details | None
    ) -> None:
        super().__init__("no progress after the TCP handshake")
        self.mss = mss
        """The MSS the stalled connection announced (None when unknown)."""
        self.phases = dict(phases)
        self.details = details


def unread_bytes(sock: socket.socket | None) -> int:
    """Bytes the kernel has received on this connection that nobody has read yet."""
    if sock is None:
        return 0
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
    except (OSError, ValueError):  # ValueError: uvloop's socket of a closed connection (fd -1)
        return 0
    return int(struct.unpack("i", raw)[0])


LATE = 0.05
"""A check running this much after it was due means the event loop is behind."""


@contextlib.asynccontextmanager
async def cut_if_stalled(
    sock: socket.socket | None, delay: float | None
) -> AsyncIterator[asyncio.Timeout]:
    """Like asyncio.timeout(delay), except that it does not cut while this event loop is
    behind: when the peer's bytes wait unread in the kernel, or the check itself ran late (the
    loop may have read the bytes without resuming the handshake yet), it looks again LATE
    seconds on. A black hole leaves nothing to read. `expired()` says whether it cut."""
    loop = asyncio.get_running_loop()
    async with asyncio.timeout(None) as cut:
        handle: asyncio.TimerHandle | None = None

        def check(due: float) -> None:
            nonlocal handle
            now = loop.time()
            if unread_bytes(sock) > 0 or now - due > LATE:
                handle = loop.call_at(now + LATE, check, now + LATE)
            else:
                cut.reschedule(now)

        if delay is not None:
            handle = loop.call_at(loop.time() + delay, check, loop.time() + delay)
        try:
            yield cut
        finally:
            if handle is not None:
                handle.cancel()


Attempt = Callable[[int | None, float | None], Awaitable[Outcome]]
"""One try of a probe: (the MSS to announce or None, the clock time to cut a connection that
stalls after its TCP handshake or None); raises Stalled when cut."""


CONFIRM_MARGIN = 0.1
"""The confirming attempt is cut this much (at most a tenth of the timeout) before the
probe's deadline, so that the verdict is ours, not the deadline's."""


async def with_blackhole_retry(req: ProbeRequest, attempt: Attempt, what: str) -> Outcome:
    """Run `attempt`; over IPv6, one stalled after its TCP handshake is cut at half the timeout
    and retried once announcing MSS 1220. When that works, the default MSS is tried once more
    in what is left of the timeout: a black hole eats full-size packets every time, so only a
    second stall names `pmtu_blackhole`. A server that was merely slow to answer the first
    connection (busy, or starved of CPU) answers the confirmation, and that is the outcome.
    `what` names the exchange in the message."""
    if req.family != "ipv6":
        return await attempt(None, None)
    start = req.env.clock()
    half = req.timeout / 2
    try:
        return await attempt(None, start + half)
    except Stalled as exc:
        stalled = exc
    retry = await attempt(PMTU_MSS, None)
    default = f"MSS {stalled.mss}" if stalled.mss else "the default MSS"
    if retry.success:
        margin = min(CONFIRM_MARGIN, req.timeout / 10)
        try:
            return await attempt(None, start + req.timeout - margin)
        except Stalled:
            pass
        return Outcome(
            success=False,
            error=error(
                ErrorKind.PMTU_BLACKHOLE,
                f"{what} completed announcing MSS {PMTU_MSS}, while {default} made no progress "
                "twice: full-size IPv6 packets are lost on the path and no Packet Too Big "
                "comes back (ICMPv6 type 2 filtered)",
            ),
            phases=retry.phases,
            details=retry.details,
        )
    why = f"{retry.error.kind}: {retry.error.message}" if retry.error else "failed"
    return Outcome(
        success=False,
        error=error(
            ErrorKind.TIMEOUT,
            f"no progress in {half:g} s after the TCP handshake ({default}); a retry "
            f"announcing MSS {PMTU_MSS} failed too ({why})",
        ),
        phases=stalled.phases,
        details=stalled.details,
    )


# --- echoes with fragmentation forbidden ----------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class SizeEchoes:
    answered: tuple[int, ...]
    """Sizes (whole IP packets) that got an echo reply, ascending."""
    unanswered: tuple[int, ...]
    """Sizes that got none in time, or could not leave this host unfragmented."""


async def echo_sizes(
    req: ProbeRequest, sizes: Sequence[int], *, budget: float, rounds: int, spacing: float
) -> SizeEchoes:
    """Echo each size with fragmentation forbidden, up to `rounds` times `spacing` apart,
    until each is answered or `budget` seconds have passed. Raises OSError (PermissionError
    without an ICMP socket allowed) when no socket can be opened or bound."""
    family = req.family
    usable = sorted({s for s in sizes if s >= OVERHEAD[family]})
    source = req.env.source_addresses.get(family)
    with EchoSocket(family, req.address, source=source, dont_fragment=True) as sock:
        # EMSGSIZE on a send: larger than the path MTU this host knows, it cannot leave whole
        echoes = await exchange(
            sock, usable, rounds=rounds, spacing=spacing, budget=budget, until_answered=True
        )
    answered = {e.size for e in echoes.sent if e.seconds is not None}
    return SizeEchoes(
        answered=tuple(s for s in usable if s in answered),
        unanswered=tuple(s for s in usable if s not in answered),
    )
