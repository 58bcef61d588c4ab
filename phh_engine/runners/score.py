"""The score in a verifier's output (docs/verification.md#score). Its own module with no
imports beyond the standard library: `runners/verify.py` runs it in a child process with a
deadline (an operator's pattern may backtrack for hours)."""

from __future__ import annotations

import math
import re


def parse_score(pattern: str | None, text: str) -> float | None:
    """The score in `text`: the LAST match of `pattern`; its group `score`, else its first
    group, else the whole match, read as a float. None without a pattern, a match, or a
    number there (nan and infinities are not scores)."""
    if not pattern:
        return None
    last: re.Match[str] | None = None
    for last in re.finditer(pattern, text, re.MULTILINE):  # noqa: B007 (we want the last)
        pass
    if last is None:
        return None
    if "score" in last.re.groupindex:
        raw = last.group("score")
    elif last.re.groups:
        raw = last.group(1)
    else:
        raw = last.group(0)
    raw = (raw or "").strip()
    if "_" in raw:  # float() reads "1_000"; a score is written as a plain number
        return None
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) else None
