"""The `probe` command: run (one round, table or JSON, exit status), targets, lab up,
ip-ranges update.

Exit status: 0 fine, 1 IPv6 worse than IPv4 somewhere, 2 usage or configuration error,
3 this vantage has no working IPv6 (no route, or broken beyond it).
`--dry-run` and `targets` send no packet.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.resources
import ipaddress
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from monitor import __version__
from monitor.catalog import shipped
from monitor.config import NAMESERVER_PREFIX, Config, ConfigError, load_config, parse_duration
from monitor.engine.report import Report
from monitor.run.output import (
    EXIT_USAGE,
    exit_status,
    plan_rows,
    write_json,
    write_plan,
    write_table,
)
from monitor.sharding import Shard, parse_shard, shard_of
from probes.base import FAMILIES, PROBE_KINDS, Family, Target

DEFAULT_CONFIG = "default.yml"


def parse_resolver(text: str) -> tuple[str, int]:
    """'::1', '[::1]:5353', '127.0.0.1', '127.0.0.1:5353' -> (address, port)."""
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise argparse.ArgumentTypeError(f"bad resolver {text!r}")
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad resolver {text!r}: give an IP address, e.g. ::1 or [::1]:5353"
        ) from None
    if not 0 < port < 65536:
        raise argparse.ArgumentTypeError(f"bad resolver port in {text!r}")
    return host, port


def _duration(text: str) -> float:
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _samples(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 20:
        raise argparse.ArgumentTypeError(f"bad --samples {text!r}: a whole number from 1 to 20")
    return n


def _shard(text: str) -> Shard:
    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_shard(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shard",
        type=_shard,
        metavar="I/N",
        help="probe only shard I (0 to N-1) of the targets, assigned by a hash of their name; "
        "overrides `sharding` of the config (docs/scale.md)",
    )


def _add_selection(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", metavar="FILE", help="YAML config (default: the shipped AWS catalog)"
    )
    p.add_argument("--target", action="append", default=[], metavar="NAME")
    p.add_argument("--service", action="append", default=[], metavar="S")
    p.add_argument("--region", action="append", default=[], metavar="R")
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        choices=PROBE_KINDS,
        metavar="KIND",
        help=f"one of {', '.join(PROBE_KINDS)}",
    )
    p.add_argument("--family", choices=("ipv4", "ipv6", "both"), default="both")
    p.add_argument("--format", choices=("table", "json"), default="table")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="probe",
        description="Compare AWS endpoints over IPv6 and IPv4 from this vantage point.",
    )
    parser.add_argument("--version", action="version", version=f"dualstack-monitor {__version__}")
    parser.add_argument(
        "--log-level", default="warning", choices=("debug", "info", "warning", "error")
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="probe every target once and judge IPv6 against IPv4",
        description="Exit status: 0 fine, 1 IPv6 worse than IPv4 somewhere, "
        "2 usage or configuration error, 3 this vantage has no working IPv6 "
        "(no route, or every target fails over IPv6 here while IPv4 works).",
    )
    _add_selection(run)
    _add_shard(run)
    run.add_argument(
        "--resolver",
        type=parse_resolver,
        metavar="ADDR[:PORT]",
        help="DNS server to use instead of the configured or system one",
    )
    run.add_argument("--ca-file", metavar="PEM", help="extra trust anchors for TLS")
    run.add_argument("--timeout", type=_duration, metavar="S", help="per-probe timeout")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="print what would be probed and exit; sends no packet",
    )
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument(
        "--samples",
        type=_samples,
        default=3,
        metavar="N",
        help="latency samples per address for tcp, tls and icmp, 50 ms apart within the "
        "probe's timeout; the latency compared is their median (default 3)",
    )

    targets = sub.add_parser("targets", help="list the expanded targets; sends no packet")
    _add_selection(targets)
    _add_shard(targets)
    targets.add_argument(
        "--all-shards",
        action="store_true",
        help="list every target with the shard that probes it, not only this shard's",
    )

    serve = sub.add_parser(
        "serve",
        help="a long-running vantage point exporting Prometheus metrics",
        description="Probe on a schedule and serve /metrics, /healthz, /readyz, "
        "/api/v1/results and a status page. SIGHUP reloads the config; SIGTERM drains and exits.",
    )
    serve.add_argument("--config", required=True, metavar="FILE")
    serve.add_argument(
        "--listen",
        default=None,
        metavar="ADDR:PORT",
        help="[::1]:9851, [::]:9851, 127.0.0.1:9851 or 0.0.0.0:9851 "
        "(default [::]:9851: every address, both families)",
    )
    serve.add_argument("--vantage", metavar="NAME", help="overrides `vantage` of the config")
    _add_shard(serve)
    serve.add_argument(
        "--web.config.file",
        dest="web_config",
        metavar="FILE",
        help="TLS and basic auth, in the format Prometheus exporters share",
    )
    serve.add_argument(
        "--web.enable-lifecycle",
        dest="lifecycle",
        action="store_true",
        help="enable POST /-/reload",
    )
    serve.add_argument("--log-format", choices=("text", "json"), default="text")
    serve.add_argument(
        "--drain-timeout",
        type=_duration,
        default=10.0,
        metavar="S",
        help="on SIGTERM, how long probes in flight may finish (default 10s)",
    )

    lab = sub.add_parser("lab", help="a local dual-stack lab of real servers on loopback")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    up = lab_sub.add_parser("up", help="start the lab, write its config, run until interrupted")
    up.add_argument(
        "--dir",
        default="dualstack-lab",
        metavar="DIR",
        help="where to write the CA, certificates and lab.yml (default ./dualstack-lab)",
    )

    ip_ranges = sub.add_parser("ip-ranges", help="AWS's published address ranges")
    ip_ranges_sub = ip_ranges.add_subparsers(dest="ip_ranges_command", required=True)
    ip_update = ip_ranges_sub.add_parser(
        "update",
        help="download ip-ranges.json and write it to FILE if newer",
        description="Download, check (shape, every prefix, syncToken newer than FILE's) and "
        "write FILE atomically. Exit status: 0 written or already current (nothing written), "
        "1 the download failed, 2 invalid or older than FILE, or FILE cannot be written.",
    )
    ip_update.add_argument(
        "--output", required=True, metavar="FILE", help="the ranges file to create or refresh"
    )
    ip_update.add_argument(
        "--url",
        metavar="URL",
        help="where to download from (default https://ip-ranges.amazonaws.com/ip-ranges.json)",
    )
    ip_update.add_argument(
        "--timeout",
        type=_duration,
        default=30.0,
        metavar="S",
        help="give up on the download after this long (default 30s)",
    )
    return parser


def _load(args: argparse.Namespace) -> Config:
    if args.config:
        return load_config(args.config)
    # as_file: a real path even when the package is installed as a zip.
    with importlib.resources.as_file(shipped(DEFAULT_CONFIG)) as path:
        return load_config(path)


def _families(args: argparse.Namespace, cfg: Config) -> tuple[Family, ...]:
    chosen: tuple[Family, ...] = FAMILIES if args.family == "both" else (args.family,)
    return tuple(f for f in chosen if f in cfg.families)


def select(cfg: Config, args: argparse.Namespace, *, all_shards: bool = False) -> list[Target]:
    """The targets the filters pick, of this shard only (all of them with `all_shards`)."""
    names = {t.name for t in cfg.targets}
    for name in args.target:
        if name not in names:
            raise ConfigError(f"--target {name}: no such target in {cfg.path}")
    picked = [
        t
        for t in cfg.targets
        if (all_shards or cfg.shard.owns(t.name))
        and (not args.target or t.name in args.target)
        and (not args.service or t.service in args.service)
        and (not args.region or t.region in args.region)
    ]
    if args.probe:
        picked = [
            dataclasses.replace(t, probes=tuple(p for p in t.probes if p in args.probe))
            for t in picked
        ]
    return picked


def select_zones(cfg: Config, args: argparse.Namespace) -> Config:
    """The filters apply to the name servers of route53.zones too (service route53, region
    global, names route53-ns-<zone>-<n>)."""
    keep = (
        (not args.service or "route53" in args.service)
        and (not args.region or "global" in args.region)
        and (not args.target or any(n.startswith(NAMESERVER_PREFIX) for n in args.target))
    )
    route53 = cfg.route53
    if args.probe:
        probes = [p for p in route53.probes if p in args.probe]
        keep = keep and bool(probes)
        route53 = route53.model_copy(update={"probes": probes})
    return dataclasses.replace(cfg, zones=cfg.zones if keep else (), route53=route53)


def _apply_overrides(cfg: Config, args: argparse.Namespace) -> Config:
    if getattr(args, "shard", None):
        cfg = dataclasses.replace(cfg, shard=args.shard)
    if getattr(args, "resolver", None):
        host, port = args.resolver
        cfg = dataclasses.replace(cfg, nameservers=(host,), resolver_port=port)
    if getattr(args, "ca_file", None):
        if not Path(args.ca_file).is_file():
            raise ConfigError(f"--ca-file: no such file {args.ca_file!r}")
        cfg = dataclasses.replace(cfg, ca_file=str(Path(args.ca_file).resolve()))
    if getattr(args, "timeout", None):
        timeout: float = args.timeout
        targets = tuple(dataclasses.replace(t, timeout=timeout) for t in cfg.targets)
        cfg = dataclasses.replace(cfg, timeout=timeout, targets=targets)
    return cfg


def cmd_targets(args: argparse.Namespace, *, dry_run: bool = False) -> int:
    cfg = _apply_overrides(_load(args), args)
    all_shards = bool(getattr(args, "all_shards", False))
    targets = select(cfg, args, all_shards=all_shards)
    rows = plan_rows(targets, _families(args, cfg))
    shard = cfg.shard
    if all_shards or shard.sharded:
        for row in rows:
            row["shard"] = shard_of(row["target"], shard.count)
    if all_shards:
        where = f"{shard.count} shards" if shard.sharded else "1 shard"
    else:
        where = f"shard {shard.index} of {shard.count}" if shard.sharded else ""
    title = f"{'dry run: ' if dry_run else ''}{cfg.path} (vantage {cfg.vantage}" + (
        f", {where})" if where else ")"
    )
    write_plan(rows, sys.stdout, fmt=args.format, title=title)
    if cfg.zones:
        print(
            f"route53 zones {', '.join(cfg.zones)}: name servers are found at run time"
            + (" (and assigned to shards by name)" if shard.sharded else ""),
            file=sys.stderr,
        )
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return cmd_targets(args, dry_run=True)
    cfg = _apply_overrides(_load(args), args)
    targets = select(cfg, args)
    cfg = select_zones(cfg, args)
    families = _families(args, cfg)
    show_progress = args.format == "table" and sys.stderr.isatty() and not args.no_progress
    report = asyncio.run(_run_with_progress(cfg, targets, families, show_progress, args.samples))
    if args.format == "json":
        write_json(report, sys.stdout)
    else:
        write_table(report, sys.stdout)
    return exit_status(report)


async def _run_with_progress(
    cfg: Config, targets: Sequence[Target], families: Sequence[Family], show: bool, samples: int
) -> Report:
    from monitor.engine.round import run_round  # imports the probe stack only when probing

    if not show:
        return await run_round(cfg, targets, families=families, samples=samples)
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("probing", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return await run_round(cfg, targets, families=families, progress=progress, samples=samples)


def cmd_serve(args: argparse.Namespace) -> int:
    from monitor.serve import logs
    from monitor.serve.main import serve_forever
    from monitor.web.server import DEFAULT_LISTEN, parse_listen
    from monitor.web.webconfig import load_web_config

    logs.setup("info" if args.log_level == "warning" else args.log_level, args.log_format)
    listen = args.listen or DEFAULT_LISTEN
    try:
        parse_listen(listen)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    web_config = load_web_config(args.web_config) if args.web_config else None
    return asyncio.run(
        serve_forever(
            args.config,
            listen=listen,
            vantage=args.vantage,
            shard=args.shard,
            web_config=web_config,
            lifecycle=args.lifecycle,
            drain_timeout=args.drain_timeout,
        )
    )


def cmd_lab(args: argparse.Namespace) -> int:
    from monitor.lab.run import lab_up

    status: int = lab_up(Path(args.dir))
    return status


def cmd_ip_ranges(args: argparse.Namespace) -> int:
    from probes.ipranges import DEFAULT_URL, update

    status, line = update(Path(args.output), args.url or DEFAULT_URL, timeout=args.timeout)
    print(line, file=sys.stdout if status == 0 else sys.stderr)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        logging.basicConfig(
            level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
        )
        # aioquic logs each failed handshake itself; the result already says it, as data.
        logging.getLogger("quic").setLevel(max(logging.ERROR, logging.getLogger().level))
    try:
        if args.command == "run":
            return cmd_run(args)
        if args.command == "targets":
            return cmd_targets(args)
        if args.command == "serve":
            return cmd_serve(args)
        if args.command == "ip-ranges":
            return cmd_ip_ranges(args)
        return cmd_lab(args)
    except ConfigError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
