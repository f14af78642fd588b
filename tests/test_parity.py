"""Parity verdicts from pairs of results: the rules, one case each (pure: no peers needed)."""

from __future__ import annotations

from typing import Any

import pytest

from monitor.parity import Thresholds, Verdict, judge
from probes.base import ErrorKind, Family, ProbeError, ProbeKind, ProbeResult

TH = Thresholds(slower_ratio=1.5, slower_margin=0.05)
CERT = {"issuer": "CN=CA", "sans": ["a.example"], "fingerprint_sha256": "aa", "not_after": "x"}


def res(
    family: Family,
    *,
    ok: bool = True,
    probe: ProbeKind = "tls",
    seconds: float = 0.1,
    kind: ErrorKind | None = None,
    address: str | None = "addr",
    **details: Any,
) -> ProbeResult:
    err = None
    if not ok:
        err = ProbeError(kind=kind or ErrorKind.TIMEOUT, message="m")
    return ProbeResult(
        target="t",
        probe=probe,
        family=family,
        address=address,
        success=ok,
        duration_seconds=seconds,
        started=0.0,
        error=err,
        details=details,
    )


def tls(family: Family, cert: dict[str, Any] | None = None, **over: Any) -> ProbeResult:
    details = {"version": "TLSv1.3", "alpn": "h2", "verified": True, **over}
    return res(family, certificate={**CERT, **(cert or {})}, **details)


def test_ok() -> None:
    assert judge(tls("ipv4"), tls("ipv6"), thresholds=TH).verdict is Verdict.OK


def test_rotated_leaf_is_a_difference_not_a_mismatch() -> None:
    p = judge(tls("ipv4"), tls("ipv6", cert={"fingerprint_sha256": "bb"}), thresholds=TH)
    assert p.verdict is Verdict.OK
    assert [(d.field, d.significant) for d in p.differences] == [
        ("certificate.fingerprint_sha256", False)
    ]


@pytest.mark.parametrize(
    ("over", "field"),
    [
        ({"cert": {"issuer": "CN=Other"}}, "certificate.issuer"),
        ({"cert": {"sans": ["a.example", "b.example"]}}, "certificate.sans"),
        ({"version": "TLSv1.2"}, "tls_version"),
        ({"alpn": "http/1.1"}, "alpn"),
    ],
)
def test_mismatch(over: dict[str, Any], field: str) -> None:
    p = judge(tls("ipv4"), tls("ipv6", **over), thresholds=TH)
    assert p.verdict is Verdict.MISMATCH
    assert field in [d.field for d in p.differences if d.significant]


def test_http_status_class_mismatch_but_same_class_is_fine() -> None:
    a = res("ipv4", probe="http2", status=200, http_version="2")
    assert (
        judge(a, res("ipv6", probe="http2", status=503, http_version="2"), thresholds=TH).verdict
        is Verdict.MISMATCH
    )
    assert (
        judge(a, res("ipv6", probe="http2", status=204, http_version="2"), thresholds=TH).verdict
        is Verdict.OK
    )


@pytest.mark.parametrize(
    ("v4ok", "v6ok", "verdict"),
    [
        (True, False, Verdict.IPV6_FAILED),
        (False, True, Verdict.IPV4_FAILED),
        (False, False, Verdict.BOTH_FAILED),
    ],
)
def test_failures(v4ok: bool, v6ok: bool, verdict: Verdict) -> None:
    assert judge(res("ipv4", ok=v4ok), res("ipv6", ok=v6ok), thresholds=TH).verdict is verdict


@pytest.mark.parametrize("kind", [ErrorKind.DNS_NO_ADDRESS, ErrorKind.DNS_NAT64_SYNTHESIZED])
@pytest.mark.parametrize("probe", ["dns", "tcp", "http3"])
def test_missing_aaaa_for_every_probe(kind: ErrorKind, probe: ProbeKind) -> None:
    v6 = res("ipv6", ok=False, kind=kind, probe=probe, address=None)
    p = judge(res("ipv4", probe=probe), v6, thresholds=TH)
    assert p.verdict is Verdict.IPV6_MISSING


def test_no_address_at_all_is_both_failed() -> None:
    v4 = res("ipv4", ok=False, kind=ErrorKind.DNS_NXDOMAIN, address=None, probe="tcp")
    v6 = res("ipv6", ok=False, kind=ErrorKind.DNS_NO_ADDRESS, address=None, probe="tcp")
    assert judge(v4, v6, thresholds=TH).verdict is Verdict.BOTH_FAILED


def test_slower_needs_ratio_and_margin() -> None:
    fast = res("ipv4", probe="tcp", seconds=0.010)
    assert judge(fast, res("ipv6", probe="tcp", seconds=0.030), thresholds=TH).verdict is (
        Verdict.OK  # 3x but only 20 ms: under the margin
    )
    p = judge(fast, res("ipv6", probe="tcp", seconds=0.200), thresholds=TH)
    assert p.verdict is Verdict.IPV6_SLOWER and p.latency_ratio == pytest.approx(20)
    slow = res("ipv4", probe="tcp", seconds=1.0)
    assert judge(slow, res("ipv6", probe="tcp", seconds=1.3), thresholds=TH).verdict is (
        Verdict.OK  # 300 ms more but only 1.3x
    )


def test_vantage_without_ipv6_is_not_blamed_on_the_target() -> None:
    p = judge(
        res("ipv4", probe="tcp"),
        res("ipv6", probe="tcp", ok=False, kind=ErrorKind.NETWORK_UNREACHABLE),
        thresholds=TH,
        vantage_ipv6=False,
    )
    assert p.verdict is Verdict.SKIPPED
    # ...but a missing AAAA is still known without IPv6 transport.
    v6 = res("ipv6", ok=False, kind=ErrorKind.DNS_NO_ADDRESS, probe="dns", address=None)
    assert (
        judge(res("ipv4", probe="dns"), v6, thresholds=TH, vantage_ipv6=False).verdict
        is Verdict.IPV6_MISSING
    )


def test_skipped_family() -> None:
    v6 = ProbeResult(
        target="t",
        probe="tcp",
        family="ipv6",
        address=None,
        success=False,
        duration_seconds=0,
        started=0,
        skipped="ipv6 not selected",
    )
    p = judge(res("ipv4", probe="tcp"), v6, thresholds=TH)
    assert p.verdict is Verdict.SKIPPED and p.reason == "ipv6 not selected"
