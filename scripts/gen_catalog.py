"""Generate configs/catalog.yml, the AWS dual-stack endpoint catalog, from botocore's bundled data.
Offline only; derives regions and hostnames (aws partition, no FIPS); protocol facts are from docs.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "configs" / "catalog.yml"
COMMAND = "python scripts/gen_catalog.py"

PARTITION = "aws"
GLOBAL_REGION = "global"  # catalog name for botocore's `aws-global` partition endpoint
ALL_PROBES = ("dns", "icmp", "tcp", "tls", "http2", "http3")
API_PROBES = ("dns", "icmp", "tcp", "tls", "http2")
# Any HTTP answer to an unauthenticated GET proves the path works end to end.
ANY_ANSWER = (200, 301, 307, 400, 403, 404)

_FIPS_NAME = re.compile(r"(^fips-)|(-fips$)|(-fips-)")
_PLAIN_SCALAR = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ./_()-]*(?<! )$")

Plane = Literal["data", "control"]


class CatalogError(Exception):
    """botocore's data cannot be turned into a catalog (missing service, no regions, ...)."""


@dataclass(frozen=True)
class EndpointSpec:
    """One catalog endpoint: where botocore describes it and what the docs say about it."""

    kind: str
    botocore_service: str  # key under partitions[aws].services in endpoints.json
    ruleset_service: str  # botocore/data/<name>/<api>/endpoint-rule-set-1.json
    expected: str  # documented hostname template, `{region}` substituted
    plane: Plane
    source: str
    notes: str
    port: int = 443
    probes: tuple[str, ...] = API_PROBES
    alpn: tuple[str, ...] = ("http/1.1",)
    http3: bool = False
    expect_status: tuple[int, ...] = ANY_ANSWER


@dataclass(frozen=True)
class ServiceSpec:
    name: str
    title: str
    comments: tuple[str, ...]
    endpoints: tuple[EndpointSpec, ...]


_API_ALPN_NOTE = (
    "alpn lists only HTTP/1.1, the protocol AWS documents for its SDK APIs; h2 and h3 are not "
    "documented for this API endpoint."
)

SERVICES: tuple[ServiceSpec, ...] = (
    ServiceSpec(
        name="s3",
        title="Amazon S3",
        comments=(),
        endpoints=(
            EndpointSpec(
                kind="s3",
                botocore_service="s3",
                ruleset_service="s3",
                expected="s3.dualstack.{region}.amazonaws.com",
                plane="data",
                source="https://docs.aws.amazon.com/AmazonS3/latest/userguide/dual-stack-endpoints.html",
                notes=(
                    "Regional S3 dual-stack endpoint (path-style base; buckets are "
                    "<bucket>.s3.dualstack.<region>.amazonaws.com). S3 negotiates only HTTP/1.1: "
                    "no h2, no h3, so the http2 probe is expected to fall back to HTTP/1.1."
                ),
            ),
        ),
    ),
    ServiceSpec(
        name="route53",
        title="Amazon Route 53",
        comments=(
            "Only the Route 53 API is listed here. Route 53 name servers",
            "(ns-N.awsdns-NN.{com,net,org,co.uk}) are per hosted zone and discovered at run",
            "time, so they are deliberately NOT in this file.",
        ),
        endpoints=(
            EndpointSpec(
                kind="api",
                botocore_service="route53",
                ruleset_service="route53",
                expected="route53.global.api.aws",
                plane="control",
                source="https://docs.aws.amazon.com/general/latest/gr/r53.html",
                notes=(
                    "Route 53 API, a global endpoint. Name servers are per hosted zone and "
                    "discovered at run time, not listed here. " + _API_ALPN_NOTE
                ),
            ),
        ),
    ),
    ServiceSpec(
        name="iot",
        title="AWS IoT Core",
        comments=(),
        endpoints=(
            EndpointSpec(
                kind="api",
                botocore_service="iot",
                ruleset_service="iot",
                expected="iot.{region}.api.aws",
                plane="control",
                source="https://docs.aws.amazon.com/general/latest/gr/iot-core.html",
                notes="AWS IoT control-plane API. " + _API_ALPN_NOTE,
            ),
            EndpointSpec(
                kind="data-ats",
                botocore_service="data-ats.iot",
                ruleset_service="iot-data",
                expected="data-ats.iot.{region}.api.aws",
                plane="data",
                source="https://docs.aws.amazon.com/iot/latest/developerguide/protocols.html",
                notes=(
                    "AWS IoT device data plane (ATS certificates); answers on 443 and 8443 "
                    "(HTTPS with X.509 client certificates on 8443). MQTT: TLS with ALPN "
                    "x-amzn-mqtt-ca on 443, or 8883, both with client certificates; not probed "
                    "here. Only port 443 is probed, without client certificates. " + _API_ALPN_NOTE
                ),
            ),
        ),
    ),
    ServiceSpec(
        name="cloudfront",
        title="Amazon CloudFront",
        comments=(
            "This is the CloudFront API (control plane), NOT an edge. Edges offer h2 and h3;",
            "to probe one, add a distribution you own (dxxxx.cloudfront.net) as a user target.",
        ),
        endpoints=(
            EndpointSpec(
                kind="api",
                botocore_service="cloudfront",
                ruleset_service="cloudfront",
                expected="cloudfront.global.api.aws",
                plane="control",
                source="https://docs.aws.amazon.com/general/latest/gr/cf_region.html",
                notes=(
                    "CloudFront API, a global endpoint, not an edge: http3 stays false. Edges "
                    "(documented to offer h2 and h3) need a user distribution "
                    "dxxxx.cloudfront.net, added as a user target with all six probes. "
                    + _API_ALPN_NOTE
                ),
            ),
        ),
    ),
    ServiceSpec(
        name="alb",
        title="Elastic Load Balancing (ALB)",
        comments=(
            "Only the Elastic Load Balancing API is listed. Load balancers themselves",
            "(dualstack.<lb>.<region>.elb.amazonaws.com) are user targets.",
        ),
        endpoints=(
            EndpointSpec(
                kind="api",
                botocore_service="elasticloadbalancing",
                ruleset_service="elbv2",
                expected="elasticloadbalancing.{region}.api.aws",
                plane="control",
                source="https://docs.aws.amazon.com/general/latest/gr/elb.html",
                notes=(
                    "Elastic Load Balancing API (elbv2). User load balancers are "
                    "dualstack.<lb>.<region>.elb.amazonaws.com and are added as user targets. "
                    + _API_ALPN_NOTE
                ),
            ),
        ),
    ),
)


@dataclass(frozen=True)
class Derived:
    """What botocore says about one catalog endpoint."""

    hosts: dict[str, str]  # catalog region -> hostname, sorted
    comments: tuple[str, ...]  # provenance, written as YAML comments above `hosts`
    warnings: tuple[str, ...]


class Botocore:
    """The parts of botocore's bundled data the catalog needs; no network access."""

    def __init__(self) -> None:
        import botocore  # type: ignore[import-untyped]
        from botocore.endpoint_provider import EndpointProvider  # type: ignore[import-untyped]
        from botocore.loaders import Loader  # type: ignore[import-untyped]
        from botocore.regions import EndpointResolver  # type: ignore[import-untyped]

        self.version: str = botocore.__version__
        self._loader = Loader()
        self._endpoints: dict[str, Any] = self._loader.load_data("endpoints")
        self._partitions: dict[str, Any] = self._loader.load_data("partitions")
        self._legacy = EndpointResolver(self._endpoints)
        self._provider_cls = EndpointProvider
        self._providers: dict[str, tuple[Any, frozenset[str]]] = {}
        partition = next(
            (p for p in self._endpoints["partitions"] if p["partition"] == PARTITION), None
        )
        if partition is None:
            raise CatalogError(f"partition {PARTITION!r} missing from botocore endpoints.json")
        self.partition: dict[str, Any] = partition

    def ruleset_hostname(self, service: str, region: str) -> str:
        """Hostname botocore's endpoint rule set yields with use_dualstack_endpoint=True."""
        if service not in self._providers:
            ruleset = self._loader.load_service_model(service, "endpoint-rule-set-1")
            self._providers[service] = (
                self._provider_cls(ruleset, self._partitions),
                frozenset(ruleset.get("parameters", {})),
            )
        provider, known = self._providers[service]
        params: dict[str, Any] = {"Region": region, "UseDualStack": True, "UseFIPS": False}
        if "UseGlobalEndpoint" in known:
            params["UseGlobalEndpoint"] = False
        url = str(provider.resolve_endpoint(**params).url)
        parts = urlsplit(url)
        if parts.scheme != "https" or not parts.hostname or parts.path not in ("", "/"):
            raise CatalogError(f"{service} rule set gave an unexpected URL for {region}: {url}")
        return parts.hostname

    def legacy_hostname(self, service: str, region: str) -> str | None:
        """Dual-stack hostname from endpoints.json's variants (botocore's pre-rule-set resolver)."""
        resolved = self._legacy.construct_endpoint(
            service, region, partition_name=PARTITION, use_dualstack_endpoint=True
        )
        return None if resolved is None else str(resolved["hostname"])


def _dualstack_variant(data: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The non-FIPS dual-stack variant declared in `data`, if any."""
    for variant in data.get("variants", []):
        if sorted(variant.get("tags", [])) == ["dualstack"]:
            return variant  # type: ignore[no-any-return]
    return None


def derive(bc: Botocore, spec: EndpointSpec) -> Derived:
    """Regions and hostnames of one endpoint, per botocore, cross-checked against the docs."""
    services: dict[str, Any] = bc.partition["services"]
    service = services.get(spec.botocore_service)
    if service is None:
        raise CatalogError(f"botocore has no {spec.botocore_service!r} in the aws partition")
    regions: dict[str, Any] = bc.partition["regions"]
    endpoints: dict[str, Any] = service.get("endpoints", {})
    svc_default = _dualstack_variant(service.get("defaults", {}))
    part_default = _dualstack_variant(bc.partition.get("defaults", {}))
    warnings: list[str] = []
    comments: list[str] = []
    name = f"{spec.botocore_service}/{spec.kind}"

    # botocore name of each region -> catalog name of that region.
    targets: dict[str, str] = {}
    if not service.get("isRegionalized", True):
        partition_endpoint = service.get("partitionEndpoint")
        if partition_endpoint is None:
            raise CatalogError(f"{name}: global service without a partitionEndpoint")
        targets[partition_endpoint] = GLOBAL_REGION
    else:
        for region, data in endpoints.items():
            if region not in regions or _FIPS_NAME.search(region) or data.get("deprecated"):
                continue  # pseudo-regions (fips-*, *-fips, aws-global, s3-external-1, ...)
            targets[region] = region

    explicit: list[str] = []
    from_service: list[str] = []
    from_partition: list[str] = []
    hosts: dict[str, str] = {}
    legacy_hosts: dict[str, str | None] = {}
    doc_mismatch: list[str] = []
    for region, catalog_region in sorted(targets.items(), key=lambda item: item[1]):
        if _dualstack_variant(endpoints.get(region, {})) is not None:
            explicit.append(catalog_region)
        elif svc_default is not None:
            from_service.append(catalog_region)
        elif part_default is not None:
            from_partition.append(catalog_region)
        else:
            continue  # botocore knows no dual-stack name for this region
        host = bc.ruleset_hostname(spec.ruleset_service, region)
        legacy_hosts[catalog_region] = bc.legacy_hostname(spec.botocore_service, region)
        documented = spec.expected.format(region=catalog_region)
        if documented != host:
            doc_mismatch.append(f"{catalog_region}: botocore {host}, documented {documented}")
        hosts[catalog_region] = host
    if not hosts:
        raise CatalogError(f"{name}: botocore lists no dual-stack region")

    if GLOBAL_REGION in hosts:
        comments.append(
            f"botocore endpoints.json: {spec.botocore_service!r} is global (partition endpoint "
            f"{next(iter(targets))}) and has no dual-stack variant of its own."
        )
    else:
        counts = [f"{len(hosts)} regions"]
        if explicit:
            counts.append(f"{len(explicit)} with an explicit dual-stack variant")
        if from_service:
            counts.append(
                f"{len(from_service)} inheriting the service default ({', '.join(from_service)})"
            )
        if from_partition:
            counts.append(f"{len(from_partition)} inheriting only the aws partition default")
        comments.append(
            f"botocore endpoints.json, {spec.botocore_service!r}: " + ", ".join(counts) + "."
        )
    comments.append(
        f"Hostnames from botocore's {spec.ruleset_service!r} endpoint rule set, UseDualStack=true."
    )
    if from_partition and GLOBAL_REGION not in hosts:
        comments.append(
            "The partition default {service}.{region}.api.aws is applied to every service, so it "
            "is no evidence of dual-stack support in a region; the probes are."
        )
    legacy_mismatch = [
        f"{region}: {legacy} (rule set: {hosts[region]})"
        for region, legacy in legacy_hosts.items()
        if legacy != hosts[region]
    ]
    if legacy_mismatch:
        warnings.append(
            f"{name}: endpoints.json variants disagree with the endpoint rule set, "
            f"using the rule set: {'; '.join(legacy_mismatch)}"
        )
        comments.append(
            f"endpoints.json's inherited template gives {legacy_mismatch[0]}; the rule set, "
            "which botocore resolves with, wins."
        )
    if doc_mismatch:
        warnings.append(
            f"{name}: botocore disagrees with the documented hostname, using botocore's: "
            + "; ".join(doc_mismatch)
        )
        comments.append(f"botocore disagrees with documented {spec.expected}; botocore's is used.")
    return Derived(hosts=hosts, comments=tuple(comments), warnings=tuple(warnings))


def build(bc: Botocore) -> tuple[dict[str, Any], dict[tuple[str, str], Derived], list[str]]:
    """The catalog as plain data, the per-endpoint derivations and the warnings."""
    services: dict[str, Any] = {}
    derived: dict[tuple[str, str], Derived] = {}
    warnings: list[str] = []
    for svc in sorted(SERVICES, key=lambda s: s.name):
        entries: list[dict[str, Any]] = []
        kinds = [e.kind for e in svc.endpoints]
        if len(set(kinds)) != len(kinds):
            raise CatalogError(f"{svc.name}: duplicate endpoint kinds {kinds}")
        for spec in sorted(svc.endpoints, key=lambda e: e.kind):
            if spec.http3 != ("http3" in spec.probes):
                raise CatalogError(f"{svc.name}/{spec.kind}: http3 and probes disagree")
            result = derive(bc, spec)
            derived[(svc.name, spec.kind)] = result
            warnings.extend(result.warnings)
            entries.append(
                {
                    "kind": spec.kind,
                    "plane": spec.plane,
                    "port": spec.port,
                    "probes": list(spec.probes),
                    "alpn": list(spec.alpn),
                    "http3": spec.http3,
                    "expect_status": list(spec.expect_status),
                    "source": spec.source,
                    "notes": spec.notes,
                    "hosts": result.hosts,
                }
            )
        services[svc.name] = {"title": svc.title, "endpoints": entries}
    return {"botocore_version": bc.version, "services": services}, derived, warnings


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if _PLAIN_SCALAR.match(text) and text.lower() not in {"true", "false", "yes", "no", "null"}:
        return text
    return json.dumps(text)  # a JSON string is a valid YAML double-quoted scalar


def _flow(values: Sequence[object]) -> str:
    return "[" + ", ".join(_scalar(v) for v in values) + "]"


def _quoted(key: str, text: str, indent: str) -> list[str]:
    """`key: "text"` folded over several lines at spaces (YAML folds each break to a space)."""
    wrapped = textwrap.wrap(
        json.dumps(text),
        width=96 - len(indent),
        break_long_words=False,
        break_on_hyphens=False,
        initial_indent=f"{key}: ",
        subsequent_indent="  ",
    )
    return [indent + line for line in wrapped]


def _comments(lines: Sequence[str], indent: str, wrap: bool = False) -> list[str]:
    out: list[str] = []
    for line in lines:
        parts = textwrap.wrap(line, width=98 - len(indent), break_on_hyphens=False) if wrap else []
        out.extend(f"{indent}# {part}".rstrip() for part in parts or [line])
    return out


def render(catalog: Mapping[str, Any], derived: Mapping[tuple[str, str], Derived]) -> str:
    """Deterministic YAML text for the catalog (header comments included)."""
    version = catalog["botocore_version"]
    out = _comments(
        [
            "GENERATED FILE - DO NOT EDIT BY HAND.",
            f"Generated by `{COMMAND}` from the endpoint data bundled with",
            f"botocore {version} (botocore/data/endpoints.json and the endpoint rule sets).",
            f"Regenerate after changing the botocore pin; `{COMMAND} --check` verifies it.",
            "",
            "From botocore: the regions and hostnames under `hosts` (partition aws, commercial",
            "only; FIPS variants and pseudo-regions excluded; aws-global is written `global`).",
            "From AWS documentation (each `source`), kept in scripts/gen_catalog.py and not",
            "checkable offline: plane, port, probes, alpn, http3, expect_status, notes.",
        ],
        "",
    )
    out.append(f"botocore_version: {json.dumps(version)}")
    out.append("services:")
    spec_by_name = {s.name: s for s in SERVICES}
    for name, service in catalog["services"].items():
        out.append(f"  {name}:")
        out.extend(_comments(spec_by_name[name].comments, "    "))
        out.append(f"    title: {_scalar(service['title'])}")
        out.append("    endpoints:")
        for entry in service["endpoints"]:
            ind = "        "
            out.append(f"      - kind: {_scalar(entry['kind'])}")
            out.append(f"{ind}plane: {entry['plane']}")
            out.append(f"{ind}port: {entry['port']}")
            out.append(f"{ind}probes: {_flow(entry['probes'])}")
            out.append(f"{ind}alpn: {_flow(entry['alpn'])}")
            out.append(f"{ind}http3: {_scalar(entry['http3'])}")
            out.append(f"{ind}expect_status: {_flow(entry['expect_status'])}")
            out.append(f"{ind}source: {json.dumps(entry['source'])}")
            out.extend(_quoted("notes", entry["notes"], ind))
            out.extend(_comments(derived[(name, entry["kind"])].comments, ind, wrap=True))
            out.append(f"{ind}hosts:")
            for region, host in entry["hosts"].items():
                out.append(f"{ind}  {_scalar(region)}: {_scalar(host)}")
    text = "\n".join(out) + "\n"
    if yaml.safe_load(text) != catalog:  # the hand-rolled YAML must mean exactly the data
        raise CatalogError("rendered YAML does not round-trip to the catalog data")
    return text


def generate(warn: bool = True) -> str:
    """The full text of configs/catalog.yml for the installed botocore."""
    catalog, derived, warnings = build(Botocore())
    if warn:
        for message in warnings:
            print(f"gen_catalog: warning: {message}", file=sys.stderr)
    return render(catalog, derived)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="file to write (or to --check)"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if the file differs from what would be generated",
    )
    args = parser.parse_args(argv)
    output: Path = args.output
    try:
        text = generate()
    except (CatalogError, ImportError) as exc:
        print(f"gen_catalog: error: {exc}", file=sys.stderr)
        return 2
    if args.check:
        try:
            current = output.read_text(encoding="utf-8")
        except FileNotFoundError:
            current = None
        if current != text:
            state = "missing" if current is None else "out of date"
            fix = COMMAND if output == DEFAULT_OUTPUT else f"{COMMAND} --output {output}"
            print(f"gen_catalog: {output} is {state}; run `{fix}`", file=sys.stderr)
            return 1
        return 0
    output.parent.mkdir(parents=True, exist_ok=True)
    with output.open("w", encoding="utf-8", newline="\n") as fh:
        fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
