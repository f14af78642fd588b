"""The status page for people: one round's report as a small self-contained HTML page.
Limits: no JavaScript, no other host, inline CSS only; every value from the report is escaped."""

from __future__ import annotations

import html
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from monitor.engine.parity import WORST_FIRST, Verdict
from monitor.engine.report import milliseconds
from probes import kinds
from probes.base import FAMILIES, NO_REGION

# verdict: (background, accent, short meaning). The background is what a cell is painted with.
VERDICT_STYLE: Mapping[str, tuple[str, str, str]] = {
    Verdict.OK: ("#d4f1d8", "#2e7d32", "IPv6 as good as IPv4"),
    Verdict.IPV6_FAILED: ("#f7c1c1", "#c62828", "IPv6 failed, IPv4 worked"),
    Verdict.IPV6_MISSING: ("#fbd0b4", "#d84315", "no IPv6 address published"),
    Verdict.MISMATCH: ("#e4d2f6", "#6a1b9a", "IPv6 endpoint presents something else"),
    Verdict.IPV6_SLOWER: ("#fde8a8", "#b07d00", "IPv6 markedly slower"),
    Verdict.IPV4_FAILED: ("#e8e0c8", "#8d7a3e", "IPv4 failed, IPv6 worked"),
    Verdict.BOTH_FAILED: ("#e8e0c8", "#8d7a3e", "both families failed"),
    Verdict.SKIPPED: ("#e6e6e6", "#757575", "not compared"),
}
CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; form-action 'none'"
"""The page's Content-Security-Policy: no script, no other host (also sent as a header)."""
_UNKNOWN_STYLE = ("#f4f4f4", "#9e9e9e", "not probed")
_REFRESH_SECONDS = 15


def _e(value: Any) -> str:
    """Escape anything for text or a quoted attribute."""
    return html.escape("" if value is None else str(value), quote=True)


def _css_class(verdict: str) -> str:
    return f"v-{verdict}" if verdict in VERDICT_STYLE else "v-unknown"


def _as_list(value: Any) -> list[Mapping[str, Any]]:
    if not isinstance(value, Sequence) or isinstance(value, str | bytes):
        return []
    return [v for v in value if isinstance(v, Mapping)]


def _ms(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or isinstance(seconds, bool):
        return "?"
    return milliseconds(seconds) if seconds < 0.1 else f"{float(seconds) * 1000:.0f} ms"


def _parse_started(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _age(seconds: float) -> str:
    if seconds < 0:
        return "in the future: check the clock"
    if seconds < 120:
        return f"{seconds:.0f} s ago"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min ago"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _clock(value: Any) -> str:
    when = _parse_started(value)
    return when.astimezone(UTC).strftime("%H:%M:%S") if when is not None else "?"


def _family_value(r: Mapping[str, Any] | None) -> tuple[str, str]:
    """(text, css class) for one family's result in a cell."""
    if r is None:
        return "-", "na"
    if r.get("skipped"):
        return "skipped", "skip"
    if r.get("success"):
        return _ms(r.get("duration_seconds")), "good"
    err = r.get("error")
    kind = err.get("kind") if isinstance(err, Mapping) else None
    addresses = _as_list(r.get("addresses"))
    failing = [str(a.get("address")) for a in addresses if not a.get("success")]
    if len(addresses) > 1 and failing:
        # several addresses: say which failed, so one dead address of an S3 name is seen
        return f"{kind or 'failed'} ({len(failing)}/{len(addresses)}: {', '.join(failing)})", "bad"
    return str(kind or "failed"), "bad"


def _aws(r: Mapping[str, Any] | None) -> str:
    """Where one family's address lies in AWS's published ranges, for the hover text."""
    if r is None or not r.get("address"):
        return "no address"
    aws = r.get("aws")
    if not isinstance(aws, Mapping):
        return f"{r.get('address')}: in no published AWS prefix"
    services = ", ".join(str(s) for s in aws.get("services") or ())
    return (
        f"{r.get('address')}: {aws.get('prefix')} {aws.get('region')} "
        f"({aws.get('network_border_group')}) {services}"
    )


def _title(
    p: Mapping[str, Any] | None,
    verdict: str,
    family_results: Sequence[tuple[str, Mapping[str, Any] | None]] = (),
) -> str:
    if p is None:
        return "not probed"
    lines = [str(p.get("reason") or verdict)]
    for d in _as_list(p.get("differences")):
        mark = "differs" if d.get("significant") else "normal difference"
        lines.append(f"{mark}: {d.get('field')}: ipv4={d.get('ipv4')!r} ipv6={d.get('ipv6')!r}")
    for u in _as_list(p.get("unexpected")):
        lines.append(
            f"both unlike the catalog ({u.get('basis')}): {u.get('field')}: "
            f"expected {u.get('documented')!r}, ipv4={u.get('ipv4')!r} ipv6={u.get('ipv6')!r}"
        )
    for fam, r in family_results:
        if r is not None and not r.get("skipped"):
            lines.append(f"{fam} {_aws(r)}")
            for a in _as_list(r.get("addresses"))[1:]:
                lines.append(f"{fam} {_aws(a)}")
    return "\n".join(lines)


def _worst_first(
    targets: Iterable[str], verdicts: Mapping[tuple[str, str], Mapping[str, Any]]
) -> list[str]:
    """Targets with problems first, by their worst verdict, as `probe run`'s table orders
    them (WORST_FIRST); stable, so the report's order stays within one verdict."""
    rank = {str(v): i for i, v in enumerate(WORST_FIRST)}
    worst: dict[str, int] = {}
    for (t, _), p in verdicts.items():
        r = rank.get(str(p.get("verdict")), len(rank))
        worst[t] = min(worst.get(t, r), r)
    return sorted(targets, key=lambda t: worst.get(t, len(rank)))


def _ordered(seen: Iterable[str], first: Sequence[str]) -> list[str]:
    extra = [s for s in dict.fromkeys(seen) if s not in first]
    return [*first, *extra]


def _matrix(results: list[Mapping[str, Any]], parity: list[Mapping[str, Any]]) -> str:
    by_key = {(str(r.get("target")), str(r.get("probe")), str(r.get("family"))): r for r in results}
    verdicts = {(str(p.get("target")), str(p.get("probe"))): p for p in parity}
    targets = _worst_first(
        dict.fromkeys([str(r.get("target")) for r in results] + [t for t, _ in verdicts]),
        verdicts,
    )
    # The scheduled kinds always (a column of "not probed" says so); an on-demand one (trace)
    # only where some target lists it.
    probes = _ordered(
        [str(r.get("probe")) for r in results] + [k for _, k in verdicts], kinds.default_names()
    )
    where: dict[str, Mapping[str, Any]] = {}
    for r in results:
        where.setdefault(str(r.get("target")), r)
    if not targets:
        return '<p class="empty">No results yet.</p>'
    head = "".join(f'<th scope="col">{_e(k)}</th>' for k in probes)
    rows = []
    for t in targets:
        info = where.get(t, {})
        place = " · ".join(_e(x) for x in (info.get("service"), info.get("region") or NO_REGION))
        cells = [
            f'<th scope="row"><span class="tname">{_e(t)}</span>'
            f'<span class="tmeta">{place}</span>'
            f'<span class="thost">{_e(info.get("host", ""))}</span></th>'
        ]
        for k in probes:
            p = verdicts.get((t, k))
            verdict = str(p.get("verdict")) if p is not None else "none"
            fams = []
            if p is not None or any((t, k, fam) in by_key for fam in FAMILIES):
                for fam in FAMILIES:
                    text, cls = _family_value(by_key.get((t, k, fam)))
                    label = "v4" if fam == "ipv4" else "v6"
                    # an error kind may wrap after an underscore, never inside a word
                    shown_text = _e(text).replace("_", "_<wbr>")
                    fams.append(f'<span class="fam {cls}"><b>{label}</b> {shown_text}</span>')
            shown = verdict.replace("_", " ") if p is not None else "not probed"
            # line breaks as character references: one cell stays on one line of the page
            title = _e(_title(p, verdict, [(f, by_key.get((t, k, f))) for f in FAMILIES]))
            title = title.replace("\n", "&#10;")
            cells.append(
                f'<td class="cell {_css_class(verdict)}" data-target="{_e(t)}" '
                f'data-probe="{_e(k)}" data-verdict="{_e(verdict)}" '
                f'title="{title}">'
                f'<div class="fams">{"".join(fams)}</div>'
                f'<div class="verdict">{_e(shown)}</div></td>'
            )
        rows.append(f"<tr>{''.join(cells)}</tr>")
    # The box scrolls sideways if the matrix is wider than the window (many probe kinds, a
    # narrow screen): the page itself never does.
    return (
        '<div class="matrix-box"><table id="parity-matrix">'
        "<caption>Each cell: IPv4 and IPv6 latency or error, then the verdict. "
        "Hover a cell for the reason.</caption>"
        f'<thead><tr><th scope="col">target</th>{head}</tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></div>"
    )


def _legend() -> str:
    items = "".join(
        f'<li><span class="swatch {_css_class(v)}"></span><b>{_e(v)}</b> {_e(meaning)}</li>'
        for v, (_, _, meaning) in VERDICT_STYLE.items()
    )
    return f'<ul class="legend" aria-label="legend">{items}</ul>'


def _summary(parity: list[Mapping[str, Any]]) -> str:
    counts = Counter(str(p.get("verdict")) for p in parity)
    if not counts:
        return ""
    order = _ordered(counts, list(VERDICT_STYLE))
    chips = "".join(
        f'<span class="chip {_css_class(v)}">{_e(v)} <b>{counts[v]}</b></span>'
        for v in order
        if counts[v]
    )
    return f'<p class="summary">{chips}</p>'


def _failures(results: list[Mapping[str, Any]], limit: int) -> str:
    failed = [r for r in results if not r.get("success") and not r.get("skipped")]

    def started(r: Mapping[str, Any]) -> float:
        when = _parse_started(r.get("started"))
        return when.timestamp() if when is not None else 0.0

    failed.sort(key=started, reverse=True)
    shown = failed[: max(0, limit)]
    if not failed:
        return '<p class="empty">No failures in this round.</p>'
    rows = []
    for r in shown:
        err = r.get("error")
        err = err if isinstance(err, Mapping) else {}
        kind = str(err.get("kind", "failed"))
        if err.get("phase"):
            kind += f" in {err['phase']}"  # where to look: "timeout in connect"
        rows.append(
            "<tr>"
            f"<td>{_e(_clock(r.get('started')))}</td>"
            f"<td>{_e(r.get('target'))}</td>"
            f"<td>{_e(r.get('probe'))}</td>"
            f"<td>{_e(r.get('family'))}</td>"
            f'<td class="kind">{_e(kind)}</td>'
            f'<td class="msg">{_e(err.get("message", ""))}</td>'
            "</tr>"
        )
    more = (
        f'<p class="more">Showing the newest {len(shown)} of {len(failed)} failures.</p>'
        if len(shown) < len(failed)
        else ""
    )
    return (
        '<table id="last-failures"><thead><tr>'
        '<th scope="col">time (UTC)</th><th scope="col">target</th><th scope="col">probe</th>'
        '<th scope="col">family</th><th scope="col">error</th><th scope="col">message</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>{more}"
    )


def _ipv6_error(event: Mapping[str, Any]) -> Mapping[str, Any]:
    """The IPv6 result's error in an event ({} when IPv6 had none)."""
    for r in _as_list(event.get("results")):
        if r.get("family") == "ipv6" and isinstance(r.get("error"), Mapping):
            return r["error"]  # type: ignore[no-any-return]
    return {}


def _changes(events: list[Mapping[str, Any]]) -> str:
    """The last verdict changes of each target (events, newest first), grouped by target."""
    if not events:
        return '<p class="empty">No verdict changed since this vantage started.</p>'
    by_target: dict[str, list[Mapping[str, Any]]] = {}
    for e in events:
        by_target.setdefault(str(e.get("target")), []).append(e)
    blocks = []
    for target, mine in by_target.items():
        rows = []
        for e in mine:
            err = _ipv6_error(e)
            old, new = e.get("from"), str(e.get("to"))
            rows.append(
                f'<tr data-probe="{_e(e.get("probe"))}" data-from="{_e(old or "none")}" '
                f'data-to="{_e(new)}">'
                f"<td>{_e(_clock(e.get('time')))}</td>"
                f"<td>{_e(e.get('probe'))}</td>"
                f'<td><span class="chip {_css_class(str(old))}">{_e(old or "(first)")}</span>'
                f' → <span class="chip {_css_class(new)}">{_e(new)}</span></td>'
                f'<td class="kind">{_e(err.get("kind", "-"))}</td>'
                f'<td class="msg">{_e(err.get("message", ""))}</td>'
                "</tr>"
            )
        blocks.append(
            f"<h3>{_e(target)}</h3>"
            f'<table class="changes" data-target="{_e(target)}"><thead><tr>'
            '<th scope="col">time (UTC)</th><th scope="col">probe</th>'
            '<th scope="col">verdict</th><th scope="col">IPv6 error</th>'
            f'<th scope="col">message</th></tr></thead><tbody>{"".join(rows)}</tbody></table>'
        )
    return (
        f'<div id="recent-changes">{"".join(blocks)}</div>'
        '<p class="more">The evidence of each (both families\' results): '
        "/api/v1/events?target=NAME&amp;probe=PROBE.</p>"
    )


_WINNER_TEXT = {"ipv6": "IPv6", "ipv4": "IPv4"}


def _races(races: list[Mapping[str, Any]]) -> str:
    """Who won each Happy Eyeballs race, and what IPv6 cost the client."""
    if not races:
        return ""
    rows = []
    for r in races:
        family = r.get("winner_family")
        winner = _WINNER_TEXT.get(str(family), "nobody")
        cls = {"ipv6": "good", "ipv4": "warn"}.get(str(family), "bad")
        connect, penalty = r.get("connect_seconds"), r.get("ipv6_penalty_seconds")
        err = r.get("error")
        err = err if isinstance(err, Mapping) else {}
        tried = ", ".join(
            f"{a.get('family')} {a.get('address')} {a.get('outcome')}"
            + (
                f" at {_ms(a.get('started_seconds'))}"
                if a.get("started_seconds") is not None
                else ""
            )
            for a in _as_list(r.get("attempts"))
        )
        rows.append(
            f'<tr data-target="{_e(r.get("target"))}" data-winner="{_e(family or "none")}">'
            f"<td>{_e(r.get('target'))}</td>"
            f'<td class="winner {cls}">{_e(winner)}</td>'
            f"<td>{_e(r.get('winner_address') or '-')}</td>"
            f"<td>{_e(_ms(connect) if connect is not None else '-')}</td>"
            f"<td>{_e(_ms(penalty) if penalty is not None else '-')}</td>"
            f'<td class="msg">{_e(tried)}'
            + (f"<br>{_e(err.get('kind'))}: {_e(err.get('message'))}" if err else "")
            + "</td></tr>"
        )
    return (
        "<section><h2>Happy Eyeballs races</h2>"
        '<table id="races"><thead><tr>'
        '<th scope="col">target</th><th scope="col">winner</th><th scope="col">address</th>'
        '<th scope="col">connect</th><th scope="col">IPv6 cost</th>'
        '<th scope="col">attempts</th>'
        f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        '<p class="more">What an RFC 8305 client (a browser, curl) connecting now gets: IPv6 '
        "is tried first and IPv4 after the connection attempt delay. IPv6 cost: the winner's "
        "connect time less a direct IPv4 connect, when IPv4 won.</p></section>\n"
    )


def _css() -> str:
    verdicts = "".join(
        f".v-{v}{{background:{bg};border-left-color:{accent}}}"
        for v, (bg, accent, _) in VERDICT_STYLE.items()
    )
    bg, accent, _ = _UNKNOWN_STYLE
    return (
        ":root{color-scheme:light}"
        "body{font:15px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,'Liberation Sans',"
        "Arial,sans-serif;color:#1d2125;background:#fafbfc;margin:0;padding:20px 24px;"
        "overflow-wrap:break-word}"
        "h1{font-size:22px;margin:0 0 6px}h2{font-size:18px;margin:26px 0 8px}"
        "header .facts{display:flex;flex-wrap:wrap;gap:8px 22px;margin:0;color:#3c4248}"
        "header .facts span b{color:#1d2125}"
        ".badge{display:inline-block;padding:1px 8px;border-radius:10px;font-weight:600}"
        ".badge.good{background:#d4f1d8;color:#1b5e20}.badge.bad{background:#f7c1c1;color:#8e0000}"
        ".badge.unknown{background:#e6e6e6;color:#424242}"
        ".banner{margin:14px 0 0;padding:10px 14px;border-radius:6px;font-weight:600;"
        "border-left:6px solid}"
        ".banner.warn{background:#fff0c2;border-color:#b07d00;color:#5c4100}"
        ".banner.alarm{background:#f7c1c1;border-color:#c62828;color:#7a0000}"
        "table{border-collapse:separate;border-spacing:3px;font-variant-numeric:tabular-nums}"
        "caption{caption-side:bottom;text-align:left;color:#5f6770;font-size:13px;"
        "padding-top:4px}"
        "th{text-align:left;font-weight:600}"
        "#parity-matrix thead th{padding:4px 8px;color:#3c4248;text-transform:uppercase;"
        "font-size:12px;letter-spacing:.05em}"
        ".matrix-box{max-width:100%;overflow-x:auto}"
        "#parity-matrix tbody th{padding:6px 10px 6px 0;vertical-align:middle;min-width:120px;"
        "max-width:200px}"
        ".tname{display:block;font-size:15px}"
        ".tmeta,.thost{display:block;font-weight:400;font-size:12px;color:#5f6770}"
        ".thost,.notes li{overflow-wrap:anywhere}"
        # families stacked, an error kind may wrap: a cell is as wide as its longest kind
        ".cell{min-width:110px;max-width:180px;padding:5px 7px;border-left:5px solid;"
        "border-radius:4px;vertical-align:top}"
        ".fams{display:flex;flex-direction:column;font-size:13px}"
        ".fam b{font-weight:600;color:#5f6770;margin-right:2px}"
        ".fam.bad{color:#8e0000;font-weight:600}.fam.skip,.fam.na{color:#6d747b}"
        ".verdict{font-weight:700;font-size:13px;margin-top:2px}"
        ".legend{list-style:none;padding:0;margin:10px 0 0;display:flex;flex-wrap:wrap;"
        "gap:6px 18px;font-size:13px}"
        ".legend b{font-weight:600;margin-right:4px}"
        ".swatch{display:inline-block;width:14px;height:14px;border-left:4px solid;"
        "border-radius:2px;vertical-align:-2px;margin-right:6px}"
        ".summary{display:flex;flex-wrap:wrap;gap:6px;margin:0 0 8px}"
        ".chip{padding:2px 10px;border-radius:12px;border-left:4px solid;font-size:13px}"
        "#last-failures{border-spacing:0;width:100%;max-width:1200px;font-size:13px}"
        "#last-failures th,#last-failures td{padding:5px 10px;border-bottom:1px solid #dde1e5;"
        "text-align:left;vertical-align:top}"
        "#last-failures th{white-space:nowrap}"
        "#last-failures thead th{background:#eef1f4}"
        "#last-failures .kind{font-weight:600;color:#8e0000;white-space:nowrap}"
        "h3{font-size:15px;margin:14px 0 4px}"
        # fixed columns: every target's table lines up with the next
        ".changes{border-spacing:0;width:100%;max-width:1200px;font-size:13px;"
        "table-layout:fixed}"
        ".changes th:nth-child(1){width:90px}.changes th:nth-child(2){width:70px}"
        ".changes th:nth-child(3){width:270px}.changes th:nth-child(4){width:210px}"
        ".changes th,.changes td{padding:5px 10px;border-bottom:1px solid #dde1e5;"
        "text-align:left;vertical-align:top}"
        ".changes thead th{background:#eef1f4;white-space:nowrap}"
        ".changes .chip{white-space:nowrap}"
        ".changes .kind{font-weight:600;color:#8e0000;overflow-wrap:anywhere}"
        ".changes .msg{overflow-wrap:anywhere;font-family:ui-monospace,'DejaVu Sans Mono',"
        "monospace;font-size:12px}"
        "#races{border-spacing:0;max-width:1200px;font-size:13px}"
        "#races th,#races td{padding:5px 10px;border-bottom:1px solid #dde1e5;text-align:left;"
        "vertical-align:top}"
        "#races thead th{background:#eef1f4}"
        "#races .winner{font-weight:700}#races .good{color:#1b5e20}#races .warn{color:#8a5a00}"
        "#races .bad{color:#8e0000}"
        "#races .msg{overflow-wrap:anywhere;font-size:12px}"
        "#last-failures .msg{overflow-wrap:anywhere;font-family:ui-monospace,'DejaVu Sans Mono',"
        "monospace;font-size:12px}"
        ".empty,.more,.notes{color:#5f6770}"
        "footer{margin-top:28px;font-size:12px;color:#6d747b}"
        # last, so that the colours win over the shorthands above
        f"{verdicts}.v-unknown{{background:{bg};border-left-color:{accent};color:#6d747b}}"
    )


def render_status_page(
    doc: Mapping[str, Any],
    *,
    ready: bool,
    now: float,
    max_failures: int = 20,
    events: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """The whole page for one report document (run-report.schema.json) at Unix time `now`;
    `events` (as /api/v1/events gives them, newest first) make its "Recent changes"."""
    results = _as_list(doc.get("results"))
    parity = _as_list(doc.get("parity"))
    vantage = doc.get("vantage") or "unknown vantage"
    started = _parse_started(doc.get("started"))
    if started is not None:
        when = (
            f"{_e(started.strftime('%Y-%m-%d %H:%M:%S UTC'))} "
            f"({_e(_age(now - started.timestamp()))})"
        )
    elif doc.get("started"):
        when = _e(doc.get("started"))
    else:
        when = "no round yet"
    v6 = doc.get("vantage_ipv6")
    v6_results = [r for r in results if r.get("family") == "ipv6"]
    # every IPv6 result skipped as "ipv6 not selected": not unknown, deliberately not probed
    v6_off = bool(v6_results) and all(
        str(r.get("skipped") or "").endswith("not selected") for r in v6_results
    )
    if v6 is True:
        v6_badge = '<span class="badge good" id="vantage-ipv6">IPv6 available</span>'
    elif v6 is False and doc.get("vantage_ipv6_reason") == "ipv6_broken":
        v6_badge = '<span class="badge bad" id="vantage-ipv6">IPv6 broken here</span>'
    elif v6 is False:
        v6_badge = '<span class="badge bad" id="vantage-ipv6">no IPv6 route</span>'
    elif v6_off:
        v6_badge = '<span class="badge unknown" id="vantage-ipv6">IPv6 not probed</span>'
    else:
        v6_badge = '<span class="badge unknown" id="vantage-ipv6">IPv6 unknown</span>'
    state = (
        '<span class="badge good" id="readiness">ready</span>'
        if ready
        else '<span class="badge unknown" id="readiness">first round not done yet</span>'
    )
    banners = []
    offline = doc.get("vantage_offline")
    if isinstance(offline, str):
        banners.append(f'<p class="banner alarm" role="alert" id="offline">{_e(offline)}</p>')
    if v6 is False and doc.get("vantage_ipv6_reason") == "ipv6_broken":
        banners.append(
            '<p class="banner alarm" role="alert" id="no-ipv6-warning">This vantage\'s IPv6 is '
            "broken: every target with native IPv6 fails over IPv6 here while IPv4 works. IPv6 "
            "failures here say nothing about the endpoints.</p>"
        )
    elif v6 is False:
        banners.append(
            '<p class="banner alarm" role="alert" id="no-ipv6-warning">This vantage has no IPv6 '
            "route to any target: IPv6 failures here say nothing about the endpoints.</p>"
        )
    elif v6_off:
        banners.append(
            '<p class="banner warn">IPv6 is not probed from this vantage (its `families`): '
            "nothing is compared.</p>"
        )
    elif v6 is None and results:
        banners.append(
            '<p class="banner warn">No target has an IPv6 address to test: '
            "this vantage's own IPv6 is unknown.</p>"
        )
    if not ready:
        banners.append(
            '<p class="banner warn" id="not-ready">First round not done yet: '
            "what is shown may be empty or stale.</p>"
        )
    shard = doc.get("shard")
    shard_html = ""
    if isinstance(shard, Mapping) and isinstance(shard.get("count"), int) and shard["count"] > 1:
        # One shard of a sharded vantage: the matrix shows only this shard's targets.
        shard_html = (
            f'<span>Shard: <b id="shard">{_e(shard.get("index"))} of {_e(shard["count"])}</b>'
            "</span>"
        )
    notes = "".join(f"<li>{_e(n)}</li>" for n in doc.get("notes") or () if isinstance(n, str))
    notes_html = f'<h2>Notes</h2><ul class="notes">{notes}</ul>' if notes else ""
    changes_html = (
        f"<section><h2>Recent changes</h2>{_changes(_as_list(events))}</section>\n"
        if events is not None
        else ""
    )
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">\n'
        f'<meta http-equiv="refresh" content="{_REFRESH_SECONDS}">\n'
        '<link rel="icon" href="data:,">\n'
        f"<title>IPv6 parity: {_e(vantage)}</title>\n"
        f"<style>{_css()}</style>\n</head>\n<body>\n"
        f'<header><h1>IPv6 / IPv4 parity from <span id="vantage">{_e(vantage)}</span></h1>'
        '<p class="facts">'
        f"<span>Round started: <b>{when}</b></span>"
        f"<span>This vantage: {v6_badge}</span>{shard_html}"
        f"<span>Monitor: {state}</span></p>"
        f"{''.join(banners)}</header>\n"
        "<main>\n<section><h2>Parity matrix</h2>"
        f"{_summary(parity)}{_matrix(results, parity)}{_legend()}</section>\n"
        f"{_races(_as_list(doc.get('races')))}"
        f"<section><h2>Last failures</h2>{_failures(results, max_failures)}</section>\n"
        f"{changes_html}{notes_html}</main>\n"
        f"<footer>dualstack-monitor · page refreshes every {_REFRESH_SECONDS} s</footer>\n"
        "</body>\n</html>\n"
    )


__all__ = ["CSP", "FAMILIES", "VERDICT_STYLE", "render_status_page"]
