"""`probe lab up --routed` as a user runs it: the routed path comes up, `probe lab fault`
switches where IPv6 is dropped, the trace command it prints shows each blame, and Ctrl-C
removes every namespace."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lab.netns import probe_cli, project_env


def probe(*args: str) -> list[str]:
    return [sys.executable, "-m", "monitor.cli", *args]


def namespaces() -> str:
    return subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, timeout=30, check=True
    ).stdout


@pytest.mark.netns
def test_routed_lab_shows_each_blame_and_cleans_up(tmp_path: Path) -> None:
    workdir = tmp_path / "lab"
    lab = subprocess.Popen(
        probe("lab", "up", "--routed", "--dir", str(workdir)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=project_env(),
    )
    try:
        assert lab.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not (lines and lines[-1].startswith("lab ready")):
            line = lab.stdout.readline()
            if not line:
                break
            lines.append(line)
        assert lines and lines[-1].startswith("lab ready"), "".join(lines)
        command = next(line for line in lines if line.startswith("trace from the vantage:"))
        words = shlex.split(command.split(":", 1)[1].split("[", 1)[0])
        assert words[:3] == ["ip", "netns", "exec"] and words[4:6] == ["probe", "trace"], words
        vantage = words[3]
        assert vantage in namespaces()
        blames = {}
        for fault in ("none", "vantage", "transit", "aws_edge"):
            switched = probe_cli(None, "lab", "fault", "--dir", str(workdir), fault, timeout=30)
            assert switched.returncode == 0, switched.stderr
            traced = subprocess.run(
                [*words[:4], *probe(*words[5:], "--format", "json")],
                capture_output=True,
                text=True,
                timeout=60,
                env=project_env(),
                check=False,
            )
            assert traced.stdout, traced.stderr
            blames[fault] = json.loads(traced.stdout)["blame"]
        assert blames == {
            "none": {"ipv4": "none", "ipv6": "none"},
            "vantage": {"ipv4": "none", "ipv6": "vantage"},
            "transit": {"ipv4": "none", "ipv6": "transit"},
            "aws_edge": {"ipv4": "none", "ipv6": "aws_edge"},
        }
    finally:
        lab.send_signal(signal.SIGINT)
        out, err = lab.communicate(timeout=30)
    assert lab.returncode == 0, err
    assert out.rstrip().endswith("lab stopped")
    assert vantage not in namespaces()
    assert not (workdir / "routed.json").exists()
