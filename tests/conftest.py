"""Test-wide fixtures: the network guard (autouse, this process and every child Python) and the
lab of real servers on loopback, started once per session in a process of its own."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

GUARD_DIR = Path(__file__).parent / "netguard"
sys.path.insert(0, str(GUARD_DIR))

import guard  # noqa: E402

guard.install()

from lab.process import LabProcess  # noqa: E402

from monitor.lab.loopback import LabFacts  # noqa: E402
from monitor.lab.run import write_config  # noqa: E402


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests marked `slow(seconds)` first, longest first, the rest in their files' order:
    scripts/check runs files on parallel workers (pytest-xdist, --dist loadfile), and a
    2-minute file handed out last would leave one worker running alone at the end."""

    def expected(item: pytest.Item) -> float:
        mark = item.get_closest_marker("slow")
        return float(mark.args[0]) if mark is not None else 0.0

    items.sort(key=expected, reverse=True)


@pytest.fixture(scope="session", autouse=True)
def _guard_children(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Every Python child inherits the guard via sitecustomize and logs violations here."""
    log = tmp_path_factory.mktemp("netguard") / "violations.log"
    log.touch()
    log.chmod(0o666)  # children run as an unprivileged user in some tests
    os.environ[guard.LOG_ENV] = str(log)
    os.environ[guard.HOST_NETNS_ENV] = guard.netns_id() or ""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(GUARD_DIR), old) if p)
    yield log
    os.environ.pop(guard.LOG_ENV, None)


@pytest.fixture(autouse=True)
def network_guard(_guard_children: Path) -> Iterator[None]:
    """Fail the test if anything tried to reach outside loopback and the lab prefixes."""
    before = _guard_children.read_text()
    guard.take()
    yield
    seen = guard.take()
    children = _guard_children.read_text()[len(before) :]
    if seen or children:
        pytest.fail(
            "network guard: forbidden traffic attempted:\n"
            + "\n".join([*seen, *children.splitlines()]),
            pytrace=False,
        )


@pytest.fixture(scope="session")
def lab_session(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabFacts]:
    """The lab's real DNS, TLS/HTTP/2 and HTTP/3 servers on ::1 and 127.0.0.1, once a session."""
    with LabProcess(tmp_path_factory.mktemp("lab")) as lab:
        yield lab


@pytest.fixture(scope="session")
def lab_config_file(lab_session: LabFacts, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_config(lab_session, tmp_path_factory.mktemp("labcfg") / "lab.yml")
