"""Peer text (issue 13, finding 4): escaped and bounded once, where it enters a result, and text
log lines whose fields are quoted. The end-to-end attacks (a CONNECTION_CLOSE reason in the
log, escape sequences in the table) are in tests/test_hostile_peers.py."""

from __future__ import annotations

import json
import logging

import pytest

from monitor.serve.logs import JsonFormatter, TextFormatter
from probes.base import ErrorKind, ProbeError
from probes.details import Certificate, DnsAnswer, HttpExchange, QuicExchange, details_json
from probes.errors import error
from probes.text import MAX_PEER_TEXT, peer_text


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("plain text, ünïcode ✓", "plain text, ünïcode ✓"),
        ("line\nforged", "line\\nforged"),
        ("cr\rtab\t", "cr\\rtab\\t"),
        ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
        ("nul\x00del\x7f", "nul\\x00del\\x7f"),
        ("c1\x9b2J", "c1\\x9b2J"),
        ("rtl\u202eevil", "rtl\\u202eevil"),
        ("sep\u2028x", "sep\\u2028x"),
        ("back\\slash", "back\\slash"),
    ],
)
def test_control_characters_become_visible_escapes(raw: str, shown: str) -> None:
    assert peer_text(raw) == shown


def test_cut_at_512_characters_and_idempotent() -> None:
    long = "\x1b" * 1000
    once = peer_text(long)
    assert len(once) == MAX_PEER_TEXT == 512 and once.endswith("…")
    assert peer_text(once) == once
    assert peer_text("x" * 512) == "x" * 512


def test_probe_errors_are_safe_however_made() -> None:
    direct = ProbeError(kind=ErrorKind.PROTOCOL_ERROR, message="bye\n2030-01-01 forged\x1b[2J")
    assert direct.message == "bye\\n2030-01-01 forged\\x1b[2J"
    assert error(ErrorKind.TIMEOUT, "a" * 600).message.endswith("…")


def test_details_peer_strings_are_safe() -> None:
    http = HttpExchange(
        http_version="2",
        status=200,
        tls_version="TLSv1.3",
        alpn="h2",
        alt_svc='h3=":443"\n',
        server="evil\x1b]52;c;ZXZpbA==\x07",
        body_bytes=0,
    )
    assert http.server == "evil\\x1b]52;c;ZXZpbA==\\x07" and http.alt_svc == 'h3=":443"\\n'
    quic = QuicExchange(
        http_version="3", status=200, alpn="h3", alt_svc=None, server="a\nb", body_bytes=0
    )
    assert quic.server == "a\\nb" and quic.alt_svc is None
    cert = Certificate(
        subject="CN=a\x1bb",
        issuer="CN=\u202eCA",
        sans=("x\ny", "ok.example"),
        not_after="2030-01-01T00:00:00Z",
        not_after_timestamp=0.0,
        fingerprint_sha256="00",
        serial="1",
    )
    assert (cert.subject, cert.issuer, cert.sans) == (
        "CN=a\\x1bb",
        "CN=\\u202eCA",
        ("x\\ny", "ok.example"),
    )
    dns = DnsAnswer(rcode="NOERROR", cname_chain=("a\x1b.example",))
    assert details_json(dns)["cname_chain"] == ["a\\x1b.example"]


def _record(msg: str, fields: dict[str, object]) -> logging.LogRecord:
    record = logging.LogRecord("dualstack.vantage", logging.WARNING, __file__, 1, msg, (), None)
    record.fields = fields
    return record


def test_text_log_fields_are_quoted_and_one_line() -> None:
    formatter = TextFormatter("%(levelname)s %(name)s: %(message)s")
    line = formatter.format(
        _record(
            "probe failed\nINFO forged: x",
            {
                "event": "probe_failed",
                "error": 'say "hi"\n2030 ERROR forged',
                "port": 9,
                "ok": None,
            },
        )
    )
    assert "\n" not in line
    assert line == (
        "WARNING dualstack.vantage: probe failed\\nINFO forged: x "
        'event="probe_failed" error="say \\"hi\\"\\n2030 ERROR forged" port=9 ok=None'
    )


def test_json_log_lines_stay_json() -> None:
    line = JsonFormatter().format(_record("m", {"error": "a\nb\x1b"}))
    assert "\n" not in line and json.loads(line)["error"] == "a\nb\x1b"
