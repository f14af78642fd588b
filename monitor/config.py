"""Load and validate the YAML configuration; expand it into concrete Targets.

Unknown keys are rejected and every error names the file, the key path and what is wrong, on
one line. Durations are strings like 500ms, 5s, 1m30s, 1d (a bare number is seconds); every
number is finite, and `interval` and `timeout` are at most a day.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

import dns.rdatatype
import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from monitor.catalog import CatalogError, expand_catalog, user_target_defaults
from monitor.sharding import MAX_SHARDS, UNSHARDED
from monitor.sharding import Shard as Shard  # the type of Config.shard, for every layer
from probes import ipranges, kinds
from probes.base import (
    FAMILIES,
    NO_REGION,
    DnsSpec,
    Family,
    HttpSpec,
    IcmpSpec,
    RaceSpec,
    Target,
    TlsSpec,
)
from probes.ipranges import IpRanges

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_PERIOD = 86400.0
"""The longest `interval` or `timeout`: a day (a probe's deadline must end, a job must run)."""
NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,62}$"
HOST_RE = re.compile(
    r"^(?=.{1,253}$)([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.)*"
    r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?\.?$"
)


Plane = Literal["data", "control"]
PLANES: tuple[Plane, ...] = ("data", "control")
NAMESERVER_PREFIX = "route53-ns-"


def did_you_mean(word: str, known: Sequence[str]) -> str:
    """ "; did you mean 'x'?" for a near miss among `known`, else ""."""
    close = difflib.get_close_matches(word, known, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _one_of(known: Sequence[str]) -> str:
    quoted = [repr(k) for k in known]
    return ", ".join(quoted[:-1]) + f" or {quoted[-1]}" if len(quoted) > 1 else "".join(quoted)


def _probe_kind(v: str) -> str:
    known = kinds.names()
    if v not in known:
        raise ValueError(f"{v!r} is not one of {_one_of(known)}{did_you_mean(v, known)}")
    return v


ProbeName = Annotated[str, AfterValidator(_probe_kind)]
"""A probe kind a target may list: a registered kind's name (probes/kinds.py)."""


class ConfigError(Exception):
    """A configuration problem, already phrased as one line for a person."""


def parse_duration(value: object) -> float:
    """'1m30s' -> 90.0; numbers are seconds. Raises ValueError with a readable message."""
    if isinstance(value, bool):
        raise ValueError(f"bad duration {value!r}: use e.g. 500ms, 5s, 1m")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        text = value.strip()
        pos, seconds = 0, 0.0
        for match in _DURATION.finditer(text):
            if match.start() != pos:
                break
            seconds += float(match.group(1)) * _UNITS[match.group(2)]
            pos = match.end()
        if pos != len(text) or not text:
            raise ValueError(f"bad duration {value!r}: use e.g. 500ms, 5s, 1m")
    else:
        raise ValueError(f"bad duration {value!r}: use e.g. 500ms, 5s, 1m")
    if not math.isfinite(seconds):
        raise ValueError(f"bad duration {value!r}: must be a finite number of seconds")
    if seconds <= 0:
        raise ValueError(f"bad duration {value!r}: must be more than zero")
    return seconds


def parse_period(value: object) -> float:
    """A duration of at most MAX_PERIOD (a day): what `interval` and `timeout` take."""
    seconds = parse_duration(value)
    if seconds > MAX_PERIOD:
        raise ValueError(f"bad duration {value!r}: at most a day (24h)")
    return seconds


Duration = Annotated[float, BeforeValidator(parse_duration)]
Period = Annotated[float, BeforeValidator(parse_period)]


def _check_attempt_delay(seconds: float) -> float:
    # RFC 8305 section 5: MUST NOT be under 10 ms, SHOULD NOT be over 2 s.
    if not 0.01 <= seconds <= 2.0:
        raise ValueError(f"{seconds:g} s: must be from 10ms to 2s (RFC 8305 section 5)")
    return seconds


AttemptDelay = Annotated[Duration, AfterValidator(_check_attempt_delay)]


def _check_ip(value: str) -> str:
    ipaddress.ip_address(value)
    return value


def _check_ipv4(value: str) -> str:
    if ipaddress.ip_address(value).version != 4:
        raise ValueError(f"{value!r} is not an IPv4 address")
    return value


def _check_ipv6(value: str) -> str:
    if ipaddress.ip_address(value).version != 6:
        raise ValueError(f"{value!r} is not an IPv6 address")
    return value


class _Strict(BaseModel):
    # allow_inf_nan: YAML's .nan and .inf (and 1.0e+400, which is inf) are no numbers here.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False, allow_inf_nan=False)


class ResolverConfig(_Strict):
    nameservers: list[Annotated[str, BeforeValidator(_check_ip)]] = Field(min_length=1)
    port: int = Field(53, ge=1, le=65535)


class TlsConfig(_Strict):
    ca_file: str | None = None


class IpRangesConfig(_Strict):
    file: str


class CatalogConfig(_Strict):
    services: list[str] = Field(default_factory=list)
    regions: list[str] = Field(default_factory=list)
    planes: list[Plane] = Field(default_factory=lambda: list(PLANES))


class HttpConfig(_Strict):
    path: str = "/"
    expect_status: list[Annotated[int, Field(ge=100, le=599)]] = Field(default_factory=list)

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not v.startswith("/") or any(c.isspace() for c in v):
            raise ValueError("must start with / and contain no spaces")
        return v


class TargetTlsConfig(_Strict):
    alpn: list[str] = Field(default_factory=lambda: ["h2", "http/1.1"])
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None


class RaceConfig(_Strict):
    resolution_delay: Duration = 0.05
    connection_attempt_delay: AttemptDelay = 0.25


class TargetRaceConfig(_Strict):
    """Per target: each key falls back to the top-level `race`."""

    resolution_delay: Duration | None = None
    connection_attempt_delay: AttemptDelay | None = None


class IcmpConfig(_Strict):
    count: int = Field(3, ge=1, le=100)
    # Whole IP packets: at least an IPv6 and an ICMPv6 header (48 bytes).
    sizes: list[Annotated[int, Field(ge=48, le=65535)]] = Field(default_factory=list)


def _check_dns_type(value: str) -> str:
    """A DNS data type by its mnemonic (DNSKEY, TXT, TYPE65534...), as dnspython knows them."""
    try:
        rdtype = dns.rdatatype.from_text(value)
    except (dns.rdatatype.UnknownRdatatype, ValueError):
        raise ValueError(f"{value!r} is not a DNS type (e.g. DNSKEY, TXT, AAAA)") from None
    if dns.rdatatype.is_metatype(rdtype) or rdtype == dns.rdatatype.ANY:
        raise ValueError(f"{value!r} is a query-only type: name a record type (e.g. DNSKEY, TXT)")
    return dns.rdatatype.to_text(rdtype)


def _check_dns_name(value: str) -> str:
    if not HOST_RE.match(value):
        raise ValueError(f"{value!r} is not a DNS name")
    return value.rstrip(".")


class DnsLargeConfig(_Strict):
    """The large question of a name-server target (probe dns_large)."""

    name: Annotated[str, AfterValidator(_check_dns_name)] | None = None
    type: Annotated[str, AfterValidator(_check_dns_type)] = "DNSKEY"


class DnsConfig(_Strict):
    """A name-server target's questions: the large one and the EDNS buffer it announces."""

    large: DnsLargeConfig = Field(default_factory=DnsLargeConfig)
    edns_buffer: int = Field(4096, ge=512, le=65535)

    def spec(self) -> DnsSpec:
        return DnsSpec(
            large_name=self.large.name, large_type=self.large.type, edns_buffer=self.edns_buffer
        )


class TargetConfig(_Strict):
    name: Annotated[str, Field(pattern=NAME_RE)]
    service: str = "custom"
    region: str | None = None
    host: str
    port: int = Field(443, ge=1, le=65535)
    probes: list[ProbeName] = Field(default_factory=lambda: list(kinds.default_names()))
    families: list[Family] | None = Field(None, min_length=1)
    http: HttpConfig = Field(default_factory=HttpConfig)
    tls: TargetTlsConfig = Field(default_factory=TargetTlsConfig)
    interval: Period | None = None
    timeout: Period | None = None
    max_addresses: int | None = Field(None, ge=1, le=64)
    zone: str | None = None
    race: TargetRaceConfig = Field(default_factory=TargetRaceConfig)
    icmp: IcmpConfig = Field(default_factory=IcmpConfig)
    dns: DnsConfig = Field(default_factory=DnsConfig)
    resolvers: list[Annotated[str, BeforeValidator(_check_ip)]] | None = Field(None, min_length=1)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if v.startswith(NAMESERVER_PREFIX):
            raise ValueError(
                f"{v!r}: names starting with {NAMESERVER_PREFIX!r} are reserved "
                "for the name servers of route53.zones"
            )
        return v

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        try:
            ipaddress.ip_address(v)
            return v
        except ValueError:
            pass
        if not HOST_RE.match(v):
            raise ValueError(f"{v!r} is not a host name or IP address")
        return v.rstrip(".")


class Route53Config(_Strict):
    zones: list[str] = Field(default_factory=list)
    port: int = Field(53, ge=1, le=65535)
    probes: list[ProbeName] = Field(default_factory=lambda: list(kinds.NAMESERVER_DEFAULT))
    max_nameservers: int = Field(8, ge=1, le=16)
    dns: DnsConfig = Field(default_factory=DnsConfig)

    @field_validator("probes")
    @classmethod
    def _no_resolver(cls, v: list[str]) -> list[str]:
        if kinds.RESOLVER in v:
            raise ValueError(f"{kinds.RESOLVER!r} asks resolvers: list it in a target of its own")
        return v


class ParityConfig(_Strict):
    slower_ratio: float = Field(1.5, gt=1.0)
    slower_margin: Duration = 0.05


class SourceConfig(_Strict):
    ipv4: Annotated[str, BeforeValidator(_check_ipv4)] | None = None
    ipv6: Annotated[str, BeforeValidator(_check_ipv6)] | None = None


class ShardingConfig(_Strict):
    """This process probes shard `index` (0 to count-1) of the vantage's targets
    (monitor/sharding.py; docs/scale.md)."""

    count: int = Field(1, ge=1, le=MAX_SHARDS)
    index: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _index_below_count(self) -> ShardingConfig:
        if self.index >= self.count:
            raise _KeyError(
                ("sharding", "index"),
                f"{self.index} is not a shard of {self.count}: "
                f"shards are numbered 0 to {self.count - 1}",
            )
        return self


class EventsConfig(_Strict):
    """The verdict changes `probe serve` keeps (monitor/serve/events.py)."""

    keep: int = Field(1000, ge=1, le=100_000)
    file: str | None = None
    max_bytes: int = Field(10 * 1024 * 1024, ge=1024)


class TraceConfig(_Strict):
    """The traces `probe serve` runs when a verdict turns `ipv6_failed` or recovers, and the
    defaults of `probe trace` (probes/trace.py; docs/probes.md, "Where IPv6 breaks")."""

    method: Literal["udp", "icmp", "tcp"] = "udp"
    max_hops: int = Field(30, ge=1, le=64)
    tries: int = Field(3, ge=1, le=10)
    hop_timeout: Duration = 1.0
    gap_limit: int = Field(5, ge=1, le=64)
    vantage_hops: int = Field(1, ge=1, le=16)
    on_verdict_change: bool = True
    budget: int = Field(6, ge=0, le=600)
    cooldown: Period = 300.0

    @field_validator("hop_timeout")
    @classmethod
    def _hop_timeout(cls, value: float) -> float:
        if value > 10:
            raise ValueError(f"{value:g} s: at most 10s (a trace's worst case is max_hops x this)")
        return value


def _check_external_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{value!r}: use http:// or https:// and a host, e.g. http://vantage:9851")
    if parts.query or parts.fragment or any(c.isspace() for c in value):
        raise ValueError(f"{value!r}: no query, fragment or spaces: links are added to it")
    # the alert rules append /api/v1/events?...: one slash between, however it was written
    return value.rstrip("/")


class ConfigModel(_Strict):
    vantage: Annotated[str, Field(pattern=NAME_RE)] | None = None
    site: Annotated[str, Field(pattern=NAME_RE)] | None = None
    interval: Period = 30.0
    timeout: Period = 5.0
    concurrency: int = Field(32, ge=1, le=4096)
    max_addresses: int = Field(8, ge=1, le=64)
    families: list[Family] = Field(default_factory=lambda: list(FAMILIES), min_length=1)
    resolver: ResolverConfig | None = None
    tls: TlsConfig = Field(default_factory=TlsConfig)
    ip_ranges: IpRangesConfig | None = None
    catalog: CatalogConfig = Field(default_factory=CatalogConfig)
    targets: list[TargetConfig] = Field(default_factory=list)
    route53: Route53Config = Field(default_factory=Route53Config)
    parity: ParityConfig = Field(default_factory=ParityConfig)
    source: SourceConfig = Field(default_factory=SourceConfig)
    race: RaceConfig = Field(default_factory=RaceConfig)
    sharding: ShardingConfig = Field(default_factory=ShardingConfig)
    events: EventsConfig = Field(default_factory=EventsConfig)
    external_url: Annotated[str, AfterValidator(_check_external_url)] | None = None
    trace: TraceConfig = Field(default_factory=TraceConfig)

    @model_validator(mode="after")
    def _unique_names(self) -> ConfigModel:
        seen: dict[str, int] = {}
        for i, t in enumerate(self.targets):
            if t.name in seen:
                raise _KeyError(
                    ("targets", i, "name"),
                    f"duplicate target name {t.name!r} (first at targets[{seen[t.name]}])",
                )
            seen[t.name] = i
            _fits(t, i)
        return self


def _fits(t: TargetConfig, i: int) -> None:
    """The probes a target lists suit what it is: a name server (`zone`), a resolver target
    (probes [resolver]) or a host."""
    resolver = kinds.RESOLVER in t.probes
    if resolver and len(set(t.probes)) > 1:
        raise _KeyError(
            ("targets", i, "probes"),
            f"{kinds.RESOLVER!r} asks the target's resolvers, not its host: list it alone "
            "(a target of its own)",
        )
    if resolver and t.zone is not None:
        raise _KeyError(("targets", i, "zone"), "a resolver target has no zone")
    if resolver and _is_address(t.host):
        raise _KeyError(
            ("targets", i, "host"),
            f"{t.host!r}: a resolver target's host is the name asked of the resolvers, "
            "not an address (list them under resolvers)",
        )
    if t.resolvers is not None and not resolver:
        raise _KeyError(
            ("targets", i, "resolvers"),
            f"only a target whose probes are [{kinds.RESOLVER}] asks resolvers",
        )
    if t.zone is None:
        for kind in kinds.NAMESERVER_ONLY:
            if kind in t.probes:
                raise _KeyError(
                    ("targets", i, "probes"),
                    f"{kind!r} asks a name server about its zone: set zone, or drop {kind!r}",
                )
        if "dns" in t.model_fields_set:
            raise _KeyError(
                ("targets", i, "dns"), "only a name-server target (one with a zone) uses it"
            )


def _is_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


class _KeyError(ValueError):
    """A cross-field error that knows its own key path."""

    def __init__(self, loc: tuple[str | int, ...], message: str) -> None:
        super().__init__(message)
        self.loc = loc
        self.message = message


@dataclass(frozen=True, slots=True, kw_only=True)
class Config:
    """The validated configuration with the catalog expanded into targets."""

    path: str
    vantage: str
    interval: float
    timeout: float
    concurrency: int
    max_addresses: int
    families: tuple[Family, ...]
    nameservers: tuple[str, ...]
    resolver_port: int
    ca_file: str | None
    ip_ranges: IpRanges | None
    """AWS's published ranges from `ip_ranges.file`; None: the shipped snapshot (loaded when
    probing, never for `probe targets`)."""
    targets: tuple[Target, ...]
    zones: tuple[str, ...]
    route53: Route53Config
    slower_ratio: float
    slower_margin: float
    sources: dict[Family, str] = field(default_factory=dict)
    site: str | None = None
    """Vantages sharing a network and uplink; None: the vantage's own name (after --vantage)."""
    shard: Shard = UNSHARDED
    """The part of `targets` (and of the zones' name servers) this process probes."""
    events: EventsConfig = field(default_factory=EventsConfig)
    """What `probe serve` keeps of verdict changes; `file` resolved against the config's
    directory."""
    external_url: str | None = None
    """Where people reach `probe serve`; None: `http://` and the listen address."""
    trace: TraceConfig = field(default_factory=TraceConfig)
    """Traces on a verdict change (`probe serve`) and `probe trace`'s defaults."""


def _loc(loc: Sequence[str | int]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _known_keys(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    """The keys a mapping at `loc` accepts: its model's fields (by alias), for a near miss."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue  # a list's index: the same item model
        field = next(
            (f for name, f in current.model_fields.items() if (f.alias or name) == part), None
        )
        current = _model_in(field.annotation) if field is not None else None
    if current is None:
        return []
    return [f.alias or name for name, f in current.model_fields.items()]


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The model a field holds, through Optional, lists, tuples and dict values."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in reversed(get_args(annotation)):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        allowed = err.get("ctx", {}).get("expected", "")
        return f"{err['input']!r} is not one of {allowed}"
    if kind == "string_pattern_mismatch":
        return f"{err['input']!r}: use letters, digits and . _ : - (at most 63)"
    msg = str(err["msg"])
    if msg.startswith("Value error, "):
        return msg.removeprefix("Value error, ")
    ctx = err.get("ctx", {})
    said = "must not be empty" if kind == "too_short" and ctx.get("min_length") == 1 else None
    said = said or _PLAIN.get(kind)
    if said is not None:
        return f"{err['input']!r}: {said.format(**ctx)}"
    # anything else in the validation library's words, without its jargon
    msg = msg.replace(" after validation", "")
    return f"{err['input']!r}: {msg[:1].lower()}{msg[1:]}"


# The validation library's error types, as a person would say them (ctx fills the blanks).
_PLAIN: dict[str, str] = {
    "too_short": "needs at least {min_length} item(s)",
    "too_long": "takes at most {max_length} item(s)",
    "greater_than_equal": "must be at least {ge}",
    "greater_than": "must be more than {gt}",
    "less_than_equal": "must be at most {le}",
    "less_than": "must be less than {lt}",
    "int_type": "must be a whole number",
    "int_parsing": "must be a whole number",
    "int_from_float": "must be a whole number",
    "float_type": "must be a number",
    "float_parsing": "must be a number",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "string_type": "must be text (quote it if it looks like a number)",
    "list_type": "must be a list, e.g. [a, b]",
    "dict_type": "must be a mapping of keys",
    "model_type": "must be a mapping of keys",
    "model_attributes_type": "must be a mapping of keys",
}


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that rejects duplicate keys instead of silently keeping the last."""


def _construct_mapping(
    loader: yaml.SafeLoader | yaml.CSafeLoader, node: yaml.MappingNode
) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    mapping: dict[Any, Any] = {}
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node)
        if key in mapping:
            mark = key_node.start_mark
            raise ConfigError(f"line {mark.line + 1}: duplicate key {key!r}")
        mapping[key] = loader.construct_object(value_node, deep=True)
    return mapping


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)

_FastUniqueKeyLoader: type[yaml.CSafeLoader] | None = None
"""The same on libyaml's parser, where PyYAML was built with it (its wheels are): a large
config loads in a fraction of the CPU and heap of the pure-Python parser (benchmarks/README.md)."""
if getattr(yaml, "__with_libyaml__", False):

    class _FastLoader(yaml.CSafeLoader):
        pass

    _FastLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)
    _FastUniqueKeyLoader = _FastLoader


def load_yaml(text: str, path: str) -> Any:
    try:
        if _FastUniqueKeyLoader is not None:
            try:
                return yaml.load(text, Loader=_FastUniqueKeyLoader)
            except yaml.YAMLError:
                pass  # worded below by the pure-Python parser, as for every user
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{path}: {where}invalid YAML: {problem}") from None


def validate(data: Any, path: str) -> ConfigModel:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys")
    try:
        return ConfigModel.model_validate(data)
    except ValidationError as exc:
        errors = exc.errors()
        # a misspelt key first: the "required key is missing" beside it is its consequence
        first = next((e for e in errors if e["type"] == "extra_forbidden"), errors[0])
        ctx_err = first.get("ctx", {}).get("error")
        if isinstance(ctx_err, _KeyError):
            where, what = _loc(ctx_err.loc), ctx_err.message
        else:
            where, what = _loc(first["loc"]), _message(first)
            if first["type"] == "extra_forbidden" and first["loc"]:
                word = str(first["loc"][-1])
                what += did_you_mean(word, _known_keys(ConfigModel, first["loc"][:-1]))
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(f"{path}: {where}: {what}{more}") from None


def load_config(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: cannot read: not UTF-8 text (byte {exc.start}: {exc.reason})"
        ) from None
    model = validate(load_yaml(text, str(p)), str(p))
    return build(model, str(p), base_dir=p.parent)


def build(model: ConfigModel, path: str, *, base_dir: Path) -> Config:
    def rel(f: str | None, key: str) -> str | None:
        """Paths in a config file are relative to that file; they must exist."""
        if f is None:
            return None
        resolved = base_dir / f
        if not resolved.is_file():
            raise ConfigError(f"{path}: {key}: no such file {str(resolved)!r}")
        return str(resolved)

    targets: list[Target] = []
    try:
        catalog_targets = expand_catalog(
            model.catalog.services,
            model.catalog.regions,
            model.catalog.planes,
            interval=model.interval,
            timeout=model.timeout,
            max_addresses=model.max_addresses,
        )
    except CatalogError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    names = {t.name for t in model.targets}
    # A user target of the same name overrides the catalog's.
    targets.extend(ct for ct in catalog_targets if ct.name not in names)
    for i, t in enumerate(model.targets):
        key = f"targets[{i}].tls"
        ranges_service, expected = user_target_defaults(t.service)
        # A resolver target: its resolvers (none listed: the vantage's own name servers), asked
        # on the resolver's port unless the target says otherwise.
        resolvers = tuple(t.resolvers or ()) if kinds.RESOLVER in t.probes else None
        port = t.port
        if resolvers is not None and "port" not in t.model_fields_set:
            port = model.resolver.port if model.resolver else 53
        targets.append(
            Target(
                name=t.name,
                service=t.service,
                region=t.region or NO_REGION,
                host=t.host,
                port=port,
                probes=tuple(dict.fromkeys(t.probes)),
                http=HttpSpec(path=t.http.path, expect_status=tuple(t.http.expect_status)),
                tls=TlsSpec(
                    alpn=tuple(t.tls.alpn),
                    client_cert=rel(t.tls.client_cert, f"{key}.client_cert"),
                    client_key=rel(t.tls.client_key, f"{key}.client_key"),
                    server_name=t.tls.server_name,
                ),
                interval=t.interval or model.interval,
                timeout=t.timeout or model.timeout,
                max_addresses=t.max_addresses or model.max_addresses,
                race=RaceSpec(
                    resolution_delay=t.race.resolution_delay or model.race.resolution_delay,
                    connection_attempt_delay=t.race.connection_attempt_delay
                    or model.race.connection_attempt_delay,
                ),
                icmp=IcmpSpec(count=t.icmp.count, sizes=tuple(sorted(set(t.icmp.sizes)))),
                dns=t.dns.spec(),
                resolvers=resolvers,
                zone=t.zone,
                families=tuple(dict.fromkeys(t.families or model.families)),
                source="config",
                ip_ranges_service=ranges_service,
                expectations=expected,
            )
        )
    sources: dict[Family, str] = {}
    if model.source.ipv4:
        sources["ipv4"] = model.source.ipv4
    if model.source.ipv6:
        sources["ipv6"] = model.source.ipv6
    return Config(
        path=path,
        vantage=model.vantage or socket.gethostname().split(".")[0] or "default",
        interval=model.interval,
        timeout=model.timeout,
        concurrency=model.concurrency,
        max_addresses=model.max_addresses,
        families=tuple(dict.fromkeys(model.families)),
        nameservers=tuple(model.resolver.nameservers) if model.resolver else (),
        resolver_port=model.resolver.port if model.resolver else 53,
        ca_file=rel(model.tls.ca_file, "tls.ca_file"),
        ip_ranges=_ip_ranges(rel(model.ip_ranges.file, "ip_ranges.file"), path)
        if model.ip_ranges
        else None,
        targets=tuple(targets),
        zones=tuple(z.rstrip(".") for z in model.route53.zones),
        route53=model.route53,
        slower_ratio=model.parity.slower_ratio,
        slower_margin=model.parity.slower_margin,
        sources=sources,
        site=model.site,
        shard=Shard(index=model.sharding.index, count=model.sharding.count),
        events=model.events.model_copy(
            update={"file": str(base_dir / model.events.file) if model.events.file else None}
        ),
        external_url=model.external_url,
        trace=model.trace,
    )


def nameserver_name(zone: str, n: int) -> str:
    """The target name of the n-th (from 1) name server of `zone`: `route53-ns-<zone>-<n>`."""
    return f"{NAMESERVER_PREFIX}{zone}-{n}"


def nameserver_target(cfg: Config, zone: str, n: int, host: str) -> Target:
    """The n-th (from 1) name server of `zone`, as the target `route53-ns-<zone>-<n>`."""
    return Target(
        name=nameserver_name(zone, n),
        service="route53",
        region="global",
        host=host,
        port=cfg.route53.port,
        probes=tuple(cfg.route53.probes),
        plane="data",
        interval=cfg.interval,
        timeout=cfg.timeout,
        max_addresses=cfg.max_addresses,
        zone=zone,
        dns=cfg.route53.dns.spec(),
        families=cfg.families,
        source="route53-zone",
    )


def _ip_ranges(file: str | None, path: str) -> IpRanges | None:
    if file is None:
        return None
    try:
        return ipranges.load(file)
    except ipranges.IpRangesError as exc:
        raise ConfigError(f"{path}: ip_ranges.file: {exc}") from None
