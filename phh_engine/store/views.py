"""In-memory views of the runs store that every derivation reads (built by the StoreIndex).

Plain dataclasses, so pure functions (readiness, scoreboards, selectors) can be tested with
hand-made data and no disk.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..models import (
    TERMINAL_STATUSES,
    AttemptMeta,
    AttemptState,
    AttemptStatus,
    BatchMeta,
    NormalizedJob,
    NormalizedStep,
    RunReport,
)
from ..models.promotion import Promotion
from .paths import CODEX_HOME


@dataclass(slots=True)
class AttemptView:
    run_id: str
    dir_name: str
    path: Path
    meta: AttemptMeta | None = None
    state: AttemptState | None = None
    report: RunReport | None = None
    #: the frozen codex_home/ holds a conversation (sessions/) a resume can copy
    resume_base_ready: bool = False
    #: 1-based candidate index of a best-of-N step's attempt (docs/verification.md)
    candidate: int | None = None

    @property
    def status(self) -> AttemptStatus:
        """A missing state.json means the attempt was just created: queued."""
        return self.state.status if self.state else "queued"

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def started_at(self) -> datetime | None:
        return self.state.started_at if self.state else None

    @property
    def ended_at(self) -> datetime | None:
        return self.state.ended_at if self.state else None

    @property
    def thread_id(self) -> str | None:
        if self.state and self.state.codex_thread_id:
            return self.state.codex_thread_id
        return self.meta.codex_thread_id if self.meta else None

    @property
    def resume_base_dir(self) -> Path:
        return self.path / CODEX_HOME

    @property
    def runner_id(self) -> str | None:
        if self.state:
            return self.state.runner_id
        return self.meta.runner_id if self.meta else None


@dataclass(slots=True)
class OperatorMarks:
    """What operator overrides left on a step (applied override files)."""

    marked_failed: str | None = None
    force_retry: bool = False
    retry_prompt: str | None = None
    requeue_runner: str | None = None
    #: operator resume: continue this attempt's thread with `retry_prompt`
    resume_run_id: str | None = None
    #: the override request the next attempt fulfils (recorded in its meta.json)
    pending_nonce: str | None = None
    remediations: int = 0
    #: why phh cannot start an attempt here (a stray file on the step's path): blocked until
    #: the tree is fixed and an engine starts again
    unstartable: str | None = None
    #: why the runner has no node for the step now (engine/placement.py): not runnable until
    #: `placement_until` (UTC), or until the runner's nodes change
    placement_hold: str | None = None
    placement_until: datetime | None = None

    def clear_request(self) -> None:
        self.force_retry = False
        self.retry_prompt = None
        self.resume_run_id = None
        self.pending_nonce = None


@dataclass(slots=True)
class StepView:
    spec: NormalizedStep
    attempts: list[AttemptView] = field(default_factory=list)
    marks: OperatorMarks = field(default_factory=OperatorMarks)
    #: best-of-N: steps/<step>/promotion.json (docs/verification.md#promotion)
    promotion: Promotion | None = None

    @property
    def step_id(self) -> str:
        return self.spec.step_id

    @property
    def best_of_n(self) -> bool:
        return self.spec.candidates > 1

    @property
    def latest(self) -> AttemptView | None:
        return self.attempts[-1] if self.attempts else None

    @property
    def latest_successful(self) -> AttemptView | None:
        """Successful attempt with the latest ended_at (ties: later start). A best-of-N
        step's is its promoted candidate, once the promotion is applied."""
        if self.spec.candidates > 1:
            p = self.promotion
            if p is None or p.state != "applied":
                return None
            won = self.find(p.winner_run_id)
            return won if won is not None and won.status == "succeeded" else None
        best: AttemptView | None = None
        for a in self.attempts:
            if a.status != "succeeded":
                continue
            # a missing ended_at ranks lowest; never compare it (naive min vs aware raises)
            end, best_end = a.ended_at, best.ended_at if best else None
            if best is None or best_end is None or (end is not None and end >= best_end):
                best = a
        return best

    @property
    def in_flight(self) -> AttemptView | None:
        for a in reversed(self.attempts):
            if not a.terminal:
                return a
        return None

    def add_attempt(self, attempt: AttemptView) -> None:
        """Keep attempts in directory-name (start time) order."""
        if self.attempts and attempt.dir_name < self.attempts[-1].dir_name:
            self.attempts.append(attempt)
            self.attempts.sort(key=lambda a: a.dir_name)
        else:
            self.attempts.append(attempt)

    def find(self, run_id: str) -> AttemptView | None:
        for a in self.attempts:
            if a.run_id == run_id:
                return a
        return None


@dataclass(slots=True)
class JobView:
    spec: NormalizedJob
    steps: dict[str, StepView] = field(default_factory=dict)

    @property
    def job_id(self) -> str:
        return self.spec.job_id

    @classmethod
    def from_spec(cls, spec: NormalizedJob) -> JobView:
        return cls(spec=spec, steps={s.step_id: StepView(spec=s) for s in spec.steps})


@dataclass(slots=True)
class BatchView:
    meta: BatchMeta
    jobs: dict[str, JobView] = field(default_factory=dict)
    closed: bool = False

    @property
    def batch_id(self) -> str:
        return self.meta.batch_id

    @classmethod
    def from_meta(cls, meta: BatchMeta) -> BatchView:
        return cls(meta=meta, jobs={j.job_id: JobView.from_spec(j) for j in meta.jobs})

    def steps(self) -> list[tuple[JobView, StepView]]:
        return [(j, s) for j in self.jobs.values() for s in j.steps.values()]
