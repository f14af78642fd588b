"""The shape of the house, checked: no import cycle (imports inside functions and under
TYPE_CHECKING count), layers only import downwards, and commands that probe nothing load no
protocol library. docs/architecture.md is checked against the tree both ways."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("monitor", "probes")
PROTOCOL_LIBRARIES = ("aioquic", "h2")


def module_files() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def import_graph() -> dict[str, set[str]]:
    """Every module's imports of project modules, wherever they stand in the file."""
    modules = module_files()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for name, path in modules.items():
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = name.split(".") if is_pkg else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base
                    for a in node.names
                ]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle() -> None:
    assert find_cycle(import_graph()) is None


def test_the_cycle_finder_finds_one() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


# What each layer may import (besides itself): probes are the bottom, the CLI the top.
ALLOWED = {
    "probes": {"probes"},
    "monitor.engine": {"probes", "monitor", "monitor.config", "monitor.catalog", "monitor.engine"},
    "monitor.run": {
        "probes",
        "monitor",
        "monitor.config",
        "monitor.catalog",
        "monitor.engine",
        "monitor.run",
    },
    "monitor.serve": {
        "probes",
        "monitor",
        "monitor.config",
        "monitor.catalog",
        "monitor.engine",
        "monitor.serve",
        "monitor.web",
    },
    "monitor.web": {
        "probes",
        "monitor",
        "monitor.config",
        "monitor.catalog",
        "monitor.engine",
        "monitor.serve.state",
        "monitor.web",
    },
    "monitor.lab": {"probes", "monitor", "monitor.lab"},
}


def _layer(module: str) -> str:
    for layer in sorted(ALLOWED, key=len, reverse=True):
        if module == layer or module.startswith(layer + "."):
            return layer
    return module


@pytest.mark.parametrize("layer", sorted(ALLOWED))
def test_layers_import_only_downwards(layer: str) -> None:
    allowed = ALLOWED[layer]
    bad = {
        (mod, dep)
        for mod, deps in import_graph().items()
        if _layer(mod) == layer
        for dep in deps
        if not any(dep == a or dep.startswith(a + ".") for a in allowed if a != "monitor")
        and dep != "monitor"
    }
    assert bad == set()


def test_monitor_package_init_loads_no_protocol_library() -> None:
    code = (
        "import sys, probes.base, monitor, monitor.config, monitor.catalog; "
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {PROTOCOL_LIBRARIES!r}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("argv", [["targets"], ["run", "--dry-run"], ["config", "init"]])
def test_commands_that_send_nothing_load_no_protocol_library(argv: list[str]) -> None:
    code = (
        "import sys, contextlib, io\n"
        "from monitor.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rc = main({argv!r})\n"
        f"print(rc, sorted(m for m in sys.modules if m.split('.')[0] in {PROTOCOL_LIBRARIES!r}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0 []"


def test_probe_handler_does_load_them() -> None:
    """The check above can fail: the handler imports every protocol."""
    code = (
        "import sys, probes.handler; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({PROTOCOL_LIBRARIES!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str(sorted(PROTOCOL_LIBRARIES))


ARCH = ROOT / "docs" / "architecture.md"


def named_modules(text: str) -> set[str]:
    """Every `monitor/...py` / `probes/...py` path or `monitor/...` package the page names."""
    return set(re.findall(r"\b((?:monitor|probes)/(?:[A-Za-z0-9_.-]+/?)*)", text))


def test_architecture_page_names_only_what_exists() -> None:
    for name in named_modules(ARCH.read_text()):
        assert (ROOT / name.rstrip("/")).exists(), f"docs/architecture.md names {name}"


def test_architecture_page_names_every_package_and_module() -> None:
    text = ARCH.read_text()
    named = {n.rstrip("/") for n in named_modules(text)}
    for module, path in module_files().items():
        rel = path.relative_to(ROOT)
        wanted = rel.parent if path.name == "__init__.py" else rel
        if path.name == "__init__.py" or module.startswith("monitor.lab."):
            # packages by folder; the lab's own modules are one box in the picture
            wanted = rel.parent
        assert str(wanted) in named, f"docs/architecture.md does not name {wanted}"


def test_every_package_is_shipped() -> None:
    """A sub-package missing from pyproject's list works in a checkout and breaks an install."""
    import tomllib

    listed = set(
        tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        ".".join(p.parent.relative_to(ROOT).parts)
        for pkg in PACKAGES
        for p in (ROOT / pkg).rglob("__init__.py")
    }
    assert found <= listed
