"""Logging setup for `probe serve`: text for people or JSON lines for log pipelines.

Structured fields travel in `extra={"fields": {...}}` and become top-level JSON keys, or
`key="value"` pairs in text, where every string is quoted and no control character is printed
raw: a value a peer chose cannot start a line of its own or drive the terminal. The libraries'
own records (aioquic, aiohttp, asyncio) below ERROR are dropped unless the level is debug;
what is kept is written in the same format as ours.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

from probes.text import escape_controls

OUR_LOGGERS = frozenset({"dualstack", "monitor", "probes"})


class LibraryFilter(logging.Filter):
    """Keeps our records, and the libraries' from ERROR up (or all of them at debug)."""

    def __init__(self, *, debug: bool) -> None:
        super().__init__()
        self.debug = debug

    def filter(self, record: logging.LogRecord) -> bool:
        return (
            self.debug
            or record.levelno >= logging.ERROR
            or record.name.split(".")[0] in OUR_LOGGERS
        )


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            doc.update(fields)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def quote(value: object) -> str:
    """A field value for a text line: numbers, booleans and None as they are, anything else
    in double quotes with `"` escaped and control characters as visible escapes."""
    if value is None or isinstance(value, bool | int | float):
        return str(value)
    return '"' + escape_controls(str(value)).replace('"', '\\"') + '"'


class TextFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        # The message may quote a peer too (through %s): escaped, it stays on its line. A
        # traceback, appended after this by format(), keeps its own lines.
        record.message = escape_controls(record.message)
        line = super().formatMessage(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={quote(v)}" for k, v in fields.items())
        return line


def setup(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    debug = level.lower() == "debug"
    handler.addFilter(LibraryFilter(debug=debug))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # aioquic makes a record per connection at INFO: not even built, unless debugging.
    logging.getLogger("quic").setLevel(logging.NOTSET if debug else logging.ERROR)
