"""The status page: its HTML as a string (escaping, matrix, banners), then the real thing served
by aiohttp on loopback and loaded in headless Chromium, with a screenshot for people to look at."""

from __future__ import annotations

import contextlib
import copy
import json
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from aiohttp import web
from browser import BrowserMissingError, load_page

from monitor.engine.schema import report_schema
from monitor.web.statuspage import VERDICT_STYLE, render_status_page
from probes.kinds import default_names

PROBES = default_names()

ROOT = Path(__file__).parents[1]
FIXTURE = Path(__file__).parent / "testdata" / "status" / "report.json"
SCHEMA = report_schema()
ARTIFACTS = Path(__file__).parent / "artifacts"
NOW = 1747215042.0  # 42 s after the fixture's round started

INJECTIONS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>')


@pytest.fixture
def doc() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(FIXTURE.read_text())
    return loaded


def page(doc: dict[str, Any], **kw: Any) -> str:
    kw.setdefault("ready", True)
    kw.setdefault("now", NOW)
    return render_status_page(doc, **kw)


class Cells(HTMLParser):
    """Collects the parity matrix's cells and every tag seen, as a browser's parser would."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.cells: dict[tuple[str, str], dict[str, str | None]] = {}
        self.tags: list[str] = []
        self.attributes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.attributes.update(name for name, _ in attrs)
        a = dict(attrs)
        if tag == "td" and "data-target" in a:
            key = (a["data-target"] or "", a["data-probe"] or "")
            assert key not in self.cells, f"two cells for {key}"
            self.cells[key] = a


def parse(text: str) -> Cells:
    p = Cells()
    p.feed(text)
    p.close()
    return p


def test_fixture_follows_the_report_schema(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, SCHEMA, format_checker=jsonschema.FormatChecker())
    text = json.dumps(doc)
    assert all(bad in text for bad in INJECTIONS)


def test_injections_appear_only_escaped(doc: dict[str, Any]) -> None:
    text = page(doc)
    for bad in INJECTIONS:
        assert bad not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "&quot;&gt;&lt;img src=x onerror=alert(1)&gt;" in text
    parsed = parse(text)
    assert "script" not in parsed.tags and "img" not in parsed.tags
    assert not [a for a in parsed.attributes if a.startswith("on")]
    assert not re.search(r"<script|<img", text, re.IGNORECASE)


def test_everything_from_the_document_is_escaped(doc: dict[str, Any]) -> None:
    bad = INJECTIONS[1]
    doc["vantage"] = bad
    doc["started"] = bad
    doc["notes"] = [bad]
    for r in doc["results"]:
        r["target"] = r["target"] + bad
        r["service"] = r["region"] = r["host"] = bad
    for p in doc["parity"]:
        p["target"] = p["target"] + bad
        p["verdict"] = bad if p["verdict"] == "skipped" else p["verdict"]
        p["reason"] = bad
    text = page(doc)
    assert bad not in text
    assert "<img" not in text and "<script" not in text
    assert parse(text).cells  # still a matrix


def test_a_cell_per_target_and_probe_with_its_verdict(doc: dict[str, Any]) -> None:
    cells = parse(page(doc)).cells
    targets = ["healthy", "v4_only", "expired_v6", "no_aaaa"]
    assert set(cells) == {(t, k) for t in targets for k in PROBES}
    for p in doc["parity"]:
        cell = cells[(p["target"], p["probe"])]
        assert cell["data-verdict"] == p["verdict"]
        assert cell["title"] is not None and cell["title"].startswith(p["reason"] or p["verdict"])
        assert f"v-{p['verdict']}" in (cell["class"] or "").split()
    # a probe a target was not configured for is a cell too, marked as such
    assert cells[("v4_only", "icmp")]["data-verdict"] == "none"
    assert cells[("v4_only", "tcp")]["data-verdict"] == "ipv6_failed"
    assert cells[("no_aaaa", "dns")]["data-verdict"] == "ipv6_missing"
    assert cells[("expired_v6", "http3")]["data-verdict"] == "mismatch"


def test_cells_show_both_families(doc: dict[str, Any]) -> None:
    text = page(doc)
    cell = re.search(r'<td[^>]*data-target="v4_only" data-probe="tcp".*?</td>', text)
    assert cell is not None
    assert "21.2 ms" in cell.group(0) and "timeout" in cell.group(0)


def test_header_for_a_healthy_ready_vantage(doc: dict[str, Any]) -> None:
    text = page(doc)
    assert "fra-dualstack-01" in text
    assert "2025-05-14 09:30:00 UTC" in text and "42 s ago" in text
    assert "IPv6 available" in text
    assert "first round not done yet" not in text.lower()
    assert 'id="no-ipv6-warning"' not in text


def test_vantage_without_ipv6_shows_the_warning(doc: dict[str, Any]) -> None:
    doc["vantage_ipv6"] = False
    text = page(doc)
    assert 'id="no-ipv6-warning"' in text
    assert "IPv6 failures here say nothing about the endpoints" in text
    assert "IPv6 available" not in text


def test_vantage_ipv6_unknown(doc: dict[str, Any]) -> None:
    doc["vantage_ipv6"] = None
    text = page(doc)
    assert "IPv6 unknown" in text and 'id="no-ipv6-warning"' not in text


def test_ipv6_not_selected_is_not_unknown(doc: dict[str, Any]) -> None:
    doc["vantage_ipv6"] = None
    for r in doc["results"]:
        if r["family"] == "ipv6":
            r.update(skipped="ipv6 not selected", success=False, error=None, address=None)
    text = page(doc)
    assert "IPv6 not probed" in text and "IPv6 is not probed from this vantage" in text
    assert "IPv6 unknown" not in text and "No target has an IPv6 address" not in text


def test_not_ready_says_so() -> None:
    text = page({}, ready=False)
    assert "first round not done yet" in text.lower()
    assert 'id="not-ready"' in text
    assert "No results yet." in text


def test_last_failures_newest_first_and_bounded(doc: dict[str, Any]) -> None:
    failed = [r for r in doc["results"] if not r["success"] and not r["skipped"]]
    newest = sorted(failed, key=lambda r: r["started"], reverse=True)
    text = page(doc, max_failures=3)
    table = re.search(r'<table id="last-failures">.*?</table>', text, re.S)
    assert table is not None
    rows = re.findall(r"<tr><td>.*?</tr>", table.group(0))
    assert len(rows) == 3
    for row, r in zip(rows, newest, strict=False):
        assert f"<td>{r['target']}</td><td>{r['probe']}</td><td>{r['family']}</td>" in row
        assert r["error"]["kind"] in row
    assert f"Showing the newest 3 of {len(failed)} failures." in text
    all_rows = re.findall(r"<tr><td>", page(doc))
    assert len(all_rows) == len(failed) <= 20
    assert "skipped" not in table.group(0)


def test_valid_html5_skeleton(doc: dict[str, Any]) -> None:
    text = page(doc)
    assert text.startswith('<!DOCTYPE html>\n<html lang="en">')
    assert '<meta charset="utf-8">' in text
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in text
    assert text.count('id="parity-matrix"') == 1
    # nothing from another host: no URL at all in the page
    assert not re.search(r"(https?:)?//", text.replace("<!DOCTYPE html>", ""))
    parsed = parse(text)
    assert "script" not in parsed.tags and "link" in parsed.tags  # the favicon: data:, only
    assert not [a for a in parsed.attributes if a.startswith("on")]


def test_a_big_document_renders() -> None:
    one = json.loads(FIXTURE.read_text())
    doc = copy.deepcopy(one)
    for n in range(50):
        for r in one["results"]:
            doc["results"].append({**r, "target": f"{r['target']}-{n}"})
        for p in one["parity"]:
            doc["parity"].append({**p, "target": f"{p['target']}-{n}"})
    text = page(doc)
    assert len(parse(text).cells) == 51 * 4 * len(PROBES)
    assert len(re.findall(r"<tr><td>", text)) == 20


# --- the real page in a real browser --------------------------------------------------------------


def rgb(colour: str) -> str:
    r, g, b = (int(colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


@contextlib.asynccontextmanager
async def serve(body: str) -> AsyncIterator[str]:
    """`body` at / of a real aiohttp server on 127.0.0.1, on a port the kernel picks."""

    async def status(_: web.Request) -> web.Response:
        return web.Response(text=body, content_type="text/html", charset="utf-8")

    app = web.Application()
    app.router.add_get("/", status)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1" and port > 0
        yield f"http://127.0.0.1:{port}/"
    finally:
        await runner.cleanup()


@pytest.fixture
async def served(doc: dict[str, Any]) -> AsyncIterator[str]:
    async with serve(render_status_page(doc, ready=True, now=NOW)) as url:
        yield url


@pytest.mark.browser
async def test_status_page_in_headless_chromium(served: str) -> None:
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    report = await load_page(
        served,
        shot,
        viewport=(1366, 768),
        evaluate={
            "width": "document.documentElement.scrollWidth",
            "scripts": "document.querySelectorAll('script').length",
            "images": "document.querySelectorAll('img').length",
            "handlers": "document.querySelectorAll('[onerror],[onload],[onclick]').length",
            "matrix": "!!document.getElementById('parity-matrix')",
            "lang": "document.documentElement.lang",
            "charset": "document.characterSet",
        },
    )
    assert report.status == 200
    assert report.console_errors == []
    assert report.page_errors == []
    assert report.blocked_requests == []
    assert report.failed_requests == []
    assert report.requests == [served]
    # Chromium's own attempts at other hosts (component updater, ...) all ended at the sink proxy
    assert all(line.split()[0] in ("CONNECT", "GET", "POST") for line in report.background)
    assert not [line for line in report.background if "127.0.0.1" in line]
    assert report.dialogs == []
    assert report.evaluated.pop("width") <= 1366
    assert report.evaluated == {
        "scripts": 0,
        "images": 0,
        "handlers": 0,
        "matrix": True,
        "lang": "en",
        "charset": "UTF-8",
    }
    assert report.title == "IPv6 parity: fra-dualstack-01"
    assert len(report.cells) == 4 * len(PROBES)
    cell = report.cell("v4_only", "tcp")
    assert cell["verdict"] == "ipv6_failed"
    assert cell["background"] == rgb(VERDICT_STYLE["ipv6_failed"][0])
    assert report.cell("healthy", "tcp")["background"] == rgb(VERDICT_STYLE["ok"][0])
    # the browser decoded the escaped title: the hostile text is shown, as text
    assert "<script>alert(1)</script>" in report.cell("v4_only", "tls")["title"]
    assert shot.stat().st_size > 10_000
    assert shot.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


@pytest.mark.browser
async def test_warnings_in_headless_chromium(doc: dict[str, Any]) -> None:
    """A vantage without IPv6, before its first round is done: both banners show."""
    doc["vantage_ipv6"] = False
    shot = ARTIFACTS / "status-page-no-ipv6.png"
    visible = "(id) => {const e = document.getElementById(id); return !!e && e.offsetHeight > 0}"
    async with serve(render_status_page(doc, ready=False, now=NOW + 600)) as url:
        report = await load_page(
            url,
            shot,
            evaluate={
                "warning": f"({visible})('no-ipv6-warning')",
                "not_ready": f"({visible})('not-ready')",
                "readiness": "document.getElementById('readiness').innerText",
            },
        )
    assert (report.console_errors, report.page_errors, report.failed_requests) == ([], [], [])
    assert report.evaluated == {
        "warning": True,
        "not_ready": True,
        "readiness": "first round not done yet",
    }
    assert report.cell("v4_only", "tcp")["verdict"] == "ipv6_failed"


@pytest.mark.browser
async def test_a_wide_document_scrolls_in_its_box_not_the_page(doc: dict[str, Any]) -> None:
    """Twelve probe kinds, a 63-character target name, a long unbroken note: at 1366 px the
    page does not scroll sideways; the matrix scrolls inside its own box."""
    long_name = "t" * 63
    doc["results"] += [{**r, "probe": f"extra{n}"} for n in range(6) for r in doc["results"][:2]]
    doc["parity"] += [{**doc["parity"][0], "probe": f"extra{n}"} for n in range(6)]
    for r in doc["results"]:
        if r["target"] == "healthy":
            r["target"] = long_name
    doc["notes"].append("x" * 400)
    shot = ARTIFACTS / "status-page-wide.png"
    async with serve(render_status_page(doc, ready=True, now=NOW)) as url:
        report = await load_page(
            url,
            shot,
            viewport=(1366, 768),
            evaluate={
                "page": "document.documentElement.scrollWidth",
                "box": "[document.querySelector('.matrix-box').clientWidth,"
                " document.querySelector('.matrix-box').scrollWidth]",
            },
        )
    assert report.evaluated["page"] <= 1366
    client, scroll = report.evaluated["box"]
    assert client <= 1366 < scroll  # the box scrolls: its matrix is wider than the window


async def test_a_missing_chromium_is_an_error_not_a_skip(tmp_path: Path) -> None:
    with pytest.raises(BrowserMissingError, match="apt-get install -y chromium"):
        await load_page("http://127.0.0.1:1/", tmp_path / "x.png", executable=tmp_path / "none")


def test_races_say_who_won(doc: dict[str, Any]) -> None:
    text = page(doc)
    rows = dict(re.findall(r'<tr data-target="([^"]+)" data-winner="([^"]+)">', text))
    assert rows == {"healthy": "ipv6", "v4_only": "ipv4", "expired_v6": "none"}
    v4_only = re.search(r'<tr data-target="v4_only".*?</tr>', text)
    assert v4_only is not None
    assert ">IPv4<" in v4_only.group(0) and "250 ms" in v4_only.group(0)  # what IPv6 cost
    assert "&lt;script&gt;" in text and "<script" not in text  # the error message, escaped
    assert 'data-probe="race"' not in text  # no verdict: not a column of the matrix
    doc["results"] = [r for r in doc["results"] if r["probe"] != "race"]
    assert "Happy Eyeballs" not in page(doc)  # no race configured: no section


def test_targets_with_problems_first_as_in_the_table(doc: dict[str, Any]) -> None:
    from monitor.engine.parity import WORST_FIRST

    order = list(dict.fromkeys(t for t, _ in parse(page(doc)).cells))
    rank = {str(v): i for i, v in enumerate(WORST_FIRST)}
    worst = {t: min(rank[p["verdict"]] for p in doc["parity"] if p["target"] == t) for t in order}
    assert [worst[t] for t in order] == sorted(worst.values()), order
    assert order[-1] == "healthy" and order[0] != "healthy"
