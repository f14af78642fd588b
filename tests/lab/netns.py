"""Network namespaces for lab hosts with real addresses from the documentation prefixes.

Each namespace has only loopback and the veth links the test creates, so nothing in it can
reach this machine's network; everything is removed on exit. Needs root (CI runs as root).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass


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


def veth(a: Netns, a_addrs: list[str], b: Netns, b_addrs: list[str]) -> None:
    """A veth pair between two namespaces with the given addresses (CIDR), both ends up."""
    tag = uuid.uuid4().hex[:6]
    ea, eb = f"va{tag}", f"vb{tag}"
    ip("link", "add", ea, "netns", a.name, "type", "veth", "peer", "name", eb, "netns", b.name)
    for ns, dev, addrs in ((a, ea, a_addrs), (b, eb, b_addrs)):
        for addr in addrs:
            ip("addr", "add", addr, "dev", dev, *(("nodad",) if ":" in addr else ()), netns=ns.name)
        ip("link", "set", dev, "up", netns=ns.name)
