"""The one ICMP socket layer: echo requests and their replies for the icmp probe's pings, the
path-MTU echoes of probes/pmtu.py and the trace's echoes (with a hop limit), timed from the send
to the kernel's receive stamp; and the ICMP errors the kernel queues on a socket (`IP_RECVERR`,
`IPV6_RECVERR`), which every method of probes/trace.py reads its hops from.

An unprivileged ping socket (SOCK_DGRAM, IPPROTO_ICMP/ICMPV6: allowed by
`net.ipv4.ping_group_range`) first, else a raw socket (root, or CAP_NET_RAW alone). A raw
socket sees every echo reply on the host, so replies are matched by source, type and
identifier here; a ping socket's identifier is the kernel's, which already delivers it only
its own.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

from probes import stamp
from probes.base import Family
from probes.netutil import wait_readable

# The IP and ICMP headers inside a packet of a given size.
OVERHEAD: dict[Family, int] = {"ipv4": 20 + 8, "ipv6": 40 + 8}
PING_PAYLOAD = 56
"""The payload of a ping's echo request, as ping(8) and icmplib send it."""
_ECHO_REQUEST = {"ipv4": 8, "ipv6": 128}
_ECHO_REPLY = {"ipv4": 0, "ipv6": 129}
_ICMP = struct.Struct("!BBHHH")
# linux/in.h and linux/in6.h; Python exports some of these only on some versions.
_IP_MTU_DISCOVER = getattr(socket, "IP_MTU_DISCOVER", 10)
_IP_PMTUDISC_DO = getattr(socket, "IP_PMTUDISC_DO", 2)
_IPV6_MTU_DISCOVER = getattr(socket, "IPV6_MTU_DISCOVER", 23)
_IPV6_PMTUDISC_DO = getattr(socket, "IPV6_PMTUDISC_DO", 2)
_IPV6_DONTFRAG = getattr(socket, "IPV6_DONTFRAG", 62)
_IP_RECVERR = getattr(socket, "IP_RECVERR", 11)
_IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25)
_RECVERR_CMSGS = ((socket.IPPROTO_IP, _IP_RECVERR), (socket.IPPROTO_IPV6, _IPV6_RECVERR))
_SOCK_EXTENDED_ERR = struct.Struct("=IBBBBII")  # linux/errqueue.h: struct sock_extended_err
_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6 = 2, 3
_TIME_EXCEEDED = {"ipv4": 11, "ipv6": 3}
_UNREACHABLE = {"ipv4": 3, "ipv6": 1}
_PORT_UNREACHABLE = {"ipv4": 3, "ipv6": 4}


def has_root() -> bool:
    geteuid = getattr(os, "geteuid", None)
    return geteuid is not None and geteuid() == 0


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def echo_request(family: Family, ident: int, seq: int, size: int) -> bytes:
    """An echo request whose IP packet is `size` bytes (ICMPv6's checksum is the kernel's)."""
    payload = bytes(i & 0xFF for i in range(size - OVERHEAD[family]))
    header = _ICMP.pack(_ECHO_REQUEST[family], 0, 0, ident, seq)
    if family == "ipv4":
        header = _ICMP.pack(8, 0, checksum(header + payload), ident, seq)
    return header + payload


def parse_reply(data: bytes, family: Family, raw: bool, ident: int) -> int | None:
    """The sequence number of an echo reply meant for us, else None."""
    if raw and family == "ipv4":
        if not data:
            return None
        data = data[(data[0] & 0x0F) * 4 :]  # a raw IPv4 socket hands over the IP header too
    if len(data) < _ICMP.size:
        return None
    kind, _code, _sum, their_ident, seq = _ICMP.unpack_from(data)
    if kind != _ECHO_REPLY[family]:
        return None
    if raw and their_ident != ident:  # a ping socket's identifier is the kernel's
        return None
    return int(seq)


class EchoSocket:
    """Echo requests to one address and its replies, on a socket of its own. Raises OSError
    when no socket can be opened (PermissionError: neither a ping socket nor a raw one, which
    needs root or CAP_NET_RAW, is allowed) or `source` cannot be bound."""

    def __init__(
        self, family: Family, address: str, *, source: str | None, dont_fragment: bool = False
    ) -> None:
        self.family = family
        af = socket.AF_INET6 if family == "ipv6" else socket.AF_INET
        proto = socket.IPPROTO_ICMPV6 if family == "ipv6" else socket.IPPROTO_ICMP
        try:
            self._sock, self.raw = socket.socket(af, socket.SOCK_DGRAM, proto), False
        except PermissionError as denied:
            try:  # as root, or with CAP_NET_RAW alone (the compose vantages)
                self._sock, self.raw = socket.socket(af, socket.SOCK_RAW, proto), True
            except PermissionError:
                raise denied from None
        try:
            self._sock.setblocking(False)
            stamp.stamp_arrivals(self._sock)
            if dont_fragment:
                _forbid_fragmentation(self._sock, family)
            if source:
                self._sock.bind((source, 0))
        except BaseException:
            self._sock.close()
            raise
        self._ident = random.randrange(1, 0xFFFF)
        self._peer = (address, 0, 0, 0) if family == "ipv6" else (address, 0)
        self._address = socket.inet_pton(af, address)
        self._seq = 0

    def __enter__(self) -> EchoSocket:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._sock.close()

    def send(self, size: int, *, hop_limit: int | None = None) -> tuple[int, int]:
        """Send an echo request whose IP packet is `size` bytes: (its sequence number, the
        time it left). Raises OSError (EMSGSIZE: larger than the path MTU this host knows,
        with fragmentation forbidden; ENETUNREACH: no route). `hop_limit`: the packet's TTL
        (hop limit), for a trace; None leaves the system's."""
        if hop_limit is not None:
            set_hop_limit(self._sock, self.family, hop_limit)
        self._seq = self._seq % 0xFFFF + 1
        packet = echo_request(self.family, self._ident, self._seq, size)
        sent_ns = stamp.now_ns()
        self._sock.sendto(packet, self._peer)
        return self._seq, sent_ns

    def want_errors(self) -> None:
        """Queue the ICMP errors our echoes meet (time exceeded, unreachable) for `errors()`."""
        want_errors(self._sock, self.family)

    def errors(self) -> list[tuple[int, IcmpError]]:
        """The ICMP errors queued so far for our echoes: (the echo's sequence number, the
        error). Never waits; `wait()` does."""
        out: list[tuple[int, IcmpError]] = []
        for err in queued_errors(self._sock, self.family):
            seq = quoted_echo(err.quoted, self.family, self.raw, self._ident)
            if seq is not None:
                out.append((seq, err))
        return out

    def replies(self) -> list[tuple[int, int]]:
        """The echo replies from the address waiting now: (sequence number, arrival stamp).
        Never waits."""
        out: list[tuple[int, int]] = []
        while True:
            try:
                data, sender, received_ns = stamp.recv_stamped(self._sock, 65535)
            except (BlockingIOError, InterruptedError):
                return out
            except OSError:  # an error noted on the socket: queued too, `errors()` reads it
                continue
            seq = self._reply_seq(data, sender)
            if seq is not None:
                out.append((seq, received_ns))

    async def wait(self) -> None:
        """Until a reply or an error may be waiting (the caller bounds it)."""
        await wait_readable(self._sock)

    async def reply(self) -> tuple[int, int]:
        """The next echo reply from the address: (its sequence number, the kernel's stamp on
        its arrival). Waits as long as it takes (the caller bounds it)."""
        while True:
            try:
                data, sender, received_ns = await stamp.arrival(self._sock, 65535)
            except OSError:  # an ICMP error queued on the socket: the echo's own loss says it
                continue
            seq = self._reply_seq(data, sender)
            if seq is not None:
                return seq, received_ns

    def _reply_seq(self, data: bytes, sender: tuple[str, int]) -> int | None:
        """The sequence number of an echo reply from our address, else None."""
        host = str(sender[0]).split("%")[0]
        if socket.inet_pton(self._sock.family, host) != self._address:
            return None
        return parse_reply(data, self.family, self.raw, self._ident)


def set_hop_limit(sock: socket.socket, family: Family, hops: int) -> None:
    """The TTL (IPv4) or unicast hop limit (IPv6) of what `sock` sends next."""
    if family == "ipv6":
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_UNICAST_HOPS, hops)
    else:
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, hops)


def want_errors(sock: socket.socket, family: Family) -> None:
    """Ask the kernel to queue the ICMP errors met by what `sock` sends, with the address of
    the router or host that sent each (IP_RECVERR: unprivileged, as tracepath(8) uses it)."""
    if family == "ipv6":
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_RECVERR, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, _IP_RECVERR, 1)
    stamp.stamp_arrivals(sock)  # the error queue's messages carry the ICMP error's arrival


@dataclass(frozen=True, slots=True, kw_only=True)
class IcmpError:
    """One ICMP error the kernel queued on a socket (`want_errors`)."""

    family: Family
    offender: str | None
    """The address of the router or host that sent it; None when the kernel gave none."""
    type: int
    code: int
    quoted: bytes
    """The start of what we sent, past its IP header, as the error quoted it."""
    port: int
    """The destination port of what we sent (0 for ICMP)."""
    received_ns: int
    """The kernel's stamp on the error's arrival."""

    @property
    def time_exceeded(self) -> bool:
        return self.type == _TIME_EXCEEDED[self.family]

    @property
    def unreachable(self) -> bool:
        return self.type == _UNREACHABLE[self.family]

    @property
    def port_unreachable(self) -> bool:
        return self.unreachable and self.code == _PORT_UNREACHABLE[self.family]


def parse_error(
    family: Family, data: bytes, ancillary: Sequence[tuple[int, int, bytes]], port: int
) -> IcmpError | None:
    """An error-queue message as an IcmpError; None when it is not an ICMP error (a local
    one: EMSGSIZE, say)."""
    received_ns, err = time.time_ns(), None
    for level, kind, raw in ancillary:
        if level == socket.SOL_SOCKET and kind == stamp.SO_TIMESTAMPNS and len(raw) >= 16:
            seconds, nanoseconds = struct.unpack_from("@ll", raw)
            received_ns = seconds * 1_000_000_000 + nanoseconds
        elif (level, kind) in _RECVERR_CMSGS:
            err = raw
    if err is None or len(err) < _SOCK_EXTENDED_ERR.size:
        return None
    _errno, origin, icmp_type, code, _pad, _info, _data = _SOCK_EXTENDED_ERR.unpack_from(err)
    if origin not in (_SO_EE_ORIGIN_ICMP, _SO_EE_ORIGIN_ICMP6):
        return None
    return IcmpError(
        family=family,
        offender=_offender(err[_SOCK_EXTENDED_ERR.size :]),
        type=icmp_type,
        code=code,
        quoted=data,
        port=port,
        received_ns=received_ns,
    )


def _offender(sockaddr: bytes) -> str | None:
    """SO_EE_OFFENDER: the sockaddr after the extended error (AF_UNSPEC: none)."""
    if len(sockaddr) < 2:
        return None
    (af,) = struct.unpack_from("=H", sockaddr)
    if af == socket.AF_INET and len(sockaddr) >= 8:
        return socket.inet_ntop(socket.AF_INET, sockaddr[4:8])
    if af == socket.AF_INET6 and len(sockaddr) >= 24:
        return socket.inet_ntop(socket.AF_INET6, sockaddr[8:24])
    return None


_ERRQUEUE_ANCILLARY = socket.CMSG_SPACE(512) + socket.CMSG_SPACE(16)


def queued_errors(sock: socket.socket, family: Family) -> list[IcmpError]:
    """Every ICMP error queued on `sock` now, oldest first (never waits)."""
    out: list[IcmpError] = []
    while True:
        try:
            data, ancillary, _flags, address = sock.recvmsg(
                512, _ERRQUEUE_ANCILLARY, socket.MSG_ERRQUEUE
            )
        except (BlockingIOError, InterruptedError):
            return out
        port = address[1] if isinstance(address, tuple) and len(address) > 1 else 0
        err = parse_error(family, data, ancillary, int(port))
        if err is not None:
            out.append(err)


def quoted_echo(quoted: bytes, family: Family, raw: bool, ident: int) -> int | None:
    """The sequence number of our echo request that an ICMP error quotes, else None."""
    if len(quoted) < _ICMP.size:
        return None
    kind, _code, _sum, their_ident, seq = _ICMP.unpack_from(quoted)
    if kind != _ECHO_REQUEST[family] or (raw and their_ident != ident):
        return None
    return int(seq)


def _forbid_fragmentation(sock: socket.socket, family: Family) -> None:
    if family == "ipv6":
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_DONTFRAG, 1)
        # Honour a Packet Too Big already learnt: such a size fails here with EMSGSIZE.
        sock.setsockopt(socket.IPPROTO_IPV6, _IPV6_MTU_DISCOVER, _IPV6_PMTUDISC_DO)
    else:
        sock.setsockopt(socket.IPPROTO_IP, _IP_MTU_DISCOVER, _IP_PMTUDISC_DO)


@dataclass(frozen=True, slots=True, kw_only=True)
class Echo:
    size: int
    """The IP packet's size in bytes."""
    seconds: float | None
    """From the send to the kernel's stamp on the reply; None: no reply in time."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Echoes:
    sent: tuple[Echo, ...]
    """Every request that left this host, in the order sent."""
    send_error: OSError | None
    """The first request that could not leave (None: every one did)."""


async def exchange(
    sock: EchoSocket,
    sizes: Sequence[int],
    *,
    rounds: int,
    spacing: float,
    budget: float,
    until_answered: bool,
) -> Echoes:
    """Send one request of each size, `rounds` times `spacing` seconds apart, and wait up to
    `budget` seconds in all for the replies. With `until_answered`, a size once answered is
    not sent again and the wait ends when every size is; else it ends when every request
    sent is answered."""
    sent: dict[int, tuple[int, int]] = {}  # seq: (size, sent_ns)
    received: dict[int, int] = {}  # seq: received_ns
    answered: set[int] = set()  # sizes
    errors: list[OSError] = []
    sending = True

    def done() -> bool:
        if until_answered and answered.issuperset(sizes):
            return True
        return not sending and len(received) == len(sent)

    async def send() -> None:
        nonlocal sending
        try:
            for n in range(rounds):
                if n:
                    await asyncio.sleep(spacing)
                for size in sizes:
                    if until_answered and size in answered:
                        continue
                    try:
                        seq, sent_ns = sock.send(size)
                    except OSError as exc:
                        errors.append(exc)
                        continue
                    sent[seq] = (size, sent_ns)
        finally:
            sending = False

    async def receive() -> None:
        while not done():
            seq, received_ns = await sock.reply()
            if seq in sent and seq not in received:
                received[seq] = received_ns
                answered.add(sent[seq][0])

    sender = asyncio.ensure_future(send())
    receiver = asyncio.ensure_future(receive())
    try:
        async with asyncio.timeout(max(0.0, budget)):
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            # the sender done first: its last replies may still be due (none if nothing left)
            if not receiver.done() and not done():
                await receiver
            if receiver.done():
                receiver.result()  # a bug in receive() is raised, never taken for a loss
    except TimeoutError:
        pass  # what came back by then is the outcome
    finally:
        for task in (sender, receiver):
            task.cancel()
        await asyncio.gather(sender, receiver, return_exceptions=True)
    return Echoes(
        sent=tuple(
            Echo(
                size=size,
                seconds=stamp.elapsed(sent_ns, received[seq]) if seq in received else None,
            )
            for seq, (size, sent_ns) in sent.items()
        ),
        send_error=errors[0] if errors else None,
    )
