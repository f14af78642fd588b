"""The path toward one address of one family, hop by hop, and whose network a break is in.

Probes leave with hop limits 1, 2, ... and the routers' ICMP time exceeded (or the destination's
answer) come back through the kernel's error queue (`IP_RECVERR`, `IPV6_RECVERR`; probes/echo.py
reads it). Three methods: `udp` to high ports (unprivileged on Linux, as tracepath(8)), `icmp`
echoes on the icmp probe's sockets (probes/echo.py), and `tcp` SYNs to the target's port over a
raw socket (root or CAP_NET_RAW). The bookkeeping (a hop from its answers, a path from its hops,
the blame) is pure functions; the sockets are thin classes around them.

Limits: a router that never answers (or rate limits its ICMP: Linux sends about one a second
per destination after a burst of six) shows as a hop without an address; the trace gives up
after `gap_limit` silent hops in a row, and never runs longer than `max_hops` x `hop_timeout`.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import random
import socket
import statistics
import struct
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from probes import stamp
from probes.base import ErrorKind, Family, Outcome, ProbeRequest
from probes.details import Hop, TracePath
from probes.echo import (
    OVERHEAD,
    PING_PAYLOAD,
    EchoSocket,
    IcmpError,
    checksum,
    queued_errors,
    set_hop_limit,
    want_errors,
)
from probes.errors import classify, error
from probes.ipranges import IpRanges
from probes.kinds import NOT, Compared, Cost, Kind, register
from probes.netutil import route_source, wait_readable

Method = Literal["udp", "icmp", "tcp"]
METHODS: tuple[Method, ...] = ("udp", "icmp", "tcp")
BASE_PORT = 33434
"""The first destination port of the udp method (traceroute's), one more for each probe."""
AWS_FIELDS = ("prefix", "region", "network_border_group", "services")


@dataclass(frozen=True, slots=True, kw_only=True)
class TraceSettings:
    """How a trace probes (config `trace`, `probe trace`'s options)."""

    method: Method = "udp"
    max_hops: int = 30
    """The highest hop limit tried."""
    tries: int = 3
    """Probes per hop, sent together: each one's round trip is shown."""
    hop_timeout: float = 1.0
    """How long a hop's answers are awaited: the trace's worst case is max_hops x this."""
    gap_limit: int = 5
    """Silent hops in a row after which the trace gives up (the rest would be silent too)."""

    @property
    def worst_case(self) -> float:
        """The longest a trace can take, in seconds (every hop silent to the last)."""
        return self.max_hops * self.hop_timeout


class Blame(enum.StrEnum):
    """Whose network a family's break is in (docs/probes.md, "Where IPv6 breaks")."""

    VANTAGE = "vantage"
    """No answer past the vantage's own first hops (`vantage_hops`)."""
    TRANSIT = "transit"
    """The last hop that answers is outside AWS's published ranges."""
    AWS_EDGE = "aws_edge"
    """The last hop that answers is inside AWS's ranges, before the endpoint."""
    ENDPOINT = "endpoint"
    """The path gets as far as the other family's (or to the endpoint); the service fails."""


NO_BLAME = "none"
"""The blame label of a path with nothing to blame (one-hot metric, JSON)."""
BLAMES: tuple[str, ...] = (*(str(b) for b in Blame), NO_BLAME)


# -- the pure part -----------------------------------------------------------------------------

Reply = Literal["time_exceeded", "reached", "unreachable"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Answer:
    """What came back for one probe."""

    probe: int
    """The probe's number, as its method's `send` gave it."""
    address: str | None
    reply: Reply
    received_ns: int


def make_hop(
    hop: int,
    sent: Sequence[tuple[int, int]],
    answers: Mapping[int, Answer],
    ranges: IpRanges | None = None,
) -> Hop:
    """A hop from its probes ((number, time sent) in the order sent) and their answers."""
    rtts = tuple(
        stamp.elapsed(sent_ns, a.received_ns) if (a := answers.get(n)) is not None else None
        for n, sent_ns in sent
    )
    got = [a for n, _ in sent if (a := answers.get(n)) is not None]
    if not got:
        return Hop(hop=hop, address=None, rtts=rtts, reply="none")
    # The most common answerer (load-balanced paths may answer with several), first on a tie.
    address = Counter(a.address for a in got).most_common(1)[0][0]
    replies = {a.reply for a in got if a.address == address}
    reply: str = next(r for r in ("reached", "unreachable", "time_exceeded") if r in replies)
    aws = ranges.lookup(address) if ranges is not None and address is not None else None
    return Hop(hop=hop, address=address, rtts=rtts, reply=reply, aws=aws)


def ends(hop: Hop) -> bool:
    """Nothing lies past this hop: the destination answered, or a router said unreachable."""
    return hop.reply in ("reached", "unreachable")


def summarize(
    method: str, destination: str, max_hops: int, hops: Sequence[Hop], *, complete: bool = True
) -> TracePath:
    """The path from its hops."""
    answered = [h for h in hops if h.address is not None]
    last = answered[-1] if answered else None
    return TracePath(
        method=method,
        destination=destination,
        reached=any(h.reply == "reached" for h in hops),
        last_hop=last.hop if last else 0,
        last_address=last.address if last else None,
        max_hops=max_hops,
        hops=tuple(hops),
        complete=complete,
    )


def judge(
    path: TracePath,
    other: TracePath | None = None,
    *,
    vantage_hops: int = 1,
    service_failed: bool = False,
) -> Blame | None:
    """Where `path` breaks, compared with the other family's path toward the same target.

    A path that reaches its destination has no break (`endpoint` if the service is known to
    fail there). Else the break lies just past the last hop that answers: within the first
    `vantage_hops` (no answer from hop `vantage_hops` on) it is the vantage's; a path that gets
    as far as the other family's, which reaches no further, says nothing against the network
    (`endpoint` when the service fails, else none); else the last answering hop in AWS's ranges
    is `aws_edge`, outside them `transit`."""
    if path.reached:
        return Blame.ENDPOINT if service_failed else None
    if path.last_hop < vantage_hops:
        return Blame.VANTAGE
    if other is not None and not other.reached and other.last_hop <= path.last_hop:
        return Blame.ENDPOINT if service_failed else None
    last = next((h for h in reversed(path.hops) if h.address is not None), None)
    if last is not None and last.aws is not None:
        return Blame.AWS_EDGE
    return Blame.TRANSIT


def outcome_line(path: TracePath) -> str:
    """`reached ADDRESS at hop K`, `stopped after hop K at ADDRESS`, or `no hop answered`."""
    if path.reached:
        return f"reached {path.destination} at hop {path.last_hop}"
    if path.last_address is None:
        return "no hop answered"
    last = path.hops[path.last_hop - 1] if 0 < path.last_hop <= len(path.hops) else None
    said = " (unreachable)" if last is not None and last.reply == "unreachable" else ""
    return f"stopped after hop {path.last_hop} at {path.last_address}{said}"


# -- the probes on the wire ----------------------------------------------------------------------


class Prober(Protocol):
    """One method's socket: numbered probes out, answers in."""

    def send(self, hop: int) -> tuple[int, int]:
        """Send one probe with hop limit `hop`: (its number, the time it left, in ns)."""
        ...

    def poll(self) -> list[Answer]:
        """The answers waiting now (never waits)."""
        ...

    async def wait(self) -> None:
        """Until an answer may be waiting."""
        ...

    def close(self) -> None: ...


def _af(family: Family) -> socket.AddressFamily:
    return socket.AF_INET6 if family == "ipv6" else socket.AF_INET


def _peer(family: Family, address: str, port: int) -> tuple[str, int] | tuple[str, int, int, int]:
    return (address, port, 0, 0) if family == "ipv6" else (address, port)


def _clear_error(sock: socket.socket) -> None:
    """Forget the error the last ICMP error left noted on the socket, which would otherwise fail
    the next send (the error itself is in the error queue)."""
    sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)


def _reply_of(err: IcmpError, destination: str) -> Reply | None:
    if err.offender is not None and _same(err.family, err.offender, destination):
        return "reached"  # the destination itself answered (port unreachable, say)
    if err.time_exceeded:
        return "time_exceeded"
    if err.unreachable:
        return "unreachable"
    return None


def _same(family: Family, a: str, b: str) -> bool:
    af = _af(family)
    return socket.inet_pton(af, a.split("%")[0]) == socket.inet_pton(af, b.split("%")[0])


class UdpProber:
    """UDP datagrams to BASE_PORT + probe number: routers answer time exceeded, the destination
    port unreachable; the error queue gives each with the port of the datagram it quotes."""

    def __init__(self, family: Family, address: str, *, source: str | None) -> None:
        self.family, self.address = family, address
        self._sock = socket.socket(_af(family), socket.SOCK_DGRAM)
        try:
            self._sock.setblocking(False)
            want_errors(self._sock, family)
            self._sock.bind((source or ("::" if family == "ipv6" else "0.0.0.0"), 0))
        except BaseException:
            self._sock.close()
            raise
        self._next = 0

    def send(self, hop: int) -> tuple[int, int]:
        number, self._next = self._next, self._next + 1
        _clear_error(self._sock)
        set_hop_limit(self._sock, self.family, hop)
        sent_ns = stamp.now_ns()
        self._sock.sendto(b"\0" * 24, _peer(self.family, self.address, BASE_PORT + number))
        return number, sent_ns

    def poll(self) -> list[Answer]:
        while True:  # what the normal queue holds says nothing here (and wakes the loop)
            try:
                self._sock.recv(2048)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an error noted: it is queued too
                continue
        out = []
        for err in queued_errors(self._sock, self.family):
            reply = _reply_of(err, self.address)
            if reply is not None and err.port >= BASE_PORT:
                out.append(
                    Answer(
                        probe=err.port - BASE_PORT,
                        address=err.offender,
                        reply=reply,
                        received_ns=err.received_ns,
                    )
                )
        return out

    async def wait(self) -> None:
        await wait_readable(self._sock)

    def close(self) -> None:
        self._sock.close()


class IcmpProber:
    """Echo requests on the icmp probe's socket (probes/echo.py: a ping socket, or a raw one
    with CAP_NET_RAW): routers answer time exceeded, the destination an echo reply."""

    def __init__(self, family: Family, address: str, *, source: str | None) -> None:
        self.family, self.address = family, address
        self._echo = EchoSocket(family, address, source=source)
        try:
            self._echo.want_errors()
        except BaseException:
            self._echo.close()
            raise

    def send(self, hop: int) -> tuple[int, int]:
        return self._echo.send(PING_PAYLOAD + OVERHEAD[self.family], hop_limit=hop)

    def poll(self) -> list[Answer]:
        out = [
            Answer(probe=seq, address=self.address, reply="reached", received_ns=received_ns)
            for seq, received_ns in self._echo.replies()
        ]
        for seq, err in self._echo.errors():
            reply = _reply_of(err, self.address)
            if reply is not None:
                out.append(
                    Answer(
                        probe=seq, address=err.offender, reply=reply, received_ns=err.received_ns
                    )
                )
        return out

    async def wait(self) -> None:
        await self._echo.wait()

    def close(self) -> None:
        self._echo.close()


_TCP = struct.Struct("!HHIIBBHHH")
_SYN, _RST, _ACK = 0x02, 0x04, 0x10
_IPV6_CHECKSUM = getattr(socket, "IPV6_CHECKSUM", 7)


class TcpProber:
    """TCP SYNs to the target's port over a raw socket (root or CAP_NET_RAW; PermissionError
    otherwise): routers answer time exceeded, the destination a SYN-ACK or a reset (the kernel
    then resets the half-open connection it knows nothing of)."""

    def __init__(self, family: Family, address: str, port: int, *, source: str | None) -> None:
        self.family, self.address, self.port = family, address, port
        af = _af(family)
        local = source or route_source(address)
        if local is None:
            raise OSError(errno.ENETUNREACH, f"no route to {address}")
        self._local = local
        self._sock = socket.socket(af, socket.SOCK_RAW, socket.IPPROTO_TCP)
        try:
            self._sock.setblocking(False)
            if family == "ipv6":  # the kernel fills in the checksum at offset 16
                self._sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_CHECKSUM, 16)
            want_errors(self._sock, family)
            if source:
                self._sock.bind((source, 0))
        except BaseException:
            self._sock.close()
            raise
        self._sport = random.randrange(33000, 61000)
        self._isn = random.randrange(0, 1 << 31)
        self._next = 0

    def _segment(self, seq: int) -> bytes:
        header = _TCP.pack(self._sport, self.port, seq, 0, 5 << 4, _SYN, 65535, 0, 0)
        if self.family == "ipv6":
            return header
        af = socket.AF_INET
        pseudo = socket.inet_pton(af, self._local) + socket.inet_pton(af, self.address)
        total = checksum(pseudo + struct.pack("!BBH", 0, socket.IPPROTO_TCP, len(header)) + header)
        return header[:16] + struct.pack("!H", total) + header[18:]

    def send(self, hop: int) -> tuple[int, int]:
        number, self._next = self._next, self._next + 1
        _clear_error(self._sock)
        set_hop_limit(self._sock, self.family, hop)
        sent_ns = stamp.now_ns()
        self._sock.sendto(self._segment(self._isn + number), _peer(self.family, self.address, 0))
        return number, sent_ns

    def _number(self, seq: int) -> int | None:
        n = (seq - self._isn) % (1 << 32)
        return n if n < self._next else None

    def poll(self) -> list[Answer]:
        out = []
        for err in queued_errors(self._sock, self.family):
            reply = _reply_of(err, self.address)
            if reply is None or len(err.quoted) < 8:
                continue
            sport, dport, seq = struct.unpack_from("!HHI", err.quoted)
            n = self._number(seq)
            if sport == self._sport and dport == self.port and n is not None:
                out.append(
                    Answer(probe=n, address=err.offender, reply=reply, received_ns=err.received_ns)
                )
        while True:
            try:
                data, sender, received_ns = stamp.recv_stamped(self._sock, 2048)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:  # an error noted: it is queued too
                continue
            if not _same(self.family, str(sender[0]), self.address):
                continue
            if self.family == "ipv4" and data:  # a raw IPv4 socket hands over the IP header
                data = data[(data[0] & 0x0F) * 4 :]
            if len(data) < _TCP.size:
                continue
            sport, dport, _seq, ack, _off, flags = _TCP.unpack_from(data)[:6]
            n = self._number(ack - 1)
            ours = sport == self.port and dport == self._sport and flags & (_RST | _ACK)
            if ours and n is not None:
                out.append(
                    Answer(probe=n, address=self.address, reply="reached", received_ns=received_ns)
                )

    async def wait(self) -> None:
        await wait_readable(self._sock)

    def close(self) -> None:
        self._sock.close()


def open_prober(
    method: Method, family: Family, address: str, *, port: int, source: str | None
) -> Prober:
    """The socket of `method`; raises PermissionError (no ICMP or raw socket allowed) or
    another OSError (a source that cannot be bound, no route)."""
    if method == "icmp":
        return IcmpProber(family, address, source=source)
    if method == "tcp":
        return TcpProber(family, address, port, source=source)
    return UdpProber(family, address, source=source)


async def walk(
    prober: Prober,
    settings: TraceSettings,
    *,
    ranges: IpRanges | None = None,
    budget: float | None = None,
) -> tuple[list[Hop], bool, OSError | None]:
    """Probe hop after hop until the destination (or an unreachable) answers, `gap_limit`
    hops in a row are silent, `max_hops` is passed, or `budget` seconds are spent: (the hops,
    whether it ended on its own rather than on the budget, the error that stopped a send)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + budget if budget is not None else None
    hops: list[Hop] = []
    silent = 0
    for hop in range(1, settings.max_hops + 1):
        if deadline is not None and loop.time() >= deadline:
            return hops, False, None
        sent: list[tuple[int, int]] = []
        try:
            for _ in range(settings.tries):
                sent.append(prober.send(hop))
        except OSError as exc:
            if not sent:
                return hops, True, exc
        answers: dict[int, Answer] = {}
        wanted = {n for n, _ in sent}
        until = loop.time() + settings.hop_timeout
        if deadline is not None:
            until = min(until, deadline)
        while True:
            for a in prober.poll():
                if a.probe in wanted:
                    answers.setdefault(a.probe, a)
            if len(answers) == len(sent) or loop.time() >= until:
                break
            try:
                async with asyncio.timeout_at(until):
                    await prober.wait()
            except TimeoutError:
                for a in prober.poll():
                    if a.probe in wanted:
                        answers.setdefault(a.probe, a)
                break
        done = make_hop(hop, sent, answers, ranges)
        hops.append(done)
        if ends(done):
            return hops, True, None
        silent = silent + 1 if done.address is None else 0
        if silent >= settings.gap_limit:
            return hops, True, None
    return hops, True, None


NOT_PERMITTED = {
    "icmp": "no ICMP socket allowed: run as root, grant CAP_NET_RAW, or widen "
    "net.ipv4.ping_group_range",
    "tcp": "the tcp method sends SYNs over a raw socket: run as root or grant CAP_NET_RAW "
    "(or use --method udp, which needs no privilege)",
    "udp": "no UDP socket allowed",
}


async def trace(
    family: Family,
    address: str,
    settings: TraceSettings,
    *,
    port: int = 443,
    source: str | None = None,
    ranges: IpRanges | None = None,
    budget: float | None = None,
) -> Outcome:
    """Trace toward `address`: an Outcome whose details are the TracePath (success: the
    destination answered), or an error without details when no socket could be opened."""
    t0 = time.perf_counter()
    try:
        prober = open_prober(settings.method, family, address, port=port, source=source)
    except PermissionError as exc:
        said = f"{NOT_PERMITTED[settings.method]} ({exc.strerror or exc})"
        return Outcome(success=False, error=error(ErrorKind.ICMP_NOT_PERMITTED, said))
    except OSError as exc:
        return Outcome(success=False, error=classify(exc))
    try:
        hops, complete, failed = await walk(prober, settings, ranges=ranges, budget=budget)
    finally:
        prober.close()
    path = summarize(settings.method, address, settings.max_hops, hops, complete=complete)
    phases = {"trace": time.perf_counter() - t0}
    if path.reached:
        last = [r for r in path.hops[-1].rtts if r is not None]
        return Outcome(
            success=True,
            phases=phases,
            details=path,
            duration=statistics.median(last) if last else None,
        )
    if failed is not None:
        err = classify(failed)
        why = error(err.kind, f"{outcome_line(path)}: {err.message}")
    elif path.hops and path.hops[-1].reply == "unreachable":
        why = error(ErrorKind.HOST_UNREACHABLE, outcome_line(path))
    else:
        why = error(ErrorKind.TIMEOUT, outcome_line(path))
    return Outcome(success=False, phases=phases, error=why, details=path)


async def probe(req: ProbeRequest) -> Outcome:
    """The trace as a probe kind (`probes: [trace]`): the udp method, within the probe's own
    deadline (what the deadline cuts off is a hop without an address, `complete` false)."""
    return await trace(
        req.family,
        req.address,
        TraceSettings(),
        port=req.target.port,
        source=req.env.source_addresses.get(req.family),
        ranges=req.env.ip_ranges,
        budget=req.timeout * 0.9,
    )


KIND = register(
    Kind(
        name="trace",
        probe=probe,
        summary="the hops toward each address (udp method), each attributed to AWS's ranges",
        details=(TracePath,),
        compared={
            TracePath: (  # paths differ by family by nature; the blame compares them
                Compared[TracePath](
                    "path",
                    lambda d: None,
                    NOT,
                    (
                        "method",
                        "destination",
                        "reached",
                        "last_hop",
                        "last_address",
                        "max_hops",
                        "complete",
                        *(f"hops.{f}" for f in ("hop", "address", "rtts", "reply")),
                        *(f"hops.aws.{f}" for f in AWS_FIELDS),
                    ),
                ),
            ),
        },
        phases=("trace",),
        cost=Cost.HEAVY,
        default=False,
    )
)
