"""Operator actions (docs/operator-actions.md): requests recorded as files under
runs/_system/overrides/, each applied exactly once by the engine that claims it (O_EXCL),
its result written next to it. The rules per action are the table in engine/actions.py;
this collaborator finds, claims and applies requests, replays applied ones at start (their
marks are the durable record), and runs the bounded stuck-attempt remediation.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

import psutil

from ..derive.readiness import is_stuck
from ..models import utcnow
from ..runners.prepare import RECOVERY_PROMPT
from ..store.overrides import (
    OverrideOutcome,
    OverrideRequest,
    OverrideResult,
    apply_marks,
    claim,
    is_claimed,
    list_results,
    make_request,
    overrides_dir,
    read_request,
    read_result,
    refuse_request,
    write_result,
)
from ..store.views import StepView
from . import actions
from .events import EngineEvent

if TYPE_CHECKING:
    from .loop import Engine

log = logging.getLogger(__name__)


class Operator:
    """The engine's operator-action collaborator (call its methods on the engine's loop)."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        #: request nonces this engine applied, refused or found applied (never re-read)
        self.handled: set[str] = set()

    def replay(self) -> None:
        """Applied overrides are the durable record of marks; an applied retry/resume that no
        attempt fulfilled yet (engine stopped first) is armed again."""
        fulfilled = {a.meta.override_nonce for b in self.eng.index.batches.values()
                     for _, st in b.steps() for a in st.attempts
                     if a.meta is not None and a.meta.override_nonce}
        for res in list_results(self.eng.layout):
            self.handled.add(res.nonce)
            step = apply_marks(self.eng.index.batches, res)
            if (step is not None and res.action in ("retry", "requeue", "resume")
                    and res.nonce not in fulfilled):
                req = self._read_request(res.nonce)
                if req is not None and step.in_flight is None:
                    self.arm(step, req, res.run_id)

    def _read_request(self, nonce: str) -> OverrideRequest | None:
        return read_request(overrides_dir(self.eng.layout) / f"{nonce}.json")

    @staticmethod
    def arm(step: StepView, req: OverrideRequest, resume_run_id: str | None = None) -> None:
        """Mark `step` to start again for an applied retry / requeue / resume request."""
        step.marks.clear_request()
        step.marks.pending_nonce = req.nonce
        step.marks.retry_prompt = req.prompt
        if req.action == "resume":
            step.marks.resume_run_id = resume_run_id or req.run_id
        else:
            step.marks.marked_failed = None
            step.marks.force_retry = True
            step.marks.requeue_runner = req.runner_id

    def process(self) -> None:
        """Apply every request no engine has taken yet (exactly once, via an O_EXCL claim)."""
        d = overrides_dir(self.eng.layout)
        try:
            names = os.listdir(d)
        except FileNotFoundError:
            return
        done = {n[: -len(".result.json")] for n in names if n.endswith(".result.json")}
        for name in sorted(names):
            if name.startswith(".") or not name.endswith(".json") or name.endswith(
                    ".result.json"):
                continue
            nonce = name[:-5]
            if nonce in self.handled or nonce in done:
                continue
            req = read_request(d / name)
            if req is None:
                # refused once (named in the log and on the scoreboards), never re-read
                self.handled.add(nonce)
                why = f"runs/_system/overrides/{name}: request refused: " + \
                    refuse_request(self.eng.layout, d / name, f"engine:{self.eng.runner_id}")
                log.warning("%s", why)
                self.eng.index.unexpected[f"_system/overrides/{name}"] = why
                continue
            if not self._takes(req):
                continue
            if is_claimed(self.eng.layout, nonce) and not self._steal_claim(nonce):
                continue
            if not claim(self.eng.layout, nonce):
                continue
            self.handled.add(nonce)
            if self.eng.catalog is not None:
                self.eng.catalog.invalidate(req.batch_id)
            res = self._apply(req)
            write_result(self.eng.layout, res)
            self.eng.boards.dirty.add(req.batch_id)
            self.eng.ready.touch_all()  # marks, closed batches: rare, so a full pass is fine
            self.eng.emit(EngineEvent(
                "override", utcnow(), req.batch_id, req.job_id, req.step_id, res.run_id,
                res.outcome, detail=f"{req.action}: {res.message}"))
            self.eng.poke()

    def _steal_claim(self, nonce: str) -> bool:
        """A claim whose engine died before recording a result is taken over."""
        path = overrides_dir(self.eng.layout) / f"{nonce}.claim"
        try:
            pid = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and pid != os.getpid() and psutil.pid_exists(pid):
            return False
        path.unlink(missing_ok=True)
        return True

    def _takes(self, req: OverrideRequest) -> bool:
        if req.runner_id and req.runner_id != self.eng.runner_id:
            return False  # requeue onto another runner: that runner's engine applies it
        if req.action == "cancel":
            step = self._find_step(req.batch_id, req.job_id, req.step_id)
            att = (step.find(req.run_id) if req.run_id else step.in_flight) if step else None
            owner = att.runner_id if att else None
            if owner and owner != self.eng.runner_id and self.eng.recovery.is_served(owner):
                return False
        return True

    def _find_step(self, batch_id: str, job_id: str | None, step_id: str | None
                   ) -> StepView | None:
        batch = self.eng.index.batches.get(batch_id)
        job = batch.jobs.get(job_id or "") if batch else None
        return job.steps.get(step_id or "") if job else None

    def _apply(self, req: OverrideRequest) -> OverrideResult:
        assert self.eng.runner is not None

        def result(outcome: OverrideOutcome, message: str, run_id: str | None = None
                   ) -> OverrideResult:
            return OverrideResult(
                nonce=req.nonce, action=req.action, batch_id=req.batch_id, job_id=req.job_id,
                step_id=req.step_id, outcome=outcome, message=message,
                applied_at=utcnow(), applied_by=f"engine:{self.eng.runner_id}", run_id=run_id,
                reason=req.reason)

        batch = self.eng.index.batches.get(req.batch_id) or self.eng.index.load_batch(req.batch_id)
        if batch is None:
            return result("rejected", f"unknown batch {req.batch_id}")
        on_batch = actions.BATCH_ACTIONS.get(req.action)
        if on_batch is not None:
            return on_batch(batch, result)
        if not req.job_id or not req.step_id:
            return result("rejected", f"{req.action} needs a job_id and a step_id")
        job = batch.jobs.get(req.job_id)
        step = job.steps.get(req.step_id) if job else None
        if job is None or step is None:
            return result("rejected", f"unknown step {req.job_id}.{req.step_id} in {req.batch_id}")
        inflight = step.in_flight
        if inflight is not None and self.eng.recovery.is_orphan(inflight):
            # a step left `running` with nothing behind it must not refuse every action
            orphan = inflight
            with contextlib.suppress(Exception):
                if self.eng.recovery.end_orphan(req.batch_id, req.job_id, req.step_id,
                                                orphan, adopt=False):
                    inflight = step.in_flight
                    if req.action == "cancel" and (not req.run_id or
                                                   req.run_id == orphan.run_id):
                        return result("applied", f"{orphan.run_id} had no process; "
                                      f"recorded {orphan.status}", orphan.run_id)
        rule = actions.STEP_ACTIONS.get(req.action, actions.REQUEUE)
        if rule.open_batch_only and batch.closed:
            return result("rejected", f"batch {req.batch_id} is closed")
        return rule.run(actions.StepAction(req, batch, job, step, inflight,
                                           self.eng.runner.cancel, self.arm, result,
                                           promote=self.eng.promoter.operator_promote))

    async def request(
        self, action: str, batch_id: str, job_id: str | None = None, step_id: str | None = None,
        *, run_id: str | None = None, runner_id: str | None = None, prompt: str | None = None,
        reason: str | None = None, requested_by: str = "engine",
    ) -> OverrideResult:
        """The one operator-action entry point (TUI, API): recorded as a request file, applied
        at once. Raises pydantic.ValidationError for malformed ids or actions."""
        req = make_request(self.eng.layout, action, batch_id, job_id=job_id, step_id=step_id,
                           run_id=run_id, runner_id=runner_id, prompt=prompt, reason=reason,
                           requested_by=requested_by)
        self.process()
        res = read_result(self.eng.layout, req.nonce)
        if res is None:  # taken by another engine (e.g. another runner's attempt)
            return OverrideResult(
                nonce=req.nonce, action=req.action, batch_id=batch_id, job_id=job_id,
                step_id=step_id, outcome="applied", message="request queued for its engine",
                applied_at=utcnow(), applied_by="pending")
        return res

    def check_stuck(self) -> None:
        """docs/statuses.md#stuck: stale heartbeats are shown, not changed; optional remediation,
        bounded.
        Call on the engine's loop (it applies override requests)."""
        assert self.eng.config is not None
        rem = self.eng.config.scoreboard.stuck_auto_remediation
        if not rem.enabled:
            return
        now = utcnow()
        ages = self.eng.runner.beat_ages() if self.eng.runner else {}  # own attempts: monotonic
        for batch in self.eng.index.batches.values():
            stale = batch.meta.effective_defaults.heartbeat_stale_after_seconds
            for job, step in batch.steps():
                att = step.in_flight
                if att is None or not is_stuck(att, now, stale, ages.get(att.run_id)):
                    continue
                if step.marks.remediations >= rem.max_per_step:
                    continue
                step.marks.remediations += 1
                why = f"stuck: no heartbeat for over {stale:g}s (auto-remediation {rem.action})"
                if rem.action == "resume":
                    self.eng.runner.cancel(att.run_id, "stuck") if self.eng.runner else None
                    req = make_request(self.eng.layout, "resume", batch.batch_id, job_id=job.job_id,
                                       step_id=step.step_id, run_id=att.run_id,
                                       prompt=RECOVERY_PROMPT.format(reason="stuck"),
                                       reason=why, requested_by="engine")
                    self.handled.add(req.nonce)
                    claim(self.eng.layout, req.nonce)
                    self.arm(step, req, att.run_id)
                    write_result(self.eng.layout, OverrideResult(
                        nonce=req.nonce, action="resume", batch_id=batch.batch_id,
                        job_id=job.job_id, step_id=step.step_id, outcome="applied",
                        message=f"canceled stuck {att.run_id}; resume queued",
                        applied_at=utcnow(), applied_by=f"engine:{self.eng.runner_id}",
                        run_id=att.run_id, reason=why))
                else:
                    make_request(self.eng.layout, "requeue", batch.batch_id, job_id=job.job_id,
                                 step_id=step.step_id, reason=why, requested_by="engine")
        self.process()
