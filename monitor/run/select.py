"""What one `probe run` or `probe targets` covers: the --target, --service, --region and --probe
filters, applied alike to configured targets and to the name servers of route53.zones (whose
names, `route53-ns-<zone>-<n>`, are known before their hosts are). A filter that names nothing
in the configuration, or filters that together select nothing, are a usage error (exit 2).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeGuard

from monitor.config import (
    NAMESERVER_PREFIX,
    Config,
    ConfigError,
    did_you_mean,
    nameserver_target,
)
from probes import kinds as registry
from probes.base import ProbeKind, Target


@dataclass(frozen=True, slots=True, kw_only=True)
class Selection:
    """The filters of one command line; each empty filter lets everything through."""

    targets: tuple[str, ...] = ()
    services: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    probes: tuple[ProbeKind, ...] = ()

    def pick(self, t: Target) -> Target | None:
        """`t` with its probe kinds narrowed, or None when the filters leave nothing of it."""
        if self.targets and t.name not in self.targets:
            return None
        if self.services and t.service not in self.services:
            return None
        if self.regions and t.region not in self.regions:
            return None
        if not self.probes:
            return t
        kinds = tuple(p for p in t.probes if p in self.probes)
        return dataclasses.replace(t, probes=kinds) if kinds else None

    def apply(self, cfg: Config, *, all_shards: bool = False) -> tuple[list[Target], Config]:
        """The configured targets selected, of this shard only (`sharding`, `--shard`; every
        shard's with `all_shards`), and `cfg` keeping only the zones whose name servers may be
        selected (the others are not even looked up). Raises ConfigError."""
        self._check_known(cfg)
        picked = [
            p
            for t in cfg.targets
            if (all_shards or cfg.shard.owns(t.name)) and (p := self.pick(t)) is not None
        ]
        zones = tuple(
            z for z in cfg.zones if any(self.pick(t) is not None for t in _placeholders(cfg, z))
        )
        if not picked and not zones:
            where = (
                f" on shard {cfg.shard.index} of {cfg.shard.count}"
                if cfg.shard.sharded and not all_shards
                else ""
            )
            raise ConfigError(f"{self.describe()}: selects no target{where} in {cfg.path}")
        return picked, dataclasses.replace(cfg, zones=zones)

    def describe(self) -> str:
        """The filters as they were written on the command line."""
        parts = [
            f"{flag} {value}"
            for flag, values in (
                ("--target", self.targets),
                ("--service", self.services),
                ("--region", self.regions),
                ("--probe", self.probes),
            )
            for value in values
        ]
        return " ".join(parts) or "this configuration"

    def _check_known(self, cfg: Config) -> None:
        names = {t.name for t in cfg.targets}
        for name in self.targets:
            if name not in names and nameserver_zone(cfg, name) is None:
                raise ConfigError(
                    f"--target {name}: no such target in {cfg.path}"
                    f"{did_you_mean(name, sorted(names))} "
                    f"(`probe targets --config {cfg.path}` lists them{_ns_hint(cfg)})"
                )
        ns = [nameserver_target(cfg, z, 1, z) for z in cfg.zones]
        for flag, wanted, known in (
            ("--service", self.services, _values((*cfg.targets, *ns), "service")),
            ("--region", self.regions, _values((*cfg.targets, *ns), "region")),
        ):
            for value in wanted:
                if value not in known:
                    raise ConfigError(
                        f"{flag} {value}: no target has it in {cfg.path}"
                        f"{did_you_mean(value, known)} (there: {', '.join(known) or 'none'})"
                    )


def nameserver_zone(cfg: Config, name: str) -> str | None:
    """The zone of a name-server target name (`route53-ns-<zone>-<n>`, n from 1 to
    route53.max_nameservers), or None when `name` is not one of this configuration's."""
    for zone in cfg.zones:
        rest = name.removeprefix(f"{NAMESERVER_PREFIX}{zone}-")
        if rest != name and rest.isdigit() and 1 <= int(rest) <= cfg.route53.max_nameservers:
            return zone
    return None


def _placeholders(cfg: Config, zone: str) -> list[Target]:
    """Every name-server target the zone can have, before its NS set is known."""
    return [
        nameserver_target(cfg, zone, n, zone) for n in range(1, cfg.route53.max_nameservers + 1)
    ]


def _values(targets: Iterable[Target], attr: str) -> list[str]:
    return sorted({str(getattr(t, attr)) for t in targets})


def _ns_hint(cfg: Config) -> str:
    if not cfg.zones:
        return ""
    return f"; name servers are {NAMESERVER_PREFIX}<zone>-<n>, n from 1 to " + str(
        cfg.route53.max_nameservers
    )


def from_args(
    targets: Sequence[str], services: Sequence[str], regions: Sequence[str], probes: Sequence[str]
) -> Selection:
    kinds: tuple[ProbeKind, ...] = tuple(p for p in probes if _is_kind(p))
    return Selection(
        targets=tuple(targets), services=tuple(services), regions=tuple(regions), probes=kinds
    )


def _is_kind(p: str) -> TypeGuard[ProbeKind]:
    return p in registry.names()
