"""Shared field types: ids that become path segments, timestamps, closed vocabularies."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

from ..paths import store_name_clash

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)


#: Set (by `incoming_ids`) while a door validates what arrives from outside.
_INCOMING: ContextVar[bool] = ContextVar("phh_incoming_ids", default=False)


@contextmanager
def incoming_ids() -> Iterator[None]:
    """Within this block every `Id` is checked as input arriving at a door (submit, harness
    config, operator requests): a name phh writes in its own store is refused too. Records
    phh wrote itself are read without it, so a store made before a name was reserved stays
    readable."""
    token = _INCOMING.set(True)
    try:
        yield
    finally:
        _INCOMING.reset(token)


def check_id(value: str, *, incoming: bool | None = None) -> str:
    """Ids become directory names, so anything that could escape or hide a path is refused.

    `incoming` (default: inside `incoming_ids()`): also refuse the names phh writes in its
    store (paths.STORE_NAMES), which would clash with its own files. ValueError says why."""
    if not _ID_RE.match(value) or ".." in value:
        raise ValueError(
            f"invalid id {value!r}: must match {ID_PATTERN} (letters, digits, '.', '_', '-'; "
            "no '/', no '..', no leading dot)"
        )
    if incoming if incoming is not None else _INCOMING.get():
        clash = store_name_clash(value)
        if clash is not None:
            raise ValueError(f"invalid id {value!r}: {clash}")
    return value


Id = Annotated[str, AfterValidator(check_id)]

AttemptStatus = Literal["queued", "running", "succeeded", "failed", "canceled", "needs_attention"]
TERMINAL_STATUSES: frozenset[str] = frozenset(
    {"succeeded", "failed", "canceled", "needs_attention"}
)

StepStatus = Literal[
    "blocked", "ready", "running", "succeeded", "failed", "needs_attention", "canceled"
]
STEP_STATUSES: tuple[str, ...] = (
    "blocked", "ready", "running", "succeeded", "failed", "needs_attention", "canceled",
)

FailureClass = Literal[
    "model_error",
    "rate_limited",
    "timeout",
    "canceled",
    "runner_lost",
    "schema_invalid",
    "agent_reported_failure",
    "nonzero_exit",
    "spawn_failed",
    "thread_mismatch",
    "auth",
    "usage_limited",
    "context_exhausted",
    "invalid_request",
    "shutdown",
    "internal_error",
]

#: Classes that say nothing about the step itself (the account hit its usage limit, the
#: engine was stopped): always retried, and never counted toward `max_attempts`.
UNCOUNTED_FAILURE_CLASSES: frozenset[str] = frozenset({"usage_limited", "shutdown"})

Selector = Literal["latest_successful", "latest", "run_id"]
WorkspacePolicy = Literal["shared", "isolated"]
SandboxMode = Literal["read-only", "workspace-write", "danger-full-access"]


_wall_skew = timedelta(0)


def utcnow() -> datetime:
    """The wall clock (UTC, aware): what phh records. Durations measured inside one process
    use time.monotonic() instead: the wall clock jumps (sleep/resume, NTP steps)."""
    return datetime.now(UTC) + _wall_skew


def set_wall_clock_skew(seconds: float) -> None:
    """Shift `utcnow()` by `seconds` from now on (tests: a wall clock that jumps forward or
    steps back while the monotonic clock goes on)."""
    global _wall_skew
    _wall_skew = timedelta(seconds=seconds)


class Strict(BaseModel):
    """Input models: an unknown key is an error, never silently ignored."""

    # allow_inf_nan: `1e400` (or "1e400" in YAML, a string pydantic would parse) is infinity,
    # which JSON cannot hold: it would be written as null, silently dropping the setting
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class Record(BaseModel):
    """On-disk records written by phh: unknown keys are refused so the schema stays honest."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
