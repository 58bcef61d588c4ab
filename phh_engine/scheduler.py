"""Pure selection: which ready steps start now, within every cap, fair across batches."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from .readiness import Readiness, step_readiness
from .views import BatchView, JobView, StepView


@dataclass(slots=True)
class Candidate:
    batch: BatchView
    job: JobView
    step: StepView
    readiness: Readiness


@dataclass(slots=True)
class Selection:
    start: list[Candidate] = field(default_factory=list)
    #: the earliest backoff expiry among ready-but-waiting steps (when to look again)
    next_wakeup: datetime | None = None
    #: steps that could run but got no slot
    waiting: int = 0


@dataclass(slots=True)
class Caps:
    free_slots: int
    runner_id: str | None = None
    running_by_batch: dict[str, int] = field(default_factory=dict)
    running_by_workdir: dict[str, int] = field(default_factory=dict)
    per_workdir: int = 1
    #: runners with fresh health that accept work; None = unknown (affinity is then strict)
    available_runners: set[str] | None = None


def runs_here(job: JobView, step: StepView, runner_id: str | None,
              available_runners: set[str] | None = None) -> bool:
    """Runner affinity: a requeue target, a pinned runner, or the runner of another step.

    `same_runner_as` is a preference (the store is shared): when that runner is stale, stopped
    or draining (not in `available_runners`), any runner may take the step. An explicit
    `runner_id` or a requeue target stays pinned."""
    if runner_id is None:
        return True
    if step.marks.requeue_runner:
        return step.marks.requeue_runner == runner_id
    aff = step.spec.runner_affinity
    if aff is None:
        return True
    if aff.runner_id:
        return aff.runner_id == runner_id
    if aff.same_runner_as:
        other = job.steps.get(aff.same_runner_as)
        src = (other.latest_successful or other.latest) if other else None
        if src is None or src.runner_id in (None, runner_id):
            return True
        return available_runners is not None and src.runner_id not in available_runners
    return True


def runnable_in(batch: BatchView, now: datetime, runner_id: str | None = None,
                available_runners: set[str] | None = None
                ) -> tuple[list[Candidate], datetime | None]:
    """Every step of a batch that may start now, in job/step order, plus the next backoff."""
    out: list[Candidate] = []
    wake: datetime | None = None
    for job in batch.jobs.values():
        for step in job.steps.values():
            r = step_readiness(batch, job, step, now)
            if r.status != "ready" or not runs_here(job, step, runner_id, available_runners):
                continue
            if r.runnable:
                out.append(Candidate(batch, job, step, r))
            elif r.not_before is not None and (wake is None or r.not_before < wake):
                wake = r.not_before
    return out, wake


def select(batches: Iterable[BatchView], now: datetime, caps: Caps) -> Selection:
    """Round-robin over batches (fewest running first), so one huge batch cannot starve
    the others; per-batch `concurrency` and the per-working-directory limit (shared
    workspaces) are respected."""
    sel = Selection()
    queues: list[tuple[BatchView, list[Candidate]]] = []
    for batch in batches:
        cands, wake = runnable_in(batch, now, caps.runner_id, caps.available_runners)
        if wake is not None and (sel.next_wakeup is None or wake < sel.next_wakeup):
            sel.next_wakeup = wake
        if cands:
            queues.append((batch, cands))
    queues.sort(key=lambda q: (caps.running_by_batch.get(q[0].batch_id, 0),
                               q[0].meta.submitted_at))
    by_batch = dict(caps.running_by_batch)
    by_dir = dict(caps.running_by_workdir)
    free = caps.free_slots
    positions = [0] * len(queues)
    progressed = True
    while free > 0 and progressed:
        progressed = False
        for i, (batch, cands) in enumerate(queues):
            if free <= 0:
                break
            limit = batch.meta.effective_defaults.concurrency
            allow_dir = batch.meta.effective_defaults.allow_shared_directory_concurrency
            while positions[i] < len(cands):
                c = cands[positions[i]]
                positions[i] += 1
                if limit is not None and by_batch.get(batch.batch_id, 0) >= limit:
                    positions[i] = len(cands)
                    break
                wd = c.job.spec.working_directory
                shared = c.job.spec.workspace_policy == "shared" and not allow_dir
                if shared and by_dir.get(wd, 0) >= caps.per_workdir:
                    continue
                sel.start.append(c)
                by_batch[batch.batch_id] = by_batch.get(batch.batch_id, 0) + 1
                if shared:
                    by_dir[wd] = by_dir.get(wd, 0) + 1
                free -= 1
                progressed = True
                break
    sel.waiting = sum(len(c) - p for (_, c), p in zip(queues, positions, strict=True))
    return sel
