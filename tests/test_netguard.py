"""The guard itself must be able to fail: a forbidden connect or lookup is refused and recorded."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import guard
import pytest


def test_udp_connect_outside_lab_is_refused_and_recorded() -> None:
    # A UDP connect sends no packet even if the guard were broken: a safe thing to try.
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s,
        pytest.raises(guard.NetworkGuardError),
    ):
        s.connect(("192.0.2.1", 9))
    assert guard.take() == ["connection to ('192.0.2.1', 9)"]


def test_system_resolver_lookup_is_refused() -> None:
    with pytest.raises(guard.NetworkGuardError):
        socket.getaddrinfo("s3.dualstack.us-east-1.amazonaws.com", 443)
    assert guard.take() == [
        "name lookup of 's3.dualstack.us-east-1.amazonaws.com' through the system resolver"
    ]


@pytest.mark.parametrize("address", ["2001:db8::5", "198.51.100.7", "203.0.113.9"])
def test_lab_prefixes_are_refused_outside_a_lab_namespace(address: str) -> None:
    # This namespace has a default route: lab prefixes would leave the machine from here.
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s, pytest.raises(guard.NetworkGuardError):
        s.connect((address, 9))
    assert len(guard.take()) == 1


@pytest.mark.parametrize("address", ["::1", "127.0.0.1", "127.0.0.53"])
def test_loopback_is_allowed(address: str) -> None:
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        try:
            s.connect((address, 9))
        except OSError as exc:  # no route to a lab prefix outside a namespace: fine here
            assert not isinstance(exc, guard.NetworkGuardError)
    assert guard.take() == []


def test_child_processes_are_guarded(_guard_children: object) -> None:
    code = (
        "import socket\n"
        "s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)\n"
        "try:\n    s.connect(('3fff::1', 9))\nexcept PermissionError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True
    ).stdout
    assert "network guard: forbidden connection" in out
    # The child's violation went to the shared log: take it back out so this test passes.
    log = os.environ[guard.LOG_ENV]
    with open(log, encoding="utf-8") as fh:
        text = fh.read()
    assert "3fff::1" in text
    with open(log, "w", encoding="utf-8") as fh:
        fh.write(text.replace(text.splitlines()[-1] + "\n", ""))
