"""Scoreboards (docs/statuses.md#step-statuses): pure functions of the in-memory views, never of
raw events.

The engine, the API, the CLI and the dashboard all show the same numbers because they all call
these. No I/O and one pass over the steps, so recomputing on every change stays cheap.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from datetime import datetime

from ..models import BatchScoreboard, StatusCounts, SystemScoreboard, Usage
from ..models.scoreboard import (
    AttentionRow,
    BlockedRow,
    FailureRow,
    ResumeView,
    RunningRow,
    StepRow,
    SystemRow,
)
from ..store.paths import rehome
from ..store.views import AttemptView, BatchView, JobView, StepView
from .candidates import candidate_rows
from .readiness import Readiness, is_stuck, resolve_resume_source, step_readiness

__all__ = ["batch_scoreboard", "goal_preview", "system_scoreboard"]

_USAGE_FIELDS = tuple(Usage.model_fields)
# A sentence ends at . ! ? followed by space and a capital/digit (so "e.g. the" does not end it).
_SENTENCE_END = re.compile(r"[.!?](?=\s+[A-Z0-9\"'(\[]|\s*$)")


def goal_preview(text: str, limit: int = 120) -> str:
    """The first sentence, or about `limit` characters cut at a word: fits one table row."""
    flat = " ".join(text.split())
    m = _SENTENCE_END.search(flat)
    first = flat[: m.end()] if m else flat
    if len(first) <= limit:
        return first
    cut = flat[: max(limit - 1, 1)]
    space = cut.rfind(" ")
    if space > limit // 2:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-") + "…"


def _seconds(now: datetime, then: datetime | None) -> float | None:
    return None if then is None else round((now - then).total_seconds(), 3)


def _here(copied: str | None, attempt: AttemptView | None) -> str | None:
    """A resume base recorded in meta.json (under the root that ran the attempt) as it lies
    under the root the attempt is read from now (`store.paths.rehome`)."""
    if not copied or attempt is None:
        return copied
    runs = attempt.path.parents[5]  # runs/<batch>/<job>/steps/<step>/attempts/<dir>
    return rehome(copied, runs, attempt.path.parents[4].name)


def _resume_view(job: JobView, step: StepView, r: Readiness) -> ResumeView | None:
    """The resume source: what the attempt actually copied, else what the selector picks now."""
    attempt = step.in_flight or step.latest
    meta = attempt.meta if attempt else None
    if meta is not None and meta.resume_from is not None:
        return ResumeView(
            step_id=meta.resume_from.step_id,
            selector=meta.resume_from.selector,
            selected_run_id=meta.resume_from.selected_run_id,
            resume_base_dir=_here(meta.resume_base_copied_from, attempt),
        )
    rf = step.spec.resume_from
    if rf is None:
        return None
    if r.resume is not None:
        src = r.resume.source
    else:  # readiness only resolves for steps that could still start; resolve for display
        src = resolve_resume_source(job, rf.step_id, rf.selector, rf.run_id).source
    return ResumeView(
        step_id=rf.step_id,
        selector=rf.selector,
        selected_run_id=src.run_id if src else None,
        resume_base_dir=str(src.resume_base_dir) if src else None,
    )


def _running_row(
    job: JobView, step: StepView, a: AttemptView, now: datetime, stuck: bool,
    resume: ResumeView | None, beat_age: float | None = None,
) -> RunningRow:
    st = a.state
    beat = st.last_heartbeat_at if st else None
    return RunningRow(
        job_id=job.job_id,
        step_id=step.step_id,
        run_id=a.run_id,
        runner_id=a.runner_id,
        attempt_dir=str(a.path),
        state_status=a.status,
        current_item=st.current_item if st else None,
        last_heartbeat_at=beat,
        seconds_since_last_heartbeat=(round(beat_age, 3) if beat_age is not None
                                      else _seconds(now, beat)),
        started_at=a.started_at,
        run_duration_seconds=_seconds(now, a.started_at),
        stuck=stuck,
        resume_from=resume,
    )


def _failure_row(job: JobView, step: StepView, a: AttemptView) -> FailureRow:
    st = a.state
    return FailureRow(
        job_id=job.job_id,
        step_id=step.step_id,
        run_id=a.run_id,
        attempt_dir=str(a.path),
        state_status=a.status,
        exit_code=st.exit_code if st else None,
        termination_reason=st.termination_reason if st else None,
        failure_class=st.failure_class if st else None,
        final_status=a.report.status if a.report else None,
        final_summary=a.report.summary if a.report else None,
        errors=list(st.errors) if st else [],
    )


def batch_scoreboard(
    batch: BatchView, now: datetime, stale_after: float | None = None,
    beat_ages: Mapping[str, float] | None = None,
) -> BatchScoreboard:
    """The batch view: header, counts, attention/running/blocked/failures and every step.
    `beat_ages` ({run_id: seconds}, monotonic) are the heartbeat ages of the attempts the
    caller monitors itself: they win over wall-clock ages (see `is_stuck`)."""
    ages = beat_ages or {}
    threshold = (
        stale_after if stale_after is not None
        else batch.meta.effective_defaults.heartbeat_stale_after_seconds
    )
    counts = dict.fromkeys(StatusCounts.model_fields, 0)
    usage = dict.fromkeys(_USAGE_FIELDS, 0)
    stuck_rows: list[AttentionRow] = []
    attention_rows: list[AttentionRow] = []
    failed_rows: list[AttentionRow] = []
    running: list[RunningRow] = []
    blocked: list[BlockedRow] = []
    failures: list[FailureRow] = []
    steps: list[StepRow] = []

    for job in batch.jobs.values():
        for step in job.steps.values():
            for a in step.attempts:
                if a.state is not None:
                    u = a.state.usage
                    for f in _USAGE_FIELDS:
                        usage[f] += getattr(u, f)
            r = step_readiness(batch, job, step, now)
            counts[r.status] += 1
            resume = _resume_view(job, step, r)
            flight = step.in_flight
            shown = flight or step.latest
            age = ages.get(flight.run_id) if flight is not None else None
            stuck = flight is not None and is_stuck(flight, now, threshold, age)

            if flight is not None:
                row = _running_row(job, step, flight, now, stuck, resume, age)
                running.append(row)
                if stuck:
                    stuck_rows.append(AttentionRow(
                        job_id=job.job_id, step_id=step.step_id, kind="stuck",
                        run_id=flight.run_id, attempt_dir=row.attempt_dir,
                        detail=row.current_item,
                        seconds_since_last_heartbeat=row.seconds_since_last_heartbeat,
                    ))
            elif r.status == "blocked":
                blocked.append(BlockedRow(
                    job_id=job.job_id, step_id=step.step_id, reasons=list(r.reasons),
                    resume_from=resume,
                ))
            elif r.status in ("needs_attention", "failed"):
                target = attention_rows if r.status == "needs_attention" else failed_rows
                target.append(AttentionRow(
                    job_id=job.job_id, step_id=step.step_id, kind=r.status,
                    run_id=shown.run_id if shown else None,
                    attempt_dir=str(shown.path) if shown else None,
                    detail="; ".join(r.reasons) or None,
                ))
                if shown is not None:
                    failures.append(_failure_row(job, step, shown))

            steps.append(StepRow(
                job_id=job.job_id, step_id=step.step_id, status=r.status, stuck=stuck,
                attempts=len(step.attempts),
                run_id=shown.run_id if shown else None,
                attempt_dir=str(shown.path) if shown else None,
                reasons=list(r.reasons), resume_from=resume,
                candidates=candidate_rows(step),  # best-of-N (derive/candidates.py)
            ))

    # most stale first: the longest-silent run is the likeliest to be truly hung
    stuck_rows.sort(key=lambda row: -(row.seconds_since_last_heartbeat or 0.0))
    meta = batch.meta
    return BatchScoreboard(
        batch_id=meta.batch_id,
        submitted_at=meta.submitted_at,
        computed_at=now,
        batch_goal_summary=meta.batch_goal_summary,
        jobs_total=len(batch.jobs),
        steps_total=len(steps),
        heartbeat_stale_after_seconds=threshold,
        closed=batch.closed,
        counts=StatusCounts(**counts),
        usage=Usage(**usage),
        attention=stuck_rows + attention_rows + failed_rows,
        running=running,
        blocked=blocked,
        failures=failures,
        steps=steps,
    )


def _system_row(batch: BatchView, sb: BatchScoreboard) -> SystemRow:
    return SystemRow(
        batch_id=sb.batch_id,
        submitted_at=sb.submitted_at,
        batch_goal_summary_preview=goal_preview(batch.meta.batch_goal_summary),
        jobs_total=sb.jobs_total,
        steps_total=sb.steps_total,
        counts=sb.counts,
        running_steps=sb.counts.running,
        attention_steps=len(sb.attention),
        closed=sb.closed,
    )


def system_scoreboard(
    batches: Iterable[BatchView],
    now: datetime,
    per_batch: Mapping[str, BatchScoreboard] | None = None,
    extra_rows: Iterable[str] = (),
) -> SystemScoreboard:
    """One row per batch: attention first, then running, then newest submitted first.

    `per_batch` lets a caller reuse batch scoreboards it already computed (the engine keeps them),
    so the system view costs O(batches) on top. `extra_rows` are rows (SystemRow JSON) of
    batches not in `batches` (settled ones the engine keeps in its catalog only).
    """
    cached = per_batch or {}
    rows: list[SystemRow] = []
    for batch in batches:
        sb = cached.get(batch.batch_id) or batch_scoreboard(batch, now)
        rows.append(_system_row(batch, sb))
    rows.extend(SystemRow.model_validate_json(r) for r in extra_rows)
    rows.sort(key=lambda r: r.batch_id)  # deterministic tie-break
    rows.sort(key=lambda r: (
        r.attention_steps == 0, r.running_steps == 0, -r.submitted_at.timestamp(),
    ))
    return SystemScoreboard(computed_at=now, batches=rows)
