"""One line and exit status 2 for every usage and start-up error: argparse's (no usage block;
it is for --help), a near miss gets "did you mean", and `probe serve --listen` on a busy port
or on an address this host does not have (EADDRNOTAVAIL: bind fails, no packet is sent)."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from monitor.cli import main

ROOT = Path(__file__).resolve().parents[1]
SERVE = (sys.executable, "-m", "monitor.cli", "serve")


def _one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and "usage:" not in err
    return lines[0]


def test_unknown_probe_is_one_line_with_did_you_mean(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--probe", "https"])
    assert exit_.value.code == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("probe run: error: argument --probe: invalid choice: 'https'")
    assert "did you mean 'http" in line


def test_unknown_command_and_missing_argument(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["rnu"])
    assert exit_.value.code == 2
    assert "did you mean 'run'?" in _one_line(capsys.readouterr().err)
    with pytest.raises(SystemExit) as exit_:
        main(["serve"])
    assert exit_.value.code == 2
    assert "--config" in _one_line(capsys.readouterr().err)


def test_help_still_shows_the_usage(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--help"])
    assert exit_.value.code == 0 and "usage: probe run" in capsys.readouterr().out


def _config(tmp_path: Path, **extra: object) -> Path:
    doc: dict[str, object] = {
        "vantage": "usage",
        "resolver": {"nameservers": ["127.0.0.1"], "port": 9},
        "targets": [
            {"name": "s3-us-east-1", "host": "127.0.0.1", "service": "s3", "probes": ["tcp"]}
        ],
        **extra,
    }
    path = tmp_path / "cfg.yml"
    path.write_text(yaml.safe_dump(doc))
    return path


@pytest.mark.parametrize(
    ("flag", "value", "meant"),
    [("--target", "s3-us-east1", "s3-us-east-1"), ("--service", "s33", "s3")],
)
def test_selection_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, value: str, meant: str
) -> None:
    assert main(["run", "--config", str(_config(tmp_path)), flag, value, "--dry-run"]) == 2
    assert f"did you mean {meant!r}?" in _one_line(capsys.readouterr().err)


def test_unknown_config_key_did_you_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _config(tmp_path, resolver={"nameserver": ["127.0.0.1"]})
    assert main(["run", "--config", str(path), "--dry-run"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "resolver.nameserver: unknown key; did you mean 'nameservers'?" in line


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        yield int(s.getsockname()[1])


def _serve(tmp_path: Path, listen: str) -> subprocess.CompletedProcess[str]:
    from lab.netns import project_env

    return subprocess.run(
        [*SERVE, "--config", str(_config(tmp_path)), "--listen", listen],
        capture_output=True,
        text=True,
        timeout=60,
        env=project_env(),
        check=False,
    )


def test_serve_on_a_busy_port(tmp_path: Path, busy_port: int) -> None:
    run = _serve(tmp_path, f"127.0.0.1:{busy_port}")
    assert run.returncode == 2, run.stderr
    line = _one_line(run.stderr)
    assert f"--listen 127.0.0.1:{busy_port}: cannot listen" in line and "in use" in line


def test_serve_on_an_address_this_host_lacks(tmp_path: Path) -> None:
    # 198.51.100.0/24 is on no interface of the root namespace: bind() fails, nothing is sent
    run = _serve(tmp_path, "198.51.100.77:9999")
    assert run.returncode == 2, run.stderr
    line = _one_line(run.stderr)
    assert "--listen 198.51.100.77:9999: cannot listen" in line
    assert "not an address of this host" in line
