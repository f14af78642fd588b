"""`probe lab up`: start the lab, write a monitor config for it, say what each fault should show,
and run until interrupted. Also the expected verdicts, which the tests assert against.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from monitor.lab.loopback import ALIAS_HOST, FAULTS, MISSING_HOST, ZONE, Lab, LabFacts
from monitor.lab.pki import write_file
from probes import kinds

_V6_DEAD = "ipv6_failed"


def _verdicts(default: str, **over: str) -> dict[str, str]:
    return {p: over.get(p, default) for p in kinds.default_names()}


# fault -> probe -> verdict, for a vantage that may send ICMP (see expected()).
EXPECTED: dict[str, dict[str, str]] = {
    "healthy": _verdicts("ok"),
    "alias": _verdicts("ok"),
    "no_aaaa": _verdicts("ipv6_missing"),
    "v4_only": _verdicts("ok", tcp=_V6_DEAD, tls=_V6_DEAD, http2=_V6_DEAD, http3=_V6_DEAD),
    "cert_differs_v6": _verdicts("ok", tls="mismatch"),
    "rotated_v6": _verdicts("ok"),
    "expired_v6": _verdicts("ok", tls=_V6_DEAD, http2=_V6_DEAD, http3=_V6_DEAD),
    "v6_reset": _verdicts("ok", tls=_V6_DEAD, http2=_V6_DEAD, http3=_V6_DEAD),
    "v6_timeout": _verdicts("ok", tcp=_V6_DEAD, tls=_V6_DEAD, http2=_V6_DEAD, http3=_V6_DEAD),
    "nat64": _verdicts("ipv6_missing"),
    "v4_mapped": _verdicts("ipv6_missing"),
    "missing": {"dns": "both_failed"},
}
NAMESERVER_EXPECTED = dict.fromkeys(kinds.NAMESERVER_DEFAULT, "ok")
# Endpoints that also get a Happy Eyeballs race (no verdict): fault -> the family that wins.
RACE_WINNERS: dict[str, str] = {"healthy": "ipv6", "v6_timeout": "ipv4"}


def expected(name: str, probe: str, *, icmp_permitted: bool) -> str:
    """The verdict the lab should produce; without ICMP permission both families fail alike."""
    verdict = EXPECTED[name][probe] if name in EXPECTED else NAMESERVER_EXPECTED[probe]
    if probe == "icmp" and not icmp_permitted and verdict == "ok":
        return "both_failed"
    return verdict


def lab_config(
    lab: Lab | LabFacts, *, vantage: str = "lab", interval: str = "15s"
) -> dict[str, Any]:
    """A monitor config probing every lab endpoint through the lab's own DNS server."""
    targets: list[dict[str, Any]] = [
        {
            "name": ep.name,
            "service": "alb",
            "region": "us-east-1",
            "host": ep.host,
            "port": ep.port,
            "probes": [*kinds.default_names(), *(("race",) if ep.name in RACE_WINNERS else ())],
        }
        for ep in lab.endpoints
    ]
    healthy = lab.endpoint("healthy")
    # A CNAME to the healthy endpoint, whose certificate names the canonical host.
    targets.append(
        {
            "name": "alias",
            "service": "custom",
            "host": ALIAS_HOST,
            "port": healthy.port,
            "probes": list(kinds.default_names()),
            "tls": {"server_name": healthy.host},
        }
    )
    targets.append(
        {
            "name": "missing",
            "service": "alb",
            "region": "us-east-1",
            "host": MISSING_HOST,
            "probes": ["dns"],
        }
    )
    return {
        "vantage": vantage,
        "interval": interval,
        "timeout": "2s",
        "resolver": {"nameservers": ["::1", "127.0.0.1"], "port": lab.dns_port},
        # Absolute: the loader reads a relative path against the config's own folder, and the
        # lab's folder may have been given relative to the working one.
        "tls": {"ca_file": str(lab.ca_file.resolve())},
        "parity": {"slower_ratio": 3.0, "slower_margin": "250ms"},
        "route53": {"zones": [ZONE], "port": lab.dns_port},
        "targets": targets,
    }


def write_config(
    lab: Lab | LabFacts, path: Path, *, vantage: str = "lab", interval: str = "15s"
) -> Path:
    header = (
        "# Written by `probe lab up` for the lab running now; it is useless once the lab stops.\n"
        f"# Try: probe run --config {path}\n"
    )
    text = header + yaml.safe_dump(
        lab_config(lab, vantage=vantage, interval=interval), sort_keys=False
    )
    write_file(path, text.encode("utf-8"))
    return path


WHAT_WIDTH = 38
VERDICTS_WIDTH = 34


def expected_text(verdicts: dict[str, str]) -> str:
    """`all ok`, `all ipv6_missing`, or each verdict but ok with its probe kinds."""
    if len(set(verdicts.values())) == 1 and len(verdicts) == len(kinds.default_names()):
        return f"all {next(iter(verdicts.values()))}"
    by: dict[str, list[str]] = {}
    for probe, verdict in verdicts.items():
        if verdict != "ok":
            by.setdefault(verdict, []).append(probe)
    return "; ".join(f"{v}: {' '.join(ps)}" for v, ps in by.items()) or "all ok"


def describe(lab: Lab | LabFacts) -> str:
    """The banner: each endpoint, what is wrong with it and the verdicts it should get, in
    columns whose text wraps between words, never inside one."""
    rows: list[tuple[str, str, str, str]] = [
        (ep.name, str(ep.port), ep.description, expected_text(EXPECTED[ep.name]))
        for ep in lab.endpoints
    ]
    rows += [
        *(
            (f"{name}:race", "", "Happy Eyeballs race (probe race)", f"{family} wins")
            for name, family in RACE_WINNERS.items()
        ),
        ("alias", "", "CNAME to healthy", "all ok"),
        ("missing", "", "NXDOMAIN", "dns: both_failed"),
        ("route53-ns-*", str(lab.dns_port), f"the zone {ZONE} NS set", "all ok"),
    ]
    lines = [f"{'endpoint':<17} {'port':<6} {'what is wrong':<{WHAT_WIDTH}} expected verdicts"]
    for name, port, what, verdicts in rows:
        left = textwrap.wrap(what, WHAT_WIDTH, break_long_words=False, break_on_hyphens=False)
        right = textwrap.wrap(
            verdicts, VERDICTS_WIDTH, break_long_words=False, break_on_hyphens=False
        )
        for i in range(max(len(left), len(right))):
            cells = (
                name if i == 0 else "",
                port if i == 0 else "",
                left[i] if i < len(left) else "",
                right[i] if i < len(right) else "",
            )
            line = f"{cells[0]:<17} {cells[1]:<6} {cells[2]:<{WHAT_WIDTH}} {cells[3]}"
            lines.append(line.rstrip())
    return "\n".join(lines)


class LabDirError(Exception):
    """The --dir cannot be used safely; the message is one line for a person."""


def prepare_workdir(workdir: Path) -> Path:
    """The lab's folder, absolute: created private (0700) when missing; an existing one must be
    a real folder (not a symlink) of this user that nobody else may write to, since the lab
    writes private keys into it."""
    if not workdir.exists() and not workdir.is_symlink():
        workdir.parent.mkdir(parents=True, exist_ok=True)
        workdir.mkdir(mode=0o700)
        os.chmod(workdir, 0o700)  # whatever the umask
        return workdir.resolve()
    info = workdir.lstat()
    if stat.S_ISLNK(info.st_mode):
        raise LabDirError(f"{workdir} is a symbolic link: give the folder itself as --dir")
    if not stat.S_ISDIR(info.st_mode):
        raise LabDirError(f"{workdir} is not a folder")
    if info.st_uid != os.geteuid():
        raise LabDirError(
            f"{workdir} is owned by uid {info.st_uid}, not by you (uid {os.geteuid()}): "
            "use a folder of your own as --dir"
        )
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise LabDirError(
            f"{workdir} is writable by others (mode {stat.S_IMODE(info.st_mode):04o}): "
            "chmod go-w it or use another --dir"
        )
    return workdir.resolve()


async def _serve(workdir: Path) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):  # no signal handlers on Windows loops
            loop.add_signal_handler(sig, stop.set)
    async with Lab(workdir) as lab:
        path = write_config(lab, workdir / "lab.yml")
        print(
            f"dualstack lab up: DNS on [::1]:{lab.dns_port} and 127.0.0.1:{lab.dns_port}, "
            f"CA bundle {lab.ca_file}"
        )
        print(describe(lab))
        print(f"\nlab ready: config written to {path}")
        print(f"in another terminal:  probe run --config {path}")
        print("Ctrl-C stops the lab.", flush=True)
        await stop.wait()
    print("lab stopped", flush=True)


def lab_up(workdir: Path) -> int:
    try:
        workdir = prepare_workdir(workdir)
    except LabDirError as exc:
        print(f"probe lab up: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"probe lab up: {workdir}: {exc.strerror}", file=sys.stderr)
        return 2
    try:
        asyncio.run(_serve(workdir))
    except KeyboardInterrupt:
        pass
    except OSError as exc:
        print(f"probe lab up: {exc}", file=sys.stderr)
        return 1
    return 0


__all__ = [
    "EXPECTED",
    "FAULTS",
    "RACE_WINNERS",
    "expected",
    "lab_config",
    "lab_up",
    "write_config",
]
