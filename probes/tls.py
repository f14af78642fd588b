"""TLS handshake over TCP to the IP literal with the host name as SNI: timing and what is presented.

Reports version, cipher, ALPN, leaf fingerprint, SANs, issuer, expiry and the verification
verdict (system store plus the configured CA file). When verification fails, a second handshake
without verification records the certificate that was presented, so the difference can be shown.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from cryptography import x509

from probes.base import ErrorKind, Outcome, ProbeError, ProbeRequest, make_client_context
from probes.details import Certificate, TlsHandshake
from probes.errors import classify, error
from probes.kinds import NORMAL, NOT, SIG, Compared, Cost, Kind, register
from probes.netutil import (
    CLOSE_GRACE,
    abort_stream,
    announced_mss,
    close_stream,
    connect_seconds,
    connect_socket,
    open_stream,
    socket_announced_mss,
    socket_connect_seconds,
    wait_readable,
    wait_writable,
)
from probes.pmtu import Stalled, cut_if_stalled, with_blackhole_retry

_ENCODING_DER = 2  # _ssl.ENCODING_DER, not exported by the ssl module before 3.13


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


def _subject(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    return _dn(lambda: cert.subject)


def describe_certificate(der: bytes, chain: Sequence[bytes] = ()) -> Certificate | None:
    """What a leaf says, for showing and comparing, and from the verified `chain` (leaf
    first, root last) its intermediates and the trust anchor it verified to; None when it is
    not a certificate at all.

    Memoized by the bytes described (a pure function of them; a Certificate is immutable): an
    endpoint presents the same chain probe after probe, and parsing it with cryptography was a
    large share of a TLS probe's CPU. OpenSSL still verifies every handshake."""
    return _describe(der, tuple(chain))


@functools.lru_cache(maxsize=1024)
def _describe(der: bytes, chain: tuple[bytes, ...]) -> Certificate | None:
    try:
        cert = x509.load_der_x509_certificate(der)
        not_after = cert.not_valid_after_utc
        serial = cert.serial_number
        above = [_subject(c) for c in chain[1:]]
        orgs = cert.issuer.get_attributes_for_oid(x509.NameOID.ORGANIZATION_NAME)
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
        issuer_organization=str(orgs[0].value) if orgs else None,
        intermediates=tuple(above[:-1]),
        trust_anchor=above[-1] if above else None,
    )


def verified_chain(sslobj: ssl.SSLObject | ssl.SSLSocket) -> list[bytes]:
    """The chain OpenSSL verified, leaf to trust anchor, DER. Public from Python 3.13
    (`get_verified_chain`); 3.11 and 3.12 have the same method on the inner object."""
    get = getattr(sslobj, "get_verified_chain", None)
    if get is None:
        get = getattr(getattr(sslobj, "_sslobj", None), "get_verified_chain", None)
    if get is None:
        return []
    try:
        chain = get() or []
    except (ssl.SSLError, ValueError):
        return []
    return [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in chain]


def _session_details(writer: asyncio.StreamWriter, *, verified: bool) -> TlsHandshake:
    sslobj: ssl.SSLObject | None = writer.get_extra_info("ssl_object")
    if sslobj is None:
        return TlsHandshake(verified=False)
    return _details(sslobj, verified=verified)


def _details(sslobj: ssl.SSLObject | ssl.SSLSocket, *, verified: bool) -> TlsHandshake:
    cipher = sslobj.cipher()
    der = sslobj.getpeercert(binary_form=True)
    chain = verified_chain(sslobj) if verified and der else []
    return TlsHandshake(
        verified=verified,
        tls_version=sslobj.version(),
        cipher=cipher[0] if cipher else None,
        alpn=sslobj.selected_alpn_protocol(),
        certificate=describe_certificate(der, chain) if der else None,
    )


def _context(req: ProbeRequest, alpn: tuple[str, ...]) -> ssl.SSLContext:
    try:
        return make_client_context(req.env.ssl_cafile, alpn, req.target.tls)
    except (OSError, ssl.SSLError) as exc:  # unreadable CA file, client cert or key
        raise HandshakeFailed(
            error(ErrorKind.CLIENT_CONFIG, f"TLS client setup: {exc}"), {}, None
        ) from exc


async def _failure(
    req: ProbeRequest,
    alpn: tuple[str, ...],
    exc: BaseException,
    phases: dict[str, float],
    announced: int | None,
    cut: asyncio.Timeout | None,
) -> Stalled | HandshakeFailed:
    """What a failed handshake raises: Stalled when it was cut, else HandshakeFailed, with
    what the peer presented when only the verification failed (a second, unverified look)."""
    if cut is not None and cut.expired():
        return Stalled(mss=announced, phases=phases, details=None)
    seen = TlsHandshake(verified=False)
    if isinstance(exc, ssl.SSLCertVerificationError):
        seen = await _unverified_details(req, alpn)
    return HandshakeFailed(_handshake_error(exc), phases, seen)


async def handshake(
    req: ProbeRequest,
    alpn: tuple[str, ...],
    *,
    mss: int | None = None,
    cut_at: float | None = None,
) -> Handshake:
    """TCP connect then TLS handshake; raises HandshakeFailed with the error as data, and
    Stalled when the handshake has not completed by clock time `cut_at` (None: no cut).
    `mss`: the segment size to announce (None: the kernel's)."""
    clock = req.env.clock
    ctx = _context(req, alpn)
    t0 = clock()
    try:
        reader, writer = await open_stream(req, mss=mss)
    except OSError as exc:
        raise HandshakeFailed(classify(exc), {"connect": clock() - t0}, None) from exc
    t1 = clock()
    connect = connect_seconds(writer, t1 - t0)  # before TLS: the socket's own handshake RTT
    cut: asyncio.Timeout | None = None
    try:
        delay = None if cut_at is None else max(0.0, cut_at - t1)
        async with cut_if_stalled(writer.get_extra_info("socket"), delay) as cut:
            await writer.start_tls(
                ctx, server_hostname=req.target.sni, ssl_handshake_timeout=req.timeout
            )
    except (OSError, ssl.SSLError, asyncio.IncompleteReadError) as exc:
        phases = {"connect": connect, "tls": clock() - t1}
        announced = announced_mss(writer)
        abort_stream(writer)
        raise await _failure(req, alpn, exc, phases, announced, cut) from exc
    t2 = clock()
    details = _session_details(writer, verified=True)
    return Handshake(
        reader=reader, writer=writer, connect_seconds=connect, tls_seconds=t2 - t1, details=details
    )


async def bare_handshake(
    req: ProbeRequest,
    alpn: tuple[str, ...],
    *,
    mss: int | None = None,
    cut_at: float | None = None,
) -> tuple[float, float, TlsHandshake]:
    """handshake() for a probe that sends nothing after it: (connect, tls seconds, details).
    A bare non-blocking socket whose handshake and close the loop only waits on: no stream and
    no TLS transport, whose 256 KiB buffer per connection in flight set the vantage's peak RSS
    (10,000 jobs: 194 MiB with streams, 138 MiB without). Fails as handshake() does."""
    clock = req.env.clock
    ctx = _context(req, alpn)
    t0 = clock()
    try:
        sock = await connect_socket(req, mss=mss, nodelay=True)
    except OSError as exc:
        raise HandshakeFailed(classify(exc), {"connect": clock() - t0}, None) from exc
    t1 = clock()
    connect = socket_connect_seconds(sock, t1 - t0)
    cut: asyncio.Timeout | None = None
    tls: ssl.SSLSocket | None = None
    try:
        tls = ctx.wrap_socket(sock, server_hostname=req.target.sni, do_handshake_on_connect=False)
        async with cut_if_stalled(tls, None if cut_at is None else max(0.0, cut_at - t1)) as cut:
            await _until_done(tls, tls.do_handshake)
    except (OSError, ssl.SSLError) as exc:
        phases = {"connect": connect, "tls": clock() - t1}
        announced = socket_announced_mss(tls or sock)
        (tls or sock).close()
        raise await _failure(req, alpn, exc, phases, announced, cut) from exc
    except BaseException:  # cancelled (the probe's deadline): the socket is ours to close
        (tls or sock).close()
        raise
    t2 = clock()
    try:
        details = _details(tls, verified=True)
    finally:
        await _close(tls)
    return connect, t2 - t1, details


async def _until_done(tls: ssl.SSLSocket, step: Callable[[], object]) -> None:
    """A TLS step (handshake, shutdown) on a non-blocking socket, retried whenever the socket
    is ready for what OpenSSL waits for."""
    while True:
        try:
            step()
            return
        except ssl.SSLWantReadError:
            await wait_readable(tls)
        except ssl.SSLWantWriteError:
            await wait_writable(tls)


def _handshake_error(exc: BaseException) -> ProbeError:
    """classify(), with a peer that hangs up mid-handshake named as asyncio's TLS transport
    names it (connection_reset), whichever way the handshake was driven."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return classify(ConnectionResetError())
    return classify(exc)


async def _close(tls: ssl.SSLSocket) -> None:
    """Our close_notify, then the peer's, read with whatever it sent after the handshake (TLS
    1.3 session tickets), for at most CLOSE_GRACE: a socket closed with bytes unread, or before
    they arrive, answers them with a reset. A peer that resets or never answers changes
    nothing already measured."""
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await _until_done(tls, tls.unwrap)
    except (OSError, ValueError):  # TimeoutError and ssl.SSLError are OSErrors
        pass
    finally:
        tls.close()


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
    async def attempt(mss: int | None, cut_at: float | None) -> Outcome:
        return await _probe(req, mss, cut_at)

    return await with_blackhole_retry(req, attempt, "the TLS handshake")


async def _probe(req: ProbeRequest, mss: int | None, cut_at: float | None) -> Outcome:
    try:
        connect, tls, details = await bare_handshake(
            req, req.target.tls.alpn, mss=mss, cut_at=cut_at
        )
    except HandshakeFailed as failed:
        return Outcome(
            success=False, error=failed.error, phases=failed.phases, details=failed.details
        )
    return Outcome(success=True, phases={"connect": connect, "tls": tls}, details=details)


def _cert(d: TlsHandshake) -> Certificate | None:
    return d.certificate


KIND = register(
    Kind(
        name="tls",
        probe=probe,
        summary="TLS handshake with each address: version, ALPN and the certificate presented",
        details=(TlsHandshake,),
        compared={
            TlsHandshake: (
                Compared[TlsHandshake]("tls_version", lambda d: d.tls_version, SIG),
                Compared[TlsHandshake]("alpn", lambda d: d.alpn, SIG),
                # ACM issues from several intermediates under one root and rotates them: which one
                # signed is normal; the root, the CA's organisation, the names and trust count.
                Compared[TlsHandshake](
                    "certificate.trust_anchor",
                    lambda d: c.trust_anchor if (c := _cert(d)) else None,
                    SIG,
                ),
                Compared[TlsHandshake](
                    "certificate.issuer_organization",
                    lambda d: c.issuer_organization if (c := _cert(d)) else None,
                    SIG,
                ),
                Compared[TlsHandshake](
                    "certificate.intermediate",
                    lambda d: (c.issuer, c.intermediates) if (c := _cert(d)) else None,
                    NORMAL,
                    ("certificate.issuer", "certificate.intermediates"),
                ),
                Compared[TlsHandshake](
                    "certificate.sans", lambda d: c.sans if (c := _cert(d)) else None, SIG
                ),
                Compared[TlsHandshake](
                    "certificate.verified", lambda d: d.verified, SIG, ("verified",)
                ),
                Compared[TlsHandshake](
                    "certificate.fingerprint_sha256",
                    lambda d: c.fingerprint_sha256 if (c := _cert(d)) else None,
                    NORMAL,
                    ("certificate.fingerprint_sha256", "certificate.serial"),
                ),
                Compared[TlsHandshake](
                    "certificate.not_after",
                    lambda d: c.not_after if (c := _cert(d)) else None,
                    NORMAL,
                    ("certificate.not_after", "certificate.not_after_timestamp"),
                ),
                # The subject of an AWS leaf is its first name; the SANs are what a client checks.
                Compared[TlsHandshake](
                    "certificate.subject", lambda d: c.subject if (c := _cert(d)) else None, NOT
                ),
                Compared[TlsHandshake]("cipher", lambda d: d.cipher, NORMAL),
            ),
        },
        phases=("connect", "tls"),
        transport=True,
        cost=Cost.HEAVY,
        sampled=True,
        per_address=True,
    )
)
