"""What `probe run` prints: a table for people (IPv4 and IPv6 side by side) or one JSON document,
and the exit status scripts act on. Everything shown from a peer is escaped for the terminal.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import IO, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from monitor.engine.parity import REGRESSIONS, Verdict
from monitor.engine.report import Report, iso_utc, report_json
from probes.base import ProbeResult

EXIT_OK = 0
EXIT_IPV6_WORSE = 1
EXIT_USAGE = 2
EXIT_NO_IPV6 = 3

_COLOURS = {
    Verdict.OK: "green",
    Verdict.IPV6_FAILED: "bold red",
    Verdict.IPV6_MISSING: "red",
    Verdict.MISMATCH: "magenta",
    Verdict.IPV6_SLOWER: "yellow",
    Verdict.IPV4_FAILED: "yellow",
    Verdict.BOTH_FAILED: "yellow",
    Verdict.SKIPPED: "dim",
}


def exit_status(report: Report) -> int:
    """First match wins: 3 no IPv6 at this vantage; 1 IPv6 worse somewhere; 0 otherwise."""
    if report.vantage_check.ipv6 is False:
        return EXIT_NO_IPV6
    if any(p.verdict in REGRESSIONS for p in report.parity):
        return EXIT_IPV6_WORSE
    return EXIT_OK


def _cell(r: ProbeResult | None) -> str:
    if r is None:
        return "-"
    if r.skipped:
        return "[dim]skipped[/dim]"
    if r.success:
        return f"[green]{r.duration_seconds * 1000:.1f} ms[/green]"
    kind = str(r.error.kind) if r.error else "failed"
    return f"[red]{escape(kind)}[/red]"


def write_json(report: Report, out: IO[str]) -> None:
    json.dump(report_json(report), out, indent=2, default=str)
    out.write("\n")


def write_table(report: Report, out: IO[str], *, color: bool | None = None) -> None:
    console = Console(file=out, force_terminal=color, highlight=False, width=140)
    results: dict[tuple[str, str, str], ProbeResult] = {
        (r.target, r.probe, r.family): r for r in report.results
    }
    started = iso_utc(report.started)
    shard = f" shard {report.shard} of {report.shards}" if report.shards > 1 else ""
    title = f"vantage {escape(report.vantage)}{shard}  {started}"
    table = Table(title=title, title_justify="left")
    for col in ("target", "probe", "IPv4", "IPv6", "verdict", "why"):
        table.add_column(col, overflow="fold")
    for p in report.parity:
        v4 = results.get((p.target, p.probe, "ipv4"))
        v6 = results.get((p.target, p.probe, "ipv6"))
        colour = _COLOURS[p.verdict]
        why = p.reason
        if p.verdict is Verdict.OK and p.differences:
            why = "normal differences: " + ", ".join(d.field for d in p.differences)
        table.add_row(
            escape(p.target),
            p.probe,
            _cell(v4),
            _cell(v6),
            f"[{colour}]{p.verdict}[/{colour}]",
            escape(why),
        )
    console.print(table)
    check = report.vantage_check
    if check.reason == "ipv6_broken":
        console.print(
            "[bold red]This vantage's IPv6 is broken[/bold red]: it has a route, but every "
            "target with native IPv6 failed over IPv6 while IPv4 worked (an IPv4-only VPN, a "
            "broken router or uplink). IPv6 failures here say nothing about the endpoints."
        )
    elif check.ipv6 is False:
        console.print(
            "[bold red]This vantage has no IPv6 route to any target[/bold red]: IPv6 failures "
            "here say nothing about the endpoints."
        )
    elif check.ipv6 is None:
        console.print("[dim]No target has an IPv6 address: the vantage's IPv6 is unknown.[/dim]")
    counts = Counter(str(p.verdict) for p in report.parity)
    console.print("summary: " + ", ".join(f"{v} {n}" for v, n in sorted(counts.items())))
    for p in report.parity:
        if p.verdict in (Verdict.BOTH_FAILED, Verdict.IPV4_FAILED):
            console.print(
                f"[yellow]warning[/yellow]: {escape(p.target)} {p.probe}: {p.verdict} "
                f"({escape(p.reason)}); not an IPv6 regression"
            )
    for note in report.notes:
        console.print(f"[yellow]note[/yellow]: {escape(note)}")


def plan_rows(targets: Any, families: tuple[str, ...]) -> list[dict[str, Any]]:
    return [
        {
            "target": t.name,
            "service": t.service,
            "region": t.region,
            "plane": t.plane,
            "host": t.host,
            "port": t.port,
            "probes": list(t.probes),
            "families": [f for f in t.families if f in families],
            "source": t.source,
        }
        for t in targets
    ]


def write_plan(rows: list[dict[str, Any]], out: IO[str], *, fmt: str, title: str) -> None:
    if fmt == "json":
        json.dump(rows, out, indent=2)
        out.write("\n")
        return
    console = Console(file=out, highlight=False, width=160)
    table = Table(title=title, title_justify="left")
    sharded = any("shard" in row for row in rows)
    columns = ("target", "service", "region", "plane", "host", "port", "probes", "families")
    for col in (*columns, "shard") if sharded else columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        cells = [
            escape(row["target"]),
            row["service"],
            row["region"] or "-",
            row["plane"] or "-",
            escape(row["host"]),
            str(row["port"]),
            " ".join(row["probes"]),
            " ".join(row["families"]),
        ]
        table.add_row(*cells, *([str(row.get("shard", "-"))] if sharded else []))
    console.print(table)
    console.print(f"{len(rows)} targets")
