"""probes/dnswire.py against dnspython, the reference codec: what we send dnspython reads as the
question we meant, what dnspython writes (compressed names, EDNS, every section) we read as it
does, and bytes that make no message are BadMessage, never an exception of another kind."""

from __future__ import annotations

import dns.edns
import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest

from probes import dnswire


def reply_to(q: dnswire.Query, *rrsets: dns.rrset.RRset, **kw: object) -> dns.message.Message:
    response = dns.message.make_response(dns.message.from_wire(q.wire))
    response.answer.extend(rrsets)
    for key, value in kw.items():
        setattr(response, key, value)
    return response


def test_a_query_is_the_question_dnspython_reads() -> None:
    q = dnswire.query("WWW.Example.com", dnswire.AAAA, payload=4096, do=True)
    theirs = dns.message.from_wire(q.wire)
    assert theirs.id == q.id and theirs.flags & dns.flags.RD
    assert theirs.question[0].name.to_text() == "WWW.Example.com."
    assert theirs.question[0].rdtype == dns.rdatatype.AAAA
    assert theirs.payload == 4096 and theirs.ednsflags & dns.flags.DO
    assert q.name == "www.example.com."
    plain = dns.message.from_wire(
        dnswire.query("example.com.", dnswire.SOA, rd=False, payload=None).wire
    )
    assert plain.edns == -1 and not plain.flags & dns.flags.RD


@pytest.mark.parametrize("name", ["a..b", "x" * 64 + ".com", ".".join(["abcdefghi"] * 26)])
def test_a_name_that_is_no_dns_name_is_a_value_error(name: str) -> None:
    with pytest.raises(ValueError, match="not a DNS name"):
        dnswire.query(name, dnswire.A)


def test_an_answer_with_a_chain_reads_as_dnspython_reads_it() -> None:
    q = dnswire.query("alias.example.com", dnswire.AAAA)
    theirs = reply_to(
        q,
        dns.rrset.from_text("alias.example.com.", 60, "IN", "CNAME", "Mid.example.com."),
        dns.rrset.from_text("mid.example.com.", 60, "IN", "CNAME", "both.example.com."),
        dns.rrset.from_text("both.example.com.", 30, "IN", "AAAA", "2001:db8::1", "::1"),
    )
    theirs.flags |= dns.flags.AA
    ours = dnswire.parse(theirs.to_wire())  # dnspython compresses the names
    assert ours.answers_to(q) and ours.authoritative and not ours.truncated
    assert ours.rcode == dnswire.NOERROR and ours.edns_payload == theirs.payload
    chain = dnswire.chain(ours, q.name, dnswire.AAAA)
    read = dns.message.from_wire(theirs.to_wire())
    assert isinstance(read, dns.message.QueryMessage)
    expected = read.resolve_chaining()
    assert chain.cnames == tuple(str(r.name).rstrip(".").lower() for r in expected.cnames)
    assert expected.answer is not None
    assert sorted(str(r.value) for r in chain.answer) == sorted(r.address for r in expected.answer)


def test_soa_serial_ns_targets_and_other_types() -> None:
    q = dnswire.query("example.com", dnswire.SOA)
    theirs = reply_to(
        q,
        dns.rrset.from_text(
            "example.com.", 60, "IN", "SOA", "ns.example.com. h.example.com. 42 1 2 3 4"
        ),
        dns.rrset.from_text("example.com.", 60, "IN", "NS", "ns1.example.com.", "ns2.example.net."),
        dns.rrset.from_text("example.com.", 60, "IN", "TXT", '"hello"'),
    )
    ours = dnswire.parse(theirs.to_wire())
    assert [r.value for r in ours.records("example.com.", dnswire.SOA)] == [42]
    assert sorted(str(r.value) for r in ours.records("example.com.", dnswire.NS)) == [
        "ns1.example.com.",
        "ns2.example.net.",
    ]
    txt = ours.records("example.com.", dns.rdatatype.TXT)
    assert [r.data for r in txt] == [b"\x05hello"] and txt[0].value is None


def test_extended_rcode_and_rcodes_without_a_question() -> None:
    q = dnswire.query("example.com", dnswire.A)
    theirs = reply_to(q)
    theirs.set_rcode(dns.rcode.BADVERS)
    assert dnswire.rcode_text(dnswire.parse(theirs.to_wire()).rcode) == "BADVERS"
    refused = reply_to(q)
    refused.set_rcode(dns.rcode.REFUSED)
    refused.question = []
    assert dnswire.parse(refused.to_wire()).answers_to(q)
    other = dnswire.parse(reply_to(dnswire.query("example.net", dnswire.A)).to_wire())
    assert not other.answers_to(q)  # another question: not ours


@pytest.mark.parametrize(
    ("wire", "why"),
    [
        (b"\x00\x01", "malformed"),
        # a question whose name points at itself: a loop
        (b"\x00\x01\x81\x80\x00\x01\x00\x00\x00\x00\x00\x00\xc0\x0c\x00\x01\x00\x01", "backwards"),
        # an answer whose data runs past the end
        (
            b"\x00\x01\x81\x80\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x09\x7f",
            "past the end",
        ),
        # an A record of 3 octets
        (
            b"\x00\x01\x81\x80\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x03\x7f\x00\x00",
            "A record of 3",
        ),
        (b"\x00\x01\x81\x80" + b"\x00" * 8 + b"junk", "after the last record"),
    ],
)
def test_bytes_that_make_no_message_are_bad_message(wire: bytes, why: str) -> None:
    with pytest.raises(dnswire.BadMessage, match=why):
        dnswire.parse(wire)


def test_a_cname_loop_is_bad_message() -> None:
    q = dnswire.query("a.example.com", dnswire.A)
    theirs = reply_to(
        q,
        dns.rrset.from_text("a.example.com.", 60, "IN", "CNAME", "b.example.com."),
        dns.rrset.from_text("b.example.com.", 60, "IN", "CNAME", "a.example.com."),
    )
    with pytest.raises(dnswire.BadMessage, match="loops"):
        dnswire.chain(dnswire.parse(theirs.to_wire()), q.name, dnswire.A)


def test_a_label_with_odd_bytes_is_escaped() -> None:
    q = dnswire.query("example.com", dnswire.A)
    theirs = reply_to(
        q, dns.rrset.from_text("example.com.", 60, "IN", "CNAME", r"a\032b\.c.example.com.")
    )
    (record,) = dnswire.parse(theirs.to_wire()).answer
    assert record.value == "a\\032b\\046c.example.com."


def test_a_truncated_reply_is_read_to_its_question() -> None:
    q = dnswire.query("example.com", dns.rdatatype.TXT)
    theirs = reply_to(q)
    theirs.flags |= dns.flags.TC
    wire = theirs.to_wire() + b"\xde\xad"  # cut anywhere after the question
    ours = dnswire.parse(wire, question_only=True)
    assert ours.truncated and ours.answers_to(q)
