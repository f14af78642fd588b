"""TLS handshake over TCP to the IP literal with the host name as SNI: timing and what is presented.

Reports version, cipher, ALPN, leaf fingerprint, SANs, issuer, expiry and the verification
verdict (system store plus the configured CA file). When verification fails, a second handshake
without verification records the certificate that was presented, so the difference can be shown.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import socket
import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from cryptography import x509

from probes import stamp
from probes.adapters.ssl import verified_chain
from probes.base import ErrorKind, Outcome, ProbeError, ProbeRequest, passed
from probes.details import Certificate, TlsHandshake
from probes.errors import classify, error
from probes.kinds import NORMAL, NOT, SIG, Compared, Cost, Kind, KindMetric, register
from probes.netutil import (
    CLOSE_GRACE,
    announced_mss,
    connect_seconds,
    connect_socket,
    wait_readable,
    wait_writable,
)
from probes.pmtu import Stalled, cut_if_stalled, with_blackhole_retry
from probes.trust import client_context

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Handshake:
    conn: ssl.SSLSocket
    """The connection, non-blocking: read it with receive(), write it with send_all(), end it
    with close()."""
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


def _context(req: ProbeRequest, alpn: tuple[str, ...], *, verify: bool = True) -> ssl.SSLContext:
    try:
        return client_context(req.env.ssl_cafile, alpn, req.target.tls, verify=verify)
    except (OSError, ssl.SSLError) as exc:  # unreadable CA file, client cert or key
        raise HandshakeFailed(
            error(ErrorKind.CLIENT_CONFIG, f"TLS client setup: {exc}"), {}, None
        ) from exc


async def start_tls(sock: socket.socket, ctx: ssl.SSLContext, server_name: str) -> ssl.SSLSocket:
    """The TLS handshake on a connected non-blocking socket, driven by the running loop's
    readiness callbacks. On failure or cancellation the socket is closed and the error raised.

    A bare socket, not a stream or asyncio's TLS transport: the transport's 256 KiB buffer per
    connection in flight set a vantage's peak RSS."""
    conn = _wrap(sock, ctx, server_name)
    await _shake(conn)
    return conn


def _wrap(sock: socket.socket, ctx: ssl.SSLContext, server_name: str) -> ssl.SSLSocket:
    """`sock` as a TLS socket, its handshake not started (`sock` is detached from its fd)."""
    try:
        return ctx.wrap_socket(sock, server_hostname=server_name, do_handshake_on_connect=False)
    except BaseException:
        sock.close()
        raise


async def _shake(conn: ssl.SSLSocket) -> float | None:
    """The handshake; the time it waited on the peer by the kernel's clock (stamp.PeerTime),
    None where the kernel gave no figure for each of its round trips (one in TLS 1.3 or a
    resumption, two in a full TLS 1.2 handshake)."""
    try:
        with stamp.PeerTime(conn) as waited:
            await _until_done(conn, conn.do_handshake, waited)
            rounds = 1 if conn.version() == "TLSv1.3" or conn.session_reused else 2
            return waited.seconds(rounds)
    except BaseException:  # failed or cancelled (the probe's deadline): ours to close
        conn.close()
        raise


async def handshake(
    req: ProbeRequest,
    alpn: tuple[str, ...],
    *,
    mss: int | None = None,
    cut_at: float | None = None,
) -> Handshake:
    """TCP connect then TLS handshake; raises HandshakeFailed with the error as data, and
    Stalled when the handshake has not completed by clock time `cut_at` (None: no cut).
    `mss`: the segment size to announce (None: the kernel's). The caller ends the connection
    with close()."""
    clock = req.env.clock
    ctx = _context(req, alpn)
    t0 = clock()
    try:
        sock = await connect_socket(req, mss=mss, nodelay=True)
    except OSError as exc:
        raise HandshakeFailed(classify(exc), {"connect": clock() - t0}, None) from exc
    t1 = clock()
    connect = connect_seconds(sock, t1 - t0)
    passed("connect")
    announced = announced_mss(sock)  # read while the socket is open
    cut: asyncio.Timeout | None = None
    try:
        conn = _wrap(sock, ctx, req.target.sni)
        # cut_if_stalled reads the socket's unread bytes: the TLS socket's, which owns the fd now
        async with cut_if_stalled(conn, None if cut_at is None else max(0.0, cut_at - t1)) as cut:
            waited = await _shake(conn)
    except (OSError, ssl.SSLError) as exc:
        phases = {"connect": connect, "handshake": clock() - t1}
        raise await _failure(req, alpn, exc, phases, announced, cut) from exc
    t2 = clock()
    # the kernel's figure, never more than what we saw (as connect_seconds)
    shake = waited if waited is not None and waited <= t2 - t1 else t2 - t1
    passed("handshake")
    try:
        details = _details(conn, verified=True)
    except BaseException:
        conn.close()
        raise
    return Handshake(conn=conn, connect_seconds=connect, tls_seconds=shake, details=details)


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


async def _unverified_details(req: ProbeRequest, alpn: tuple[str, ...]) -> TlsHandshake:
    """What the peer presents, without judging it: only for showing a failed verification."""
    try:
        ctx = _context(req, alpn, verify=False)
        sock = await connect_socket(req, nodelay=True)
        conn = await start_tls(sock, ctx, req.target.sni)
    except (HandshakeFailed, OSError):  # ssl.SSLError is an OSError
        return TlsHandshake(verified=False)
    try:
        return _details(conn, verified=False)
    finally:
        await close(conn)


async def _until_done(
    conn: ssl.SSLSocket, step: Callable[[], T], waited: stamp.PeerTime | None = None
) -> T:
    """A TLS step (handshake, read, write, shutdown) on a non-blocking socket, retried whenever
    the socket is ready for what OpenSSL waits for; what the step returned. `waited` is told
    of each wait for the peer."""
    while True:
        try:
            return step()
        except ssl.SSLWantReadError:
            if waited is not None:
                waited.waiting()
            await wait_readable(conn)
            if waited is not None:
                waited.arrived()
        except ssl.SSLWantWriteError:
            await wait_writable(conn)


async def receive(conn: ssl.SSLSocket, size: int = 65536) -> bytes:
    """Up to `size` bytes of what the peer sent once it sends any; b"" when it has closed."""
    return await _until_done(conn, functools.partial(conn.recv, size))


async def send_all(conn: ssl.SSLSocket, data: bytes) -> None:
    """All of `data`, waiting whenever the socket's buffer is full."""
    view = memoryview(data)
    while view:
        view = view[await _until_done(conn, functools.partial(conn.send, view)) :]


def _handshake_error(exc: BaseException) -> ProbeError:
    """classify(), with a peer that hangs up mid-handshake named connection_reset (as asyncio's
    TLS transport names it)."""
    if isinstance(exc, ssl.SSLEOFError | ssl.SSLZeroReturnError):
        return classify(ConnectionResetError())
    return classify(exc)


async def close(conn: ssl.SSLSocket) -> None:
    """Our close_notify, then the peer's, read with whatever it sent after the handshake (TLS
    1.3 session tickets), for at most CLOSE_GRACE: a socket closed with bytes unread, or before
    they arrive, answers them with a reset. A peer that resets or never answers changes
    nothing already measured."""
    if conn.fileno() < 0:  # already closed (a cut connection)
        return
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await _until_done(conn, conn.unwrap)
    except (OSError, ValueError):  # TimeoutError and ssl.SSLError are OSErrors
        pass
    finally:
        conn.close()


async def probe(req: ProbeRequest) -> Outcome:
    async def attempt(mss: int | None, cut_at: float | None) -> Outcome:
        return await _probe(req, mss, cut_at)

    return await with_blackhole_retry(req, attempt, "the TLS handshake")


async def _probe(req: ProbeRequest, mss: int | None, cut_at: float | None) -> Outcome:
    try:
        hs = await handshake(req, req.target.tls.alpn, mss=mss, cut_at=cut_at)
    except HandshakeFailed as failed:
        return Outcome(
            success=False, error=failed.error, phases=failed.phases, details=failed.details
        )
    await close(hs.conn)  # nothing is sent: the handshake is the probe
    return Outcome(
        success=True,
        phases={"connect": hs.connect_seconds, "handshake": hs.tls_seconds},
        details=hs.details,
    )


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
        phases=("connect", "handshake"),
        cost=Cost.HEAVY,
        sampled=True,
        metrics=(
            KindMetric(
                name="dualstack_tls_cert_not_after_timestamp_seconds",
                help="Expiry (Unix time) of the leaf certificate presented over this family.",
                value=lambda r: (
                    c.not_after_timestamp
                    if isinstance(r.details, TlsHandshake) and (c := _cert(r.details))
                    else None
                ),
            ),
        ),
    )
)
