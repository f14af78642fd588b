"""Network namespaces for lab hosts with real addresses from the documentation prefixes.

Each namespace has only loopback and the veth links the test creates, so nothing in it can
reach this machine's network; everything is removed on exit. Needs root (CI runs as root).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ipaddress
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def ip(*args: str, netns: str | None = None) -> None:
    cmd = ["ip", *(("-n", netns) if netns else ()), *args]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30)


def require_root() -> None:
    if os.geteuid() != 0:
        raise RuntimeError("network namespace tests need root (ip netns, veth); CI runs as root")


@dataclass(frozen=True, slots=True)
class Netns:
    name: str

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]


@contextlib.contextmanager
def namespace(prefix: str = "ds") -> Iterator[Netns]:
    require_root()
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True, timeout=30)
    try:
        ip("link", "set", "lo", "up", netns=name)
        yield Netns(name)
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True, timeout=30)


def nft(ns: Netns, ruleset: str) -> None:
    """Load an nftables ruleset into `ns`."""
    subprocess.run(
        [*ns.exec_prefix(), "nft", "-f", "-"],
        input=ruleset,
        text=True,
        check=True,
        capture_output=True,
        timeout=30,
    )


def veth(a: Netns, a_addrs: list[str], b: Netns, b_addrs: list[str]) -> tuple[str, str]:
    """A veth pair between two namespaces with the given addresses (CIDR), both ends up and
    ready (`wait_ready`); the names of its ends in `a` and in `b`."""
    tag = uuid.uuid4().hex[:6]
    ea, eb = f"va{tag}", f"vb{tag}"
    ip("link", "add", ea, "netns", a.name, "type", "veth", "peer", "name", eb, "netns", b.name)
    for ns, dev, addrs in ((a, ea, a_addrs), (b, eb, b_addrs)):
        for addr in addrs:
            ip("addr", "add", addr, "dev", dev, *(("nodad",) if ":" in addr else ()), netns=ns.name)
        ip("link", "set", dev, "up", netns=ns.name)
    wait_ready(a, ea, a_addrs)
    wait_ready(b, eb, b_addrs)
    return ea, eb


def solicited_node(address: str) -> str:
    """The multicast group a host must have joined to answer neighbour solicitations for
    `address` (RFC 4291 2.7.1: ff02::1:ff and the address's low 24 bits)."""
    low = int(ipaddress.IPv6Address(address)) & 0xFFFFFF
    return str(ipaddress.IPv6Address((0xFF02 << 112) | (1 << 32) | (0xFF << 24) | low))


def wait_ready(ns: Netns, dev: str, addrs: list[str], timeout: float = 10.0) -> None:
    """Wait until `dev` is operationally up and has joined the solicited-node group of each
    of its IPv6 `addrs`. Both happen after `ip link set up` returns, in kernel work that waits
    for the RTNL lock (linkwatch, addrconf), which parallel tests creating and deleting
    namespaces hold for long stretches: until the group is joined the host ignores neighbour
    solicitations for the address, so every first IPv6 packet to it is lost for a second (a
    connect timing out at 1 s); IPv4's ARP is broadcast and does not wait."""
    groups = {solicited_node(a.split("/")[0]) for a in addrs if ":" in a}
    deadline = time.monotonic() + timeout
    while True:
        link = _ip_out("-o", "link", "show", "dev", dev, netns=ns.name)
        joined = set(_ip_out("-6", "maddr", "show", "dev", dev, netns=ns.name).split())
        if "state UP" in link and groups <= joined:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{ns.name} {dev} not ready after {timeout:g} s: {link.strip()!r}, "
                f"groups not joined: {sorted(groups - joined)}"
            )
        time.sleep(0.02)


def _ip_out(*args: str, netns: str) -> str:
    cmd = ["ip", "-n", netns, *args]
    return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=30).stdout


CLONE_NEWNET = 0x40000000


def _enter(ns: Netns) -> None:
    """Move the calling thread (only it: network namespaces are per thread) into `ns`."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{ns.name}", os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns into {ns.name}: {os.strerror(err)}")
    finally:
        os.close(fd)


@contextlib.contextmanager
def inside(ns: Netns) -> Iterator[concurrent.futures.Executor]:
    """A one-thread executor living in `ns`: what it runs connects to that namespace's
    loopback, and every process it starts (subprocess forks the calling thread) is born
    there. `ex.submit(fn).result(timeout)` runs fn there and hands back its result or error."""
    with concurrent.futures.ThreadPoolExecutor(
        max_workers=1, thread_name_prefix=f"netns-{ns.name}", initializer=_enter, initargs=(ns,)
    ) as ex:
        yield ex


@contextlib.contextmanager
def python_in(ns: Netns, script: str, *args: str) -> Iterator[subprocess.Popen[str]]:
    """Run `python -c script args...` inside `ns` (the project importable), wait until it
    prints "ready", and kill it on exit."""
    proc = subprocess.Popen(
        [*ns.exec_prefix(), sys.executable, "-c", script, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=project_env(),
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        assert line == "ready", proc.stderr.read() if proc.stderr else line
        yield proc
    finally:
        proc.kill()
        proc.communicate()


def probe_cli(
    ns: Netns | None, *args: str, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`probe ARGS...` of this checkout inside `ns` (None: here), its output captured (never
    raises for its exit status)."""
    prefix = ns.exec_prefix() if ns is not None else []
    return subprocess.run(
        [*prefix, sys.executable, "-m", "monitor.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=project_env(),
        check=False,
    )


def project_env() -> dict[str, str]:
    """The environment for a child that must import the project from this checkout."""
    root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")])
    return env
