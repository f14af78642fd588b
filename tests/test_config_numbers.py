"""Bad numbers in configuration (issue 13, finding 5): every duration and number is finite,
`interval` and `timeout` are at most a day, a file that is not UTF-8 is the one-line `cannot
read` error (exit 2), and a reload that fails, whatever the cause, keeps the running
configuration whole and sets dualstack_config_last_reload_successful to 0."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families
from serving import serve

from monitor.cli import main
from monitor.config import Config, ConfigError, load_config, parse_duration
from monitor.lab.loopback import LabFacts
from monitor.lab.run import write_config
from monitor.serve.vantage import Vantage

ROOT = Path(__file__).resolve().parents[1]

BAD_NUMBERS = [
    (".nan", "interval"),
    (".inf", "interval"),
    ("-.inf", "interval"),
    ("1.0e+400", "interval"),  # YAML reads it as a float: infinity
    ("25h", "interval"),
    ("86401s", "interval"),
    (".nan", "timeout"),
    (".inf", "timeout"),
    ("1.0e+400", "timeout"),
    ("2d", "timeout"),
    ("100000h", "timeout"),
]


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


@pytest.mark.parametrize(("value", "key"), BAD_NUMBERS)
def test_top_level_durations_are_finite_and_at_most_a_day(
    value: str, key: str, tmp_path: Path
) -> None:
    cfg = write(tmp_path / "c.yml", f"{key}: {value}\ntargets: []\n")
    with pytest.raises(ConfigError) as err:
        load_config(cfg)
    message = str(err.value)
    assert message.startswith(f"{cfg}: {key}: ") and "\n" not in message


@pytest.mark.parametrize(("value", "key"), BAD_NUMBERS[:6])
def test_target_durations_too(value: str, key: str, tmp_path: Path) -> None:
    cfg = write(
        tmp_path / "c.yml",
        f"targets:\n  - name: t\n    host: 2001:db8::1\n    {key}: {value}\n",
    )
    with pytest.raises(ConfigError, match=rf"targets\[0\]\.{key}: "):
        load_config(cfg)


@pytest.mark.parametrize(
    "parity",
    [
        "{slower_ratio: .inf}",
        "{slower_ratio: .nan}",
        "{slower_margin: .nan}",
        "{slower_margin: .inf}",
    ],
)
def test_parity_numbers_are_finite(parity: str, tmp_path: Path) -> None:
    cfg = write(tmp_path / "c.yml", f"parity: {parity}\ntargets: []\n")
    with pytest.raises(ConfigError, match=r"parity\.slower_"):
        load_config(cfg)


def test_a_day_is_allowed(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path / "c.yml", "interval: 24h\ntimeout: 1d\ntargets: []\n"))
    assert cfg.interval == cfg.timeout == 86400.0


@pytest.mark.parametrize("text", ["nan", "inf", "1e400", "25h"])
def test_command_line_durations_are_bounded(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--timeout", text, "--dry-run"])
    assert exit_.value.code == 2
    assert "--timeout" in capsys.readouterr().err


def test_parse_duration_refuses_non_finite() -> None:
    for value in (float("nan"), float("inf"), "nan", "infs"):
        with pytest.raises(ValueError):
            parse_duration(value)


def test_not_utf8_is_the_cannot_read_error_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cfg = tmp_path / "latin1.yml"
    cfg.write_bytes("vantage: caf\u00e9\n".encode("latin-1"))
    assert main(["run", "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"probe: {cfg}: cannot read: ") and "UTF-8" in err


def test_serve_refuses_nan_interval_in_one_line(tmp_path: Path) -> None:
    cfg = write(tmp_path / "nan.yml", "interval: .nan\ntargets: []\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "monitor.cli",
            "serve",
            "--config",
            str(cfg),
            "--listen",
            "127.0.0.1:0",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"probe: {cfg}: interval: ")


def metric(text: str, name: str) -> float | None:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    return None


def test_reload_to_nan_keeps_the_running_configuration(
    lab_session: LabFacts, tmp_path: Path
) -> None:
    """POST /-/reload to `interval: .nan`: refused (500), the gauge is 0, every job of the
    running configuration still runs and the new target never appears."""
    cfg = write_config(lab_session, tmp_path / "lab.yml", vantage="numbers", interval="1s")
    original = yaml.safe_load(cfg.read_text())
    original["targets"] = [t for t in original["targets"] if t["name"] == "healthy"]
    original["targets"][0]["probes"] = ["tcp"]
    original["route53"] = {"zones": []}
    cfg.write_text(yaml.safe_dump(original))
    with serve(cfg, "--web.enable-lifecycle") as served:
        served.wait_ready()
        broken = {**original, "interval": float("nan")}
        broken["targets"] = [*original["targets"], {**original["targets"][0], "name": "added"}]
        cfg.write_text(yaml.safe_dump(broken))
        assert served.post("/-/reload") == 500
        runs_before = metric(served.get("/metrics")[1], "dualstack_probe_runs_total")
        time.sleep(2.5)
        status, text = served.get("/metrics")
        assert status == 200
        assert metric(text, "dualstack_config_last_reload_successful") == 0.0
        runs_after = metric(text, "dualstack_probe_runs_total")
        assert runs_before is not None and runs_after is not None and runs_after > runs_before
        assert 'target="added"' not in text
        assert served.get("/readyz")[0] == 200
        failed = served.events("reload_failed")
        assert failed and "interval" in str(failed[-1]["msg"])
        assert served.proc.poll() is None


async def test_a_reload_failing_for_any_reason_changes_nothing(tmp_path: Path) -> None:
    """The configuration loads, but applying it fails (here: the scheduler refuses it): the
    store, the scheduler and the resolver stay as they were, and the gauge says 0."""
    cfg = load_config(
        write(tmp_path / "a.yml", "vantage: a\ntargets:\n  - {name: t, host: 2001:db8::1}\n")
    )
    service = Vantage(cfg)
    await service.apply(cfg)
    jobs, targets, resolver = (
        dict(service.scheduler.jobs),
        dict(service.store.targets),
        (service.resolver),
    )
    other = load_config(
        write(tmp_path / "b.yml", "vantage: b\ntargets:\n  - {name: u, host: 2001:db8::2}\n")
    )

    def boom(_: object) -> tuple[set[object], set[object]]:
        raise RuntimeError("scheduler refused it")

    service.scheduler.set_targets = boom  # type: ignore[method-assign,assignment]

    def load() -> Config:
        return other

    assert await service.reload(load) is False
    assert service.store.reload_ok is False
    assert service.scheduler.jobs == jobs and service.store.targets == targets
    assert service.resolver is resolver and service.cfg is cfg and service.store.vantage == "a"

    def crash() -> Config:
        raise RuntimeError("not a ConfigError")

    service.store.reload_ok = True
    assert await asyncio.wait_for(service.reload(crash), 10) is False
    assert service.store.reload_ok is False and service.cfg is cfg
