"""A real headless browser for tests: Debian's Chromium driven by Playwright, kept on loopback.

Chromium is not a Python process, so the network guard cannot see it: it is launched with its
background networking off, a dead-end proxy on loopback for anything that is not loopback, a
resolver that answers only for loopback, and every page request to another host aborted and
recorded.
`playwright install` is never needed (it downloads browsers); a missing Chromium is an error.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import (
    ConsoleMessage,
    Dialog,
    Request,
    Route,
    async_playwright,
)
from playwright.async_api import Error as PlaywrightError

CHROMIUM = Path("/usr/bin/chromium")
LOCAL_HOSTS = frozenset({"127.0.0.1", "::1", "localhost"})

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--metrics-recording-only",
    "--no-default-browser-check",
    "--disable-domain-reliability",
    "--disable-client-side-phishing-detection",
    "--dns-prefetch-disable",
    "--no-pings",
    # Name lookups answer only for loopback; the proxy (added per launch) catches the rest.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost, EXCLUDE 127.0.0.1, EXCLUDE [::1]",
)

# The cells of the status page's parity matrix, with their computed background colour.
CELLS_JS = """() => Array.from(document.querySelectorAll('#parity-matrix td[data-target]')).map(
  (td) => ({target: td.dataset.target, probe: td.dataset.probe, verdict: td.dataset.verdict,
            title: td.title, text: td.innerText,
            background: getComputedStyle(td).backgroundColor}))"""


class _Sink:
    """A dead-end HTTP proxy on 127.0.0.1: Chromium sends every connection to a host that is not
    loopback here (loopback bypasses proxies), and it records the first line and hangs up.

    The flags above do not silence Chromium 156 altogether: it still tries the component
    updater (update.googleapis.com) and account checks (accounts.google.com). They end here.
    """

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.server: asyncio.Server | None = None
        self.handlers: set[asyncio.Task[None]] = set()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            line = await asyncio.wait_for(reader.readline(), 5)
            self.seen.append(line.decode("latin-1").strip() or "(no request line)")
        except (TimeoutError, OSError):
            self.seen.append("(no request line)")
        finally:
            writer.close()
            self.handlers.discard(task)

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aexit__(self, *exc: object) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()
        for task in list(self.handlers):
            task.cancel()
        await asyncio.gather(*self.handlers, return_exceptions=True)


class BrowserMissingError(RuntimeError):
    """Debian's Chromium is not installed: the browser tests cannot run and must fail."""


@dataclass(slots=True)
class PageReport:
    url: str
    status: int | None = None
    html: str = ""
    title: str = ""
    console: list[tuple[str, str]] = field(default_factory=list)
    """(type, text) of every console message."""
    page_errors: list[str] = field(default_factory=list)
    """Uncaught exceptions in the page."""
    failed_requests: list[str] = field(default_factory=list)
    """Requests that failed, blocked ones included."""
    blocked_requests: list[str] = field(default_factory=list)
    """Requests to a host that is not loopback: aborted before they left."""
    requests: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    """alert/confirm/prompt dialogs the page opened (each dismissed)."""
    cells: list[dict[str, Any]] = field(default_factory=list)
    """The parity matrix cells: data-* attributes, title, text, computed background."""
    evaluated: dict[str, Any] = field(default_factory=dict)
    """Results of the caller's JavaScript expressions, by name."""
    background: list[str] = field(default_factory=list)
    """What Chromium itself tried to reach beyond loopback (proxy request lines): stopped."""

    @property
    def console_errors(self) -> list[str]:
        return [text for kind, text in self.console if kind in ("error", "assert")]

    def cell(self, target: str, probe: str) -> dict[str, Any]:
        found = [c for c in self.cells if c["target"] == target and c["probe"] == probe]
        if len(found) != 1:
            raise LookupError(f"{len(found)} cells for {target}/{probe}")
        return found[0]


def _is_local(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and (parts.hostname or "") in LOCAL_HOSTS


async def load_page(
    url: str,
    screenshot: Path,
    *,
    evaluate: Mapping[str, str] | None = None,
    executable: Path = CHROMIUM,
    timeout_ms: float = 10_000,
    viewport: tuple[int, int] = (1400, 900),
) -> PageReport:
    """Load `url` in headless Chromium, wait for `load`, save a full-page PNG to `screenshot`,
    evaluate each JavaScript expression of `evaluate`, and report what the page did."""
    if not executable.exists():
        raise BrowserMissingError(
            f"headless browser tests need Debian's Chromium at {executable}: "
            "apt-get install -y chromium (never `playwright install`: it downloads a browser)"
        )
    if not _is_local(url):
        raise ValueError(f"load_page only loads loopback pages, not {url!r}")
    report = PageReport(url=url)

    async def route(r: Route) -> None:
        if _is_local(r.request.url):
            await r.continue_()
        else:
            report.blocked_requests.append(r.request.url)
            await r.abort("blockedbyclient")

    async def on_dialog(d: Dialog) -> None:
        report.dialogs.append(f"{d.type}: {d.message}")
        await d.dismiss()

    def on_console(m: ConsoleMessage) -> None:
        report.console.append((m.type, m.text))

    def on_failed(r: Request) -> None:
        report.failed_requests.append(f"{r.url}: {r.failure}")

    screenshot.parent.mkdir(parents=True, exist_ok=True)
    sink = _Sink()
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        async with sink as proxy, async_playwright() as pw:
            context = await pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(executable),
                headless=True,
                args=[*CHROMIUM_ARGS, f"--proxy-server={proxy}"],
                viewport={"width": viewport[0], "height": viewport[1]},
                service_workers="block",
                accept_downloads=False,
                timeout=timeout_ms,
            )
            try:
                context.set_default_timeout(timeout_ms)
                await context.route("**/*", route)
                page = context.pages[0] if context.pages else await context.new_page()
                page.on("console", on_console)
                page.on("pageerror", lambda exc: report.page_errors.append(str(exc)))
                page.on("request", lambda r: report.requests.append(r.url))
                page.on("requestfailed", on_failed)
                page.on("dialog", on_dialog)
                response = await page.goto(url, wait_until="load")
                report.status = response.status if response is not None else None
                report.html = await page.content()
                report.title = await page.title()
                report.cells = await page.evaluate(CELLS_JS)
                for name, js in (evaluate or {}).items():
                    report.evaluated[name] = await page.evaluate(js)
                await page.screenshot(path=str(screenshot), full_page=True)
            except PlaywrightError as exc:
                raise AssertionError(f"browser failed on {url}: {exc}") from exc
            finally:
                await context.close()
    report.background = sink.seen
    return report
