"""Shared field types: ids that become path segments, timestamps, closed vocabularies."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, field_validator

from ..store.paths import store_name_clash

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
#: The statuses an attempt (and a step) never leaves once it reaches one.
TerminalStatus = Literal["succeeded", "failed", "canceled", "needs_attention"]
TERMINAL_STATUSES: frozenset[TerminalStatus] = frozenset(get_args(TerminalStatus))
_TERMINAL: dict[str, TerminalStatus] = {s: s for s in TERMINAL_STATUSES}


def as_terminal(status: str) -> TerminalStatus | None:
    """`status` as a TerminalStatus, or None when it is not one (queued, running, ...)."""
    return _TERMINAL.get(status)


StepStatus = Literal[
    "blocked", "ready", "running", "succeeded", "failed", "needs_attention", "canceled"
]
#: In display order (scoreboard counts, the dashboard's status column).
STEP_STATUSES: tuple[StepStatus, ...] = get_args(StepStatus)

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
    "verify_failed",
]

#: Why an attempt ended (state.json `termination_reason`); `failure_class` says what it
#: means for retries. `exit`: the process exited (or ended after turn.completed,
#: `lingered`); `killed`: no exit code (a signal); `credential_changed`: an `auth` failure
#: that lost a token-refresh race, retried at once.
TerminationReason = Literal[
    "exit",
    "killed",
    "lingered",
    "timeout",
    "canceled",
    "shutdown",
    "thread_mismatch",
    "schema_invalid",
    "agent_reported_failure",
    "agent_reported_needs_attention",
    "credential_changed",
    "runner_lost",
    "spawn_failed",
    "internal_error",
    "verify_failed",
]

#: Why an attempt was started (meta.json `trigger`).
Trigger = Literal[
    "scheduled", "retry", "operator_retry", "operator_resume", "requeue", "remediation",
    "repair",  # a schema-invalid report sent back to the same thread (docs/verification.md)
]

#: Every `EngineEvent.kind` the engine emits (headless log lines, dashboard notes).
EventKind = Literal[
    "attempt_started",
    "attempt_ended",
    "adopted",  # a live attempt of a previous engine, watched again
    "recovered",  # an attempt whose process is gone, finalised as runner_lost
    "attention",  # a step newly stuck, needs_attention or failed
    "batch_added",
    "batch_finished",
    "queue",  # a queued launch table accepted or rejected
    "override",  # an operator request applied or rejected
    "idle",
    "stopping",
    "admission_blocked",  # health, drain, disk, usage-limit or credential pause
    "admission_resumed",
    "concurrency",  # AIMD after HTTP 429s: lowered or raised
    "concurrency_capped",  # at start: a note on the configured concurrency cap
    "gc",
    "node_joined",  # a cluster node (its agent) became usable
    "node_lost",  # a cluster node died or its agent stopped answering
]

#: Upper bounds of durations and counts people give (docs/safety.md#documents): far above any
#: real use, far below what date arithmetic overflows on (a backoff of 1e308 s made every
#: reader of the store raise OverflowError).
MAX_SECONDS = 10 * 365 * 86400.0
MAX_DAYS = 100 * 365.0
MAX_ATTEMPTS = 1000

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


#: Largest integer magnitude an input may hold: exact in every JSON reader (JavaScript's
#: Number.MAX_SAFE_INTEGER + 1) and well inside SQLite's 64-bit INTEGER.
MAX_SAFE_INT = 2**53


def _oversized_int(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return abs(value) > MAX_SAFE_INT
    if isinstance(value, (list, tuple)):
        return any(_oversized_int(v) for v in value)
    if isinstance(value, dict):
        return any(_oversized_int(v) for v in value.values())
    return False


class Strict(BaseModel):
    """Input models: an unknown key is an error, never silently ignored; a value of the wrong
    JSON type is an error too (`true` or `"10"` where a count belongs, `null` where a switch
    belongs), and no integer is larger than MAX_SAFE_INT (docs/layout.md#launch-table)."""

    # allow_inf_nan: `1e400` (or "1e400" in YAML, a string pydantic would parse) is infinity,
    # which JSON cannot hold: it would be written as null, silently dropping the setting.
    # strict: lax mode would turn `true` into 1 and `"10"` into 10, hiding a typo.
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False,
                              strict=True)

    @field_validator("*", mode="after")
    @classmethod
    def _ints_in_range(cls, value: Any) -> Any:
        if _oversized_int(value):
            raise ValueError(f"integer out of range (at most {MAX_SAFE_INT} in magnitude)")
        return value


class Record(BaseModel):
    """On-disk records written by phh: unknown keys are refused so the schema stays honest."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
