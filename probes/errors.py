"""The one place that turns exceptions from sockets, ssl, DNS and HTTP libraries into ProbeError.

Probes catch what they expect and call `classify`; anything unexpected becomes `internal_error`
in the shared handler, so a bug in one probe never stops the others.
"""

from __future__ import annotations

import dataclasses
import errno
import ssl

from probes.base import ErrorKind, ProbeError

# OpenSSL X509_V_ERR_* codes (x509_vfy.h) that say more than "untrusted".
_X509_EXPIRED = 10
_X509_NOT_YET_VALID = 9
_X509_HOSTNAME_MISMATCH = 62

_ERRNO_KINDS: dict[int, ErrorKind] = {
    errno.ECONNREFUSED: ErrorKind.CONNECT_REFUSED,
    errno.ECONNRESET: ErrorKind.CONNECTION_RESET,
    errno.ECONNABORTED: ErrorKind.CONNECTION_RESET,
    errno.EPIPE: ErrorKind.CONNECTION_RESET,
    errno.ENETUNREACH: ErrorKind.NETWORK_UNREACHABLE,
    errno.EADDRNOTAVAIL: ErrorKind.NETWORK_UNREACHABLE,
    errno.EHOSTUNREACH: ErrorKind.HOST_UNREACHABLE,
    errno.EHOSTDOWN: ErrorKind.HOST_UNREACHABLE,
    errno.ETIMEDOUT: ErrorKind.TIMEOUT,
    errno.EPERM: ErrorKind.NETWORK_UNREACHABLE,
    errno.EACCES: ErrorKind.NETWORK_UNREACHABLE,
}


def error(kind: ErrorKind, message: str, phase: str | None = None) -> ProbeError:
    return ProbeError(kind=kind, message=message, phase=phase)


def in_phase(err: ProbeError, phase: str) -> ProbeError:
    """`err` said to have happened in `phase`, unless it already says where."""
    return err if err.phase else dataclasses.replace(err, phase=phase)


def _said(what: str, reason: str) -> str:
    """`what (reason)`, unless OpenSSL's reason already says just that (no echo)."""
    return reason if what.lower() in reason.lower() else f"{what} ({reason})"


def classify(exc: BaseException) -> ProbeError:
    """Map an exception raised by I/O to the closed set of error kinds."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        # ssl.CertificateError raised by Python (not OpenSSL) carries no verify code
        code = getattr(exc, "verify_code", None)
        reason = getattr(exc, "verify_message", None) or str(exc)
        if code == _X509_EXPIRED:
            return error(ErrorKind.TLS_CERT_EXPIRED, _said("certificate has expired", reason))
        if code == _X509_HOSTNAME_MISMATCH:
            return error(ErrorKind.TLS_HOSTNAME_MISMATCH, reason)
        if code == _X509_NOT_YET_VALID:
            return error(ErrorKind.TLS_UNTRUSTED, _said("certificate is not yet valid", reason))
        return error(ErrorKind.TLS_UNTRUSTED, reason)
    if isinstance(exc, ssl.SSLError):
        # an SSLError raised by Python itself (not OpenSSL) has no `reason`
        return error(ErrorKind.TLS_HANDSHAKE_FAILED, getattr(exc, "reason", None) or str(exc))
    if isinstance(exc, TimeoutError):
        return error(ErrorKind.TIMEOUT, str(exc) or "timed out")
    if isinstance(exc, ConnectionRefusedError):
        return error(ErrorKind.CONNECT_REFUSED, "connection refused")
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return error(ErrorKind.CONNECTION_RESET, "connection reset by peer")
    if isinstance(exc, EOFError):  # asyncio.IncompleteReadError: the peer hung up mid-exchange
        return error(ErrorKind.PROTOCOL_ERROR, "peer closed the connection early")
    if isinstance(exc, OSError):
        kind = _ERRNO_KINDS.get(exc.errno or 0, ErrorKind.SOCKET_ERROR)
        return error(kind, exc.strerror or str(exc))
    return error(ErrorKind.INTERNAL_ERROR, f"{type(exc).__name__}: {exc}")
