"""`probe lab up` in one process and `probe run` in another, both as an unprivileged user:
every lab fault shows its verdict without root. Also ICMP without permission, and the
shipped catalog and default config found by a plain (non-editable) install."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from monitor.lab.run import EXPECTED, expected

ROOT = Path(__file__).resolve().parents[1]


# "Without root": uid 0 stripped of every capability (no CAP_NET_RAW, CAP_NET_ADMIN,
# CAP_NET_BIND_SERVICE, CAP_DAC_OVERRIDE...). Dropping to `nobody` would be simpler, but the
# interpreter here lives under /root, which nobody may not read.
UNPRIVILEGED = [
    "setpriv",
    "--bounding-set=-all",
    "--inh-caps=-all",
    "--ambient-caps=-all",
    "--no-new-privs",
    "--",
]


def _probe(*args: str) -> list[str]:
    return [*UNPRIVILEGED, sys.executable, "-m", "monitor.cli", *args]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["HOME"] = "/tmp"
    return env


def _icmp_allowed_unprivileged() -> bool:
    lo, hi = (int(x) for x in Path("/proc/sys/net/ipv4/ping_group_range").read_text().split())
    return lo <= os.getgid() <= hi


@pytest.fixture(scope="module")
def lab_up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    workdir = tmp_path_factory.mktemp("labup")
    workdir.chmod(0o777)
    proc = subprocess.Popen(
        _probe("lab", "up", "--dir", str(workdir / "lab")),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
        cwd=workdir,
    )
    try:
        assert proc.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("lab ready: config written to "):
                yield Path(line.removeprefix("lab ready: config written to ").strip())
                break
        else:
            pytest.fail("probe lab up did not get ready in 60 s:\n" + "".join(lines))
        if not lines or not lines[-1].startswith("lab ready"):
            pytest.fail(
                "probe lab up exited:\n"
                + "".join(lines)
                + (proc.stderr.read() if proc.stderr else "")
            )
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
    assert proc.returncode == 0, err
    assert "lab stopped" in out


@pytest.mark.root
def test_lab_up_then_probe_run_without_root(lab_up: Path) -> None:
    proc = subprocess.run(
        _probe("run", "--config", str(lab_up), "--format", "json"),
        capture_output=True,
        text=True,
        timeout=120,
        env=_env(),
        check=False,
    )
    assert proc.returncode == 1, proc.stderr  # IPv6 is worse than IPv4 somewhere: the faults
    doc = json.loads(proc.stdout)
    got = {(p["target"], p["probe"]): p["verdict"] for p in doc["parity"]}
    icmp_ok = _icmp_allowed_unprivileged()
    want = {
        (name, probe): expected(name, probe, icmp_permitted=icmp_ok)
        for name, probes in EXPECTED.items()
        for probe in probes
    }
    assert {k: got.get(k) for k in want} == want
    if not icmp_ok:
        kinds = {r["error"]["kind"] for r in doc["results"] if r["probe"] == "icmp" and r["error"]}
        assert "icmp_not_permitted" in kinds


@pytest.mark.root
def test_lab_up_table_for_people(lab_up: Path) -> None:
    proc = subprocess.run(
        _probe("run", "--config", str(lab_up), "--target", "expired_v6", "--probe", "tls"),
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        check=False,
    )
    assert proc.returncode == 1
    assert "tls_cert_expired" in proc.stdout and "ipv6_failed" in proc.stdout


@pytest.mark.root
def test_icmp_without_permission_is_an_error_kind(lab_config_file: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("this test sets ping_group_range and must start as root (CI does)")
    old = Path("/proc/sys/net/ipv4/ping_group_range").read_text()
    # No group may open unprivileged ICMP sockets: the kernel default, set for the test.
    Path("/proc/sys/net/ipv4/ping_group_range").write_text("1 0")
    try:
        proc = subprocess.run(
            _probe(
                "run",
                "--config",
                str(lab_config_file),
                "--target",
                "healthy",
                "--probe",
                "icmp",
                "--format",
                "json",
            ),
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
            check=False,
        )
    finally:
        Path("/proc/sys/net/ipv4/ping_group_range").write_text(old)
    assert proc.returncode == 0, proc.stderr  # both_failed is a warning, not a regression
    doc = json.loads(proc.stdout)
    kinds = [r["error"]["kind"] for r in doc["results"] if r["target"] == "healthy"]
    assert kinds == ["icmp_not_permitted", "icmp_not_permitted"]
    assert [p["verdict"] for p in doc["parity"] if p["target"] == "healthy"] == ["both_failed"]


def test_plain_install_finds_shipped_files(tmp_path: Path) -> None:
    """`pip install .` (not editable), used from outside the checkout."""
    target = tmp_path / "site"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert build.returncode == 0, build.stderr
    shutil.rmtree(ROOT / "build", ignore_errors=True)
    assert (target / "monitor" / "configs" / "catalog.yml").is_file()
    env = dict(os.environ)
    # The installed copy only: not the checkout (nor the editable install's finder).
    env["PYTHONPATH"] = os.pathsep.join([str(target), env.get("PYTHONPATH", "")])
    code = (
        "import monitor, sys; from monitor.cli import main; "
        "assert 'site' in monitor.__file__, monitor.__file__; "
        "sys.exit(main(['targets', '--service', 's3', '--format', 'json']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert {r["host"] for r in rows} == {
        "s3.dualstack.us-east-1.amazonaws.com",
        "s3.dualstack.ap-northeast-1.amazonaws.com",
    }
    assert (target / "monitor" / "configs" / "default.yml").is_file()
