"""The user documentation stays in step with the code: error kinds, verdicts, parity fields,
configuration keys, the error examples, and the links between README and docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from monitor.config import (
    CatalogConfig,
    ConfigError,
    ConfigModel,
    DnsConfig,
    DnsLargeConfig,
    EventsConfig,
    HttpConfig,
    IcmpConfig,
    IpRangesConfig,
    ParityConfig,
    RaceConfig,
    ResolverConfig,
    Route53Config,
    SourceConfig,
    TargetConfig,
    TargetRaceConfig,
    TargetTlsConfig,
    TlsConfig,
    TraceConfig,
    load_config,
    load_yaml,
    validate,
)
from monitor.engine import parity
from monitor.serve.metrics import metrics
from probes import kinds
from probes.base import ErrorKind

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PROBES_MD = ROOT / "docs" / "probes.md"
CONFIG_MD = ROOT / "docs" / "configuration.md"

LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"`([^`]+)`")


def section(text: str, heading: str) -> str:
    """The body under `heading` (a whole heading line), up to the next heading of its level."""
    level = heading.split(" ", 1)[0]
    start = text.index(f"\n{heading}\n") + len(heading) + 2
    end = re.search(rf"^{re.escape(level)} ", text[start:], re.MULTILINE)
    return text[start : start + end.start()] if end else text[start:]


def table_rows(text: str) -> list[list[str]]:
    """The cells of every markdown table row in `text`, header and separator rows left out."""
    rows = []
    for line in text.splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows[1:] if rows else rows


def first_codes(rows: list[list[str]]) -> list[str]:
    return [m.group(1) for row in rows if (m := CODE.fullmatch(row[0]))]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    return {slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


def test_every_error_kind_is_in_the_error_table() -> None:
    rows = table_rows(section(PROBES_MD.read_text(encoding="utf-8"), "## Error kinds"))
    documented = first_codes(rows)
    assert sorted(documented) == sorted(k.value for k in ErrorKind)
    assert len(documented) == len(set(documented)), "a kind is listed twice"


def test_every_verdict_is_documented() -> None:
    text = PROBES_MD.read_text(encoding="utf-8")
    for verdict in parity.Verdict:
        assert f"`{verdict.value}`" in text, verdict
    rows = table_rows(section(text, "### Verdicts"))
    assert sorted(first_codes(rows)) == sorted(v.value for v in parity.Verdict)


def test_compared_fields_table_matches_parity() -> None:
    rows = table_rows(section(PROBES_MD.read_text(encoding="utf-8"), "### Compared fields"))
    documented = {
        m.group(1): (
            set(CODE.findall(counts)),
            set(CODE.findall(normal)),
            set(CODE.findall(not_compared)),
        )
        for probe, counts, normal, not_compared in rows
        if (m := CODE.fullmatch(probe))
    }

    def names(kind: str, role: kinds.Role) -> set[str]:
        spec = kinds.get(kind)
        return {
            row.field
            for cls in spec.details
            # a kind that declares no comparison (dns_tcp) is compared as its details' kind
            for row in (spec.compared.get(cls, ()) if spec.compared else kinds.of_details(cls))
            if row.role is role
        }

    expected = {
        kind: (
            names(kind, kinds.Role.SIGNIFICANT),
            names(kind, kinds.Role.NORMAL),
            names(kind, kinds.Role.NOT_COMPARED),
        )
        for kind in kinds.names()
    }
    assert documented == expected


CONFIG_MODELS: list[tuple[str, type[BaseModel]]] = [
    ("top level", ConfigModel),
    ("targets[]", TargetConfig),
    ("resolver", ResolverConfig),
    ("tls", TlsConfig),
    ("catalog", CatalogConfig),
    ("targets[].http", HttpConfig),
    ("targets[].tls", TargetTlsConfig),
    ("route53", Route53Config),
    ("parity", ParityConfig),
    ("source", SourceConfig),
    ("ip_ranges", IpRangesConfig),
    ("race", RaceConfig),
    ("targets[].race", TargetRaceConfig),
    ("targets[].icmp", IcmpConfig),
    ("targets[].dns", DnsConfig),
    ("targets[].dns.large", DnsLargeConfig),
    ("events", EventsConfig),
    ("trace", TraceConfig),
]


@pytest.mark.parametrize(("where", "model"), CONFIG_MODELS, ids=[w for w, _ in CONFIG_MODELS])
def test_every_config_key_is_documented(where: str, model: type[BaseModel]) -> None:
    text = CONFIG_MD.read_text(encoding="utf-8")
    missing = [key for key in model.model_fields if f"`{key}`" not in text]
    assert not missing, f"{where}: not in docs/configuration.md: {missing}"


def test_config_examples_are_valid() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", CONFIG_MD.read_text(encoding="utf-8"), re.DOTALL)
    assert blocks, "docs/configuration.md has no YAML example"
    for i, block in enumerate(blocks):
        validate(load_yaml(block, f"example {i}"), f"example {i}")


def test_config_error_examples_are_what_the_loader_says(monkeypatch: pytest.MonkeyPatch) -> None:
    examples = re.findall(
        r"^probe: (tests/testdata/config/[\w.-]+\.yml): (.+)$",
        CONFIG_MD.read_text(encoding="utf-8"),
        re.MULTILINE,
    )
    assert len(examples) >= 3
    monkeypatch.chdir(ROOT)  # the messages name the file as it was given
    for path, message in examples:
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value) == f"{path}: {message}"


def _relative_links(path: Path) -> list[tuple[str, str]]:
    """(file part, anchor) of each relative link in a markdown file, code blocks left out."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.DOTALL)
    out = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        out.append((file_part, anchor))
    return out


def test_readme_links_to_docs_exist() -> None:
    links = _relative_links(README)
    for file_part, _ in links:
        if file_part:
            assert (README.parent / file_part).exists(), f"README.md links to missing {file_part}"
    linked = {(README.parent / f).resolve() for f, _ in links if f}
    assert {PROBES_MD, CONFIG_MD} <= linked


@pytest.mark.parametrize(
    "doc",
    [
        PROBES_MD,
        CONFIG_MD,
        README,
        ROOT / "docs" / "stack.md",
        ROOT / "docs" / "runbook.md",
        ROOT / "docs" / "scale.md",
        ROOT / "benchmarks" / "README.md",
        ROOT / "CHANGELOG.md",
    ],
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_links_in_docs_resolve(doc: Path) -> None:
    for file_part, anchor in _relative_links(doc):
        target = (doc.parent / file_part).resolve() if file_part else doc
        assert target.exists(), f"{doc.name} links to missing {file_part}"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{doc.name}: no heading for #{anchor}"


# --- what a newcomer reads is what the code does (issue 16) -----------------------------------

STACK_MD = ROOT / "docs" / "stack.md"
RUNBOOK_MD = ROOT / "docs" / "runbook.md"
PLACEHOLDERS = {
    "TARGET": "healthy",
    "T": "healthy",
    "VANTAGE": "vantage-a",
    "FILE": "x.yml",
    "PEM": "x.pem",
    "KIND": "tcp",
    "NAME": "healthy",
    "N": "3",
    "PROBE": "tcp",
}


def subsection(text: str, heading: str) -> str:
    """The body under `heading`, up to the next heading of its level or a higher one."""
    level = len(heading.split(" ", 1)[0])
    body = section(text, heading)
    end = re.search(rf"^#{{1,{level}}} ", body, re.MULTILINE)
    return body[: end.start()] if end else body


COMMAND = re.compile(
    r"(?:^|&& |docker compose exec (?:-T )?[\w-]+ )"
    r"(probe (?:run|targets|serve|config|lab|ip-ranges)\b.*)"
)


def probe_commands(text: str) -> list[list[str]]:
    """Every `probe ...` command line in code spans and sh blocks (after `docker compose exec
    [-T] SERVICE`), continuations joined, cut at a pipe, `&&`, `;` or a comment. A bare name
    (`probe serve`), `--help` and synopsis lines (`[--config FILE]`) are not commands."""
    import shlex

    found: list[str] = []
    fence = r"^ *```(\w*)\n(.*?)^ *```"
    for lang, block in re.findall(fence, text, re.DOTALL | re.MULTILINE):
        if lang in ("", "sh", "text"):
            found += block.replace("\\\n", " ").splitlines()
    prose = re.sub(fence, "", text, flags=re.DOTALL | re.MULTILINE)
    found += [" ".join(c.split()) for c in CODE.findall(prose)]
    commands = []
    for line in found:
        m = COMMAND.search(line.strip().removeprefix("$ "))
        cmd = re.split(r"\s(?:\||&&|;|#)\s?", m.group(1))[0] if m else ""
        if not cmd or "[" in cmd or "..." in cmd:
            continue
        words = [PLACEHOLDERS.get(w, w) for w in shlex.split(cmd)][1:]
        if "--help" in words or not any(w.startswith("-") for w in words):
            continue
        commands.append(words)
    return commands


@pytest.mark.parametrize(
    "doc", [README, CONFIG_MD, STACK_MD, RUNBOOK_MD, PROBES_MD], ids=lambda p: p.name
)
def test_every_documented_probe_command_parses(doc: Path) -> None:
    from monitor.cli import build_parser

    parser = build_parser()
    commands = probe_commands(doc.read_text(encoding="utf-8"))
    for argv in commands:
        if argv[:1] == ["run"] and len(argv) == 1:
            continue
        args = parser.parse_args(argv)  # exits 2 (fails the test) on an unknown option
        # a run that selects one family only compares nothing: no doc recommends it to check IPv6
        if args.command == "run":
            assert args.family != "ipv6", argv
    if doc in (README, STACK_MD, RUNBOOK_MD):
        assert commands, f"no probe command found in {doc.name}"


@pytest.mark.parametrize("doc", [STACK_MD, RUNBOOK_MD], ids=lambda p: p.name)
def test_commands_inside_a_container_use_its_mounted_config(doc: Path) -> None:
    """A vantage container's own configuration is /etc/dualstack/vantage.yml: a command
    without --config would probe the packaged AWS catalog, not what the vantage probes."""
    text = doc.read_text(encoding="utf-8").replace("\\\n", " ")
    inside = re.findall(r"docker compose exec (?:-T )?[\w-]+ (probe (?:run|targets)[^`|\n]*)", text)
    assert inside
    for command in inside:
        assert "--config /etc/dualstack/vantage.yml" in command, command


def test_readme_does_not_promise_http3_everywhere() -> None:
    from monitor.catalog import shipped
    from monitor.cli import DEFAULT_CONFIG

    text = README.read_text(encoding="utf-8")
    intro = text[: text.index("```")]
    assert "HTTP/3 over QUIC where the endpoint serves it" in " ".join(intro.split())
    import importlib.resources

    with importlib.resources.as_file(shipped(DEFAULT_CONFIG)) as path:
        cfg = load_config(path)
    kinds = {k for t in cfg.targets for k in t.probes}
    sentence = re.search(r"Each target gets (.*?); no `icmp`", " ".join(text.split()))
    assert sentence and set(CODE.findall(sentence.group(1))) == kinds
    assert "http3" not in kinds


def test_readme_exit_statuses_are_the_exit_table() -> None:
    from monitor.run.output import EXIT_STATUSES

    text = README.read_text(encoding="utf-8")
    table = text[text.index("**Exit status**") :]
    rows = table_rows(table[: table.index("\n\n", table.index("| status |"))])
    assert [(int(code), meaning) for code, meaning in rows] == [
        (s.code, s.meaning) for s in EXIT_STATUSES
    ]


def test_readme_verdicts_say_what_to_do_and_link_the_runbook() -> None:
    text = README.read_text(encoding="utf-8")
    verdicts = subsection(text, "### Verdicts")
    rows = table_rows(verdicts[: verdicts.index("Differences that are normal")])
    assert sorted(first_codes(rows)) == sorted(v.value for v in parity.Verdict)
    assert all(len(row) == 3 and row[2] for row in rows)
    runbook = anchors(RUNBOOK_MD)
    linked = re.findall(r"\(docs/runbook\.md#([\w-]+)\)", subsection(text, "### Verdicts"))
    assert linked and all(a in runbook for a in linked)
    first = subsection(text, "## Your first 15 minutes")
    assert "docs/runbook.md" in first and "probe config init" in first


def test_readme_first_15_minutes_example_target_loads() -> None:
    first = subsection(README.read_text(encoding="utf-8"), "## Your first 15 minutes")
    block = re.search(r"```yaml\n(.*?)```", first, re.DOTALL)
    assert block
    import textwrap

    cfg = validate(load_yaml(textwrap.dedent(block.group(1)), "readme"), "readme")
    assert cfg.targets[0].host.startswith("dualstack.")


def test_readme_listen_examples_parse() -> None:
    from monitor.web.server import parse_listen

    text = " ".join(README.read_text(encoding="utf-8").split())
    paragraph = text[text.index("`--listen ADDR:PORT`") :]
    paragraph = paragraph[: paragraph.index("Endpoints:")]
    assert "an IP address of this host" in paragraph
    examples = [c for c in CODE.findall(paragraph) if c.endswith(":9851")]
    assert len(examples) >= 5
    for example in examples:
        parse_listen(example)
    with pytest.raises(ValueError, match="an IP address of this host"):
        parse_listen("localhost:9851")


def test_readme_one_container_recipe_has_ipv6() -> None:
    import shlex

    from monitor.cli import build_parser

    text = subsection(README.read_text(encoding="utf-8"), "### One container")
    block = re.search(r"```sh\n(.*?)```", text, re.DOTALL)
    assert block
    run = next(
        line for line in block.group(1).replace("\\\n", " ").splitlines() if "docker run" in line
    )
    words = shlex.split(run)
    assert "--network" in words and words[words.index("--network") + 1] == "host"
    image = next(w for w in words if w.startswith("dualstack-monitor:"))
    args = build_parser().parse_args(words[words.index(image) + 1 :])
    assert args.command == "serve" and args.listen == "127.0.0.1:9851"
    assert args.config == "/etc/dualstack/vantage.yml"


def test_readme_existing_prometheus_snippets_check(tmp_path: Path) -> None:
    import shutil
    import subprocess

    import yaml

    text = subsection(
        README.read_text(encoding="utf-8"), "### An existing Prometheus and Alertmanager"
    )
    prom, am = re.findall(r"```yaml\n(.*?)```", text, re.DOTALL)
    rules = tmp_path / "rules"
    shutil.copytree(ROOT / "configs" / "prometheus" / "rules", rules)
    (tmp_path / "prometheus.yml").write_text(prom)
    assert {Path(f).name for f in yaml.safe_load(prom)["rule_files"]} <= {
        p.name for p in rules.iterdir()
    }
    (tmp_path / "alertmanager.yml").write_text(am)
    for argv in (
        ["promtool", "check", "config", str(tmp_path / "prometheus.yml")],
        ["amtool", "check-config", str(tmp_path / "alertmanager.yml")],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr


def test_configuration_md_route53_filters_apply(tmp_path: Path) -> None:
    from monitor.run.select import Selection

    text = section(CONFIG_MD.read_text(encoding="utf-8"), "### `route53`")
    assert "do not apply" not in text
    assert "`--target route53-ns-example.com-1`" in text
    path = tmp_path / "z.yml"
    path.write_text("route53: {zones: [example.com]}\n")
    cfg = load_config(path)
    targets, kept = Selection(targets=("route53-ns-example.com-1",)).apply(cfg)
    assert targets == [] and kept.zones == ("example.com",)
    with pytest.raises(ConfigError, match="no such target"):
        Selection(targets=("route53-ns-example.com-9",)).apply(cfg)


def test_configuration_md_empty_families_is_the_error_it_says() -> None:
    text = section(CONFIG_MD.read_text(encoding="utf-8"), "### `families`")
    quoted = re.search(r"An empty list is an error: `([^`]+)`", " ".join(text.split()))
    assert quoted
    with pytest.raises(ConfigError) as info:
        validate({"families": []}, "f.yml")
    assert str(info.value) == f"f.yml: {quoted.group(1)}"
    targets_row = next(
        row
        for row in table_rows(section(CONFIG_MD.read_text(encoding="utf-8"), "### `targets`"))
        if row[0] == "`families`"
    )
    assert "an empty list is an error" in targets_row[3]
    with pytest.raises(ConfigError, match="must not be empty"):
        validate({"targets": [{"name": "a", "host": "a.example", "families": []}]}, "f.yml")


def test_configuration_md_source_is_checked_as_it_says(tmp_path: Path) -> None:
    from monitor.engine.check import check_sources

    text = " ".join(section(CONFIG_MD.read_text(encoding="utf-8"), "### `source`").split())
    assert "not that it is of the key's family" not in text
    quoted = re.search(
        r"`<file>: (source\.ipv6: 2001:db8::10 is not an address of this host [^`]*)`", text
    )
    assert quoted
    path = tmp_path / "s.yml"
    path.write_text("source: {ipv6: '2001:db8::10'}\n")
    with pytest.raises(ConfigError) as info:
        check_sources(load_config(path))
    assert str(info.value) == f"{path}: {quoted.group(1)}"


def test_stack_md_check_command_compares_both_families() -> None:
    text = " ".join(STACK_MD.read_text(encoding="utf-8").split())
    check = re.search(r"`(docker compose exec vantage-a probe run [^`]*)`", text)
    assert check
    assert "--config /etc/dualstack/vantage.yml" in check.group(1)
    assert "--family" not in check.group(1)


def test_json_changes_are_said_in_the_changelog_and_the_readme() -> None:
    import json

    schema = json.loads((ROOT / "monitor" / "schemas" / "run-report.schema.json").read_text())
    assert "CHANGELOG.md" in schema["$comment"] and len(schema["$comment"].splitlines()) == 1
    changelog = " ".join((ROOT / "CHANGELOG.md").read_text(encoding="utf-8").split())
    readme = " ".join(README.read_text(encoding="utf-8").split())
    for said in (
        "`counts`",
        "`exit_status`",
        "`service`, `region` and `host`",
        "`none`",
        "ISO 8601",
    ):
        assert said in changelog, said
        assert said in readme, said
    assert "counts" in schema["required"] and "exit_status" not in schema["required"]


def test_readme_says_how_often_a_failure_is_logged() -> None:
    from monitor.serve.vantage import FAILURE_REMINDER_SECONDS

    text = " ".join(README.read_text(encoding="utf-8").split())
    assert f"a reminder every {FAILURE_REMINDER_SECONDS / 60:g} minutes while it lasts" in text
    assert "only with `--log-level debug`" in text


def test_the_metric_table_is_the_exporters() -> None:
    """docs/stack.md's metric table names every metric of monitor/serve/metrics.py (as scraped:
    counters end in `_total`) with its type first, and nothing else; the README links it."""
    rows = table_rows(section(STACK_MD.read_text(encoding="utf-8"), "## Metrics"))
    documented = {m.group(1): row[1] for row in rows if (m := CODE.fullmatch(row[0]))}
    exported = {m.name + ("_total" if m.type == "counter" else ""): m.type for m in metrics()}
    assert documented.keys() == exported.keys(), documented.keys() ^ exported.keys()
    for name, kind in exported.items():
        assert re.match(r"\w+", documented[name])[0] == kind, (name, documented[name])  # type: ignore[index]
    readme = README.read_text(encoding="utf-8")
    assert "(docs/stack.md#metrics)" in subsection(readme, "### Metrics")
