"""The Launch Table as an operator writes it (docs/layout.md#launch-table). Unknown keys are
errors."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from .common import MAX_SECONDS, Id, Selector, Strict, WorkspacePolicy
from .policies import (
    ExecutionPolicyOverride,
    RetentionPolicyOverride,
    RetryPolicyOverride,
    TimeoutsOverride,
)
from .verification import MAX_CANDIDATES, MAX_REPAIR_TURNS, CandidateOverride, VerifySpec

GOAL_MIN_WORDS = 150


class ResumeFrom(Strict):
    step_id: Id
    selector: Selector = "latest_successful"
    run_id: Id | None = None
    codex_thread_id: str | None = None

    @model_validator(mode="after")
    def _run_id_with_selector(self) -> ResumeFrom:
        if self.selector == "run_id" and not self.run_id:
            raise ValueError("selector 'run_id' needs the run_id field naming the attempt")
        if self.selector != "run_id" and self.run_id:
            raise ValueError("run_id is only used with selector 'run_id'")
        return self


class RunnerAffinity(Strict):
    same_runner_as: Id | None = None
    runner_id: Id | None = None


class StepSpec(Strict):
    step_id: Id
    prompt: str | None = None
    prompt_ref: str | None = None
    append_prompt: str | None = None
    pack_id: str | None = None
    output_schema_ref: str | None = None
    depends_on: list[Id] = Field(default_factory=list)
    resume_from: ResumeFrom | None = None
    timeout_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)
    retry_policy: RetryPolicyOverride | None = None
    runner_affinity: RunnerAffinity | None = None
    artifacts_expected: list[str] = Field(default_factory=list)
    verify: VerifySpec | None = None
    repair_turns: int | None = Field(default=None, ge=0, le=MAX_REPAIR_TURNS)
    candidates: int = Field(default=1, ge=1, le=MAX_CANDIDATES)
    candidate_overrides: list[CandidateOverride] = Field(default_factory=list,
                                                         max_length=MAX_CANDIDATES)

    @model_validator(mode="after")
    def _one_prompt(self) -> StepSpec:
        if (self.prompt is None) == (self.prompt_ref is None):
            raise ValueError("exactly one of 'prompt' or 'prompt_ref' is required")
        return self


class JobSpec(Strict):
    job_id: Id | None = None
    labels: list[str] = Field(default_factory=list)
    working_directory: str = "."
    workspace_policy: WorkspacePolicy | None = None
    retention_policy: RetentionPolicyOverride | None = None
    steps: list[StepSpec] = Field(min_length=1)


class LaunchTable(Strict):
    spec_version: str | None = None
    batch_id: Id | None = None
    batch_goal_summary: str
    labels: list[str] = Field(default_factory=list)
    tags: list[str] = Field(default_factory=list)
    concurrency: int | None = Field(default=None, ge=1)
    retention_policy: RetentionPolicyOverride | None = None
    working_root: str | None = None
    execution_policy: ExecutionPolicyOverride | None = None
    timeouts: TimeoutsOverride | None = None
    retries: RetryPolicyOverride | None = None
    packs: dict[str, str] = Field(default_factory=dict)
    workspace_policy: WorkspacePolicy | None = None
    allow_shared_directory_concurrency: bool | None = None
    verify: VerifySpec | None = None
    repair_turns: int | None = Field(default=None, ge=0, le=MAX_REPAIR_TURNS)
    jobs: list[JobSpec] = Field(min_length=1)
    kind: Literal["phh.launch_table"] | None = None
