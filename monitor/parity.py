"""Judge each (target, probe): is the IPv6 result as good as the IPv4 one from this vantage?

Pure functions over ProbeResults: no I/O, no clock. The verdicts are a closed set; each entry
lists its differences, marking which ones make a `mismatch` and which are normal (a rotated leaf).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from probes.base import ErrorKind, ProbeKind, ProbeResult


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
_MISSING_KINDS = frozenset({ErrorKind.DNS_NO_ADDRESS, ErrorKind.DNS_NAT64_SYNTHESIZED})


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

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "probe": self.probe,
            "verdict": str(self.verdict),
            "reason": self.reason,
            "latency_ratio": self.latency_ratio,
            "differences": [d.to_json() for d in self.differences],
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class Thresholds:
    slower_ratio: float = 1.5
    slower_margin: float = 0.05


def _cert(r: ProbeResult, key: str) -> Any:
    cert = r.details.get("certificate") or {}
    return cert.get(key)


def _status_class(r: ProbeResult) -> str | None:
    status = r.details.get("status")
    return f"{status // 100}xx" if isinstance(status, int) else None


Getter = Callable[[ProbeResult], Any]
# (field, getter, significant): what each probe's endpoint presents, compared across families.
_FIELDS: Mapping[ProbeKind, tuple[tuple[str, Getter, bool], ...]] = {
    "dns": (
        ("cname_chain", lambda r: r.details.get("cname_chain"), False),
        ("authoritative", lambda r: r.details.get("authoritative"), True),
        ("serial", lambda r: r.details.get("serial"), False),
    ),
    "icmp": (),
    "tcp": (),
    "tls": (
        ("tls_version", lambda r: r.details.get("version"), True),
        ("alpn", lambda r: r.details.get("alpn"), True),
        ("certificate.issuer", lambda r: _cert(r, "issuer"), True),
        ("certificate.sans", lambda r: _cert(r, "sans"), True),
        ("certificate.verified", lambda r: r.details.get("verified"), True),
        ("certificate.fingerprint_sha256", lambda r: _cert(r, "fingerprint_sha256"), False),
        ("certificate.not_after", lambda r: _cert(r, "not_after"), False),
        ("cipher", lambda r: r.details.get("cipher"), False),
    ),
    "http2": (
        ("http_version", lambda r: r.details.get("http_version"), True),
        ("status_class", _status_class, True),
        ("tls_version", lambda r: r.details.get("tls_version"), True),
        ("status", lambda r: r.details.get("status"), False),
        ("alt_svc", lambda r: r.details.get("alt_svc"), False),
        ("server", lambda r: r.details.get("server"), False),
    ),
    "http3": (
        ("status_class", _status_class, True),
        ("alpn", lambda r: r.details.get("alpn"), True),
        ("status", lambda r: r.details.get("status"), False),
        ("server", lambda r: r.details.get("server"), False),
    ),
}


def differences(kind: ProbeKind, v4: ProbeResult, v6: ProbeResult) -> tuple[Difference, ...]:
    out = []
    for name, get, significant in _FIELDS[kind]:
        a, b = get(v4), get(v6)
        if a != b:
            out.append(Difference(field=name, ipv4=a, ipv6=b, significant=significant))
    return tuple(out)


def _is_missing(r: ProbeResult) -> bool:
    return r.error is not None and r.error.kind in _MISSING_KINDS


def _has_address(r: ProbeResult) -> bool:
    return r.address is not None or bool(r.details.get("records"))


def judge(
    v4: ProbeResult | None,
    v6: ProbeResult | None,
    *,
    thresholds: Thresholds,
    vantage_ipv6: bool | None = None,
) -> Parity:
    """The verdict for one (target, probe) from its two family results."""
    some = v4 or v6
    if some is None:
        raise ValueError("judge needs at least one result")
    target, kind = some.target, some.probe

    def verdict(v: Verdict, reason: str = "", **kw: Any) -> Parity:
        return Parity(target=target, probe=kind, verdict=v, reason=reason, **kw)

    if v4 is None or v6 is None or v4.skipped or v6.skipped:
        why = (v6.skipped if v6 else "ipv6 not probed") or (v4.skipped if v4 else "ipv4 not probed")
        return verdict(Verdict.SKIPPED, why or "not probed")
    if _is_missing(v6):
        if not v4.success and not _has_address(v4):
            return verdict(Verdict.BOTH_FAILED, "no address for either family")
        assert v6.error is not None
        return verdict(Verdict.IPV6_MISSING, v6.error.message)
    transport_probe = not (kind == "dns" and v6.details.get("zone") is None)
    if vantage_ipv6 is False and not v6.success and transport_probe:
        return verdict(Verdict.SKIPPED, "this vantage has no IPv6 route: not blamed on the target")
    if v4.success and not v6.success:
        return verdict(Verdict.IPV6_FAILED, v6.error.message if v6.error else "ipv6 failed")
    if v6.success and not v4.success:
        return verdict(Verdict.IPV4_FAILED, v4.error.message if v4.error else "ipv4 failed")
    if not v4.success and not v6.success:
        return verdict(Verdict.BOTH_FAILED, "both families failed")
    diffs = differences(kind, v4, v6)
    ratio = v6.duration_seconds / v4.duration_seconds if v4.duration_seconds > 0 else None
    significant = [d.field for d in diffs if d.significant]
    if significant:
        return verdict(
            Verdict.MISMATCH,
            "differs: " + ", ".join(significant),
            differences=diffs,
            latency_ratio=ratio,
        )
    compare_latency = not (kind == "dns" and v4.details.get("zone") is None)
    if (
        compare_latency
        and ratio is not None
        and ratio > thresholds.slower_ratio
        and v6.duration_seconds - v4.duration_seconds > thresholds.slower_margin
    ):
        return verdict(
            Verdict.IPV6_SLOWER,
            f"ipv6 {v6.duration_seconds * 1000:.1f} ms vs ipv4 {v4.duration_seconds * 1000:.1f} ms",
            differences=diffs,
            latency_ratio=ratio,
        )
    return verdict(Verdict.OK, differences=diffs, latency_ratio=ratio)


__all__ = [
    "REGRESSIONS",
    "VERDICTS",
    "Difference",
    "Parity",
    "Thresholds",
    "Verdict",
    "field",
    "judge",
]
