"""Which of AWS's published address ranges (ip-ranges.json) holds an address: prefix, region,
network border group and service keys. Stdlib only (it imports no other project module),
so any layer may use it; it answers from AWS's list, which says nothing of who serves an address.

One table per family: a dict per prefix length {network as int: Attribution}, probed from the
longest length present to the shortest. Published prefixes nest (two prefixes holding one address
hold each other), so the services of *every* prefix holding an address are the services of its
longest match and of that match's ancestors: they are merged once, at load, into that prefix's
`Attribution`, and a lookup stops at its first hit and returns the shared, prebuilt result.
"""

from __future__ import annotations

import functools
import importlib.resources
import ipaddress
import json
import os
import re
import secrets
import socket
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

__all__ = [
    "DEFAULT_URL",
    "SHIPPED_SOURCE",
    "Attribution",
    "IpRanges",
    "IpRangesError",
    "load",
    "parse",
    "update",
]

DEFAULT_URL = "https://ip-ranges.amazonaws.com/ip-ranges.json"
SHIPPED_SOURCE = "shipped snapshot"
# The package-data path, relative to the `probes` package.
_SHIPPED = "data/aws-ip-ranges.json"
# Today's file is 2.6 MB; a hundredfold is not a ranges file but a wrong URL or a runaway server.
MAX_DOWNLOAD_BYTES = 256 * 1024 * 1024
# The format AWS has used since it began publishing, e.g. 2026-08-22-15-17-05 (UTC).
_CREATE_DATE = re.compile(r"\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2}\Z")
_DIGITS = re.compile(r"[0-9]+\Z")

# (list key, prefix key, network class, family name) for each family in the file.
_FAMILIES: tuple[tuple[str, str, type[ipaddress.IPv4Network | ipaddress.IPv6Network], str], ...] = (
    ("prefixes", "ip_prefix", ipaddress.IPv4Network, "IPv4"),
    ("ipv6_prefixes", "ipv6_prefix", ipaddress.IPv6Network, "IPv6"),
)


MEMO_SIZE = 65536
"""Addresses whose attribution an IpRanges remembers (then it forgets them all)."""


class IpRangesError(ValueError):
    """A ranges file that cannot be used. The message is one line naming the file (or URL) and
    what is wrong, e.g. `ip-ranges FILE: prefixes[12].ip_prefix: '10.0.0.300/8' is not an IPv4
    network (...)`."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Attribution:
    """Where an address sits in AWS's published ranges."""

    prefix: str
    """The longest published prefix holding the address, as the file writes it: `52.95.0.0/20`."""
    region: str
    """That prefix's `region`, e.g. `us-east-1`, or `GLOBAL` for CloudFront and the like."""
    network_border_group: str
    """That prefix's `network_border_group`, e.g. `us-east-1` or `us-east-1-bos-1`."""
    services: tuple[str, ...]
    """Sorted, without repeats: the `service` keys of every published prefix of any length that
    holds the address, e.g. `("AMAZON", "S3")`. `AMAZON` covers all of AWS's address space."""

    def to_json(self) -> dict[str, object]:
        return {
            "prefix": self.prefix,
            "region": self.region,
            "network_border_group": self.network_border_group,
            "services": list(self.services),
        }


# For one family, longest length first: (mask for that length, {network int: Attribution}).
_Table = tuple[tuple[int, dict[int, Attribution]], ...]


class IpRanges:
    """A loaded ip-ranges.json: longest-prefix lookup plus the file's identity.

    Built from the parsed JSON document; `IpRangesError` when it is not a ranges file. A prefix
    listed more than once (once per service key, as AWS does) is one prefix whose services are
    merged; if its listings disagreed on region or border group, the first one listed would win
    (AWS's file has no such case)."""

    __slots__ = (
        "_count",
        "_memo",
        "_regions",
        "_v4",
        "_v6",
        "create_date",
        "source",
        "sync_token",
    )

    sync_token: str
    """`syncToken`: the publication time in Unix seconds, as a string of digits."""
    create_date: str
    """`createDate`, e.g. `2026-08-22-15-17-05` (UTC)."""
    source: str
    """The file's path or URL, or `shipped snapshot`."""

    def __init__(self, document: Mapping[str, Any], *, source: str) -> None:
        self.source = source
        if not isinstance(document, Mapping):
            self._fail(f"top level is {_kind(document)}, not an object")
        token = document.get("syncToken")
        if not isinstance(token, str) or not _DIGITS.match(token):
            self._fail(f"syncToken: {token!r} is not a string of digits")
        date = document.get("createDate")
        if not isinstance(date, str) or not _CREATE_DATE.match(date):
            self._fail(f"createDate: {date!r} is not a date like '2026-08-22-15-17-05'")
        self.sync_token = token
        self.create_date = date
        self._count = 0
        self._memo: dict[str, Attribution | None] = {}
        """Addresses looked up before: a vantage asks about the same few on every probe."""
        regions: dict[str, set[str]] = {}
        tables = [self._table(document, family, regions) for family in _FAMILIES]
        self._v4, self._v6 = tables
        self._regions = {service: frozenset(r) for service, r in regions.items()}

    def _fail(self, what: str) -> NoReturn:
        raise IpRangesError(_one_line(f"ip-ranges {self.source}: {what}"))

    def _table(
        self,
        document: Mapping[str, Any],
        family: tuple[str, str, type[ipaddress.IPv4Network | ipaddress.IPv6Network], str],
        regions: dict[str, set[str]],
    ) -> _Table:
        list_key, prefix_key, network_class, family_name = family
        entries = document.get(list_key)
        if not isinstance(entries, list):
            self._fail(f"{list_key}: {_kind(entries)}, not a list")
        bits = 32 if family_name == "IPv4" else 128
        af = socket.AF_INET if family_name == "IPv4" else socket.AF_INET6
        fields = (prefix_key, "region", "service", "network_border_group")
        # (length, network int) -> (prefix as published, region, border group, own service keys)
        found: dict[tuple[int, int], tuple[str, str, str, set[str]]] = {}
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict):
                self._fail(f"{list_key}[{i}]: {_kind(entry)}, not an object")
            values: list[Any] = [entry.get(key) for key in fields]
            text, region, service, border = values
            if not all(isinstance(value, str) and value for value in values):
                key, value = next(
                    (k, v)
                    for k, v in zip(fields, values, strict=True)
                    if not isinstance(v, str) or not v
                )
                self._fail(f"{list_key}[{i}].{key}: {value!r} is not a non-empty string")
            at = _network(text, af, bits)
            if at is None:  # not in the usual form: ipaddress decides, and says why not
                try:
                    network = network_class(text, strict=True)
                except ValueError as exc:
                    self._fail(
                        f"{list_key}[{i}].{prefix_key}: {text!r} is not an {family_name} "
                        f"network ({exc})"
                    )
                at = (network.prefixlen, int(network.network_address))
            # Interned: 17,000 listings name a few dozen regions and services.
            region, service, border = sys.intern(region), sys.intern(service), sys.intern(border)
            if at in found:
                found[at][3].add(service)
            else:
                found[at] = (text, region, border, {service})
            regions.setdefault(service, set()).add(region)
        self._count += len(entries)

        all_ones = (1 << bits) - 1
        lengths = sorted({length for length, _ in found})
        masks = {length: all_ones ^ (all_ones >> length) for length in lengths}
        by_length: dict[int, dict[int, Attribution]] = {length: {} for length in lengths}
        # For each length, the tables of the shorter lengths, nearest first.
        shorter = {
            length: [(masks[s], by_length[s]) for s in reversed(lengths[:i])]
            for i, length in enumerate(lengths)
        }
        shared: dict[frozenset[str], tuple[str, ...]] = {}
        # Shortest first, so a prefix's nearest ancestor already carries its ancestors' services.
        for length, value in sorted(found):
            text, region, border, services = found[(length, value)]
            union = frozenset(services)
            for mask, table in shorter[length]:
                ancestor = table.get(value & mask)
                if ancestor is not None:
                    union = union.union(ancestor.services)
                    break
            if union not in shared:
                shared[union] = tuple(sorted(union))
            by_length[length][value] = Attribution(
                prefix=text, region=region, network_border_group=border, services=shared[union]
            )
        return tuple((masks[length], by_length[length]) for length in reversed(lengths))

    def lookup(self, address: str) -> Attribution | None:
        """The attribution of `address` (an IPv4 or IPv6 literal), or None when no published
        prefix holds it or it is not an IP address. `::ffff:a.b.c.d` is an IPv6 address here,
        never mapped to IPv4: an AAAA record holding one is not in AWS's IPv6 ranges."""
        try:
            return self._memo[address]
        except KeyError:
            pass
        found = self._lookup(address)
        if len(self._memo) >= MEMO_SIZE:
            self._memo.clear()  # bounded: the addresses in use are back within a round
        self._memo[address] = found
        return found

    def _lookup(self, address: str) -> Attribution | None:
        # inet_pton, not ipaddress: far faster, and the same on every valid address (a
        # scoped `fe80::1%eth0`, which it refuses, is link-local: in no published range).
        v6 = ":" in address
        try:
            value = int.from_bytes(
                socket.inet_pton(socket.AF_INET6 if v6 else socket.AF_INET, address)
            )
        except (OSError, ValueError):  # ValueError: an embedded NUL
            return None
        for mask, table in self._v6 if v6 else self._v4:
            hit = table.get(value & mask)
            if hit is not None:
                return hit
        return None

    def __len__(self) -> int:
        """Published prefix entries, IPv4 and IPv6, one per listing (a prefix listed under
        `AMAZON` and `S3` counts twice), as AWS counts them."""
        return self._count

    @property
    def sync_timestamp(self) -> float:
        """`syncToken` as Unix seconds."""
        return float(self.sync_token)

    def regions_for(self, service: str) -> frozenset[str]:
        """The regions the file lists for a service key (e.g. `S3`), both families; empty for a
        key it does not have. Region `GLOBAL` appears as listed."""
        return self._regions.get(service, frozenset())

    def services(self) -> frozenset[str]:
        """Every service key the file lists."""
        return frozenset(self._regions)

    def __repr__(self) -> str:
        return (
            f"IpRanges(source={self.source!r}, sync_token={self.sync_token!r}, "
            f"create_date={self.create_date!r}, prefixes={self._count})"
        )


def _network(text: str, af: int, bits: int) -> tuple[int, int] | None:
    """(length, network as int) of a prefix in the usual form (canonical address, decimal
    length, no host bits: all of AWS's), else None. Far faster than ipaddress, which accepts
    every string accepted here."""
    address, slash, length = text.partition("/")
    if not slash or not length.isdigit() or not length.isascii() or str(int(length)) != length:
        return None
    try:
        packed = socket.inet_pton(af, address)
    except (OSError, ValueError):
        return None
    # The round trip refuses what ipaddress might not take the same way (zeros, case, scope).
    n, value = int(length), int.from_bytes(packed)
    if n > bits or socket.inet_ntop(af, packed) != address or value & ((1 << bits - n) - 1):
        return None
    return n, value


def _kind(value: object) -> str:
    names = {dict: "an object", list: "a list", str: "a string", type(None): "missing or null"}
    return names.get(type(value), f"a {type(value).__name__}")


def parse(data: bytes, source: str) -> IpRanges:
    """Parse and check the bytes of an ip-ranges.json; `source` names it in errors."""
    try:
        document = json.loads(data)
    except ValueError as exc:  # also a UnicodeDecodeError
        raise IpRangesError(f"ip-ranges {source}: not JSON ({exc})") from None
    return IpRanges(document, source=source)


@functools.cache
def _shipped() -> IpRanges:
    # `monitor` is this module's package; files() reads it even from a zip.
    data = importlib.resources.files(__package__ or "probes").joinpath(_SHIPPED).read_bytes()
    return parse(data, SHIPPED_SOURCE)


def load(path: str | Path | None = None) -> IpRanges:
    """The ranges in `path`, or the snapshot shipped with the package when None (loaded once
    per process). A missing, unreadable or invalid file is an `IpRangesError`."""
    if path is None:
        return _shipped()
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise IpRangesError(f"ip-ranges {path}: cannot read ({exc.strerror or exc})") from None
    return parse(data, str(path))


class _Failed(Exception):
    """Why `update` writes nothing: its exit status and one line."""

    def __init__(self, status: int, line: str) -> None:
        super().__init__(line)
        self.status = status
        self.line = line


def _download(url: str, timeout: float) -> bytes:
    """The body at `url`, or `_Failed` with status 1 (refused, HTTP error, timeout, cut short)
    or 2 (not a URL this can fetch, or a body far too large for a ranges file)."""
    import http.client  # imported here: only `probe ip-ranges update` downloads
    import urllib.error
    import urllib.request

    def failed(why: object) -> _Failed:
        return _Failed(1, f"download of {url} failed: {why}")

    if url.partition(":")[0].lower() not in ("http", "https", "file"):
        raise _Failed(2, f"not written: {url!r} is not an http, https or file URL")
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    size = 0
    try:
        # urlopen's timeout bounds each connect and read; the deadline bounds the whole body.
        with urllib.request.urlopen(url, timeout=timeout) as response:
            while chunk := response.read(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > MAX_DOWNLOAD_BYTES:
                    raise _Failed(2, f"not written: {url}: over {MAX_DOWNLOAD_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise TimeoutError
            # read(n) ends quietly when the server closes early; the length says it did.
            expected = response.headers.get("Content-Length", "")
            if expected.isdigit() and size != int(expected):
                raise failed(f"body cut short: {size} of {expected} bytes")
    except urllib.error.HTTPError as exc:
        raise failed(f"HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise failed(f"timed out after {timeout:g}s") from None
        if isinstance(reason, OSError):
            raise failed(reason.strerror or reason) from None
        raise failed(reason) from None
    except TimeoutError:
        raise failed(f"timed out after {timeout:g}s") from None
    except (http.client.InvalidURL, ValueError) as exc:  # e.g. a bad port or IPv6 literal
        raise _Failed(2, f"not written: bad URL {url!r} ({exc})") from None
    except (OSError, http.client.HTTPException) as exc:  # reset, or a body cut short
        raise failed(f"{type(exc).__name__}: {exc}") from None
    return b"".join(chunks)


def update(output: Path, url: str = DEFAULT_URL, *, timeout: float = 30.0) -> tuple[int, str]:
    """Download `url`, check it, and write it to `output` when it is newer than what is there.

    Returns (status, one line): 0 written (atomically: a temporary file in the same folder,
    fsynced, then renamed over `output`) or already current (nothing written); 1 the download
    failed (refused, HTTP error, timeout); 2 the download is not a valid ranges file, is older
    than `output`, or `output` cannot be written. An invalid `output` is replaced by a valid
    download. The bytes are written as downloaded."""
    try:
        status, line = _update(Path(output), url, timeout)
    except _Failed as exc:
        status, line = exc.status, exc.line
    return status, _one_line(line)


def _update(output: Path, url: str, timeout: float) -> tuple[int, str]:
    current: IpRanges | None = None
    was = ""
    try:
        current = load(output)
    except IpRangesError as exc:
        if output.exists():
            was = f", replacing an unusable file ({exc})"
    data = _download(url, timeout)
    try:
        new = parse(data, url)
    except IpRangesError as exc:
        return 2, f"not written: {exc}"
    stamp = f"syncToken {new.sync_token} ({new.create_date})"
    if current is not None:
        have = f"syncToken {current.sync_token} ({current.create_date})"
        if int(new.sync_token) == int(current.sync_token):
            return 0, f"already current: {output} has {have}; nothing written"
        if int(new.sync_token) < int(current.sync_token):
            return 2, f"not written: {url} has {stamp}, older than {output}'s {have}"
        was = f", was {have}"
    try:
        _write_atomically(output, data)
    except OSError as exc:
        return 2, f"not written: cannot write {output} ({exc.strerror or exc})"
    return 0, f"written {output}: {stamp}, {len(new)} prefixes{was}"


def _one_line(text: str) -> str:
    return " ".join(text.splitlines())


def _write_atomically(output: Path, data: bytes) -> None:
    """Readers see the old file or the new one, never a part; after a crash, one of the two."""
    # Through a symbolic link, as a plain write would: the link stays and its target is renewed.
    output = Path(os.path.realpath(output))
    folder = output.parent
    temp = folder / f".{output.name}.{secrets.token_hex(4)}.tmp"
    try:
        mode = output.stat().st_mode & 0o777
    except OSError:
        mode = None
    # O_EXCL: never write through a file someone else made; 0o666 & ~umask when new.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:  # the replacement keeps the permissions given to the old file
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, output)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    # The rename itself survives a crash only once the folder is synced.
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
