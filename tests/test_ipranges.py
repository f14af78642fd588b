"""AWS ip-ranges.json: longest-prefix attribution, the checks on a ranges file, the shipped
snapshot, and `probe ip-ranges update` against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import importlib.resources
import json
import os
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from monitor.cli import main
from probes.ipranges import (
    DEFAULT_URL,
    Attribution,
    IpRanges,
    IpRangesError,
    load,
    parse,
    update,
)

TOKEN = 1700000000
DATE = "2023-11-14-22-13-20"


def entry(prefix: str, service: str, region: str, border: str | None = None) -> dict[str, str]:
    key = "ipv6_prefix" if ":" in prefix else "ip_prefix"
    return {
        key: prefix,
        "region": region,
        "service": service,
        "network_border_group": border or region,
    }


def document(token: int = TOKEN, date: str = DATE) -> dict[str, Any]:
    """A small ranges file made of documentation prefixes only, nested as AWS's are."""
    return {
        "syncToken": str(token),
        "createDate": date,
        "prefixes": [
            entry("198.51.100.0/24", "AMAZON", "eu-west-1"),
            entry("198.51.100.64/26", "S3", "us-east-1"),
            # Listed twice, once per service key, as AWS lists its prefixes.
            entry("203.0.113.0/24", "AMAZON", "ap-southeast-2"),
            entry("203.0.113.0/24", "EC2", "ap-southeast-2"),
            entry("203.0.113.7/32", "ROUTE53_HEALTHCHECKS", "ap-southeast-2"),
        ],
        "ipv6_prefixes": [
            entry("2001:db8::/32", "AMAZON", "us-west-2"),
            entry("2001:db8:1000::/40", "S3", "us-east-2", "us-east-2-lax-1"),
        ],
    }


def encode(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, indent=2).encode()


@pytest.fixture
def ranges() -> IpRanges:
    return parse(encode(document()), "test.json")


# --- lookup -------------------------------------------------------------------------------


def test_longest_match_gives_prefix_region_and_every_containing_services(ranges: IpRanges) -> None:
    hit = ranges.lookup("198.51.100.70")
    assert hit == Attribution(
        prefix="198.51.100.64/26",
        region="us-east-1",
        network_border_group="us-east-1",
        services=("AMAZON", "S3"),  # the /26's own key and the /24's
    )
    assert hit.to_json() == {
        "prefix": "198.51.100.64/26",
        "region": "us-east-1",
        "network_border_group": "us-east-1",
        "services": ["AMAZON", "S3"],
    }
    # Outside the /26, only the /24 holds it.
    assert ranges.lookup("198.51.100.10") == Attribution(
        prefix="198.51.100.0/24",
        region="eu-west-1",
        network_border_group="eu-west-1",
        services=("AMAZON",),
    )


def test_a_prefix_listed_once_per_service_merges_its_keys(ranges: IpRanges) -> None:
    hit = ranges.lookup("203.0.113.9")
    assert hit is not None
    assert (hit.prefix, hit.services) == ("203.0.113.0/24", ("AMAZON", "EC2"))
    hit = ranges.lookup("203.0.113.7")
    assert hit is not None
    assert (hit.prefix, hit.services) == (
        "203.0.113.7/32",
        ("AMAZON", "EC2", "ROUTE53_HEALTHCHECKS"),
    )


def test_ipv6_longest_match(ranges: IpRanges) -> None:
    assert ranges.lookup("2001:db8:1000::5") == Attribution(
        prefix="2001:db8:1000::/40",
        region="us-east-2",
        network_border_group="us-east-2-lax-1",
        services=("AMAZON", "S3"),
    )
    # Any spelling of the address: the lookup reads its value, not its text.
    assert ranges.lookup("2001:0DB8:10ff:0:0:0:0:1") == ranges.lookup("2001:db8:1000::5")
    hit = ranges.lookup("2001:db8:2::1")
    assert hit is not None
    assert (hit.prefix, hit.region, hit.services) == ("2001:db8::/32", "us-west-2", ("AMAZON",))


@pytest.mark.parametrize(
    "address",
    [
        "192.0.2.1",  # in no prefix
        "198.51.101.1",
        "2001:db9::1",
        "::ffff:198.51.100.70",  # an AAAA holding an IPv4-mapped address is not AWS IPv6
        "::198.51.100.70",
        "fe80::1%eth0",
        "not an address",
        "198.51.100.300",
        "198.51.100.070",
        "",
        "198.51.100.70\x00",
    ],
)
def test_no_attribution(ranges: IpRanges, address: str) -> None:
    assert ranges.lookup(address) is None


def test_file_facts(ranges: IpRanges) -> None:
    assert len(ranges) == 7  # listings, as AWS counts them
    assert ranges.sync_token == str(TOKEN)
    assert ranges.sync_timestamp == float(TOKEN)
    assert ranges.create_date == DATE
    assert ranges.source == "test.json"
    assert ranges.regions_for("S3") == {"us-east-1", "us-east-2"}
    assert ranges.regions_for("AMAZON") == {"eu-west-1", "ap-southeast-2", "us-west-2"}
    assert ranges.regions_for("DYNAMODB") == frozenset()
    assert ranges.services() == {"AMAZON", "S3", "EC2", "ROUTE53_HEALTHCHECKS"}


def test_a_prefix_in_an_unusual_spelling_is_read_by_ipaddress() -> None:
    doc = document()
    doc["ipv6_prefixes"] = [entry("2001:DB8:0::/32", "AMAZON", "us-west-2")]
    hit = parse(encode(doc), "x").lookup("2001:db8::1")
    assert hit is not None
    assert hit.prefix == "2001:DB8:0::/32"  # as the file writes it


# --- invalid files ------------------------------------------------------------------------


def _with(path: str, value: object) -> dict[str, Any]:
    """document() with one value replaced (or removed when value is ...)."""
    doc = document()
    *parents, last = path.split(".")
    node: Any = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[last]
    else:
        node[int(last) if isinstance(node, list) else last] = value
    return doc


INVALID = {
    "top-level-list": ([1], "top level is a list, not an object"),
    "token-not-digits": (
        _with("syncToken", "17e8"),
        "syncToken: '17e8' is not a string of digits",
    ),
    "token-a-number": (
        _with("syncToken", TOKEN),
        "syncToken: 1700000000 is not a string of digits",
    ),
    "no-token": (_with("syncToken", ...), "syncToken: None is not a string of digits"),
    "bad-date": (
        _with("createDate", "yesterday"),
        "createDate: 'yesterday' is not a date like '2026-08-22-15-17-05'",
    ),
    "no-prefixes": (_with("prefixes", ...), "prefixes: missing or null, not a list"),
    "ipv6-prefixes-object": (_with("ipv6_prefixes", {}), "ipv6_prefixes: an object, not a list"),
    "entry-not-object": (_with("prefixes.1", "x"), "prefixes[1]: a string, not an object"),
    "no-region": (
        _with("prefixes.2.region", ...),
        "prefixes[2].region: None is not a non-empty string",
    ),
    "empty-service": (
        _with("ipv6_prefixes.1.service", ""),
        "ipv6_prefixes[1].service: '' is not a non-empty string",
    ),
    "bad-octet": (
        _with("prefixes.1.ip_prefix", "198.51.100.300/26"),
        "prefixes[1].ip_prefix: '198.51.100.300/26' is not an IPv4 network "
        "(Octet 300 (> 255) not permitted in '198.51.100.300')",
    ),
    "host-bits": (
        _with("prefixes.0.ip_prefix", "198.51.100.1/24"),
        "prefixes[0].ip_prefix: '198.51.100.1/24' is not an IPv4 network "
        "(198.51.100.1/24 has host bits set)",
    ),
    "ipv6-in-ipv4-list": (
        _with("prefixes.0.ip_prefix", "2001:db8::/32"),
        "prefixes[0].ip_prefix: '2001:db8::/32' is not an IPv4 network "
        "(Expected 4 octets in '2001:db8::')",
    ),
    "ipv6-length": (
        _with("ipv6_prefixes.0.ipv6_prefix", "2001:db8::/129"),
        "ipv6_prefixes[0].ipv6_prefix: '2001:db8::/129' is not an IPv6 network "
        "('129' is not a valid netmask)",
    ),
    "ipv4-in-ipv6-list": (
        _with("ipv6_prefixes.0.ipv6_prefix", "198.51.100.0/24"),
        "ipv6_prefixes[0].ipv6_prefix: '198.51.100.0/24' is not an IPv6 network "
        "(At least 3 parts expected in '198.51.100.0')",
    ),
}


@pytest.mark.parametrize("case", sorted(INVALID))
def test_invalid_file_names_file_and_fault(tmp_path: Path, case: str) -> None:
    doc, why = INVALID[case]
    path = tmp_path / f"{case}.json"
    path.write_text(json.dumps(doc))
    with pytest.raises(IpRangesError) as caught:
        load(path)
    assert str(caught.value) == f"ip-ranges {path}: {why}"


@pytest.mark.parametrize("data", [b"", b"{", b"<html>503</html>", b"\xff\xfe\x00"])
def test_not_json(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "ranges.json"
    path.write_bytes(data)
    with pytest.raises(IpRangesError, match=r"^ip-ranges .*ranges\.json: not JSON \(") as caught:
        load(path)
    assert "\n" not in str(caught.value)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.json"
    with pytest.raises(IpRangesError) as caught:
        load(str(path))
    assert str(caught.value) == f"ip-ranges {path}: cannot read (No such file or directory)"


def test_a_valid_file_loads_from_a_path(tmp_path: Path) -> None:
    path = tmp_path / "ranges.json"
    path.write_bytes(encode(document()))
    ranges = load(path)
    assert (ranges.source, len(ranges)) == (str(path), 7)


# --- the shipped snapshot -----------------------------------------------------------------


def test_shipped_snapshot() -> None:
    raw = importlib.resources.files("probes").joinpath("data/aws-ip-ranges.json").read_bytes()
    doc = json.loads(raw)
    ranges = load()
    assert load() is ranges  # loaded once per process
    assert ranges.source == "shipped snapshot"
    # The snapshot copied from AWS for this release; update these with the file.
    assert (ranges.sync_token, ranges.create_date) == ("1787411825", "2026-08-22-15-17-05")
    assert ranges.sync_timestamp == 1787411825.0
    assert len(ranges) == len(doc["prefixes"]) + len(doc["ipv6_prefixes"])
    assert 15_000 < len(ranges) < 20_000
    assert "us-east-1" in ranges.regions_for("S3")
    # Every listed prefix attributes its own first address, to itself or a longer prefix.
    for item in doc["prefixes"] + doc["ipv6_prefixes"]:
        prefix = item.get("ip_prefix") or item["ipv6_prefix"]
        hit = ranges.lookup(prefix.partition("/")[0])
        assert hit is not None, prefix
        assert int(hit.prefix.partition("/")[2]) >= int(prefix.partition("/")[2])
        assert item["service"] in hit.services
        assert "AMAZON" in hit.services


# --- probe ip-ranges update, against a real HTTP server -----------------------------------


@dataclass
class Route:
    body: bytes
    status: int = 200
    short_by: int = 0  # announce this many more bytes than sent, then close: a cut-off body


@dataclass
class Server:
    port: int
    routes: dict[str, Route] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)

    def publish(self, path: str, body: bytes, **kw: Any) -> str:
        self.routes[path] = Route(body, **kw)
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture
def server() -> Iterator[Server]:
    routes: dict[str, Route] = {}
    hits: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            route = routes.get(self.path, Route(b"no such file\n", status=404))
            self.send_response(route.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(route.body) + route.short_by))
            self.end_headers()
            self.wfile.write(route.body)
            if route.short_by:
                self.close_connection = True

        def log_message(self, format: str, *args: Any) -> None:
            pass  # the tests read the results, not a log

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield Server(port=httpd.server_address[1], routes=routes, hits=hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def output(tmp_path: Path) -> Path:
    """A current ranges file, as an earlier update wrote it."""
    path = tmp_path / "ranges" / "ip-ranges.json"
    path.parent.mkdir()
    path.write_bytes(encode(document(TOKEN)))
    return path


def probe_update(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["ip-ranges", "update", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_newer_file_replaces_output_atomically(
    server: Server, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output.chmod(0o640)
    newer = encode(document(TOKEN + 3600, "2023-11-14-23-13-20"))
    url = server.publish("/ip-ranges.json", newer)
    before = output.stat()
    with output.open("rb") as reader:  # a reader holding the old file keeps reading it
        status, out, err = probe_update(capsys, "--output", str(output), "--url", url)
        assert reader.read() == encode(document(TOKEN))
    assert (status, err) == (0, "")
    assert out == (
        f"written {output}: syncToken {TOKEN + 3600} (2023-11-14-23-13-20), 7 prefixes, "
        f"was syncToken {TOKEN} ({DATE})\n"
    )
    assert output.read_bytes() == newer  # byte for byte as served
    after = output.stat()
    assert after.st_ino != before.st_ino  # a new file renamed over the old one
    assert after.st_mode & 0o777 == 0o640  # keeping the permissions given to the old one
    assert os.listdir(output.parent) == [output.name]  # no temporary file left behind
    assert server.hits == ["/ip-ranges.json"]


def test_update_through_a_symbolic_link_renews_its_target(
    server: Server, output: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    link = tmp_path / "current.json"
    link.symlink_to(output)
    newer = encode(document(TOKEN + 1))
    url = server.publish("/ip-ranges.json", newer)
    status, out, _ = probe_update(capsys, "--output", str(link), "--url", url)
    assert (status, out.split(":")[0]) == (0, f"written {link}")
    assert link.is_symlink()
    assert output.read_bytes() == newer
    assert os.listdir(output.parent) == [output.name]


def test_first_update_creates_output(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "ip-ranges.json"
    url = server.publish("/r.json", encode(document()))
    status, out, err = probe_update(capsys, "--output", str(target), "--url", url)
    assert (status, err) == (0, "")
    assert out.startswith(f"written {target}: syncToken {TOKEN} ({DATE}), 7 prefixes\n")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert load(target).sync_token == str(TOKEN)


def test_equal_file_writes_nothing(
    server: Server, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Same syncToken, different bytes: AWS's token names the publication.
    url = server.publish("/ip-ranges.json", json.dumps(document(TOKEN)).encode())
    before = output.stat()
    status, out, err = probe_update(capsys, "--output", str(output), "--url", url)
    assert (status, err) == (0, "")
    assert out == f"already current: {output} has syncToken {TOKEN} ({DATE}); nothing written\n"
    after = output.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert output.read_bytes() == encode(document(TOKEN))


def test_older_file_is_refused(
    server: Server, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = server.publish("/old.json", encode(document(TOKEN - 1, "2023-11-14-22-13-19")))
    status, out, err = probe_update(capsys, "--output", str(output), "--url", url)
    assert (status, out) == (2, "")
    assert err == (
        f"not written: {url} has syncToken {TOKEN - 1} (2023-11-14-22-13-19), "
        f"older than {output}'s syncToken {TOKEN} ({DATE})\n"
    )
    assert output.read_bytes() == encode(document(TOKEN))


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (
            encode(_with("prefixes.1.ip_prefix", "198.51.100.65/26") | {"syncToken": "1800000000"}),
            "prefixes[1].ip_prefix: '198.51.100.65/26' is not an IPv4 network "
            "(198.51.100.65/26 has host bits set)",
        ),
        (b"<html><body>Service Unavailable</body></html>\n", "not JSON (Expecting value: "),
        (encode(_with("syncToken", "soon")), "syncToken: 'soon' is not a string of digits"),
    ],
    ids=["bad-prefix", "html", "bad-token"],
)
def test_invalid_download_is_refused_in_one_line(
    server: Server, output: Path, capsys: pytest.CaptureFixture[str], body: bytes, why: str
) -> None:
    url = server.publish("/bad.json", body)
    before = output.stat()
    status, out, err = probe_update(capsys, "--output", str(output), "--url", url)
    assert (status, out) == (2, "")
    assert err.startswith(f"not written: ip-ranges {url}: {why}")
    assert err.count("\n") == 1 and err.endswith("\n")
    assert output.read_bytes() == encode(document(TOKEN))
    assert output.stat().st_mtime_ns == before.st_mtime_ns
    assert os.listdir(output.parent) == [output.name]


def test_an_invalid_output_is_replaced_by_a_valid_download(
    server: Server, output: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    output.write_text("{half a file")
    url = server.publish("/ip-ranges.json", encode(document()))
    status, out, err = probe_update(capsys, "--output", str(output), "--url", url)
    assert (status, err) == (0, "")
    assert out.startswith(f"written {output}: syncToken {TOKEN} ({DATE}), 7 prefixes, ")
    assert f"replacing an unusable file (ip-ranges {output}: not JSON (" in out
    assert out.count("\n") == 1
    assert output.read_bytes() == encode(document())


def test_server_down(output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Bound but not listening: the kernel refuses connections to this port while we hold it.
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{held.getsockname()[1]}/ip-ranges.json"
        status, out, err = probe_update(capsys, "--output", str(output), "--url", url)
    assert (status, out) == (1, "")
    assert err == f"download of {url} failed: Connection refused\n"
    assert output.read_bytes() == encode(document(TOKEN))


def test_http_error(server: Server, output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = server.publish("/gone.json", b"gone", status=404)
    status, out, err = probe_update(capsys, "--output", str(output), "--url", url)
    assert (status, out, err) == (1, "", f"download of {url} failed: HTTP 404 Not Found\n")
    assert output.read_bytes() == encode(document(TOKEN))


def test_body_cut_short(server: Server, output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    body = encode(document(TOKEN + 1))
    url = server.publish("/cut.json", body[:100], short_by=len(body) - 100)
    status, out, err = probe_update(capsys, "--output", str(output), "--url", url)
    assert (status, out) == (1, "")
    assert err == f"download of {url} failed: body cut short: 100 of {len(body)} bytes\n"
    assert output.read_bytes() == encode(document(TOKEN))


def test_silent_server_times_out(output: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Listening but never answering: the connection is made, the reply never comes.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}/ip-ranges.json"
        status, out, err = probe_update(
            capsys, "--output", str(output), "--url", url, "--timeout", "300ms"
        )
    assert (status, out) == (1, "")
    assert err == f"download of {url} failed: timed out after 0.3s\n"


def test_unwritable_output(server: Server, tmp_path: Path) -> None:
    url = server.publish("/ip-ranges.json", encode(document()))
    target = tmp_path / "no-such-folder" / "ip-ranges.json"
    status, line = update(target, url)
    assert status == 2
    assert line == f"not written: cannot write {target} (No such file or directory)"


def test_only_http_https_and_file_urls(output: Path) -> None:
    assert update(output, "ftp://127.0.0.1/ip-ranges.json") == (
        2,
        "not written: 'ftp://127.0.0.1/ip-ranges.json' is not an http, https or file URL",
    )


def test_a_file_url_is_read_like_a_download(tmp_path: Path, output: Path) -> None:
    source = tmp_path / "downloaded.json"
    source.write_bytes(encode(document(TOKEN + 1)))
    status, line = update(output, source.as_uri())
    assert (status, line.split(":")[0]) == (0, f"written {output}")
    assert output.read_bytes() == source.read_bytes()


def test_update_help_names_the_default_url(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["ip-ranges", "update", "--help"])
    out = capsys.readouterr().out
    for option in ("--output", "--url", "--timeout"):
        assert option in out
    assert DEFAULT_URL in "".join(out.split())  # argparse wraps it at its hyphen
