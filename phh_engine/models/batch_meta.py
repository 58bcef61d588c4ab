"""batch_meta.json (docs/layout.md#batch_metajson): write-once, no runtime results."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import Field

from .common import Id, Record, WorkspacePolicy
from .launch_table import ResumeFrom, RunnerAffinity
from .policies import ExecutionPolicy, RetentionPolicy, RetryPolicy, Timeouts
from .verification import CandidateOverride, VerifySpec


class EffectiveDefaults(Record):
    execution_policy: ExecutionPolicy
    timeouts: Timeouts
    retries: RetryPolicy
    retention_policy: RetentionPolicy
    workspace_policy: WorkspacePolicy
    concurrency: int | None = None
    allow_shared_directory_concurrency: bool = False
    heartbeat_stale_after_seconds: float


class NormalizedStep(Record):
    step_id: Id
    prompt: str = Field(description="resolved prompt text: pack + prompt (+ append_prompt)")
    prompt_sha256: str
    prompt_ref: str | None = None
    append_prompt: str | None = None
    pack_id: str | None = None
    output_schema_ref: str | None = None
    output_schema: dict[str, Any] | None = Field(
        default=None, description="custom Run Report schema, inlined so the batch is reproducible"
    )
    depends_on: list[Id] = Field(description="includes the dependency implied by resume_from")
    resume_from: ResumeFrom | None = None
    timeout_seconds: float
    retry_policy: RetryPolicy
    runner_affinity: RunnerAffinity | None = None
    artifacts_expected: list[str] = Field(default_factory=list)
    verify: VerifySpec | None = Field(default=None,
                                      description="the step's, else the batch's verifier")
    repair_turns: int = Field(default=1, ge=0)
    candidates: int = Field(default=1, ge=1)
    candidate_overrides: list[CandidateOverride] = Field(default_factory=list)


class NormalizedJob(Record):
    job_id: Id
    labels: list[str] = Field(default_factory=list)
    working_directory: str = Field(description="absolute path resolved from working_root")
    workspace_policy: WorkspacePolicy
    retention_policy: RetentionPolicy | None = Field(
        default=None, description="job override of effective_defaults.retention_policy (merged)"
    )
    steps: list[NormalizedStep]


class BatchMeta(Record):
    batch_id: Id
    spec_version: str | None = None
    submitted_at: datetime
    harness_config_version: str
    batch_goal_summary: str
    labels: list[str] = Field(default_factory=list)
    launch_table_ref: str | None = None
    launch_table_sha256: str
    working_root: str
    jobs: list[NormalizedJob]
    effective_defaults: EffectiveDefaults
