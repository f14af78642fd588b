"""A probe kind is declared once: a kind defined here, registered with one call, is probed by
`probe run`, shown in its table and JSON, validated by the report's schema, judged by parity
from its own `compared` table and exported on /metrics with a metric of its own, with no
package file changed. And no second list of kinds hides anywhere in the package."""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from toykind import registered

from monitor.cli import main
from monitor.config import load_config
from monitor.engine.round import run_round
from monitor.engine.schema import report_schema
from monitor.lab.dnsserver import DnsRecord, DnsServer
from monitor.serve.exporter import Exposition
from monitor.serve.metrics import metrics as metric_rows
from monitor.serve.state import Store
from probes import kinds
from probes.base import Outcome, ProbeRequest
from probes.details import Details
from probes.errors import classify
from probes.kinds import SIG, Compared, Kind, KindMetric

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True, slots=True, kw_only=True)
class Banner(Details):
    """The toy kind: the first line a server sends."""

    line: str


async def banner_probe(req: ProbeRequest) -> Outcome:
    """Connect to the address, read one line: a real exchange with a real peer."""
    try:
        reader, writer = await asyncio.open_connection(req.address, req.target.port)
    except OSError as exc:
        return Outcome(success=False, error=classify(exc))
    try:
        line = (await reader.readline()).decode().strip()
    finally:
        writer.close()
    return Outcome(success=True, phases={"greeting": 0.001}, details=Banner(line=line))


TOY = Kind(
    name="banner",
    probe=banner_probe,
    summary="the first line a server sends",
    details=(Banner,),
    compared={Banner: (Compared[Banner]("line", lambda d: d.line, SIG),)},
    phases=("greeting",),
    metrics=(
        KindMetric(
            name="dualstack_banner_characters",
            help="Characters in the first line the server sent over this family.",
            value=lambda r: len(r.details.line) if isinstance(r.details, Banner) else None,
        ),
    ),
)


@contextlib.asynccontextmanager
async def banner_servers() -> AsyncIterator[int]:
    """One port on both loopbacks; IPv6 greets differently, which parity must call a mismatch."""

    def greeter(text: bytes) -> Any:
        async def greet(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            w.write(text)
            await w.drain()
            w.close()

        return greet

    v6 = await asyncio.start_server(greeter(b"hello from six\n"), "::1", 0)
    port = v6.sockets[0].getsockname()[1]
    v4 = await asyncio.start_server(greeter(b"hello from four\n"), "127.0.0.1", port)
    try:
        yield port
    finally:
        for s in (v4, v6):
            s.close()


def config(tmp_path: Path, dns_port: int, port: int) -> Path:
    doc = {
        "vantage": "toy",
        "timeout": "2s",
        "resolver": {"nameservers": ["127.0.0.1"], "port": dns_port},
        "targets": [
            {"name": "greeter", "host": "greeter.example.com", "port": port, "probes": ["banner"]}
        ],
    }
    path = tmp_path / "toy.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


def run_cli(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = main(list(argv))
    return rc, out.getvalue()


async def test_a_kind_registered_from_outside_is_probed_judged_reported(tmp_path: Path) -> None:
    records = {
        "example.com": [DnsRecord(rtype="SOA", value="ns.example.com. h.example.com. 1 1 1 1 1")],
        "greeter.example.com": [
            DnsRecord(rtype="A", value="127.0.0.1"),
            DnsRecord(rtype="AAAA", value="::1"),
        ],
    }
    with registered(TOY):
        async with DnsServer(records, ["example.com"]) as dns, banner_servers() as port:
            cfg = config(tmp_path, dns.port, port)
            rc, out = await asyncio.to_thread(
                run_cli, "run", "--config", str(cfg), "--format", "json"
            )
            doc = json.loads(out)
            jsonschema.validate(doc, report_schema())
            rc_table, table = await asyncio.to_thread(
                run_cli, "run", "--config", str(cfg), "--no-progress"
            )
            metrics = await exported(cfg)
        assert kinds.get("banner") is TOY
    assert "banner" not in kinds.names()  # gone with the block, and its metric with it
    assert "dualstack_banner_characters" not in {m.name for m in metric_rows()}

    results = {r["family"]: r for r in doc["results"]}
    assert results["ipv4"]["details"] == {"line": "hello from four"}
    assert results["ipv6"]["details"] == {"line": "hello from six"}
    assert set(results["ipv6"]["phases"]) == {"resolve", "greeting"}
    (verdict,) = doc["parity"]
    assert (verdict["probe"], verdict["verdict"]) == ("banner", "mismatch")
    assert verdict["differences"][0]["field"] == "line"
    assert rc == rc_table == 1  # a mismatch is a regression
    assert "greeter" in table and "banner" in table and "mismatch" in table
    # /metrics: the common families carry the kind, with its phases and its verdict
    assert metrics[("dualstack_probe_success", "ipv6", "")] == 1.0
    assert ("dualstack_probe_phase_duration_seconds", "ipv4", "greeting") in metrics
    assert metrics[("dualstack_parity", "", "mismatch")] == 1.0
    # and its own metric, from its declaration
    assert metrics[("dualstack_banner_characters", "ipv4", "")] == len("hello from four")
    assert metrics[("dualstack_banner_characters", "ipv6", "")] == len("hello from six")


async def exported(cfg: Path) -> dict[tuple[str, str, str], float]:
    """One round of the configuration, recorded as `probe serve` records it, and its /metrics
    text: the banner kind's samples by (name, family, phase or verdict)."""
    config = load_config(cfg)
    report = await run_round(config, config.targets)
    store = Store(vantage="toy")
    store.set_targets({t.name: t for t in config.targets})
    for p in report.parity:
        store.record([r for r in report.results if (r.target, r.probe) == (p.target, p.probe)], p)
    text = b"".join(
        x.encode() if isinstance(x, str) else x for x in Exposition.render(store.snapshot(), "")
    ).decode()
    return {
        (
            s.name,
            s.labels.get("family", ""),
            s.labels.get("phase", s.labels.get("verdict", "")),
        ): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("probe") == "banner"
    }


def test_the_schema_refuses_a_kind_that_is_not_registered() -> None:
    def probe_names() -> jsonschema.Draft202012Validator:
        return jsonschema.Draft202012Validator(
            {"$defs": report_schema()["$defs"], "$ref": "#/$defs/probe"}
        )

    assert probe_names().is_valid("tcp")
    assert not probe_names().is_valid("banner")
    with registered(TOY):
        assert probe_names().is_valid("banner")


# --- no second list of kinds ------------------------------------------------------------------

REGISTRY = ROOT / "probes" / "kinds.py"


def kind_lists(source: str, names: set[str]) -> list[int]:
    """Lines of tuple/list/set literals (and dict literals' keys) of two or more kind names."""
    hits = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Tuple | ast.List | ast.Set | ast.Dict):
            continue
        items: list[ast.expr | None] = list(node.keys if isinstance(node, ast.Dict) else node.elts)
        strings = [i.value for i in items if isinstance(i, ast.Constant)]
        if len(strings) >= 2 and len(strings) == len(items) and set(strings) <= names:
            hits.append(node.lineno)
    return hits


def json_kind_lists(value: Any, names: set[str]) -> int:
    if isinstance(value, list):
        here = len(value) >= 2 and all(isinstance(v, str) for v in value) and set(value) <= names
        return int(here) + sum(json_kind_lists(v, names) for v in value)
    if isinstance(value, dict):
        return sum(json_kind_lists(v, names) for v in value.values())
    return 0


def test_no_second_list_of_kinds_in_the_package() -> None:
    names = set(kinds.names())
    found = {
        str(path.relative_to(ROOT)): lines
        for pkg in ("monitor", "probes")
        for path in sorted((ROOT / pkg).rglob("*.py"))
        if path != REGISTRY and (lines := kind_lists(path.read_text(), names))
    }
    assert found == {}, "kinds listed outside probes/kinds.py: read the registry instead"
    for path in sorted((ROOT / "monitor" / "schemas").glob("*.json")):
        assert json_kind_lists(json.loads(path.read_text()), names) == 0, path.name


def test_the_second_list_check_can_fail() -> None:
    names = set(kinds.names())
    assert kind_lists('HEAVY = frozenset({"tls", "http2"})', names) == [1]
    assert kind_lists('PROBES = {"dns": 1, "tcp": 2}', names) == [1]
    assert kind_lists('ONE = ("tcp",)\nOTHER = ("tcp", "smtp")', names) == []
    assert json_kind_lists({"enum": ["dns", "icmp"]}, names) == 1


def test_a_kind_of_a_taken_name_is_refused() -> None:
    with registered(TOY):
        try:
            kinds.register(Kind(name="banner", probe=banner_probe, summary="again"))
        except ValueError as exc:
            assert "registered already" in str(exc)
        else:
            raise AssertionError("a second kind named banner was accepted")


def test_a_metric_name_two_kinds_declare_apart_is_refused() -> None:
    """A kind's metric is one declaration: a second one of the same name (here the HTTP kinds'
    status) is an error, not a family exported twice."""
    clash = KindMetric(name="dualstack_http_status_code", help="again", value=lambda r: None)
    with registered(replace(TOY, metrics=(clash,))), pytest.raises(ValueError, match="twice"):
        metric_rows()
    assert "dualstack_http_status_code" in {m.name for m in metric_rows()}  # gone with it
