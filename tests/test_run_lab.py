"""`probe run` against the lab's real servers: every probe kind on both families, and every
fault with its verdict and exit status."""

from __future__ import annotations

import asyncio
import json
import typing
from pathlib import Path

import jsonschema
import pytest

from monitor.cli import main
from monitor.config import load_config
from monitor.engine.report import Report, report_json
from monitor.engine.round import run_round
from monitor.engine.schema import report_schema
from monitor.lab.loopback import FAULTS, LabFacts
from monitor.lab.run import EXPECTED, expected
from probes import icmp
from probes.base import ProbeResult
from probes.details import (
    DnsAnswer,
    HttpExchange,
    IcmpEcho,
    QuicExchange,
    SoaAnswer,
    TcpConnect,
    TlsHandshake,
)

D = typing.TypeVar("D")


def details(r: ProbeResult, cls: type[D]) -> D:
    """The result's typed details, which must be of the kind its probe reports."""
    assert isinstance(r.details, cls), f"{r.target}/{r.probe}/{r.family}: {r.details!r}"
    return r.details


SCHEMA = report_schema()


def icmp_permitted() -> bool:
    return icmp._has_root()


@pytest.fixture(scope="module")
def report(lab_config_file: Path) -> Report:
    cfg = load_config(lab_config_file)
    return asyncio.run(run_round(cfg, cfg.targets))


def verdicts(report: Report) -> dict[tuple[str, str], str]:
    return {(p.target, p.probe): str(p.verdict) for p in report.parity}


def test_every_fault_has_its_verdict(report: Report) -> None:
    got = verdicts(report)
    want = {
        (name, probe): expected(name, probe, icmp_permitted=icmp_permitted())
        for name, probes in EXPECTED.items()
        for probe in probes
    }
    assert {k: got.get(k) for k in want} == want


def test_nameserver_targets_from_route53_zone(report: Report) -> None:
    got = verdicts(report)
    ns = sorted({t for t, _ in got if t.startswith("route53-ns-")})
    assert ns == ["route53-ns-example.com-1", "route53-ns-example.com-2"]
    for name in ns:
        for probe in ("dns", "tcp"):
            assert got[(name, probe)] == "ok"
    soa = [r for r in report.results if r.target == ns[0] and r.probe == "dns"]
    assert {r.family for r in soa} == {"ipv4", "ipv6"}
    assert {r.address for r in soa} == {"127.0.0.1", "::1"}  # family = transport
    assert all(
        details(r, SoaAnswer).authoritative and details(r, SoaAnswer).serial == 1 for r in soa
    )


def test_healthy_results_on_both_families(report: Report) -> None:
    by: dict[tuple[str, str], ProbeResult] = {
        (r.probe, r.family): r for r in report.results if r.target == "healthy"
    }
    for family, addr in (("ipv4", "127.0.0.1"), ("ipv6", "::1")):
        dns = by[("dns", family)]
        answer = details(dns, DnsAnswer)
        assert dns.success and answer.records == (addr,) and answer.ttl == 60
        tcp = by[("tcp", family)]
        assert tcp.success and tcp.address == addr and tcp.phases["connect"] > 0
        tls = by[("tls", family)]
        hs = details(tls, TlsHandshake)
        assert tls.success and hs.tls_version == "TLSv1.3"
        assert hs.alpn == "h2" and hs.verified is True
        assert hs.certificate is not None
        assert "dualstack.lab-healthy.us-east-1.elb.amazonaws.com" in hs.certificate.sans
        assert set(tls.phases) == {"resolve", "connect", "handshake"}
        h2 = by[("http2", family)]
        ex = details(h2, HttpExchange)
        assert h2.success and ex.status == 200 and ex.http_version == "2"
        assert ex.tls_version == "TLSv1.3"
        assert ex.alt_svc is not None and ex.alt_svc.startswith('h3=":')
        assert {"connect", "handshake", "ttfb", "transfer"} <= set(h2.phases)
        h3 = by[("http3", family)]
        quic = details(h3, QuicExchange)
        assert h3.success and quic.status == 200 and quic.alpn == "h3"
        assert {"handshake", "ttfb"} <= set(h3.phases)
        ping = by[("icmp", family)]
        if icmp_permitted():
            echo = details(ping, IcmpEcho)
            assert ping.success and echo.received == echo.sent
        else:
            assert ping.error is not None and ping.error.kind == "icmp_not_permitted"


def test_fault_error_kinds(report: Report) -> None:
    kinds: dict[tuple[str, str, str], str | None] = {
        (r.target, r.probe, r.family): (r.error.kind if r.error else None) for r in report.results
    }
    assert kinds[("no_aaaa", "dns", "ipv6")] == "dns_no_address"
    assert kinds[("no_aaaa", "http2", "ipv6")] == "dns_no_address"
    assert kinds[("nat64", "dns", "ipv6")] == "dns_nat64_synthesized"
    assert kinds[("nat64", "tcp", "ipv6")] == "dns_nat64_synthesized"
    for probe in ("dns", "tcp", "tls", "http2", "http3"):
        assert kinds[("v4_mapped", probe, "ipv6")] == "dns_not_native_ipv6"
    assert kinds[("v4_only", "tcp", "ipv6")] == "connect_refused"
    assert kinds[("v4_only", "http3", "ipv6")] == "connect_refused"
    assert kinds[("expired_v6", "tls", "ipv6")] == "tls_cert_expired"
    assert kinds[("expired_v6", "http3", "ipv6")] == "tls_cert_expired"
    assert kinds[("v6_reset", "tls", "ipv6")] == "connection_reset"
    assert kinds[("v6_timeout", "tcp", "ipv6")] == "timeout"
    assert kinds[("v6_timeout", "http3", "ipv6")] == "timeout"
    assert kinds[("missing", "dns", "ipv4")] == "dns_nxdomain"
    for probe in ("tcp", "tls", "http2", "http3"):
        assert kinds[("healthy", probe, "ipv4")] is None


def test_presented_differences(report: Report) -> None:
    by = {(p.target, p.probe): p for p in report.parity}
    diff = {d.field: d for d in by[("cert_differs_v6", "tls")].differences}
    # CA 2 is another root: the trust anchor and the names differ, and both count
    assert diff["certificate.trust_anchor"].significant and diff["certificate.sans"].significant
    rotated = by[("rotated_v6", "tls")]
    assert [(d.field, d.significant) for d in rotated.differences] == [
        ("certificate.fingerprint_sha256", False)
    ]
    expired = next(
        r for r in report.results if (r.target, r.probe, r.family) == ("expired_v6", "tls", "ipv6")
    )
    # The failed verification still shows what was presented.
    cert = details(expired, TlsHandshake).certificate
    assert cert is not None and cert.not_after_timestamp < expired.started


def test_alias_follows_cname(report: Report) -> None:
    dns = [r for r in report.results if r.target == "alias" and r.probe == "dns"]
    assert all(details(r, DnsAnswer).cname_chain == ("lab-alias.example.com",) for r in dns)


def test_json_report_validates(report: Report) -> None:
    doc = json.loads(json.dumps(report_json(report), default=str))
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert doc["vantage"] == "lab" and doc["vantage_ipv6"] is True


def test_schema_rejects_a_broken_report(report: Report) -> None:
    doc = json.loads(json.dumps(report_json(report), default=str))
    doc["parity"][0]["verdict"] = "fine"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


def test_schema_enums_match_the_code() -> None:
    from monitor.engine.parity import VERDICTS
    from probes.base import ErrorKind

    defs = SCHEMA["$defs"]
    assert defs["error"]["properties"]["kind"]["enum"] == [str(k) for k in ErrorKind]
    assert defs["parity"]["properties"]["verdict"]["enum"] == [str(v) for v in VERDICTS]


DETAIL_DEFS = {
    "dns_answer": DnsAnswer,
    "soa_answer": SoaAnswer,
    "icmp_echo": IcmpEcho,
    "tcp_connect": TcpConnect,
    "tls_handshake": TlsHandshake,
    "http_exchange": HttpExchange,
    "quic_exchange": QuicExchange,
}


@pytest.mark.parametrize("name", sorted(DETAIL_DEFS))
def test_schema_types_each_probes_details(name: str) -> None:
    """A renamed or added details field must be renamed in the schema too, or this fails."""
    import dataclasses

    definition = SCHEMA["$defs"][name]
    fields = [f.name for f in dataclasses.fields(DETAIL_DEFS[name])]
    assert sorted(definition["properties"]) == sorted(fields)
    assert sorted(definition["required"]) == sorted(fields)
    assert definition["additionalProperties"] is False


def test_schema_rejects_a_renamed_details_key(report: Report) -> None:
    doc = json.loads(json.dumps(report_json(report), default=str))
    tls = next(r for r in doc["results"] if r["probe"] == "tls" and r["success"])
    tls["details"]["version"] = tls["details"].pop("tls_version")
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, SCHEMA)


EXIT = {
    "healthy": 0,
    "alias": 0,
    "rotated_v6": 0,
    "missing": 0,
    "no_aaaa": 1,
    "v4_only": 1,
    "cert_differs_v6": 1,
    "expired_v6": 1,
    "v6_reset": 1,
    "v6_timeout": 1,
    "nat64": 1,
    "v4_mapped": 1,
}


@pytest.mark.parametrize(("target", "status"), sorted(EXIT.items()))
def test_exit_status_per_fault(
    lab_config_file: Path, target: str, status: int, capsys: pytest.CaptureFixture[str]
) -> None:
    # icmp is left out: without permission it is both_failed, which never changes the status.
    argv = ["run", "--config", str(lab_config_file), "--target", target, "--format", "json"]
    argv += [a for p in ("dns", "tcp", "tls", "http2", "http3") for a in ("--probe", p)]
    assert main(argv) == status
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, SCHEMA)
    assert {r["target"] for r in doc["results"]} == {target}  # zones filtered out too


def test_table_output(
    lab_config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)  # captured stdout: a line per row
    argv = [
        "run",
        "--config",
        str(lab_config_file),
        "--target",
        "healthy",
        "--target",
        "v4_only",
        "--target",
        "missing",
        "--probe",
        "dns",
        "--probe",
        "tcp",
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "ipv6_failed" in out and "connect_refused" in out
    closing = out[out.index("worst verdict per target:") :].splitlines()
    assert "  ipv6_failed  v4_only" in closing
    assert "  both_failed  missing" in closing
    assert "  ok           healthy" in closing
    assert any(line.startswith("summary: 5 verdicts for 3 targets:") for line in closing)
    assert any(line.startswith("exit status 1: IPv6 is worse") for line in closing)


def test_family_filter_skips_the_other(
    lab_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "run",
        "--config",
        str(lab_config_file),
        "--target",
        "v4_only",
        "--probe",
        "tcp",
        "--family",
        "ipv4",
        "--format",
        "json",
    ]
    assert main(argv) == 0
    doc = json.loads(capsys.readouterr().out)
    v = {(p["target"], p["probe"]): p["verdict"] for p in doc["parity"]}
    assert v[("v4_only", "tcp")] == "skipped"


def test_lab_is_real(lab_session: LabFacts) -> None:
    assert lab_session.dns_port > 0 and len(lab_session.endpoints) == len(FAULTS)
    assert {e.fault for e in lab_session.endpoints} == set(FAULTS)


def test_source_address_per_family(lab_config_file: Path, tmp_path: Path) -> None:
    """`source: {ipv4: ...}` binds probes to one local address (here a second loopback one)."""
    import yaml

    data = yaml.safe_load(lab_config_file.read_text())
    data["source"] = {"ipv4": "127.0.0.2", "ipv6": "::1"}
    data["route53"] = {"zones": []}
    data["targets"] = [t for t in data["targets"] if t["name"] == "healthy"]
    data["targets"][0]["probes"] = ["tcp", "http3"]
    path = tmp_path / "source.yml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path)
    rep = asyncio.run(run_round(cfg, cfg.targets))
    tcp = {r.family: r for r in rep.results if r.probe == "tcp"}
    assert details(tcp["ipv4"], TcpConnect).source_address == "127.0.0.2"
    assert details(tcp["ipv6"], TcpConnect).source_address == "::1"
    assert all(r.success for r in rep.results)


def test_an_ipv4_mapped_aaaa_is_never_dialled(report: Report) -> None:
    """::ffff:127.0.0.1 would reach the healthy IPv4 server and pass for IPv6: it is dropped,
    the verdict is ipv6_missing, and no transport probe has an address or dialled one."""
    v6 = [r for r in report.results if r.target == "v4_mapped" and r.family == "ipv6"]
    assert v6 and all(not r.success and r.addresses == () for r in v6)
    assert all(r.address is None for r in v6 if r.probe != "dns")
    dns = next(r for r in v6 if r.probe == "dns")
    assert details(dns, DnsAnswer).not_native == ("::ffff:127.0.0.1",)
    assert details(dns, DnsAnswer).records == ()
    verdicts = {p.probe: p.verdict for p in report.parity if p.target == "v4_mapped"}
    assert set(verdicts.values()) == {"ipv6_missing"}


def test_table_on_80_columns_not_a_terminal(lab_config_file: Path) -> None:
    """Acceptance (issue 16): the whole lab, COLUMNS=80, stdout a pipe: no line longer than
    80 or ending in a space, no escape code, each target one run down the first column
    (problems first), and the closing block with the real exit status."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "COLUMNS": "80"}
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "run", "--config", str(lab_config_file)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert all(line == line.rstrip() for line in lines)
    assert "\x1b" not in proc.stdout
    start = lines.index("") + 1
    table = lines[start : lines.index("", start)]
    # the narrow layout's header is a `target` line of its own, over the probe columns
    names = [line.split()[0] for line in table[1:] if line and not line.startswith(" ")]
    assert table[0] == "target"
    report_targets = {name for name in EXPECTED} | {
        "route53-ns-example.com-1",
        "route53-ns-example.com-2",
    }
    assert sorted(names) == sorted(report_targets)  # each target once: one run, never split
    from monitor.engine.parity import WORST_FIRST

    rank = {str(v): i for i, v in enumerate(WORST_FIRST)}
    permitted = icmp_permitted()
    worst = {
        n: min(rank[expected(n, p, icmp_permitted=permitted)] for p in probes)
        for n, probes in EXPECTED.items()
    }
    worst |= {n: rank["ok"] if permitted else rank["both_failed"] for n in names if n not in worst}
    assert [worst[n] for n in names] == sorted(worst[n] for n in names)  # problems first
    assert names[0] in ("v4_only", "expired_v6", "v6_reset", "v6_timeout")
    block = lines[lines.index("worst verdict per target:") :]
    assert any(line.startswith("exit status 1:") for line in block)
    assert any(line.startswith("next:") for line in block)


def test_json_counts_exit_status_places_and_times(
    lab_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """counts (every verdict, zeros too, summing to the parity entries), exit_status (the
    real one), each parity entry's service/region/host equal to its results', `none` for no
    region, and every time ISO 8601 UTC with Z."""
    import re

    from monitor.engine.parity import VERDICTS

    argv = ["run", "--config", str(lab_config_file), "--format", "json", "--probe", "tcp"]
    status = main(argv)
    doc = json.loads(capsys.readouterr().out)
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    assert doc["exit_status"] == status == 1
    assert list(doc["counts"]) == [str(v) for v in VERDICTS]
    assert sum(doc["counts"].values()) == len(doc["parity"])
    assert doc["counts"]["ipv4_failed"] == 0  # zeros are keys too
    for p in doc["parity"]:
        mine = [r for r in doc["results"] if r["target"] == p["target"]]
        assert mine and all(
            (r["service"], r["region"], r["host"]) == (p["service"], p["region"], p["host"])
            for r in mine
        )
    regions = {p["target"]: p["region"] for p in doc["parity"]}
    assert regions["alias"] == "none" and regions["healthy"] == "us-east-1"
    assert regions["route53-ns-example.com-1"] == "global"
    iso = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3})?Z$")
    times = [doc["started"], *(r["started"] for r in doc["results"])]
    assert all(isinstance(t, str) and iso.match(t) for t in times), times


def test_schema_requires_the_new_keys(report: Report) -> None:
    doc = json.loads(json.dumps(report_json(report), default=str))
    jsonschema.validate(doc, SCHEMA)
    assert "exit_status" not in doc  # only probe run adds it
    breakers: list[typing.Callable[[dict[str, typing.Any]], object]] = [
        lambda d: d.pop("counts"),
        lambda d: d["counts"].pop("skipped"),
        lambda d: d["parity"][0].pop("region"),
        lambda d: d["results"][0].update(started=1747215000.0),
        lambda d: d["results"][0].update(region=""),
    ]
    for broken in breakers:
        bad = json.loads(json.dumps(doc))
        broken(bad)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(bad, SCHEMA)


def test_lab_banner_never_cuts_words(lab_session: LabFacts) -> None:
    """`probe lab up`'s banner: each description and expected verdict whole, wrapped between
    words in its column, no line ending in a space."""
    from monitor.lab.run import describe, expected_text

    text = describe(lab_session)
    assert all(line == line.rstrip() for line in text.splitlines())
    what_at = text.splitlines()[0].index("what is wrong")
    verdicts_at = text.splitlines()[0].index("expected verdicts")
    rows: dict[str, tuple[list[str], list[str]]] = {}
    for line in text.splitlines()[1:]:
        if not line.startswith(" "):
            name = line.split()[0]
        what, verdicts = rows.setdefault(name, ([], []))
        what.extend(line[what_at:verdicts_at].split())
        verdicts.extend(line[verdicts_at:].split())
    for ep in lab_session.endpoints:
        what, verdicts = rows[ep.name]
        assert what == ep.description.split()  # every word whole, in order, in its column
        assert " ".join(verdicts) == expected_text(EXPECTED[ep.name])
    assert expected_text(EXPECTED["v4_only"]) == "ipv6_failed: tcp tls http2 http3"
    assert expected_text(EXPECTED["no_aaaa"]) == "all ipv6_missing"


def test_an_expired_certificate_is_said_once(report: Report) -> None:
    """Not 'certificate has expired (certificate has expired)'."""
    tls = next(p for p in report.parity if (p.target, p.probe) == ("expired_v6", "tls"))
    assert tls.reason.count("expired") == 1, tls.reason


def test_progress_on_a_terminal_stderr_leaves_piped_stdout_plain(lab_config_file: Path) -> None:
    """stderr a terminal, stdout a pipe: the progress bar is on the terminal, the table has no
    escape code and is not wrapped."""
    import os
    import subprocess
    import sys
    import threading

    leader, follower = os.openpty()
    seen: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:
                return
            if not chunk:
                return
            seen.append(chunk)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    argv = ["run", "--config", str(lab_config_file), "--target", "v4_only", "--probe", "tcp"]
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", *argv],
        stdout=subprocess.PIPE,
        stderr=follower,
        env=env,
        timeout=120,
        check=False,
    )
    os.close(follower)
    reader.join(5)
    os.close(leader)
    assert proc.returncode == 1
    out = proc.stdout.decode()
    assert "\x1b" not in out and "exit status 1:" in out
    assert any(line.startswith("v4_only ") for line in out.splitlines())  # a line per row
    assert b"probing" in b"".join(seen)  # and the progress bar was on the terminal
