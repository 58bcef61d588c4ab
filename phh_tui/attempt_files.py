"""The files of one attempt the step screen shows, read through phh_engine.store.logs (the one
reader of attempt files: a GC-compressed log reads like the plain one; symlinks and
non-regular files are refused). No Textual here: every function blocks on file I/O and is
called from a worker thread, never on the UI thread."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from phh_engine.store.logs import log_path, open_log, read_log_bytes, read_log_tail
from phh_engine.store.paths import EVENTS, FINAL_TXT, GIT_DIFF, STDERR, STDOUT, VERIFY_LOG
from phh_tui.eventlines import EventLog, Line

#: final.txt shown when it is not a valid Run Report (characters)
MAX_FINAL_CHARS = 4000
#: lines of git.diff shown; the rest is counted
MAX_DIFF_LINES = 5000
#: stderr shown under a failed attempt's events (bytes read, lines kept)
STDERR_TAIL_BYTES = 16 << 10
STDERR_TAIL_LINES = 8


def read_final_text(attempt_dir: Path) -> str | None:
    """The start of `final.txt` (MAX_FINAL_CHARS characters, bad bytes replaced); None when
    there is none, "" when it cannot be read."""
    if log_path(attempt_dir, FINAL_TXT) is None:
        return None
    try:
        with open_log(attempt_dir, FINAL_TXT) as fh:
            raw = fh.read(4 * MAX_FINAL_CHARS)  # UTF-8: at most 4 bytes a character
    except FileNotFoundError:
        return None
    except OSError:
        return ""
    return raw.decode("utf-8", errors="replace")[:MAX_FINAL_CHARS]


class DiffText(NamedTuple):
    """An attempt's git diff as shown: `lines` (at most MAX_DIFF_LINES) and how many more
    there are; `missing` when there is no git.diff; `error` when it cannot be read."""

    lines: list[str]
    more: int = 0
    missing: bool = False
    error: str | None = None


def read_diff(attempt_dir: Path) -> DiffText:
    if log_path(attempt_dir, GIT_DIFF) is None:
        return DiffText([], missing=True)
    try:
        text = read_log_bytes(attempt_dir, GIT_DIFF).decode("utf-8", errors="replace")
    except FileNotFoundError:
        return DiffText([], missing=True)
    except OSError as exc:
        return DiffText([], error=str(exc))
    lines = text.splitlines()
    return DiffText(lines[:MAX_DIFF_LINES], max(0, len(lines) - MAX_DIFF_LINES))


def stderr_tail(attempt_dir: Path) -> list[Line]:
    """The last lines of stderr.log (plain or compressed), as shown under a failed attempt."""
    text = read_log_tail(attempt_dir, STDERR, STDERR_TAIL_BYTES).decode("utf-8",
                                                                        errors="replace")
    return [Line("  " + ln, "red") for ln in text.splitlines()[-STDERR_TAIL_LINES:]
            if ln.strip()]


class AttemptTail:
    """Readable lines of an attempt's event log, incrementally: `codex.events.jsonl`, or
    `stdout.log` when events were off (only that is there). Which one is decided on the first
    read, so constructing it does no I/O (it is made on the UI thread)."""

    def __init__(self, attempt_dir: Path) -> None:
        self.attempt_dir = attempt_dir
        self._log: EventLog | None = None

    def read_new(self, final: bool = False) -> list[Line]:
        if self._log is None:
            name = EVENTS
            if log_path(self.attempt_dir, EVENTS) is None and \
                    log_path(self.attempt_dir, STDOUT) is not None:
                name = STDOUT
            self._log = EventLog(self.attempt_dir / name)
        return self._log.read_new(final)


#: how much of the verifier's output tail (docs/verification.md#record) the panel shows
VERIFY_TAIL_BYTES = 32 << 10


def read_verify_log(attempt_dir: Path) -> str | None:
    """The last VERIFY_TAIL_BYTES of the attempt's verify.log (plain or compressed); None when
    no verifier ran."""
    if log_path(attempt_dir, VERIFY_LOG) is None:
        return None
    return read_log_tail(attempt_dir, VERIFY_LOG, VERIFY_TAIL_BYTES).decode(
        "utf-8", errors="replace")


def read_candidates_diff(root: Path, batch_id: str, job_id: str, step_id: str, a: int,
                         b: int) -> str:
    """What candidate `b` did differently from candidate `a` (their workspaces' changes):
    see phh_engine.runners.candidates.candidate_diff. Blocks on git."""
    from phh_engine.runners.candidates import candidate_diff
    from phh_engine.store.paths import Layout

    try:
        return candidate_diff(Layout(root), batch_id, job_id, step_id, a, b)
    except Exception as exc:  # a git failure is shown, never a crash of the dashboard
        return f"cannot diff candidates {a} and {b}: {type(exc).__name__}: {exc}"
