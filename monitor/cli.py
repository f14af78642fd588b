"""The `probe` command: run (one round, table or JSON, exit status), targets, serve, trace,
config init, lab up, ip-ranges update.

The exit statuses of `probe run` and their meanings: monitor/run/output.py, EXIT_STATUSES.
`--dry-run`, `targets` and `config init` send no packet. A closed pipe (`| head`) ends any
command quietly, with status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.resources
import ipaddress
import logging
import os
import re
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from monitor import __version__
from monitor.catalog import shipped
from monitor.config import (
    Config,
    ConfigError,
    did_you_mean,
    load_config,
    parse_duration,
    parse_period,
)
from monitor.engine.report import Report
from monitor.run.output import (
    EXIT_USAGE,
    exit_help,
    exit_status,
    plan_rows,
    write_json,
    write_plan,
    write_table,
)
from monitor.run.select import Selection, from_args
from monitor.sharding import Shard, parse_shard, shard_of
from probes import kinds
from probes.base import FAMILIES, Family, Target

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


_SECONDS = re.compile(r"\d+(\.\d+)?")


def _duration(text: str) -> float:
    """A duration on the command line: 5 is seconds, as a number in a config file is (a
    config file's quoted "5" stays an error: there a string needs its unit)."""
    try:
        return parse_duration(float(text) if _SECONDS.fullmatch(text) else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            str(exc).replace("use e.g.", "use seconds (5, 0.5) or e.g.")
        ) from None


def _samples(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        n = 0
    if not 1 <= n <= 20:
        raise argparse.ArgumentTypeError(f"bad --samples {text!r}: a whole number from 1 to 20")
    return n


def _period(text: str) -> float:
    """A duration of at most a day, like the configuration's `timeout` (bare seconds too)."""
    try:
        return parse_period(float(text) if _SECONDS.fullmatch(text) else text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _max_hops(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 64:
        raise argparse.ArgumentTypeError(f"bad --max-hops {text!r}: a whole number from 1 to 64")
    return int(text)


def _port(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"bad --port {text!r}: 1 to 65535")
    return int(text)


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
        "--config",
        metavar="FILE",
        help="YAML config (default: the shipped AWS catalog; `probe config init` writes one)",
    )
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME",
        help="only this target (repeatable); name servers of route53.zones are "
        "route53-ns-<zone>-<n>",
    )
    p.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="S",
        help="only targets of this service (repeatable), e.g. s3, alb, route53",
    )
    p.add_argument(
        "--region",
        action="append",
        default=[],
        metavar="R",
        help="only targets in this region (repeatable); `global` for global endpoints, "
        "`none` for targets without one",
    )
    p.add_argument(
        "--probe",
        action="append",
        default=[],
        choices=kinds.names(),
        metavar="KIND",
        help=f"only this probe kind (repeatable): one of {', '.join(kinds.names())}",
    )
    p.add_argument(
        "--family",
        choices=("ipv4", "ipv6", "both"),
        default="both",
        help="probe one family only (nothing is then compared) or both (default)",
    )
    p.add_argument(
        "--format",
        choices=("table", "json"),
        default="table",
        help="a table for people (default) or one JSON document",
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2, with a "did you mean" for a near
    miss among the choices: the usage block only with --help."""

    def error(self, message: str) -> NoReturn:
        m = _INVALID_CHOICE.fullmatch(message)
        if m:
            choices = re.findall(r"'([^']*)'", m["choices"])
            message = f"{m['head']}{did_you_mean(m['word'], choices)} (choose from {m['choices']})"
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


_INVALID_CHOICE = re.compile(
    r"(?P<head>.*invalid choice: '(?P<word>[^']*)') \(choose from (?P<choices>.*)\)"
)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="probe",
        description="Compare AWS endpoints over IPv6 and IPv4 from this vantage point.",
    )
    parser.add_argument(
        "--version",
        action="version",
        version=f"dualstack-monitor {__version__}",
        help="print the version and exit",
    )
    parser.add_argument(
        "--log-level",
        default="warning",
        choices=("debug", "info", "warning", "error"),
        help="what is logged to stderr (default warning; serve: info); debug also shows "
        "the libraries' own warnings",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser(
        "run",
        help="probe every target once and judge IPv6 against IPv4",
        description=exit_help() + ".",
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
    run.add_argument(
        "--timeout",
        type=_period,
        metavar="S",
        help="each probe's deadline, for every target: seconds (5) or a duration (500ms, 1m)",
    )
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

    config = sub.add_parser("config", help="configuration files")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    init = config_sub.add_parser(
        "init",
        help="write a commented starting configuration",
        description="Write a commented starting configuration: this host's name as the "
        "vantage, the AWS catalog, and commented examples of your own load balancer, "
        "CloudFront distribution and Route 53 zones. Without FILE it goes to stdout.",
    )
    init.add_argument("file", nargs="?", metavar="FILE", help="where to write it (default stdout)")
    init.add_argument("--force", action="store_true", help="overwrite FILE if it exists")

    serve = sub.add_parser(
        "serve",
        help="a long-running vantage point exporting Prometheus metrics",
        description="Probe on a schedule and serve /metrics, /healthz, /readyz, "
        "/api/v1/results, /api/v1/events and a status page. SIGHUP reloads the config; "
        "SIGTERM drains and exits.",
    )
    serve.add_argument(
        "--config", required=True, metavar="FILE", help="YAML config; SIGHUP reloads it"
    )
    serve.add_argument(
        "--listen",
        default=None,
        metavar="ADDR:PORT",
        help="an IP address of this host and a port, IPv6 in brackets: e.g. "
        "127.0.0.1:9851, [::1]:9851, [2001:db8::5]:9851; [::] and 0.0.0.0 for every "
        "address (default [::]:9851: every address, both families)",
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
    serve.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="text lines for people (default) or JSON lines for log pipelines",
    )
    serve.add_argument(
        "--web.read-header-timeout",
        dest="header_timeout",
        type=_duration,
        default=10.0,
        metavar="S",
        help="close a connection whose first request's headers (TLS handshake included) "
        "are not in within S (default 10s)",
    )
    serve.add_argument(
        "--web.idle-timeout",
        dest="idle_timeout",
        type=_duration,
        default=30.0,
        metavar="S",
        help="close a kept-alive connection without a complete request for S (default 30s)",
    )
    serve.add_argument(
        "--drain-timeout",
        type=_duration,
        default=10.0,
        metavar="S",
        help="on SIGTERM, how long probes in flight may finish: seconds (5) or a duration "
        "(default 10s)",
    )

    trace = sub.add_parser(
        "trace",
        help="the path of each family toward a target, hop by hop, and where IPv6 breaks",
        description="Trace toward each address of TARGET (a configured target's name, a host "
        "name or an IP address) over both families: each hop's address, round trips and AWS "
        "prefix, where each path stops, and the blame of a family whose path breaks where the "
        "other's passes (vantage, transit, aws_edge, endpoint). Exit status: 0 every path "
        "reached its address, 1 one did not, 2 a usage error or nothing to trace.",
    )
    trace.add_argument("target", metavar="TARGET", help="a target's name, a host name or an IP")
    trace.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config: its targets, resolver, source addresses, ip_ranges and `trace` "
        "defaults (default: the shipped one)",
    )
    trace.add_argument(
        "--family", choices=("ipv4", "ipv6", "both"), default="both", help="default both"
    )
    trace.add_argument(
        "--method",
        choices=("udp", "icmp", "tcp"),
        help="udp (unprivileged, the default of `trace.method`), icmp echoes, or tcp SYNs to "
        "the target's port (root or CAP_NET_RAW)",
    )
    trace.add_argument(
        "--max-hops",
        type=_max_hops,
        metavar="N",
        help="the highest hop limit tried, 1 to 64 (default `trace.max_hops`, 30); the "
        "trace's worst case is N x `trace.hop_timeout`",
    )
    trace.add_argument(
        "--address",
        action="append",
        default=[],
        metavar="IP",
        help="trace toward this address instead of resolving (repeatable)",
    )
    trace.add_argument(
        "--port", type=_port, metavar="PORT", help="the tcp method's port (default the target's)"
    )
    trace.add_argument("--format", choices=("table", "json"), default="table", help="default table")

    lab = sub.add_parser("lab", help="a local dual-stack lab of real servers on loopback")
    lab_sub = lab.add_subparsers(dest="lab_command", required=True)
    up = lab_sub.add_parser("up", help="start the lab, write its config, run until interrupted")
    up.add_argument(
        "--dir",
        default="dualstack-lab",
        metavar="DIR",
        help="where to write the CA, certificates and lab.yml (default ./dualstack-lab)",
    )

    up.add_argument(
        "--routed",
        action="store_true",
        help="instead: a routed path in network namespaces (root): vantage, vantage router, "
        "transit router, AWS edge router, endpoint, for `probe trace` and its blame",
    )
    fault = lab_sub.add_parser(
        "fault", help="drop IPv6 at one router of the running routed lab (root)"
    )
    fault.add_argument(
        "fault",
        choices=("none", "vantage", "transit", "aws_edge", "silent_hop"),
        help="where IPv6 is dropped: at the vantage, transit or AWS edge router; silent_hop: "
        "the transit router sends no time exceeded; none",
    )
    fault.add_argument("--dir", default="dualstack-lab", metavar="DIR", help="the lab's --dir")

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
        help="give up on the download after this long: seconds or a duration (default 30s)",
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
    families = tuple(f for f in chosen if f in cfg.families)
    if not families:
        raise ConfigError(
            f"--family {args.family}: {cfg.path} probes only {', '.join(cfg.families)}"
        )
    return families


def _selection(args: argparse.Namespace) -> Selection:
    return from_args(args.target, args.service, args.region, args.probe)


def single_family_warning(families: Sequence[Family]) -> str | None:
    """One family selected: every verdict is `skipped`, which deserves a word."""
    if len(families) != 1:
        return None
    return (
        f"only {families[0]} is probed (--family or `families`): every verdict is skipped, "
        "nothing is compared; --family both compares IPv6 with IPv4"
    )


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
    targets, cfg = _selection(args).apply(cfg, all_shards=all_shards)
    families = _families(args, cfg)
    if dry_run and (warning := single_family_warning(families)):
        print(f"probe: warning: {warning}", file=sys.stderr)
    rows = plan_rows(targets, families)
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


def _rerun(args: argparse.Namespace) -> list[str]:
    """`probe run` with what the user gave that decides how it probes: the next command."""
    words = ["probe", "run"]
    if args.config:
        words += ["--config", args.config]
    if args.resolver:
        host, port = args.resolver
        words += ["--resolver", f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    if args.ca_file:
        words += ["--ca-file", args.ca_file]
    if args.timeout:
        words += ["--timeout", f"{args.timeout:g}"]
    return words


T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is installed (a dependency on Linux): the commands that probe
    spend less CPU per probe on it (benchmarks/README.md). None: asyncio's own."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def run_async(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the loop of loop_factory()."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)


def cmd_run(args: argparse.Namespace) -> int:
    if args.dry_run:
        return cmd_targets(args, dry_run=True)
    from monitor.engine.check import check_sources  # the probe stack: only when probing

    cfg = _apply_overrides(_load(args), args)
    check_sources(cfg)
    selection = _selection(args)
    targets, cfg = selection.apply(cfg)
    families = _families(args, cfg)
    warning = single_family_warning(families)
    if warning:
        print(f"probe: warning: {warning}", file=sys.stderr)
    show_progress = args.format == "table" and sys.stderr.isatty() and not args.no_progress
    report = run_async(
        _run_with_progress(cfg, targets, families, show_progress, args.samples, selection)
    )
    status = exit_status(report)
    if report.offline is not None:
        # Every row would say the same nothing (both_failed): one line instead, on stderr,
        # so that a JSON document (which carries it too, as vantage_offline) stays parseable.
        print(f"probe: {report.offline}", file=sys.stderr)
        if args.format == "json":
            write_json(report, sys.stdout, status=status)
        return status
    if args.format == "json":
        if warning:
            report = dataclasses.replace(report, notes=(*report.notes, warning))
        write_json(report, sys.stdout, status=status)
    else:
        write_table(report, sys.stdout, rerun=_rerun(args), config=args.config)
    return status


async def _run_with_progress(
    cfg: Config,
    targets: Sequence[Target],
    families: Sequence[Family],
    show: bool,
    samples: int,
    selection: Selection,
) -> Report:
    from monitor.engine.round import run_round  # imports the probe stack only when probing

    if not show:
        return await run_round(
            cfg, targets, families=families, samples=samples, pick=selection.pick
        )
    from rich.console import Console
    from rich.progress import Progress

    # On stderr, which is a terminal here: stdout may be a pipe and gets the table only.
    with Progress(transient=True, console=Console(stderr=True)) as bar:
        task = bar.add_task("probing", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return await run_round(
            cfg,
            targets,
            families=families,
            progress=progress,
            samples=samples,
            pick=selection.pick,
        )


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
    return run_async(
        serve_forever(
            args.config,
            listen=listen,
            vantage=args.vantage,
            shard=args.shard,
            web_config=web_config,
            lifecycle=args.lifecycle,
            drain_timeout=args.drain_timeout,
            header_timeout=args.header_timeout,
            idle_timeout=args.idle_timeout,
        )
    )


LAB_EXTRA = ("hypercorn", "trustme")
LAB_EXTRA_MISSING = "probe lab up needs the lab extra: pip install 'dualstack-monitor[lab]'"


def cmd_lab(args: argparse.Namespace) -> int:
    # The lab's servers and PKI are an extra (pyproject.toml), not in the vantage image (the
    # lab package loads them, the routed lab's namespaces included).
    try:
        from monitor.lab import routed
        from monitor.lab.run import lab_up
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in LAB_EXTRA:
            raise
        print(LAB_EXTRA_MISSING, file=sys.stderr)
        return EXIT_USAGE

    if args.lab_command == "fault":
        return routed.fault(Path(args.dir), args.fault)
    if args.routed:
        return routed.up(Path(args.dir))
    status: int = lab_up(Path(args.dir))
    return status


def cmd_trace(args: argparse.Namespace) -> int:
    from monitor.run import trace  # the probe stack: only when probing

    cfg = _load(args)
    families: tuple[Family, ...] = FAMILIES if args.family == "both" else (args.family,)
    request = trace.Request(
        target=args.target,
        families=families,
        method=args.method,
        max_hops=args.max_hops,
        addresses=tuple(args.address),
        port=args.port,
    )
    result = run_async(trace.run(cfg, request))
    if args.format == "json":
        trace.write_json(result, sys.stdout)
    else:
        trace.write_table(result, sys.stdout)
    return trace.exit_status(result)


def cmd_ip_ranges(args: argparse.Namespace) -> int:
    from probes.ipranges import DEFAULT_URL, update

    status, line = update(Path(args.output), args.url or DEFAULT_URL, timeout=args.timeout)
    print(line, file=sys.stdout if status == 0 else sys.stderr)
    return status


def cmd_config(args: argparse.Namespace) -> int:
    from monitor.run.configinit import init_config

    return init_config(args.file, force=args.force, out=sys.stdout)


COMMANDS = {
    "run": cmd_run,
    "targets": cmd_targets,
    "serve": cmd_serve,
    "ip-ranges": cmd_ip_ranges,
    "config": cmd_config,
    "lab": cmd_lab,
    "trace": cmd_trace,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command != "serve":
        from monitor.serve.logs import LibraryFilter

        logging.basicConfig(
            level=args.log_level.upper(), format="%(levelname)s %(name)s: %(message)s"
        )
        # aioquic logs each failed handshake itself; the result already says it, as data.
        for handler in logging.getLogger().handlers:
            handler.addFilter(LibraryFilter(debug=args.log_level == "debug"))
    try:
        status = COMMANDS[args.command](args)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return status
    except ConfigError as exc:
        print(f"probe: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # The reader went away (`| head`): what it wanted it has. Point stdout at /dev/null
        # so the interpreter's last flush finds no pipe to complain about.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
