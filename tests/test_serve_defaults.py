"""Safer defaults of `probe serve` (issue 13, finding 9): the image's HEALTHCHECK passes with
TLS on, POST /-/reload refuses cross-site requests (a page in a browser cannot reload a
vantage), and basic auth over plain HTTP is warned about at start-up. Also the TLS side of the
connection limits: a TLS client that never finishes its handshake is closed at the header
deadline."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest
import trustme
from promstack import free_port
from serving import Served, serve
from test_compose import healthcheck_code

from monitor.lab.loopback import LabFacts
from monitor.lab.run import write_config


@pytest.fixture
def config(lab_session: LabFacts, tmp_path: Path) -> Path:
    path = write_config(lab_session, tmp_path / "lab.yml", vantage="defaults", interval="5s")
    text = path.read_text()
    # One cheap target is enough here.
    import yaml

    doc = yaml.safe_load(text)
    doc["targets"] = [{**t, "probes": ["tcp"]} for t in doc["targets"] if t["name"] == "healthy"]
    doc["route53"] = {"zones": []}
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.fixture
def tls_web_config(tmp_path: Path) -> Iterator[tuple[Path, trustme.CA]]:
    ca = trustme.CA()
    leaf = ca.issue_cert("vantage.example")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "server.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "server.key"))
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server.key\n"
        f"basic_auth_users:\n  alice: '{hashed}'\n"
    )
    yield web, ca


def healthcheck(port: int) -> int:
    """The Dockerfile's HEALTHCHECK command, run as Docker would (exit status)."""
    env = {**__import__("os").environ, "HEALTHCHECK_PORT": str(port)}
    proc = subprocess.run(
        [sys.executable, "-c", healthcheck_code()], env=env, timeout=30, check=False
    )
    return proc.returncode


def test_healthcheck_passes_with_tls_on(
    config: Path, tls_web_config: tuple[Path, trustme.CA]
) -> None:
    web, ca = tls_web_config
    with serve(config, "--web.config.file", str(web)) as served:
        assert healthcheck(served.port) == 0
        ctx = ssl.create_default_context()
        ca.configure_trust(ctx)
        ctx.check_hostname = False
        with urllib.request.urlopen(
            f"https://127.0.0.1:{served.port}/healthz", context=ctx, timeout=10
        ) as resp:
            assert resp.status == 200
    assert healthcheck(free_port()) == 1


def test_every_tls_handshake_completes(
    config: Path, tls_web_config: tuple[Path, trustme.CA]
) -> None:
    """Each of 20 fresh connections finishes its handshake at once. On uvloop a ClientHello
    that arrived before TLS was set up on the accepted connection was lost, and 2 clients in 3
    waited out their timeout (the gate now puts TLS in place inside connection_made)."""
    web, ca = tls_web_config
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    ctx.check_hostname = False
    with serve(config, "--web.config.file", str(web)) as served:
        for _ in range(20):
            with urllib.request.urlopen(
                f"https://127.0.0.1:{served.port}/healthz", context=ctx, timeout=5
            ) as resp:
                assert resp.status == 200


def test_healthcheck_passes_with_plain_http(config: Path) -> None:
    with serve(config) as served:
        assert healthcheck(served.port) == 0


def post(served: Served, path: str, headers: dict[str, str]) -> int:
    req = urllib.request.Request(served.url + path, data=b"", method="POST", headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def test_reload_refuses_cross_site_requests(config: Path) -> None:
    """No users configured: a form on another site posting to /-/reload (the browser adds
    Origin and Sec-Fetch-Site) is refused; curl and the vantage's own origin are not."""
    with serve(config, "--web.enable-lifecycle") as served:
        served.wait_ready()
        applied = len(served.events("config_applied"))
        assert post(served, "/-/reload", {"Origin": "http://evil.example"}) == 403
        assert post(served, "/-/reload", {"Origin": "null"}) == 403
        assert post(served, "/-/reload", {"Sec-Fetch-Site": "cross-site"}) == 403
        assert post(served, "/-/reload", {"Sec-Fetch-Site": "same-site"}) == 403
        time.sleep(0.5)
        assert len(served.events("config_applied")) == applied  # nothing was reloaded
        own = f"http://127.0.0.1:{served.port}"
        assert post(served, "/-/reload", {"Origin": own, "Sec-Fetch-Site": "same-origin"}) == 200
        assert post(served, "/-/reload", {}) == 200  # curl -X POST sends neither header
        served.wait_event("config_applied", count=applied + 2)


def test_basic_auth_over_plain_http_is_warned(config: Path, tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"secret", bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "auth-only.yml"
    web.write_text(f"basic_auth_users:\n  alice: '{hashed}'\n")
    with serve(config, "--web.config.file", str(web)) as served:
        served.wait_event("basic_auth_without_tls")
        (warning,) = served.events("basic_auth_without_tls")
        assert warning["level"] == "warning"


def test_no_warning_with_tls(config: Path, tls_web_config: tuple[Path, trustme.CA]) -> None:
    web, _ = tls_web_config
    with serve(config, "--web.config.file", str(web)) as served:
        served.wait_event("config_applied")
        assert not served.events("basic_auth_without_tls")


def test_tls_handshake_that_never_ends_is_closed(
    config: Path, tls_web_config: tuple[Path, trustme.CA]
) -> None:
    web, _ = tls_web_config
    with serve(config, "--web.config.file", str(web), "--web.read-header-timeout", "1s") as served:
        silent = socket.create_connection(("127.0.0.1", served.port), timeout=10)
        t0 = time.monotonic()
        assert silent.recv(1) == b""  # no ClientHello ever: closed at the deadline
        took = time.monotonic() - t0
        silent.close()
    assert took < 3.0
