"""Configuration: each invalid file pairs with its exact one-line error; valid files expand."""

from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from monitor import config
from monitor.config import ConfigError, load_config, parse_duration

ROOT = Path(__file__).parent.parent
DATA = ROOT / "tests" / "testdata" / "config"

INVALID = {
    "invalid-unknown-key.yml": "targets[0].porto: unknown key; did you mean 'port'?",
    "invalid-bad-duration.yml": "interval: bad duration '30x': use e.g. 500ms, 5s, 1m",
    "invalid-bad-target-timeout.yml": (
        "targets[0].timeout: bad duration 'soon': use e.g. 500ms, 5s, 1m"
    ),
    "invalid-duplicate-target.yml": (
        "targets[2].name: duplicate target name 'web' (first at targets[0])"
    ),
    "invalid-bad-family.yml": "families[1]: 'ipv5' is not one of 'ipv4' or 'ipv6'",
    "invalid-bad-target-family.yml": (
        "targets[0].families[0]: 'inet6' is not one of 'ipv4' or 'ipv6'"
    ),
    "invalid-bad-probe.yml": (
        "targets[0].probes[1]: 'smtp' is not one of "
        "'dns', 'dns_tcp', 'dns_large', 'icmp', 'tcp', 'tls', 'http2', 'http3', 'resolver', "
        "'race' or 'trace'"
    ),
    "invalid-dns-large-type.yml": (
        "targets[0].dns.large.type: 'DNSKEYS' is not a DNS type (e.g. DNSKEY, TXT, AAAA)"
    ),
    "invalid-dns-edns-buffer.yml": "targets[0].dns.edns_buffer: 100000: must be at most 65535",
    "invalid-route53-edns-buffer.yml": "route53.dns.edns_buffer: 511: must be at least 512",
    "invalid-resolver-address.yml": (
        "targets[0].resolvers[1]: 'resolver.example.net' does not appear to be an IPv4 or IPv6 "
        "address"
    ),
    "invalid-dns-large-on-host.yml": (
        "targets[0].probes: 'dns_large' asks a name server about its zone: set zone, or drop "
        "'dns_large'"
    ),
    "invalid-resolver-not-alone.yml": (
        "targets[0].probes: 'resolver' asks the target's resolvers, not its host: list it alone "
        "(a target of its own)"
    ),
    "invalid-resolvers-without-probe.yml": (
        "targets[0].resolvers: only a target whose probes are [resolver] asks resolvers"
    ),
    "invalid-unknown-service.yml": (
        "catalog.services[1]: unknown service 'sqs' "
        "(known: cloudfront, ec2, iam, route53, s3, s3-control, sts)"
    ),
    "invalid-unknown-region.yml": (
        "catalog.regions[1]: 'moon-base-1' has no endpoint in the selected services"
    ),
    "invalid-duplicate-key.yml": "line 3: duplicate key 'vantage'",
    "invalid-yaml.yml": "line 4: invalid YAML: expected ',' or ']', but got '<stream end>'",
    "invalid-bad-resolver.yml": (
        "resolver.nameservers[0]: 'dns.example.com' does not appear to be an IPv4 or IPv6 address"
    ),
    "invalid-missing-host.yml": "targets[0].host: required key is missing",
    "invalid-bad-host.yml": "targets[0].host: 'bad host!' is not a host name or IP address",
    "invalid-top-level-list.yml": "the top level must be a mapping of keys",
    "invalid-bad-port.yml": "targets[0].port: 70000: must be at most 65535",
    "invalid-icmp-count.yml": "targets[0].icmp.count: 0: must be at least 1",
    "invalid-reserved-name.yml": (
        "targets[0].name: 'route53-ns-mine': names starting with 'route53-ns-' are reserved for "
        "the name servers of route53.zones"
    ),
    "invalid-source-family.yml": "source.ipv4: '2001:db8::1' is not an IPv4 address",
    "invalid-empty-families.yml": "families: []: must not be empty",
    "invalid-events-unknown-key.yml": "events.kep: unknown key; did you mean 'keep'?",
    "invalid-events-keep.yml": "events.keep: 0: must be at least 1",
    "invalid-external-url.yml": (
        "external_url: 'vantage-a.example.net:9851': use http:// or https:// and a host, "
        "e.g. http://vantage:9851"
    ),
}


def test_every_invalid_file_is_paired() -> None:
    assert {p.name for p in DATA.glob("invalid-*.yml")} - {"invalid-missing-ca.yml"} == set(INVALID)


@pytest.mark.parametrize(("name", "message"), sorted(INVALID.items()))
def test_invalid_config_message(name: str, message: str) -> None:
    path = DATA / name
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"


def test_missing_ca_file_names_the_resolved_path() -> None:
    path = DATA / "invalid-missing-ca.yml"
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == (f"{path}: tls.ca_file: no such file '{DATA / 'does-not-exist.pem'}'")


@pytest.mark.parametrize("name", ["invalid-unknown-key.yml", "invalid-bad-family.yml"])
def test_cli_exits_2_with_one_line(name: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "monitor.cli", "run", "--config", str(DATA / name)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("probe: ") and name in lines[0]
    assert proc.stdout == ""


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("500ms", 0.5), ("5s", 5.0), ("1m30s", 90.0), ("2h", 7200.0), (3, 3.0), ("1.5s", 1.5)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "5", "s", "5 s", "1m-3s", "0s", True, None, "5sec"])
def test_bad_durations(text: object) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)


def test_catalog_and_user_targets_expand(tmp_path: Path) -> None:
    cfg_file = tmp_path / "c.yml"
    cfg_file.write_text(
        "vantage: home\n"
        "interval: 1m\n"
        "catalog: {services: [s3, cloudfront], regions: [eu-west-1]}\n"
        "targets:\n"
        "  - {name: mine, host: dualstack.x.eu-west-1.elb.amazonaws.com, service: alb,\n"
        "     region: eu-west-1, interval: 10s, families: [ipv6], probes: [tcp, tcp, tls]}\n"
    )
    cfg = load_config(cfg_file)
    names = [t.name for t in cfg.targets]
    assert names == ["s3-eu-west-1", "cloudfront-api-global", "mine"]
    s3 = cfg.targets[0]
    assert s3.host == "s3.dualstack.eu-west-1.amazonaws.com"
    assert s3.plane == "data" and "http3" not in s3.probes and s3.interval == 60.0
    mine = cfg.targets[2]
    assert mine.interval == 10.0 and mine.families == ("ipv6",) and mine.probes == ("tcp", "tls")
    assert cfg.vantage == "home"


def test_dry_run_and_targets_send_nothing() -> None:
    """The default AWS catalog, listed and dry-run: the network guard in the child would log
    (and fail) any socket or name lookup."""
    for argv in (["run", "--dry-run"], ["targets", "--format", "json"], ["--help"]):
        proc = subprocess.run(
            [sys.executable, "-m", "monitor.cli", *argv],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert "s3" in proc.stdout or argv == ["--help"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("families: []", "families: []: must not be empty"),
        ("concurrency: 0", "concurrency: 0: must be at least 1"),
        ("concurrency: x", "concurrency: 'x': must be a whole number"),
        ("parity: {slower_ratio: 1}", "parity.slower_ratio: 1: must be more than 1.0"),
        ("targets: {}", "targets: {}: must be a list, e.g. [a, b]"),
        ("resolver: 5", "resolver: 5: must be a mapping of keys"),
        ("vantage: 5", "vantage: 5: must be text (quote it if it looks like a number)"),
        ("route53: {max_nameservers: 99}", "route53.max_nameservers: 99: must be at most 16"),
        (
            "targets: [{name: a, host: a.example, port: 1.5}]",
            "targets[0].port: 1.5: must be a whole number",
        ),
    ],
)
def test_errors_in_plain_words(tmp_path: Path, text: str, message: str) -> None:
    """Not the validation library's words ("input should be", "after validation")."""
    path = tmp_path / "c.yml"
    path.write_text(text + "\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value) == f"{path}: {message}"
    assert "after validation" not in str(info.value) and "input should" not in str(info.value)


def test_configs_are_parsed_by_libyaml_where_pyyaml_has_it() -> None:
    """PyYAML's wheels carry libyaml, a quarter of the CPU and less heap for a large config: it
    parses, where the wheels exist, to what the pure-Python parser gives; duplicate keys are
    still refused; a YAML error is still worded by the pure-Python parser (the table above)."""
    fast = config._FastUniqueKeyLoader
    if platform.machine() in ("x86_64", "AMD64", "aarch64", "arm64"):
        assert fast is not None
    if fast is None:
        return  # elsewhere the pure-Python parser does it all (every other test)
    for path in (ROOT / "configs").glob("*.yml"):
        text = path.read_text()
        assert yaml.load(text, Loader=fast) == yaml.load(text, Loader=config._UniqueKeyLoader)
    with pytest.raises(ConfigError, match="line 2: duplicate key 'a'"):
        yaml.load("a: 1\na: 2\n", Loader=fast)


def test_events_file_is_relative_to_the_config_and_external_url_loses_its_slash(
    tmp_path: Path,
) -> None:
    path = tmp_path / "vantage.yml"
    path.write_text(
        "external_url: https://vantage-a.example.net:9851/\n"
        "events: {keep: 50, file: state/events.jsonl, max_bytes: 4096}\n"
    )
    cfg = load_config(path)
    assert cfg.external_url == "https://vantage-a.example.net:9851"
    assert (cfg.events.keep, cfg.events.max_bytes) == (50, 4096)
    assert cfg.events.file == str(tmp_path / "state" / "events.jsonl")  # need not exist yet
    (tmp_path / "empty.yml").write_text("")
    defaults = load_config(tmp_path / "empty.yml")
    assert defaults.external_url is None and defaults.events.file is None
    assert defaults.events.keep == 1000
