"""Pure derivations: step status, blocking reasons, retry budget/backoff, resume selectors.

docs/statuses.md#derivation-order (readiness), docs/failure-classes.md#retry-policy (retries),
docs/resume.md (selectors) and docs/statuses.md#step-statuses (step status). No I/O: the
scheduler, scoreboards and tests all call these with views.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

from ..models import RetryPolicy, StepStatus
from ..models.common import (
    MAX_SECONDS,
    UNCOUNTED_FAILURE_CLASSES,
    Selector,
    TerminationReason,
    Trigger,
    as_terminal,
)
from ..store.views import AttemptView, BatchView, JobView, StepView
from .repair import repair_due

RATE_LIMIT_BACKOFF_FACTOR = 4.0
#: `auth` failures retried at once because the credential file changed mid-attempt (another
#: process won the token refresh), at most this many per step: a file that keeps changing
#: under failing attempts is not a race any more
AUTH_RACE_RETRIES = 3
SIGN_IN_AGAIN = "sign in again: `codex login`"
CREDENTIAL_CHANGED: TerminationReason = "credential_changed"


@dataclass(frozen=True, slots=True)
class ResumeResolution:
    """The attempt a resume would copy from, or why there is none usable yet."""

    step_id: str
    selector: Selector
    source: AttemptView | None
    reason: str | None = None


@dataclass(slots=True)
class Readiness:
    status: StepStatus
    reasons: list[str] = field(default_factory=list)
    runnable: bool = False
    not_before: datetime | None = None
    resume: ResumeResolution | None = None
    retry_of: AttemptView | None = None
    trigger: Trigger = "scheduled"
    #: best-of-N (derive/candidates.py): the candidate index this readiness starts, and on
    #: the step's own readiness one entry per candidate to start now
    candidate: int | None = None
    starts: list[Readiness] = field(default_factory=list)


def resolve_resume_source(
    job: JobView, step_id: str, selector: Selector, run_id: str | None = None
) -> ResumeResolution:
    """Deterministic selector resolution (docs/resume.md) over the source step's attempts."""
    src = job.steps.get(step_id)
    key = f"{job.job_id}.{step_id}"
    if src is None:
        return ResumeResolution(step_id, selector, None, f"resume_from: unknown step {key}")
    chosen: AttemptView | None
    if selector == "latest_successful":
        chosen = src.latest_successful
        if chosen is None:
            return ResumeResolution(
                step_id, selector, None, f"resume_from: no resume base available yet for {key}"
            )
    elif selector == "latest":
        chosen = src.latest
        if chosen is None:
            return ResumeResolution(
                step_id, selector, None, f"resume_from: no resume base available yet for {key}"
            )
        if not chosen.terminal:
            return ResumeResolution(
                step_id, selector, None, f"resume_from: latest attempt of {key} still running"
            )
    else:
        chosen = src.find(run_id or "")
        if chosen is None:
            return ResumeResolution(
                step_id, selector, None, f"resume_from: run_id {run_id} not found in {key}"
            )
        if not chosen.terminal:
            return ResumeResolution(
                step_id, selector, None, f"resume_from: attempt {run_id} of {key} still running"
            )
    if not chosen.resume_base_ready:
        return ResumeResolution(
            step_id, selector, None,
            f"resume_from: attempt {chosen.run_id} of {key} left no resume base",
        )
    return ResumeResolution(step_id, selector, chosen)


def retry_delay_seconds(policy: RetryPolicy, failures: int, failure_class: str | None) -> float:
    """Exponential backoff after the n-th failure (n >= 1), longer when rate limited."""
    cap = max(policy.backoff_max_seconds, policy.backoff_seconds)
    if policy.backoff_seconds == 0:
        return 0.0
    try:
        delay = policy.backoff_seconds * policy.backoff_factor ** max(failures - 1, 0)
    except OverflowError:  # a large max_attempts must hit the cap, not crash the scheduler
        return cap
    if failure_class in UNCOUNTED_FAILURE_CLASSES:
        return 0.0  # usage limit: the root's start pause (store/pauses.py) decides when
    if failure_class == "rate_limited":
        delay *= RATE_LIMIT_BACKOFF_FACTOR
    return min(delay, cap)


def _after(start: datetime, seconds: float) -> datetime:
    """`start + seconds`, saturating instead of raising OverflowError: a store written before
    durations were bounded (docs/safety.md#documents) must still be readable."""
    try:
        return start + timedelta(seconds=min(seconds, MAX_SECONDS))
    except OverflowError:
        return datetime.max.replace(tzinfo=start.tzinfo)


def _failure_class(attempt: AttemptView) -> str | None:
    st = attempt.state
    if st is None:
        return None
    if st.failure_class:
        return st.failure_class
    if st.status == "needs_attention":
        return "schema_invalid" if st.termination_reason == "schema_invalid" else (
            "agent_reported_failure"
        )
    if st.status == "canceled":
        return "canceled"
    return st.termination_reason


def _lost_auth_race(attempt: AttemptView) -> bool:
    st = attempt.state
    return (st is not None and st.failure_class == "auth"
            and st.termination_reason == CREDENTIAL_CHANGED)


def counted_attempts(step: StepView) -> int:
    """Attempts that count toward `max_attempts`: not those ended by a usage limit or an
    engine shutdown (UNCOUNTED_FAILURE_CLASSES), nor those that lost a token-refresh race to
    another process: they say nothing about the step."""
    return sum(1 for a in step.attempts
               if not a.terminal or (_failure_class(a) not in UNCOUNTED_FAILURE_CLASSES
                                     and not _lost_auth_race(a)))


def _dependency_reasons(job: JobView, step: StepView) -> list[str]:
    reasons: list[str] = []
    for dep_id in step.spec.depends_on:
        dep = job.steps.get(dep_id)
        key = f"{job.job_id}.{dep_id}"
        if dep is None:
            reasons.append(f"depends_on: {key} does not exist")
            continue
        if dep.latest_successful is not None:
            continue
        if dep.marks.marked_failed:
            reasons.append(f"depends_on: {key} marked failed ({dep.marks.marked_failed})")
        elif dep.latest is not None and dep.latest.terminal:
            reasons.append(f"depends_on: {key} not succeeded (latest {dep.latest.status})")
        else:
            reasons.append(f"depends_on: {key} not succeeded")
    return reasons


def _placement_hold(step: StepView, now: datetime) -> list[str]:
    """[the runner's reason] while the step waits for a node, else []."""
    until = step.marks.placement_until
    if step.marks.placement_hold and until is not None and now < until:
        return [step.marks.placement_hold]
    return []


def step_readiness(batch: BatchView, job: JobView, step: StepView, now: datetime) -> Readiness:
    """Status (docs/statuses.md#step-statuses) and whether the scheduler may start an attempt now
    (docs/statuses.md#derivation-order)."""
    if step.spec.candidates > 1:  # best-of-N: per candidate (docs/verification.md)
        from .candidates import best_of_n_readiness

        return best_of_n_readiness(batch, job, step, now)
    if step.in_flight is not None:
        return Readiness("running")
    if step.marks.resume_run_id is not None and not batch.closed:
        target = step.find(step.marks.resume_run_id)
        if target is not None and target.resume_base_ready:
            held = _placement_hold(step, now)
            return Readiness("ready", ["operator resume requested", *held], runnable=not held,
                             not_before=step.marks.placement_until if held else None,
                             retry_of=target, trigger="operator_resume")
    if step.latest_successful is not None:
        return Readiness("succeeded")
    if step.marks.marked_failed:
        return Readiness("failed", [f"marked failed by operator: {step.marks.marked_failed}"])
    if step.marks.unstartable:
        return Readiness("blocked", [f"cannot start: {step.marks.unstartable}"])

    retry_of: AttemptView | None = None
    trigger: Trigger = "scheduled"
    not_before: datetime | None = None
    reasons: list[str] = []
    latest = step.latest
    if latest is not None:  # terminal and not successful
        fc = _failure_class(latest)
        policy = step.spec.retry_policy
        n = counted_attempts(step)
        uncounted = fc in UNCOUNTED_FAILURE_CLASSES
        if step.marks.force_retry:
            trigger = "operator_retry"
        elif (why_repair := repair_due(step)) is not None:  # docs/verification.md#repair-turns
            trigger = "repair"
            reasons.append(why_repair)
        elif (_lost_auth_race(latest)
              and sum(1 for a in step.attempts if _lost_auth_race(a)) <= AUTH_RACE_RETRIES):
            trigger = "retry"  # at once: the credential file already holds the new token
            reasons.append("retry at once: the credential changed during the attempt")
        elif uncounted or (fc in policy.retry_on and n < policy.max_attempts):
            trigger = "retry"
            wait = retry_delay_seconds(policy, n, fc)
            not_before = _after(latest.ended_at or now, wait)
            reasons.append(f"retry after {fc} (not counted; {n}/{policy.max_attempts} used)"
                           if uncounted else f"retry {n + 1}/{policy.max_attempts} after {fc}")
        else:
            status = as_terminal(latest.status)
            if status is None:  # cannot be: in_flight (checked first) is the unended attempt
                return Readiness("running")
            why = f"{fc}" if fc else latest.status
            if fc == "auth":
                why += f": {SIGN_IN_AGAIN}"
            if fc in policy.retry_on:
                why += f"; retry budget spent ({n}/{policy.max_attempts})"
            return Readiness(status, [why], retry_of=latest)
        retry_of = latest

    dep_reasons = _dependency_reasons(job, step)
    resume: ResumeResolution | None = None
    rf = step.spec.resume_from
    if rf is not None:
        resume = resolve_resume_source(job, rf.step_id, rf.selector, rf.run_id)
        # a depends_on reason already explains a missing source; don't say it twice
        if resume.reason and not any(
            r.startswith(f"depends_on: {job.job_id}.{rf.step_id} ") for r in dep_reasons
        ):
            dep_reasons.append(resume.reason)
    if dep_reasons:
        return Readiness("blocked", dep_reasons, resume=resume, retry_of=retry_of)
    if batch.closed:
        return Readiness("blocked", ["batch closed"], resume=resume, retry_of=retry_of)
    runnable = not_before is None or now >= not_before
    if not runnable and not_before is not None:
        reasons.append(f"backoff until {not_before.isoformat()}")
    elif held := _placement_hold(step, now):  # no node for it now (engine/placement.py)
        reasons += held
        runnable, not_before = False, step.marks.placement_until
    return Readiness(
        "ready", reasons, runnable=runnable, not_before=not_before, resume=resume,
        retry_of=retry_of, trigger=trigger,
    )


def is_stuck(attempt: AttemptView, now: datetime, stale_after_seconds: float,
             beat_age: float | None = None) -> bool:
    """docs/statuses.md#stuck: running with a heartbeat older than the threshold. Status is not
    changed.
    `beat_age` (seconds, monotonic: from the process monitoring it) wins over the wall-clock
    age of `last_heartbeat_at`, which a clock jump would inflate."""
    st = attempt.state
    if st is None or st.status != "running":
        return False
    if beat_age is not None:
        return beat_age > stale_after_seconds
    beat = st.last_heartbeat_at or st.started_at
    return beat is not None and (now - beat).total_seconds() > stale_after_seconds
