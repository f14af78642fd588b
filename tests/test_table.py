"""The table `probe run` prints for people, on made-up reports (no network): its width from
$COLUMNS or the terminal, never a trailing space, no escape codes off a terminal, target names
never split, one run per target with problems first, a reason said once per target, and a
closing block that says the exit status, what it means and what to run next."""

from __future__ import annotations

import dataclasses
import fcntl
import io
import os
import re
import struct
import termios
import time
from collections.abc import Iterator, Sequence

import pytest

from monitor.engine.parity import REGRESSIONS, WORST_FIRST, Parity, Verdict
from monitor.engine.report import Report, milliseconds
from monitor.engine.vantage import VantageCheck
from monitor.run.output import (
    EXIT_MEANINGS,
    EXIT_STATUSES,
    exit_help,
    exit_status,
    output_width,
    plan_rows,
    write_plan,
    write_table,
)
from probes.base import ErrorKind, Family, ProbeError, ProbeKind, ProbeResult, Target

NAT64 = (
    "dualstack.lab-nat64.us-east-1.elb.amazonaws.com: AAAA 64:ff9b::7f00:1 is synthesized "
    "by DNS64 (NAT64 prefix), not native IPv6"
)
LONG_NAME = "a-target-with-a-rather-long-name-of-fifty-characters-x"


def result(
    target: str,
    probe: ProbeKind,
    family: Family,
    *,
    ok: bool = True,
    kind: ErrorKind = ErrorKind.TIMEOUT,
    message: str = "timed out",
    skipped: str | None = None,
) -> ProbeResult:
    return ProbeResult(
        target=target,
        probe=probe,
        family=family,
        address=None if skipped else ("127.0.0.1" if family == "ipv4" else "::1"),
        success=ok and skipped is None,
        duration_seconds=0.0123 if ok else 0.0,
        started=time.time(),
        error=None if ok or skipped else ProbeError(kind=kind, message=message),
        skipped=skipped,
    )


def pair(
    target: str,
    probe: ProbeKind,
    verdict: Verdict,
    reason: str = "",
    *,
    kind: ErrorKind = ErrorKind.CONNECT_REFUSED,
) -> tuple[list[ProbeResult], Parity]:
    v6_ok = verdict in (Verdict.OK, Verdict.MISMATCH, Verdict.IPV6_SLOWER, Verdict.IPV4_FAILED)
    v4_ok = verdict not in (Verdict.IPV4_FAILED, Verdict.BOTH_FAILED)
    skip = reason if verdict is Verdict.SKIPPED else None
    results = [
        result(target, probe, "ipv4", ok=v4_ok, kind=kind, message=reason, skipped=skip),
        result(target, probe, "ipv6", ok=v6_ok, kind=kind, message=reason, skipped=skip),
    ]
    return results, Parity(target=target, probe=probe, verdict=verdict, reason=reason)


def report(
    rows: Sequence[tuple[str, ProbeKind, Verdict, str]],
    *,
    check: VantageCheck | None = None,
    families: tuple[Family, ...] = ("ipv4", "ipv6"),
) -> Report:
    results: list[ProbeResult] = []
    parity: list[Parity] = []
    for target, probe, verdict, reason in rows:
        rs, p = pair(target, probe, verdict, reason)
        results += rs
        parity.append(p)
    names = dict.fromkeys(t for t, *_ in rows)
    return Report(
        vantage="test-vantage",
        started=1_760_000_000.0,
        vantage_check=check or VantageCheck(ipv6=True),
        targets=tuple(
            Target(name=n, service="alb", region="none", host=f"{n}.test") for n in names
        ),
        results=tuple(results),
        parity=tuple(parity),
        families=families,
    )


# In stage order, as a round produces them: dns, icmp, tcp of every target, then tls...
MIXED = report(
    [
        ("healthy", "dns", Verdict.OK, ""),
        ("nat64", "dns", Verdict.IPV6_MISSING, NAT64),
        ("v4_only", "dns", Verdict.OK, ""),
        (LONG_NAME, "dns", Verdict.OK, ""),
        ("route53-ns-example.com-1", "dns", Verdict.OK, ""),
        ("healthy", "tcp", Verdict.OK, ""),
        ("nat64", "tcp", Verdict.IPV6_MISSING, NAT64),
        ("v4_only", "tcp", Verdict.IPV6_FAILED, "connection refused"),
        (LONG_NAME, "tcp", Verdict.IPV6_SLOWER, "ipv6 300.0 ms vs ipv4 10.0 ms"),
        ("route53-ns-example.com-1", "tcp", Verdict.BOTH_FAILED, "both families failed"),
        ("healthy", "tls", Verdict.OK, ""),
        ("nat64", "tls", Verdict.IPV6_MISSING, NAT64),
        ("v4_only", "tls", Verdict.IPV6_FAILED, "connection refused"),
        (LONG_NAME, "tls", Verdict.MISMATCH, "differs: certificate.trust_anchor"),
        ("nat64", "http3", Verdict.IPV6_MISSING, NAT64),
    ]
)
TARGETS = ["healthy", "nat64", "v4_only", LONG_NAME, "route53-ns-example.com-1"]


def render(rep: Report, width: int | None, **kw: object) -> str:
    out = io.StringIO()
    write_table(rep, out, width=width, **kw)  # type: ignore[arg-type]
    return out.getvalue()


def table_part(text: str) -> list[str]:
    """The table's lines: from the line after the title's blank line to the next blank line."""
    lines = text.splitlines()
    start = lines.index("") + 1
    end = lines.index("", start)
    return lines[start:end]


def first_column(text: str) -> list[str]:
    """Reading the first column top to bottom, blank continuation cells left out."""
    return [
        line.split()[0]
        for line in table_part(text)
        if line
        and not line.startswith(" ")
        and not line.startswith("target ")
        and line != "target"  # the narrow layout's header: a line of its own
    ]


def closing(text: str) -> list[str]:
    lines = text.splitlines()
    return lines[lines.index("worst verdict per target:") :]


WIDTHS = [None, 200, 120, 100, 80, 72, 60, 50, 40]


@pytest.mark.parametrize("width", WIDTHS)
def test_lines_fit_and_never_end_in_a_space(width: int | None) -> None:
    text = render(MIXED, width)
    for line in text.splitlines():
        assert line == line.rstrip(), repr(line)
        # only a word longer than a line may stick out (none here but the long name at 40)
        if width is not None and LONG_NAME not in line:
            assert len(line) <= width, (width, line)
    assert "\x1b" not in text


@pytest.mark.parametrize("width", WIDTHS)
def test_the_header_keeps_target_and_why(width: int | None) -> None:
    head = " ".join(table_part(render(MIXED, width))[:2]).split()
    assert "target" in head and ("why" in head or (width or 0) < 60), head


@pytest.mark.parametrize("width", WIDTHS)
def test_each_target_one_run_problems_first_names_whole(width: int | None) -> None:
    names = first_column(render(MIXED, width))
    assert sorted(names) == sorted(TARGETS), names  # each once, none split
    rank = {v: i for i, v in enumerate(WORST_FIRST)}
    worst = {t: min(rank[p.verdict] for p in MIXED.parity if p.target == t) for t in TARGETS}
    assert [worst[n] for n in names] == sorted(worst[n] for n in names)
    assert names[0] == "v4_only" and names[-1] == "healthy"


def test_a_target_keeps_its_rows_in_probe_order() -> None:
    lines = table_part(render(MIXED, None))
    start = next(i for i, line in enumerate(lines) if line.startswith("nat64 "))
    probes = [
        line.split()[1] if i == 0 else line.split()[0]
        for i, line in enumerate(lines[start : start + 4])
    ]
    assert probes == ["dns", "tcp", "tls", "http3"]


@pytest.mark.parametrize("width", [None, 80, 60])
def test_a_repeated_reason_is_shown_once_per_target(width: int | None) -> None:
    text = render(MIXED, width)
    table = "\n".join(table_part(text))
    assert table.count("NAT64") == 1
    assert table.count("same as dns") == 3  # tcp, tls and http3 of nat64
    assert table.count("connection refused") == 1 and "same as tcp" in table


def test_closing_block_names_the_worst_verdict_of_each_target() -> None:
    block = closing(render(MIXED, None))
    assert block[1:6] == [
        "  ipv6_failed   v4_only",
        "  ipv6_missing  nat64",
        f"  mismatch      {LONG_NAME}",
        "  both_failed   route53-ns-example.com-1",
        "  ok            healthy",
    ]
    assert block[6] == (
        "summary: 15 verdicts for 5 targets: 2 ipv6_failed, 4 ipv6_missing, 1 mismatch, "
        "1 ipv6_slower, 1 both_failed, 6 ok"
    )
    assert block[7].startswith("exit status 1: IPv6 is worse than IPv4 somewhere")
    assert block[7].endswith("(3 of 5 targets)")


def test_next_command_is_the_one_to_run(tmp_path: object) -> None:
    block = closing(render(MIXED, None, rerun=["probe", "run", "--config", "my lab.yml"]))
    assert "    probe run --config 'my lab.yml' --target v4_only --format json" in block
    assert any("docs/runbook.md" in line for line in block)


def test_next_command_wraps_as_a_shell_continuation() -> None:
    long = "/a/very/long/path/to/a/configuration/file/that/goes/on/and/on/lab.yml"
    block = closing(render(MIXED, 60, rerun=["probe", "run", "--config", long]))
    start = next(i for i, line in enumerate(block) if line.startswith("    probe run"))
    command = []
    for line in block[start:]:
        command.append(line.strip().removesuffix("\\").strip())
        if not line.endswith("\\"):
            break
    assert " ".join(command) == f"probe run --config {long} --target v4_only --format json"


@pytest.mark.parametrize(
    ("check", "status", "says"),
    [
        (VantageCheck(ipv6=True), 1, "IPv6 is worse than IPv4 somewhere"),
        (VantageCheck(ipv6=False, reason="no_route"), 3, "(here: no_route)"),
        (VantageCheck(ipv6=False, reason="ipv6_broken"), 3, "(here: ipv6_broken)"),
    ],
)
def test_exit_status_line_is_the_real_one(check: VantageCheck, status: int, says: str) -> None:
    rep = report([("v4_only", "tcp", Verdict.IPV6_FAILED, "refused")], check=check)
    assert exit_status(rep) == status
    line = next(line for line in render(rep, None).splitlines() if line.startswith("exit status"))
    assert line.startswith(f"exit status {status}: {EXIT_MEANINGS[status].meaning}")
    assert says in line


def test_exit_0_and_its_next_step() -> None:
    rep = report([("healthy", "tcp", Verdict.OK, ""), ("slow", "tcp", Verdict.IPV6_SLOWER, "x")])
    text = render(rep, None)
    assert exit_status(rep) == 0
    assert f"exit status 0: {EXIT_MEANINGS[0].meaning}" in text
    assert "probe config init dualstack.yml" in text  # no --config given: make one
    text = render(rep, None, config="mine.yml")
    assert "    probe serve --config mine.yml" in text


def test_no_route_says_what_to_check() -> None:
    rep = report(
        [("t", "tcp", Verdict.SKIPPED, "this vantage has no IPv6 route")],
        check=VantageCheck(ipv6=False, reason="no_route"),
    )
    text = render(rep, None)
    assert "ip -6 route show default" in text and "--family ipv4" in text


def test_ipv6_not_selected_is_not_ipv6_unknown() -> None:
    rep = report(
        [("t", "tcp", Verdict.SKIPPED, "ipv6 not selected")],
        check=VantageCheck(ipv6=None),
        families=("ipv4",),
    )
    text = render(rep, None)
    assert "IPv6 was not selected" in text and "unknown" not in text
    assert "    probe run --family both" in text  # what to run next: compare them
    rep = report([("t", "tcp", Verdict.IPV6_MISSING, "no AAAA")], check=VantageCheck(ipv6=None))
    assert "own IPv6 is unknown" in render(rep, None)


def test_peer_text_cannot_reach_the_terminal() -> None:
    rep = report([("t", "tls", Verdict.IPV6_FAILED, "bad\x1b]0;owned\x07\nforged line")])
    text = render(rep, None)
    assert "\x1b" not in text and "\x07" not in text
    assert "bad\\x1b]0;owned\\x07\\x0aforged line" in text


def test_colour_only_on_a_terminal() -> None:
    assert "\x1b[" in render(MIXED, None, color=True)
    assert "\x1b[" not in render(MIXED, None, color=False)


@pytest.fixture
def pty_out() -> Iterator[io.TextIOWrapper]:
    """A real terminal (a pseudo-terminal) 97 columns wide, as stdout would be."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 97, 0, 0))
    out = open(follower, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    try:
        yield out
    finally:
        out.close()
        os.close(leader)


def test_width_from_columns_then_terminal_then_none(
    monkeypatch: pytest.MonkeyPatch, pty_out: io.TextIOWrapper
) -> None:
    piped = io.StringIO()
    monkeypatch.delenv("COLUMNS", raising=False)
    assert output_width(piped) is None  # a pipe or a file: no wrapping
    assert output_width(pty_out) == 97  # a terminal: its width
    monkeypatch.setenv("COLUMNS", "61")
    assert output_width(piped) == 61 and output_width(pty_out) == 61  # $COLUMNS wins
    for bad in ("0", "-5", "wide", ""):
        monkeypatch.setenv("COLUMNS", bad)
        assert output_width(piped) is None and output_width(pty_out) == 97


def test_the_table_on_a_terminal_is_coloured_and_fits(
    monkeypatch: pytest.MonkeyPatch, pty_out: io.TextIOWrapper
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    buffer = io.StringIO()
    buffer.isatty = lambda: True  # type: ignore[method-assign]
    buffer.fileno = pty_out.fileno  # type: ignore[method-assign]
    write_table(MIXED, buffer)
    text = buffer.getvalue()
    assert "\x1b[" in text
    plain = re.sub(r"\x1b\[[0-9;]*m", "", text)
    assert max(len(line) for line in plain.splitlines()) <= 97
    monkeypatch.setenv("NO_COLOR", "1")
    buffer.truncate(0)
    write_table(MIXED, buffer)
    assert "\x1b[" not in buffer.getvalue()


def test_exit_help_is_the_exit_table() -> None:
    text = exit_help()
    for s in EXIT_STATUSES:
        assert f"{s.code} {s.meaning}" in text
    one = EXIT_MEANINGS[1].meaning
    assert all(str(v) in one for v in REGRESSIONS)
    assert "ipv6_slower" not in one  # it never sets exit 1
    assert [s.code for s in EXIT_STATUSES] == [2, 4, 3, 1, 0]  # precedence


def test_plan_fits_and_counts_in_words() -> None:
    targets = [Target(name=n, service="alb", region="none", host=f"{n}.example") for n in TARGETS]
    for width in (None, 120, 60):
        out = io.StringIO()
        write_plan(plan_rows(targets, ("ipv4", "ipv6")), out, fmt="table", title="t", width=width)
        text = out.getvalue()
        assert all(line == line.rstrip() for line in text.splitlines())
        assert "5 targets" in text
        assert first_column(text) == TARGETS
    out = io.StringIO()
    write_plan(plan_rows(targets[:1], ("ipv4",)), out, fmt="table", title="t", width=None)
    assert out.getvalue().splitlines()[-1] == "1 target"


@pytest.mark.parametrize(
    ("seconds", "shown"),
    [
        (0.0123, "12.3 ms"),
        (0.001, "1.0 ms"),
        (0.00099, "0.99 ms"),
        (0.00003, "0.03 ms"),  # a loopback connect, as the kernel times it
        (0.000004, "<0.01 ms"),
        (0.0, "<0.01 ms"),
    ],
)
def test_latency_below_a_millisecond_is_not_zero(seconds: float, shown: str) -> None:
    assert milliseconds(seconds) == shown


def test_why_says_the_kind_and_phase_of_the_error() -> None:
    err = ProbeError(kind=ErrorKind.TIMEOUT, message="no answer within 5 s", phase="connect")
    v4 = result("t", "tcp", "ipv4")
    v6 = dataclasses.replace(result("t", "tcp", "ipv6", ok=False), error=err)
    p = Parity(target="t", probe="tcp", verdict=Verdict.IPV6_FAILED, reason=err.message)
    rep = dataclasses.replace(MIXED, results=(v4, v6), parity=(p,))
    assert "timeout in connect: no answer within 5 s" in render(rep, None)
