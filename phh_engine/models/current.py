"""current.json (docs/layout.md#currentjson): per-job index, rebuildable from attempt
directories."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from .common import AttemptStatus, Id, Record


class AttemptPointer(Record):
    run_id: Id
    attempt_dir: str
    resume_base_dir: str
    codex_thread_id: str | None = None
    status: AttemptStatus


class AttemptIndexEntry(Record):
    attempt_dir: str
    resume_base_dir: str
    status: AttemptStatus
    started_at: datetime | None = None
    ended_at: datetime | None = None
    codex_thread_id: str | None = None


class StepPointers(Record):
    latest: AttemptPointer
    latest_successful: AttemptPointer | None = Field(
        default=None, description="always present once the step has a successful attempt"
    )
    by_run_id: dict[str, AttemptIndexEntry] = Field(default_factory=dict)


class CurrentIndex(Record):
    batch_id: Id
    job_id: Id
    updated_at: datetime
    steps: dict[str, StepPointers] = Field(default_factory=dict)
