"""Text a remote peer chose (an error message, a header, a certificate name) made safe to show
anywhere: control characters become visible escapes and the length is bounded.

Applied once, where such a string enters a result (ProbeError, the details dataclasses), so the
table, the JSON, both log formats and the status page all receive it already safe. Idempotent:
cleaning clean text changes nothing, so a value may pass through twice without harm.
"""

from __future__ import annotations

import re

MAX_PEER_TEXT = 512
"""Characters kept of one peer string; a longer one is cut and ends with an ellipsis."""

# C0 controls (newline and tab included), DEL and C1; plus the Unicode characters that move
# or reorder text on a screen: line and paragraph separators, bidirectional overrides and
# isolates (they can make a log line read differently from what it holds).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    named = _NAMED.get(ch)
    if named is not None:
        return named
    code = ord(ch)
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """Every control character as a visible escape (`\\x1b`, `\\n`); nothing cut."""
    return _UNSAFE.sub(_escape, text)


def peer_text(text: str) -> str:
    """Escape control characters, then cut to MAX_PEER_TEXT characters (ellipsis included)."""
    safe = escape_controls(text)
    if len(safe) > MAX_PEER_TEXT:
        return safe[: MAX_PEER_TEXT - 1] + "…"
    return safe


def peer_text_or_none(text: str | None) -> str | None:
    return None if text is None else peer_text(text)
