"""A routed path in network namespaces: vantage - vantage router - transit router - AWS edge
router - endpoint, each router forwarding (hop limits decremented, time exceeded sent, as Linux
does), the edge router and the endpoint inside the lab's "AWS" ranges (a ranges file written
for the test), and faults that drop IPv6 at one router.

Faults: `vantage` and `transit` drop every IPv6 packet from the vantage at that router (it
answers nothing); `aws_edge` stops forwarding IPv6 at the edge router, which still answers time
exceeded (as an edge that filters does). `silent_hop`: the transit router sends no time
exceeded over either family (a router that never answers), the path works.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from lab.netns import Netns, ip, namespace, nft, veth

Fault = Literal["none", "vantage", "transit", "aws_edge", "silent_hop"]
FAULTS: tuple[Fault, ...] = ("none", "vantage", "transit", "aws_edge", "silent_hop")

VANTAGE = ("198.51.100.2", "2001:db8:1::2")
VANTAGE_ROUTER = ("198.51.100.1", "2001:db8:1::1")
TRANSIT_ROUTER = ("198.51.100.18", "2001:db8:2::2")
AWS_EDGE_ROUTER = ("203.0.113.2", "2001:db8:aa:3::2")
ENDPOINT = ("203.0.113.18", "2001:db8:aa:4::10")
AWS_PREFIXES = ("203.0.113.0/24", "2001:db8:aa::/48")
"""The lab's AWS: the edge router's and the endpoint's links."""


@dataclass(frozen=True, slots=True)
class Path4:
    vantage: Netns
    routers: tuple[Netns, Netns, Netns]
    endpoint: Netns
    ranges: Path
    """An ip-ranges.json holding AWS_PREFIXES (region lab-1, service EC2)."""


def sysctl(ns: Netns, *settings: str) -> None:
    subprocess.run(
        [*ns.exec_prefix(), "sysctl", "-qw", *settings], check=True, capture_output=True, timeout=30
    )


def write_ranges(path: Path) -> Path:
    v4, v6 = AWS_PREFIXES
    doc = {
        "syncToken": "1767225600",
        "createDate": "2026-01-01-00-00-00",
        "prefixes": [
            {"ip_prefix": v4, "region": "lab-1", "service": s, "network_border_group": "lab-1"}
            for s in ("AMAZON", "EC2")
        ],
        "ipv6_prefixes": [
            {"ipv6_prefix": v6, "region": "lab-1", "service": s, "network_border_group": "lab-1"}
            for s in ("AMAZON", "EC2")
        ],
    }
    path.write_text(json.dumps(doc))
    return path


_FROM_VANTAGE = "ip6 saddr 2001:db8:1::/64"


def fault_rules(fault: Fault) -> tuple[int, str] | None:
    """(which router, 0 to 2, its nftables ruleset) for a fault; None for `none`."""
    if fault in ("vantage", "transit"):
        return (0 if fault == "vantage" else 1), (
            "table inet fault {\n  chain pre {\n    type filter hook prerouting priority -300;\n"
            f"    {_FROM_VANTAGE} icmpv6 type {{ nd-neighbor-solicit, nd-neighbor-advert }}"
            " accept\n"
            f"    {_FROM_VANTAGE} drop\n  }}\n}}\n"
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


@contextlib.contextmanager
def routed_path(folder: Path, fault: Fault = "none") -> Iterator[Path4]:
    """The five namespaces, routed, with `fault` switched on; all removed on exit."""
    with (
        namespace("ds-van") as van,
        namespace("ds-r1") as r1,
        namespace("ds-r2") as r2,
        namespace("ds-r3") as r3,
        namespace("ds-end") as end,
    ):
        for ns in (van, r1, r2, r3, end):
            # No duplicate address detection, link-local addresses included: a router whose
            # link-local address is still tentative solicits its neighbours from `::`, and
            # the first second of IPv6 forwarding is lost.
            sysctl(ns, "net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0")
        links = (
            (van, VANTAGE, r1, VANTAGE_ROUTER, 28, 64),
            (r1, ("198.51.100.17", "2001:db8:2::1"), r2, TRANSIT_ROUTER, 28, 64),
            (r2, ("203.0.113.1", "2001:db8:aa:3::1"), r3, AWS_EDGE_ROUTER, 28, 64),
            (r3, ("203.0.113.17", "2001:db8:aa:4::1"), end, ENDPOINT, 28, 64),
        )
        for a, a_addr, b, b_addr, bits4, bits6 in links:
            veth(
                a,
                [f"{a_addr[0]}/{bits4}", f"{a_addr[1]}/{bits6}"],
                b,
                [f"{b_addr[0]}/{bits4}", f"{b_addr[1]}/{bits6}"],
            )
        for ns in (r1, r2, r3):
            sysctl(ns, "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1")
        for ns in (r1, r2, r3, end):
            # Linux sends ICMP errors in a burst of 6, then 1 a second per destination: tests
            # that trace many times a second on one path would see hops fall silent.
            sysctl(ns, "net.ipv4.icmp_ratelimit=0", "net.ipv6.icmp.ratelimit=0")
        routes: list[tuple[Netns, str, str, str, str]] = [
            # (namespace, IPv4 destination, via, IPv6 destination, via)
            (van, "default", VANTAGE_ROUTER[0], "default", VANTAGE_ROUTER[1]),
            (r1, "default", TRANSIT_ROUTER[0], "default", TRANSIT_ROUTER[1]),
            (r2, "198.51.100.0/28", "198.51.100.17", "2001:db8:1::/64", "2001:db8:2::1"),
            (r2, "203.0.113.16/28", AWS_EDGE_ROUTER[0], "2001:db8:aa:4::/64", AWS_EDGE_ROUTER[1]),
            (r3, "default", "203.0.113.1", "default", "2001:db8:aa:3::1"),
            (end, "default", "203.0.113.17", "default", "2001:db8:aa:4::1"),
        ]
        for ns, d4, via4, d6, via6 in routes:
            ip("route", "add", d4, "via", via4, netns=ns.name)
            ip("-6", "route", "add", d6, "via", via6, netns=ns.name)
        path = Path4(van, (r1, r2, r3), end, write_ranges(folder / "ranges.json"))
        set_fault(path, fault)
        yield path


def set_fault(path: Path4, fault: Fault) -> None:
    """Switch the path's fault to `fault` (the others off)."""
    for router in path.routers:
        subprocess.run(
            [*router.exec_prefix(), "nft", "delete", "table", "inet", "fault"],
            capture_output=True,
            timeout=30,
            check=False,  # none there
        )
    rules = fault_rules(fault)
    if rules is not None:
        nft(path.routers[rules[0]], rules[1])
