"""Safe reads of attempt files for every interface (CLI, HTTP API): lookup and event tails.

Why one module: the CLI and the API must hand out exactly the same bytes and refuse exactly
the same requests. An attempt is addressed by ids (`batch_id, job_id, step_id[, run_id]`) or
by its `attempt_dir`; a file by one of the fixed `ARTIFACT_NAMES`, never by a caller-chosen
path. Whatever the caller sends, a read can never leave the attempt directory: ids are
checked like submit checks them, the attempt directory must be exactly
`runs/<batch>/<job>/steps/<step>/attempts/<dir>` with no symlink on the way, and the file is
opened with `O_NOFOLLOW` and must be a regular file.
"""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..models import TERMINAL_STATUSES, AttemptMeta, AttemptState, check_id
from ..store import logs
from ..store.events import describe_item, parse_event_line
from ..store.files import read_model
from ..store.paths import (
    ARTIFACT_NAMES,
    EVENTS,
    META,
    STATE,
    STDOUT,
    Layout,
    attempt_dir_names,
    run_id_of,
)

#: how much of a file one non-streaming events read returns at most
MAX_TAIL_BYTES = 4 << 20
CHUNK = 64 << 10

JSON_ARTIFACTS = frozenset({"meta.json", "state.json", "final.json", "handoff.json",
                            "files_touched.json"})


class LookupFailed(Exception):
    """A request an interface must refuse; `status` is the HTTP status to answer with
    (400 malformed, 404 not there), the message is safe to show (no file content)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def bad(message: str) -> LookupFailed:
    return LookupFailed(400, message)


def missing(message: str) -> LookupFailed:
    return LookupFailed(404, message)


def valid_id(value: str, what: str) -> str:
    try:
        return check_id(value, incoming=True)
    except ValueError as exc:
        raise bad(f"{what}: {exc}") from None


@dataclass(frozen=True, slots=True)
class AttemptRef:
    """A located attempt directory (already checked to be inside the runs store)."""

    batch_id: str
    job_id: str
    step_id: str
    run_id: str
    path: Path

    def as_dict(self) -> dict[str, str]:
        return {"batch_id": self.batch_id, "job_id": self.job_id, "step_id": self.step_id,
                "run_id": self.run_id, "attempt_dir": str(self.path)}


def _no_symlinks(layout: Layout, path: Path) -> None:
    """Every component below the root must be a real directory (no link out of the store)."""
    if os.path.realpath(path) != str(path):
        raise bad("attempt directory is reached through a symlink; refused")
    if not path.is_relative_to(layout.runs):
        raise bad("attempt directory is outside the runs store; refused")


def list_attempt_dirs(layout: Layout, batch_id: str, job_id: str, step_id: str) -> list[Path]:
    """Attempt directories of one step, oldest first (by directory name = start time)."""
    for value, what in ((batch_id, "batch_id"), (job_id, "job_id"), (step_id, "step_id")):
        valid_id(value, what)
    if not layout.batch_meta(batch_id).is_file():
        raise missing(f"no batch {batch_id!r}")
    adir = layout.attempts_dir(batch_id, job_id, step_id)
    return [adir / n for n in attempt_dir_names(adir)]


def find_attempt(
    layout: Layout, batch_id: str, job_id: str, step_id: str, run_id: str | None = None
) -> AttemptRef:
    """The named attempt, or the step's latest one (by start) when `run_id` is None."""
    dirs = list_attempt_dirs(layout, batch_id, job_id, step_id)
    if run_id is not None:
        valid_id(run_id, "run_id")
        hits = [d for d in dirs if run_id_of(d.name) == run_id]
        if not hits:
            raise missing(f"no attempt {run_id!r} in {batch_id}/{job_id}/{step_id}")
        path = hits[-1]
    else:
        if not dirs:
            raise missing(f"{batch_id}/{job_id}/{step_id} has no attempt yet")
        path = dirs[-1]
    _no_symlinks(layout, path)
    if not path.is_dir():
        raise missing(f"attempt directory {path.name} is not a directory")
    return AttemptRef(batch_id, job_id, step_id, run_id_of(path.name), path)


def attempt_from_dir(layout: Layout, attempt_dir: str) -> AttemptRef:
    """Accept an `attempt_dir` as printed by phh (absolute, or relative to the root or to
    runs/) only when it is exactly `runs/<batch>/<job>/steps/<step>/attempts/<dir>`."""
    if not attempt_dir or "\x00" in attempt_dir:
        raise bad("attempt_dir is empty or contains a NUL byte")
    raw = Path(attempt_dir)
    if ".." in raw.parts:
        raise bad("attempt_dir must not contain '..'")
    candidates = [raw] if raw.is_absolute() else [layout.root / raw, layout.runs / raw]
    for cand in candidates:
        if not cand.is_relative_to(layout.runs):
            continue
        parts = cand.relative_to(layout.runs).parts
        if len(parts) != 6 or parts[2] != "steps" or parts[4] != "attempts":
            continue
        batch_id, job_id, _, step_id, _, dir_name = parts
        for value, what in ((batch_id, "batch_id"), (job_id, "job_id"), (step_id, "step_id")):
            valid_id(value, what)
        if "_" not in dir_name or dir_name.startswith("."):
            raise bad(f"{dir_name!r} is not an attempt directory name")
        run_id = valid_id(run_id_of(dir_name), "run_id")
        if not layout.batch_meta(batch_id).is_file():
            raise missing(f"no batch {batch_id!r}")
        _no_symlinks(layout, cand)
        if not cand.is_dir():
            raise missing(f"no attempt directory {attempt_dir}")
        return AttemptRef(batch_id, job_id, step_id, run_id, cand)
    raise bad("attempt_dir must be runs/<batch_id>/<job_id>/steps/<step_id>/attempts/<dir> "
              "inside this phh root")


def check_name(name: str) -> str:
    if name not in ARTIFACT_NAMES:
        raise bad(f"{name!r} is not an attempt artifact; one of: {', '.join(ARTIFACT_NAMES)}")
    return name


def open_artifact(ref: AttemptRef, name: str) -> tuple[int, int]:
    """(fd, size) of one attempt file; the caller closes fd. Refuses symlinks and non-files."""
    check_name(name)
    try:
        # O_NONBLOCK: a FIFO must be refused below, not waited on for a writer
        fd = os.open(ref.path / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                     | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise missing(f"{name} does not exist (yet) in attempt {ref.run_id}") from None
    except OSError as exc:  # ELOOP: the name is a symlink
        raise bad(f"{name} in attempt {ref.run_id} is not a regular file ({exc.strerror}); "
                  "refused") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise bad(f"{name} in attempt {ref.run_id} is not a regular file; refused")
    os.set_blocking(fd, True)
    return fd, st.st_size


def _open_compressed(ref: AttemptRef, name: str) -> logs.LogStream | None:
    """A raw log GC compressed (plain file gone, `.gz` there): its original bytes."""
    if name not in logs.RAW_LOGS or (ref.path / name).exists() or not logs.is_compressed(
            ref.path, name):
        return None
    try:
        return logs.open_log(ref.path, name)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise bad(f"{name} in attempt {ref.run_id} is not a regular file ({exc.strerror}); "
                  "refused") from None


def read_artifact(ref: AttemptRef, name: str) -> bytes:
    check_name(name)
    gz = _open_compressed(ref, name)
    if gz is not None:
        with gz:
            return gz.read()
    fd, _ = open_artifact(ref, name)
    with os.fdopen(fd, "rb") as fh:
        return fh.read()


def iter_artifact(ref: AttemptRef, name: str) -> tuple[Iterator[bytes], int | None]:
    """A chunked reader (opened now, so errors surface before any byte is sent) and the
    size in bytes; None for a GC-compressed log (served decompressed, length unknown)."""
    check_name(name)
    gz = _open_compressed(ref, name)
    if gz is not None:
        def unzipped(fh: logs.LogStream = gz) -> Iterator[bytes]:
            with fh:
                while block := fh.read(CHUNK):
                    yield block

        return unzipped(), None
    fd, size = open_artifact(ref, name)

    def chunks() -> Iterator[bytes]:
        with os.fdopen(fd, "rb") as fh:
            while block := fh.read(CHUNK):
                yield block

    return chunks(), size


def media_type(name: str) -> str:
    if name in JSON_ARTIFACTS:
        return "application/json"
    if name.endswith(".jsonl"):
        return "application/x-ndjson"
    return "text/plain; charset=utf-8"


# ----------------------------------------------------------------------------- listings
def attempt_summary(path: Path) -> dict[str, Any]:
    """One row of an attempt listing (ids, status, times, lineage) from meta + state."""
    meta = read_model(path / META, AttemptMeta)
    st = read_model(path / STATE, AttemptState)
    return {
        "run_id": run_id_of(path.name),
        "dir_name": path.name,
        "attempt_dir": str(path),
        "status": st.status if st else "queued",
        "runner_id": (st.runner_id if st else None) or (meta.runner_id if meta else None),
        "started_at": st.started_at.isoformat() if st and st.started_at else None,
        "ended_at": st.ended_at.isoformat() if st and st.ended_at else None,
        "exit_code": st.exit_code if st else None,
        "termination_reason": st.termination_reason if st else None,
        "codex_thread_id": (st.codex_thread_id if st else None)
        or (meta.codex_thread_id if meta else None),
        "invocation": meta.invocation if meta else None,
        "trigger": meta.trigger if meta else None,
        "retry_of": meta.retry_of if meta else None,
        "parent_run_id": meta.parent_run_id if meta else None,
    }


# ----------------------------------------------------------------------------- events
def events_file(ref: AttemptRef) -> str:
    """codex.events.jsonl, or stdout.log when the batch turned event capture off (the same
    JSON lines, kept as the raw log)."""
    if (ref.path / EVENTS).exists():
        return EVENTS
    meta = read_model(ref.path / META, AttemptMeta)
    if meta is not None:
        return EVENTS if meta.policy_snapshot.execution_policy.capture_events else STDOUT
    return STDOUT if (ref.path / STDOUT).exists() else EVENTS


def attempt_status(ref: AttemptRef) -> str:
    st = read_model(ref.path / STATE, AttemptState)
    return st.status if st else "queued"


@dataclass(slots=True)
class EventLine:
    """One complete line of the event log; `offset` is the byte offset just after it (a
    cursor: reading again from `offset` continues with the next line). A line longer than
    `logs.MAX_LINE_BYTES` comes cut: `event` None, `raw` its start plus a marker, and
    `line_bytes` its real length."""

    offset: int
    event: dict[str, Any] | None
    raw: str
    line_bytes: int | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.line_bytes is not None:
            return {"offset": self.offset, "event": None, "raw": self.raw, "truncated": True,
                    "line_bytes": self.line_bytes}
        return {"offset": self.offset, "event": self.event} if self.event is not None else {
            "offset": self.offset, "event": None, "raw": self.raw}


def _event_line(line: logs.RawLine) -> EventLine:
    text = line.data.decode("utf-8", errors="replace")
    if line.truncated:
        return EventLine(line.offset, None,
                         f"{text}… [truncated: line of {line.size} bytes]", line.size)
    return EventLine(line.offset, parse_event_line(line.data), text)


def _lines_or_refuse(ref: AttemptRef, name: str, read: Callable[[], list[logs.RawLine]]
                     ) -> list[EventLine]:
    check_name(name)
    try:
        return [_event_line(ln) for ln in read()]
    except FileNotFoundError:
        return []
    except OSError as exc:  # ELOOP: a symlink; EINVAL: not a regular file
        raise bad(f"{name} in attempt {ref.run_id} is not a regular file ({exc.strerror}); "
                  "refused") from None


def read_lines(ref: AttemptRef, name: str, offset: int = 0,
               max_bytes: int = MAX_TAIL_BYTES, final: bool = False) -> list[EventLine]:
    """Complete lines from `offset` on (a partial last line is left for the next read unless
    `final`), plain or GC-compressed, at least one line per call however long it is."""
    if offset < 0:
        raise bad("offset must be >= 0")
    return _lines_or_refuse(ref, name, lambda: logs.read_lines(
        ref.path, name, offset, max_bytes=max_bytes, final=final))


def iter_lines(ref: AttemptRef, name: str, offset: int = 0) -> Iterator[EventLine]:
    """Every complete line from `offset` to the end, a page at a time (memory: one page)."""
    while page := read_lines(ref, name, offset):
        yield from page
        offset = page[-1].offset


def last_lines(ref: AttemptRef, name: str, n: int) -> list[EventLine]:
    """The last `n` complete lines (cheap on huge plain logs; a compressed one is streamed)."""
    if n <= 0:
        return []
    return _lines_or_refuse(ref, name, lambda: logs.last_lines(ref.path, name, n))


def describe_event(ev: dict[str, Any] | None, raw: str = "") -> str:
    """One readable line per Codex event (what `phh tail` prints)."""
    if ev is None:
        return raw
    kind = str(ev.get("type", "?"))
    if kind == "thread.started":
        return f"thread started {ev.get('thread_id', '')}".rstrip()
    if kind == "turn.started":
        return "turn started"
    if kind == "turn.completed":
        usage = ev.get("usage") or {}
        parts = [f"{k.replace('_tokens', '')}={v}" for k, v in usage.items()
                 if isinstance(v, int)]
        return "turn completed" + (f" ({', '.join(parts)})" if parts else "")
    if kind == "turn.failed":
        err = ev.get("error") or {}
        msg = err.get("message") if isinstance(err, dict) else str(err)
        return f"turn FAILED: {msg}"
    if kind == "error":
        return f"error: {ev.get('message', '')}"
    if kind.startswith("item."):
        item = ev.get("item") or {}
        what = describe_item(item) if isinstance(item, dict) else None
        verb = kind.removeprefix("item.")
        text = what or str(item.get("type", "item") if isinstance(item, dict) else "item")
        if isinstance(item, dict) and item.get("type") == "command_execution" and \
                verb == "completed":
            code = item.get("exit_code")
            text += f"  [exit {code}]" if code is not None else ""
        return f"{verb:<9} {text}"
    return kind


async def follow_lines(
    ref: AttemptRef, offset: int = 0, poll: float = 0.2, idle_timeout: float | None = None,
) -> AsyncIterator[EventLine | str]:
    """Yield event lines as the attempt appends them, from `offset`; ends after the attempt
    is terminal and its log is drained. Yields the final status (a str) last. While nothing
    happens for `idle_timeout` seconds, yields "" as a keep-alive tick."""
    quiet = 0.0
    while True:
        name = events_file(ref)
        status = attempt_status(ref)
        batch = read_lines(ref, name, offset)
        for line in batch:
            offset = line.offset
            yield line
        if batch:
            quiet = 0.0
            continue
        if status in TERMINAL_STATUSES:
            # the runner writes the last events before finalising state: read to the end
            # (an unterminated last line included: nothing will complete it now)
            while more := read_lines(ref, name, offset, final=True):
                for line in more:
                    offset = line.offset
                    yield line
            yield status
            return
        await asyncio.sleep(poll)
        quiet += poll
        if idle_timeout is not None and quiet >= idle_timeout:
            quiet = 0.0
            yield ""
