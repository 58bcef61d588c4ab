"""Shared field types: ids that become path segments, timestamps, closed vocabularies."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_ID_RE = re.compile(ID_PATTERN)


def check_id(value: str) -> str:
    """Ids become directory names, so anything that could escape or hide a path is refused."""
    if not _ID_RE.match(value) or ".." in value:
        raise ValueError(
            f"invalid id {value!r}: must match {ID_PATTERN} (letters, digits, '.', '_', '-'; "
            "no '/', no '..', no leading dot)"
        )
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
    "internal_error",
]

Selector = Literal["latest_successful", "latest", "run_id"]
WorkspacePolicy = Literal["shared", "isolated"]
SandboxMode = Literal["read-only", "workspace-write", "danger-full-access"]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Strict(BaseModel):
    """Input models: an unknown key is an error, never silently ignored."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Record(BaseModel):
    """On-disk records written by phh: unknown keys are refused so the schema stays honest."""

    model_config = ConfigDict(extra="forbid")
