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
    load_config,
    load_yaml,
    validate,
)
from monitor.engine import parity
from probes.base import ErrorKind
from probes.details import DETAILS_OF_KIND

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

    def names(kind: str, role: parity.Role) -> set[str]:
        return {
            row.field
            for cls in DETAILS_OF_KIND[kind]
            for row in parity.COMPARED[cls]
            if row.role is role
        }

    expected = {
        kind: (
            names(kind, parity.Role.SIGNIFICANT),
            names(kind, parity.Role.NORMAL),
            names(kind, parity.Role.NOT_COMPARED),
        )
        for kind in DETAILS_OF_KIND
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


@pytest.mark.parametrize("doc", [PROBES_MD, CONFIG_MD], ids=lambda p: p.name)
def test_links_in_docs_resolve(doc: Path) -> None:
    for file_part, anchor in _relative_links(doc):
        target = (doc.parent / file_part).resolve() if file_part else doc
        assert target.exists(), f"{doc.name} links to missing {file_part}"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{doc.name}: no heading for #{anchor}"
