"""`probe lab up` and its folder (issue 13, findings 8 and 10).

- The README's lab quick start, run exactly as written in a fresh folder: `probe lab up` in one
  process, `probe run --config dualstack-lab/lab.yml` in another; and the absolute command the
  lab prints, from another folder. Both probe the lab (exit 1: its faults), none exits 2.
- The lab writes its keys and files without following a symlink planted in an existing
  `--dir`, and refuses a `--dir` that another user owns or others may write to.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
LAB_READY = "lab ready: config written to "
ANOTHER_TERMINAL = "in another terminal:  "


def probe_command() -> list[str]:
    """`probe` as a user types it: the console script installed beside this interpreter."""
    script = Path(sys.executable).parent / "probe"
    return [str(script)] if script.exists() else [sys.executable, "-m", "monitor.cli"]


def env() -> dict[str, str]:
    out = dict(os.environ)
    out["PYTHONPATH"] = os.pathsep.join([str(ROOT), out.get("PYTHONPATH", "")])
    return out


def readme_quick_start() -> tuple[list[str], list[str]]:
    """The two commands of the README's lab quick start, as written (comments dropped), after
    the install of the lab extra that comes first."""
    text = README.read_text(encoding="utf-8")
    block = re.search(r"No AWS, no internet, no root\?.*?```sh\n(.*?)```", text, re.DOTALL)
    assert block, "the README has no lab quick start"
    commands = [shlex.split(line.split("#")[0]) for line in block.group(1).splitlines()]
    commands = [c for c in commands if c]
    assert commands[0] == ["pip", "install", ".[lab]"], commands[0]
    commands = commands[1:]
    assert len(commands) == 2 and commands[0][:3] == ["probe", "lab", "up"]
    assert commands[1][:2] == ["probe", "run"]
    return commands[0], commands[1]


def as_typed(argv: list[str]) -> list[str]:
    assert argv[0] == "probe"
    return [*probe_command(), *argv[1:]]


@contextmanager
def lab_up(argv: list[str], cwd: Path) -> Iterator[list[str]]:
    """Run `probe lab up ...` in `cwd` until it prints that it is ready; yields its output."""
    proc = subprocess.Popen(
        argv,
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env(),
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.rstrip("\n"))
            if line.startswith("Ctrl-C stops the lab"):
                break
        else:
            pytest.fail("probe lab up was not ready within 60 s:\n" + "\n".join(lines))
        yield lines
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.communicate()


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=180, env=env(), check=False
    )


def test_readme_lab_quick_start_as_written(tmp_path: Path) -> None:
    up, probe_run = readme_quick_start()
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    with lab_up(as_typed(up), fresh) as out:
        ready = [x for x in out if x.startswith(LAB_READY)]
        assert ready, "\n".join(out)
        printed_config = Path(ready[0].removeprefix(LAB_READY))
        assert printed_config.is_absolute()
        printed = next(x for x in out if x.startswith(ANOTHER_TERMINAL))
        printed_argv = shlex.split(printed.removeprefix(ANOTHER_TERMINAL))
        assert printed_argv == ["probe", "run", "--config", str(printed_config)]

        # Terminal 2, in the same folder, exactly as the README says.
        same = run(as_typed(probe_run), fresh)
        assert same.returncode == 1, same.stdout + same.stderr  # the lab's faults: IPv6 worse
        assert "ipv6_failed" in same.stdout and "no such file" not in same.stderr

        # The command the lab printed, from another folder.
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        other = run(as_typed(printed_argv), elsewhere)
        assert other.returncode == 1, other.stdout + other.stderr
        assert "ipv6_failed" in other.stdout


def test_the_lab_extra_holds_what_only_the_lab_imports() -> None:
    """hypercorn and trustme are the `lab` extra, not dependencies: nothing outside
    monitor/lab/ imports them, and scripts/install installs the extra for the tests."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    names = {re.split(r"[<>=!~;\[ ]", req)[0].lower() for req in project["dependencies"]}
    lab = {re.split(r"[<>=!~;\[ ]", r)[0].lower() for r in project["optional-dependencies"]["lab"]}
    assert lab == {"hypercorn", "trustme"} and not lab & names
    importers = [
        str(path.relative_to(ROOT))
        for package in ("monitor", "probes")
        for path in (ROOT / package).rglob("*.py")
        if re.search(r"^\s*(?:import|from) (?:hypercorn|trustme)\b", path.read_text(), re.M)
    ]
    assert importers and all(p.startswith("monitor/lab/") for p in importers), importers
    assert "'.[test,dev,lab]'" in (ROOT / "scripts" / "install").read_text(encoding="utf-8")


@pytest.mark.parametrize("missing", ["hypercorn", "trustme"])
def test_lab_up_without_the_lab_extra_says_so(tmp_path: Path, missing: str) -> None:
    """Without the extra, `probe lab up` prints one line naming it and exits 2, writing nothing."""
    from monitor.cli import LAB_EXTRA_MISSING

    code = (
        "import sys\n"
        "class Gone:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        f"        if name.split('.')[0] == {missing!r}:\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, Gone())\n"
        "from monitor.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    lab_dir = tmp_path / "lab"
    proc = run([sys.executable, "-c", code, "lab", "up", "--dir", str(lab_dir)], tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.splitlines() == [LAB_EXTRA_MISSING] and proc.stdout == ""
    assert "pip install 'dualstack-monitor[lab]'" in LAB_EXTRA_MISSING
    assert not lab_dir.exists()


# -- finding 8: the lab's folder -------------------------------------------------------------


def test_lab_does_not_follow_planted_symlinks(tmp_path: Path) -> None:
    """Symlinks planted in an existing --dir (the CA, a private key, lab.yml) are replaced,
    never written through: the files they point at stay as they were."""
    lab_dir = tmp_path / "lab"
    lab_dir.mkdir(mode=0o700)
    victims = {}
    for name in ("ca.pem", "ca_bundle.pem", "healthy-v4.key", "healthy-v4.pem", "lab.yml"):
        victim = tmp_path / f"victim-{name}"
        victim.write_text(f"precious {name}\n")
        (lab_dir / name).symlink_to(victim)
        victims[name] = victim
    with lab_up([*probe_command(), "lab", "up", "--dir", str(lab_dir)], tmp_path) as out:
        assert any(x.startswith(LAB_READY) for x in out), "\n".join(out)
        for name, victim in victims.items():
            assert victim.read_text() == f"precious {name}\n", f"{name} was written through"
            path = lab_dir / name
            assert not path.is_symlink() and path.is_file(), name
        key = lab_dir / "healthy-v4.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600


def lab_refuses(lab_dir: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*probe_command(), "lab", "up", "--dir", str(lab_dir)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        env=env(),
        check=False,
    )


def test_lab_refuses_a_folder_others_may_write(tmp_path: Path) -> None:
    lab_dir = tmp_path / "shared"
    lab_dir.mkdir()
    lab_dir.chmod(0o777)
    proc = lab_refuses(lab_dir, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.count("\n") == 1 and "writable by others" in proc.stderr
    assert list(lab_dir.iterdir()) == []


@pytest.mark.root
def test_lab_refuses_a_folder_of_another_user(tmp_path: Path) -> None:
    lab_dir = tmp_path / "theirs"
    lab_dir.mkdir(mode=0o755)
    os.chown(lab_dir, 65534, 65534)
    proc = lab_refuses(lab_dir, tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "owned by uid 65534" in proc.stderr
    assert list(lab_dir.iterdir()) == []


def test_lab_refuses_a_symlinked_folder(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    link = tmp_path / "link"
    link.symlink_to(real)
    proc = lab_refuses(link, tmp_path)
    assert proc.returncode == 2 and "symbolic link" in proc.stderr
    assert list(real.iterdir()) == []


def test_a_new_lab_folder_is_private(tmp_path: Path) -> None:
    lab_dir = tmp_path / "new" / "lab"
    with lab_up([*probe_command(), "lab", "up", "--dir", str(lab_dir)], tmp_path):
        assert stat.S_IMODE(lab_dir.stat().st_mode) == 0o700
