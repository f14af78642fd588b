"""DNS messages on the wire (RFC 1035, EDNS RFC 6891): the one codec of the one DNS query path.

Sans-I/O: `query()` builds the bytes of a question, `parse()` reads a reply, nothing here
touches a socket. It reads what the probes use (header, question, the records of each section,
the addresses of A and AAAA, the targets of CNAME and NS, the serial of SOA, the EDNS OPT
record) and keeps every other record's data as bytes; a reply it cannot read is `BadMessage`.
Our own because a probe asks thousands of questions a minute and dnspython's message objects
cost more CPU per answer than the whole rest of a dns probe (benchmarks/README.md).
"""

from __future__ import annotations

import re
import secrets
import socket
import struct
from dataclasses import dataclass

A, NS, CNAME, SOA, AAAA, OPT = 1, 2, 5, 6, 28, 41
IN = 1

QR, AA, TC, RD, RA = 0x8000, 0x0400, 0x0200, 0x0100, 0x0080
DO = 0x8000  # in the flags of the OPT record's TTL field

RCODES = {
    0: "NOERROR",
    1: "FORMERR",
    2: "SERVFAIL",
    3: "NXDOMAIN",
    4: "NOTIMP",
    5: "REFUSED",
    6: "YXDOMAIN",
    7: "YXRRSET",
    8: "NXRRSET",
    9: "NOTAUTH",
    10: "NOTZONE",
    16: "BADVERS",
}
NOERROR, SERVFAIL, NXDOMAIN, REFUSED = 0, 2, 3, 5

_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")
_QUESTION = struct.Struct("!HH")
_SOA_SERIAL = struct.Struct("!I")
_MAX_CHAIN = 16  # CNAMEs followed from the question's name, as dnspython's resolver does
# The bytes of a label written as they are; any other as \DDD (RFC 1035 5.1).
_PLAIN = frozenset(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_*")
_ALL_PLAIN = re.compile(rb"[A-Za-z0-9_*-]*")


class BadMessage(ValueError):
    """Bytes that are not a DNS message we can read, or not the reply to our question."""


def rcode_text(rcode: int) -> str:
    return RCODES.get(rcode, f"RCODE{rcode}")


def encode_name(name: str) -> bytes:
    """`name` (absolute or not, the root as ".") in wire form; ValueError when it is no DNS
    name (an empty or over-long label, over 255 octets). A non-ASCII label is IDNA-encoded."""
    wire = bytearray()
    for label in name.rstrip(".").split(".") if name not in (".", "") else ():
        raw = label.encode("ascii") if label.isascii() else label.encode("idna")
        if not 0 < len(raw) < 64:
            raise ValueError(f"{name!r} is not a DNS name (a label is empty or over 63 octets)")
        wire += bytes((len(raw),)) + raw
    wire += b"\0"
    if len(wire) > 255:
        raise ValueError(f"{name!r} is not a DNS name (over 255 octets)")
    return bytes(wire)


@dataclass(frozen=True, slots=True)
class Query:
    """A question ready to send: its bytes and what a reply to it must echo."""

    wire: bytes
    id: int
    name: str
    """Lower case, with the trailing dot."""
    rtype: int


def query(
    name: str, rtype: int, *, rd: bool = True, payload: int | None = 1232, do: bool = False
) -> Query:
    """A standard query for (`name`, `rtype`, IN) with a random id; with an EDNS OPT record
    advertising `payload` octets (None: no EDNS) and the DO bit when `do`."""
    qid = secrets.randbits(16)
    qname = encode_name(name)
    header = _HEADER.pack(qid, RD if rd else 0, 1, 0, 0, 0 if payload is None else 1)
    wire = header + qname + _QUESTION.pack(rtype, IN)
    if payload is not None:
        wire += b"\0" + _RR.pack(OPT, payload, DO if do else 0, 0)
    return Query(wire=wire, id=qid, name=_text(qname), rtype=rtype)


@dataclass(frozen=True, slots=True)
class Record:
    name: str
    """The owner, lower case, with the trailing dot."""
    rtype: int
    ttl: int
    data: bytes
    """The record's data as sent (names in it may be compression pointers into the message)."""
    value: str | int | None = None
    """A, AAAA: the address as text; CNAME, NS: the target name; SOA: the serial; else None."""


@dataclass(frozen=True, slots=True)
class Message:
    id: int
    flags: int
    rcode: int
    """With the EDNS extended bits (BADVERS is 16)."""
    question: tuple[tuple[str, int], ...]
    answer: tuple[Record, ...] = ()
    authority: tuple[Record, ...] = ()
    additional: tuple[Record, ...] = ()
    """Without the OPT record (its payload is `edns_payload`)."""
    edns_payload: int | None = None
    size: int = 0
    """The reply's length in octets."""

    @property
    def truncated(self) -> bool:
        return bool(self.flags & TC)

    @property
    def authoritative(self) -> bool:
        return bool(self.flags & AA)

    def answers_to(self, q: Query) -> bool:
        """Whether this is a reply to `q` (RFC 5452: id, QR, and the question echoed; a
        FORMERR, SERVFAIL, NOTIMP or REFUSED may carry no question)."""
        if self.id != q.id or not self.flags & QR or (self.flags >> 11) & 0xF:
            return False
        if not self.question and self.rcode in (1, SERVFAIL, 4, REFUSED):
            return True
        return self.question == ((q.name, q.rtype),)

    def records(self, name: str, rtype: int) -> list[Record]:
        """The answer section's records of `name` (lower case, trailing dot) and `rtype`."""
        return [r for r in self.answer if r.rtype == rtype and r.name == name]


@dataclass(frozen=True, slots=True)
class Chain:
    """Where a question's name leads in an answer section (CNAMEs followed)."""

    cnames: tuple[str, ...]
    """The owner of each CNAME followed, in order, without the trailing dot."""
    answer: tuple[Record, ...]
    """The records of the asked type at the chain's end (empty: none)."""


def chain(message: Message, name: str, rtype: int) -> Chain:
    """Follow CNAMEs from `name` through the answer section to the records of `rtype`;
    BadMessage for a loop or a chain over 16 links."""
    owners: list[str] = []
    while True:
        found = message.records(name, rtype)
        if found or rtype == CNAME:
            return Chain(cnames=tuple(owners), answer=tuple(found))
        cname = message.records(name, CNAME)
        if not cname:
            return Chain(cnames=tuple(owners), answer=())
        owners.append(name.rstrip("."))
        if len(owners) > _MAX_CHAIN or name in owners[:-1]:
            raise BadMessage(f"CNAME chain from {owners[0]} loops or is too long")
        target = cname[0].value
        assert isinstance(target, str)
        name = target


def parse(wire: bytes, *, question_only: bool = False) -> Message:
    """Read a DNS message; `question_only`: stop after the question (a truncated reply may be
    cut anywhere after it). BadMessage when the bytes do not make one."""
    try:
        return _parse(wire, question_only)
    except (struct.error, IndexError, UnicodeError) as exc:
        raise BadMessage(f"malformed DNS message ({len(wire)} octets): {exc}") from None


def _parse(wire: bytes, question_only: bool) -> Message:
    qid, flags, qd, an, ns, ar = _HEADER.unpack_from(wire)
    at = _HEADER.size
    question = []
    for _ in range(qd):
        name, at = _name(wire, at)
        rtype, rclass = _QUESTION.unpack_from(wire, at)
        at += _QUESTION.size
        question.append((name, rtype))
    rcode = flags & 0xF
    if question_only:
        return Message(id=qid, flags=flags, rcode=rcode, question=tuple(question), size=len(wire))
    sections: list[list[Record]] = [[], [], []]
    payload = None
    for index, count in enumerate((an, ns, ar)):
        for _ in range(count):
            name, at = _name(wire, at)
            rtype, rclass, ttl, length = _RR.unpack_from(wire, at)
            at += _RR.size
            end = at + length
            if end > len(wire):
                raise BadMessage("a record's data runs past the end of the message")
            if rtype == OPT and index == 2:
                payload = rclass
                rcode |= (ttl >> 24) << 4
            else:
                value = _value(wire, at, end, rtype)
                sections[index].append(Record(name, rtype, ttl, wire[at:end], value))
            at = end
    if at != len(wire):
        raise BadMessage(f"{len(wire) - at} octets after the last record")
    return Message(
        id=qid,
        flags=flags,
        rcode=rcode,
        question=tuple(question),
        answer=tuple(sections[0]),
        authority=tuple(sections[1]),
        additional=tuple(sections[2]),
        edns_payload=payload,
        size=len(wire),
    )


def _value(wire: bytes, at: int, end: int, rtype: int) -> str | int | None:
    if rtype == A and end - at == 4:
        return socket.inet_ntop(socket.AF_INET, wire[at:end])
    if rtype == AAAA and end - at == 16:
        return socket.inet_ntop(socket.AF_INET6, wire[at:end])
    if rtype in (A, AAAA):
        raise BadMessage(f"an {'A' if rtype == A else 'AAAA'} record of {end - at} octets")
    if rtype in (CNAME, NS):
        name, after = _name(wire, at)
        if after != end:
            raise BadMessage("a name record's data is not one name")
        return name
    if rtype == SOA:
        _, at = _name(wire, at)  # mname
        _, at = _name(wire, at)  # rname
        if end - at != 20:
            raise BadMessage("an SOA record of the wrong length")
        return int(_SOA_SERIAL.unpack_from(wire, at)[0])
    return None


def _name(wire: bytes, at: int) -> tuple[str, int]:
    """The (possibly compressed) name at `at`, as text, and the offset after it."""
    labels: list[str] = []
    after = -1
    length = 0
    lowest = at
    while True:
        size = wire[at]
        if size >= 0xC0:
            target = ((size & 0x3F) << 8) | wire[at + 1]
            if target >= lowest:  # pointers go strictly backwards: no loop
                raise BadMessage("a compression pointer that does not point backwards")
            if after < 0:
                after = at + 2
            at = lowest = target
            continue
        if size >= 0x40:
            raise BadMessage(f"an unknown label type 0x{size:02x}")
        at += 1
        if size == 0:
            break
        length += size + 1
        if length > 254:
            raise BadMessage("a name over 255 octets")
        labels.append(_label(wire[at : at + size]))
        at += size
    return ".".join(labels).lower() + ".", after if after >= 0 else at


def _label(raw: bytes) -> str:
    if _ALL_PLAIN.fullmatch(raw):
        return raw.decode("ascii")
    return "".join(chr(c) if c in _PLAIN else f"\\{c:03d}" for c in raw)


def _text(qname: bytes) -> str:
    return _name(qname, 0)[0]
