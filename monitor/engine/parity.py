"""Judge each (target, probe): is the IPv6 result as good as the IPv4 one from this vantage?

Pure functions over ProbeResults: no I/O, no clock. The verdicts are a closed set; each entry
lists its differences, marking which ones make a `mismatch` and which are normal (a rotated leaf).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any

from probes import kinds
from probes.base import ErrorKind, Expectation, ProbeKind, ProbeResult, Target
from probes.details import DnsAnswer, HttpExchange, QuicExchange, TlsHandshake
from probes.kinds import Role


class Verdict(enum.StrEnum):
    OK = "ok"
    IPV6_FAILED = "ipv6_failed"
    IPV4_FAILED = "ipv4_failed"
    BOTH_FAILED = "both_failed"
    IPV6_MISSING = "ipv6_missing"
    MISMATCH = "mismatch"
    IPV6_SLOWER = "ipv6_slower"
    SKIPPED = "skipped"


VERDICTS: tuple[Verdict, ...] = tuple(Verdict)
# What makes `probe run` exit 1: IPv6 is worse than IPv4 somewhere.
REGRESSIONS = frozenset({Verdict.IPV6_FAILED, Verdict.IPV6_MISSING, Verdict.MISMATCH})
WORST_FIRST: tuple[Verdict, ...] = (
    Verdict.IPV6_FAILED,
    Verdict.IPV6_MISSING,
    Verdict.MISMATCH,
    Verdict.IPV6_SLOWER,
    Verdict.BOTH_FAILED,
    Verdict.IPV4_FAILED,
    Verdict.SKIPPED,
    Verdict.OK,
)
"""Every verdict, worst for IPv6 first: the order of the table and of the dashboards' colours."""
_MISSING_KINDS = frozenset(
    {ErrorKind.DNS_NO_ADDRESS, ErrorKind.DNS_NAT64_SYNTHESIZED, ErrorKind.DNS_NOT_NATIVE_IPV6}
)


@dataclass(frozen=True, slots=True, kw_only=True)
class Difference:
    field: str
    ipv4: Any
    ipv6: Any
    significant: bool
    """True when it makes the verdict `mismatch`; False for normal variation (leaf rotation)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
            "significant": self.significant,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Parity:
    target: str
    probe: ProbeKind
    verdict: Verdict
    differences: tuple[Difference, ...] = ()
    reason: str = ""
    latency_ratio: float | None = None
    """IPv6 latency over IPv4 latency, when both succeeded."""
    unexpected: tuple[Unexpected, ...] = ()
    """Where *both* families differ from what the catalog says the endpoint does."""

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "probe": self.probe,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "latency_ratio": self.latency_ratio,
            "differences": [d.to_json() for d in self.differences],
            "unexpected": [u.to_json() for u in self.unexpected],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Unexpected:
    """Both families differ from the catalog's expectation: shown, never a verdict (the
    verdict compares IPv6 with IPv4, not with the documentation)."""

    field: str
    """The expectation (http_version, alpn, http3, unauthenticated_status)."""
    documented: object
    """What the catalog says (a list: any of these)."""
    basis: str
    """aws_doc, or observed_not_documented."""
    ipv4: object
    ipv6: object

    def to_json(self) -> dict[str, Any]:
        return {
            "field": self.field,
            "documented": _plain(self.documented),
            "basis": self.basis,
            "ipv4": self.ipv4,
            "ipv6": self.ipv6,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    slower_ratio: float = 1.5
    slower_margin: float = 0.05


def differences(v4: ProbeResult, v6: ProbeResult) -> tuple[Difference, ...]:
    """What the two families presented differently, by the table; details of different kinds
    (one family's handshake failed inside http2) are not compared."""
    a, b = v4.details, v6.details
    if a is None or b is None or type(a) is not type(b):
        return ()
    out = []
    for row in kinds.of_details(type(a)):
        if row.role is Role.NOT_COMPARED:
            continue
        x, y = row.get(a), row.get(b)
        if x != y:
            out.append(
                Difference(
                    field=row.field,
                    ipv4=_plain(x),
                    ipv6=_plain(y),
                    significant=row.role is Role.SIGNIFICANT,
                )
            )
    return tuple(out)


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


VANTAGE_REASONS = {
    "no_route": "this vantage has no IPv6 route",
    "ipv6_broken": "this vantage's IPv6 is broken (every IPv6 target fails here, IPv4 works)",
}


def address_differences(
    target: Target, kind: ProbeKind, v4: ProbeResult, v6: ProbeResult
) -> tuple[Difference, ...]:
    """Where each family's address lies in AWS's published ranges. Only an IPv6 address
    outside every prefix while IPv4's is inside counts (a proxy, DNS interception, a wrong
    AAAA); other differences are normal: regions, border groups, the reverse, a service key."""
    if not kinds.get(kind).transport or target.service == "custom":
        return ()
    a, b = v4.aws, v6.aws
    out: list[Difference] = []
    if (a is None) != (b is None):
        out.append(
            Difference(
                field="address.in_aws_ranges",
                ipv4=a is not None,
                ipv6=b is not None,
                significant=a is not None,
            )
        )
    if a is not None and b is not None:
        if a.region != b.region:
            out.append(
                Difference(field="address.region", ipv4=a.region, ipv6=b.region, significant=False)
            )
        if a.network_border_group != b.network_border_group:
            out.append(
                Difference(
                    field="address.network_border_group",
                    ipv4=a.network_border_group,
                    ipv6=b.network_border_group,
                    significant=False,
                )
            )
    outside = [
        (r.aws is not None and want not in r.aws.services)
        for r in (v4, v6)
        if (want := target.expected_service(r.family)) is not None
    ]
    if any(outside):
        out.append(
            Difference(
                field="address.service",
                ipv4=list(a.services) if a else None,
                ipv6=list(b.services) if b else None,
                significant=False,
            )
        )
    return tuple(out)


def _observed(field: str, kind: ProbeKind, r: ProbeResult) -> object:
    """What one family's result says about an expectation field; None when it says nothing."""
    d = r.details
    if field == "http_version" and kind == "http2" and isinstance(d, HttpExchange):
        return d.http_version
    if field == "alpn" and kind == "tls" and isinstance(d, TlsHandshake):
        return d.alpn
    if field == "http3" and kind == "http3":
        return r.success
    if field == "unauthenticated_status" and isinstance(d, HttpExchange | QuicExchange):
        return d.status
    return None


def unexpected(
    target: Target, kind: ProbeKind, v4: ProbeResult, v6: ProbeResult
) -> tuple[Unexpected, ...]:
    """The catalog's expectations that *both* families contradict."""
    out: list[Unexpected] = []
    for exp in target.expectations:
        x, y = _observed(exp.field, kind, v4), _observed(exp.field, kind, v6)
        if x is None or y is None:
            continue

        def meets(value: object, exp: Expectation = exp) -> bool:
            return value in exp.value if isinstance(exp.value, tuple) else value == exp.value

        if not meets(x) and not meets(y):
            out.append(
                Unexpected(field=exp.field, documented=exp.value, basis=exp.basis, ipv4=x, ipv6=y)
            )
    return tuple(out)


def _slower(v4: ProbeResult, v6: ProbeResult, th: Thresholds) -> bool:
    """IPv6 above slower_ratio x IPv4 and above it by slower_margin: for the latencies
    compared (medians of the samples) and, when several samples were taken, their minimums
    too, so one slow sample on a noisy link is not a verdict."""

    def rule(a: float, b: float) -> bool:
        return a > 0 and b / a > th.slower_ratio and b - a > th.slower_margin

    if not rule(v4.duration_seconds, v6.duration_seconds):
        return False
    a, b = v4.duration_min_seconds, v6.duration_min_seconds
    return a is None or b is None or rule(a, b)


def _is_missing(r: ProbeResult) -> bool:
    return r.error is not None and r.error.kind in _MISSING_KINDS


def _has_address(r: ProbeResult) -> bool:
    return r.address is not None or (isinstance(r.details, DnsAnswer) and bool(r.details.records))


def judge(
    target: Target,
    kind: ProbeKind,
    v4: ProbeResult | None,
    v6: ProbeResult | None,
    *,
    thresholds: Thresholds,
    vantage_ipv6: bool | None = None,
    vantage_reason: str | None = None,
) -> Parity:
    """The verdict for one (target, probe) from its two family results."""
    # The dns probe of a host target is the name lookup (A against AAAA), not a transport.
    lookup = kind == "dns" and target.zone is None

    def verdict(v: Verdict, reason: str = "", **kw: Any) -> Parity:
        return Parity(target=target.name, probe=kind, verdict=v, reason=reason, **kw)

    if v4 is None or v6 is None or v4.skipped or v6.skipped:
        why = (v6.skipped if v6 else "ipv6 not probed") or (v4.skipped if v4 else "ipv4 not probed")
        return verdict(Verdict.SKIPPED, why or "not probed")
    if _is_missing(v6):
        if not v4.success and not _has_address(v4):
            return verdict(Verdict.BOTH_FAILED, "no address for either family")
        assert v6.error is not None
        return verdict(Verdict.IPV6_MISSING, v6.error.message)
    if vantage_ipv6 is False and not v6.success and not lookup:
        why = VANTAGE_REASONS.get(vantage_reason or "no_route", VANTAGE_REASONS["no_route"])
        return verdict(Verdict.SKIPPED, f"{why}: not blamed on the target")
    if v4.success and not v6.success:
        return verdict(Verdict.IPV6_FAILED, v6.error.message if v6.error else "ipv6 failed")
    if v6.success and not v4.success:
        return verdict(Verdict.IPV4_FAILED, v4.error.message if v4.error else "ipv4 failed")
    surprises = unexpected(target, kind, v4, v6)
    if not v4.success and not v6.success:
        return verdict(Verdict.BOTH_FAILED, "both families failed", unexpected=surprises)
    diffs = differences(v4, v6) + address_differences(target, kind, v4, v6)
    ratio = v6.duration_seconds / v4.duration_seconds if v4.duration_seconds > 0 else None
    significant = [d.field for d in diffs if d.significant]
    if significant:
        return verdict(
            Verdict.MISMATCH,
            "differs: " + ", ".join(significant),
            differences=diffs,
            latency_ratio=ratio,
            unexpected=surprises,
        )
    if not lookup and _slower(v4, v6, thresholds):
        return verdict(
            Verdict.IPV6_SLOWER,
            f"ipv6 {v6.duration_seconds * 1000:.1f} ms vs ipv4 {v4.duration_seconds * 1000:.1f} ms",
            differences=diffs,
            latency_ratio=ratio,
            unexpected=surprises,
        )
    return verdict(Verdict.OK, differences=diffs, latency_ratio=ratio, unexpected=surprises)


__all__ = [
    "REGRESSIONS",
    "VERDICTS",
    "WORST_FIRST",
    "Difference",
    "Parity",
    "Thresholds",
    "Unexpected",
    "Verdict",
    "judge",
]
