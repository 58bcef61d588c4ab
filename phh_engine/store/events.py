"""Reading `codex exec --json` events incrementally into the facts phh records.

Only what orchestration needs is kept (thread id, turn outcome, usage, a one-line
`current_item`); the raw stream stays in `codex.events.jsonl` for people.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_ITEM_CHARS = 160
MAX_ERRORS = 20


def _one_line(text: str, limit: int = MAX_ITEM_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def describe_item(item: dict[str, Any]) -> str | None:
    """A short human line for an item: what the agent is doing now."""
    kind = item.get("type")
    if kind == "command_execution":
        return "$ " + _one_line(item.get("command", ""))
    if kind == "agent_message":
        return "message: " + _one_line(item.get("text", ""))
    if kind == "reasoning":
        return "thinking: " + _one_line(item.get("text", ""), 80)
    if kind == "file_change":
        paths = [c.get("path", "?") for c in item.get("changes", []) if isinstance(c, dict)]
        return "edit " + _one_line(", ".join(paths))
    if kind == "mcp_tool_call":
        return f"tool {item.get('server', '')}.{item.get('tool', '')}"
    if kind == "web_search":
        return "search: " + _one_line(item.get("query", ""))
    if kind == "todo_list":
        return "plan updated"
    if kind == "error":
        return "error: " + _one_line(item.get("message", ""))
    return str(kind) if kind else None


@dataclass(slots=True)
class EventFacts:
    thread_id: str | None = None
    turn_started: bool = False
    turn_completed: bool = False
    turn_failed: str | None = None
    current_item: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    files_changed: list[str] = field(default_factory=list)
    events_seen: int = 0
    skipped_events: int = 0

    def apply(self, ev: dict[str, Any]) -> bool:
        """Fold one event in; True when something worth persisting changed. An event of an
        unexpected shape (a field of the wrong type, absurd nesting) is counted and skipped:
        the monitor never dies on a line Codex or an agent wrote."""
        self.events_seen += 1
        try:
            return self._apply(ev)
        except (AttributeError, TypeError, ValueError, RecursionError):
            self.skipped_events += 1
            return False

    def _apply(self, ev: dict[str, Any]) -> bool:
        kind = ev.get("type")
        if kind == "thread.started":
            self.thread_id = ev.get("thread_id") or self.thread_id
            return True
        if kind == "turn.started":
            self.turn_started = True
            return False
        if kind == "turn.completed":
            self.turn_completed = True
            usage = ev.get("usage") or {}
            for key in ("input_tokens", "cached_input_tokens", "output_tokens",
                        "reasoning_output_tokens"):
                value = usage.get(key)
                if isinstance(value, int):
                    self.usage[key] = self.usage.get(key, 0) + value
            return True
        if kind == "turn.failed":
            err = ev.get("error") or {}
            msg = err.get("message") if isinstance(err, dict) else str(err)
            self.turn_failed = _one_line(msg or "turn failed", 400)
            self._error(self.turn_failed)
            return True
        if kind == "error":  # not terminal: Codex also uses it for "Reconnecting..."
            self._error(_one_line(ev.get("message", ""), 400))
            return False
        if kind in ("item.started", "item.updated", "item.completed"):
            item = ev.get("item") or {}
            if not isinstance(item, dict):
                return False
            if item.get("type") == "file_change" and kind == "item.completed":
                for c in item.get("changes", []):
                    if isinstance(c, dict) and c.get("path") not in self.files_changed:
                        self.files_changed.append(str(c.get("path")))
            if item.get("type") == "error":
                self._error(_one_line(item.get("message", ""), 400))
            line = describe_item(item)
            if line and line != self.current_item and kind != "item.updated":
                self.current_item = line
                return True
        return False

    def _error(self, msg: str) -> None:
        if msg and len(self.errors) < MAX_ERRORS:
            self.errors.append(msg)


class EventTail:
    """Reads only the bytes appended since the last call; keeps a partial last line."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def read_new(self) -> list[dict[str, Any]]:
        try:
            size = os.stat(self.path).st_size
        except FileNotFoundError:
            return []
        if size <= self.offset:
            return []
        with open(self.path, "rb") as fh:
            fh.seek(self.offset)
            chunk = fh.read(size - self.offset)
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()
        out: list[dict[str, Any]] = []
        for raw in lines:
            ev = parse_event_line(raw)
            if ev is not None:
                out.append(ev)
        return out

    def flush_partial(self) -> list[dict[str, Any]]:
        """At process end a last line may lack its newline."""
        raw, self._partial = self._partial, b""
        ev = parse_event_line(raw)
        return [ev] if ev is not None else []


def parse_event_line(raw: bytes | str) -> dict[str, Any] | None:
    """One JSONL line as an event object, or None for anything else: blank lines, non-JSON
    noise (Codex sometimes prints some on stdout), invalid UTF-8 (a ValueError), nesting
    too deep for the parser (RecursionError, not a ValueError), non-finite numbers (NaN,
    1e400: strict JSON writers would fail on them later), a JSON value that is no object.
    Never raises."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        ev = json.loads(raw, parse_constant=_refuse_constant, parse_float=_finite_float)
    except (ValueError, RecursionError):
        return None
    return ev if isinstance(ev, dict) else None


def _refuse_constant(name: str) -> float:
    raise ValueError(f"non-finite number {name}")  # NaN / Infinity: no reader could echo it


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e400
        raise ValueError(f"non-finite number {text}")
    return value


def read_facts(path: Path) -> EventFacts:
    facts = EventFacts()
    tail = EventTail(path)
    for ev in [*tail.read_new(), *tail.flush_partial()]:
        facts.apply(ev)
    return facts
