"""The vantage self-check: can this host reach IPv6 at all?

First without sending a packet: a UDP connect() to each target's IPv6 address asks the kernel
for a route and a source address (global, ULA and documentation sources count; loopback only for
loopback targets; link-local never). Then from the results: a route that leads nowhere (an
IPv4-only VPN that blackholes IPv6, a broken home router) shows as every target failing over
IPv6 while IPv4 works. One vantage cannot tell a global outage of AWS's IPv6 from its own;
several can (DualstackIPv6DownMultiVantage), so one vantage blames itself.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from probes import kinds
from probes.base import ProbeResult
from probes.netutil import route_source
from probes.text import peer_text

VantageReason = Literal["no_route", "ipv6_broken"]
MIN_JUDGED_TARGETS = 3
"""Targets with native AAAA needed before their failing together is blamed on the vantage."""


@dataclass(frozen=True, slots=True, kw_only=True)
class VantageCheck:
    ipv6: bool | None
    """True: a usable route to at least one target's IPv6 address; None: no address to test."""
    routes: dict[str, str | None] = field(default_factory=dict)
    """Target IPv6 address -> the source address the kernel would use (None: no route)."""
    reason: VantageReason | None = None
    """Why `ipv6` is False: no route, or IPv6 broken beyond this host (None when fine)."""

    @property
    def skips_ipv6(self) -> bool:
        """No route: IPv6 probes are not even sent. (Broken IPv6 keeps probing, to clear.)"""
        return self.ipv6 is False and self.reason == "no_route"

    def broken(self) -> VantageCheck:
        return VantageCheck(ipv6=False, routes=self.routes, reason="ipv6_broken")

    def to_json(self) -> dict[str, object]:
        return {"ipv6": self.ipv6, "routes": dict(self.routes), "reason": self.reason}


def ipv6_broken(results: Iterable[ProbeResult]) -> bool:
    """At least MIN_JUDGED_TARGETS targets have native AAAA that were dialled, and every one of
    them fails every IPv6 transport probe while IPv4 works for it (one IPv4 success or more)."""
    v6_seen: set[str] = set()
    v6_ok: set[str] = set()
    v4_ok: set[str] = set()
    for r in results:
        if r.skipped or not kinds.get(r.probe).transport:
            continue
        if r.family == "ipv6":
            if not r.addresses:  # nothing dialled: no native AAAA, or not probed
                continue
            v6_seen.add(r.target)
            if r.success:
                v6_ok.add(r.target)
        elif r.success:
            v4_ok.add(r.target)
    return len(v6_seen) >= MIN_JUDGED_TARGETS and not v6_ok and v6_seen <= v4_ok


def nothing_works(results: Iterable[ProbeResult]) -> bool:
    """Every probe that ran failed, over every family, and there were at
    least MIN_JUDGED_TARGETS targets: nothing works from here (a resolver answering NXDOMAIN
    for all, a closed DNS port), so the failures say nothing about the targets. One success
    anywhere, over either family, and it is False; so it is with fewer targets (one name
    that does not exist says nothing about the vantage)."""
    ran = [r for r in results if not r.skipped]
    if any(r.success for r in ran):
        return False
    return len({r.target for r in ran}) >= MIN_JUDGED_TARGETS


def cannot_probe(results: Sequence[ProbeResult], resolvers: Sequence[str]) -> str:
    """The one line naming the most common error (kind and phase) and the resolver in use."""
    whys = Counter(r.error.why() for r in results if not r.skipped and r.error is not None)
    ran = sum(1 for r in results if not r.skipped)
    families = sorted({r.family for r in results if not r.skipped})
    over = "both families" if len(families) > 1 else "".join(families) or "both families"
    common = ""
    if whys:
        why, n = whys.most_common(1)[0]
        common = f" (most common: {why}, {n} of {ran})"
    used = ", ".join(resolvers) or "the system's (none configured)"
    return peer_text(
        f"every target failed over {over}{common} — this vantage cannot probe; resolver {used}"
    )


def usable(target: str, source: str | None) -> bool:
    if source is None:
        return False
    src = ipaddress.IPv6Address(source)
    dst = ipaddress.IPv6Address(target)
    if src.is_link_local or src.is_unspecified:
        return False
    if src.is_loopback:
        return dst.is_loopback
    return True


def check_vantage(addresses: Iterable[str], source: str | None = None) -> VantageCheck:
    routes = {a: route_source(a, source) for a in dict.fromkeys(addresses)}
    if not routes:
        return VantageCheck(ipv6=None)
    ok = any(usable(a, s) for a, s in routes.items())
    return VantageCheck(ipv6=ok, routes=routes, reason=None if ok else "no_route")
