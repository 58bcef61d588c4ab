"""Scoreboards (docs/statuses.md#step-statuses): derived views, never a source of truth."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from .attempt import Usage
from .common import (
    AttemptStatus,
    FailureClass,
    Id,
    Record,
    StepStatus,
    TerminationReason,
)


class StatusCounts(Record):
    blocked: int = 0
    ready: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    needs_attention: int = 0
    canceled: int = 0


class ResumeView(Record):
    step_id: Id
    selector: str
    selected_run_id: Id | None = None
    resume_base_dir: str | None = None


class CandidateRow(Record):
    """One candidate of a best-of-N step (docs/verification.md#candidates-best-of-n): its
    latest attempt, what it was ranked on, and whether it is the promoted one."""

    candidate: int = Field(ge=1)
    run_id: Id
    status: AttemptStatus
    attempt_dir: str
    rank: int = Field(ge=1, description="1 = best")
    passed: bool
    verify_exit_code: int | None = None
    score: float | None = None
    tokens: int = 0
    duration_seconds: float | None = None
    promoted: bool = False


class StepRow(Record):
    """One step in the batch view's 'all steps' list."""

    job_id: Id
    step_id: Id
    status: StepStatus
    stuck: bool = False
    attempts: int = 0
    run_id: Id | None = None
    attempt_dir: str | None = None
    reasons: list[str] = Field(default_factory=list)
    resume_from: ResumeView | None = None
    candidates: list[CandidateRow] | None = Field(
        default=None, description="best-of-N steps only: every candidate, best first")


class AttentionRow(Record):
    job_id: Id
    step_id: Id
    kind: str = Field(description="stuck | needs_attention | failed")
    run_id: Id | None = None
    attempt_dir: str | None = None
    detail: str | None = None
    seconds_since_last_heartbeat: float | None = None


class RunningRow(Record):
    job_id: Id
    step_id: Id
    run_id: Id
    runner_id: Id | None = Field(default=None, description="unknown until meta.json exists")
    attempt_dir: str
    state_status: str = Field(default="running", description="queued | running")
    current_item: str | None = None
    last_heartbeat_at: datetime | None = None
    seconds_since_last_heartbeat: float | None = None
    started_at: datetime | None = None
    run_duration_seconds: float | None = None
    stuck: bool = False
    resume_from: ResumeView | None = None


class BlockedRow(Record):
    job_id: Id
    step_id: Id
    reasons: list[str]
    resume_from: ResumeView | None = None


class FailureRow(Record):
    job_id: Id
    step_id: Id
    run_id: Id
    attempt_dir: str
    state_status: AttemptStatus
    exit_code: int | None = None
    termination_reason: TerminationReason | None = None
    failure_class: FailureClass | None = None
    final_status: str | None = None
    final_summary: str | None = None
    errors: list[str] = Field(default_factory=list)


class SystemNote(Record):
    """A system-level attention item that belongs to no step: a runner that takes no new work
    (draining, low disk/memory, health stale). Derived from runners/*/health.json."""

    kind: str = Field(description="draining | low_resources | runner_stale | health_unwritable"
                      " | unexpected_entry (a stray file or directory in the store, skipped)"
                      " | paused (a start pause of the root) | rate_limited (concurrency "
                      "lowered after HTTP 429) | concurrency_capped | credential_paused"
                      " | credential_refresh | write_error (a store write failed: starts paused)")
    runner_id: Id | None = None
    message: str
    since: datetime | None = None


class BatchScoreboard(Record):
    batch_id: Id
    submitted_at: datetime
    computed_at: datetime
    batch_goal_summary: str
    jobs_total: int
    steps_total: int
    heartbeat_stale_after_seconds: float
    closed: bool = False
    counts: StatusCounts
    usage: Usage = Field(default_factory=Usage)
    attention: list[AttentionRow] = Field(default_factory=list)
    running: list[RunningRow] = Field(default_factory=list)
    blocked: list[BlockedRow] = Field(default_factory=list)
    failures: list[FailureRow] = Field(default_factory=list)
    steps: list[StepRow] = Field(default_factory=list)
    notes: list[SystemNote] = Field(
        default_factory=list, description="system-level attention (runners), same as system view"
    )


class SystemRow(Record):
    batch_id: Id
    submitted_at: datetime
    batch_goal_summary_preview: str
    jobs_total: int
    steps_total: int
    counts: StatusCounts
    running_steps: int
    attention_steps: int
    closed: bool = False


class SystemScoreboard(Record):
    computed_at: datetime
    batches: list[SystemRow] = Field(default_factory=list)
    notes: list[SystemNote] = Field(
        default_factory=list, description="system-level attention: runners taking no new work"
    )
