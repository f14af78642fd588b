"""`probe config init [FILE]`: a commented starting configuration that loads as it is, whose
commented examples load once uncommented, and that never overwrites a file unasked."""

from __future__ import annotations

import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from monitor.cli import main
from monitor.config import load_config, load_yaml, validate
from monitor.run.configinit import render, vantage_name


def probe(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "monitor.cli", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def uncommented(text: str) -> str:
    """The file with every commented example switched on (and `targets: []` dropped): the
    block from a `# targets:` or `# route53:` line down to its last `#   ` line."""
    lines, inside = [], False
    for line in text.splitlines():
        if line == "targets: []":
            continue
        inside = bool(re.match(r"^# (targets|route53):$", line)) or (
            inside and line.startswith("#   ")
        )
        lines.append(line[2:] if inside else line)
    return "\n".join(lines) + "\n"


def test_without_file_it_goes_to_stdout(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["config", "init"]) == 0
    out, err = capsys.readouterr()
    assert out == render() and err == ""
    cfg = validate(load_yaml(out, "stdout"), "stdout")
    assert cfg.vantage == vantage_name(socket.gethostname())
    assert cfg.catalog.services == ["s3", "ec2", "sts", "iam"]


def test_the_file_written_loads_with_probe_targets(tmp_path: Path) -> None:
    path = tmp_path / "dualstack.yml"
    proc = probe("config", "init", str(path))
    assert proc.returncode == 0 and proc.stdout == ""
    assert f"probe targets --config {path}" in proc.stderr
    listed = probe("targets", "--config", str(path), "--format", "json")
    assert listed.returncode == 0, listed.stderr
    names = [row["target"] for row in json.loads(listed.stdout)]
    assert "s3-us-east-1" in names and "iam-api-global" in names


def test_an_existing_file_needs_force(tmp_path: Path) -> None:
    path = tmp_path / "mine.yml"
    path.write_text("vantage: keep-me\n")
    proc = probe("config", "init", str(path))
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"probe: {path}: already exists; --force overwrites it"]
    assert path.read_text() == "vantage: keep-me\n"
    assert probe("config", "init", "--force", str(path)).returncode == 0
    assert path.read_text().startswith("# dualstack-monitor configuration")


def test_the_commented_examples_load_once_uncommented(tmp_path: Path) -> None:
    path = tmp_path / "all.yml"
    path.write_text(uncommented(render(str(path))))
    cfg = load_config(path)
    mine = {t.name: t for t in cfg.targets if t.source == "config"}
    assert set(mine) == {"my-alb", "my-distribution"}
    assert mine["my-alb"].host.startswith("dualstack.")  # an ALB's dual-stack name
    assert "http3" in mine["my-distribution"].probes  # CloudFront: the HTTP/3 example
    assert cfg.zones == ("example.com",)


@pytest.mark.parametrize(
    ("hostname", "name"),
    [
        ("web-01.corp.example", "web-01"),
        ("1234", "1234"),
        ("", "my-vantage"),
        ("-odd_", "my-vantage"),
        ("tokyo office", "tokyo-office"),
    ],
)
def test_vantage_from_the_host(hostname: str, name: str) -> None:
    assert vantage_name(hostname) == name
    cfg = validate(load_yaml(render(hostname=hostname), "x"), "x")
    assert cfg.vantage == name  # a string, even when it looks like a number
