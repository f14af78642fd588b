"""What `probe run` and `probe targets` print: a table for people, laid out for the width it has
(never a target name split, never a trailing space, no escape codes unless on a terminal), or
one JSON document; and the exit status scripts act on, whose meanings live in one table here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import textwrap
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import IO, Any, Literal

from monitor.engine.parity import REGRESSIONS, VERDICTS, WORST_FIRST, Parity, Verdict
from monitor.engine.report import Report, iso_utc, milliseconds, report_json
from probes import kinds
from probes.base import ProbeResult

EXIT_OK = 0
EXIT_IPV6_WORSE = 1
EXIT_USAGE = 2
EXIT_NO_IPV6 = 3
EXIT_OFFLINE = 4


def _either(items: Iterable[str]) -> str:
    words = list(items)
    return ", ".join(words[:-1]) + f" or {words[-1]}" if len(words) > 1 else "".join(words)


_REGRESSIONS = [str(v) for v in VERDICTS if v in REGRESSIONS]
_WARNINGS = [str(v) for v in VERDICTS if v not in REGRESSIONS and v is not Verdict.OK]


@dataclass(frozen=True, slots=True, kw_only=True)
class ExitStatus:
    """One exit status of `probe run`: what it means and what to do next."""

    code: int
    meaning: str
    """One line, the same in `--help`, the README and the table's closing block."""
    next_step: str
    """What to run or read next, in one line. `{rerun}` is the command as given (config,
    resolver, CA file), `{target}` the target with the worst verdict, `{config}` the --config
    argument. Statuses 0, 1 and 3 print a fuller block (commands on lines of their own, the
    vantage's reason) that says the same; any other status prints this line."""


# In precedence order: the first that applies is the status. A new status is one line here
# (and its condition in exit_status()).
EXIT_STATUSES: tuple[ExitStatus, ...] = (
    ExitStatus(
        code=EXIT_USAGE,
        meaning="usage or configuration error (one line on stderr says which)",
        next_step="probe run --help; the configuration: docs/configuration.md",
    ),
    ExitStatus(
        code=EXIT_OFFLINE,
        meaning="this vantage cannot probe at all: no DNS server answered any query of the run, "
        "or every probe of 3 targets or more failed over both families (one line on stderr "
        "names the servers and their errors, or the most common error and the resolver)",
        next_step="is this machine online? check its resolver, or name one: "
        "{rerun} --resolver ADDR",
    ),
    ExitStatus(
        code=EXIT_NO_IPV6,
        meaning="this vantage has no working IPv6 (vantage_ipv6_reason: no_route, or "
        "ipv6_broken beyond it): its IPv6 failures say nothing about the endpoints",
        next_step="fix this host's IPv6, or probe IPv4 only: {rerun} --family ipv4",
    ),
    ExitStatus(
        code=EXIT_IPV6_WORSE,
        meaning=f"IPv6 is worse than IPv4 somewhere: a verdict {_either(_REGRESSIONS)}",
        next_step="the worst target's details: {rerun} --target {target} --format json",
    ),
    ExitStatus(
        code=EXIT_OK,
        meaning=f"no IPv6 regression ({_either(_WARNINGS)} are warnings, not regressions)",
        next_step="keep watching from here: probe serve --config {config}",
    ),
)
EXIT_MEANINGS: dict[int, ExitStatus] = {s.code: s for s in EXIT_STATUSES}

VANTAGE_REASONS: dict[str, tuple[str, str]] = {
    "no_route": (
        "no route to any target's IPv6 address",
        "check this host's IPv6: ip -6 route show default; ip -6 addr show scope global",
    ),
    "ipv6_broken": (
        "it has a route, but every target with native IPv6 fails over IPv6 while IPv4 works "
        "(an IPv4-only VPN, a broken router or uplink)",
        "find where IPv6 stops: traceroute -6 to a target's IPv6 address "
        "(docs/runbook.md#dualstackvantageipv6lost)",
    ),
}
"""vantage_ipv6_reason: what it means, and what to do about it."""
VERDICT_HELP = "what each verdict means and what to do: README.md#verdicts, docs/runbook.md"


def exit_help() -> str:
    """The exit statuses for `probe run --help`, from EXIT_STATUSES."""
    return "Exit status, first match wins: " + "; ".join(
        f"{s.code} {s.meaning}" for s in EXIT_STATUSES
    )


def exit_status(report: Report) -> int:
    """First match wins (2, usage, is decided before any report): 4 this vantage cannot probe
    at all; 3 no IPv6 at this vantage; 1 IPv6 worse somewhere; 0 otherwise."""
    if report.offline is not None:
        return EXIT_OFFLINE
    if report.vantage_check.ipv6 is False:
        return EXIT_NO_IPV6
    if any(p.verdict in REGRESSIONS for p in report.parity):
        return EXIT_IPV6_WORSE
    return EXIT_OK


def write_json(report: Report, out: IO[str], *, status: int | None = None) -> None:
    json.dump(report_json(report, exit_status=status), out, indent=2, default=str)
    out.write("\n")


# --- layout -------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_GAP = "  "
_MIN_WHY = 24
"""Below this many columns left for `why`, the table stacks each target's rows instead."""


def output_width(out: IO[str]) -> int | None:
    """$COLUMNS when it is a positive integer, else the terminal's width when `out` is one,
    else None: no wrapping at all (a file or a pipe keeps whole lines)."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    if _is_tty(out):
        try:
            return os.get_terminal_size(out.fileno()).columns or None
        except (OSError, ValueError):
            return None
    return None


def _is_tty(out: IO[str]) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


def _printable(text: str) -> str:
    """Peer text as one line with nothing a terminal would act on (ESC, newlines...)."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _wrap(text: str, width: int | None, first: str = "", rest: str = "") -> list[str]:
    """`text` after `first` (and `rest` on each further line), at word boundaries; a word
    longer than a line is kept whole rather than split (a name, a path)."""
    if width is None:
        return [first + text]
    lines = textwrap.wrap(
        text,
        width=max(width, len(first) + 1, len(rest) + 1),
        initial_indent=first,
        subsequent_indent=rest,
        break_long_words=False,
        break_on_hyphens=False,
    )
    return lines or [first.rstrip()]


def _pack(pieces: Sequence[str], width: int | None, first: str = "", rest: str = "") -> list[str]:
    """Pieces (names, counts) one space apart, wrapped between pieces, never inside one."""
    lines: list[str] = []
    line, empty = first, True
    for piece in pieces:
        if width is not None and not empty and len(line) + 1 + len(piece) > width:
            lines.append(line)
            line, empty = rest, True
        line += piece if empty else " " + piece
        empty = False
    return [*lines, line]


def _commas(items: Sequence[str]) -> list[str]:
    return [f"{item}," for item in items[:-1]] + list(items[-1:])


def _fold(text: str, width: int | None) -> list[str]:
    """Free text (a reason) in a column `width` wide: at word boundaries, a too long word
    (a host name in a reason) cut where it must be."""
    if width is None:
        return [text]
    return textwrap.wrap(text, width=max(width, 1), break_on_hyphens=False) or [""]


def _command(words: Sequence[str], width: int | None, indent: str) -> list[str]:
    """A shell command, wrapped with backslash continuations so it still pastes whole."""
    quoted = [shlex.quote(w) for w in words]
    if width is None:
        return [indent + " ".join(quoted)]
    lines: list[str] = []
    line = indent
    for word in quoted:
        if line.strip() and len(line) + 1 + len(word) + 2 > width:
            lines.append(line + " \\")
            line = indent + "  "
        line += word if not line.strip() else " " + word
    return [*lines, line]


class _Paint:
    """ANSI colours on a terminal only; lengths are always measured before painting."""

    _CODES = {"red": "31", "green": "32", "yellow": "33", "magenta": "35", "dim": "2"}

    def __init__(self, on: bool) -> None:
        self.on = on

    def __call__(self, text: str, colour: str | None) -> str:
        if not self.on or colour is None or not text:
            return text
        codes = ";".join(self._CODES[c] for c in colour.split())
        return f"\x1b[{codes}m{text}\x1b[0m"


_COLOURS: dict[Verdict, str] = {
    Verdict.OK: "green",
    Verdict.IPV6_FAILED: "red",
    Verdict.IPV6_MISSING: "red",
    Verdict.MISMATCH: "magenta",
    Verdict.IPV6_SLOWER: "yellow",
    Verdict.IPV4_FAILED: "yellow",
    Verdict.BOTH_FAILED: "yellow",
    Verdict.SKIPPED: "dim",
}


def _pad(cells: Sequence[str], widths: Sequence[int], paint: Sequence[str]) -> str:
    """Cells padded to their widths (measured unpainted), joined; the caller strips the end."""
    out = []
    for text, width, painted in zip(cells, widths, paint, strict=True):
        out.append(painted + " " * (width - len(text)))
    return _GAP.join(out)


# --- the run table --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class _Row:
    probe: str
    v4: tuple[str, str | None]
    v6: tuple[str, str | None]
    verdict: Verdict
    why: str


def _cell(r: ProbeResult | None) -> tuple[str, str | None]:
    """(text, colour) of one family's result."""
    if r is None:
        return "-", None
    if r.skipped:
        return "skipped", "dim"
    if r.success:
        return milliseconds(r.duration_seconds), None
    return _printable(str(r.error.kind) if r.error else "failed"), "red"


def _why(p: Parity, v4: ProbeResult | None, v6: ProbeResult | None) -> str:
    if p.verdict is Verdict.OK and p.differences:
        return "normal differences: " + ", ".join(d.field for d in p.differences)
    failed = {
        Verdict.IPV6_FAILED: (v6,),
        Verdict.IPV4_FAILED: (v4,),
        Verdict.BOTH_FAILED: (v4, v6),
    }.get(p.verdict, ())
    # the error's kind and phase first ("timeout in connect"): where to look, before the detail
    whys = dict.fromkeys(r.error.why() for r in failed if r is not None and r.error is not None)
    if not whys:
        return _printable(p.reason)
    return _printable(" / ".join(whys) + (f": {p.reason}" if p.reason else ""))


def _groups(report: Report) -> list[tuple[str, list[_Row]]]:
    """Each target's rows (in probe order), targets with the worst verdicts first; a reason
    already given for the target is not repeated."""
    results = {(r.target, r.probe, r.family): r for r in report.results}
    by_target: dict[str, list[Parity]] = {}
    for p in report.parity:
        by_target.setdefault(p.target, []).append(p)
    rank = {v: i for i, v in enumerate(WORST_FIRST)}
    order = sorted(
        by_target, key=lambda t: min(rank[p.verdict] for p in by_target[t])
    )  # stable: the configuration's order within one verdict
    groups = []
    kind_order = kinds.names()
    for name in order:
        rows: list[_Row] = []
        said: dict[str, str] = {}
        for p in sorted(by_target[name], key=lambda p: kind_order.index(p.probe)):
            why = _why(
                p, results.get((name, p.probe, "ipv4")), results.get((name, p.probe, "ipv6"))
            )
            if why and why in said:
                why = f"same as {said[why]}"
            elif why:
                said[why] = p.probe
            rows.append(
                _Row(
                    probe=p.probe,
                    v4=_cell(results.get((name, p.probe, "ipv4"))),
                    v6=_cell(results.get((name, p.probe, "ipv6"))),
                    verdict=p.verdict,
                    why=why,
                )
            )
        groups.append((_printable(name), rows))
    return groups


def _table_lines(
    groups: list[tuple[str, list[_Row]]], width: int | None, paint: _Paint
) -> list[str]:
    heads = ("target", "probe", "IPv4", "IPv6", "verdict")

    def cells(r: _Row) -> tuple[list[str], list[str]]:
        texts = [r.probe, r.v4[0], r.v6[0], str(r.verdict)]
        painted = [
            r.probe,
            paint(*r.v4),
            paint(*r.v6),
            paint(str(r.verdict), _COLOURS[r.verdict]),
        ]
        return texts, painted

    rows = [r for _, rs in groups for r in rs]
    widths = [
        max([len(heads[0])] + [len(n) for n, _ in groups]),
        *(max([len(h)] + [len(cells(r)[0][i]) for r in rows]) for i, h in enumerate(heads[1:])),
    ]
    why_at = sum(widths) + len(_GAP) * len(widths)
    lines: list[str] = []
    if width is None or width - why_at >= _MIN_WHY:
        # one line per (target, probe): the target named on its first row only
        why_width = None if width is None else width - why_at
        lines.append(_pad([*heads, "why"], [*widths, 0], [*heads, "why"]).rstrip())
        for name, rs in groups:
            for i, r in enumerate(rs):
                texts, painted = cells(r)
                first = name if i == 0 else ""
                why = _fold(r.why, why_width)
                lines.append(
                    _pad([first, *texts, why[0]], [*widths, 0], [first, *painted, why[0]]).rstrip()
                )
                lines.extend((" " * why_at + more).rstrip() for more in why[1:])
        return lines
    # Too narrow for a row per line: each target's name on a line of its own, its probes
    # indented below it; a short reason on the probe's line, a long one under its cells.
    indent = "  "
    inner = widths[1:]
    why_at = len(indent) + sum(inner) + len(_GAP) * len(inner)
    fits = why_at - len(_GAP) <= width
    under = indent + " " * (inner[0] + len(_GAP))
    # The header mirrors the rows: a `target` line, then the probe columns under it, `why`
    # where a short reason goes (a long one goes under the cells).
    lines.append(heads[0])
    if fits:
        cols = [*heads[1:], "why"]
        lines.append((indent + _pad(cols, [*inner, 0], cols)).rstrip())
    for name, rs in groups:
        lines.append(name)
        for r in rs:
            texts, painted = cells(r)
            if fits:
                inline = len(r.why) <= width - why_at
                row = indent + _pad(texts, inner, painted)
                lines.append((row + _GAP + r.why if inline else row).rstrip())
                if inline:
                    continue
            else:
                row = f"{r.probe}: ipv4 {texts[1]}, ipv6 {texts[2]}: {texts[3]}"
                lines.extend(_wrap(row, width, indent, indent + "    "))
            lines.extend((under + w).rstrip() for w in _fold(r.why, width - len(under)) if w)
    return lines


def _vantage_lines(report: Report) -> list[str]:
    check = report.vantage_check
    if check.ipv6 is False:
        what, _ = VANTAGE_REASONS.get(check.reason or "no_route", VANTAGE_REASONS["no_route"])
        return [
            f"This vantage has no working IPv6 ({check.reason or 'no_route'}: {what}): IPv6 "
            "failures here say nothing about the endpoints, and are skipped."
        ]
    if check.ipv6 is None and "ipv6" not in report.families:
        return ["IPv6 was not selected (--family or `families`): nothing was compared."]
    if check.ipv6 is None:
        return ["No target has an IPv6 address: this vantage's own IPv6 is unknown."]
    return []


def closing_lines(
    report: Report,
    status: int,
    width: int | None,
    *,
    rerun: Sequence[str] = ("probe", "run"),
    config: str | None = None,
) -> list[str]:
    """The block under the table: the worst verdict of each target, the vantage, the notes,
    the counts, `exit status N: <meaning>` and what to do next."""
    lines: list[str] = []
    worst: dict[Verdict, list[str]] = {}
    rank = {v: i for i, v in enumerate(WORST_FIRST)}
    per_target: dict[str, Verdict] = {}
    for p in report.parity:
        now = per_target.get(p.target)
        if now is None or rank[p.verdict] < rank[now]:
            per_target[p.target] = p.verdict
    for name, verdict in per_target.items():
        worst.setdefault(verdict, []).append(_printable(name))
    if worst:
        lines.append("worst verdict per target:")
        label = max(len(v) for v in worst) + 2
        for v in WORST_FIRST:
            if v in worst:
                head = f"  {v:<{label}}"
                lines.extend(_pack(_commas(worst[v]), width, head, " " * len(head)))
    for text in _vantage_lines(report):
        lines.extend(_wrap(text, width))
    for r in report.results:
        if not kinds.get(r.probe).per_family:  # no verdict: a line of its own (the race)
            head = f"{r.probe} {_printable(r.target)}: "
            lines.extend(_wrap(_printable(race_line(r)), width, head, "  "))
    for note in report.notes:
        lines.extend(_wrap(_printable(note), width, "note: ", "  "))
    counts = Counter(p.verdict for p in report.parity)
    n_targets = len(per_target)
    total = f"{_plural(len(report.parity), 'verdict')} for {_plural(n_targets, 'target')}"
    items = _commas([f"{counts[v]} {v}" for v in WORST_FIRST if counts[v]])
    lines.extend(_pack([total + (":" if items else ""), *items], width, "summary: ", "  "))
    meaning = EXIT_MEANINGS[status]
    detail = ""
    if status == EXIT_NO_IPV6 and report.vantage_check.reason:
        detail = f" (here: {report.vantage_check.reason})"
    elif status == EXIT_IPV6_WORSE:
        bad = sum(1 for v in per_target.values() if v in REGRESSIONS)
        detail = f" ({bad} of {_plural(n_targets, 'target')})"
    lines.extend(_wrap(f"{meaning.meaning}{detail}", width, f"exit status {status}: ", "  "))
    lines.extend(_next_lines(report, status, width, rerun, config, per_target))
    return lines


def _next_lines(
    report: Report,
    status: int,
    width: int | None,
    rerun: Sequence[str],
    config: str | None,
    per_target: dict[str, Verdict],
) -> list[str]:
    rank = {v: i for i, v in enumerate(WORST_FIRST)}
    worst = min(per_target, key=lambda t: rank[per_target[t]], default="TARGET")
    if status == EXIT_NO_IPV6:
        _, step = VANTAGE_REASONS.get(
            report.vantage_check.reason or "no_route", VANTAGE_REASONS["no_route"]
        )
        return [
            *_wrap(step, width, "next: ", "  "),
            *_wrap("or probe IPv4 only:", width, "  "),
            *_command([*rerun, "--family", "ipv4"], width, "    "),
        ]
    if status == EXIT_IPV6_WORSE:
        return [
            *_wrap("the details of the worst target:", width, "next: ", "  "),
            *_command([*rerun, "--target", worst, "--format", "json"], width, "    "),
            *_wrap(VERDICT_HELP, width, "  ", "    "),
        ]
    if status == EXIT_OK:
        if len(report.families) == 1:
            return [
                *_wrap("compare IPv6 with IPv4, both families:", width, "next: ", "  "),
                *_command([*rerun, "--family", "both"], width, "    "),
            ]
        if config is None:
            return [
                *_wrap("your own endpoints, watched all the time:", width, "next: ", "  "),
                *_command(["probe", "config", "init", "dualstack.yml"], width, "    "),
                *_command(["probe", "serve", "--config", "dualstack.yml"], width, "    "),
            ]
        return [
            *_wrap("keep watching from here:", width, "next: ", "  "),
            *_command(["probe", "serve", "--config", config], width, "    "),
        ]
    step = EXIT_MEANINGS[status].next_step.format(
        rerun=" ".join(shlex.quote(w) for w in rerun), target=worst, config=config or "FILE"
    )
    return _wrap(step, width, "next: ", "  ")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def write_table(
    report: Report,
    out: IO[str],
    *,
    color: bool | None = None,
    width: int | Literal["auto"] | None = "auto",
    rerun: Sequence[str] = ("probe", "run"),
    config: str | None = None,
) -> None:
    """The table for people, then the closing block. `width` "auto": output_width(out), None:
    no wrapping; `color` None: only when `out` is a terminal and NO_COLOR is unset."""
    if width == "auto":
        width = output_width(out)
    if color is None:
        color = _is_tty(out) and not os.environ.get("NO_COLOR")
    paint = _Paint(color)
    shard = f", shard {report.shard} of {report.shards}" if report.shards > 1 else ""
    title = f"vantage {_printable(report.vantage)}{shard}, round started {iso_utc(report.started)}"
    lines = _wrap(title, width)
    lines.append("")
    lines.extend(_table_lines(_groups(report), width, paint))
    lines.append("")
    lines.extend(closing_lines(report, exit_status(report), width, rerun=rerun, config=config))
    out.write("".join(line.rstrip() + "\n" for line in lines))


# --- the plan: `probe targets` and `probe run --dry-run` -----------------------------------


PLAN_COLUMNS = ("target", "service", "region", "plane", "host", "port", "probes", "families")


def race_line(r: ProbeResult) -> str:
    """One Happy Eyeballs race, for people: who won, in how long, what IPv6 cost."""
    from probes.race import RaceDetails  # only once a race ran: `probe targets` loads no probe

    d = r.details if isinstance(r.details, RaceDetails) else None
    if d is None or d.winner_family is None or d.connect_seconds is None:
        return f"nothing connected ({r.error.kind if r.error else 'failed'})"
    won = "IPv6" if d.winner_family == "ipv6" else "IPv4"
    line = f"{won} won ({d.winner_address}) in {milliseconds(d.connect_seconds)}"
    if d.winner_family == "ipv4" and not any(a.family == "ipv6" for a in d.attempts):
        line += "; IPv6 not tried"  # --family ipv4, or no AAAA: it cost nothing to measure
    elif d.winner_family == "ipv4" and d.ipv6_penalty_seconds is not None:
        line += f"; IPv6 cost this client {d.ipv6_penalty_seconds * 1000:.0f} ms"
    if r.error is not None:
        line += f"; {r.error.kind}"
    return line


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


def _plan_cells(row: dict[str, Any]) -> list[str]:
    return [
        _printable(str(row["target"])),
        row["service"],
        row["region"],
        row["plane"] or "-",
        row["host"],
        str(row["port"]),
        " ".join(row["probes"]) or "-",
        " ".join(row["families"]) or "-",
    ]


def write_plan(
    rows: list[dict[str, Any]],
    out: IO[str],
    *,
    fmt: str,
    title: str,
    width: int | Literal["auto"] | None = "auto",
    footer: Sequence[str] = (),
) -> None:
    if fmt == "json":
        json.dump(rows, out, indent=2)
        out.write("\n")
        return
    if width == "auto":
        width = output_width(out)
    sharded = any("shard" in row for row in rows)
    columns = (*PLAN_COLUMNS, "shard") if sharded else PLAN_COLUMNS
    cells = [[*_plan_cells(r), *([str(r.get("shard", "-"))] if sharded else [])] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(columns)]
    lines = [*_wrap(title, width), ""]
    if width is None or sum(widths) + len(_GAP) * (len(widths) - 1) <= width:
        lines.append(_pad(list(columns), widths, list(columns)))
        lines.extend(_pad(c, widths, c) for c in cells)
    else:
        # too narrow for a line per target: its name, then its settings below it
        for c in cells:
            lines.append(c[0])
            pairs = [f"{h} {v}" for h, v in zip(columns[1:], c[1:], strict=True)]
            lines.extend(_wrap(", ".join(pairs), width, "  ", "    "))
    lines.extend(["", _plural(len(rows), "target")])
    for text in footer:
        lines.extend(_wrap(_printable(text), width, "", "  "))
    out.write("".join(line.rstrip() + "\n" for line in lines))
