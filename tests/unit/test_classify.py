"""probes.errors.classify as a table: each exception a probe can meet -> its error kind.

The ssl exceptions carry the attributes OpenSSL sets on the ones it raises (verify_code,
verify_message, reason, library); one is produced by OpenSSL itself, in memory."""

from __future__ import annotations

import asyncio
import errno
import inspect
import re
import ssl

import pytest

import probes.errors
from probes.base import ErrorKind
from probes.errors import classify

# OpenSSL X509_V_ERR_* codes (x509_vfy.h).
X509_CERT_NOT_YET_VALID = 9
X509_CERT_HAS_EXPIRED = 10
X509_UNABLE_TO_GET_ISSUER_CERT_LOCALLY = 20
X509_DEPTH_ZERO_SELF_SIGNED_CERT = 18
X509_HOSTNAME_MISMATCH = 62


def cert_error(code: int, message: str) -> ssl.SSLCertVerificationError:
    exc = ssl.SSLCertVerificationError(1, f"[SSL: CERTIFICATE_VERIFY_FAILED] {message}")
    exc.verify_code = code
    exc.verify_message = message
    exc.reason = "CERTIFICATE_VERIFY_FAILED"
    exc.library = "SSL"
    return exc


def ssl_error(reason: str) -> ssl.SSLError:
    exc = ssl.SSLError(1, f"[SSL: {reason}] {reason.lower()}")
    exc.reason = reason
    exc.library = "SSL"
    return exc


def openssl_handshake_error() -> ssl.SSLError:
    """What OpenSSL raises when a 'server' answers a ClientHello with plain text."""
    ctx = ssl.create_default_context()
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = ctx.wrap_bio(incoming, outgoing, server_hostname="lab.example.com")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    incoming.write(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    with pytest.raises(ssl.SSLError) as caught:
        tls.do_handshake()
    return caught.value


ROWS: list[tuple[str, BaseException, ErrorKind]] = [
    (
        "ConnectionRefusedError",
        ConnectionRefusedError(errno.ECONNREFUSED, "refused"),
        ErrorKind.CONNECT_REFUSED,
    ),
    (
        "ConnectionResetError",
        ConnectionResetError(errno.ECONNRESET, "reset"),
        ErrorKind.CONNECTION_RESET,
    ),
    (
        "ConnectionAbortedError",
        ConnectionAbortedError(errno.ECONNABORTED, "aborted"),
        ErrorKind.CONNECTION_RESET,
    ),
    ("BrokenPipeError", BrokenPipeError(errno.EPIPE, "broken pipe"), ErrorKind.CONNECTION_RESET),
    ("TimeoutError", TimeoutError(), ErrorKind.TIMEOUT),
    ("ETIMEDOUT", OSError(errno.ETIMEDOUT, "timed out"), ErrorKind.TIMEOUT),
    ("ENETUNREACH", OSError(errno.ENETUNREACH, "unreachable"), ErrorKind.NETWORK_UNREACHABLE),
    ("EHOSTUNREACH", OSError(errno.EHOSTUNREACH, "no route"), ErrorKind.HOST_UNREACHABLE),
    ("EHOSTDOWN", OSError(errno.EHOSTDOWN, "down"), ErrorKind.HOST_UNREACHABLE),
    ("EADDRNOTAVAIL", OSError(errno.EADDRNOTAVAIL, "no source"), ErrorKind.NETWORK_UNREACHABLE),
    # A reject by the local host's firewall (nftables, seccomp) shows as EPERM or EACCES.
    ("EPERM", OSError(errno.EPERM, "denied"), ErrorKind.NETWORK_UNREACHABLE),
    ("EACCES", OSError(errno.EACCES, "denied"), ErrorKind.NETWORK_UNREACHABLE),
    ("unknown-errno", OSError(errno.EIO, "i/o error"), ErrorKind.SOCKET_ERROR),
    ("no-errno", OSError("no errno at all"), ErrorKind.SOCKET_ERROR),
    (
        "verify-10-expired",
        cert_error(X509_CERT_HAS_EXPIRED, "certificate has expired"),
        ErrorKind.TLS_CERT_EXPIRED,
    ),
    (
        "verify-62-hostname",
        cert_error(X509_HOSTNAME_MISMATCH, "Hostname mismatch"),
        ErrorKind.TLS_HOSTNAME_MISMATCH,
    ),
    (
        "verify-9-not-yet-valid",
        cert_error(X509_CERT_NOT_YET_VALID, "certificate is not yet valid"),
        ErrorKind.TLS_UNTRUSTED,
    ),
    (
        "verify-20-unknown-issuer",
        cert_error(X509_UNABLE_TO_GET_ISSUER_CERT_LOCALLY, "unable to get local issuer"),
        ErrorKind.TLS_UNTRUSTED,
    ),
    (
        "verify-18-self-signed",
        cert_error(X509_DEPTH_ZERO_SELF_SIGNED_CERT, "self-signed certificate"),
        ErrorKind.TLS_UNTRUSTED,
    ),
    ("SSLError", ssl_error("TLSV1_ALERT_PROTOCOL_VERSION"), ErrorKind.TLS_HANDSHAKE_FAILED),
    (
        "IncompleteReadError",
        asyncio.IncompleteReadError(partial=b"\x00", expected=2),
        ErrorKind.PROTOCOL_ERROR,
    ),
    ("EOFError", EOFError("closed"), ErrorKind.PROTOCOL_ERROR),
    ("ValueError", ValueError("a bug"), ErrorKind.INTERNAL_ERROR),
    ("KeyError", KeyError("details"), ErrorKind.INTERNAL_ERROR),
]


@pytest.mark.parametrize(("exc", "kind"), [pytest.param(e, k, id=i) for i, e, k in ROWS])
def test_classify(exc: BaseException, kind: ErrorKind) -> None:
    err = classify(exc)
    assert err.kind is kind
    assert err.message  # a sentence for people, never empty


def test_the_table_reaches_every_kind_classify_names() -> None:
    """Every kind written in probes/errors.py is reached by a row: a kind added to classify
    without a row here fails this test."""
    named = set(re.findall(r"ErrorKind\.([A-Z0-9_]+)", inspect.getsource(probes.errors)))
    reached = {classify(exc).kind.name for _, exc, _ in ROWS}
    assert reached == named


def test_a_handshake_error_raised_by_openssl() -> None:
    exc = openssl_handshake_error()
    assert not isinstance(exc, ssl.SSLCertVerificationError)
    err = classify(exc)
    assert err.kind is ErrorKind.TLS_HANDSHAKE_FAILED
    assert err.message == exc.reason  # OpenSSL's short reason, e.g. WRONG_VERSION_NUMBER


def test_messages_keep_what_the_peer_or_kernel_said() -> None:
    # OpenSSL's reason already says it: said once, not "expired (certificate has expired)"
    expired = classify(cert_error(X509_CERT_HAS_EXPIRED, "certificate has expired"))
    assert expired.message == "certificate has expired"
    not_yet = classify(cert_error(X509_CERT_NOT_YET_VALID, "certificate is not yet valid"))
    assert not_yet.message == "certificate is not yet valid"
    # a reason that adds something keeps both
    other = classify(cert_error(X509_CERT_HAS_EXPIRED, "notAfter=Jan  1 00:00:00 2020 GMT"))
    assert other.message == "certificate has expired (notAfter=Jan  1 00:00:00 2020 GMT)"
    assert classify(OSError(errno.EHOSTUNREACH, "No route to host")).message == "No route to host"
    assert classify(ValueError("a bug")).message == "ValueError: a bug"
    assert classify(TimeoutError()).message == "timed out"


def test_oserror_subclasses_are_built_from_errno() -> None:
    """OSError(errno) constructs the matching subclass: the table's rows are what the kernel
    gives asyncio, whichever way they are written."""
    assert type(OSError(errno.ECONNREFUSED, "x")) is ConnectionRefusedError
    assert classify(OSError(errno.ECONNREFUSED, "x")).kind is ErrorKind.CONNECT_REFUSED
    assert classify(OSError(errno.ECONNRESET, "x")).kind is ErrorKind.CONNECTION_RESET
    assert classify(OSError(errno.EPIPE, "x")).kind is ErrorKind.CONNECTION_RESET


def test_an_ssl_error_made_by_python_not_openssl() -> None:
    """ssl.SSLContext.set_alpn_protocols raises an SSLError that has no `reason`."""
    err = classify(ssl.SSLError("ALPN protocols must be 1 to 255 in length"))
    assert err.kind is ErrorKind.TLS_HANDSHAKE_FAILED
    assert "ALPN protocols" in err.message


def test_a_certificate_error_without_verify_code() -> None:
    """What ssl.CertificateError (Python's own name check) raises has no verify code."""
    err = classify(ssl.CertificateError("hostname 'a.example' doesn't match 'b.example'"))
    assert err.kind is ErrorKind.TLS_UNTRUSTED
    assert "doesn't match" in err.message
