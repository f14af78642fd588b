"""The status page of a running `probe serve` on the lab, in a real headless Chromium at
1366x768: the matrix shows the faulty targets marked, the page fits the window's width, no
console errors, nothing fetched from other hosts."""

from __future__ import annotations

from pathlib import Path

import pytest
from browser import load_page
from serving import serve

from monitor.lab.loopback import LabFacts
from monitor.lab.run import write_config
from monitor.web.statuspage import VERDICT_STYLE


def css_colour(hex_colour: str) -> str:
    """'#f7c1c1' as a browser's computed style writes it: 'rgb(247, 193, 193)'."""
    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgb({r}, {g}, {b})"


ARTIFACTS = Path(__file__).parent / "artifacts"


@pytest.mark.browser
async def test_status_page_in_chromium(lab_session: LabFacts, tmp_path: Path) -> None:
    cfg = write_config(lab_session, tmp_path / "lab.yml", vantage="lab-browser", interval="3s")
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "serve-status-page.png"
    with serve(cfg) as served:
        served.wait_ready()
        served.wait_verdicts(
            {
                ("v4_only", "tcp"): "ipv6_failed",
                ("no_aaaa", "tls"): "ipv6_missing",
                ("cert_differs_v6", "tls"): "mismatch",
                ("healthy", "http3"): "ok",
            }
        )
        # A 1366x768 laptop: the page never scrolls sideways (the matrix would, in its box).
        report = await load_page(
            served.url + "/",
            shot,
            viewport=(1366, 768),
            evaluate={
                "page": "document.documentElement.scrollWidth",
                "box": "document.querySelector('.matrix-box').clientWidth",
            },
        )
    assert report.status == 200
    assert report.console_errors == [] and report.page_errors == []
    assert report.blocked_requests == [] and report.dialogs == []
    assert all(r.startswith(served.url) for r in report.requests), report.requests
    faulty = report.cell("v4_only", "tcp")
    assert faulty["verdict"] == "ipv6_failed"
    assert report.cell("no_aaaa", "tls")["verdict"] == "ipv6_missing"
    assert report.cell("cert_differs_v6", "tls")["verdict"] == "mismatch"
    assert report.cell("healthy", "http3")["verdict"] == "ok"
    assert faulty["background"] != report.cell("healthy", "tcp")["background"]
    # each verdict is painted in its own colour from the page's legend
    assert faulty["background"] == css_colour(VERDICT_STYLE["ipv6_failed"][0])
    assert "lab-browser" in report.html
    assert report.evaluated["page"] <= 1366, report.evaluated
    assert report.evaluated["box"] <= 1366
    assert shot.stat().st_size > 10_000
