"""What the HTTP probes (http2 over TCP, http3 over QUIC) share: the request's identity, the
body bound and the expected-status rule. No protocol library is imported here."""

from __future__ import annotations

from probes.base import VERSION, ErrorKind, ProbeError, ProbeRequest
from probes.errors import error

MAX_BODY = 1 << 20
"""Body bytes read at most; the rest is not needed to judge the response."""
USER_AGENT = f"dualstack-monitor/{VERSION}"


def authority(req: ProbeRequest) -> str:
    """`:authority` / Host: the target's name (bracketed when an IPv6 literal), port if not 443."""
    host = req.target.host
    if ":" in host:  # an IPv6 literal target
        host = f"[{host}]"
    return host if req.target.port == 443 else f"{host}:{req.target.port}"


def status_error(req: ProbeRequest, status: int | None, protocol: str) -> ProbeError | None:
    """No response is a protocol error; a status outside `expect_status` (when set) fails."""
    if status is None:
        return error(ErrorKind.PROTOCOL_ERROR, f"{protocol}: no response")
    expect = req.target.http.expect_status
    if expect and status not in expect:
        return error(ErrorKind.HTTP_STATUS, f"status {status} not in {list(expect)}")
    return None
