"""The JSON schema of the report (`probe run --format json`, `/api/v1/results`): the document's
shape from monitor/schemas/run-report.schema.json, and what depends on the probe kinds (their
names, phases and details) from the kind registry, so a kind registered anywhere validates.

A details type that the file describes (by its snake_case name, `TcpConnect` -> `tcp_connect`)
keeps its description; any other is described from its dataclass fields.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.resources
import json
import re
import types
import typing
from typing import Any

from probes import kinds

SCHEMA_FILE = "schemas/run-report.schema.json"
_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


@functools.cache
def _document() -> str:
    return importlib.resources.files("monitor").joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def report_schema() -> dict[str, Any]:
    """The whole schema, for the kinds registered now (a fresh dict each call)."""
    schema: dict[str, Any] = json.loads(_document())
    defs: dict[str, Any] = schema["$defs"]
    defs["probe"] = {"enum": list(kinds.names())}
    phases = ["resolve", *dict.fromkeys(p for k in kinds.kinds() for p in k.phases)]
    result = defs["result"]
    result["properties"]["phases"]["propertyNames"] = {"enum": phases}
    for kind in kinds.kinds():
        refs = []
        for cls in kind.details:
            name = def_name(cls)
            defs.setdefault(name, _describe(cls))
            refs.append({"$ref": f"#/$defs/{name}"})
        result["allOf"].append(
            {
                "if": {"properties": {"probe": {"const": kind.name}}},
                "then": {
                    "properties": {"details": {"oneOf": [*refs, {"$ref": "#/$defs/no_details"}]}}
                },
            }
        )
    return schema


def def_name(cls: type[Any]) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).lower()


def _describe(cls: type[Any]) -> dict[str, Any]:
    """A details dataclass as a JSON object: every field present, by its type."""
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    return {
        "description": (cls.__doc__ or cls.__name__).strip().splitlines()[0],
        "type": "object",
        "required": fields,
        "additionalProperties": False,
        "properties": {name: _of_type(hints[name]) for name in fields},
    }


def _of_type(hint: Any) -> dict[str, Any]:
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        inner = [a for a in args if a is not type(None)]
        out = _of_type(inner[0]) if len(inner) == 1 else {}
        if "type" in out and type(None) in args:
            out["type"] = [out["type"], "null"]
        return out
    if typing.get_origin(hint) in (tuple, list):
        return {"type": "array", "items": _of_type(args[0]) if args else {}}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return _describe(hint)
    return {"type": _JSON_TYPES[hint]} if hint in _JSON_TYPES else {}
