"""What a command line selects, and how it ends: unknown filters and empty selections are exit 2
with one line, name servers of route53.zones are selected like any target, bare numbers are
seconds, one family selected says so, a closed pipe ends quietly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from monitor.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def probe(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """`probe` as a separate process (the network guard is inherited)."""
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def one_line_exit_2(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("probe: "), lines
    return lines[0]


@pytest.fixture
def small(tmp_path: Path) -> Path:
    """Two user targets (one without a region) and a Route 53 zone; nothing is probed."""
    path = tmp_path / "small.yml"
    path.write_text(
        "vantage: t\n"
        "targets:\n"
        "  - {name: web, service: alb, region: eu-west-1, host: web.example}\n"
        "  - {name: api, host: api.example, probes: [tcp, tls]}\n"
        "route53: {zones: [example.com], max_nameservers: 4}\n"
    )
    return path


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--service", "nosuch", "--service nosuch: no target has it in"),
        ("--region", "nosuch-1", "--region nosuch-1: no target has it in"),
        ("--target", "nosuch", "--target nosuch: no such target in"),
    ],
)
def test_unknown_filters_are_exit_2_with_one_line(flag: str, value: str, says: str) -> None:
    """The shipped AWS catalog; the exit comes before anything is resolved or sent."""
    line = one_line_exit_2(probe("run", flag, value))
    assert says in line


def test_unknown_service_names_those_there(small: Path) -> None:
    line = one_line_exit_2(probe("targets", "--config", str(small), "--service", "s3"))
    assert line.endswith("(there: alb, custom, route53)")
    line = one_line_exit_2(probe("targets", "--config", str(small), "--region", "us-east-1"))
    assert line.endswith("(there: eu-west-1, global, none)")


def test_filters_that_select_nothing_are_exit_2(small: Path) -> None:
    line = one_line_exit_2(
        probe("run", "--config", str(small), "--service", "alb", "--region", "none")
    )
    assert line == f"probe: --service alb --region none: selects no target in {small}"
    # a target without the probe kind asked for is not selected either
    one_line_exit_2(probe("targets", "--config", str(small), "--target", "api", "--probe", "dns"))


def test_an_empty_configuration_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "empty.yml"
    path.write_text("vantage: t\n")
    line = one_line_exit_2(probe("run", "--config", str(path)))
    assert line == f"probe: this configuration: selects no target in {path}"


def test_region_none_selects_targets_without_a_region(
    small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["targets", "--config", str(small), "--region", "none", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["target"], r["region"]) for r in rows] == [("api", "none")]


def test_nameserver_names_are_targets(small: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["run", "--dry-run", "--config", str(small), "--target", "route53-ns-example.com-1"])
        == 0
    )
    assert "name servers are found at run time" in capsys.readouterr().err
    for name in (
        "route53-ns-example.com-5",
        "route53-ns-example.org-1",
        "route53-ns-example.com-x",
    ):
        assert main(["run", "--dry-run", "--config", str(small), "--target", name]) == 2
        assert f"--target {name}: no such target" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--dry-run", "--timeout", "5"],
        ["run", "--dry-run", "--timeout", "0.5"],
        ["run", "--dry-run", "--timeout", "1m30s"],
    ],
)
def test_cli_durations_take_bare_seconds(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 0
    assert "dry run:" in capsys.readouterr().out


def test_every_duration_option_takes_seconds() -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--timeout", "5"]).timeout == 5.0
    assert (
        parser.parse_args(["serve", "--config", "x", "--drain-timeout", "5"]).drain_timeout == 5.0
    )
    assert (
        parser.parse_args(["ip-ranges", "update", "--output", "x", "--timeout", "2.5"]).timeout
        == 2.5
    )
    for bad in ("0", "5x", "-1", "nan", "inf", "1e3"):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(["run", "--timeout", bad])
        assert info.value.code == 2


def test_a_quoted_number_in_a_config_stays_an_error(tmp_path: Path) -> None:
    path = tmp_path / "q.yml"
    path.write_text('timeout: "5"\n')
    line = one_line_exit_2(probe("targets", "--config", str(path)))
    assert line.endswith("""timeout: bad duration '5': use e.g. 500ms, 5s, 1m""")


def test_family_outside_the_configuration_is_exit_2(tmp_path: Path) -> None:
    path = tmp_path / "v4.yml"
    path.write_text("families: [ipv4]\ntargets: [{name: a, host: a.example}]\n")
    line = one_line_exit_2(probe("run", "--config", str(path), "--family", "ipv6"))
    assert line == f"probe: --family ipv6: {path} probes only ipv4"


def test_a_source_that_is_not_this_hosts_is_a_configuration_error(tmp_path: Path) -> None:
    """Not 'this vantage has no IPv6 route' and exit 3: the file is wrong, exit 2."""
    path = tmp_path / "src.yml"
    path.write_text(
        "source: {ipv6: '2001:db8:dead::1'}\ntargets: [{name: a, host: '::1', probes: [tcp]}]\n"
    )
    line = one_line_exit_2(probe("run", "--config", str(path)))
    assert line.startswith(
        f"probe: {path}: source.ipv6: 2001:db8:dead::1 is not an address of this host"
    )
    path.write_text(
        "source: {ipv4: 192.0.2.77}\ntargets: [{name: a, host: '::1', probes: [tcp]}]\n"
    )
    assert "source.ipv4: 192.0.2.77 is not an address" in one_line_exit_2(
        probe("run", "--config", str(path))
    )


def big_config(tmp_path: Path, n: int = 800) -> Path:
    path = tmp_path / "big.yml"
    targets = [
        {"name": f"t{i:04d}", "host": f"h{i}.example", "region": "eu-west-1"} for i in range(n)
    ]
    path.write_text(yaml.safe_dump({"vantage": "big", "targets": targets}))
    return path


@pytest.mark.parametrize("fmt", ["json", "table"])
def test_a_closed_pipe_ends_quietly(tmp_path: Path, fmt: str) -> None:
    """Acceptance: `probe targets --format json` of 800 targets into `head -c 10`."""
    cfg = big_config(tmp_path)
    err = tmp_path / "stderr"
    script = (
        f"{sys.executable} -m monitor.cli targets --config {cfg} --format {fmt} 2>{err}"
        ' | head -c 10; echo " ${PIPESTATUS[0]}"'
    )
    proc = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=60, env=os.environ
    )
    assert len(proc.stdout) == 10 + len(" 0\n"), proc.stdout
    assert proc.stdout.endswith(" 0\n")  # exit 0
    assert err.read_text() == ""  # no traceback, nothing at all


def test_every_option_of_every_subcommand_has_a_description() -> None:
    import argparse

    def walk(parser: argparse.ArgumentParser, where: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{where} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{where} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert walk(build_parser(), "probe") == []


# --- against the lab: name servers selected by name, one family, the JSON's new keys ---------


def run_json(
    lab_config_file: Path, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, dict[str, Any], str]:
    status = main(["run", "--config", str(lab_config_file), "--format", "json", *argv])
    out, err = capsys.readouterr()
    return status, json.loads(out), err


def test_a_nameserver_target_is_probed_alone_by_name(
    lab_config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runbook's `probe run --target TARGET` reproduces an alert on a name server."""
    name = "route53-ns-example.com-1"
    status, doc, _ = run_json(lab_config_file, capsys, "--target", name, "--probe", "dns")
    assert status == 0
    assert {r["target"] for r in doc["results"]} == {name}
    assert [(p["target"], p["probe"], p["service"], p["region"]) for p in doc["parity"]] == [
        (name, "dns", "route53", "global")
    ]


@pytest.mark.parametrize(
    ("argv", "targets"),
    [
        (["--service", "route53"], {"route53-ns-example.com-1", "route53-ns-example.com-2"}),
        (
            ["--region", "global", "--probe", "tcp"],
            {"route53-ns-example.com-1", "route53-ns-example.com-2"},
        ),
        (["--region", "none", "--probe", "tcp"], {"alias"}),
        (["--service", "alb", "--target", "healthy", "--probe", "tcp"], {"healthy"}),
    ],
)
def test_filters_apply_to_nameservers_too(
    lab_config_file: Path, capsys: pytest.CaptureFixture[str], argv: list[str], targets: set[str]
) -> None:
    _, doc, _ = run_json(lab_config_file, capsys, *argv)
    assert {r["target"] for r in doc["results"]} == targets


def test_one_family_warns_once_and_notes_it(
    lab_config_file: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COLUMNS", raising=False)
    status, doc, err = run_json(
        lab_config_file, capsys, "--family", "ipv4", "--target", "healthy", "--probe", "tcp"
    )
    assert status == 0
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("probe: warning: only ipv4 is probed")
    assert lines[0].removeprefix("probe: warning: ") in doc["notes"]
    assert {p["verdict"] for p in doc["parity"]} == {"skipped"}
    # and in the table, the vantage's IPv6 is not called unknown: it was not selected
    main(
        [
            "run",
            "--config",
            str(lab_config_file),
            "--family",
            "ipv4",
            "--target",
            "healthy",
            "--probe",
            "tcp",
        ]
    )
    out, err = capsys.readouterr()
    assert "IPv6 was not selected" in out and "unknown" not in out
    assert len(err.splitlines()) == 1
