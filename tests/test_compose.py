"""The container stack without a Docker engine: docker-compose.yml against the Compose
Specification schema and Debian's docker-compose, for every profile; the files it mounts exist
and pass promtool, amtool and the project's own config loader; scrape targets, remote-write URLs
and Grafana's datasource name services that exist where they are looked for; images are pinned;
the Dockerfile installs the way the README does, and its build context builds the package.

tests/testdata/compose-spec.json is the Compose Specification schema, verbatim from
compose-spec/compose-spec (schema/compose-spec.json, Apache-2.0) as vendored by the PyPI
package check-jsonschema 0.39.0 (check_jsonschema/builtin_schemas/vendor/compose-spec.json);
its SHA-256 is pinned below, so a change to it is a deliberate one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
import urllib.error
import urllib.request
import zipfile
from fnmatch import fnmatchcase
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

from monitor.cli import build_parser
from monitor.config import load_config
from monitor.web.server import parse_listen

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
README = ROOT / "README.md"
SCHEMA_FILE = ROOT / "tests" / "testdata" / "compose-spec.json"
SCHEMA_SHA256 = "d549057ebc2925f39f62799eab0db7b9e2c18b35b6c00595199116da3ed10e64"

OWN_IMAGE = "dualstack-monitor"
SINK_SCRIPT = ROOT / "configs" / "compose" / "webhook-sink.py"
SINK_ENTRYPOINT = ["python", "/etc/webhook-sink/webhook-sink.py"]
VANTAGE_PORT = 9851
# pip options that change how, not what, is installed.
PIP_HOW = {"--no-cache-dir", "--disable-pip-version-check", "--no-compile", "-q", "--quiet"}

Service = dict[str, Any]


def load_compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


COMPOSE = load_compose()
SERVICES: dict[str, Service] = COMPOSE["services"]
PROFILES = sorted({p for s in SERVICES.values() for p in s.get("profiles", [])})


def tool(name: str) -> str:
    """A tool the tests need: missing means failing, never skipping."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: ./scripts/test installs it (apt-get)")
    return path


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def active(service: Service, profile: str | None) -> bool:
    """Whether `docker compose [--profile P] up` starts the service."""
    profiles = service.get("profiles", [])
    return not profiles or profile in profiles


def flags(command: list[str]) -> dict[str, str]:
    """`--name=value` and `--name value` options of a command line (last one wins)."""
    out: dict[str, str] = {}
    for i, arg in enumerate(command):
        if not arg.startswith("--"):
            continue
        name, eq, val = arg.partition("=")
        if eq:
            out[name] = val
        elif i + 1 < len(command) and not command[i + 1].startswith("--"):
            out[name] = command[i + 1]
        else:
            out[name] = ""
    return out


def mounts(service: Service) -> list[tuple[str, str]]:
    """(source, container path) of every volume entry; short syntax as the spec reads it."""
    out = []
    for vol in service.get("volumes", []):
        if isinstance(vol, dict):
            out.append((str(vol["source"]), str(vol["target"])))
        else:
            source, _, rest = str(vol).partition(":")
            out.append((source, rest.split(":")[0]))
    return out


def host_path(service: Service, container_path: str) -> Path | None:
    """The repository file behind a path inside the container, through the bind mounts."""
    want = PurePosixPath(container_path)
    for source, target in mounts(service):
        if not source.startswith("."):
            continue  # a named volume: written at run time
        try:
            rest = want.relative_to(target)
        except ValueError:
            continue
        return ROOT / source / rest
    return None


def is_own_image(service: Service) -> bool:
    return "build" in service or str(service.get("image", "")).startswith(OWN_IMAGE + ":")


def runs_probe(service: Service) -> bool:
    """A service of the own image that runs `probe` (its ENTRYPOINT), not another program."""
    return is_own_image(service) and "entrypoint" not in service


def prometheus_services() -> dict[str, Service]:
    return {
        n: s for n, s in SERVICES.items() if str(s.get("image", "")).startswith("prom/prometheus:")
    }


# -- the compose file itself ------------------------------------------------------------------


def test_schema_is_the_pinned_compose_spec() -> None:
    assert hashlib.sha256(SCHEMA_FILE.read_bytes()).hexdigest() == SCHEMA_SHA256
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    assert schema["title"] == "Compose Specification"


def test_compose_file_validates_against_the_compose_spec() -> None:
    schema = json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    errors = [f"{e.json_path}: {e.message}" for e in validator.iter_errors(COMPOSE)]
    assert errors == []
    # The schema is really applied: a misspelt key is refused.
    broken = {**COMPOSE, "services": {**SERVICES, "vantage-a": {**SERVICES["vantage-a"]}}}
    broken["services"]["vantage-a"]["cap-add"] = ["NET_RAW"]
    assert list(validator.iter_errors(broken))


def test_profiles_are_the_documented_ones() -> None:
    assert PROFILES == ["central", "host", "lab", "push"]
    stack = (ROOT / "docs" / "stack.md").read_text(encoding="utf-8")
    for profile in PROFILES:
        assert f"--profile {profile}" in stack, profile
    for name in SERVICES:
        assert f"`{name}`" in stack, f"docs/stack.md does not mention the service {name}"


def test_links_in_the_stack_doc_resolve() -> None:
    doc = ROOT / "docs" / "stack.md"
    text = doc.read_text(encoding="utf-8")
    links = re.findall(r"\[[^\]]*\]\(([^)\s]+)\)", text)
    assert links
    for link in links:
        file_part, _, anchor = link.partition("#")
        if re.match(r"[a-z][a-z0-9+.-]*:", link):
            continue
        if file_part:
            assert (doc.parent / file_part).exists(), f"docs/stack.md links to {file_part}"
        else:
            headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
            slugs = {re.sub(r"[^\w\- ]", "", h.lower()).replace(" ", "-") for h in headings}
            assert anchor in slugs, f"docs/stack.md: no heading for #{anchor}"


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=["default", *PROFILES])
def test_debian_docker_compose_parses_every_profile(profile: str | None) -> None:
    proc = compose_config(profile, GRAFANA_ADMIN_PASSWORD="x")
    assert proc.returncode == 0, proc.stderr
    resolved = yaml.safe_load(proc.stdout)
    wanted = {n for n, s in SERVICES.items() if active(s, profile)}
    assert wanted <= set(resolved["services"])
    # Interpolation and the x-vantage anchor came out as meant.
    a = resolved["services"]["vantage-a"]
    assert a["cap_add"] == ["NET_RAW"]
    assert a["sysctls"]["net.ipv4.ping_group_range"] == "0 2147483647"
    assert resolved["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    nets = resolved["networks"]
    assert all(nets[n]["enable_ipv6"] is True for n in ("dualstack", "nat"))


def test_every_bind_mount_exists_in_the_repository() -> None:
    for name, service in SERVICES.items():
        for source, target in mounts(service):
            if source.startswith("."):
                path = (ROOT / source).resolve()
                assert path.is_relative_to(ROOT), f"{name}: {source} leaves the repository"
                assert path.exists(), f"{name}: {source} (-> {target}) does not exist"
            else:
                assert source in COMPOSE.get("volumes", {}), f"{name}: unknown volume {source}"
        build = service.get("build")
        if build is not None:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()


def test_networks_are_dual_stack_with_ula_prefixes() -> None:
    import ipaddress

    for name, net in COMPOSE["networks"].items():
        assert net["enable_ipv6"] is True, name
        subnets = [ipaddress.ip_network(c["subnet"]) for c in net["ipam"]["config"]]
        assert {s.version for s in subnets} == {4, 6}, name
        assert all(s.is_private for s in subnets), name
        v6 = next(s for s in subnets if isinstance(s, ipaddress.IPv6Network))
        assert v6.subnet_of(ipaddress.IPv6Network("fd00::/8")), f"{name}: {v6} is not ULA"
    for name, service in SERVICES.items():
        mode = service.get("network_mode", "")
        assert mode in ("", "host") or mode.startswith("service:"), name
        if not mode:
            assert service.get("networks"), f"{name} would land on the default (IPv4) network"


# -- images -----------------------------------------------------------------------------------


def test_images_are_pinned() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    for name, service in SERVICES.items():
        image = service["image"]
        repo, _, tag = image.rpartition(":")
        assert repo and "/" not in tag, f"{name}: {image} has no tag"
        assert tag != "latest", f"{name}: {image}"
        if repo in (OWN_IMAGE, OWN_IMAGE + "-lab"):
            assert tag == version, f"{name}: {image} is not the project version {version}"
        else:
            assert re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: {image} is not a release"
    for image in dockerfile_base_images():
        assert re.fullmatch(r"python:3\.\d+-slim-\w+(@sha256:[0-9a-f]{64})?", image), image


# -- configs that compose mounts --------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(prometheus_services()))
def test_promtool_checks_the_mounted_prometheus_config(name: str) -> None:
    promtool = tool("promtool")
    service = SERVICES[name]
    cmd = flags(service["command"])
    config = host_path(service, cmd["--config.file"])
    assert config is not None and config.is_file(), f"{name}: {cmd['--config.file']} not mounted"
    agent = "agent" in cmd.get("--enable-feature", "").split(",")
    proc = run(promtool, "check", "config", *(["--agent"] if agent else []), str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    assert "--web.enable-lifecycle" not in cmd  # nobody may stop or reload it over HTTP
    if agent:
        assert "--storage.agent.path" in cmd and "--storage.tsdb.path" not in cmd
        assert doc.get("remote_write") and not doc.get("rule_files")
    elif "--web.enable-remote-write-receiver" in cmd:  # prometheus-receiver
        assert not doc.get("scrape_configs") and not doc.get("rule_files")
    else:  # the central one
        assert doc.get("rule_files"), f"{config} loads no rules"


def test_amtool_checks_the_mounted_alertmanager_config() -> None:
    amtool = tool("amtool")
    service = SERVICES["alertmanager"]
    config = host_path(service, flags(service["command"])["--config.file"])
    assert config is not None and config.is_file()
    proc = run(amtool, "check-config", str(config))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def networks_of(name: str) -> set[str]:
    service = SERVICES[name]
    mode = service.get("network_mode", "")
    if mode == "host":
        return {"<host>"}
    if mode.startswith("service:"):
        return networks_of(mode.removeprefix("service:"))
    return set(service.get("networks", []))  # a list or a mapping: the names either way


def fixed_addresses(service: Service) -> dict[str, str]:
    """network -> the service's fixed IPv4 address there (networks in long syntax)."""
    nets = service.get("networks", [])
    if not isinstance(nets, dict):
        return {}
    return {n: str(c["ipv4_address"]) for n, c in nets.items() if c and "ipv4_address" in c}


def listeners(host: str, port: int, client: str) -> list[str]:
    """The services answering host:port as `client` sees it: by service name on a shared
    network (with whatever shares that service's namespace), on the host's loopback, or at a
    fixed address on a network the client shares (or, from the host's own namespace, any
    bridge network: Linux routes to it)."""
    loopback = host in ("127.0.0.1", "localhost", "[::1]")
    found = []
    for name, service in SERVICES.items():
        mode = service.get("network_mode", "")
        if loopback:
            if networks_of(client) != {"<host>"}:
                continue
            if mode == "host" and listen_port(service) == port:
                found.append(name)
            # "${DUALSTACK_BIND_ADDRESS:-127.0.0.1}:9851:9851": host port before the last ":"
            published = [str(p).rsplit(":", 2) for p in service.get("ports", [])]
            if any(int(p[-2]) == port for p in published if len(p) >= 2):
                found.append(name)
            continue
        fixed = fixed_addresses(service)
        if host in fixed.values():
            net = next(n for n, a in fixed.items() if a == host)
            reachable = networks_of(client) == {"<host>"} or net in networks_of(client)
            if reachable and listen_port(service) == port:
                found.append(name)
            continue
        namespace = mode.removeprefix("service:") if mode.startswith("service:") else name
        if namespace != host or not networks_of(name) & networks_of(client):
            continue
        if listen_port(service) == port:
            found.append(name)
    return found


def listen_port(service: Service) -> int | None:
    command = service.get("command", [])
    if runs_probe(service) and command and command[0] == "serve":
        return parse_listen(flags(command).get("--listen", f"[::]:{VANTAGE_PORT}"))[1]
    cmd = flags(command) if isinstance(command, list) else {}
    if service.get("entrypoint") == SINK_ENTRYPOINT:
        return parse_listen(cmd["--listen"])[1]
    image = str(service.get("image", ""))
    default = {"prom/prometheus": 9090, "prom/alertmanager": 9093, "grafana/grafana": 3000}
    if "--web.listen-address" in cmd:
        return int(cmd["--web.listen-address"].rpartition(":")[2])
    return next((p for repo, p in default.items() if image.startswith(repo + ":")), None)


@pytest.mark.parametrize("name", sorted(prometheus_services()))
def test_scrape_and_remote_write_targets_are_compose_services(name: str) -> None:
    service = SERVICES[name]
    config = host_path(service, flags(service["command"])["--config.file"])
    assert config is not None
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    scraped = []
    for job in doc.get("scrape_configs", []):
        for static in job.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                found = listeners(host, int(port), name)
                assert found, f"{name} scrapes {target}: no service answers there"
                scraped += found
                for svc in found:
                    assert SERVICES[svc].get("profiles", []) in ([], service.get("profiles"))
    vantages = [s for s in scraped if is_own_image(SERVICES[s])]
    assert vantages or not doc.get("scrape_configs"), f"{name} scrapes no vantage"
    for rw in doc.get("remote_write", []):
        url = urlsplit(rw["url"])
        assert url.path == "/api/v1/write"
        found = listeners(str(url.hostname), int(url.port or 80), name)
        assert found == ["prometheus-receiver"], f"{name} writes to {rw['url']}: {found}"
    for am in doc.get("alerting", {}).get("alertmanagers", []):
        for static in am.get("static_configs", []):
            for target in static["targets"]:
                host, _, port = target.rpartition(":")
                assert listeners(host, int(port), name) == ["alertmanager"], target


def test_central_prometheus_scrapes_vantage_a_and_b() -> None:
    service = SERVICES["prometheus"]
    config = host_path(service, flags(service["command"])["--config.file"])
    assert config is not None
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    targets = {t for j in doc["scrape_configs"] for s in j["static_configs"] for t in s["targets"]}
    assert {"vantage-a:9851", "vantage-b:9851"} <= targets
    # and the pushed vantages, from the receiver, with the labels they were pushed with
    (pushed,) = [j for j in doc["scrape_configs"] if j.get("metrics_path") == "/federate"]
    assert pushed["honor_labels"] is True
    assert pushed["static_configs"] == [{"targets": ["prometheus-receiver:9090"]}]


def test_grafana_provisioning_points_at_the_stack() -> None:
    service = SERVICES["grafana"]
    provisioning = host_path(service, "/etc/grafana/provisioning")
    assert provisioning is not None and provisioning.is_dir()
    datasources = [
        ds
        for f in sorted((provisioning / "datasources").glob("*.y*ml"))
        for ds in yaml.safe_load(f.read_text(encoding="utf-8")).get("datasources", [])
    ]
    proms = [ds for ds in datasources if ds.get("type") == "prometheus"]
    assert proms, "no Prometheus datasource provisioned"
    for ds in proms:
        url = urlsplit(ds["url"])
        assert listeners(str(url.hostname), int(url.port or 80), "grafana") == ["prometheus"]
    providers = [
        p
        for f in sorted((provisioning / "dashboards").glob("*.y*ml"))
        for p in yaml.safe_load(f.read_text(encoding="utf-8")).get("providers", [])
    ]
    assert providers, "no dashboard provider provisioned"
    for provider in providers:
        path = host_path(service, provider["options"]["path"])
        assert path is not None and path.is_dir(), provider
        assert list(path.glob("*.json")), f"no dashboards in {path}"


# -- vantage services -------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(n for n, s in SERVICES.items() if runs_probe(s)))
def test_vantage_commands_parse_and_configs_load(name: str) -> None:
    service = SERVICES[name]
    args = build_parser().parse_args(service["command"])  # exits 2 on a bad command line
    assert service["cap_add"] == ["NET_RAW"]
    assert service.get("user") in (None, "10001:10001")  # the image's non-root user
    if args.command == "lab":
        assert args.dir.startswith("/var/lib/dualstack/")
        return
    assert args.command == "serve"
    parse_listen(args.listen)
    config = host_path(service, args.config)
    if config is None:  # written at run time by the lab, into a named volume
        lab = SERVICES[service["network_mode"].removeprefix("service:")]  # shares its netns
        lab_args = build_parser().parse_args(lab["command"])
        assert PurePosixPath(args.config) == PurePosixPath(lab_args.dir) / "lab.yml"
        lab_name = service["network_mode"].removeprefix("service:")
        assert service["depends_on"][lab_name]["condition"] == "service_healthy"
        return
    cfg = load_config(config)
    assert cfg.vantage == args.vantage == name, f"{name}: config and --vantage disagree"
    assert cfg.targets, f"{config} probes nothing"


def test_vantage_names_are_distinct() -> None:
    names = [
        flags(s["command"]).get("--vantage")
        for s in SERVICES.values()
        if runs_probe(s) and s["command"][0] == "serve"
    ]
    assert len(names) == len(set(names)) >= 2
    assert {"vantage-a", "vantage-b"} <= set(names)


def test_the_compose_vantages_are_one_site() -> None:
    """They share one host and its uplink: one witness, not several (docs/stack.md)."""
    sites = {}
    for name, service in SERVICES.items():
        if not runs_probe(service) or service["command"][0] != "serve":
            continue
        config = host_path(service, build_parser().parse_args(service["command"]).config)
        if config is not None:  # vantage-lab's config is written by the lab at run time
            sites[name] = load_config(config).site
    assert set(sites) >= {"vantage-a", "vantage-b", "vantage-nat", "vantage-host"}
    assert set(sites.values()) == {"compose"}, sites


# -- the webhook sink -------------------------------------------------------------------------


def test_alertmanager_receivers_post_to_a_compose_service() -> None:
    service = SERVICES["alertmanager"]
    config = host_path(service, flags(service["command"])["--config.file"])
    assert config is not None
    doc = yaml.safe_load(config.read_text(encoding="utf-8"))
    receivers = {r["name"]: r for r in doc["receivers"]}
    assert set(receivers) == {"pager", "ticket", "deadman"}
    for name, receiver in receivers.items():
        [hook] = receiver["webhook_configs"]
        url = urlsplit(hook["url"])
        assert url.path == f"/{name}", hook["url"]
        found = listeners(str(url.hostname), int(url.port or 80), "alertmanager")
        assert found == ["webhook-sink"], f"{name} posts to {hook['url']}: {found}"
    sink = SERVICES["webhook-sink"]
    assert sink["entrypoint"] == SINK_ENTRYPOINT
    assert host_path(sink, SINK_ENTRYPOINT[1]) == SINK_SCRIPT
    assert sink["read_only"] is True and sink["cap_drop"] == ["ALL"]
    assert (
        sink["image"] == SERVICES["vantage-a"]["image"]
        and sink["build"] == (SERVICES["vantage-a"]["build"])
    ), "the sink runs on the vantages' image (its Python), built the same way"


def test_the_webhook_sink_counts_notifications_and_passes_the_image_healthcheck() -> None:
    """The mounted script as the container runs it (on loopback here): it accepts a webhook
    message, reports it per receiver, and the image's HEALTHCHECK, pointed at its port by
    HEALTHCHECK_PORT as compose does, passes."""
    proc = subprocess.Popen(
        [sys.executable, str(SINK_SCRIPT), "--listen", "127.0.0.1:0"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        port = json.loads(proc.stdout.readline())["port"]
        base = f"http://127.0.0.1:{port}"
        message = {
            "receiver": "pager",
            "status": "firing",
            "groupKey": '{}/{severity="critical"}:{alertname="X", region="r"}',
            "groupLabels": {"alertname": "X", "region": "r"},
            "alerts": [{"labels": {"alertname": "X"}}, {"labels": {"alertname": "X"}}],
        }
        for _ in range(2):
            req = urllib.request.Request(
                f"{base}/pager", data=json.dumps(message).encode(), method="POST"
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                assert resp.status == 200
        bad = urllib.request.Request(f"{base}/ticket", data=b"not json", method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=10)
        assert err.value.code == 400
        err.value.close()
        with urllib.request.urlopen(base + "/", timeout=10) as resp:
            summary = json.loads(resp.read())
        assert summary == {"pager": {"notifications": 2, "group_keys": [message["groupKey"]]}}
        logged = json.loads(proc.stdout.readline())
        assert logged["receiver"] == "pager" and logged["alerts"] == 2
        assert logged["alertnames"] == ["X"]
        env = {**os.environ, "HEALTHCHECK_PORT": str(port)}
        check = subprocess.run(
            [sys.executable, "-c", healthcheck_code()], env=env, timeout=30, check=False
        )
        assert check.returncode == 0
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        if proc.stdout is not None:
            proc.stdout.close()


# -- Dockerfile -------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        full = pending + stripped
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def stages() -> list[list[tuple[str, str]]]:
    out: list[list[tuple[str, str]]] = [[]]
    for ins in dockerfile():
        if ins[0] == "FROM":
            out.append([])
        out[-1].append(ins)
    return out  # out[0]: the ARGs before the first FROM


def dockerfile_base_images() -> list[str]:
    args = dict(a.partition("=")[::2] for ins, a in stages()[0] if ins == "ARG")
    images = []
    for stage in stages()[1:]:
        ref = stage[0][1].split()[0]
        images.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref))
    return images


def readme_install_command() -> list[str]:
    block = re.search(r"```sh\n(.*?)```", README.read_text(encoding="utf-8"), re.DOTALL)
    assert block, "README has no sh block"
    first = block.group(1).splitlines()[0].split("#")[0]
    step = next(s.strip() for s in first.split("&&") if s.strip().startswith("pip install"))
    return shlex.split(step)


def stage_args(stage: list[tuple[str, str]], given: dict[str, str]) -> dict[str, str]:
    """The build arguments a stage declares: their defaults, or what the build gives."""
    out = {}
    for ins, arg in stage:
        if ins == "ARG":
            name, _, default = arg.partition("=")
            out[name] = given.get(name, default)
    return out


def install_words(given: dict[str, str]) -> list[str]:
    """The build's one `pip install`, build arguments expanded, pip's how-options dropped."""
    runs = [
        (stage, a) for stage in stages() for ins, a in stage if ins == "RUN" and "pip install" in a
    ]
    assert len(runs) == 1, runs
    stage, run = runs[0]
    args = stage_args(stage, given)
    expanded = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], run)
    return [w for w in shlex.split(expanded) if w not in PIP_HOW]


def test_dockerfile_installs_as_the_readme_says() -> None:
    readme = readme_install_command()
    assert readme == ["pip", "install", "."]
    words = install_words({})
    assert words == readme, f"Dockerfile: {words!r}; README: {shlex.join(readme)!r}"


def test_only_the_lab_image_has_the_lab_extra() -> None:
    """The vantage image is the plain package; `probe lab up` needs the lab extra, so the
    compose `lab` service builds an image of its own name with it."""
    for name, service in SERVICES.items():
        build = service.get("build")
        if build is None:
            continue
        given = build.get("args", {})
        words = install_words(given)
        if name == "lab":
            assert words == ["pip", "install", ".[lab]"], words
            assert service["image"].split(":")[0] == OWN_IMAGE + "-lab"
        else:
            assert words == ["pip", "install", "."], f"{name}: {words}"
            assert service["image"].split(":")[0] == OWN_IMAGE, name


def exec_form(text: str) -> list[str]:
    value = json.loads(text)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), text
    return value


def test_dockerfile_runtime_stage() -> None:
    final = dict(stages()[-1][1:])
    assert final["USER"].split(":")[0] not in ("0", "root")
    assert final["EXPOSE"] == str(VANTAGE_PORT)
    entrypoint, cmd = exec_form(final["ENTRYPOINT"]), exec_form(final["CMD"])
    assert entrypoint == ["probe"]
    assert cmd == ["serve", "--config", "/etc/dualstack/vantage.yml", "--listen", "[::]:9851"]
    assert build_parser().parse_args(cmd).command == "serve"
    healthcheck = final["HEALTHCHECK"]
    check = exec_form(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert check[:2] == ["python", "-c"]
    compile(check[2], "HEALTHCHECK", "exec")
    assert "/healthz" in check[2] and "urllib" in check[2]
    # Every own-image service keeps the image's user; the unprivileged ICMP group range is set
    # wherever the service has a network namespace of its own.
    for name, service in SERVICES.items():
        if runs_probe(service) and not service.get("network_mode"):
            assert service["sysctls"]["net.ipv4.ping_group_range"] == "0 2147483647", name


def healthcheck_code() -> str:
    final = dict(stages()[-1][1:])
    text = final["HEALTHCHECK"]
    return exec_form(text[text.index("CMD") + 3 :].strip())[2]


def ignore_patterns() -> list[str]:
    lines = DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
    patterns = [s for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    assert not [p for p in patterns if p.startswith("!")], "exceptions are not emulated here"
    return [p.strip("/") for p in patterns]


def _match(pattern: list[str], path: list[str]) -> bool:
    if not pattern:
        return not path
    if pattern[0] == "**":
        return any(_match(pattern[1:], path[i:]) for i in range(len(path) + 1))
    return bool(path) and fnmatchcase(path[0], pattern[0]) and _match(pattern[1:], path[1:])


def ignored(rel: PurePosixPath, patterns: list[str]) -> bool:
    """.dockerignore semantics (Go's filepath.Match plus `**`): a match on the path or on
    any folder above it excludes the path."""
    parts = list(rel.parts)
    return any(_match(p.split("/"), parts[:n]) for p in patterns for n in range(1, len(parts) + 1))


def build_context(dest: Path) -> None:
    """What the build stage's COPY instructions put into WORKDIR /src, after .dockerignore."""
    patterns = ignore_patterns()
    build = stages()[1]
    assert dict(build).get("WORKDIR") == "/src"
    for ins, args in build:
        if ins != "COPY":
            continue
        *sources, target = shlex.split(args)
        assert not any(s.startswith("--") for s in sources), args
        for source in sources:
            src = ROOT / source
            assert src.exists(), f"COPY {source}: not in the repository"
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
            for f in files:
                rel = PurePosixPath(f.relative_to(ROOT).as_posix())
                if ignored(rel, patterns):
                    continue
                inside = f.name if src.is_file() else f.relative_to(src).as_posix()
                out = dest / target / inside
                out.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(f, out)


def test_dockerignore_keeps_the_stack_configs_out_and_the_package_in() -> None:
    patterns = ignore_patterns()
    for kept in ("pyproject.toml", "README.md", "monitor/cli.py", "configs/catalog.yml"):
        assert not ignored(PurePosixPath(kept), patterns), kept
    for dropped in (
        "configs/compose/vantage-a.yml",
        "configs/prometheus/prometheus.yml",
        "configs/alertmanager.yml",
        "tests/test_compose.py",
        ".git/HEAD",
        "monitor/__pycache__/cli.cpython-311.pyc",
    ):
        assert ignored(PurePosixPath(dropped), patterns), dropped


def test_build_context_builds_the_package(tmp_path: Path) -> None:
    """`pip install .` in the image's build stage, short of Docker: the files the COPYs take
    (after .dockerignore) build a wheel with the code, the shipped configs and `probe`."""
    src = tmp_path / "src"
    build_context(src)
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1"}
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    proc = subprocess.run(
        [*pip, "-w", str(tmp_path / "dist"), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (wheel,) = (tmp_path / "dist").glob("dualstack_monitor-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        entry_points = next(n for n in names if n.endswith("entry_points.txt"))
        assert "probe = monitor.cli:main" in zf.read(entry_points).decode()
    for needed in (
        "monitor/cli.py",
        "monitor/lab/run.py",
        "probes/icmp.py",
        "monitor/configs/catalog.yml",
        "monitor/configs/default.yml",
        "monitor/schemas/run-report.schema.json",
        "probes/data/aws-ip-ranges.json",
    ):
        assert needed in names, needed
    stack_only = ("monitor/configs/compose/", "monitor/configs/prometheus/")
    assert not [n for n in names if n.startswith(stack_only)], "stack configs in the image"
    # The runtime stage's default config comes from the build stage's /src.
    for ins, args in stages()[-1]:
        if ins == "COPY" and args.startswith("--from=build /src/"):
            rel = args.split()[1].removeprefix("/src/")
            assert (src / rel).is_file(), args


# -- closed by default (issue 13, finding 1) ----------------------------------------------------

PUBLIC_ENV = ("GRAFANA_ADMIN_PASSWORD", "DUALSTACK_BIND_ADDRESS")


def compose_config(profile: str | None = None, **env_vars: str) -> subprocess.CompletedProcess[str]:
    """`docker-compose config` with exactly the given stack variables set."""
    compose = tool("docker-compose")
    env = {k: v for k, v in os.environ.items() if k not in PUBLIC_ENV} | env_vars
    args = [compose, "--project-directory", str(ROOT), "-f", str(COMPOSE_FILE)]
    if profile:
        args += ["--profile", profile]
    return subprocess.run(
        [*args, "config"], capture_output=True, text=True, timeout=120, check=False, env=env
    )


def published(resolved: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(service, host address, host port) of every published port, in Compose v1's short
    syntax ("127.0.0.1:9090:9090/tcp") or v2's long one."""
    out = []
    for name, service in resolved["services"].items():
        for port in service.get("ports", []):
            if isinstance(port, dict):
                out.append((name, str(port.get("host_ip", "")), str(port.get("published"))))
                continue
            parts = str(port).split("/")[0].rsplit(":", 2)
            host_ip = parts[0] if len(parts) == 3 else ""
            out.append((name, host_ip.strip("[]"), parts[-2] if len(parts) >= 2 else ""))
    return out


def test_the_stack_refuses_to_start_without_a_grafana_password() -> None:
    proc = compose_config()
    assert proc.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in proc.stderr
    grafana = SERVICES["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert grafana == "${GRAFANA_ADMIN_PASSWORD:?set GRAFANA_ADMIN_PASSWORD}"


@pytest.mark.parametrize("profile", [None, *PROFILES], ids=["default", *PROFILES])
def test_ports_are_published_on_loopback_unless_asked(profile: str | None) -> None:
    closed = compose_config(profile, GRAFANA_ADMIN_PASSWORD="x")
    assert closed.returncode == 0, closed.stderr
    ports = published(yaml.safe_load(closed.stdout))
    assert ports, "nothing published at all"
    assert {ip for _, ip, _ in ports} == {"127.0.0.1"}, ports
    opened = compose_config(profile, GRAFANA_ADMIN_PASSWORD="x", DUALSTACK_BIND_ADDRESS="0.0.0.0")
    assert {ip for _, ip, _ in published(yaml.safe_load(opened.stdout))} == {"0.0.0.0"}
    for name, service in SERVICES.items():
        for port in service.get("ports", []):
            assert str(port).startswith("${DUALSTACK_BIND_ADDRESS:-127.0.0.1}:"), (name, port)


def test_no_lifecycle_api_and_the_receiver_is_internal() -> None:
    """Nobody who reaches a published port can stop or reload Prometheus, or push series."""
    receivers = []
    for name, service in prometheus_services().items():
        command = service["command"]
        assert "--web.enable-lifecycle" not in command, name
        if "--web.enable-remote-write-receiver" in command:
            receivers.append(name)
            assert not service.get("ports"), f"{name} publishes its remote-write receiver"
            assert service.get("network_mode") is None, name
    assert receivers == ["prometheus-receiver"]
    assert "--web.enable-remote-write-receiver" not in SERVICES["prometheus"]["command"]
