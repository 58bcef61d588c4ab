"""`codex exec --json` events as lines a person reads: commands, messages, errors, not JSON.

Plain Python (no Textual) so `phh tail` or the API could print the same lines. Incremental:
`EventLog` remembers its byte offset, so each poll of a growing `codex.events.jsonl` costs only
the bytes appended since the last one. The reading is phh_engine.store.logs' (the one reader of
attempt logs): a GC-compressed log reads like the plain one, and no line is too long to pass.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phh_engine.store.events import describe_item, parse_event_line
from phh_engine.store.logs import LogFollower

MAX_OUTPUT_LINES = 6
MAX_MESSAGE_LINES = 30
MAX_LINE_CHARS = 400
_SHELL_WRAPPERS = ("/bin/bash -lc ", "bash -lc ", "/bin/sh -c ", "sh -c ", "/bin/zsh -lc ")


@dataclass(frozen=True, slots=True)
class Line:
    text: str
    style: str = ""


def _clip(text: str, limit: int = MAX_LINE_CHARS) -> str:
    text = text.replace("\t", "    ").rstrip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def shell_command(command: str) -> str:
    """`/bin/bash -lc 'ls -la'` → `ls -la`: the wrapper Codex adds says nothing."""
    for prefix in _SHELL_WRAPPERS:
        if command.startswith(prefix):
            rest = command[len(prefix):]
            try:
                parts = shlex.split(rest)
            except ValueError:
                return rest
            return parts[0] if len(parts) == 1 else rest
    return command


def _usage(usage: dict[str, Any]) -> str:
    def n(key: str) -> int:
        v = usage.get(key)
        return v if isinstance(v, int) else 0

    return (f"{n('input_tokens'):,} in ({n('cached_input_tokens'):,} cached) · "
            f"{n('output_tokens'):,} out")


def event_lines(ev: dict[str, Any]) -> list[Line]:
    """Zero or more readable lines for one event (updates and noise give none)."""
    kind = ev.get("type")
    if kind == "thread.started":
        return [Line(f"thread {ev.get('thread_id', '?')} started", "dim")]
    if kind == "turn.started":
        return [Line("turn started", "dim")]
    if kind == "turn.completed":
        return [Line("turn completed · tokens " + _usage(ev.get("usage") or {}), "green")]
    if kind == "turn.failed":
        err = ev.get("error")
        msg = err.get("message") if isinstance(err, dict) else err
        return [Line("turn failed: " + _clip(str(msg or "")), "bold red")]
    if kind == "error":
        msg = _clip(str(ev.get("message", "")))
        style = "yellow" if msg.lower().startswith("reconnecting") else "red"
        return [Line("error: " + msg, style)]
    if kind not in ("item.started", "item.completed"):
        return []
    item = ev.get("item")
    if not isinstance(item, dict):
        return []
    itype = item.get("type")
    done = kind == "item.completed"
    if itype == "command_execution":
        cmd = _clip(shell_command(str(item.get("command", ""))))
        if not done:
            return [Line("$ " + cmd, "bold")]
        code = item.get("exit_code")
        out = [Line(f"  ↳ exit {code}" if code is not None else "  ↳ done",
                    "green" if code == 0 else "red")]
        output = str(item.get("aggregated_output") or "").splitlines()
        for ln in output[:MAX_OUTPUT_LINES]:
            out.append(Line("    " + _clip(ln), "dim"))
        if len(output) > MAX_OUTPUT_LINES:
            out.append(Line(f"    … {len(output) - MAX_OUTPUT_LINES} more line(s)", "dim"))
        return out
    if not done:  # messages, reasoning, edits: the completed item says it all
        return []
    if itype == "agent_message":
        text = str(item.get("text", "")).splitlines() or [""]
        lines = [Line("message: " + _clip(text[0]), "cyan")]
        lines += [Line("  " + _clip(t), "cyan") for t in text[1:MAX_MESSAGE_LINES]]
        if len(text) > MAX_MESSAGE_LINES:
            lines.append(Line(f"  … {len(text) - MAX_MESSAGE_LINES} more line(s)", "dim"))
        return lines
    if itype == "reasoning":
        return [Line("thinking: " + _clip(" ".join(str(item.get("text", "")).split())),
                     "dim italic")]
    if itype == "error":
        return [Line("error: " + _clip(str(item.get("message", ""))), "red")]
    if itype == "file_change":
        changes = [c for c in item.get("changes", []) if isinstance(c, dict)]
        desc = ", ".join(f"{c.get('path', '?')} ({c.get('kind', 'change')})" for c in changes)
        return [Line("edit " + _clip(desc), "magenta")]
    described = describe_item(item)
    return [Line(described, "")] if described else []


class EventLog:
    """Readable lines of one attempt's event file (`path`: where the plain file is or was;
    its `.gz` is read once GC compressed it), read incrementally. Blocking file reads: call
    it off a UI thread."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._follower = LogFollower(path.parent, path.name)

    def read_new(self, final: bool = False) -> list[Line]:
        """Lines for every event appended since the last call; with `final`, an unterminated
        last line too. A line too long to hand out whole shows as a marker."""
        out: list[Line] = []
        while raw := self._follower.read_new(final=final):
            for ln in raw:
                if ln.truncated:
                    out.append(Line(f"[event line of {ln.size:,} bytes, too long to show]",
                                    "dim"))
                    continue
                ev = parse_event_line(ln.data)
                if ev is not None:
                    out.extend(event_lines(ev))
        return out
