"""Parity verdicts from pairs of results: the rules, one case each (pure: no peers needed)."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import pytest

from monitor.engine.parity import Parity, Thresholds, Verdict
from monitor.engine.parity import judge as judge_pair
from probes import kinds
from probes.base import (
    ErrorKind,
    Expectation,
    Family,
    ProbeError,
    ProbeKind,
    ProbeResult,
    Target,
)
from probes.details import (
    Certificate,
    Details,
    DnsAnswer,
    HttpExchange,
    TlsHandshake,
)
from probes.ipranges import Attribution

TH = Thresholds(slower_ratio=1.5, slower_margin=0.05)
CERT = Certificate(
    subject="CN=a.example",
    issuer="CN=Amazon RSA 2048 M02,O=Amazon,C=US",
    issuer_organization="Amazon",
    intermediates=("CN=M02",),
    trust_anchor="CN=Amazon Root CA 1,O=Amazon,C=US",
    sans=("a.example",),
    not_after="x",
    not_after_timestamp=0.0,
    fingerprint_sha256="aa",
    serial="1",
)
TARGET = Target(name="t", service="s3", region="us-east-1", host="a.example")


def judge(v4: ProbeResult | None, v6: ProbeResult | None, **kw: Any) -> Parity:
    some = v4 or v6
    assert some is not None
    return judge_pair(TARGET, some.probe, v4, v6, **kw)


def res(
    family: Family,
    *,
    ok: bool = True,
    probe: ProbeKind = "tls",
    seconds: float = 0.1,
    kind: ErrorKind | None = None,
    address: str | None = "addr",
    details: Details | None = None,
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
    details = TlsHandshake(
        verified=True,
        tls_version="TLSv1.3",
        alpn="h2",
        certificate=dataclasses.replace(CERT, **(cert or {})),
    )
    return res(family, details=dataclasses.replace(details, **over))


def http2(family: Family, status: int) -> ProbeResult:
    details = HttpExchange(
        http_version="2",
        status=status,
        tls_version="TLSv1.3",
        alpn="h2",
        alt_svc=None,
        server=None,
        body_bytes=0,
    )
    return res(family, probe="http2", details=details)


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
        ({"cert": {"trust_anchor": "CN=Other Root"}}, "certificate.trust_anchor"),
        ({"cert": {"issuer_organization": "Other CA Inc"}}, "certificate.issuer_organization"),
        ({"cert": {"sans": ("a.example", "b.example")}}, "certificate.sans"),
        ({"tls_version": "TLSv1.2"}, "tls_version"),
        ({"verified": False}, "certificate.verified"),
        ({"alpn": "http/1.1"}, "alpn"),
    ],
)
def test_mismatch(over: dict[str, Any], field: str) -> None:
    p = judge(tls("ipv4"), tls("ipv6", **over), thresholds=TH)
    assert p.verdict is Verdict.MISMATCH
    assert field in [d.field for d in p.differences if d.significant]


def test_http_status_class_mismatch_but_same_class_is_fine() -> None:
    a = http2("ipv4", 200)
    assert judge(a, http2("ipv6", 503), thresholds=TH).verdict is Verdict.MISMATCH
    assert judge(a, http2("ipv6", 204), thresholds=TH).verdict is Verdict.OK


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


def test_dns_lookup_latency_is_not_compared() -> None:
    """A and AAAA lookups of a host target are two questions, not two transports."""
    a = DnsAnswer(rcode="NOERROR", records=("192.0.2.1",))
    b = DnsAnswer(rcode="NOERROR", records=("2001:db8::1",))
    p = judge(
        res("ipv4", probe="dns", seconds=0.01, details=a),
        res("ipv6", probe="dns", seconds=0.5, details=b),
        thresholds=TH,
    )
    assert p.verdict is Verdict.OK and p.differences == ()


def test_name_server_failure_without_ipv6_route_is_skipped() -> None:
    """A name-server target's dns probe is a transport: no IPv6 route is the vantage's fault,
    even when the failure left no details to tell the two kinds of dns probe apart."""
    ns = dataclasses.replace(TARGET, zone="example.com")
    v6 = res("ipv6", probe="dns", ok=False, kind=ErrorKind.NETWORK_UNREACHABLE)
    p = judge_pair(ns, "dns", res("ipv4", probe="dns"), v6, thresholds=TH, vantage_ipv6=False)
    assert p.verdict is Verdict.SKIPPED


def _leaf_fields(cls: type[Any], prefix: str = "") -> set[str]:
    out: set[str] = set()
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        nested: list[Any] = [
            a for a in typing.get_args(hints[f.name]) if dataclasses.is_dataclass(a)
        ]
        if dataclasses.is_dataclass(hints[f.name]):
            nested = [hints[f.name]]
        if nested:
            out |= _leaf_fields(nested[0], f"{prefix}{f.name}.")
        else:
            out.add(prefix + f.name)
    return out


@pytest.mark.parametrize("cls", kinds.details_types(), ids=lambda c: c.__name__)
def test_every_details_field_has_a_row_in_the_table(cls: type[Any]) -> None:
    """A field added to a probe's details without a row (compared, normal or not compared)
    fails here: nothing is silently left out of the comparison."""
    covered = {f for row in kinds.of_details(cls) for f in row.fields()}
    assert _leaf_fields(cls) - covered == set(), "fields without a row in the kind's `compared`"
    assert covered - _leaf_fields(cls) == set(), "rows naming fields that do not exist"


def test_the_table_check_can_fail() -> None:
    @dataclasses.dataclass(frozen=True)
    class Grown(TlsHandshake):
        session_ticket: str = ""

    covered = {f for row in kinds.of_details(TlsHandshake) for f in row.fields()}
    assert _leaf_fields(Grown) - covered == {"session_ticket"}


def test_every_details_type_is_details_with_its_comparison_declared_once() -> None:
    declared = [cls for k in kinds.kinds() for cls in k.compared]
    assert len(declared) == len(set(declared)), "a details type compared by two kinds"
    assert set(kinds.details_types()) == set(declared)
    assert all(issubclass(cls, Details) for cls in declared)


def _tcp(family: Family, aws: Attribution | None) -> ProbeResult:
    return dataclasses.replace(res(family, probe="tcp"), aws=aws)


def _attr(region: str, *services: str) -> Attribution:
    return Attribution(prefix="p", region=region, network_border_group=region, services=services)


def test_address_service_outside_the_expected_key_is_normal() -> None:
    s3 = dataclasses.replace(TARGET, ip_ranges_service=(("ipv4", "S3"), ("ipv6", "S3")))
    p = judge_pair(
        s3,
        "tcp",
        _tcp("ipv4", _attr("us-east-1", "AMAZON", "S3")),
        _tcp("ipv6", _attr("us-east-1", "AMAZON")),
        thresholds=TH,
    )
    assert p.verdict is Verdict.OK
    assert [(d.field, d.ipv4, d.ipv6, d.significant) for d in p.differences] == [
        ("address.service", ["AMAZON", "S3"], ["AMAZON"], False)
    ]


def test_dns_lookups_are_not_judged_by_address() -> None:
    p = judge(
        dataclasses.replace(res("ipv4", probe="dns"), aws=_attr("us-east-1", "AMAZON")),
        res("ipv6", probe="dns"),
        thresholds=TH,
    )
    assert p.verdict is Verdict.OK and p.differences == ()


def test_unexpected_when_both_families_differ_from_the_catalog() -> None:
    s3 = dataclasses.replace(
        TARGET,
        expectations=(
            Expectation(field="http_version", value="1.1", basis="observed_not_documented"),
        ),
    )
    p = judge_pair(s3, "http2", http2("ipv4", 200), http2("ipv6", 200), thresholds=TH)
    assert p.verdict is Verdict.OK
    assert [u.to_json() for u in p.unexpected] == [
        {
            "field": "http_version",
            "documented": "1.1",
            "basis": "observed_not_documented",
            "ipv4": "2",
            "ipv6": "2",
        }
    ]
    # one family as documented: not "unexpected" (that difference is parity's business)
    one = dataclasses.replace(
        http2("ipv4", 200),
        details=dataclasses.replace(
            typing.cast(HttpExchange, http2("ipv4", 200).details), http_version="1.1"
        ),
    )
    assert judge_pair(s3, "http2", one, http2("ipv6", 200), thresholds=TH).unexpected == ()


def test_catalog_expectations_are_read_from_documented_or_observed_values() -> None:
    from monitor.catalog import expectations, user_target_defaults

    read = expectations(
        {
            "http_version": {"value": "1.1", "basis": "observed_not_documented"},
            "alpn": {"value": ["http/1.1"], "basis": "observed_not_documented"},
            "http3": {"value": False, "basis": "not_documented"},
            "unauthenticated_status": {"value": [], "basis": "aws_doc"},
        }
    )
    assert [(e.field, e.value) for e in read] == [("http_version", "1.1"), ("alpn", ("http/1.1",))]
    services, expected = user_target_defaults("cloudfront")
    assert services == (("ipv4", "CLOUDFRONT"), ("ipv6", "CLOUDFRONT"))
    assert ("http3", True) in [(e.field, e.value) for e in expected]
    assert user_target_defaults("alb")[0] == ()  # AMAZON only: nothing more specific to ask


def test_another_intermediate_under_the_same_root_is_normal() -> None:
    """ACM rotates intermediates under one root: a fleet mid-rotation is not a mismatch."""
    other = {"issuer": "CN=Amazon RSA 2048 M03,O=Amazon,C=US", "intermediates": ("CN=M03",)}
    p = judge(tls("ipv4"), tls("ipv6", cert=other), thresholds=TH)
    assert p.verdict is Verdict.OK
    assert [(d.field, d.significant) for d in p.differences] == [
        ("certificate.intermediate", False)
    ]
