"""Policies shared by the harness config (defaults) and Launch Tables (overrides)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from .common import MAX_ATTEMPTS, MAX_DAYS, MAX_SECONDS, FailureClass, SandboxMode, Strict

DEFAULT_RETRY_ON: list[FailureClass] = [
    "model_error", "rate_limited", "timeout", "runner_lost", "nonzero_exit",
    "context_exhausted", "usage_limited", "shutdown", "verify_failed",
]


class ExecutionPolicy(Strict):
    """The Codex flags every attempt of a batch runs with."""

    sandbox: SandboxMode = "workspace-write"
    bypass_sandbox: bool = Field(
        default=False,
        description="pass --dangerously-bypass-approvals-and-sandbox (externally sandboxed hosts)",
    )
    approval_policy: Literal["never", "on-request", "on-failure", "untrusted"] = "never"
    web_search: bool = False
    network_access: bool = False
    model: str | None = None
    model_reasoning_effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    skip_git_repo_check: bool = True
    add_dirs: list[str] = Field(default_factory=list)
    capture_events: bool = True
    capture_git_artifacts: bool = True
    config_overrides: dict[str, str | int | float | bool] = Field(
        default_factory=dict, description="extra `-c key=value` pairs passed to Codex"
    )


class ExecutionPolicyOverride(Strict):
    sandbox: SandboxMode | None = None
    bypass_sandbox: bool | None = None
    approval_policy: Literal["never", "on-request", "on-failure", "untrusted"] | None = None
    web_search: bool | None = None
    network_access: bool | None = None
    model: str | None = None
    model_reasoning_effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    skip_git_repo_check: bool | None = None
    add_dirs: list[str] | None = None
    capture_events: bool | None = None
    capture_git_artifacts: bool | None = None
    config_overrides: dict[str, str | int | float | bool] | None = None


class RetryPolicy(Strict):
    max_attempts: int = Field(default=2, ge=1, le=MAX_ATTEMPTS)
    backoff_seconds: float = Field(default=30.0, ge=0, le=MAX_SECONDS)
    backoff_factor: float = Field(default=2.0, ge=1, le=1000)
    backoff_max_seconds: float = Field(default=600.0, ge=0, le=MAX_SECONDS)
    mode: Literal["fresh", "resume_same_thread"] = "fresh"
    retry_on: list[FailureClass] = Field(default_factory=lambda: list(DEFAULT_RETRY_ON))


class RetryPolicyOverride(Strict):
    max_attempts: int | None = Field(default=None, ge=1, le=MAX_ATTEMPTS)
    backoff_seconds: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    backoff_factor: float | None = Field(default=None, ge=1, le=1000)
    backoff_max_seconds: float | None = Field(default=None, ge=0, le=MAX_SECONDS)
    mode: Literal["fresh", "resume_same_thread"] | None = None
    retry_on: list[FailureClass] | None = None


class Timeouts(Strict):
    step_seconds: float = Field(default=3600.0, gt=0, le=MAX_SECONDS,
                                description="default step timeout")


class TimeoutsOverride(Strict):
    step_seconds: float | None = Field(default=None, gt=0, le=MAX_SECONDS)


class RetentionPolicy(Strict):
    events_days: float | None = Field(default=30, ge=0, le=MAX_DAYS,
                                      description="keep raw event logs N days")
    compress_events_after_days: float | None = Field(default=7, ge=0, le=MAX_DAYS)
    state_and_final_days: float | None = Field(default=None, ge=0, le=MAX_DAYS)
    git_artifacts_days: float | None = Field(default=30, ge=0, le=MAX_DAYS)
    resume_bases_days: float | None = Field(default=30, ge=0, le=MAX_DAYS)
    delete_successful_finals: bool = False
    workspaces_days: float | None = Field(
        default=0, ge=0, le=MAX_DAYS,
        description="remove a closed batch's isolated workspaces N days after the job's last "
        "attempt ended (git worktree: uncommitted work is committed onto the job's branch, "
        "which is kept; plain copy: deleted). None keeps them",
    )


class RetentionPolicyOverride(Strict):
    events_days: float | None = Field(default=None, ge=0, le=MAX_DAYS)
    compress_events_after_days: float | None = Field(default=None, ge=0, le=MAX_DAYS)
    state_and_final_days: float | None = Field(default=None, ge=0, le=MAX_DAYS)
    git_artifacts_days: float | None = Field(default=None, ge=0, le=MAX_DAYS)
    resume_bases_days: float | None = Field(default=None, ge=0, le=MAX_DAYS)
    delete_successful_finals: bool | None = None
    workspaces_days: float | None = Field(default=None, ge=0, le=MAX_DAYS)
