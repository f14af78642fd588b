"""The registry of probe kinds: each kind is declared once, as a `Kind` at the end of its own
module, and everything else (dispatch, parity, scheduling, the exporter, the JSON schema, the
table, the docs) reads it here. Adding a kind is a module plus one line in `BUILTIN_MODULES`
(or one `register()` call, for a kind defined outside the package).

Importing this module loads no protocol library: the built-in kinds' modules are imported the
first time a declaration is asked for, not for their names.
"""

from __future__ import annotations

import enum
import importlib
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, Literal, TypeVar

BUILTIN_MODULES: Mapping[str, str] = {
    "dns": "probes.dns",
    "dns_tcp": "probes.dnstcp",
    "dns_large": "probes.dnslarge",
    "icmp": "probes.icmp",
    "tcp": "probes.tcp",
    "tls": "probes.tls",
    "http2": "probes.http2",
    "http3": "probes.http3",
    "resolver": "probes.resolvers",
    "race": "probes.race",
    "trace": "probes.trace",
}
"""The kinds the package ships, each name with the module that declares it (`KIND`), in the
order tables and reports list them."""


class Role(enum.StrEnum):
    """What a difference in one details field between the families means."""

    SIGNIFICANT = "significant"
    """The IPv6 endpoint presents something else: the verdict is `mismatch`."""
    NORMAL = "normal"
    """Listed, never a mismatch: variation across a healthy fleet (a rotated leaf, a server)."""
    NOT_COMPARED = "not_compared"
    """Differs between families by nature (A against AAAA), or says nothing about parity."""


D = TypeVar("D")


# Not slotted: `Compared[T](...)` sets __orig_class__, which a frozen slotted class refuses.
@dataclass(frozen=True)
class Compared(Generic[D]):
    """One field of a details type and what a difference in it between the families means."""

    field: str
    """The difference's name in reports (e.g. certificate.issuer)."""
    get: Callable[[D], object]
    """Reads the compared value from the details (it may normalise, e.g. 200 -> 2xx)."""
    role: Role
    covers: tuple[str, ...] = ()
    """The details fields this row accounts for (dotted for nested ones); default: `field`."""

    def fields(self) -> tuple[str, ...]:
        return self.covers or (self.field,)


class Cost(enum.StrEnum):
    """How a kind loads the one event loop, so `probe run` can stage its probes."""

    LIGHT = "light"
    """A packet or two (dns, icmp, tcp): run first and wide."""
    HEAVY = "heavy"
    """Handshakes that cost CPU (tls, http2, http3): run after the light ones, narrower."""
    APART = "apart"
    """Timed as one client, whose timers the others' load would skew (race): run last, wide."""


@dataclass(frozen=True, slots=True, kw_only=True)
class KindMetric:
    """A metric a kind exports beyond the common ones (monitor/serve/metrics.py builds its row
    from the registry). Labels: the target's, `probe` unless `probe_label` is False, `family`
    unless `family_label` is False, then `by` when `value` gives a mapping. Label values come
    from the configuration, or from a closed set the value function checks: never a peer's."""

    name: str
    """`dualstack_...`, without `_total` for a counter (prometheus_client adds it)."""
    help: str
    value: Callable[[Any], float | Mapping[str, float] | None]
    """From a result of the kind (`ProbeResult`, never a skipped one): a gauge's value (None: no
    series; a mapping: one series per key, label `by`), or what a result adds to a counter
    (a number, None: nothing)."""
    by: str = ""
    probe_label: bool = True
    family_label: bool = True
    type: Literal["gauge", "counter"] = "gauge"
    """A counter has a series per family for every target listing the kind, 0 until counted."""


ProbeFn = Callable[[Any], Awaitable[Any]]
"""`async def probe(req: ProbeRequest) -> Outcome` (probes/base.py, which imports this module for
a target's default kinds, so the types are not named here)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Kind:
    """Everything the monitor knows about one probe kind."""

    name: str
    """The kind's name in configuration, labels, JSON and tables (`dns`, `tcp`, ...)."""
    probe: ProbeFn
    """Runs the kind once for one family and one address, or once over both families when
    `per_family` is False (`probes.handler` owns the deadline, the address pinning and crash
    isolation around it)."""
    summary: str
    """One line for `docs/probes.md` and `--help`."""
    details: tuple[type[Any], ...] = ()
    """The details types a successful probe reports (frozen dataclasses)."""
    compared: Mapping[type[Any], tuple[Compared[Any], ...]] = field(default_factory=dict)
    """For each details type, every field and what a difference in it means for parity."""
    phases: tuple[str, ...] = ()
    """The phase names its results time (beside `resolve`, which the handler adds)."""
    transport: bool = True
    """Reaching the family's address: a success is evidence that the vantage's IPv6 works."""
    cost: Cost = Cost.LIGHT
    sampled: bool = False
    """Its latency may be sampled several times (`probe run --samples`)."""
    per_address: bool = True
    """Dials every address of the family's answer; False: asks once (dns)."""
    per_family: bool = True
    """Runs once per family and is judged by parity; False: runs once per target over both
    families, as one client does (race), resolving for itself (`ProbeEnv.resolver`): one result,
    filed under the family it ended on (`Outcome.family`), and no verdict."""
    default: bool = True
    """A target that lists no probes gets it (a built-in kind; False: only when listed)."""
    metrics: tuple[KindMetric, ...] = ()
    """Its metrics beyond the common ones; a declaration shared by kinds (http2 and http3) is
    one metric over both."""


_KINDS: dict[str, Kind] = {}
_ROWS: dict[type[Any], tuple[Compared[Any], ...]] = {}
"""`of_details` remembered (parity asks for every pair); emptied when a kind comes or goes."""


def register(kind: Kind) -> Kind:
    """Add a kind (a module's `KIND = register(Kind(...))`); a second kind of one name is an
    error, the same declaration again is not (a module imported twice)."""
    known = _KINDS.get(kind.name)
    if known is not None and known is not kind:
        raise ValueError(f"probe kind {kind.name!r} is registered already")
    if kind.name in BUILTIN_MODULES and kind.default is (kind.name in OPT_IN):
        raise ValueError(f"probe kind {kind.name!r}: its `default` disagrees with OPT_IN")
    _KINDS[kind.name] = kind
    _ROWS.clear()
    return kind


def unregister(name: str) -> None:
    """Forget a kind registered with `register` (tests that add a kind of their own)."""
    if name in BUILTIN_MODULES:
        raise ValueError(f"{name!r} is a built-in probe kind")
    _KINDS.pop(name, None)
    _ROWS.clear()


def names() -> tuple[str, ...]:
    """Every kind's name, the built-in ones first in their order: no protocol is imported."""
    return (*BUILTIN_MODULES, *(n for n in _KINDS if n not in BUILTIN_MODULES))


NAMESERVER_ONLY: tuple[str, ...] = ("dns_tcp", "dns_large")
"""Kinds that ask a name server about its zone: only a target with a `zone` may list them."""

RESOLVER = "resolver"
"""The kind of a resolver target, which asks its resolvers, not its host: listed alone."""

OPT_IN: frozenset[str] = frozenset({"race", "trace", *NAMESERVER_ONLY, RESOLVER})
"""The built-in kinds declared with `default=False` (a host target runs them only when it lists
them), named here so that a target's defaults are known without importing every protocol
(`register` checks that the two agree)."""


def default_names() -> tuple[str, ...]:
    """The kinds a host target gets when its configuration lists none (`Kind.default`)."""
    return tuple(n for n in BUILTIN_MODULES if n not in OPT_IN)


NAMESERVER_DEFAULT: tuple[str, ...] = ("dns", "dns_tcp", "dns_large", "icmp", "tcp")
"""The probes of a Route 53 zone's name servers unless `route53.probes` says otherwise: the
light ones (a name server serves DNS, not HTTPS), its SOA over UDP and over TCP, and a large
answer over UDP."""


def get(name: str) -> Kind:
    """The declaration of kind `name` (importing its module the first time); KeyError if none."""
    kind = _KINDS.get(name)
    if kind is None and name in BUILTIN_MODULES:
        importlib.import_module(BUILTIN_MODULES[name])
        kind = _KINDS.get(name)
    if kind is None:
        raise KeyError(name)
    return kind


def kinds() -> tuple[Kind, ...]:
    """Every declaration, in `names()` order (imports the built-in protocols)."""
    return tuple(get(n) for n in names())


def of_details(details_type: type[Any]) -> tuple[Compared[Any], ...]:
    """What parity compares for a details type, from the kind that declares it."""
    rows = _ROWS.get(details_type)
    if rows is None:
        found = (k.compared[details_type] for k in kinds() if details_type in k.compared)
        rows = _ROWS[details_type] = next(found, ())
    return rows


def details_types() -> tuple[type[Any], ...]:
    """Every details type some kind reports, each once, in declaration order."""
    seen: dict[type[Any], None] = {}
    for kind in kinds():
        seen.update(dict.fromkeys(kind.details))
    return tuple(seen)


SIG, NORMAL, NOT = Role.SIGNIFICANT, Role.NORMAL, Role.NOT_COMPARED
"""Short names for the rows of the `compared` tables."""
