"""Attempt files (docs/layout.md#metajson, docs/statuses.md#attempt-transitions): meta.json
(write-once) and state.json (guarded snapshot)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import (
    AttemptStatus,
    FailureClass,
    Id,
    Record,
    Selector,
    TerminationReason,
    Trigger,
    WorkspacePolicy,
)
from .policies import ExecutionPolicy, RetryPolicy
from .verification import VerifyResult, VerifySpec


class ResumeSource(Record):
    step_id: Id
    selector: Selector
    selected_run_id: Id


class EnvironmentSnapshot(Record):
    codex_cli_version: str | None = None
    phh_version: str
    host: str
    working_directory: str
    workspace_policy: WorkspacePolicy
    workspace_root: str
    node: str | None = Field(default=None, description="cluster node label the attempt ran "
                             "on (Ray runner, docs/scale-out.md); absent on a single host")


class PolicySnapshot(Record):
    execution_policy: ExecutionPolicy
    timeout_seconds: float
    retry_policy: RetryPolicy
    verify: VerifySpec | None = Field(default=None, description="the verifier this attempt "
                                      "runs after a turn that would succeed "
                                      "(docs/verification.md#the-verifier)")


class AttemptMeta(Record):
    batch_id: Id
    job_id: Id
    step_id: Id
    run_id: Id
    runner_id: Id
    run_dir_name: str
    created_at: datetime
    attempt_number: int = Field(ge=1, description="1-based count of attempts of this step")
    trigger: Trigger = "scheduled"
    invocation: Literal["exec", "resume"]
    parent_run_id: Id | None = None
    resume_from: ResumeSource | None = None
    resume_base_copied_from: str | None = None
    codex_thread_id: str | None = Field(default=None, description="expected thread (resume)")
    retry_of: Id | None = None
    candidate: int | None = Field(default=None, ge=1, description="1-based candidate index "
                                  "when the step runs best-of-N (docs/verification.md)")
    override_nonce: str | None = Field(
        default=None, description="the operator request this attempt fulfils (retry/resume)"
    )
    prompt_sha256: str
    prompt_ref: str | None = None
    policy_snapshot: PolicySnapshot
    command: list[str]
    environment_snapshot: EnvironmentSnapshot


class Usage(Record):
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_output_tokens: int = 0


class AttemptState(Record):
    batch_id: Id
    job_id: Id
    step_id: Id
    run_id: Id
    runner_id: Id
    status: AttemptStatus
    updated_at: datetime
    started_at: datetime | None = None
    ended_at: datetime | None = None
    last_heartbeat_at: datetime | None = None
    last_event_at: datetime | None = None
    current_item: str | None = None
    pid: int | None = None
    pid_started_at: float | None = Field(default=None, description="process create time (epoch)")
    exit_code: int | None = None
    termination_reason: TerminationReason | None = None
    failure_class: FailureClass | None = None
    codex_thread_id: str | None = None
    turn_completed: bool = False
    usage: Usage = Field(default_factory=Usage)
    artifacts: list[str] = Field(default_factory=list)
    errors: list[str] = Field(default_factory=list)
    verify: VerifyResult | None = None
