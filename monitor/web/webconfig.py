"""Load a Prometheus exporter-toolkit web config (--web.config.file): TLS, headers, basic auth.
Read once at load (restart to reload); keys it cannot honour are refused, never silently ignored."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import ssl
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, NoReturn

import bcrypt
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from monitor.config import ConfigError, load_yaml

# client_auth_type values and what Python's ssl does for them. Go's RequestClientCert and
# RequireAnyClientCert accept a certificate without verifying it; OpenSSL through Python's ssl
# module always verifies a certificate it asked for, so those two are refused (see below).
CLIENT_AUTH_TYPES: Final[Mapping[str, ssl.VerifyMode]] = MappingProxyType(
    {
        "NoClientCert": ssl.CERT_NONE,
        "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
        "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
    }
)
_UNVERIFIED_CLIENT_AUTH: Final = ("RequestClientCert", "RequireAnyClientCert", "RequireClientCert")

TLS_VERSIONS: Final[Mapping[str, ssl.TLSVersion]] = MappingProxyType(
    {"TLS12": ssl.TLSVersion.TLSv1_2, "TLS13": ssl.TLSVersion.TLSv1_3}
)
_OLD_TLS_VERSIONS: Final = ("TLS10", "TLS11")

# cipher_suites: Go's (IANA) names of the TLS 1.2 suites in crypto/tls.CipherSuites(), mapped to
# OpenSSL's names. TLS 1.3 suites are not configurable here (nor, in effect, in Go).
CIPHER_SUITES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA": "ECDHE-ECDSA-AES128-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA": "ECDHE-ECDSA-AES256-SHA",
        "TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA": "ECDHE-RSA-AES128-SHA",
        "TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA": "ECDHE-RSA-AES256-SHA",
        "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256": "ECDHE-ECDSA-AES128-GCM-SHA256",
        "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384": "ECDHE-ECDSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256": "ECDHE-RSA-AES128-GCM-SHA256",
        "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384": "ECDHE-RSA-AES256-GCM-SHA384",
        "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-RSA-CHACHA20-POLY1305",
        "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256": "ECDHE-ECDSA-CHACHA20-POLY1305",
    }
)
_TLS13_SUITES: Final = (
    "TLS_AES_128_GCM_SHA256",
    "TLS_AES_256_GCM_SHA384",
    "TLS_CHACHA20_POLY1305_SHA256",
)

# http_server_config.headers: the only headers exporter-toolkit lets a config set, with the
# values allowed where the header is an enumeration (empty tuple: any single-line value).
HEADERS: Final[Mapping[str, tuple[str, ...]]] = MappingProxyType(
    {
        "Strict-Transport-Security": (),
        "X-Content-Type-Options": ("nosniff",),
        "X-Frame-Options": ("deny", "sameorigin"),
        "X-XSS-Protection": (),
        "Content-Security-Policy": (),
    }
)

_TOP_KEYS: Final = ("tls_server_config", "http_server_config", "basic_auth_users")
_TLS_KEYS: Final = (
    "cert_file",
    "key_file",
    "client_auth_type",
    "client_ca_file",
    "client_ca",
    "min_version",
    "max_version",
    "cipher_suites",
    "prefer_server_cipher_suites",
)
_HTTP_KEYS: Final = ("http2", "headers")
_UNSUPPORTED: Final[Mapping[str, str]] = MappingProxyType(
    {
        "rate_limit": "not supported: rate limiting is not implemented here",
        "tls_server_config.cert": (
            "not supported (inline PEM): put the certificate in a file and use cert_file"
        ),
        "tls_server_config.key": (
            "not supported (inline PEM): put the private key in a file and use key_file"
        ),
        "tls_server_config.curve_preferences": (
            "not supported: Python's ssl module cannot set a list of curves"
        ),
        "tls_server_config.client_allowed_sans": (
            "not supported: client certificates are checked against client_ca_file only"
        ),
    }
)

# $2a$/$2b$/$2x$/$2y$, a two-digit cost, 22 characters of salt and 31 of hash (bcrypt base64).
_BCRYPT_RE: Final = re.compile(r"\$2[abxy]\$(\d\d)\$([./A-Za-z0-9]{22})([./A-Za-z0-9]{31})")
_BCRYPT_ALPHABET: Final = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
_BCRYPT_MAX_PASSWORD: Final = 72  # bcrypt reads no further; the Python package refuses more
_SSL_SOURCE_RE: Final = re.compile(r"\s*\(_ssl\.c:\d+\)$")


class WebConfigError(ConfigError):
    """A web config problem on one line: "<file>: <key path>: <problem>"."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.splitlines()))


def _no_users() -> Mapping[str, bytes]:
    return MappingProxyType({})


def _no_headers() -> Mapping[str, str]:
    return MappingProxyType({})


@dataclass(frozen=True, slots=True, kw_only=True)
class WebConfig:
    """What the HTTP server needs from the file. WebConfig() is plain HTTP without auth."""

    path: str | None = None  # the file it came from, for log lines
    ssl_context: ssl.SSLContext | None = None  # from tls_server_config; None for plain HTTP
    client_auth_type: str = "NoClientCert"
    users: Mapping[str, bytes] = field(default_factory=_no_users, repr=False)  # user -> bcrypt
    headers: Mapping[str, str] = field(default_factory=_no_headers)  # added to every response


@dataclass(frozen=True, slots=True)
class _Reader:
    path: Path

    def fail(self, where: str, problem: str) -> NoReturn:
        raise WebConfigError(f"{self.path}: {where}: {problem}")

    def mapping(self, value: object, where: str) -> dict[str, Any]:
        """A section: None is empty; keys must be strings."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.fail(where, f"must be a mapping of keys, got {_kind(value)}")
        for key in value:
            if not isinstance(key, str):
                self.fail(where, f"key {key!r} must be a string (quote it)")
        return value

    def check_keys(self, data: Mapping[str, Any], prefix: str, known: Collection[str]) -> None:
        for key in data:
            where = f"{prefix}.{key}" if prefix else key
            if where in _UNSUPPORTED:
                self.fail(where, _UNSUPPORTED[where])
            if key not in known:
                self.fail(where, "unknown key")

    def string(self, data: Mapping[str, Any], key: str, prefix: str) -> str | None:
        """An optional string; null and "" mean unset, as in exporter-toolkit."""
        value = data.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str):
            self.fail(f"{prefix}.{key}", f"must be a string, got {_kind(value)}")
        return value

    def boolean(self, data: Mapping[str, Any], key: str, prefix: str, default: bool) -> bool:
        value = data.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.fail(f"{prefix}.{key}", f"must be true or false, got {value!r}")
        return value


def _kind(value: object) -> str:
    names = {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}
    return names.get(type(value), type(value).__name__)


def _one_of(values: Collection[str]) -> str:
    quoted = [repr(v) for v in values]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _ssl_reason(exc: ssl.SSLError) -> str:
    return _SSL_SOURCE_RE.sub("", str(exc.args[-1]) if exc.args else str(exc))


class _EncryptedKeyError(Exception):
    """Raised from the password callback so OpenSSL never prompts on a terminal."""


def _no_password() -> bytes:
    raise _EncryptedKeyError


# --- tls_server_config ----------------------------------------------------------------------


def _tls_version(r: _Reader, data: Mapping[str, Any], key: str, default: str) -> str:
    value = r.string(data, key, "tls_server_config") or default
    if value in _OLD_TLS_VERSIONS:
        r.fail(
            f"tls_server_config.{key}",
            f"{value!r} is not supported: Python's ssl module deprecates TLS 1.0 and 1.1 "
            "(use 'TLS12' or 'TLS13')",
        )
    if value not in TLS_VERSIONS:
        r.fail(f"tls_server_config.{key}", f"{value!r} is not one of {_one_of(TLS_VERSIONS)}")
    return value


def _cipher_suites(r: _Reader, data: Mapping[str, Any]) -> list[str]:
    where = "tls_server_config.cipher_suites"
    value = data.get("cipher_suites")
    if value is None:
        return []
    if not isinstance(value, list):
        r.fail(where, f"must be a list of cipher suite names, got {_kind(value)}")
    names: list[str] = []
    for i, name in enumerate(value):
        if name in _TLS13_SUITES:
            r.fail(
                f"{where}[{i}]",
                f"{name!r} is a TLS 1.3 suite: cipher_suites sets TLS 1.2 suites only",
            )
        if not isinstance(name, str) or name not in CIPHER_SUITES:
            r.fail(f"{where}[{i}]", f"{name!r} is not one of {_one_of(CIPHER_SUITES)}")
        names.append(CIPHER_SUITES[name])
    return names


def _read(r: _Reader, where: str, path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        r.fail(where, f"cannot read {path}: {exc.strerror}")


def _certificates(r: _Reader, where: str, data: bytes, source: str) -> list[x509.Certificate]:
    try:
        return x509.load_pem_x509_certificates(data)
    except ValueError:
        r.fail(where, f"{source} holds no PEM certificate")


def _load_key_pair(r: _Reader, ctx: ssl.SSLContext, cert_file: Path, key_file: Path) -> None:
    """Check each file on its own first, so the error names the right key, then load both."""
    prefix = "tls_server_config"
    cert = _certificates(
        r, f"{prefix}.cert_file", _read(r, f"{prefix}.cert_file", cert_file), str(cert_file)
    )[0]
    key_pem = _read(r, f"{prefix}.key_file", key_file)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except TypeError:
        r.fail(
            f"{prefix}.key_file",
            f"{key_file} is encrypted: encrypted private keys are not supported",
        )
    except (ValueError, UnsupportedAlgorithm):
        r.fail(f"{prefix}.key_file", f"{key_file} holds no usable PEM private key")
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if cert.public_key().public_bytes(*spki) != key.public_key().public_bytes(*spki):
        r.fail(f"{prefix}.key_file", f"{key_file} does not match the certificate in cert_file")
    try:
        ctx.load_cert_chain(cert_file, key_file, password=_no_password)
    except _EncryptedKeyError:
        r.fail(
            f"{prefix}.key_file",
            f"{key_file} is encrypted: encrypted private keys are not supported",
        )
    except ssl.SSLError as exc:
        r.fail(f"{prefix}.cert_file", f"cannot load certificate and key: {_ssl_reason(exc)}")


def _tls(r: _Reader, raw: object, base: Path) -> tuple[ssl.SSLContext | None, str]:
    prefix = "tls_server_config"
    data = r.mapping(raw, prefix)
    r.check_keys(data, prefix, _TLS_KEYS)
    if all(v is None or v == "" or v == [] for v in data.values()):
        return None, "NoClientCert"  # an empty section, as exporter-toolkit: no TLS

    def resolve(key: str) -> Path | None:
        value = r.string(data, key, prefix)
        return None if value is None else base / value

    cert_file, key_file = resolve("cert_file"), resolve("key_file")
    client_ca_file = resolve("client_ca_file")
    client_ca = r.string(data, "client_ca", prefix)
    auth = r.string(data, "client_auth_type", prefix) or "NoClientCert"
    min_version = _tls_version(r, data, "min_version", "TLS12")
    max_version = _tls_version(r, data, "max_version", "TLS13")
    ciphers = _cipher_suites(r, data)
    prefer_server = r.boolean(data, "prefer_server_cipher_suites", prefix, default=True)

    if cert_file is None:
        r.fail(f"{prefix}.cert_file", "required key is missing (TLS needs cert_file and key_file)")
    if key_file is None:
        r.fail(f"{prefix}.key_file", "required key is missing (TLS needs cert_file and key_file)")
    if auth in _UNVERIFIED_CLIENT_AUTH:
        r.fail(
            f"{prefix}.client_auth_type",
            f"{auth!r} is not supported: Python's ssl module cannot accept a client certificate "
            "without verifying it (use 'VerifyClientCertIfGiven' or 'RequireAndVerifyClientCert')",
        )
    if auth not in CLIENT_AUTH_TYPES:
        r.fail(f"{prefix}.client_auth_type", f"{auth!r} is not one of {_one_of(CLIENT_AUTH_TYPES)}")
    if client_ca is not None and client_ca_file is not None:
        r.fail(f"{prefix}.client_ca", "give client_ca or client_ca_file, not both")
    ca_key = "client_ca" if client_ca is not None else "client_ca_file"
    has_ca = client_ca is not None or client_ca_file is not None
    if has_ca and auth == "NoClientCert":
        r.fail(
            f"{prefix}.{ca_key}",
            "set, but client_auth_type is 'NoClientCert', so no client certificate is asked for",
        )
    if not has_ca and auth != "NoClientCert":
        r.fail(f"{prefix}.client_ca_file", f"required when client_auth_type is {auth!r}")
    if TLS_VERSIONS[min_version] > TLS_VERSIONS[max_version]:
        r.fail(f"{prefix}.max_version", f"{max_version!r} is below min_version {min_version!r}")

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)  # not create_default_context: no system CAs
    ctx.minimum_version = TLS_VERSIONS[min_version]
    ctx.maximum_version = TLS_VERSIONS[max_version]
    if prefer_server:
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    else:
        ctx.options &= ~ssl.OP_CIPHER_SERVER_PREFERENCE
    if ciphers:
        try:
            ctx.set_ciphers(":".join(ciphers))
        except ssl.SSLError as exc:
            r.fail(f"{prefix}.cipher_suites", f"refused by OpenSSL: {_ssl_reason(exc)}")
    _load_key_pair(r, ctx, cert_file, key_file)
    if has_ca:
        if client_ca_file is not None:
            pem, source = _read(r, f"{prefix}.client_ca_file", client_ca_file), str(client_ca_file)
        else:
            assert client_ca is not None
            pem, source = client_ca.encode(), "the value"
        cas = _certificates(r, f"{prefix}.{ca_key}", pem, source)
        der = b"".join(ca.public_bytes(serialization.Encoding.DER) for ca in cas)
        try:
            ctx.load_verify_locations(cadata=der)
        except ssl.SSLError as exc:
            r.fail(f"{prefix}.{ca_key}", f"cannot load: {_ssl_reason(exc)}")
    ctx.verify_mode = CLIENT_AUTH_TYPES[auth]
    return ctx, auth


# --- http_server_config ---------------------------------------------------------------------


def _headers(r: _Reader, raw: object) -> Mapping[str, str]:
    prefix = "http_server_config"
    data = r.mapping(raw, prefix)
    r.check_keys(data, prefix, _HTTP_KEYS)
    if r.boolean(data, "http2", prefix, default=False):
        r.fail(f"{prefix}.http2", "not supported: this server speaks HTTP/1.1 only")
    headers: dict[str, str] = {}
    canonical = {name.lower(): name for name in HEADERS}
    for name, value in r.mapping(data.get("headers"), f"{prefix}.headers").items():
        where = f"{prefix}.headers.{name}"
        if name.lower() not in canonical:
            r.fail(where, f"this header cannot be configured (only {_one_of(HEADERS)})")
        if value is None or value == "":
            continue  # "Unset if blank"
        if not isinstance(value, str):
            r.fail(where, f"must be a string, got {_kind(value)}")
        if "\r" in value or "\n" in value:
            r.fail(where, "must be a single line")
        allowed = HEADERS[canonical[name.lower()]]
        if allowed and value not in allowed:
            r.fail(where, f"{value!r} is not one of {_one_of(allowed)}")
        headers[canonical[name.lower()]] = value
    return MappingProxyType(headers)


# --- basic_auth_users -----------------------------------------------------------------------


def _bcrypt_problem(value: str) -> str | None:
    """Why bcrypt would refuse (or never match) this hash; None if it is fine. No bcrypt run."""
    match = _BCRYPT_RE.fullmatch(value)
    if match is None:
        return "not a bcrypt hash (want $2a$, $2b$ or $2y$, a two-digit cost and 53 characters)"
    cost, salt, digest = match.groups()
    if not 4 <= int(cost) <= 31:
        return f"bcrypt cost {cost} is outside 04-31"
    # 22 characters carry 16 bytes of salt and 31 carry 23 of hash: the spare low bits of the
    # last character must be zero, or bcrypt refuses the salt / can never match the hash.
    if _BCRYPT_ALPHABET.index(salt[-1]) % 16 or _BCRYPT_ALPHABET.index(digest[-1]) % 4:
        return "not a valid bcrypt hash (corrupt salt or hash characters)"
    return None


def _users(r: _Reader, raw: object) -> Mapping[str, bytes]:
    prefix = "basic_auth_users"
    users: dict[str, bytes] = {}
    for name, value in r.mapping(raw, prefix).items():
        plain = re.fullmatch(r"[\w.@+-]+", name) is not None
        where = f"{prefix}.{name}" if plain else f"{prefix}[{name!r}]"
        if not name:
            r.fail(where, "user name must not be empty")
        if ":" in name:
            r.fail(where, "user name cannot contain ':' (basic auth splits user:password there)")
        if not isinstance(value, str):
            r.fail(where, f"must be a bcrypt hash string, got {_kind(value)}")
        problem = _bcrypt_problem(value)
        if problem is not None:
            r.fail(where, problem)
        users[name] = value.encode("ascii")
    return MappingProxyType(users)


def load_web_config(path: str | Path) -> WebConfig:
    """Read and check the file, load certificates and build the SSL context; WebConfigError."""
    p = Path(path)
    r = _Reader(p)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise WebConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise WebConfigError(f"{p}: not UTF-8 text: {exc.reason}") from None
    try:
        data = load_yaml(text, str(p))
    except ConfigError as exc:
        raise WebConfigError(str(exc)) from None
    if data is not None and not isinstance(data, dict):
        raise WebConfigError(f"{p}: the top level must be a mapping of keys")
    top = r.mapping(data, "(top level)")
    r.check_keys(top, "", _TOP_KEYS)
    # Cheap checks first, so a bad header or hash is reported before certificate trouble.
    headers = _headers(r, top.get("http_server_config"))
    users = _users(r, top.get("basic_auth_users"))
    ctx, auth = _tls(r, top.get("tls_server_config"), p.parent)
    return WebConfig(
        path=str(p), ssl_context=ctx, client_auth_type=auth, users=users, headers=headers
    )


# --- middlewares ----------------------------------------------------------------------------


def _parse_basic(header: str) -> tuple[str, bytes] | None:
    scheme, _, param = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        raw = base64.b64decode(param.strip(), validate=True)
        user, sep, password = raw.partition(b":")
        return (user.decode("utf-8"), password) if sep else None
    except ValueError:  # binascii.Error, non-ASCII text, bad UTF-8
        return None


def _unauthorized() -> web.Response:
    return web.Response(
        status=401, text="401: Unauthorized\n", headers={"WWW-Authenticate": "Basic"}
    )


def _too_many() -> web.Response:
    return web.Response(status=429, text="429: Too Many Requests\n", headers={"Retry-After": "1"})


MAX_PENDING_CHECKS: Final = 8
"""bcrypt checks waiting or running at once, all clients together; more are answered 429."""
CHECKS_PER_CLIENT: Final = 1
"""Distinct checks one client address may have waiting or running; more are answered 429.
Requests carrying the same credentials share one check and do not count twice."""


def _cost(hashed: bytes) -> int:
    return int(hashed[4:6])


def _decoy(cost: int) -> bytes:
    """A well-formed bcrypt hash of `cost` that no password matches (random salt and digest,
    their spare low bits zero): checking it costs what checking a real one of that cost does."""
    pick = secrets.choice
    salt = "".join(pick(_BCRYPT_ALPHABET) for _ in range(21)) + pick(_BCRYPT_ALPHABET[::16])
    digest = "".join(pick(_BCRYPT_ALPHABET) for _ in range(30)) + pick(_BCRYPT_ALPHABET[::4])
    return f"$2b${cost:02d}${salt}{digest}".encode("ascii")


def basic_auth_middleware(cfg: WebConfig, *, exempt: Collection[str] = ()) -> Middleware:
    """Require basic auth (cfg.users) on every path but `exempt` (exact request paths).

    No users: everything passes. Successful checks are cached per user as an HMAC (random
    per-process key) of stored hash and password, compared in constant time, so a scrape
    every 15 s costs one bcrypt run, not one per request; failures are never cached.

    bcrypt runs in a worker thread, one at a time, so a flood of bad logins cannot take more
    than one core. What waits for it is bounded: each client address may have one distinct
    check pending (requests with the same credentials share it) and all clients together
    MAX_PENDING_CHECKS; beyond that the answer is 429 at once, so bogus logins from one
    address cannot queue up in front of a real login from another.

    A failed check costs the same bcrypt work whoever it names: an unknown user is checked
    against a decoy of the highest configured cost, and a known user whose hash is cheaper
    also runs decoys of the costs in between (2^c + 2^c + ... + 2^(max-1) = 2^max), so timing
    tells neither which names exist nor which of them have cheap hashes.
    """
    users = dict(cfg.users)
    exempt_paths = frozenset(exempt)
    cache_key = secrets.token_bytes(32)
    verified: dict[str, bytes] = {}  # user -> digest of (hash, password) that bcrypt accepted
    lock = asyncio.Lock()
    max_cost = max((_cost(h) for h in users.values()), default=4)
    costs = {_cost(h) for h in users.values()}
    decoys = {c: _decoy(c) for c in range(min(costs, default=max_cost), max_cost + 1)}
    in_flight: dict[tuple[str, bytes], asyncio.Future[bool]] = {}
    per_client: dict[str, int] = {}

    def digest(hashed: bytes, password: bytes) -> bytes:
        return hmac.new(cache_key, hashed + b"\0" + password, hashlib.sha256).digest()

    def cached(user: str, token: bytes) -> bool:
        return hmac.compare_digest(verified.get(user, b""), token)

    def work(password: bytes, hashed: bytes) -> bool:
        """In a worker thread: the check, then, when it failed, the padding up to max_cost."""
        if bcrypt.checkpw(password, hashed):
            return True
        for cost in range(_cost(hashed), max_cost):
            bcrypt.checkpw(password, decoys[cost])
        return False

    async def run(user: str, password: bytes, hashed: bytes | None, token: bytes) -> bool:
        async with lock:
            if hashed is not None and cached(user, token):  # a request we queued behind
                return True
            ok = await asyncio.to_thread(
                work, password[:_BCRYPT_MAX_PASSWORD], hashed or decoys[max_cost]
            )
        if ok and hashed is not None:
            verified[user] = token
            return True
        return False

    async def check(client: str, user: str, password: bytes) -> bool | None:
        """True or False; None when too many checks are pending (429)."""
        hashed = users.get(user)
        token = digest(hashed or decoys[max_cost], password)
        if hashed is not None and cached(user, token):
            return True
        key = (user, token)
        shared = in_flight.get(key)
        if shared is not None:
            return await asyncio.shield(shared)
        if per_client.get(client, 0) >= CHECKS_PER_CLIENT or len(in_flight) >= MAX_PENDING_CHECKS:
            return None
        task = asyncio.ensure_future(run(user, password, hashed, token))
        in_flight[key] = task
        # Gone from in_flight when it ends, even if every request waiting on it went away.
        task.add_done_callback(lambda done: forget(key, done))
        per_client[client] = per_client.get(client, 0) + 1
        try:
            return await asyncio.shield(task)
        finally:
            per_client[client] -= 1
            if per_client[client] <= 0:
                del per_client[client]

    def forget(key: tuple[str, bytes], task: asyncio.Future[bool]) -> None:
        if in_flight.get(key) is task:
            del in_flight[key]
        if not task.cancelled():
            task.exception()  # retrieved: a failure is the waiter's to see, never "unhandled"

    @web.middleware
    async def basic_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not users or request.path in exempt_paths:
            return await handler(request)
        credentials = _parse_basic(request.headers.get("Authorization", ""))
        if credentials is None:
            return _unauthorized()
        verdict = await check(request.remote or "", *credentials)
        if verdict is None:
            return _too_many()
        if not verdict:
            return _unauthorized()
        return await handler(request)

    return basic_auth


def headers_middleware(cfg: WebConfig) -> Middleware:
    """Add cfg.headers to responses (errors too) unless the handler set them itself. Responses
    a handler already streamed (prepared) are sent as they are."""
    headers = dict(cfg.headers)

    @web.middleware
    async def extra_headers(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            for name, value in headers.items():
                exc.headers.setdefault(name, value)
            raise
        if not response.prepared:
            for name, value in headers.items():
                response.headers.setdefault(name, value)
        return response

    return extra_headers


def web_middlewares(cfg: WebConfig, *, exempt: Collection[str] = ()) -> tuple[Middleware, ...]:
    """Both middlewares in order (headers outermost, so 401s carry the headers too)."""
    return (headers_middleware(cfg), basic_auth_middleware(cfg, exempt=exempt))
