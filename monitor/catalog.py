"""The shipped AWS catalog (configs/catalog.yml, generated from botocore) and its expansion.

The catalog adds AWS defaults and expectations for the selected services and regions; it never
restricts what a user may target. Shipped files are found whether installed or run from a checkout.
"""

from __future__ import annotations

import functools
import importlib.resources
from collections.abc import Sequence
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

import yaml

from probes import kinds
from probes.base import (
    FAMILIES,
    Expectation,
    ExpectationField,
    Family,
    HttpSpec,
    ProbeKind,
    Target,
)

GLOBAL = "global"
# Expectations parity reads: documented, or observed and said so. "not_documented" is not one.
READ_BASES = frozenset({"aws_doc", "observed_not_documented"})
EXPECTATION_FIELDS: tuple[ExpectationField, ...] = (
    "http_version",
    "alpn",
    "http3",
    "unauthenticated_status",
)


class CatalogError(ValueError):
    """A catalog selection that cannot be expanded; `key` is its place in the config file."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}")
        self.key = key
        self.message = message


def configs_dir() -> Traversable:
    """The shipped configs/: package data when installed, the checkout's folder otherwise."""
    try:
        return importlib.resources.files("monitor.configs")
    except ModuleNotFoundError:
        return Path(__file__).resolve().parent.parent / "configs"


def shipped(name: str) -> Traversable:
    return configs_dir().joinpath(name)


@functools.cache
def load_catalog() -> dict[str, Any]:
    data = yaml.safe_load(shipped("catalog.yml").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or "services" not in data:
        raise RuntimeError("the shipped catalog.yml is damaged: no 'services'")
    return data


def _target_name(service: str, kind: str, region: str) -> str:
    base = kind if kind.startswith(service) else f"{service}-{kind}"
    return f"{base}-{region}"


def expand_catalog(
    services_wanted: Sequence[str],
    regions: Sequence[str],
    planes: Sequence[str],
    *,
    interval: float,
    timeout: float,
    max_addresses: int = 8,
) -> list[Target]:
    """The catalog's endpoints of the chosen services, planes and regions, as targets.
    Raises CatalogError for an unknown service or a region none of them serves."""
    services = load_catalog()["services"]
    known = sorted(services)
    for i, name in enumerate(services_wanted):
        if name not in services:
            raise CatalogError(
                f"catalog.services[{i}]", f"unknown service {name!r} (known: {', '.join(known)})"
            )
    wanted_regions = set(regions)
    seen_regions: set[str] = set()
    targets: list[Target] = []
    for service in dict.fromkeys(services_wanted):
        for ep in services[service]["endpoints"]:
            if ep["plane"] not in planes:
                continue
            kind_names = kinds.names()
            probes: tuple[ProbeKind, ...] = tuple(
                p for p in ep.get("probes", kinds.default_names()) if p in kind_names
            )
            for region, host in sorted(ep["hosts"].items()):
                if region != GLOBAL and region not in wanted_regions:
                    continue
                seen_regions.add(region)
                targets.append(
                    Target(
                        name=_target_name(service, ep["kind"], region),
                        service=service,
                        region=region,
                        host=host,
                        port=int(ep.get("port", 443)),
                        probes=probes,
                        plane=ep["plane"],
                        http=HttpSpec(expect_status=tuple(ep.get("expect_status", ()))),
                        interval=interval,
                        timeout=timeout,
                        max_addresses=max_addresses,
                        source="catalog",
                        ip_ranges_service=_ip_ranges_service(ep),
                        expectations=expectations(ep.get("expect") or {}),
                    )
                )
    for i, region in enumerate(regions):
        if region not in seen_regions and services_wanted:
            raise CatalogError(
                f"catalog.regions[{i}]", f"{region!r} has no endpoint in the selected services"
            )
    return targets


def _ip_ranges_service(ep: dict[str, Any]) -> tuple[tuple[Family, str], ...]:
    """The service key per family; AMAZON is left out: every AWS prefix is AMAZON, so being
    outside it is already `address.in_aws_ranges`."""
    keys = ep.get("ip_ranges_service") or {}
    return tuple((f, str(keys[f])) for f in FAMILIES if keys.get(f) not in (None, "AMAZON"))


def expectations(expect: dict[str, Any]) -> tuple[Expectation, ...]:
    """The catalog's `expect` block, as what parity reads: documented or observed values only."""
    out: list[Expectation] = []
    for name in EXPECTATION_FIELDS:
        entry = expect.get(name) or {}
        value = entry.get("value")
        if entry.get("basis") not in READ_BASES or value is None or value == []:
            continue
        if isinstance(value, list):
            value = tuple(int(v) if name == "unauthenticated_status" else str(v) for v in value)
        elif not isinstance(value, bool):
            value = str(value)
        out.append(Expectation(field=name, value=value, basis=str(entry["basis"])))
    return tuple(out)


def user_target_defaults(
    service: str,
) -> tuple[tuple[tuple[Family, str], ...], tuple[Expectation, ...]]:
    """For a user's own endpoint labelled with a `user_targets` service of the catalog (alb,
    cloudfront): its ip-ranges service keys and documented expectations."""
    entry = (load_catalog().get("user_targets") or {}).get(service)
    if not entry:
        return (), ()
    return _ip_ranges_service(entry), expectations(entry.get("expect") or {})
