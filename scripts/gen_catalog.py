"""Generate configs/catalog.yml and docs/catalog.md: AWS dual-stack endpoints, each with evidence.
Offline only: reads scripts/catalog_sources.yml, botocore's bundled data and ip-ranges.json.

A host name is listed only where evidence names it: an explicit dual-stack variant in botocore's
endpoints.json, a hard-coded dual-stack URL in a botocore endpoint rule set, or a quoted AWS page.
botocore's partition-wide template `{service}.{region}.api.aws`, which every service inherits
whether or not it serves IPv6, is never evidence. `--check` re-verifies every entry of the file
it checks against that evidence (one line per entry that fails), then that the file is current.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import sys
import textwrap
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCES = REPO_ROOT / "scripts" / "catalog_sources.yml"
DEFAULT_OUTPUT = REPO_ROOT / "configs" / "catalog.yml"
DEFAULT_DOC = REPO_ROOT / "docs" / "catalog.md"
DEFAULT_IP_RANGES = REPO_ROOT / "probes" / "data" / "aws-ip-ranges.json"
COMMAND = "python scripts/gen_catalog.py"

PARTITION = "aws"
GLOBAL_REGION = "global"  # catalog name of botocore's partition endpoint (`aws-global`)
IP_RANGES_GLOBAL = "GLOBAL"  # ip-ranges.json's region for global prefixes
ENDPOINTS_FILE = "botocore/data/endpoints.json"
FAMILIES = ("ipv4", "ipv6")
PROBE_KINDS = ("dns", "icmp", "tcp", "tls", "http2", "http3")
EVIDENCE_KINDS = ("aws_doc", "botocore_variant", "botocore_ruleset_endpoint")
DOC_SCOPES = ("naming", "partition", "listed")
BASES = ("aws_doc", "observed_not_documented", "not_documented")
EXPECT_FIELDS = ("http_version", "alpn", "http3", "unauthenticated_status")
HTTP_VERSIONS = (None, "1.1", "2", "3")

_FIPS_NAME = re.compile(r"(^fips-)|(-fips$)|(-fips-)")
_KEY_SEGMENT = re.compile(r"^(?P<name>[^.\[\]]+)(?:\[(?P<sel>[^\]]+)\])?$")
_SPACE = re.compile(r"\s+")
_TAG = re.compile(r"<[^>]+>")


class CatalogError(Exception):
    """The inputs cannot be read at all (missing file, malformed YAML, botocore absent)."""


# -- Key paths ------------------------------------------------------------------------------------


def _segments(key: str) -> list[tuple[str, str | None]]:
    """`a.b[k=v].c[2]` -> [(a, None), (b, k=v), (c, 2)]. Names hold no dots (regions do not)."""
    out = []
    for part in key.split("."):
        m = _KEY_SEGMENT.match(part)
        if m is None:
            raise KeyError(f"bad key segment {part!r}")
        out.append((m.group("name"), m.group("sel")))
    return out


def _select(value: Any, sel: str) -> Any:
    if sel.isdigit():
        if not isinstance(value, list) or int(sel) >= len(value):
            raise KeyError("no such element")
        return value[int(sel)]
    name, _, want = sel.partition("=")
    if not isinstance(value, list):
        raise KeyError("not a list")
    for item in value:
        got = item.get(name) if isinstance(item, Mapping) else None
        # A list field (variant tags) matches when it holds exactly the `+`-joined values.
        if got == want or (isinstance(got, list) and sorted(got) == sorted(want.split("+"))):
            return item
    raise KeyError("no element matches")


def resolve_key(data: Any, key: str) -> Any:
    """The value at a dotted key path with `[index]` and `[field=value]` selectors."""
    value = data
    walked: list[str] = []
    for name, sel in _segments(key):
        walked.append(name if sel is None else f"{name}[{sel}]")
        if not isinstance(value, Mapping) or name not in value:
            raise KeyError(f"{'.'.join(walked)}: not found")
        value = value[name]
        if sel is not None:
            try:
                value = _select(value, sel)
            except KeyError as exc:
                raise KeyError(f"{'.'.join(walked)}: {exc.args[0]}") from None
    return value


def _squash(text: str) -> str:
    return _SPACE.sub(" ", text).strip()


def _doc_text(text: str) -> str:
    """A botocore documentation string as plain text: tags dropped, entities and spaces folded."""
    text = _squash(html.unescape(_TAG.sub(" ", text)))
    return re.sub(r"\s+([.,;:)])", r"\1", text)  # `<code>x</code>.` must read `x.`


# -- botocore -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RulesetEndpoint:
    file: str
    key: str
    url: str


class Botocore:
    """The parts of botocore's bundled data the catalog needs; no network access."""

    def __init__(self) -> None:
        import botocore  # type: ignore[import-untyped]
        from botocore.endpoint_provider import EndpointProvider  # type: ignore[import-untyped]
        from botocore.loaders import Loader  # type: ignore[import-untyped]

        self.version: str = botocore.__version__
        self.data_dir = Path(botocore.__file__).resolve().parent / "data"
        # Only botocore's own data: a user's ~/.aws/models must not change the catalog.
        self._loader = Loader(
            extra_search_paths=[str(self.data_dir)], include_default_search_paths=False
        )
        self._provider_cls = EndpointProvider
        self._endpoints: dict[str, Any] = self._loader.load_data("endpoints")
        self._partitions: dict[str, Any] = self._loader.load_data("partitions")
        self._providers: dict[str, tuple[Any, frozenset[str]]] = {}
        partition = next(
            (p for p in self._endpoints["partitions"] if p["partition"] == PARTITION), None
        )
        if partition is None:
            raise CatalogError(f"partition {PARTITION!r} missing from botocore endpoints.json")
        self.partition: dict[str, Any] = partition

    # Files, by the path written in the catalog (relative to site-packages).
    def load(self, file: str) -> Any:
        if file == ENDPOINTS_FILE:
            return self._endpoints
        parts = file.split("/")
        if len(parts) != 5 or parts[:2] != ["botocore", "data"]:
            raise KeyError(f"{file}: not a botocore data file")
        service, version, name = parts[2], parts[3], parts[4]
        type_name = name.removesuffix(".gz").removesuffix(".json")
        try:
            return self._loader.load_service_model(service, type_name, version)
        except Exception as exc:  # botocore raises its own DataNotFoundError family
            raise KeyError(f"{file}: {exc}") from None

    def model_file(self, service: str, type_name: str) -> str:
        version = self._loader.determine_latest_version(service, type_name)
        folder = self.data_dir / service / version
        name = next(
            (n for n in (f"{type_name}.json", f"{type_name}.json.gz") if (folder / n).exists()),
            f"{type_name}.json",
        )
        return f"botocore/data/{service}/{version}/{name}"

    # endpoints.json
    def service(self, name: str) -> dict[str, Any] | None:
        return self.partition["services"].get(name)  # type: ignore[no-any-return]

    def regions(self, name: str) -> dict[str, str]:
        """Catalog region -> botocore region of every commercial region botocore lists."""
        service = self.service(name)
        if service is None:
            return {}
        if not service.get("isRegionalized", True):
            endpoint = service.get("partitionEndpoint")
            return {} if endpoint is None else {GLOBAL_REGION: endpoint}
        known = self.partition["regions"]
        return {
            region: region
            for region, data in sorted(service.get("endpoints", {}).items())
            if region in known and not _FIPS_NAME.search(region) and not data.get("deprecated")
        }

    def variant_key(self, name: str, region: str) -> str:
        return (
            f"partitions[partition={PARTITION}].services.{name}.endpoints.{region}"
            ".variants[tags=dualstack].hostname"
        )

    def variant_hostname(self, name: str, region: str) -> str | None:
        """The host name of the explicit (non-FIPS) dual-stack variant of one region, if any."""
        try:
            host = resolve_key(self._endpoints, self.variant_key(name, region))
        except KeyError:
            return None
        return host if isinstance(host, str) else None  # a variant may inherit its name

    # endpoint rule sets
    def ruleset_endpoints(self, service: str) -> list[RulesetEndpoint]:
        """Hard-coded URLs the rule set gives for partition aws, UseDualStack and not UseFIPS."""
        file = self.model_file(service, "endpoint-rule-set-1")
        out = []
        for key, conditions, url in _walk_rules(self.load(file)["rules"], "rules", []):
            if isinstance(url, str) and "{" not in url and _is_aws_dualstack(conditions):
                out.append(RulesetEndpoint(file=file, key=f"{key}.endpoint.url", url=url))
        return out

    def ruleset_hostname(self, service: str, region: str) -> str:
        """The host name botocore resolves with use_dualstack_endpoint=True."""
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
        return parts.hostname or url


def _walk_rules(
    rules: Sequence[Mapping[str, Any]], path: str, conditions: list[Any]
) -> Iterator[tuple[str, list[Any], Any]]:
    for i, rule in enumerate(rules):
        key = f"{path}[{i}]"
        here = [*conditions, *rule.get("conditions", [])]
        if rule.get("type") == "tree":
            yield from _walk_rules(rule["rules"], f"{key}.rules", here)
        elif rule.get("type") == "endpoint":
            yield key, here, rule["endpoint"]["url"]


def _is_aws_dualstack(conditions: Sequence[Any]) -> bool:
    text = [json.dumps(c, sort_keys=True) for c in conditions]
    want = (
        '{"argv": [{"ref": "UseDualStack"}, true], "fn": "booleanEquals"}',
        '{"argv": [{"ref": "UseFIPS"}, false], "fn": "booleanEquals"}',
    )
    partition = any(
        c.get("fn") == "stringEquals"
        and c["argv"][1] == PARTITION
        and c["argv"][0] == {"fn": "getAttr", "argv": [{"ref": "PartitionResult"}, "name"]}
        for c in conditions
        if isinstance(c, Mapping)
    )
    return partition and all(w in text for w in want)


def _rule_conditions(ruleset: Mapping[str, Any], key: str) -> list[Any]:
    """Conditions that hold at the rule a `rules[i].rules[j]...` key path names."""
    conditions: list[Any] = []
    node: Any = ruleset
    for name, sel in _segments(key):
        node = node[name]
        if sel is not None:
            node = node[int(sel)]
            if isinstance(node, Mapping):
                conditions.extend(node.get("conditions", []))
    return conditions


# -- ip-ranges.json -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IpRanges:
    path: Path
    sync_token: str
    create_date: str
    regions: Mapping[tuple[str, str], frozenset[str]]  # (service key, family) -> regions

    @classmethod
    def load(cls, path: Path) -> IpRanges:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            found: dict[tuple[str, str], set[str]] = {}
            for family, listing in (("ipv4", "prefixes"), ("ipv6", "ipv6_prefixes")):
                for prefix in data[listing]:
                    found.setdefault((prefix["service"], family), set()).add(prefix["region"])
            return cls(
                path=path,
                sync_token=str(data["syncToken"]),
                create_date=str(data["createDate"]),
                regions={k: frozenset(v) for k, v in found.items()},
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise CatalogError(f"{path}: not a readable ip-ranges.json: {exc}") from exc

    def has(self, service: str, family: str, region: str) -> bool:
        wanted = IP_RANGES_GLOBAL if region == GLOBAL_REGION else region
        return wanted in self.regions.get((service, family), frozenset())


# -- Checking an entry against its evidence -------------------------------------------------------


def _doc_host(evidence: Mapping[str, Any], region: str) -> str | None:
    pattern = evidence.get("pattern")
    if not isinstance(pattern, str):
        return None
    placeholder = evidence.get("placeholder")
    if placeholder and region != GLOBAL_REGION:
        return pattern.replace(str(placeholder), region)
    return pattern


def _check_quote(bc: Botocore, where: str, item: Mapping[str, Any]) -> Iterator[str]:
    """url + sentence present; the pattern is in the quoted text; botocore_doc agrees."""
    url, sentence = item.get("url"), item.get("sentence")
    if not isinstance(url, str) or not url.startswith("https://"):
        yield f"{where}: no https url"
    if not isinstance(sentence, str) or not sentence.strip():
        yield f"{where}: no sentence"
        return
    pattern = item.get("pattern")
    if pattern is not None:
        quoted = _squash(f"{sentence} {item.get('naming') or ''}")
        if not isinstance(pattern, str) or pattern not in quoted:
            yield f"{where}: pattern {pattern!r} is not in the quoted text"
        placeholder = item.get("placeholder")
        if placeholder is not None and str(placeholder) not in str(pattern):
            yield f"{where}: placeholder {placeholder!r} is not in pattern {pattern!r}"
    ref = item.get("botocore_doc")
    if ref is not None:
        try:
            text = _doc_text(str(resolve_key(bc.load(ref["file"]), ref["key"])))
        except (KeyError, TypeError) as exc:
            yield f"{where}: botocore_doc {exc}"
            return
        if _squash(sentence) not in text:
            yield f"{where}: the sentence is not in {ref['file']} {ref['key']}"


def _check_evidence(
    bc: Botocore, where: str, ep: Mapping[str, Any], i: int, item: Any
) -> tuple[list[str], set[str]]:
    """Problems with one evidence item, and the regions it backs."""
    here = f"{where}: evidence[{i}]"
    if not isinstance(item, Mapping) or item.get("kind") not in EVIDENCE_KINDS:
        kind = item.get("kind") if isinstance(item, Mapping) else item
        return [f"{here}: unknown kind {kind!r} (evidence is {', '.join(EVIDENCE_KINDS)})"], set()
    kind = item["kind"]
    here = f"{here} ({kind})"
    hosts: Mapping[str, str] = ep.get("hosts") or {}
    regions = [str(r) for r in item.get("regions") or []]
    bc_names = ep.get("botocore") or {}
    known = bc.regions(str(bc_names.get("endpoints", "")))
    problems: list[str] = []
    backed: set[str] = set()
    if kind == "aws_doc":
        problems += list(_check_quote(bc, here, item))
        scope = item.get("scope")
        if scope not in DOC_SCOPES:
            problems.append(f"{here}: scope {scope!r} is not one of {', '.join(DOC_SCOPES)}")
        elif scope == "naming" and regions:
            problems.append(f"{here}: a naming-only page backs no region")
        elif scope == "partition":
            stray = sorted(set(regions) - set(known))
            if stray:
                problems.append(f"{here}: botocore lists no such region: {', '.join(stray)}")
        if item.get("pattern") is None:
            problems.append(f"{here}: no pattern: the page must name the host")
        for region, host in hosts.items():  # the page's name must be the listed one, everywhere
            named = _doc_host(item, region)
            if named is not None and named != host:
                problems.append(f"{here}: the page names {named} for {region}, not {host}")
        backed = {r for r in regions if r in hosts} if not problems else set()
    elif kind == "botocore_variant":
        file, key = item.get("file"), str(item.get("key", ""))
        if file != ENDPOINTS_FILE:
            problems.append(f"{here}: file must be {ENDPOINTS_FILE}")
        for region in regions:
            bc_region = known.get(region, region)
            try:
                got = resolve_key(bc.load(ENDPOINTS_FILE), key.replace("{region}", bc_region))
            except KeyError as exc:
                problems.append(f"{here}: {region}: {exc.args[0]}")
                continue
            if region in hosts and got != hosts[region]:
                problems.append(
                    f"{here}: {region}: endpoints.json gives {got}, not {hosts[region]}"
                )
            else:
                backed.add(region)
    else:  # botocore_ruleset_endpoint
        file, key, url = str(item.get("file")), str(item.get("key", "")), item.get("url")
        try:
            ruleset = bc.load(file)
            got = resolve_key(ruleset, key)
            conditions = _rule_conditions(ruleset, key.removesuffix(".endpoint.url"))
        except (KeyError, TypeError, ValueError) as exc:
            return [f"{here}: {exc.args[0] if exc.args else exc}"], set()
        if got != url:
            problems.append(f"{here}: the rule set gives {got}, not {url}")
        if not _is_aws_dualstack(conditions):
            problems.append(f"{here}: the rule is not for partition aws, UseDualStack, not FIPS")
        for region in regions:
            if region in hosts and url != f"https://{hosts[region]}":
                problems.append(f"{here}: {url} is not https://{hosts[region]}")
        backed = {r for r in regions if r in hosts} if not problems else set()
    return problems, backed


def _check_expect(bc: Botocore, where: str, expect: Any, probes: Sequence[str]) -> Iterator[str]:
    if not isinstance(expect, Mapping):
        yield f"{where}: no expect"
        return
    for name in EXPECT_FIELDS:
        fact = expect.get(name)
        here = f"{where}: expect.{name}"
        if not isinstance(fact, Mapping) or "value" not in fact:
            yield f"{here}: missing (value and basis)"
            continue
        basis, value = fact.get("basis"), fact["value"]
        if basis not in BASES:
            yield f"{here}: basis {basis!r} is not one of {', '.join(BASES)}"
        elif basis == "not_documented":
            if not fact.get("note"):
                yield f"{here}: not documented, so a note must say why the value is neutral"
        else:
            yield from _check_quote(bc, f"{here}.source", fact.get("source") or {})
        ok = {
            "http_version": value in HTTP_VERSIONS,
            "alpn": value is None
            or (isinstance(value, list) and all(isinstance(v, str) for v in value)),
            "http3": isinstance(value, bool),
            "unauthenticated_status": isinstance(value, list)
            and all(isinstance(v, int) and 100 <= v < 600 for v in value),
        }[name]
        if not ok:
            yield f"{here}: bad value {value!r}"
    http3 = expect.get("http3")
    if isinstance(http3, Mapping):
        documented = http3.get("value") is True and http3.get("basis") == "aws_doc"
        if ("http3" in probes) != documented:
            yield f"{where}: the http3 probe is run exactly where HTTP/3 is documented"


def check_entry(bc: Botocore, ranges: IpRanges, where: str, ep: Mapping[str, Any]) -> list[str]:
    """Every reason one catalog endpoint is not backed by its evidence (empty: it is)."""
    problems: list[str] = []
    hosts = ep.get("hosts")
    if not isinstance(hosts, Mapping) or not hosts:
        return [f"{where}: no hosts"]
    evidence = ep.get("evidence")
    if not isinstance(evidence, list) or not evidence:
        return [f"{where}: no evidence: {len(hosts)} host(s) rest on nothing"]
    backed: set[str] = set()
    for i, item in enumerate(evidence):
        found, regions = _check_evidence(bc, where, ep, i, item)
        problems += found
        backed |= regions
    for region in sorted(set(hosts) - backed):
        problems.append(f"{where}: {region}: {hosts[region]}: no evidence names it")
    pattern = str(ep.get("pattern", ""))
    bc_names = ep.get("botocore") or {}
    bc_regions = bc.regions(str(bc_names.get("endpoints", "")))
    for region, host in hosts.items():
        want = pattern if region == GLOBAL_REGION else pattern.replace("{region}", region)
        if host != want:
            problems.append(f"{where}: {region}: {host} does not fit pattern {pattern}")
        if region not in bc_regions:
            problems.append(f"{where}: {region}: botocore lists no such region for the service")
            continue
        try:
            resolved = bc.ruleset_hostname(str(bc_names.get("ruleset")), bc_regions[region])
        except Exception as exc:  # botocore's own errors: an unknown rule set, a bad region
            problems.append(f"{where}: {region}: botocore's rule set fails: {exc}")
            continue
        if resolved != host:
            problems.append(f"{where}: {region}: botocore resolves {resolved}, not {host}")
        for family in FAMILIES:
            key = (ep.get("ip_ranges_service") or {}).get(family)
            if not key:
                problems.append(f"{where}: no ip_ranges_service for {family}")
            elif not ranges.has(str(key), family, region):
                problems.append(
                    f"{where}: {region}: {ranges.path.name} lists no {key} {family} prefix there"
                )
    probes = ep.get("probes") or []
    if not probes or any(p not in PROBE_KINDS for p in probes):
        problems.append(f"{where}: probes {probes!r} are not probe kinds")
    if "icmp" in probes:
        problems.append(f"{where}: icmp is not a default probe (no AWS endpoint promises echo)")
    problems += list(_check_expect(bc, where, ep.get("expect"), probes))
    status = ((ep.get("expect") or {}).get("unauthenticated_status") or {}).get("value")
    if ep.get("expect_status") != status:
        problems.append(f"{where}: expect_status differs from expect.unauthenticated_status")
    return problems


def check_catalog(bc: Botocore, ranges: IpRanges, catalog: Any, name: str) -> list[str]:
    """One line per problem, each naming its file and `service/kind`."""
    if not isinstance(catalog, Mapping) or not isinstance(catalog.get("services"), Mapping):
        return [f"{name}: no services"]
    problems = []
    for service, body in catalog["services"].items():
        endpoints = body.get("endpoints") if isinstance(body, Mapping) else None
        if not isinstance(endpoints, list) or not endpoints:
            problems.append(f"{name}: {service}: no endpoints")
            continue
        for ep in endpoints:
            where = f"{name}: {service}/{ep.get('kind') if isinstance(ep, Mapping) else '?'}"
            if not isinstance(ep, Mapping):
                problems.append(f"{where}: not a mapping")
                continue
            problems += check_entry(bc, ranges, where, ep)
    for kind, body in (catalog.get("user_targets") or {}).items():
        where = f"{name}: user_targets.{kind}"
        for i, item in enumerate(body.get("evidence") or []):
            problems += list(_check_quote(bc, f"{where}: evidence[{i}]", item))
        problems += list(_check_expect(bc, where, body.get("expect"), body.get("probes") or []))
    return problems


# -- Building the catalog from its sources --------------------------------------------------------


@dataclass
class Built:
    catalog: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    comments: dict[str, list[str]] = field(default_factory=dict)


def _doc_evidence(doc: Mapping[str, Any], regions: Iterable[str]) -> dict[str, Any]:
    out: dict[str, Any] = {
        "kind": "aws_doc",
        "url": doc.get("url"),
        "sentence": _squash(str(doc.get("sentence", ""))),
    }
    if doc.get("naming"):
        out["naming"] = _squash(str(doc["naming"]))
    for key in ("pattern", "placeholder", "scope"):
        if doc.get(key) is not None:
            out[key] = doc[key]
    out["regions"] = sorted(regions)
    if doc.get("botocore_doc"):
        out["botocore_doc"] = dict(doc["botocore_doc"])
    return out


def _fact(raw: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"value": raw.get("value"), "basis": raw.get("basis")}
    if raw.get("source"):
        source = dict(raw["source"])
        source["sentence"] = _squash(str(source.get("sentence", "")))
        out["source"] = source
    if raw.get("note"):
        out["note"] = _squash(str(raw["note"]))
    return out


def _expect(raw: Any) -> dict[str, Any]:
    raw = raw if isinstance(raw, Mapping) else {}
    return {name: _fact(raw.get(name) or {}) for name in EXPECT_FIELDS}


def build_endpoint(
    bc: Botocore, where: str, spec: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str]]:
    """One catalog endpoint: the hosts its evidence names, and that evidence."""
    names = spec.get("botocore") or {}
    service = str(names.get("endpoints", ""))
    known = bc.regions(service)
    if not known:
        return {}, [f"{where}: botocore lists no region for {service!r}"]
    claims: dict[str, set[str]] = {}  # region -> host names the evidence gives
    evidence: list[dict[str, Any]] = []

    for doc in spec.get("docs") or []:
        scope = doc.get("scope")
        regions = {
            "partition": sorted(known),
            "listed": [str(r) for r in doc.get("regions") or []],
        }.get(str(scope), [])
        evidence.append(_doc_evidence(doc, regions))
        for region in regions:
            host = _doc_host(doc, region)
            if host is not None:
                claims.setdefault(region, set()).add(host)

    variant_regions = []
    for region, bc_region in known.items():
        host = bc.variant_hostname(service, bc_region)
        if host is not None:
            variant_regions.append(region)
            claims.setdefault(region, set()).add(host)
    if variant_regions:
        key = (
            bc.variant_key(service, "{region}")
            if GLOBAL_REGION not in known
            else (bc.variant_key(service, known[GLOBAL_REGION]))
        )
        evidence.append(
            {
                "kind": "botocore_variant",
                "file": ENDPOINTS_FILE,
                "key": key,
                "regions": variant_regions,
            }
        )

    if GLOBAL_REGION in known:  # hard-coded URLs are per partition: they name global endpoints
        for rule in bc.ruleset_endpoints(str(names.get("ruleset"))):
            claims.setdefault(GLOBAL_REGION, set()).add(urlsplit(rule.url).hostname or rule.url)
            evidence.append(
                {
                    "kind": "botocore_ruleset_endpoint",
                    "file": rule.file,
                    "key": rule.key,
                    "url": rule.url,
                    "conditions": "partition aws, UseDualStack true, UseFIPS false",
                    "regions": [GLOBAL_REGION],
                }
            )

    problems = []
    hosts: dict[str, str] = {}
    for region in sorted(claims):
        named = claims[region]
        if len(named) > 1:
            problems.append(f"{where}: {region}: the evidence names {', '.join(sorted(named))}")
            continue
        hosts[region] = next(iter(named))
    if not hosts:
        problems.append(
            f"{where}: no evidence: no explicit botocore dual-stack variant, no hard-coded "
            "rule-set URL, no AWS page listing a region"
        )
    expect = _expect(spec.get("expect"))
    entry = {
        "kind": spec.get("kind"),
        "plane": spec.get("plane"),
        "port": spec.get("port", 443),
        "probes": list(spec.get("probes") or []),
        "expect_status": list(expect["unauthenticated_status"]["value"] or []),
        "pattern": spec.get("pattern"),
        "botocore": dict(names),
        "ip_ranges_service": dict(spec.get("ip_ranges_service") or {}),
        "evidence": evidence,
        "expect": expect,
        "notes": _squash(str(spec.get("notes", ""))),
        "hosts": hosts,
    }
    return entry, problems


def load_sources(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CatalogError(f"{path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("services"), dict):
        raise CatalogError(f"{path}: no 'services' mapping")
    return data


def build(bc: Botocore, ranges: IpRanges, sources: Mapping[str, Any], name: str) -> Built:
    built = Built(catalog={})
    services: dict[str, Any] = {}
    for service in sorted(sources["services"]):
        spec = sources["services"][service] or {}
        built.comments[service] = [str(c) for c in spec.get("comments") or []]
        entries = []
        for ep_spec in spec.get("endpoints") or []:
            where = f"{name}: {service}/{ep_spec.get('kind')}"
            entry, problems = build_endpoint(bc, where, ep_spec)
            built.problems += problems
            if entry and entry["hosts"]:
                entries.append(entry)
        if entries:
            services[service] = {"title": spec.get("title", service), "endpoints": entries}
    user_targets = {}
    for kind in sorted(sources.get("user_targets") or {}):
        spec = sources["user_targets"][kind]
        user_targets[kind] = {
            "title": spec.get("title", kind),
            "pattern": spec.get("pattern"),
            "probes": list(spec.get("probes") or []),
            "ip_ranges_service": dict(spec.get("ip_ranges_service") or {}),
            "evidence": [_doc_evidence(d, []) for d in spec.get("docs") or []],
            "expect": _expect(spec.get("expect")),
            "notes": _squash(str(spec.get("notes", ""))),
        }
    built.catalog = {
        "botocore_version": bc.version,
        "ip_ranges": {
            "file": ranges.path.relative_to(REPO_ROOT).as_posix()
            if ranges.path.is_relative_to(REPO_ROOT)
            else ranges.path.name,
            "syncToken": ranges.sync_token,
            "createDate": ranges.create_date,
        },
        "services": services,
        "user_targets": user_targets,
        "excluded": [
            {"name": str(x.get("name")), "why": _squash(str(x.get("why", "")))}
            for x in sources.get("excluded") or []
        ],
    }
    # The generator must never write what --check would refuse.
    built.problems += check_catalog(bc, ranges, built.catalog, name)
    return built


# -- Rendering ------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block mappings; lists of plain scalars on one line (flow), as a person would write them."""

    def ignore_aliases(self, data: Any) -> bool:
        return True  # shared blocks are written out in full: the file is read by people


def _represent_list(dumper: yaml.SafeDumper, data: list[Any]) -> yaml.Node:
    flow = all(isinstance(v, (str, int, bool)) or v is None for v in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def render_yaml(built: Built) -> str:
    catalog = built.catalog
    ranges = catalog["ip_ranges"]
    header = [
        "# GENERATED FILE - DO NOT EDIT BY HAND.",
        f"# Generated by `{COMMAND}` from scripts/catalog_sources.yml, the endpoint",
        f"# data bundled with botocore {catalog['botocore_version']} and {ranges['file']}",
        f"# (syncToken {ranges['syncToken']}).",
        f"# `{COMMAND} --check` re-verifies each entry's evidence and that this file is",
        "# current. docs/catalog.md lists each entry with its evidence and explains the keys.",
    ]
    body = yaml.dump(
        catalog, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=96, indent=2
    )
    lines = body.splitlines()
    out: list[str] = []
    in_services = False
    for line in lines:
        out.append(line)
        if line == "services:":
            in_services = True
        elif line and not line.startswith(" "):
            in_services = False
        elif in_services and re.fullmatch(r"  [a-z0-9-]+:", line):
            out.extend(f"    # {c}" for c in built.comments.get(line.strip()[:-1], []))
    text = "\n".join([*header, *out]) + "\n"
    if yaml.safe_load(text) != catalog:  # the comments must not change what the file means
        raise CatalogError("rendered YAML does not round-trip to the catalog data")
    return text


def _md(text: str) -> str:
    """Prose for markdown: `<region>` must show, not be taken for an HTML tag."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _regions_text(regions: Sequence[str]) -> str:
    return ", ".join(f"`{r}`" for r in regions)


def _quote(item: Mapping[str, Any]) -> str:
    text = f"“{_md(item['sentence'])}”"
    if item.get("naming"):
        text += f" … “{_md(item['naming'])}”"
    return text


def _evidence_line(item: Mapping[str, Any], *, user: bool = False) -> str:
    kind = item["kind"]
    regions = item.get("regions") or []
    if kind == "aws_doc":
        scope = {
            "naming": "documents the form of the name; the regions come from botocore",
            "partition": f"covers the {len(regions)} commercial regions botocore lists",
            "listed": f"names it for {_regions_text(regions)}",
        }.get(str(item.get("scope")), "")
        line = f"- **AWS documentation**, <{item['url']}>: {_quote(item)}"
        if scope and not user:
            line += f" ({scope})"
        if item.get("botocore_doc"):
            ref = item["botocore_doc"]
            line += f"; the same text is in `{ref['file']}` `{ref['key']}`"
        return line
    if kind == "botocore_variant":
        return (
            f"- **botocore dual-stack variant**: `{item['file']}` `{item['key']}` "
            f"({len(regions)} region{'s' if len(regions) != 1 else ''})"
        )
    return (
        f"- **botocore rule set**: `{item['file']}` `{item['key']}` = `{item['url']}` "
        f"({item['conditions']})"
    )


def _expect_rows(expect: Mapping[str, Any]) -> list[str]:
    rows = ["| expectation | value | basis | source or note |", "|---|---|---|---|"]
    for name in EXPECT_FIELDS:
        fact = expect[name]
        value = json.dumps(fact["value"])
        source = fact.get("source")
        why = f"<{source['url']}>: “{_md(source['sentence'])}”" if source else ""
        if fact.get("note"):
            why = f"{why} {_md(fact['note'])}".strip()
        rows.append(f"| `{name}` | `{value}` | {fact['basis']} | {why.replace('|', '/')} |")
    return rows


def render_doc(built: Built) -> str:
    catalog = built.catalog
    services = catalog["services"]
    out = [
        "# The AWS catalog",
        "",
        f"<!-- Generated by `{COMMAND}` from scripts/catalog_sources.yml; do not edit by hand. -->",
        "",
        "`configs/catalog.yml` lists the AWS endpoints that `catalog:` in a configuration can",
        "select. A host name is in it only where evidence names it as dual-stack:",
        "",
        "- **AWS documentation**: a page, with the sentence it rests on quoted word for word;",
        "- **botocore dual-stack variant**: an explicit dual-stack host name for that region in",
        "  botocore's `endpoints.json` (what the AWS SDKs resolve);",
        "- **botocore rule set**: a hard-coded dual-stack URL in the service's endpoint rule set.",
        "",
        "botocore's partition-wide template `{service}.{region}.api.aws`, which every service",
        "inherits whether or not it serves IPv6, is never evidence.",
        "",
        *textwrap.wrap(
            f"`{COMMAND} --check` re-verifies each entry against botocore "
            f"{catalog['botocore_version']} and the quoted pages, checks each region against "
            f"the regions that `{catalog['ip_ranges']['file']}` (syncToken "
            f"{catalog['ip_ranges']['syncToken']}) lists for the entry's `ip_ranges_service`, "
            "and fails (exit 1) with a line naming each entry its evidence does not back.",
            width=92,
            break_on_hyphens=False,
        ),
        "",
        "Each entry also states what it is expected to do (`expect`): the HTTP version and ALPN",
        "protocol it negotiates, whether it serves HTTP/3, the statuses an unsigned `GET /` gets.",
        "Each has a basis: `aws_doc` (AWS states it), `observed_not_documented` (a cited public",
        "observation, not AWS's word) or `not_documented` (AWS says nothing: the value is neutral,",
        "`null` or `[]` meaning no expectation). No entry probes `icmp`: no AWS endpoint promises",
        "to answer echo requests. Add it to your own targets if you want it.",
        "",
        "Keys of each endpoint in `configs/catalog.yml` (`monitor/catalog.py` reads `kind`,",
        "`plane`, `port`, `probes`, `expect_status` and `hosts`):",
        "",
        "| key | meaning |",
        "|---|---|",
        "| `kind`, `plane`, `port` | endpoint kind (part of the target name), `data` or"
        " `control`, TCP port |",
        "| `probes` | the probe kinds a catalog target runs |",
        "| `expect_status` | statuses the http probes accept (`[]`: any answer); the value of"
        " `expect.unauthenticated_status` |",
        "| `pattern` | the host name, `{region}` standing for the region |",
        "| `botocore` | the service's names in `endpoints.json` and in the rule sets |",
        "| `ip_ranges_service` | per family, the ip-ranges.json service key its addresses are"
        " expected under (`AMAZON` for every API name) |",
        "| `evidence` | what names it: each item's `regions` are the regions it backs |",
        "| `expect` | `http_version`, `alpn`, `http3`, `unauthenticated_status`: each a"
        " `value`, a `basis` and a `source` or `note` |",
        "| `hosts` | region (or `global`) to host name |",
        "",
        "`user_targets` describes kinds of endpoint you add yourself (below); `excluded` lists",
        "names left out, and why.",
        "",
        "| service | endpoint | plane | name | regions | evidence |",
        "|---|---|---|---|---|---|",
    ]
    for service, body in services.items():
        for ep in body["endpoints"]:
            kinds = sorted({e["kind"] for e in ep["evidence"]})
            out.append(
                f"| `{service}` | `{ep['kind']}` | {ep['plane']} | `{ep['pattern']}` | "
                f"{len(ep['hosts'])} | {', '.join(kinds)} |"
            )
    for service, body in services.items():
        out += ["", f"## `{service}`: {body['title']}", ""]
        if built.comments.get(service):
            out += [_md(" ".join(built.comments[service])), ""]
        for ep in body["endpoints"]:
            out += [
                f"### `{service}/{ep['kind']}`: `{ep['pattern']}`",
                "",
                _md(ep["notes"]),
                "",
                f"- Plane: {ep['plane']}; port {ep['port']}; probes: "
                + ", ".join(f"`{p}`" for p in ep["probes"])
                + ".",
                f"- Regions ({len(ep['hosts'])}): {_regions_text(list(ep['hosts']))}.",
                "- Expected in ip-ranges.json under: "
                + ", ".join(f"`{v}` ({k})" for k, v in ep["ip_ranges_service"].items())
                + ".",
                "",
                "Evidence:",
                "",
                *[_evidence_line(item) for item in ep["evidence"]],
                "",
                *_expect_rows(ep["expect"]),
            ]
    out += [
        "",
        "## Your own targets",
        "",
        "These kinds of endpoint have names of your own, so they are not catalog entries: add them",
        "under `targets:` with the `service` label shown. Their documented form and expectations:",
    ]
    for kind, body in catalog["user_targets"].items():
        out += [
            "",
            f"### `{kind}`: {body['title']}",
            "",
            f"Example name: `{body['pattern']}`. {_md(body['notes'])}",
            "",
            "- Probes: " + ", ".join(f"`{p}`" for p in body["probes"]) + ".",
            "- Expected in ip-ranges.json under: "
            + ", ".join(f"`{v}` ({k})" for k, v in body["ip_ranges_service"].items())
            + ".",
            "",
            "Evidence:",
            "",
            *[_evidence_line(item, user=True) for item in body["evidence"]],
            "",
            *_expect_rows(body["expect"]),
        ]
    out += ["", "## Not in the catalog", ""]
    out += [f"- `{x['name']}`: {_md(x['why'])}" for x in catalog["excluded"]]
    return "\n".join(out) + "\n"


# -- Command line ---------------------------------------------------------------------------------


def _display(path: Path) -> str:
    try:
        return path.resolve().relative_to(REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES, help="hand-kept input")
    parser.add_argument("--ip-ranges", type=Path, default=DEFAULT_IP_RANGES, help="ip-ranges.json")
    parser.add_argument(
        "--output", type=Path, default=DEFAULT_OUTPUT, help="catalog to write or check"
    )
    parser.add_argument("--doc", type=Path, default=DEFAULT_DOC, help="markdown to write or check")
    parser.add_argument(
        "--check",
        action="store_true",
        help="write nothing; exit 1 if an entry of --output lacks evidence or a file is stale",
    )
    args = parser.parse_args(argv)
    output, doc = args.output, args.doc
    problems: list[str] = []
    try:
        bc = Botocore()
        ranges = IpRanges.load(args.ip_ranges)
        if args.check:  # the file as it is, entry by entry, before comparing it with anything
            current = _read(output)
            if current is not None:
                try:
                    committed = yaml.safe_load(current)
                except yaml.YAMLError as exc:
                    raise CatalogError(f"{output}: {exc}") from exc
                problems += check_catalog(bc, ranges, committed, _display(output))
        built = build(bc, ranges, load_sources(args.sources), _display(args.sources))
        problems += [p for p in built.problems if p not in problems]
        texts = {output: render_yaml(built), doc: render_doc(built)}
    except (CatalogError, ImportError) as exc:
        print(f"gen_catalog: error: {exc}", file=sys.stderr)
        return 2
    for line in problems:
        print(f"gen_catalog: {line}", file=sys.stderr)
    if args.check:
        for path, text in texts.items():
            current = _read(path)
            if current != text:
                state = "missing" if current is None else "out of date"
                print(f"gen_catalog: {_display(path)} is {state}; run `{COMMAND}`", file=sys.stderr)
                problems.append(state)
        return 1 if problems else 0
    if problems:
        return 1  # nothing is written from inputs the check would refuse
    for path, text in texts.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", encoding="utf-8", newline="\n") as fh:
            fh.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
