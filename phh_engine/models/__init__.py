"""Pydantic models: the single source of every on-disk file's shape."""

from .attempt import (
    AttemptMeta,
    AttemptState,
    EnvironmentSnapshot,
    PolicySnapshot,
    ResumeSource,
    Usage,
)
from .batch_meta import BatchMeta, EffectiveDefaults, NormalizedJob, NormalizedStep
from .common import (
    ID_PATTERN,
    STEP_STATUSES,
    TERMINAL_STATUSES,
    AttemptStatus,
    EventKind,
    FailureClass,
    StepStatus,
    TerminalStatus,
    TerminationReason,
    Trigger,
    as_terminal,
    check_id,
    incoming_ids,
    utcnow,
)
from .current import AttemptIndexEntry, AttemptPointer, CurrentIndex, StepPointers
from .harness_config import HarnessConfig, HarnessSettings
from .health import CatalogFileRecord, RunnerHealth
from .launch_table import JobSpec, LaunchTable, ResumeFrom, StepSpec
from .policies import ExecutionPolicy, RetentionPolicy, RetryPolicy, Timeouts
from .promotion import CandidateBase, CandidateRank, Promotion
from .run_report import RunReport
from .scoreboard import BatchScoreboard, StatusCounts, SystemScoreboard
from .verification import CandidateOverride, VerifyResult, VerifySpec

__all__ = [
    "ID_PATTERN",
    "STEP_STATUSES",
    "TERMINAL_STATUSES",
    "AttemptIndexEntry",
    "AttemptMeta",
    "AttemptPointer",
    "AttemptState",
    "AttemptStatus",
    "BatchMeta",
    "BatchScoreboard",
    "CandidateBase",
    "CandidateOverride",
    "CandidateRank",
    "CatalogFileRecord",
    "CurrentIndex",
    "EffectiveDefaults",
    "EnvironmentSnapshot",
    "EventKind",
    "ExecutionPolicy",
    "FailureClass",
    "HarnessConfig",
    "HarnessSettings",
    "JobSpec",
    "LaunchTable",
    "NormalizedJob",
    "NormalizedStep",
    "PolicySnapshot",
    "Promotion",
    "ResumeFrom",
    "ResumeSource",
    "RetentionPolicy",
    "RetryPolicy",
    "RunReport",
    "RunnerHealth",
    "StatusCounts",
    "StepPointers",
    "StepSpec",
    "StepStatus",
    "SystemScoreboard",
    "TerminalStatus",
    "TerminationReason",
    "Timeouts",
    "Trigger",
    "Usage",
    "VerifyResult",
    "VerifySpec",
    "as_terminal",
    "check_id",
    "incoming_ids",
    "utcnow",
]
