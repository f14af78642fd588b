"""What the HTTP probes (http2 over TCP, http3 over QUIC) share: the request's identity, the
body bound, the caps on response headers and the expected-status rule. No protocol library is
imported here."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from probes.base import VERSION, ErrorKind, ProbeError, ProbeRequest, ProbeResult
from probes.details import HttpExchange, QuicExchange
from probes.errors import error
from probes.kinds import KindMetric

MAX_BODY = 1 << 20
"""Body bytes read at most; the rest is not needed to judge the response."""
USER_AGENT = f"dualstack-monitor/{VERSION}"
MAX_HEADER_LIST_SIZE = 65536
"""Response header section at most, in bytes as RFC 9113 and RFC 9114 count it (name + value +
32 per field), decoded; HTTP/2's hpack enforces the same figure, HTTP/1.1 a tighter one."""
MAX_HEADERS = 256
"""Response header fields at most (a response of AWS has about twenty)."""
FIELD_OVERHEAD = 32
"""What RFC 9113 (6.5.2) and RFC 9114 (4.2.2) add per field when sizing a header section."""


class ResponseRefused(Exception):
    """The response broke a rule the probe enforces (a header cap, a malformed status): the
    probe reports it as protocol_error."""


def check_headers(headers: Iterable[tuple[bytes | str, bytes | str]]) -> None:
    """Raise ResponseRefused when a decoded header section is over MAX_HEADERS fields or
    MAX_HEADER_LIST_SIZE bytes."""
    count = size = 0
    for name, value in headers:
        count += 1
        size += len(name) + len(value) + FIELD_OVERHEAD
    if count > MAX_HEADERS:
        raise ResponseRefused(f"response has {count} header fields (at most {MAX_HEADERS})")
    if size > MAX_HEADER_LIST_SIZE:
        raise ResponseRefused(
            f"response headers are {size} bytes decoded (at most {MAX_HEADER_LIST_SIZE})"
        )


def parse_status(value: bytes | str | None) -> int:
    """The three digits of a final status (RFC 9110, 15): anything else is ResponseRefused."""
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if text is None or len(text) != 3 or not text.isdigit() or not 100 <= int(text) <= 599:
        raise ResponseRefused(f"malformed :status {text!r}")
    return int(text)


def authority(req: ProbeRequest) -> str:
    """`:authority` / Host: the target's name (bracketed when an IPv6 literal), port if not 443."""
    host = req.target.host
    if ":" in host:  # an IPv6 literal target
        host = f"[{host}]"
    return host if req.target.port == 443 else f"{host}:{req.target.port}"


def status_error(req: ProbeRequest, status: int | None, protocol: str) -> ProbeError | None:
    """No response is a protocol error; a status outside `expect_status` (when set) fails."""
    if status is None:
        return error(ErrorKind.PROTOCOL_ERROR, f"{protocol}: no response", "ttfb")
    expect = req.target.http.expect_status
    if expect and status not in expect:
        # the status line is the first byte's answer: judged wrong in ttfb, whatever followed
        return error(ErrorKind.HTTP_STATUS, f"status {status} not in {list(expect)}", "ttfb")
    return None


def status_class(status: int | None) -> str | None:
    """200 -> "2xx": what parity holds against the other family."""
    return f"{status // 100}xx" if status is not None else None


HTTP_VERSIONS = ("1.1", "2", "3")
"""The versions the http_version label may take: a closed list, never a peer's text."""


def _status(r: ProbeResult) -> float | None:
    return r.details.status if isinstance(r.details, HttpExchange | QuicExchange) else None


def _version(r: ProbeResult) -> Mapping[str, float] | None:
    d = r.details
    if isinstance(d, HttpExchange | QuicExchange) and d.status is not None:
        # A value we negotiated, checked against a closed list: never peer text.
        return {d.http_version: 1.0} if d.http_version in HTTP_VERSIONS else None
    return None


HTTP_METRICS = (
    KindMetric(
        name="dualstack_http_status_code",
        help="HTTP status of the last response over this family.",
        value=_status,
    ),
    KindMetric(
        name="dualstack_http_version_info",
        help="1 for the HTTP version negotiated over this family.",
        value=_version,
        by="version",
    ),
)
"""The metrics of the HTTP kinds (http2, http3): one declaration each, over both kinds."""
