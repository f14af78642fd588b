"""Every private attribute of a library the project relies on is still there: each adapter
module lists its own (PRIVATE), and an upgrade that removes one fails here, naming it, instead
of in a probe at run time. Only adapter modules import a library's private modules."""

from __future__ import annotations

import ast
import asyncio
import importlib
import ssl
from collections.abc import Callable
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
ADAPTERS = (
    "probes.adapters.aioquic",
    "probes.adapters.ssl",
    "monitor.web.adapters.aiohttp",
    "monitor.web.adapters.asyncio",
    "monitor.lab.adapters.hypercorn",
)
PRIVATE_MODULES = ("asyncio.sslproto", "hypercorn.asyncio", "hypercorn.utils")
"""Library modules that are not public API: imported by adapter modules only."""


def _quic_connection() -> object:
    from aioquic.quic.configuration import QuicConfiguration
    from aioquic.quic.connection import QuicConnection

    return QuicConnection(configuration=QuicConfiguration(is_client=True))


def _h3_connection() -> object:
    from aioquic.h3.connection import H3Connection
    from aioquic.quic.connection import QuicConnection

    quic = _quic_connection()
    assert isinstance(quic, QuicConnection)
    return H3Connection(quic)


def _tls_context() -> object:
    from aioquic.tls import Context

    return Context(is_client=True)


def _ssl_socket() -> object:
    import socket

    ctx = ssl.create_default_context()
    with socket.socket() as sock:
        tls = ctx.wrap_socket(sock, server_hostname="example.com", do_handshake_on_connect=False)
        tls.close()
        return tls


def _ssl_protocol() -> object:
    """What an SSLProtocol holds once made (its transport closed again, quietly)."""
    from asyncio import sslproto

    async def make() -> object:
        loop = asyncio.get_running_loop()
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        proto = sslproto.SSLProtocol(
            loop, asyncio.Protocol(), ctx, loop.create_future(), server_side=True
        )
        held = SimpleNamespace(**vars(proto))
        for value in vars(proto).values():
            if isinstance(value, asyncio.BaseTransport):
                value.close()
        return held

    return asyncio.run(make())


def _worker_context() -> object:
    from hypercorn.asyncio.worker_context import WorkerContext

    return WorkerContext(None)


INSTANCES: dict[str, Callable[[], object]] = {
    "aioquic.quic.connection.QuicConnection": _quic_connection,
    "aioquic.h3.connection.H3Connection": _h3_connection,
    "aioquic.tls.Context": _tls_context,
    "ssl.SSLSocket": _ssl_socket,
    "asyncio.sslproto.SSLProtocol": _ssl_protocol,
    "hypercorn.asyncio.worker_context.WorkerContext": _worker_context,
}
"""How to make an instance of an owner whose attribute is set in __init__."""


def resolve(dotted: str) -> object:
    """A module, or an attribute of one, by its dotted name."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            found: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            found = getattr(found, name)
        return found
    raise ImportError(dotted)


def has(owner: str, attribute: str) -> bool:
    try:
        found = resolve(owner)
    except (ImportError, AttributeError):
        return False
    if hasattr(found, attribute):
        return True
    if isinstance(found, ModuleType) or owner not in INSTANCES:
        return False
    return hasattr(INSTANCES[owner](), attribute)


CASES = [
    (adapter, owner, attribute)
    for adapter in ADAPTERS
    for owner, attribute in importlib.import_module(adapter).PRIVATE
]


@pytest.mark.parametrize(("adapter", "owner", "attribute"), CASES)
def test_the_private_attribute_is_still_there(adapter: str, owner: str, attribute: str) -> None:
    if adapter == "probes.adapters.ssl" and hasattr(ssl.SSLSocket, "get_verified_chain"):
        pytest.skip("public from Python 3.13: the private one is not used")
    assert has(owner, attribute), (
        f"{owner}.{attribute} is gone (an upgrade removed it): {adapter} relies on it; "
        "rework that adapter before lifting the version cap in pyproject.toml"
    )


def test_a_missing_attribute_is_reported() -> None:
    assert not has("aioquic.quic.connection.QuicConnection", "_no_such_attribute")
    assert not has("hypercorn.asyncio.no_such_module", "Server")


def test_the_adapters_see_what_they_use() -> None:
    """The verified chain is read through the adapter on this Python (3.11: the private way)."""
    from probes.adapters.ssl import verified_chain

    tls = _ssl_socket()
    assert isinstance(tls, ssl.SSLSocket)
    assert verified_chain(tls) == []  # not connected: nothing verified, and no error


def imports_of(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def test_only_adapters_import_private_library_modules() -> None:
    adapter_files = {ROOT / (a.replace(".", "/") + ".py") for a in ADAPTERS}
    bad = sorted(
        f"{path.relative_to(ROOT)} imports {name}"
        for pkg in ("monitor", "probes")
        for path in (ROOT / pkg).rglob("*.py")
        if path not in adapter_files
        for name in imports_of(path)
        if any(name == m or name.startswith(m + ".") for m in PRIVATE_MODULES)
    )
    assert bad == []


def private_uses(path: Path) -> list[str]:
    """`x._name` and `super()._name` where x is not self or cls: another object's private
    attribute (a library's, or a project class's reached from outside it)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if not (isinstance(node, ast.Attribute) and node.attr.startswith("_")):
            continue
        if node.attr.startswith("__") and node.attr.endswith("__"):
            continue  # dunders are public protocol
        owner = node.value
        if isinstance(owner, ast.Name) and owner.id in ("self", "cls"):
            continue
        found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_other_objects_private_attributes_are_touched_in_adapters_only() -> None:
    adapter_files = {ROOT / (a.replace(".", "/") + ".py") for a in ADAPTERS}
    bad = [
        use
        for pkg in ("monitor", "probes")
        for path in sorted((ROOT / pkg).rglob("*.py"))
        if path not in adapter_files
        for use in private_uses(path)
    ]
    assert bad == []
