"""Scoreboard files a reader can trust without deriving: a serving engine's own, and the
views a derivation kept (`phh scoreboard`, the HTTP API).

A derivation reads every attempt of the store (~4,000 files at 1000 jobs) and needs pydantic
and the engine's models; a serving engine already keeps `runs/_system/scoreboard.system.json`
and `runs/<batch>/scoreboard.batch.json` current (every change within
`write_interval_seconds`, everything at least every 30 s, and once more on exit). Reading one
of those needs neither, so this module imports only the standard library (the CLI's fast
path) until a view has to be kept.

The engine writes its files without null fields (`store.to_bytes`); `fill` puts them back
in the models' field order, so the output is exactly what `model_dump_json(indent=2)` of the
derived view prints. FIELDS mirrors the scoreboard models (a test keeps it in step); a file
with a key FIELDS does not know is never printed: the view is derived instead.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: The engine rewrites every board once its write intervals add up to 30 s (engine/boards.py; an
#: interval stretched by BOARD_DUTY for a huge batch can make a file older than this allows,
#: and it is then derived here instead, which is slower but never wrong).
FULL_REWRITE_SECONDS = 30.0
#: How late an engine's write may be (a busy event loop, a loaded machine) before the file
#: counts as abandoned.
SLACK_SECONDS = 15.0

# model -> (field names in declaration order, {field: nested model (object or list items)})
FIELDS: dict[str, tuple[tuple[str, ...], dict[str, str]]] = {
    "BatchScoreboard": (
        ("batch_id", "submitted_at", "computed_at", "batch_goal_summary", "jobs_total",
         "steps_total", "heartbeat_stale_after_seconds", "closed", "counts", "usage",
         "attention", "running", "blocked", "failures", "steps", "notes"),
        {"counts": "StatusCounts", "usage": "Usage", "attention": "AttentionRow",
         "running": "RunningRow", "blocked": "BlockedRow", "failures": "FailureRow",
         "steps": "StepRow", "notes": "SystemNote"},
    ),
    "SystemScoreboard": (("computed_at", "batches", "notes"),
                         {"batches": "SystemRow", "notes": "SystemNote"}),
    "SystemRow": (
        ("batch_id", "submitted_at", "batch_goal_summary_preview", "jobs_total", "steps_total",
         "counts", "running_steps", "attention_steps", "closed"),
        {"counts": "StatusCounts"},
    ),
    "StatusCounts": (("blocked", "ready", "running", "succeeded", "failed", "needs_attention",
                      "canceled"), {}),
    "Usage": (("input_tokens", "cached_input_tokens", "output_tokens",
               "reasoning_output_tokens"), {}),
    "AttentionRow": (("job_id", "step_id", "kind", "run_id", "attempt_dir", "detail",
                      "seconds_since_last_heartbeat"), {}),
    "RunningRow": (
        ("job_id", "step_id", "run_id", "runner_id", "attempt_dir", "state_status",
         "current_item", "last_heartbeat_at", "seconds_since_last_heartbeat", "started_at",
         "run_duration_seconds", "stuck", "resume_from"),
        {"resume_from": "ResumeView"},
    ),
    "BlockedRow": (("job_id", "step_id", "reasons", "resume_from"),
                   {"resume_from": "ResumeView"}),
    "FailureRow": (("job_id", "step_id", "run_id", "attempt_dir", "state_status", "exit_code",
                    "termination_reason", "failure_class", "final_status", "final_summary",
                    "errors"), {}),
    "StepRow": (("job_id", "step_id", "status", "stuck", "attempts", "run_id", "attempt_dir",
                 "reasons", "resume_from", "candidates"),
                {"resume_from": "ResumeView", "candidates": "CandidateRow"}),
    "CandidateRow": (("candidate", "run_id", "status", "attempt_dir", "rank", "passed",
                      "verify_exit_code", "score", "tokens", "duration_seconds", "promoted"),
                     {}),
    "ResumeView": (("step_id", "selector", "selected_run_id", "resume_base_dir"), {}),
    "SystemNote": (("kind", "runner_id", "message", "since"), {}),
}


_KEYS = {model: frozenset(names) for model, (names, _) in FIELDS.items()}


class Unknown(ValueError):
    """The file does not have the shape FIELDS describes."""


def fill(obj: Any, model: str) -> dict[str, Any]:
    """`obj` (one model's JSON, null fields left out) with every field, in field order."""
    names, nested = FIELDS[model]
    if not isinstance(obj, dict) or not obj.keys() <= _KEYS[model]:
        raise Unknown(model)
    out: dict[str, Any] = {}
    for name in names:
        value = obj.get(name)
        sub = nested.get(name)
        if sub is not None and value is not None:
            value = [fill(v, sub) for v in value] if isinstance(value, list) else fill(value, sub)
        out[name] = value
    return out


def _lock_held(path: str) -> bool | None:
    """Does a process hold this engine lock (filelock: flock)? None: cannot tell here."""
    try:
        import fcntl
    except ImportError:  # not POSIX
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:  # no flock on this filesystem: filelock's soft lock, unknowable
            return None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _read_json(path: Path | str) -> Any:
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError, RecursionError):  # RecursionError: hostile nesting
        return None


def _when(value: Any) -> datetime | None:
    try:
        at = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        return None
    return at if at.tzinfo is not None else None


def serving_since(root: Path) -> datetime | None:
    """The earliest start of an engine that serves `root` now and has announced itself
    (holds its runner lock, and its health.json is from this run); None when there is none."""
    runners = root / "runners"
    try:
        ids = os.listdir(runners)
    except OSError:
        return None
    starts = []
    for rid in ids:
        if _lock_held(os.path.join(runners, rid, ".engine.lock")) is not True:
            continue
        health = _read_json(os.path.join(runners, rid, "health.json"))
        if not isinstance(health, dict) or health.get("stopped_at") is not None:
            continue  # starting up (health.json still from its last run): not yet writing
        started = _when(health.get("started_at"))
        if started is not None:
            starts.append(started)
    return min(starts) if starts else None


def max_age_seconds(root: Path) -> float:
    """How old a serving engine's board can get: its full-rewrite period plus a write."""
    cfg = _read_json(root / "runs" / "_system" / "harness_config.json")
    interval = 1.0
    with contextlib.suppress(TypeError, KeyError, ValueError):
        interval = float(cfg["scoreboard"]["write_interval_seconds"])
    if not interval > 0:
        interval = 1.0
    period = math.ceil(FULL_REWRITE_SECONDS / interval) * interval
    return period + interval + SLACK_SECONDS


def _batches_on_disk(runs: Path) -> set[str] | None:
    try:
        names = os.listdir(runs)
    except OSError:
        return None
    return {n for n in names if not n.startswith(("_", "."))
            and os.path.exists(os.path.join(runs, n, "batch_meta.json"))}


def engine_board(root: Path, batch_id: str | None,
                 now: datetime | None = None) -> tuple[dict[str, Any], float] | None:
    """The serving engine's scoreboard (system view, or `batch_id`'s) with every field, and
    its age in seconds; None when no engine serves `root` or its file is not fresh."""
    since = serving_since(root)
    if since is None:
        return None
    runs = root / "runs"
    path = runs / batch_id / "scoreboard.batch.json" if batch_id else \
        runs / "_system" / "scoreboard.system.json"
    obj = _read_json(path)
    if not isinstance(obj, dict):
        return None
    computed = _when(obj.get("computed_at"))
    now = now or datetime.now(UTC)
    if computed is None or computed < since:
        return None  # left by an earlier engine: the serving one has not written it yet
    age = (now - computed).total_seconds()
    if age > max_age_seconds(root):
        return None
    try:
        if batch_id:
            if obj.get("batch_id") != batch_id:
                return None
            return fill(obj, "BatchScoreboard"), age
        board = fill(obj, "SystemScoreboard")
        # a batch submitted since (not yet scanned), or one gone: derive instead
        shown = {row.get("batch_id") for row in board["batches"] or ()}
        if shown != _batches_on_disk(runs):
            return None
        return board, age
    except (Unknown, TypeError, AttributeError):
        return None


# ------------------------------------------------------------ the derived board's cache
# With no engine serving, a view is derived from every attempt of the store (~0.5 s at 1000
# jobs, most of it reading files and importing pydantic). A settled store (nothing running,
# no backoff pending: a finished run being reviewed, a script polling it) derives the same
# view every time, so `phh scoreboard` keeps the text it printed with a fingerprint of what
# it read, and prints it again while a stat of the same paths matches.

#: Bump when the derivation or the cache file's shape changes.
CACHE_VERSION = 1
#: Inputs modified this close to the derivation's start may have changed after they were
#: read (file times are coarse): such a view is not kept.
CACHE_QUIET_NS = 2_000_000_000


def cache_file(root: Path, batch_id: str | None) -> Path:
    name = f"scoreboard.batch.{batch_id}.json" if batch_id else "scoreboard.system.json"
    return root / "runs" / "_system" / "cache" / name


def _cache_key() -> str:
    from phh_engine import __version__

    return f"{CACHE_VERSION}/{__version__}/{hash_text(repr(sorted(FIELDS.items())))}"


def hash_text(text: str) -> str:
    import hashlib

    return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def inputs_digest(runs: Path, paths: list[str], changed_since: int | None = None) -> str | None:
    """A digest of every path's inode and mtime (paths relative to `runs`): an atomic replace
    (new inode), an entry added to or removed from a directory (its mtime) or a path
    appearing or going all change it. None: a path cannot be checked, or one was modified at
    or after `changed_since` (ns)."""
    import hashlib

    h = hashlib.blake2b(digest_size=16)
    base = f"{runs}/"
    for rel in paths:
        try:
            st = os.stat(base + rel)
        except FileNotFoundError:
            h.update(b"-\n")
            continue
        except OSError:
            return None
        if changed_since is not None and st.st_mtime_ns >= changed_since:
            return None
        h.update(b"%d %d\n" % (st.st_ino, st.st_mtime_ns))
    return h.hexdigest()


def cached_board(root: Path, batch_id: str | None) -> str | None:
    """The view a derivation printed, if nothing it read has changed since (else None)."""
    obj = _read_json(cache_file(root, batch_id))
    if not isinstance(obj, dict) or obj.get("key") != _cache_key():
        return None
    runs = root / "runs"
    paths, board = obj.get("paths"), obj.get("board")
    if not isinstance(paths, list) or not isinstance(board, str):
        return None
    if batch_id is None and set(obj.get("batches") or ()) != _batches_on_disk(runs):
        return None
    found = inputs_digest(runs, paths)
    return board if found is not None and found == obj.get("digest") else None


def keep_board(root: Path, batch_id: str | None, batch_ids: list[str], paths: list[str],
               board: str, started_ns: int, clock_free: Callable[[], bool]) -> bool:
    """Keep a derived view for `cached_board` when its inputs were quiet before the
    derivation began and `clock_free()` says the view does not depend on the time it was
    derived at. Best effort: a read-only store is just not cached."""
    digest = inputs_digest(root / "runs", paths, started_ns - CACHE_QUIET_NS)
    if digest is None or not clock_free():
        return False
    from phh_engine.store.files import atomic_write_bytes

    entry = {"key": _cache_key(), "batches": sorted(batch_ids), "digest": digest,
             "paths": paths, "board": board}
    try:
        atomic_write_bytes(cache_file(root, batch_id), json.dumps(entry).encode(),
                           durable=False)
    except OSError:
        return False
    return True
