"""The one trust decision of the tls, http2 and http3 probes: the system's default verify paths
(OpenSSL's, so SSL_CERT_FILE and SSL_CERT_DIR are honoured) plus the configured `tls.ca_file`.

`anchors()` names that store once; the ssl.SSLContext of the probes over TCP and the X509Store
the http3 probe checks a QUIC peer's chain against are both built from it, so a certificate is
trusted by all three probes or by none. No other bundle (certifi's) is read.
"""

from __future__ import annotations

import collections
import contextlib
import ipaddress
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import service_identity.cryptography
from cryptography import x509
from OpenSSL import crypto

from probes.base import ErrorKind, FileStamp, ProbeError, TlsSpec, file_stamp
from probes.errors import error


@dataclass(frozen=True, slots=True, kw_only=True)
class Anchors:
    """Where the trusted certificates are read from."""

    system_file: str | None
    """The system bundle (OpenSSL's default CA file, or SSL_CERT_FILE); None when absent."""
    system_dir: str | None
    """The system's hashed certificate directory (or SSL_CERT_DIR); None when absent."""
    ca_file: str | None
    """`tls.ca_file`: extra anchors of the configuration."""
    stamps: tuple[FileStamp, FileStamp]
    """file_stamp of system_file and ca_file: what was read changes when these do."""

    @property
    def where(self) -> tuple[str | None, str | None, str | None]:
        return (self.system_file, self.system_dir, self.ca_file)


def anchors(ca_file: str | None) -> Anchors:
    """The store every TLS-speaking probe trusts: the system's default verify paths as OpenSSL
    resolves them now (environment included) plus `ca_file`."""
    paths = ssl.get_default_verify_paths()
    return Anchors(
        system_file=paths.cafile,
        system_dir=paths.capath,
        ca_file=ca_file or None,
        stamps=(file_stamp(paths.cafile), file_stamp(ca_file)),
    )


# --- over TCP: an ssl.SSLContext ----------------------------------------------------------

_ContextKey = tuple[tuple[str | None, str | None, str | None], tuple[str, ...], TlsSpec, bool]
_CONTEXTS: collections.OrderedDict[_ContextKey, tuple[tuple[FileStamp, ...], ssl.SSLContext]] = (
    collections.OrderedDict()
)
_CONTEXTS_MAX = 256


def client_context(
    cafile: str | None, alpn: tuple[str, ...], spec: TlsSpec, *, verify: bool = True
) -> ssl.SSLContext:
    """A client context trusting anchors(`cafile`), offering `alpn`, with the target's client
    certificate. Raises OSError or ssl.SSLError for an unreadable CA file, certificate or key.

    Cached (loading the system store costs milliseconds of CPU, and a context is reusable):
    one context per (anchors, ALPN, TLS settings, verify), made again when a file it read has
    changed (file_stamp), the old one dropped; at most 256, the least recently used go first."""
    where = anchors(cafile)
    key = (where.where, alpn, spec, verify)
    stamps = (*where.stamps, file_stamp(spec.client_cert), file_stamp(spec.client_key))
    hit = _CONTEXTS.get(key)
    if hit is not None and hit[0] == stamps:
        _CONTEXTS.move_to_end(key)
        return hit[1]
    # What ssl.create_default_context() makes, with the store named here, not found by it.
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if where.system_file or where.system_dir:
        # An empty or damaged system bundle is no client error: what did load is trusted,
        # as OpenSSL's own default paths would have it (x509_store does the same).
        with contextlib.suppress(ssl.SSLError):
            ctx.load_verify_locations(cafile=where.system_file, capath=where.system_dir)
    if where.ca_file:
        ctx.load_verify_locations(cafile=where.ca_file)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(list(alpn))
    if spec.client_cert:
        ctx.load_cert_chain(spec.client_cert, spec.client_key)
    _CONTEXTS[key] = (stamps, ctx)
    _CONTEXTS.move_to_end(key)
    while len(_CONTEXTS) > _CONTEXTS_MAX:
        _CONTEXTS.popitem(last=False)
    return ctx


# --- over QUIC: the chain checked after aioquic's handshake --------------------------------

_STORES_MAX = 16
_STORES: dict[
    tuple[str | None, str | None, str | None],
    tuple[tuple[FileStamp, FileStamp], crypto.X509Store],
] = {}


def x509_store(cafile: str | None) -> crypto.X509Store:
    """anchors(`cafile`) as the X509Store the http3 probe verifies against. Raises OSError or
    ValueError for an unreadable or malformed CA file.

    One store per set of files, built again when one changes (a CA bundle rewritten in place,
    a restarted lab, a rotation): aioquic would build one on every handshake instead."""
    where = anchors(cafile)
    hit = _STORES.get(where.where)
    if hit is not None and hit[0] == where.stamps:
        return hit[1]
    store = crypto.X509Store()
    if where.system_file or where.system_dir:
        with contextlib.suppress(crypto.Error):  # as in client_context
            store.load_locations(where.system_file, where.system_dir)
    if where.ca_file:
        for cert in x509.load_pem_x509_certificates(Path(where.ca_file).read_bytes()):
            store.add_cert(crypto.X509.from_cryptography(cert))
    if len(_STORES) >= _STORES_MAX:
        _STORES.clear()
    _STORES[where.where] = (where.stamps, store)
    return store


def verify_peer(
    leaf: x509.Certificate | None,
    chain: Sequence[x509.Certificate],
    server_name: str,
    store: crypto.X509Store,
) -> ProbeError | None:
    """What aioquic's own verification checks (validity, name, chain), as an error kind."""
    if leaf is None:
        return error(ErrorKind.TLS_UNTRUSTED, "QUIC TLS: no certificate presented")
    now = datetime.now(UTC)
    if not leaf.not_valid_before_utc <= now <= leaf.not_valid_after_utc:
        return error(ErrorKind.TLS_CERT_EXPIRED, "QUIC TLS: certificate is not valid now")
    try:
        try:
            ipaddress.ip_address(server_name)
        except ValueError:
            service_identity.cryptography.verify_certificate_hostname(leaf, server_name)
        else:
            service_identity.cryptography.verify_certificate_ip_address(leaf, server_name)
    except (service_identity.CertificateError, service_identity.VerificationError):
        names = service_identity.cryptography.extract_patterns(leaf)
        return error(
            ErrorKind.TLS_HOSTNAME_MISMATCH,
            f"QUIC TLS: hostname {server_name!r} doesn't match "
            + (", ".join(repr(str(n)) for n in names) or "any name"),
        )
    except ValueError:
        return error(ErrorKind.TLS_UNTRUSTED, "QUIC TLS: certificate names cannot be parsed")
    ctx = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(c) for c in chain],
    )
    try:
        ctx.verify_certificate()
    except crypto.X509StoreContextError as exc:
        return error(ErrorKind.TLS_UNTRUSTED, f"QUIC TLS: {exc.args[0]}")
    return None
