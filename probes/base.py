"""Types every probe shares: the request it gets, the result it returns, the error kinds.

A probe never raises for a network failure: it returns a ProbeResult whose `error.kind` is one
of the closed set in ErrorKind. The shared handler in probes/handler.py owns timeouts and crashes.
"""

from __future__ import annotations

import contextlib
import enum
import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from typing import Literal, Protocol

from probes import kinds
from probes.details import Details
from probes.ipranges import Attribution, IpRanges
from probes.text import peer_text

Family = Literal["ipv4", "ipv6"]
FAMILIES: tuple[Family, ...] = ("ipv4", "ipv6")
ProbeKind = str
"""A probe kind's name: one registered in probes/kinds.py."""
NO_REGION = "none"
"""The region of a target that has none: one spelling in JSON, metrics, tables and pages."""
Clock = Callable[[], float]


def _version() -> str:
    try:
        return version("dualstack-monitor")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


VERSION = _version()
"""The package's version, from its metadata (pyproject.toml is the one place it is written)."""


class ErrorKind(enum.StrEnum):
    """The closed set of failure kinds. Documented in docs/probes.md (tests keep it in step)."""

    DNS_NXDOMAIN = "dns_nxdomain"
    DNS_NO_ADDRESS = "dns_no_address"
    DNS_NAT64_SYNTHESIZED = "dns_nat64_synthesized"
    DNS_NOT_NATIVE_IPV6 = "dns_not_native_ipv6"
    DNS_SERVFAIL = "dns_servfail"
    DNS_REFUSED = "dns_refused"
    DNS_BAD_RESPONSE = "dns_bad_response"
    DNS_FRAGMENTS_LOST = "dns_fragments_lost"
    DNS_TCP_FAILED = "dns_tcp_failed"
    TIMEOUT = "timeout"
    PMTU_BLACKHOLE = "pmtu_blackhole"
    CONNECT_REFUSED = "connect_refused"
    CONNECTION_RESET = "connection_reset"
    NETWORK_UNREACHABLE = "network_unreachable"
    HOST_UNREACHABLE = "host_unreachable"
    TLS_CERT_EXPIRED = "tls_cert_expired"
    TLS_HOSTNAME_MISMATCH = "tls_hostname_mismatch"
    TLS_UNTRUSTED = "tls_untrusted"
    TLS_HANDSHAKE_FAILED = "tls_handshake_failed"
    HTTP_STATUS = "http_status"
    PROTOCOL_ERROR = "protocol_error"
    ICMP_NOT_PERMITTED = "icmp_not_permitted"
    ICMP_NO_REPLY = "icmp_no_reply"
    CLIENT_CONFIG = "client_config"
    SOCKET_ERROR = "socket_error"
    INTERNAL_ERROR = "internal_error"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeError:
    kind: ErrorKind
    """What went wrong, from the closed set."""
    message: str
    """A human sentence; may quote what a remote peer sent. Made safe here, once: control
    characters escaped (`\\n`, `\\x1b`), at most 512 characters (probes/text.py)."""
    phase: str | None = None
    """Where it failed: `resolve`, or one of the kind's declared `phases` (`connect`, `tls`,
    ...); the handler sets it from the phases the probe completed when the probe did not."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "message", peer_text(self.message))

    def to_json(self) -> dict[str, str | None]:
        return {"kind": str(self.kind), "message": self.message, "phase": self.phase}

    def why(self) -> str:
        """`timeout in connect`: the kind and where, for tables, logs and one-line summaries."""
        return f"{self.kind} in {self.phase}" if self.phase else str(self.kind)


_progress: ContextVar[list[str] | None] = ContextVar("probe_progress", default=None)
"""The phases the running probe attempt has completed (probes/handler.py sets it), so that a
deadline that cuts the probe off still says which phase it was in."""


@contextlib.contextmanager
def recording_phases() -> Iterator[list[str]]:
    """Within it, `passed()` appends to the list yielded (the handler's view of an attempt)."""
    done: list[str] = []
    token = _progress.set(done)
    try:
        yield done
    finally:
        _progress.reset(token)


def passed(phase: str) -> None:
    """Record that the running probe completed `phase`; a no-op outside the handler."""
    done = _progress.get()
    if done is not None:
        done.append(phase)


@dataclass(frozen=True, slots=True, kw_only=True)
class HttpSpec:
    path: str = "/"
    """Request path for http2/http3."""
    expect_status: tuple[int, ...] = ()
    """Statuses that count as success; empty means any HTTP response is reachability."""


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsSpec:
    alpn: tuple[str, ...] = ("h2", "http/1.1")
    """ALPN offered by the tls probe (http2 always offers h2, http/1.1; http3 offers h3)."""
    client_cert: str | None = None
    client_key: str | None = None
    server_name: str | None = None
    """SNI and name to verify; defaults to the target host."""


ExpectationField = Literal["http_version", "alpn", "http3", "unauthenticated_status"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Expectation:
    """What AWS documents (or what is observed and noted as such) about an endpoint: read by
    parity, which lists it when *both* families differ from it (the verdict stays IPv6 against
    IPv4)."""

    field: ExpectationField
    """http_version ("1.1", "2"), alpn, http3 (served or not), unauthenticated_status."""
    value: str | bool | tuple[str, ...] | tuple[int, ...]
    """The expected value; a tuple means any of them (ALPN protocols, statuses)."""
    basis: str
    """aws_doc, or observed_not_documented; the catalog's evidence says where it comes from."""


@dataclass(frozen=True, slots=True, kw_only=True)
class RaceSpec:
    """The RFC 8305 timers of the `race` probe (config `race`, top level or per target)."""

    resolution_delay: float = 0.05
    """How long an A answer waits for the AAAA one before IPv4 is dialled (section 3)."""
    connection_attempt_delay: float = 0.25
    """The wait between starting one connection attempt and the next (section 5)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class IcmpSpec:
    """Per-target options of the icmp probe (config `icmp`)."""

    count: int = 3
    """Echo requests per probe, one at a time, `ProbeEnv.icmp_interval` apart (config
    `icmp.count`)."""

    sizes: tuple[int, ...] = ()
    """Whole IP packet sizes to echo with fragmentation forbidden, ascending; the largest
    answered is the family's path MTU. Empty: no path-MTU echoes."""


@dataclass(frozen=True, slots=True, kw_only=True)
class DnsSpec:
    """Per-target options of a name server's questions (config `dns`)."""

    large_name: str | None = None
    """The name of the large question (`dns.large.name`); None: the zone itself."""
    large_type: str = "DNSKEY"
    """Its type, a DNS type mnemonic (`dns.large.type`); the zone's DNSKEY by default."""
    edns_buffer: int = 4096
    """The EDNS UDP payload size the large question announces (`dns.edns_buffer`)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Target:
    """One endpoint to compare over IPv4 and IPv6, after catalog expansion."""

    name: str
    """Unique, from configuration; the `target` label."""
    service: str
    region: str
    """An AWS region, `global`, or NO_REGION ("none") when the configuration gives none."""
    host: str
    port: int = 443
    probes: tuple[ProbeKind, ...] = field(default_factory=kinds.default_names)
    plane: str = ""
    """"data" or "control" for catalog entries, "" for user targets."""
    http: HttpSpec = field(default_factory=HttpSpec)
    tls: TlsSpec = field(default_factory=TlsSpec)
    interval: float = 30.0
    timeout: float = 5.0
    families: tuple[Family, ...] = FAMILIES
    """The families this target is probed over (both unless configured otherwise)."""
    zone: str | None = None
    """Set for a name-server target: the dns probe asks this zone's SOA of the server itself."""
    source: str = "config"
    """Where the target came from: "config", "catalog", "route53-zone"."""
    ip_ranges_service: tuple[tuple[Family, str], ...] = ()
    """The ip-ranges.json service key (other than AMAZON) each family's address should be in,
    from the catalog: S3 for S3. An address outside it is a normal difference."""
    expectations: tuple[Expectation, ...] = ()
    """What the catalog says this endpoint does (HTTP version, ALPN, HTTP/3, statuses)."""
    max_addresses: int = 8
    """Transport probes dial every address of a family's answer, sorted, up to this many."""
    race: RaceSpec = field(default_factory=RaceSpec)
    """The Happy Eyeballs timers of the `race` probe, when `probes` lists it."""
    icmp: IcmpSpec = field(default_factory=IcmpSpec)
    """Options of the icmp probe."""
    dns: DnsSpec = field(default_factory=DnsSpec)
    """Options of a name server's questions (dns_large)."""
    resolvers: tuple[str, ...] | None = None
    """Set for a resolver target (probes [resolver]): the resolvers' addresses, each family
    asking those of its own; () means the vantage's own name servers. `host` is the name asked."""

    def expected_service(self, family: Family) -> str | None:
        return dict(self.ip_ranges_service).get(family)

    @property
    def sni(self) -> str:
        return self.tls.server_name or self.host


@dataclass(frozen=True, slots=True, kw_only=True)
class Resolution:
    """What resolving the target's name for one family produced (the dns probe's raw data)."""

    family: Family
    addresses: tuple[str, ...] = ()
    rcode: str = "NOERROR"
    ttl: int | None = None
    cname_chain: tuple[str, ...] = ()
    seconds: float = 0.0
    nameserver: str = ""
    nat64_synthesized: bool = False
    not_native: tuple[str, ...] = ()
    """AAAA records that cannot carry IPv6 to that host (IPv4-mapped or -compatible, ::,
    link-local, multicast): dropped from `addresses`, never dialled."""
    error: ProbeError | None = None


class Resolves(Protocol):
    """What a kind that resolves for itself needs of a resolver (probes/resolve.py's Resolver;
    tests script one)."""

    async def resolve(self, host: str, family: Family) -> Resolution: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeEnv:
    """What probes share and tests inject: trust anchors, resolver, clock, source addresses."""

    ssl_cafile: str | None = None
    clock: Clock = time.perf_counter
    source_addresses: Mapping[Family, str] = field(default_factory=dict)
    icmp_interval: float = 0.2
    ip_ranges: IpRanges | None = None
    """AWS's published ranges: each result's address is attributed to its prefix (None: not)."""
    samples: int = 1
    """Latency samples per address for icmp, tcp and tls (`probe run --samples`; serve: 1)."""
    resolver: Resolves | None = None
    """The configured resolver, for a kind that resolves for itself (`Kind.per_family` False:
    the race); None: such a kind fails with `client_config`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeRequest:
    target: Target
    family: Family
    address: str
    """IP literal of that family: probes connect to it and never resolve the name themselves."""
    timeout: float
    env: ProbeEnv
    resolution: Resolution | None = None
    families: tuple[Family, ...] = ()
    """For a kind that runs once over both families (`Kind.per_family` False): the families it
    may use, and `address` is empty."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Outcome:
    """What a probe module returns; the handler adds identity and total duration."""

    success: bool
    phases: Mapping[str, float] = field(default_factory=dict)
    error: ProbeError | None = None
    details: Details | None = None
    """What the endpoint presented, typed per probe kind; None when nothing was learnt."""
    duration: float | None = None
    """The latency to compare, when it is not the wall time of the probe (ICMP: mean RTT)."""
    family: Family | None = None
    address: str | None = None
    """A kind run once over both families: the family and address it ended on (the race's
    winner); None: the request's family, no address."""


@dataclass(frozen=True, slots=True, kw_only=True)
class AddressResult:
    """One address of a family's answer, as a transport probe found it."""

    address: str
    success: bool
    error: ProbeError | None
    duration_seconds: float
    """This address's latency (the median of its samples)."""
    phases: Mapping[str, float]
    aws: Attribution | None = None
    """Its published AWS prefix, or None."""
    duration_min_seconds: float | None = None
    """The fastest sample, when there were several."""
    details: Details | None = None
    """What this address presented (the result's `details` are the first address's)."""

    def to_json(self) -> dict[str, object]:
        return {
            "address": self.address,
            "success": self.success,
            "error": self.error.to_json() if self.error else None,
            "duration_seconds": self.duration_seconds,
            "phases": dict(self.phases),
            "aws": self.aws.to_json() if self.aws else None,
        }


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeResult:
    target: str
    probe: ProbeKind
    family: Family
    address: str | None
    success: bool
    duration_seconds: float
    """The probe's own time, resolution excluded (it is phase `resolve`)."""
    started: float
    """Unix time the probe began."""
    phases: Mapping[str, float] = field(default_factory=dict)
    """Named timings in seconds (medians over the addresses)."""
    error: ProbeError | None = None
    details: Details | None = None
    """What the endpoint presented, typed per probe kind; None when nothing was learnt."""
    skipped: str | None = None
    """Reason the probe was not run (family filtered out, vantage has no IPv6, ...)."""
    aws: Attribution | None = None
    """The published AWS prefix holding `address` (longest match, every service key of the
    prefixes holding it); None when it is in none, or there is no address."""
    addresses: tuple[AddressResult, ...] = ()
    """Every address dialled (transport probes); `address` is the first, sorted. The family
    succeeds only when every one did; duration and phases are their medians."""
    duration_min_seconds: float | None = None
    """The fastest latency sample of the family, when several were taken (`--samples`)."""
    note: str | None = None
    """What a person should know about the result (AAAA records dropped as not native)."""


FileStamp = tuple[str, int, int, int] | None
"""A file's identity for caching what was read from it: (path, size, mtime ns, inode)."""


def file_stamp(path: str | None) -> FileStamp:
    """Changes whenever the file is rewritten or replaced, so a cache keyed on it re-reads the
    file then (a CA bundle rotated in place, a restarted lab's new CA); None without a path or
    when it cannot be read (loading it will then say why)."""
    if not path:
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (path, st.st_size, st.st_mtime_ns, st.st_ino)
