"""Which ICMP socket a vantage that is not root gets (probes/echo.py), for real: a process in a
network namespace of its own sets `net.ipv4.ping_group_range` there, drops to uid 10001 (the
image's user) with CAP_NET_RAW or with no capability at all, then pings its own loopback over
both families through EchoSocket, as the icmp probe, pmtu and trace do.

- ping sockets allowed: a ping socket (not raw), answered, with no capability;
- ping sockets denied, CAP_NET_RAW (compose's vantages): a raw socket, answered;
- ping sockets denied, no capability: PermissionError, which the icmp probe reports.

The interpreter is not readable by uid 10001 (it lives under /root here), so the child imports
everything and makes its event loop before it drops root.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from lab.netns import namespace, project_env

UID = 10001
ANYONE, NOBODY = "0 2147483647", "1 0"

SCRIPT = r"""
import asyncio, ctypes, json, os, sys
from probes import echo

groups, caps = sys.argv[1], sys.argv[2]
with open("/proc/sys/net/ipv4/ping_group_range", "w") as f:  # this namespace's only
    f.write(groups)
loop = asyncio.new_event_loop()

libc = ctypes.CDLL(None, use_errno=True)
PR_SET_KEEPCAPS, CAP_NET_RAW, VERSION_3 = 8, 13, 0x20080522


class Header(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class Data(ctypes.Structure):
    _fields_ = [(n, ctypes.c_uint32) for n in ("effective", "permitted", "inheritable")]


def check(rc, what):
    if rc != 0:
        raise OSError(ctypes.get_errno(), what)


check(libc.prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0), "prctl")
os.setgroups([])
os.setgid(int(sys.argv[3]))
os.setuid(int(sys.argv[3]))
keep = 1 << CAP_NET_RAW if caps == "net_raw" else 0
data = (Data * 2)(Data(keep, keep, 0), Data(0, 0, 0))
check(libc.capset(ctypes.byref(Header(VERSION_3, 0)), data), "capset")


async def ping(family, address):
    try:
        sock = echo.EchoSocket(family, address, source=None)
    except PermissionError as exc:
        return {"error": type(exc).__name__}
    with sock:
        got = await echo.exchange(
            sock, [56], rounds=1, spacing=0.1, budget=2.0, until_answered=True
        )
    return {"raw": sock.raw, "answered": [e.seconds is not None for e in got.sent]}


out = {"uid": os.getuid()}
for family, address in (("ipv4", "127.0.0.1"), ("ipv6", "::1")):
    out[family] = loop.run_until_complete(ping(family, address))
print(json.dumps(out))
"""


def pinged(groups: str, caps: str) -> dict[str, object]:
    with namespace("echo") as ns:
        done = subprocess.run(
            [*ns.exec_prefix(), sys.executable, "-c", SCRIPT, groups, caps, str(UID)],
            capture_output=True,
            text=True,
            timeout=30,
            env=project_env(),
        )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    assert result.pop("uid") == UID
    return result


@pytest.mark.netns
@pytest.mark.parametrize(
    ("groups", "caps", "expected"),
    [
        (ANYONE, "none", {"raw": False, "answered": [True]}),
        (NOBODY, "net_raw", {"raw": True, "answered": [True]}),
        (NOBODY, "none", {"error": "PermissionError"}),
    ],
    ids=["ping-socket", "cap-net-raw", "neither"],
)
def test_the_socket_a_user_without_root_gets(
    groups: str, caps: str, expected: dict[str, object]
) -> None:
    assert pinged(groups, caps) == {"ipv4": expected, "ipv6": expected}
