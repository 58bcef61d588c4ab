"""Best-of-N steps (docs/verification.md#candidates-best-of-n), pure: each candidate's own
readiness, the ranking of finished candidates, and the step's status.

A step with `candidates: N` runs N attempts side by side, one per candidate index 1..N. Each
index is scheduled like a plain step of its own (retries per policy as the same index, backoff,
`max_attempts` counted per index); when every index has a final attempt the engine ranks them
(`rank`) and promotes the best that passed (engine/promotion.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime

from ..models.promotion import CandidateRank
from ..models.scoreboard import CandidateRow
from ..store.views import AttemptView, BatchView, JobView, StepView
from .readiness import Readiness


def candidate_attempts(step: StepView, candidate: int) -> list[AttemptView]:
    """Attempts of one candidate index, in start order."""
    return [a for a in step.attempts if a.candidate == candidate]


def in_flight_count(step: StepView) -> int:
    """Attempts of the step that hold a slot: 1 for a plain step in flight, one per running
    candidate of a best-of-N step."""
    if step.spec.candidates <= 1:
        return 1 if step.in_flight is not None else 0
    return sum(1 for a in step.attempts if not a.terminal)


def _served(step: StepView, attempts: list[AttemptView]) -> bool:
    """The candidate's latest attempt already fulfils the pending operator request."""
    nonce = step.marks.pending_nonce
    last = attempts[-1] if attempts else None
    return nonce is not None and last is not None and last.meta is not None and \
        last.meta.override_nonce == nonce


def _sub_step(step: StepView, candidate: int) -> StepView:
    """Candidate `candidate` seen as a plain step (its attempts only), for the plain rules.
    An operator retry/resume already fulfilled by this candidate is not asked of it again."""
    spec = step.spec.model_copy(update={"candidates": 1})
    attempts = candidate_attempts(step, candidate)
    marks = step.marks
    if _served(step, attempts):
        marks = replace(marks)
        marks.clear_request()
    return StepView(spec=spec, attempts=attempts, marks=marks)


def request_still_wanted(step: StepView, started: int | None) -> bool:
    """After candidate `started` was claimed for the step's pending operator request: do
    other candidates still have to start for it (so the request must not be cleared yet)?
    False for a plain step."""
    if step.spec.candidates <= 1 or (step.marks.pending_nonce is None and \
            not step.marks.force_retry):
        return False
    for k in range(1, step.spec.candidates + 1):
        if k == started:
            continue
        attempts = candidate_attempts(step, k)
        last = attempts[-1] if attempts else None
        if last is None or (last.terminal and last.status != "succeeded"
                            and not _served(step, attempts)):
            return True
    return False


def passed(attempt: AttemptView) -> bool:
    """Succeeded, and the verifier (when the step has one) passed: a step without a verifier
    has no `verify` record and ranks its succeeded candidates as passed."""
    st = attempt.state
    if st is None or st.status != "succeeded":
        return False
    return st.verify is None or st.verify.passed


def rank_row(candidate: int, attempt: AttemptView) -> CandidateRank:
    st = attempt.state
    tokens = (st.usage.input_tokens + st.usage.output_tokens) if st else 0
    dur = None
    if st is not None and st.started_at and st.ended_at:
        dur = max(0.0, (st.ended_at - st.started_at).total_seconds())
    return CandidateRank(
        candidate=candidate, run_id=attempt.run_id, status=attempt.status,
        passed=passed(attempt), score=st.verify.score if st and st.verify else None,
        tokens=tokens, duration_seconds=dur)


def rank(rows: list[CandidateRank]) -> list[CandidateRank]:
    """Best first: passed, then higher score (a score beats none), then fewer tokens, then
    shorter time, then the lower index (so the order is total and stable)."""
    def key(r: CandidateRank) -> tuple[int, int, float, int, float, int]:
        return (0 if r.passed else 1,
                0 if r.score is not None else 1, -(r.score or 0.0),
                r.tokens,
                r.duration_seconds if r.duration_seconds is not None else float("inf"),
                r.candidate)
    return sorted(rows, key=key)


def finals(step: StepView) -> dict[int, AttemptView]:
    """{index: its latest attempt} for every index that has one."""
    out: dict[int, AttemptView] = {}
    for a in step.attempts:
        if a.candidate is not None and 1 <= a.candidate <= step.spec.candidates:
            out[a.candidate] = a
    return out


def ranking(step: StepView) -> list[CandidateRank]:
    """The ranked latest attempt of every candidate index (unfinished ones included)."""
    return rank([rank_row(k, a) for k, a in finals(step).items()])


@dataclass(frozen=True, slots=True)
class Due:
    """A promotion the engine should make now: the ranking and its winner."""

    ranking: list[CandidateRank]
    winner: CandidateRank


def candidate_readiness(batch: BatchView, job: JobView, step: StepView, now: datetime
                        ) -> list[Readiness]:
    """Each candidate index's own readiness (the plain step rules on its attempts)."""
    from .readiness import step_readiness

    subs = []
    for k in range(1, step.spec.candidates + 1):
        r = step_readiness(batch, job, _sub_step(step, k), now)
        r.candidate = k
        subs.append(r)
    return subs


def promotion_due(step: StepView, subs: list[Readiness]) -> Due | None:
    """Every candidate index has a final attempt (terminal, no retry or operator request to
    come: `subs`, from `candidate_readiness`, say none is running or ready), at least one
    passed, and no promotion record covers them yet: the winner to promote."""
    promo = step.promotion
    if step.spec.candidates <= 1 or (promo is not None and promo.state != "pending"):
        return None
    if any(r.status in ("running", "ready") for r in subs):
        return None
    fin = finals(step)
    if len(fin) < step.spec.candidates or any(not a.terminal for a in fin.values()):
        return None
    rows = ranking(step)
    if not rows or not rows[0].passed:
        return None
    return Due(rows, rows[0])


def best_of_n_readiness(batch: BatchView, job: JobView, step: StepView, now: datetime
                        ) -> Readiness:
    """The step's status and the candidates to start now (`Readiness.starts`, one readiness
    per index with `candidate` set)."""
    promo = step.promotion
    won = step.latest_successful
    if won is not None and promo is not None:
        return Readiness("succeeded", [f"promoted candidate {promo.winner_candidate} "
                                       f"({promo.winner_run_id})"])
    if step.marks.marked_failed:
        return Readiness("failed", [f"marked failed by operator: {step.marks.marked_failed}"])
    if step.marks.unstartable:
        return Readiness("blocked", [f"cannot start: {step.marks.unstartable}"])
    if promo is not None and promo.state == "conflict":
        return Readiness("needs_attention", [
            f"promotion of candidate {promo.winner_candidate} ({promo.winner_run_id}) failed: "
            f"{promo.reason}; promote a candidate by hand (phh promote) once the job's "
            "workspace is fixed"])
    subs = candidate_readiness(batch, job, step, now)
    starts = [r for r in subs if r.status == "ready" and r.runnable]
    waits = [r.not_before for r in subs if r.status == "ready" and not r.runnable
             and r.not_before is not None]
    if starts or waits:
        reasons = [f"candidate {r.candidate}: {'; '.join(r.reasons)}" for r in subs
                   if r.status == "ready" and r.reasons]
        return Readiness("ready", reasons, runnable=bool(starts),
                         not_before=min(waits) if waits else None,
                         resume=starts[0].resume if starts else None, starts=starts)
    if any(r.status == "running" for r in subs):
        return Readiness("running", [f"{sum(r.status == 'running' for r in subs)} of "
                                     f"{step.spec.candidates} candidates running"])
    blocked = [r for r in subs if r.status == "blocked"]
    if blocked:
        return Readiness("blocked", blocked[0].reasons, resume=blocked[0].resume)
    due = promotion_due(step, subs)
    if due is not None:
        return Readiness("running", [f"promoting candidate {due.winner.candidate} "
                                     f"({due.winner.run_id})"])
    # every candidate ended and none passed
    fin = finals(step)
    why = ", ".join(
        f"{k}: {(a.state.failure_class if a.state else None) or a.status}"
        for k, a in sorted(fin.items()))
    statuses = {r.status for r in subs}
    status = statuses.pop() if len(statuses) == 1 else "failed"
    if status not in ("failed", "needs_attention", "canceled"):
        status = "failed"
    return Readiness(status, [f"no candidate passed ({why})"], retry_of=step.latest)


def candidate_rows(step: StepView) -> list[CandidateRow] | None:
    """The scoreboard's candidates of a best-of-N step, best first (None for a plain step).
    `promoted` marks the applied winner (or the chosen one of a `conflict`)."""
    if step.spec.candidates <= 1:
        return None
    fin = finals(step)
    promo = step.promotion
    won = promo.winner_run_id if promo is not None and promo.state != "pending" else None
    out = []
    for i, r in enumerate(ranking(step), 1):
        a = fin[r.candidate]
        v = a.state.verify if a.state else None
        out.append(CandidateRow(
            candidate=r.candidate, run_id=r.run_id, status=r.status, attempt_dir=str(a.path),
            rank=i, passed=r.passed, verify_exit_code=v.exit_code if v else None,
            score=r.score, tokens=r.tokens, duration_seconds=r.duration_seconds,
            promoted=r.run_id == won))
    return out
