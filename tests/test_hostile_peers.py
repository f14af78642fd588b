"""Hostile peers (tests/hostile.py) against the real probes and commands (issue 13, findings 3,
4 and 6): what a server sends can neither blind the vantage nor reach a terminal or a log raw.

- A QPACK bomb or a header flood over HTTP/3 ends as `protocol_error`, with `probe run` under
  150 MB; the same caps hold for HTTP/2 and HTTP/1.1 (docs/probes.md, "Response header caps").
- Text a peer chooses (a CONNECTION_CLOSE reason, a certificate name) reaches `probe serve`'s
  text log and `probe run`'s table with its control characters escaped.
- Malformed answers (a non-numeric `:status`, a certificate whose subjectAltName does not
  parse, an ICMPv6 error on the QUIC socket) are the error kinds docs/probes.md promises, never
  `internal_error`, and leave no connection open.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from hostile import (
    HostileH3,
    HostileTls,
    Pem,
    h3_close,
    h3_dynamic_bomb,
    h3_many_headers,
    h3_ok,
    h3_static_flood,
    issue,
    raw_san_cert,
)

from monitor.cli import main
from monitor.lab.loopback import LabFacts, endpoint_host
from probes.base import ErrorKind, Family, ProbeEnv, ProbeKind, ProbeResult, Resolution, Target
from probes.base import TlsSpec as TargetTls
from probes.details import QuicExchange, TlsHandshake
from probes.handler import run_probe
from probes.httpbase import MAX_HEADER_LIST_SIZE, MAX_HEADERS

ROOT = Path(__file__).resolve().parents[1]
SERVER_NAME = "hostile.example"
# A reason phrase that, printed raw, would start a log line of its own and then set the
# terminal's title, write the clipboard (OSC 52) and clear the screen.
FORGED_LINE = "2030-01-01 00:00:00,000 ERROR dualstack.vantage: forged by the peer"
TERMINAL_ATTACK = "\x1b]0;pwned\x07\x1b]52;c;ZXZpbA==\x07\x1b[2J"


def env_for_children() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    return env


@pytest.fixture
def pem(tmp_path: Path) -> Pem:
    return issue(tmp_path, SERVER_NAME)


def hostile_config(
    path: Path, lab: LabFacts, port: int, ca_file: Path, probes: list[str], **extra: Any
) -> Path:
    """A config probing one target whose name the lab's DNS resolves to ::1 and 127.0.0.1,
    at the hostile server's port."""
    doc = {
        "vantage": "hostile",
        "interval": "1s",
        "timeout": "3s",
        "resolver": {"nameservers": ["127.0.0.1"], "port": lab.dns_port},
        "tls": {"ca_file": str(ca_file)},
        "targets": [
            {
                "name": "hostile",
                "service": "custom",
                "host": endpoint_host("healthy"),
                "port": port,
                "probes": probes,
                "tls": {"server_name": SERVER_NAME},
            }
        ],
        **extra,
    }
    path.write_text(yaml.safe_dump(doc))
    return path


async def probe_once(
    kind: ProbeKind, port: int, ca_file: Path, family: Family = "ipv4", timeout: float = 5.0
) -> ProbeResult:
    address = "127.0.0.1" if family == "ipv4" else "::1"
    target = Target(
        name="hostile",
        service="custom",
        region="",
        host=address,
        port=port,
        tls=TargetTls(server_name=SERVER_NAME),
        timeout=timeout,
    )
    resolution = Resolution(family=family, addresses=(address,))
    return await run_probe(kind, target, family, resolution, ProbeEnv(ssl_cafile=str(ca_file)))


# -- finding 3: HTTP/3 header decompression ----------------------------------------------------

# `probe ARGS` that writes its peak RSS (VmHWM, kB) to argv[1] as it exits. Not wait4()'s
# ru_maxrss: a child forked from pytest inherits the parent's high-water mark at exec (Linux
# keeps the larger of the two), so in a long test session it would report pytest's peak.
PEAK_RSS = textwrap.dedent(
    """
    import atexit, sys
    from pathlib import Path

    def peak():
        status = Path("/proc/self/status").read_text().splitlines()
        hwm = next(line.split()[1] for line in status if line.startswith("VmHWM:"))
        Path(sys.argv[1]).write_text(hwm)

    atexit.register(peak)
    from monitor.cli import main
    sys.exit(main(sys.argv[2:]))
    """
)


def test_qpack_bomb_is_protocol_error_under_150_mb(
    lab_session: LabFacts, pem: Pem, tmp_path: Path
) -> None:
    """A 200 kB header block of references to one 3 kB dynamic-table entry (600 MB decoded):
    `probe run` peaks under 150 MB and says protocol_error, on both families."""
    bomb = h3_dynamic_bomb()
    with HostileH3(pem, {"ipv4": bomb, "ipv6": bomb}) as server:
        cfg = hostile_config(
            tmp_path / "bomb.yml", lab_session, server.port, pem.ca_file, ["http3"]
        )
        out, hwm = tmp_path / "report.json", tmp_path / "vmhwm"
        with out.open("w") as stdout:
            proc = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    PEAK_RSS,
                    str(hwm),
                    "run",
                    "--config",
                    str(cfg),
                    "--format",
                    "json",
                ],
                stdout=stdout,
                stderr=subprocess.DEVNULL,
                env=env_for_children(),
                timeout=60,
                check=False,
            )
    peak_mb = int(hwm.read_text()) / 1024
    assert peak_mb < 150, f"probe run peaked at {peak_mb:.0f} MB"
    assert proc.returncode == 0, proc.returncode  # IPv4 and IPv6 failed alike: both_failed
    doc = json.loads(out.read_text())
    kinds = {r["family"]: (r["error"] or {}).get("kind") for r in doc["results"]}
    assert kinds == {"ipv4": "protocol_error", "ipv6": "protocol_error"}, doc["results"]


@pytest.mark.parametrize(
    ("behaviour", "why"),
    [
        (h3_static_flood(), "header block over the size cap"),
        (h3_many_headers(MAX_HEADERS + 1), "more fields than the count cap"),
    ],
    ids=["static-flood", "many-headers"],
)
async def test_http3_header_caps(behaviour: Any, why: str, pem: Pem) -> None:
    with HostileH3(pem, {"ipv4": behaviour}) as server:
        r = await probe_once("http3", server.port, pem.ca_file)
    assert r.error is not None and r.error.kind is ErrorKind.PROTOCOL_ERROR, (why, r.error)
    assert "header" in r.error.message


async def test_http3_headers_under_the_caps_pass(pem: Pem) -> None:
    with HostileH3(pem, {"ipv4": h3_many_headers(MAX_HEADERS - 2)}) as server:
        r = await probe_once("http3", server.port, pem.ca_file)
    assert r.success, r.error
    assert isinstance(r.details, QuicExchange) and r.details.status == 200


@pytest.mark.parametrize(
    "headers",
    [
        [(":status", "200"), *[(f"x-h{i}", "v") for i in range(MAX_HEADERS + 1)]],
        [(":status", "200"), ("x-big", "v" * (MAX_HEADER_LIST_SIZE + 1))],
    ],
    ids=["many-headers", "big-header"],
)
async def test_http2_header_caps(headers: list[tuple[str, str]], pem: Pem) -> None:
    with HostileTls(pem, headers) as server:
        r = await probe_once("http2", server.port, pem.ca_file)
    assert r.error is not None and r.error.kind is ErrorKind.PROTOCOL_ERROR, r.error


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 200 OK\r\n"
        + b"".join(b"x-h%d: v\r\n" % i for i in range(MAX_HEADERS + 1))
        + b"content-length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nx-big: "
        + b"v" * (MAX_HEADER_LIST_SIZE + 1)
        + b"\r\ncontent-length: 0\r\n\r\n",
    ],
    ids=["many-headers", "big-header"],
)
async def test_http11_header_caps(head: bytes, pem: Pem) -> None:
    with HostileTls(pem, [], http11_response=head) as server:
        r = await probe_once("http2", server.port, pem.ca_file)
    assert r.error is not None and r.error.kind is ErrorKind.PROTOCOL_ERROR, r.error


# -- finding 4: peer text in logs and on terminals ---------------------------------------------


def test_quic_close_reason_cannot_forge_a_log_line(
    lab_session: LabFacts, pem: Pem, tmp_path: Path
) -> None:
    """`probe serve --log-format text`: a CONNECTION_CLOSE reason with a newline stays inside
    its (quoted) field of the one `probe failed` line (first-round failures are logged at debug
    level, the round's summary at info)."""
    close = h3_close(f"bye\n{FORGED_LINE}{TERMINAL_ATTACK}")
    with HostileH3(pem, {"ipv4": close, "ipv6": close}) as server:
        cfg = hostile_config(
            tmp_path / "serve.yml", lab_session, server.port, pem.ca_file, ["http3"]
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "monitor.cli",
                "--log-level",
                "debug",
                "serve",
                "--config",
                str(cfg),
                "--listen",
                "127.0.0.1:0",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env_for_children(),
        )
        lines: list[str] = []
        assert proc.stderr is not None
        stderr = proc.stderr

        def pump() -> None:
            for line in stderr:
                lines.append(line)

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        try:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and sum("probe failed" in x for x in lines) < 2:
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            reader.join(10)
            stderr.close()
        lines = [x.rstrip("\n") for x in lines]
    failed = [x for x in lines if "probe failed" in x]
    assert failed, "\n".join(lines)
    assert not [x for x in lines if x.startswith("2030-01-01")], "a peer forged a log line"
    assert not [x for x in lines if "\x1b" in x], "an escape sequence reached the log"
    assert all('error="' in x and "\\n2030-01-01" in x and "\\x1b]0;pwned" in x for x in failed)


async def test_run_table_passes_no_terminal_escapes(
    lab_session: LabFacts, pem: Pem, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`probe run`'s table quotes an IPv6 failure's message: the peer's OSC and CSI sequences
    show as text, and none reaches the terminal."""
    attack = h3_close(f"bye {TERMINAL_ATTACK}\nmore")
    with HostileH3(pem, {"ipv4": h3_ok, "ipv6": attack}) as server:
        cfg = hostile_config(tmp_path / "run.yml", lab_session, server.port, pem.ca_file, ["http3"])
        status = await asyncio.to_thread(main, ["run", "--config", str(cfg), "--no-progress"])
    out = capsys.readouterr().out
    assert status == 1  # ipv6_failed
    assert "ipv6_failed" in out
    assert "\x1b" not in out and "\x07" not in out
    assert "pwned" in out  # the message is shown, as text


async def test_certificate_names_are_escaped(tmp_path: Path) -> None:
    """A subjectAltName dNSName holding ESC is shown as the text `\\x1b`."""
    pem = raw_san_cert(tmp_path, b"\x30\x03\x82\x01\x1b", subject_cn="evil\x1b[2Jname")
    with HostileTls(pem, [(":status", "200")]) as server:
        r = await probe_once("tls", server.port, pem.ca_file)
    assert isinstance(r.details, TlsHandshake) and r.details.certificate is not None
    cert = r.details.certificate
    assert cert.sans == ("\\x1b",)
    assert "\x1b" not in cert.subject and "\\x1b[2J" in cert.subject


# -- finding 6: malformed answers are error kinds, not internal_error --------------------------


async def test_http2_non_numeric_status_is_protocol_error(pem: Pem) -> None:
    with HostileTls(pem, [(":status", "abc"), ("server", "hostile")]) as server:
        r = await probe_once("http2", server.port, pem.ca_file)
    assert r.error is not None and r.error.kind is ErrorKind.PROTOCOL_ERROR, r.error
    assert "status" in r.error.message


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("kind", ["tls", "http2"])
async def test_malformed_san_is_reported_and_closed(kind: ProbeKind, tmp_path: Path) -> None:
    """A trusted leaf whose subjectAltName does not parse: its names match nothing
    (tls_hostname_mismatch), what was presented is still described, and the unverified second
    connection is closed."""
    pem = raw_san_cert(tmp_path)
    with HostileTls(pem, [(":status", "200")]) as server:
        before = _open_fds()
        r = await probe_once(kind, server.port, pem.ca_file)
        deadline = time.monotonic() + 5
        while (server.open or _open_fds() > before) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert server.open == 0, "a connection of the probe is still open"
        assert server.accepted == 1  # the unverified look (the first failed its handshake)
    assert r.error is not None and r.error.kind is ErrorKind.TLS_HOSTNAME_MISMATCH, r.error
    assert isinstance(r.details, TlsHandshake) and r.details.certificate is not None
    assert r.details.certificate.subject == f"CN={SERVER_NAME}"
    assert r.details.certificate.sans == ()


NETNS_QUIC_CHILD = textwrap.dedent(
    """
    import asyncio, json, subprocess, sys
    from probes.base import ProbeEnv, Resolution, Target
    from probes.handler import run_probe

    async def main(route_after: float | None) -> None:
        target = Target(name="t", service="x", region="", host="2001:db8::2", port=443,
                        timeout=5.0)
        res = Resolution(family="ipv6", addresses=("2001:db8::2",))
        probe = asyncio.ensure_future(run_probe("http3", target, "ipv6", res, ProbeEnv()))
        if route_after is not None:
            # Mid-handshake the path goes away: the next datagram on the connected socket
            # gets EHOSTUNREACH from the kernel (an unreachable route, as a router's ICMPv6
            # would make it), which asyncio hands to the protocol's error_received().
            await asyncio.sleep(route_after)
            subprocess.run(["ip", "-6", "route", "add", "unreachable", "2001:db8::2/128"],
                           check=True)
        r = await probe
        print(json.dumps({"kind": str(r.error.kind) if r.error else None,
                          "message": r.error.message if r.error else None}))

    asyncio.run(main(float(sys.argv[1]) if len(sys.argv) > 1 else None))
    """
)


def _nft(ns_exec: list[str], chain_hook: str, verdict: str) -> None:
    rules = (
        f"table inet hostile {{\n chain c {{\n  type filter hook {chain_hook} priority 0;\n"
        f"  ip6 daddr 2001:db8::2 udp dport 443 {verdict}\n }}\n}}\n"
    )
    subprocess.run(
        [*ns_exec, "nft", "-f", "-"],
        input=rules,
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )


@pytest.mark.netns
@pytest.mark.parametrize(
    ("where", "kind"),
    [("route", "host_unreachable"), ("local", "network_unreachable")],
    ids=["host-unreachable-mid-handshake", "local-firewall"],
)
def test_socket_errors_on_the_quic_socket_are_error_kinds(where: str, kind: str) -> None:
    """The QUIC socket reports an error while the handshake waits: EHOSTUNREACH (the path to
    the peer became unreachable) is `host_unreachable`, as docs/probes.md promises; a local
    firewall refusing the datagram (EPERM) is `network_unreachable`. Both well before the
    timeout, never `internal_error`."""
    from lab.netns import namespace, veth

    with namespace("ds-cli") as client, namespace("ds-peer") as peer:
        veth(client, ["2001:db8::1/64"], peer, ["2001:db8::2/64"])
        # The peer never answers: the client keeps retransmitting its Initial.
        _nft(peer.exec_prefix(), "input", "drop")
        if where == "local":
            _nft(client.exec_prefix(), "output", "drop")
        t0 = time.monotonic()
        args = ["0.3"] if where == "route" else []
        proc = subprocess.run(
            [*client.exec_prefix(), sys.executable, "-c", NETNS_QUIC_CHILD, *args],
            capture_output=True,
            text=True,
            timeout=60,
            env=env_for_children(),
            check=False,
        )
        elapsed = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["kind"] == kind, result
    assert elapsed < 4.5, f"took {elapsed:.1f} s: the ICMP error was not used"
