"""`probe lab up --routed`: a routed path in network namespaces, to see where IPv6 breaks on
your own machine. vantage - vantage router - transit router - AWS edge router - endpoint, each
router forwarding as Linux does (hop limits decremented, ICMP time exceeded sent), the edge
router and the endpoint inside the lab's "AWS" ranges (a ranges file written beside the
config), and faults that drop IPv6 at one router (`probe lab fault`). Needs root (ip netns,
veth, nftables); the namespaces hold only the documentation prefixes and reach nothing else.

Faults: `vantage` and `transit` drop every IPv6 packet from the vantage at that router (it
answers nothing); `aws_edge` stops forwarding IPv6 at the edge router, which still answers
time exceeded (as an edge that filters does); `silent_hop`: the transit router sends no time
exceeded over either family (a router that never answers), the path works; `none`.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import yaml

Fault = Literal["none", "vantage", "transit", "aws_edge", "silent_hop"]
FAULTS: tuple[Fault, ...] = get_args(Fault)
ROLES = ("vantage", "r1", "r2", "r3", "endpoint")
"""The namespaces, in path order: r1 the vantage router, r2 transit, r3 the AWS edge."""

VANTAGE = ("198.51.100.2", "2001:db8:1::2")
VANTAGE_ROUTER = ("198.51.100.1", "2001:db8:1::1")
TRANSIT_ROUTER = ("198.51.100.18", "2001:db8:2::2")
AWS_EDGE_ROUTER = ("203.0.113.2", "2001:db8:aa:3::2")
ENDPOINT = ("203.0.113.18", "2001:db8:aa:4::10")
AWS_PREFIXES = ("203.0.113.0/24", "2001:db8:aa::/48")
"""The lab's AWS: the edge router's and the endpoint's links."""
# (left, its addresses, right, its addresses) of each link, IPv4 /28 and IPv6 /64
LINKS: tuple[tuple[int, tuple[str, str], int, tuple[str, str]], ...] = (
    (0, VANTAGE, 1, VANTAGE_ROUTER),
    (1, ("198.51.100.17", "2001:db8:2::1"), 2, TRANSIT_ROUTER),
    (2, ("203.0.113.1", "2001:db8:aa:3::1"), 3, AWS_EDGE_ROUTER),
    (3, ("203.0.113.17", "2001:db8:aa:4::1"), 4, ENDPOINT),
)
# (namespace, IPv4 destination, via, IPv6 destination, via)
ROUTES: tuple[tuple[int, str, str, str, str], ...] = (
    (0, "default", VANTAGE_ROUTER[0], "default", VANTAGE_ROUTER[1]),
    (1, "default", TRANSIT_ROUTER[0], "default", TRANSIT_ROUTER[1]),
    (2, "198.51.100.0/28", "198.51.100.17", "2001:db8:1::/64", "2001:db8:2::1"),
    (2, "203.0.113.16/28", AWS_EDGE_ROUTER[0], "2001:db8:aa:4::/64", AWS_EDGE_ROUTER[1]),
    (3, "default", "203.0.113.1", "default", "2001:db8:aa:3::1"),
    (4, "default", "203.0.113.17", "default", "2001:db8:aa:4::1"),
)
_FROM_VANTAGE = "ip6 saddr 2001:db8:1::/64"


def _run(*cmd: str, stdin: str | None = None, check: bool = True) -> str:
    done = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=30, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {done.stderr.strip() or done.returncode}")
    return done.stdout


def _in(ns: str, *cmd: str, stdin: str | None = None, check: bool = True) -> str:
    return _run("ip", "netns", "exec", ns, *cmd, stdin=stdin, check=check)


def write_ranges(path: Path) -> Path:
    """An ip-ranges.json holding AWS_PREFIXES (region lab-1, service EC2)."""
    v4, v6 = AWS_PREFIXES

    def rows(key: str, prefix: str) -> list[dict[str, str]]:
        return [
            {key: prefix, "region": "lab-1", "service": s, "network_border_group": "lab-1"}
            for s in ("AMAZON", "EC2")
        ]

    doc = {
        "syncToken": "1767225600",
        "createDate": "2026-01-01-00-00-00",
        "prefixes": rows("ip_prefix", v4),
        "ipv6_prefixes": rows("ipv6_prefix", v6),
    }
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def fault_rules(fault: Fault) -> tuple[int, str] | None:
    """(which router, 0 to 2, its nftables ruleset) for a fault; None for `none`."""
    if fault in ("vantage", "transit"):
        nd = "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept"
        return (0 if fault == "vantage" else 1), (
            "table inet fault {\n  chain pre {\n    type filter hook prerouting priority -300;\n"
            f"    {_FROM_VANTAGE} {nd}\n    {_FROM_VANTAGE} drop\n  }}\n}}\n"
        )
    if fault == "aws_edge":
        return 2, (
            "table inet fault {\n  chain forward {\n    type filter hook forward priority 0;\n"
            f"    {_FROM_VANTAGE} drop\n  }}\n}}\n"
        )
    if fault == "silent_hop":
        return 1, (
            "table inet fault {\n  chain out {\n    type filter hook output priority 0;\n"
            "    icmp type time-exceeded drop\n    icmpv6 type time-exceeded drop\n  }\n}\n"
        )
    return None


@dataclass(frozen=True, slots=True)
class Routed:
    """The namespaces of one routed path, in path order (ROLES)."""

    names: tuple[str, ...]

    @property
    def vantage(self) -> str:
        return self.names[0]

    @property
    def routers(self) -> tuple[str, str, str]:
        return self.names[1], self.names[2], self.names[3]

    @property
    def endpoint(self) -> str:
        return self.names[4]


def _solicited_node(address: str) -> str:
    """The multicast group that must be joined before `address` answers neighbour
    solicitations (RFC 4291 2.7.1)."""
    low = int(ipaddress.IPv6Address(address)) & 0xFFFFFF
    return str(ipaddress.IPv6Address((0xFF02 << 112) | (1 << 32) | (0xFF << 24) | low))


def _wait_ready(ns: str, dev: str, address: str, timeout: float = 10.0) -> None:
    """Until `dev` is up and answers neighbour solicitations for its IPv6 `address` (both
    happen after `ip link set up` returns, in kernel work that may wait a while)."""
    group = _solicited_node(address)
    deadline = time.monotonic() + timeout
    while True:
        link = _run("ip", "-n", ns, "-o", "link", "show", "dev", dev)
        joined = _run("ip", "-n", ns, "-6", "maddr", "show", "dev", dev).split()
        if "state UP" in link and group in joined:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{ns} {dev} not ready after {timeout:g} s")
        time.sleep(0.02)


def build(prefix: str, fault: Fault = "none") -> Routed:
    """Create the path's namespaces (`{prefix}-vantage`, `-r1`, ...), linked and routed, with
    `fault` on. On an error, what was made is removed and the error raised."""
    routed = Routed(tuple(f"{prefix}-{role}" for role in ROLES))
    made: list[str] = []
    try:
        for ns in routed.names:
            _run("ip", "netns", "add", ns)
            made.append(ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
            # No duplicate address detection, link-local addresses included: a router whose
            # link-local address is still tentative solicits its neighbours from `::`, and
            # the first second of IPv6 forwarding is lost.
            _in(ns, "sysctl", "-qw", "net.ipv6.conf.all.accept_dad=0")
            _in(ns, "sysctl", "-qw", "net.ipv6.conf.default.accept_dad=0")
            # Linux sends ICMP errors in a burst of 6, then 1 a second per destination: a lab
            # traced many times a second would see hops fall silent.
            _in(ns, "sysctl", "-qw", "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0")
        for ns in routed.routers:
            _in(ns, "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        tag = secrets.token_hex(3)  # link names unique on the host, whatever else runs
        for n, (left, left_addr, right, right_addr) in enumerate(LINKS):
            a, b = routed.names[left], routed.names[right]
            ends = ((a, f"v{tag}{n}a", left_addr), (b, f"v{tag}{n}b", right_addr))
            peer = ("peer", "name", ends[1][1], "netns", b)
            _run("ip", "link", "add", ends[0][1], "netns", a, "type", "veth", *peer)
            _link(ends)
        for index, d4, via4, d6, via6 in ROUTES:
            ns = routed.names[index]
            _run("ip", "-n", ns, "route", "add", d4, "via", via4)
            _run("ip", "-n", ns, "-6", "route", "add", d6, "via", via6)
        set_fault(routed, fault)
    except BaseException:
        remove(Routed(tuple(made)))
        raise
    return routed


def _link(ends: Sequence[tuple[str, str, tuple[str, str]]]) -> None:
    """Address both ends of a veth pair and wait until they are up."""
    for ns, dev, (v4, v6) in ends:
        _run("ip", "-n", ns, "addr", "add", f"{v4}/28", "dev", dev)
        _run("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        _run("ip", "-n", ns, "link", "set", dev, "up")
    for ns, dev, (_, v6) in ends:
        _wait_ready(ns, dev, v6)


def set_fault(routed: Routed, fault: Fault) -> None:
    """Switch the path's fault to `fault` (the others off)."""
    for router in routed.routers:
        _in(router, "nft", "delete", "table", "inet", "fault", check=False)  # none there
    rules = fault_rules(fault)
    if rules is not None:
        _in(routed.routers[rules[0]], "nft", "-f", "-", stdin=rules[1])


def remove(routed: Routed) -> None:
    """Delete the namespaces (their links go with them)."""
    for ns in routed.names:
        _run("ip", "netns", "del", ns, check=False)


STATE = "routed.json"
"""In the lab's folder: the namespaces of the running path, for `probe lab fault`."""


def lab_config(ranges: Path) -> dict[str, object]:
    """A config for tracing the routed path from its vantage namespace."""
    return {
        "vantage": "routed-lab",
        "ip_ranges": {"file": str(ranges)},
        "trace": {"hop_timeout": "500ms", "max_hops": 8},
    }


def up(workdir: Path) -> int:
    """Build the path, write its ranges and config into `workdir`, say how to use it, and keep
    it until SIGINT or SIGTERM; then remove it."""
    if os.geteuid() != 0:
        print("probe lab up --routed: needs root (ip netns, veth, nftables)", file=sys.stderr)
        return 2
    workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ranges = write_ranges(workdir / "ranges.json")
    config = workdir / "routed.yml"
    config.write_text(yaml.safe_dump(lab_config(ranges), sort_keys=False), encoding="utf-8")
    try:
        routed = build(f"dslab{secrets.token_hex(3)}")
    except (RuntimeError, OSError) as exc:  # no `ip` or `nft`, a kernel without veth...
        print(f"probe lab up --routed: {exc}", file=sys.stderr)
        return 1
    stopping: list[int] = []
    previous = {
        sig: signal.signal(sig, lambda n, _frame: stopping.append(n))
        for sig in (signal.SIGINT, signal.SIGTERM)
    }
    try:
        (workdir / STATE).write_text(json.dumps({"names": list(routed.names)}), encoding="utf-8")
        trace = (
            f"ip netns exec {routed.vantage} probe trace endpoint --config {config} "
            f"--address {ENDPOINT[0]} --address {ENDPOINT[1]}"
        )
        print(
            "routed lab: vantage - vantage router - transit router - AWS edge router - "
            f"endpoint, in namespaces {', '.join(routed.names)}\n"
            f"the lab's AWS ranges: {', '.join(AWS_PREFIXES)} ({ranges})\n"
            f"trace from the vantage:  {trace} [--method udp|icmp|tcp]\n"
            f"drop IPv6 at a router:   probe lab fault --dir {workdir} "
            f"{'|'.join(f for f in FAULTS if f != 'none')}|none\n"
            f"\nlab ready: config written to {config}\nCtrl-C stops the lab.",
            flush=True,
        )
        while not stopping:
            signal.pause()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        remove(routed)
        with contextlib.suppress(OSError):
            (workdir / STATE).unlink()
    print("lab stopped", flush=True)
    return 0


def fault(workdir: Path, name: Fault) -> int:
    """`probe lab fault`: switch the running routed lab's fault."""
    try:
        names = json.loads((workdir / STATE).read_text(encoding="utf-8"))["names"]
    except (OSError, ValueError, KeyError):
        print(
            f"probe lab fault: no routed lab running with --dir {workdir} "
            "(start one with probe lab up --routed)",
            file=sys.stderr,
        )
        return 2
    try:
        set_fault(Routed(tuple(names)), name)
    except (RuntimeError, OSError) as exc:
        print(f"probe lab fault: {exc}", file=sys.stderr)
        return 1
    print(f"fault {name} on" if name != "none" else "no fault", flush=True)
    return 0
