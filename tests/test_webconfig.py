"""Web config (--web.config.file): each invalid file pairs with its one-line error; real aiohttp
servers on 127.0.0.1 with real TLS (trustme PKI made at test time) and basic auth."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import threading
from collections.abc import AsyncIterator, Collection, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import bcrypt
import pytest
import trustme
from aiohttp import web
from cryptography.hazmat.primitives import serialization

from monitor.config import ConfigError
from monitor.web import webconfig
from monitor.web.webconfig import (
    WebConfig,
    WebConfigError,
    basic_auth_middleware,
    load_web_config,
    web_middlewares,
)

DATA = Path(__file__).parent / "testdata" / "webconfig"


def _basic(user: str, password: str) -> dict[str, str]:
    """An Authorization header (aiohttp.BasicAuth is deprecated in aiohttp 3.14)."""
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


# valid-auth-headers.yml: alice's bcrypt hash (cost 4, fast) is of this password.
ALICE = _basic("alice", "secret")

_SUPPORTED_HEADERS = (
    "'Strict-Transport-Security', 'X-Content-Type-Options', 'X-Frame-Options', "
    "'X-XSS-Protection' or 'Content-Security-Policy'"
)
_BCRYPT_FORMAT = "want $2a$, $2b$ or $2y$, a two-digit cost and 53 characters"

INVALID = {
    "invalid-yaml.yml": "line 3: invalid YAML: expected ',' or ']', but got '<stream end>'",
    "invalid-top-level-list.yml": "the top level must be a mapping of keys",
    "invalid-duplicate-key.yml": "line 3: duplicate key 'alice'",
    "invalid-unknown-key.yml": "tls_config: unknown key",
    "invalid-rate-limit.yml": "rate_limit: not supported: rate limiting is not implemented here",
    "invalid-tls-not-mapping.yml": "tls_server_config: must be a mapping of keys, got a list",
    "invalid-tls-unknown-key.yml": "tls_server_config.keyfile: unknown key",
    "invalid-tls-missing-key-file.yml": (
        "tls_server_config.key_file: required key is missing (TLS needs cert_file and key_file)"
    ),
    "invalid-tls-missing-cert-file.yml": (
        "tls_server_config.cert_file: required key is missing (TLS needs cert_file and key_file)"
    ),
    "invalid-tls-inline-cert.yml": (
        "tls_server_config.cert: not supported (inline PEM): "
        "put the certificate in a file and use cert_file"
    ),
    "invalid-tls-curve-preferences.yml": (
        "tls_server_config.curve_preferences: "
        "not supported: Python's ssl module cannot set a list of curves"
    ),
    "invalid-tls-allowed-sans.yml": (
        "tls_server_config.client_allowed_sans: "
        "not supported: client certificates are checked against client_ca_file only"
    ),
    "invalid-tls-client-auth-type.yml": (
        "tls_server_config.client_auth_type: 'Maybe' is not one of "
        "'NoClientCert', 'VerifyClientCertIfGiven' or 'RequireAndVerifyClientCert'"
    ),
    "invalid-tls-request-client-cert.yml": (
        "tls_server_config.client_auth_type: 'RequireAnyClientCert' is not supported: "
        "Python's ssl module cannot accept a client certificate without verifying it "
        "(use 'VerifyClientCertIfGiven' or 'RequireAndVerifyClientCert')"
    ),
    "invalid-tls-ca-without-client-auth.yml": (
        "tls_server_config.client_ca_file: set, but client_auth_type is 'NoClientCert', "
        "so no client certificate is asked for"
    ),
    "invalid-tls-verify-without-ca.yml": (
        "tls_server_config.client_ca_file: "
        "required when client_auth_type is 'RequireAndVerifyClientCert'"
    ),
    "invalid-tls-both-ca.yml": (
        "tls_server_config.client_ca: give client_ca or client_ca_file, not both"
    ),
    "invalid-tls-min-version.yml": (
        "tls_server_config.min_version: 'TLS14' is not one of 'TLS12' or 'TLS13'"
    ),
    "invalid-tls-old-version.yml": (
        "tls_server_config.min_version: 'TLS10' is not supported: "
        "Python's ssl module deprecates TLS 1.0 and 1.1 (use 'TLS12' or 'TLS13')"
    ),
    "invalid-tls-min-above-max.yml": (
        "tls_server_config.max_version: 'TLS12' is below min_version 'TLS13'"
    ),
    "invalid-tls-cipher-suite.yml": (
        "tls_server_config.cipher_suites[1]: 'TLS_RSA_WITH_RC4_128_SHA' is not one of "
        "'TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA', 'TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA', "
        "'TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA', 'TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA', "
        "'TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256', 'TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384', "
        "'TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256', 'TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384', "
        "'TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256' or "
        "'TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256'"
    ),
    "invalid-tls-tls13-cipher-suite.yml": (
        "tls_server_config.cipher_suites[0]: 'TLS_AES_128_GCM_SHA256' is a TLS 1.3 suite: "
        "cipher_suites sets TLS 1.2 suites only"
    ),
    "invalid-tls-prefer-server.yml": (
        "tls_server_config.prefer_server_cipher_suites: must be true or false, got 'yes please'"
    ),
    "invalid-tls-cert-file-absent.yml": (
        f"tls_server_config.cert_file: cannot read {DATA}/absent.pem: No such file or directory"
    ),
    "invalid-tls-cert-file-garbage.yml": (
        f"tls_server_config.cert_file: {DATA}/not-pem.txt holds no PEM certificate"
    ),
    "invalid-http2.yml": (
        "http_server_config.http2: not supported: this server speaks HTTP/1.1 only"
    ),
    "invalid-http-unknown-key.yml": "http_server_config.header: unknown key",
    "invalid-header-reserved.yml": (
        "http_server_config.headers.Server: this header cannot be configured "
        f"(only {_SUPPORTED_HEADERS})"
    ),
    "invalid-header-value.yml": (
        "http_server_config.headers.X-Frame-Options: "
        "'allow-from-anywhere' is not one of 'deny' or 'sameorigin'"
    ),
    "invalid-users-not-mapping.yml": "basic_auth_users: must be a mapping of keys, got a list",
    "invalid-user-bad-hash.yml": f"basic_auth_users.bob: not a bcrypt hash ({_BCRYPT_FORMAT})",
    "invalid-user-md5-hash.yml": f"basic_auth_users.alice: not a bcrypt hash ({_BCRYPT_FORMAT})",
    "invalid-user-bad-cost.yml": "basic_auth_users.alice: bcrypt cost 03 is outside 04-31",
    "invalid-user-bad-salt.yml": (
        "basic_auth_users.alice: not a valid bcrypt hash (corrupt salt or hash characters)"
    ),
    "invalid-user-not-string.yml": (
        "basic_auth_users.alice: must be a bcrypt hash string, got int"
    ),
    "invalid-user-colon.yml": (
        "basic_auth_users['alice:admin']: "
        "user name cannot contain ':' (basic auth splits user:password there)"
    ),
    "invalid-user-name-not-string.yml": "basic_auth_users: key 123 must be a string (quote it)",
}


# --- configuration files --------------------------------------------------------------------


def test_every_invalid_file_is_paired() -> None:
    assert {p.name for p in DATA.glob("invalid-*.yml")} == set(INVALID)


@pytest.mark.parametrize(("name", "message"), sorted(INVALID.items()))
def test_invalid_web_config_message(name: str, message: str) -> None:
    path = DATA / name
    with pytest.raises(WebConfigError) as info:
        load_web_config(path)
    assert str(info.value) == f"{path}: {message}"
    assert "\n" not in str(info.value)
    assert isinstance(info.value, ConfigError)  # `probe serve` can catch both kinds alike


def test_missing_file() -> None:
    path = DATA / "no-such-file.yml"
    with pytest.raises(WebConfigError, match=r": cannot read: No such file or directory$"):
        load_web_config(path)


def test_empty_file_is_plain_http_without_auth() -> None:
    cfg = load_web_config(DATA / "valid-empty.yml")
    assert cfg.ssl_context is None
    assert dict(cfg.users) == {}
    assert dict(cfg.headers) == {}


def test_auth_and_headers_file() -> None:
    cfg = load_web_config(DATA / "valid-auth-headers.yml")
    assert cfg.ssl_context is None
    assert list(cfg.users) == ["alice"]
    assert bcrypt.checkpw(b"secret", cfg.users["alice"])
    # Header names are matched case-insensitively and written canonically; blank means unset.
    assert dict(cfg.headers) == {"X-Frame-Options": "deny", "X-Content-Type-Options": "nosniff"}
    assert "$2b$" not in repr(cfg)  # hashes stay out of logs
    with pytest.raises(AttributeError):
        cfg.users = {}  # type: ignore[misc]
    with pytest.raises(TypeError):
        cfg.users["mallory"] = b"x"  # type: ignore[index]


def test_hash_check_matches_bcrypt() -> None:
    """Whatever the load-time check lets through, bcrypt accepts at request time (no 500s)."""
    good = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    alphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    variants = [good[:4] + cost + good[6:] for cost in ("03", "32", "99", "4x")]
    variants += [good[:28] + c + good[29:] for c in alphabet]  # last salt character
    variants += [good[:-1] + c for c in alphabet]  # last hash character
    variants += [good[:1] + v + good[3:] for v in ("2a", "2b", "2x", "2y", "2z", "1a", "2$")]
    variants += [good + "x", good[:-1], "$2b$04$", ""]
    accepted = 0
    for hashed in variants:
        if webconfig._bcrypt_problem(hashed) is not None:
            continue
        accepted += 1
        try:
            bcrypt.checkpw(b"pw", hashed.encode())
        except ValueError as exc:
            pytest.fail(f"{hashed} passed the load-time check but bcrypt says {exc}")
    assert accepted == 4 + 16 + 4  # valid salt ends, valid hash ends, $2a$ $2b$ $2x$ $2y$
    for _ in range(5):
        fresh = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
        assert webconfig._bcrypt_problem(fresh) is None


# --- a test PKI and real servers ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Pki:
    dir: Path
    ca: trustme.CA
    client: trustme.LeafCert  # issued by `ca`
    stranger: trustme.LeafCert  # issued by a CA the server does not trust


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    folder = tmp_path_factory.mktemp("webpki")
    ca = trustme.CA()  # ECDSA keys
    server = ca.issue_cert("127.0.0.1", "localhost")
    server.cert_chain_pems[0].write_to_path(str(folder / "server.pem"))
    server.private_key_pem.write_to_path(str(folder / "server.key"))
    ca.cert_pem.write_to_path(str(folder / "ca.pem"))
    return Pki(
        dir=folder,
        ca=ca,
        client=ca.issue_cert("scraper.example.com"),
        stranger=trustme.CA().issue_cert("scraper.example.com"),
    )


def write_config(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.write_text(text)
    return path


def tls_config(pki: Pki, name: str, extra: str = "") -> Path:
    """A config beside the PEM files naming them relatively (resolved against its folder)."""
    return write_config(
        pki.dir,
        name,
        f"tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n{extra}",
    )


def client_context(pki: Pki, cert: trustme.LeafCert | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    pki.ca.configure_trust(ctx)
    if cert is not None:
        cert.configure_cert(ctx)
    return ctx


@contextlib.asynccontextmanager
async def serve(cfg: WebConfig, *, exempt: Collection[str] = ()) -> AsyncIterator[str]:
    """A real aiohttp server on 127.0.0.1 (port 0) with the middlewares; yields its base URL."""

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text="hello")

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def framed(request: web.Request) -> web.Response:
        return web.Response(text="framed", headers={"X-Frame-Options": "sameorigin"})

    app = web.Application(middlewares=web_middlewares(cfg, exempt=exempt))
    app.router.add_get("/", hello)
    app.router.add_get("/healthz", health)
    app.router.add_get("/framed", framed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=cfg.ssl_context)
        await site.start()
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        yield f"{'https' if cfg.ssl_context else 'http'}://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def get(
    url: str,
    *,
    ssl_context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, str, dict[str, str]]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, ssl=ssl_context or False, headers=headers) as resp,
    ):
        return resp.status, await resp.text(), dict(resp.headers)


@contextlib.asynccontextmanager
async def tls_connection(url: str, ctx: ssl.SSLContext) -> AsyncIterator[ssl.SSLObject]:
    """A raw TLS connection (no HTTP) to look at the negotiated version and cipher."""
    host, port = url.removeprefix("https://").rsplit(":", 1)
    _, writer = await asyncio.open_connection(host, int(port), ssl=ctx)
    try:
        ssl_object = writer.get_extra_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject)
        yield ssl_object
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


# --- TLS ------------------------------------------------------------------------------------


async def test_plain_http_without_tls_config() -> None:
    async with serve(WebConfig()) as url:
        assert url.startswith("http://")
        assert (await get(url))[:2] == (200, "hello")


async def test_https_with_tls_config(
    pki: Pki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tls_config(pki, "https.yml")
    monkeypatch.chdir(tmp_path)  # relative cert paths resolve against the file, not the cwd
    cfg = load_web_config(path)
    assert cfg.ssl_context is not None
    assert cfg.client_auth_type == "NoClientCert"
    async with serve(cfg) as url:
        assert url.startswith("https://")
        assert (await get(url, ssl_context=client_context(pki)))[:2] == (200, "hello")
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(url, ssl_context=ssl.create_default_context(cafile=pki.dir / "server.pem"))
        with pytest.raises(aiohttp.ClientError):  # plain HTTP to the TLS port
            await get(url.replace("https://", "http://"))


async def test_client_cert_required(pki: Pki) -> None:
    cfg = load_web_config(
        tls_config(
            pki,
            "mtls.yml",
            "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n",
        )
    )
    async with serve(cfg) as url:
        assert (await get(url, ssl_context=client_context(pki, pki.client)))[:2] == (200, "hello")
        with pytest.raises(aiohttp.ClientError):
            await get(url, ssl_context=client_context(pki))
        with pytest.raises(aiohttp.ClientError):
            await get(url, ssl_context=client_context(pki, pki.stranger))


async def test_client_cert_verified_if_given(pki: Pki) -> None:
    ca_pem = pki.ca.cert_pem.bytes().decode()
    inline = "  client_ca: |\n" + "".join(f"    {line}\n" for line in ca_pem.splitlines())
    cfg = load_web_config(
        tls_config(pki, "optional.yml", "  client_auth_type: VerifyClientCertIfGiven\n" + inline)
    )
    async with serve(cfg) as url:
        assert (await get(url, ssl_context=client_context(pki)))[0] == 200
        assert (await get(url, ssl_context=client_context(pki, pki.client)))[0] == 200
        with pytest.raises(aiohttp.ClientError):
            await get(url, ssl_context=client_context(pki, pki.stranger))


async def test_tls_versions(pki: Pki) -> None:
    cfg = load_web_config(tls_config(pki, "tls12.yml", "  max_version: TLS12\n"))
    async with serve(cfg) as url, tls_connection(url, client_context(pki)) as tls:
        assert tls.version() == "TLSv1.2"

    cfg = load_web_config(tls_config(pki, "tls13.yml", "  min_version: TLS13\n"))
    async with serve(cfg) as url:
        async with tls_connection(url, client_context(pki)) as tls:
            assert tls.version() == "TLSv1.3"
        old_client = client_context(pki)
        old_client.maximum_version = ssl.TLSVersion.TLSv1_2
        with pytest.raises(OSError):  # ssl.SSLError or a reset, depending on timing
            async with tls_connection(url, old_client):
                pass


async def test_cipher_suites(pki: Pki) -> None:
    extra = (
        "  max_version: TLS12\n  prefer_server_cipher_suites: false\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384]\n"
    )
    cfg = load_web_config(tls_config(pki, "ciphers.yml", extra))
    assert cfg.ssl_context is not None
    assert not cfg.ssl_context.options & ssl.OP_CIPHER_SERVER_PREFERENCE
    async with serve(cfg) as url, tls_connection(url, client_context(pki)) as tls:
        cipher = tls.cipher()
        assert cipher is not None
        assert cipher[0] == "ECDHE-ECDSA-AES256-GCM-SHA384"


def _broken_pki_error(pki: Pki, name: str, text: str, files: dict[str, bytes] | None = None) -> str:
    for file_name, data in (files or {}).items():
        (pki.dir / file_name).write_bytes(data)
    with pytest.raises(WebConfigError) as info:
        load_web_config(write_config(pki.dir, name, text))
    return str(info.value).removeprefix(f"{pki.dir / name}: ")


def test_certificate_problems_name_the_key(pki: Pki) -> None:
    other_key = trustme.CA().issue_cert("localhost").private_key_pem.bytes()
    key = serialization.load_pem_private_key((pki.dir / "server.key").read_bytes(), None)
    encrypted = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )
    tls = "tls_server_config:\n  cert_file: server.pem\n"
    d = pki.dir
    assert _broken_pki_error(
        pki, "mismatch.yml", tls + "  key_file: other.key\n", {"other.key": other_key}
    ) == (f"tls_server_config.key_file: {d}/other.key does not match the certificate in cert_file")
    assert _broken_pki_error(
        pki, "encrypted.yml", tls + "  key_file: encrypted.key\n", {"encrypted.key": encrypted}
    ) == (
        f"tls_server_config.key_file: {d}/encrypted.key is encrypted: "
        "encrypted private keys are not supported"
    )
    assert _broken_pki_error(pki, "cert-as-key.yml", tls + "  key_file: server.pem\n") == (
        f"tls_server_config.key_file: {d}/server.pem holds no usable PEM private key"
    )
    bad_ca = (
        "  key_file: server.key\n  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: server.key\n"
    )
    assert _broken_pki_error(pki, "bad-ca.yml", tls + bad_ca) == (
        f"tls_server_config.client_ca_file: {d}/server.key holds no PEM certificate"
    )


# --- basic auth and headers -----------------------------------------------------------------


@pytest.fixture
def bcrypt_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Count real bcrypt runs (they happen in worker threads)."""
    calls: list[bytes] = []
    lock = threading.Lock()
    real = bcrypt.checkpw

    def counting(password: bytes, hashed: bytes) -> bool:
        with lock:
            calls.append(hashed)
        return real(password, hashed)

    monkeypatch.setattr(bcrypt, "checkpw", counting)
    yield calls


async def test_basic_auth(bcrypt_calls: list[bytes]) -> None:
    cfg = load_web_config(DATA / "valid-auth-headers.yml")
    async with serve(cfg, exempt={"/healthz"}) as url:
        status, _, headers = await get(url)
        assert status == 401
        assert headers["WWW-Authenticate"] == "Basic"
        assert headers["X-Frame-Options"] == "deny"  # configured headers on a 401 too
        assert (await get(url, headers=_basic("alice", "wrong")))[0] == 401
        assert (await get(url, headers=_basic("mallory", "secret")))[0] == 401
        assert (await get(url, headers={"Authorization": "Bearer c2VjcmV0"}))[0] == 401
        assert (await get(url, headers={"Authorization": "Basic %%%"}))[0] == 401
        assert (await get(url, headers={"Authorization": "Basic YWxpY2U="}))[0] == 401  # no ':'
        assert (await get(url, headers=_basic("alice", "x" * 100)))[0] == 401  # > 72 bytes
        status, text, headers = await get(url, headers=ALICE)
        assert (status, text) == (200, "hello")
        assert headers["X-Frame-Options"] == "deny"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert "Content-Security-Policy" not in headers  # blank: unset
        assert (await get(url, headers=_basic("alice", "secret")))[0] == 200
        # The exempt path passes without credentials; near misses do not.
        assert (await get(url + "/healthz"))[:2] == (200, "ok")
        assert (await get(url + "/healthz/"))[0] == 401
        assert (await get(url + "/metrics"))[0] == 401
        # Unknown routes are behind auth as well, and carry the headers.
        status, _, headers = await get(url + "/metrics", headers=ALICE)
        assert (status, headers["X-Frame-Options"]) == (404, "deny")
        # A header the handler sets itself wins, as in exporter-toolkit.
        assert (await get(url + "/framed", headers=ALICE))[2]["X-Frame-Options"] == "sameorigin"
    # mallory is unknown but still cost a bcrypt run (against a decoy of alice's cost): no
    # timing oracle.
    decoys = [h for h in bcrypt_calls if h != cfg.users["alice"]]
    assert decoys and all(h[:7] == cfg.users["alice"][:7] for h in decoys)


async def test_successful_checks_are_cached(bcrypt_calls: list[bytes]) -> None:
    cfg = load_web_config(DATA / "valid-auth-headers.yml")
    async with serve(cfg) as url:
        for _ in range(3):
            assert (await get(url, headers=ALICE))[0] == 200
        assert len(bcrypt_calls) == 1
        for _ in range(2):
            assert (await get(url, headers=_basic("alice", "wrong")))[0] == 401
        assert len(bcrypt_calls) == 3  # failures are not cached
        assert (await get(url, headers=ALICE))[0] == 200
        assert len(bcrypt_calls) == 3  # and do not evict the good entry


async def test_concurrent_first_requests_run_bcrypt_once(bcrypt_calls: list[bytes]) -> None:
    cfg = load_web_config(DATA / "valid-auth-headers.yml")
    async with serve(cfg) as url:
        results = await asyncio.gather(*(get(url, headers=ALICE) for _ in range(8)))
        assert [status for status, _, _ in results] == [200] * 8
        assert len(bcrypt_calls) == 1


async def test_password_with_colon_and_utf8(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw("pa:ss wörd".encode(), bcrypt.gensalt(rounds=4)).decode()
    path = write_config(tmp_path, "users.yml", f"basic_auth_users:\n  jörg: '{hashed}'\n")
    async with serve(load_web_config(path)) as url:
        assert (await get(url, headers=_basic("jörg", "pa:ss wörd")))[0] == 200
        assert (await get(url, headers=_basic("jörg", "pa")))[0] == 401


async def test_https_with_basic_auth(pki: Pki) -> None:
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    users = f"basic_auth_users:\n  alice: '{hashed}'\n"
    path = write_config(
        pki.dir,
        "https-auth.yml",
        f"tls_server_config:\n  cert_file: {pki.dir}/server.pem\n  key_file: server.key\n{users}",
    )
    async with serve(load_web_config(path), exempt=["/healthz"]) as url:
        ctx = client_context(pki)
        assert (await get(url, ssl_context=ctx))[0] == 401
        assert (await get(url, ssl_context=ctx, headers=ALICE))[:2] == (200, "hello")
        assert (await get(url + "/healthz", ssl_context=ctx))[0] == 200


async def test_no_users_means_no_auth() -> None:
    app_cfg = WebConfig()
    async with serve(app_cfg) as url:
        assert (await get(url))[0] == 200
    assert callable(basic_auth_middleware(app_cfg, exempt=["/healthz"]))
