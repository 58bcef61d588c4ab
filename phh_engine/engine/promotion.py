"""The engine's side of best-of-N promotion (docs/verification.md#promotion).

When the last candidate of a best-of-N step ends, `Promoter.run_due` ranks the candidates and
promotes the best that passed: promotion.json `pending`, the winner's changes applied to the
job's workspace (runners/candidates.py), then `applied` (or `conflict`: the step shows
`needs_attention` with the reason). Steps are noted when a candidate ends and, at engine
start, every best-of-N step is noted, so a promotion a crash interrupted is finished exactly
once. The operator's `promote` goes through `operator_promote` (engine/actions.py).
"""

from __future__ import annotations

import asyncio
import logging
import subprocess
from collections.abc import Callable

from ..derive.candidates import (
    Due,
    candidate_readiness,
    finals,
    promotion_due,
    rank,
    rank_row,
)
from ..models import utcnow
from ..models.promotion import Promotion
from ..runners.candidates import PromotionError, begin_promotion, finish_promotion
from ..store.candidates import read_base, read_promotion, write_promotion
from ..store.files import job_lock
from ..store.index import StoreIndex
from ..store.pointers import update_current
from ..store.views import StepView

log = logging.getLogger(__name__)

Key = tuple[str, str, str]


class Promoter:
    """`changed(batch_id, job_id)` is called after a step's promotion record changed (the
    engine touches its ReadySet and catalog, and looks again)."""

    def __init__(self, index: StoreIndex, changed: Callable[[str, str], None]) -> None:
        self.index = index
        self.layout = index.layout
        self.changed = changed
        self._noted: set[Key] = set()
        #: noted best-of-N steps not promoted yet: looked at again when any attempt task
        #: ends (`recheck`), so a look that came a moment too early is never the last one
        self._open: set[Key] = set()

    def note(self, batch_id: str, job_id: str, step_id: str) -> None:
        """An attempt of this step ended: worth a look if the step is best-of-N."""
        key = (batch_id, job_id, step_id)
        step = self._step(key)
        if step is not None and step.spec.candidates > 1:
            self._noted.add(key)

    def note_all(self) -> None:
        """Every best-of-N step of the loaded batches (engine start: finish what a crash
        interrupted, promote what ended while no engine ran)."""
        for batch in self.index.batches.values():
            for job, step in batch.steps():
                if step.spec.candidates > 1 and step.attempts:
                    self._noted.add((batch.batch_id, job.job_id, step.step_id))

    @property
    def noted(self) -> bool:
        """Steps noted (e.g. while `run_due` awaited a worker thread) and not looked at yet:
        the engine is not idle while there are any."""
        return bool(self._noted)

    def recheck(self) -> None:
        """An attempt task ended: look again at every best-of-N step still waiting for its
        promotion (few: only those in progress)."""
        self._noted |= self._open

    def _step(self, key: Key) -> StepView | None:
        batch = self.index.batches.get(key[0])
        job = batch.jobs.get(key[1]) if batch else None
        return job.steps.get(key[2]) if job else None

    def _due(self, key: Key, step: StepView) -> Due | None:
        batch = self.index.batches.get(key[0])
        job = batch.jobs.get(key[1]) if batch else None
        if batch is None or job is None:
            return None
        return promotion_due(step, candidate_readiness(batch, job, step, utcnow()))

    async def run_due(self) -> int:
        """Promote every noted step that is due; returns how many records changed. Git and
        files run in a worker thread (a merge can take seconds); the views change here, on
        the engine's loop."""
        if not self._noted:
            return 0
        noted, self._noted = self._noted, set()
        n = 0
        for key in sorted(noted):
            step = self._step(key)
            if step is None or step.spec.candidates <= 1:
                continue
            due = self._due(key, step)
            if due is None and (step.promotion is None or step.promotion.state == "pending"):
                self._open.add(key)
            else:
                self._open.discard(key)
            try:
                promo = await asyncio.to_thread(self._apply_files, key, due)
            except Exception as exc:  # total: one step's fault never stops the engine
                log.exception("promotion of %s failed", "/".join(key))
                promo = await asyncio.to_thread(self._failure_record, key, due,
                                                f"{type(exc).__name__}: {exc}")
            if promo is None:
                continue
            step.promotion = promo
            self.changed(key[0], key[1])
            n += 1
        return n

    def _apply_files(self, key: Key, due: Due | None) -> Promotion | None:
        """Worker thread: finish a pending record, or begin and finish the promotion `due`;
        the record now on disk (None: nothing to do)."""
        bid, jid, sid = key
        with job_lock(self.layout.job_lock(bid, jid), timeout=600):
            on_disk = read_promotion(self.layout, bid, jid, sid)
            if on_disk is not None and on_disk.state == "pending":
                promo = self._finish(on_disk)
            elif on_disk is not None:
                # made earlier (another engine, or before a crash that may have come before
                # current.json was rewritten): show it, and make current.json agree
                update_current(self.layout, bid, jid, locked=True)
                return on_disk
            elif due is None:
                return None
            else:
                promo = begin_promotion(self.layout, bid, jid, sid, due.ranking, due.winner)
                promo = self._finish(promo)
            update_current(self.layout, bid, jid, locked=True)
        return promo

    def _finish(self, promo: Promotion) -> Promotion:
        try:
            return finish_promotion(self.layout, promo)
        except (PromotionError, OSError, subprocess.SubprocessError) as exc:
            done = promo.model_copy(update={"state": "conflict", "reason": str(exc)[:500]})
            write_promotion(self.layout, done)
            return done

    def _failure_record(self, key: Key, due: Due | None, why: str) -> Promotion | None:
        """A promotion that could not even be recorded `pending`: `conflict` with the
        reason, so the step shows needs_attention instead of waiting forever."""
        bid, jid, sid = key
        if due is None:
            return None
        base = read_base(self.layout, bid, jid, sid)
        promo = Promotion(
            batch_id=bid, job_id=jid, step_id=sid, state="conflict",
            winner_run_id=due.winner.run_id, winner_candidate=due.winner.candidate,
            ranking=due.ranking, decided_at=utcnow(),
            kind=base.kind if base is not None else "copy", reason=why[:500])
        try:
            write_promotion(self.layout, promo)
        except OSError:
            return None
        return promo

    # ------------------------------------------------------------------ operator
    def operator_promote(self, batch_id: str, job_id: str, step: StepView, run_id: str,
                         nonce: str | None) -> tuple[bool, str]:
        """Promote candidate run `run_id` by hand: (applied, message). Refused (False) for a
        step that is not best-of-N, a run that is no candidate of it or did not succeed,
        a candidate still running, the run already promoted, or a dependent step that
        already started on the current winner's work (it would be lost)."""
        sid = step.step_id
        key = f"{job_id}.{sid}"
        if step.spec.candidates <= 1:
            return False, f"{key} is not a best-of-N step (candidates: 1)"
        att = step.find(run_id)
        if att is None or att.candidate is None:
            return False, f"run {run_id} is not a candidate of {key}"
        if any(not a.terminal for a in step.attempts):
            return False, f"{key} has candidates still running; promote once they ended"
        if att.status != "succeeded":
            return False, (f"run {run_id} (candidate {att.candidate}) did not succeed "
                           f"({att.status}); only a succeeded candidate can be promoted")
        fin = finals(step)
        if fin.get(att.candidate) is not att:
            return False, (f"run {run_id} is not the latest attempt of candidate "
                           f"{att.candidate}")
        batch = self.index.batches.get(batch_id)
        job = batch.jobs.get(job_id) if batch else None
        if job is not None:
            started = [s.step_id for s in job.steps.values()
                       if sid in s.spec.depends_on and s.attempts]
            if started:
                return False, (f"{', '.join(started)} already started on the promoted work "
                               f"of {key}; promoting another candidate would lose it")
        with job_lock(self.layout.job_lock(batch_id, job_id), timeout=600):
            prev = read_promotion(self.layout, batch_id, job_id, sid)
            if prev is not None and prev.state == "pending":
                prev = finish_promotion(self.layout, prev)
            if prev is not None and prev.winner_run_id == run_id and prev.state == "applied":
                return False, f"run {run_id} is already the promoted candidate of {key}"
            rows = rank([rank_row(k, a) for k, a in fin.items()])
            winner = next(r for r in rows if r.run_id == run_id)
            previous = prev if prev is not None and prev.state == "applied" else None
            try:
                promo = begin_promotion(self.layout, batch_id, job_id, sid, rows, winner,
                                        by="operator", nonce=nonce, previous=previous)
                promo = self._finish(promo)
            except (PromotionError, OSError, subprocess.SubprocessError) as exc:
                return False, f"promotion of {run_id} failed: {exc}"
            step.promotion = promo
            update_current(self.layout, batch_id, job_id, locked=True)
        self.changed(batch_id, job_id)
        if promo.state != "applied":
            return True, (f"candidate {att.candidate} ({run_id}) chosen, but applying it "
                          f"failed: {promo.reason}")
        return True, f"promoted candidate {att.candidate} ({run_id}) of {key}"
