"""Operator actions (docs/operator-actions.md): one function per action, looked up in a
table by `Operator._apply` (engine/operator.py) once the rules every step action shares have
passed.

The engine applies the shared rules in this order, then the action's own function:
unknown batch; batch-level actions (`close`); a job and step named and known; an attempt
left `running` with no process ended first; and, for the actions marked `open_batch_only`,
a closed batch. Each function returns the result to record (outcome and message); it may
mark the step (`arm`) and cancel an attempt, and touches nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from ..derive.readiness import step_readiness
from ..models import utcnow
from ..store.overrides import OverrideOutcome, OverrideRequest, OverrideResult
from ..store.views import AttemptView, BatchView, JobView, StepView


class MakeResult(Protocol):
    def __call__(self, outcome: OverrideOutcome, message: str, run_id: str | None = None
                 ) -> OverrideResult: ...


@dataclass(slots=True)
class StepAction:
    """What a step action sees: the request, its step, the attempt in flight (after an
    orphan was ended), and the engine's two effects."""

    req: OverrideRequest
    batch: BatchView
    job: JobView
    step: StepView
    inflight: AttemptView | None
    #: ask this engine's runner to cancel a run with a reason; False: not running here
    cancel: Callable[[str, str], bool]
    #: mark the step for the scheduler (retry / requeue / resume of a run id)
    arm: Callable[[StepView, OverrideRequest, str | None], None]
    result: MakeResult
    #: best-of-N: promote a candidate run (batch_id, job_id, step, run_id, nonce) ->
    #: (applied, message) (engine/promotion.py)
    promote: Callable[[str, str, StepView, str, str | None], tuple[bool, str]] | None = None

    @property
    def key(self) -> str:
        return f"{self.req.job_id}.{self.req.step_id}"


def close_batch(batch: BatchView, result: MakeResult) -> OverrideResult:
    if batch.closed:
        return result("rejected", f"batch {batch.batch_id} is already closed")
    batch.closed = True
    return result("applied", "batch closed: no new attempts; running ones finish")


def cancel(a: StepAction) -> OverrideResult:
    req, key = a.req, a.key
    att = a.step.find(req.run_id) if req.run_id else a.inflight
    if att is None:
        return a.result("rejected", f"no attempt {req.run_id} in {key}" if req.run_id
                        else f"{key} has no attempt in flight")
    if att.terminal:
        return a.result("rejected", f"attempt {att.run_id} already {att.status}", att.run_id)
    if a.cancel(att.run_id, "canceled"):
        # best-of-N: a cancel of the step (no run named) stops every running candidate
        others = [] if req.run_id else [
            x.run_id for x in a.step.attempts if not x.terminal and x is not att
            and x.candidate is not None and a.cancel(x.run_id, "canceled")]
        return a.result("applied", f"cancel requested for {', '.join([att.run_id, *others])}",
                        att.run_id)
    return a.result("rejected", f"attempt {att.run_id} is not running on this engine",
                    att.run_id)


def mark_failed(a: StepAction) -> OverrideResult:
    step, inflight = a.step, a.inflight
    if step.latest_successful is not None:
        return a.result("rejected", f"{a.key} already succeeded")
    step.marks.clear_request()
    step.marks.marked_failed = a.req.reason or "marked failed by operator"
    msg = f"{a.key} marked failed; dependants stay blocked"
    if inflight is not None and a.cancel(inflight.run_id, "marked failed"):
        msg += f"; canceled {inflight.run_id}"
    # best-of-N: every running candidate goes too (docs/verification.md)
    others = [x.run_id for x in step.attempts if not x.terminal and x is not inflight
              and x.candidate is not None and a.cancel(x.run_id, "marked failed")]
    if others:
        msg += "; canceled " + ", ".join(others)
    return a.result("applied", msg, inflight.run_id if inflight else None)


def resume(a: StepAction) -> OverrideResult:
    req, step, key = a.req, a.step, a.key
    if a.inflight is not None:
        return a.result("rejected", f"{key} is running ({a.inflight.run_id})")
    if not req.prompt:
        return a.result("rejected", "resume needs a prompt (the follow-up turn)")
    target = step.find(req.run_id) if req.run_id else next(
        (t for t in reversed(step.attempts) if t.terminal and t.resume_base_ready), None)
    if target is None or not target.resume_base_ready:
        return a.result("rejected", f"{key} has no finished attempt with a conversation "
                        "to resume")
    a.arm(step, req, target.run_id)
    return a.result("applied", f"resume of {target.run_id} queued", target.run_id)


def retry_or_requeue(a: StepAction) -> OverrideResult:
    """`retry` refuses a running step; `requeue` cancels its attempt and queues anew."""
    req, step, key, inflight = a.req, a.step, a.key, a.inflight
    if step.latest_successful is not None:
        return a.result("rejected", f"{key} already succeeded; resume continues its "
                        "conversation instead")
    if inflight is not None:
        if req.action == "retry":
            return a.result("rejected", f"{key} is running ({inflight.run_id}); cancel it "
                            "first, or requeue")
        if not a.cancel(inflight.run_id, "requeued"):
            return a.result("rejected", f"attempt {inflight.run_id} is not running on this "
                            "engine")
    elif not step.attempts:
        r = step_readiness(a.batch, a.job, step, utcnow())
        if r.status == "blocked":
            return a.result("rejected", f"{key} is blocked: " + "; ".join(r.reasons))
    a.arm(step, req, None)
    return a.result("applied", f"{req.action} of {key} queued")


def promote(a: StepAction) -> OverrideResult:
    """Make candidate `run_id` the step's promoted result
    (docs/verification.md#operator-promote)."""
    req = a.req
    if not req.run_id:
        return a.result("rejected", "promote needs the run_id of a candidate")
    if a.promote is None:
        return a.result("rejected", "this engine cannot promote candidates")
    ok, message = a.promote(req.batch_id, a.job.job_id, a.step, req.run_id, req.nonce)
    return a.result("applied" if ok else "rejected", message, req.run_id)


@dataclass(frozen=True, slots=True)
class Rule:
    run: Callable[[StepAction], OverrideResult]
    #: refused on a closed batch (cancel and mark_failed still work there)
    open_batch_only: bool


#: batch-level actions, applied before any step rule
BATCH_ACTIONS: dict[str, Callable[[BatchView, MakeResult], OverrideResult]] = {
    "close": close_batch,
}
#: step actions; any other action name is a retry/requeue (`STEP_ACTIONS.get(a, REQUEUE)`)
REQUEUE = Rule(retry_or_requeue, open_batch_only=True)
STEP_ACTIONS: dict[str, Rule] = {
    "cancel": Rule(cancel, open_batch_only=False),
    "mark_failed": Rule(mark_failed, open_batch_only=False),
    "promote": Rule(promote, open_batch_only=False),
    "resume": Rule(resume, open_batch_only=True),
    "retry": REQUEUE,
    "requeue": REQUEUE,
}
