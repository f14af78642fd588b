"""TLS handshake over TCP to the IP literal with the host name as SNI: timing and what is presented.

Reports version, cipher, ALPN, leaf fingerprint, SANs, issuer, expiry and the verification
verdict (system store plus the configured CA file). When verification fails, a second handshake
without verification records the certificate that was presented, so the difference can be shown.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections.abc import Callable
from dataclasses import dataclass

from cryptography import x509

from probes.base import ErrorKind, Outcome, ProbeError, ProbeRequest, make_client_context
from probes.details import Certificate, TlsHandshake
from probes.errors import classify, error
from probes.netutil import abort_stream, close_stream, open_stream


@dataclass(frozen=True, slots=True, kw_only=True)
class Handshake:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    connect_seconds: float
    tls_seconds: float
    details: TlsHandshake


class HandshakeFailed(Exception):
    """The TCP connect or TLS handshake failed; carries the timings and details seen so far."""

    def __init__(
        self, error: ProbeError, phases: dict[str, float], details: TlsHandshake | None
    ) -> None:
        super().__init__(error.message)
        self.error = error
        self.phases = phases
        self.details = details


def _sans(cert: x509.Certificate) -> list[str]:
    """DNS names and IP addresses of the subjectAltName; none when it is absent or does not
    parse (a peer's malformed extension is what it presented, not a crash)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (x509.ExtensionNotFound, ValueError):
        return []
    return sorted(
        [str(n) for n in san.get_values_for_type(x509.DNSName)]
        + [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    )


def _dn(name: Callable[[], x509.Name]) -> str:
    try:
        return name().rfc4514_string()
    except ValueError:  # an attribute the parser refuses
        return "(unparsable name)"


def describe_certificate(der: bytes) -> Certificate | None:
    """What a leaf says, for showing and comparing; None when it is not a certificate at all."""
    try:
        cert = x509.load_der_x509_certificate(der)
        not_after = cert.not_valid_after_utc
        serial = cert.serial_number
    except ValueError:
        return None
    return Certificate(
        subject=_dn(lambda: cert.subject),
        issuer=_dn(lambda: cert.issuer),
        sans=tuple(_sans(cert)),
        not_after=not_after.isoformat().replace("+00:00", "Z"),
        not_after_timestamp=not_after.timestamp(),
        fingerprint_sha256=hashlib.sha256(der).hexdigest(),
        serial=format(serial, "x"),
    )


def _session_details(writer: asyncio.StreamWriter, *, verified: bool) -> TlsHandshake:
    sslobj: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
    if sslobj is None:
        return TlsHandshake(verified=False)
    cipher = sslobj.cipher()
    der = sslobj.getpeercert(binary_form=True)
    return TlsHandshake(
        verified=verified,
        tls_version=sslobj.version(),
        cipher=cipher[0] if cipher else None,
        alpn=sslobj.selected_alpn_protocol(),
        certificate=describe_certificate(der) if der else None,
    )


async def handshake(req: ProbeRequest, alpn: tuple[str, ...]) -> Handshake:
    """TCP connect then TLS handshake; raises HandshakeFailed with the error as data."""
    clock = req.env.clock
    try:
        ctx = make_client_context(req.env.ssl_cafile, alpn, req.target.tls)
    except (OSError, ssl.SSLError) as exc:  # unreadable CA file, client cert or key
        raise HandshakeFailed(
            error(ErrorKind.CLIENT_CONFIG, f"TLS client setup: {exc}"), {}, None
        ) from exc
    t0 = clock()
    try:
        reader, writer = await open_stream(req)
    except OSError as exc:
        raise HandshakeFailed(classify(exc), {"connect": clock() - t0}, None) from exc
    t1 = clock()
    try:
        await writer.start_tls(
            ctx, server_hostname=req.target.sni, ssl_handshake_timeout=req.timeout
        )
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        phases = {"connect": t1 - t0, "tls": clock() - t1}
        abort_stream(writer)
        seen = TlsHandshake(verified=False)
        if isinstance(exc, ssl.SSLCertVerificationError):
            seen = await _unverified_details(req, alpn)
        raise HandshakeFailed(classify(exc), phases, seen) from exc
    t2 = clock()
    details = _session_details(writer, verified=True)
    return Handshake(
        reader=reader, writer=writer, connect_seconds=t1 - t0, tls_seconds=t2 - t1, details=details
    )


async def _unverified_details(req: ProbeRequest, alpn: tuple[str, ...]) -> TlsHandshake:
    """What the peer presents, without judging it: only for showing a failed verification."""
    ctx = make_client_context(req.env.ssl_cafile, alpn, req.target.tls, verify=False)
    try:
        _reader, writer = await open_stream(req, ssl_context=ctx, server_hostname=req.target.sni)
    except (OSError, ssl.SSLError):
        return TlsHandshake(verified=False)
    try:
        return _session_details(writer, verified=False)
    finally:
        await close_stream(writer)


async def probe(req: ProbeRequest) -> Outcome:
    try:
        hs = await handshake(req, req.target.tls.alpn)
    except HandshakeFailed as failed:
        return Outcome(
            success=False, error=failed.error, phases=failed.phases, details=failed.details
        )
    await close_stream(hs.writer)
    return Outcome(
        success=True,
        phases={"connect": hs.connect_seconds, "tls": hs.tls_seconds},
        details=hs.details,
    )
