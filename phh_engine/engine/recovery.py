"""Recovery and adoption (docs/failure-classes.md#recovery): no attempt stays `running`
without a live process or a monitor.

At start (`recover`, from `Engine.setup`) every attempt a dead engine left queued/running is
ended `failed` / `runner_lost` (or finalised from its recorded exit code), or, when its Codex
still lives, queued for adoption (`adopt_pending`, once the loop serves). Before saying idle
and after an attempt task died, `sweep_orphans` does the same for attempts no task watches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from ..models import AttemptState, CurrentIndex, utcnow
from ..runners.attempt import AttemptPlan
from ..runners.conclude import record_runner_lost
from ..store.crash import faultpoint
from ..store.files import lock_held, read_model, write_state
from ..store.index import load_attempt
from ..store.paths import EXIT_CODE, STATE
from ..store.pointers import update_current
from ..store.views import AttemptView
from .events import EngineEvent

if TYPE_CHECKING:
    from .loop import Engine

log = logging.getLogger(__name__)


class Recovery:
    """The engine's recovery collaborator: ends or adopts attempts nobody watches."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        #: attempts found alive at setup, adopted once `serve` runs (tasks need the loop)
        self.to_adopt: list[tuple[str, str, str, AttemptView]] = []

    def adopt_pending(self) -> None:
        """Adopt what `recover` found still running (call on the serving loop)."""
        for batch_id, job_id, step_id, view in self.to_adopt:
            self.adopt(batch_id, job_id, step_id, view)
        self.to_adopt.clear()

    def is_served(self, runner_id: str) -> bool:
        """Does another live engine serve `runner_id` (its engine lock is held)? False for
        this engine's own runner: anything non-terminal of ours is an orphan."""
        if runner_id == self.eng.runner_id:
            return False  # we hold it: anything non-terminal of ours is an orphan
        return lock_held(self.eng.layout.runners / runner_id / ".engine.lock")

    def recover(self) -> None:
        """docs/failure-classes.md#recovery: attempts left queued/running by a dead engine end as
        runner_lost (or
        with their recorded exit code); a live Codex process is left alone. Total: a fault
        recovering one attempt ends that attempt and never stops the engine from starting."""
        for batch in self.eng.index.batches.values():
            for job, step in batch.steps():
                for att in step.attempts:
                    if att.terminal:
                        continue
                    key = (batch.batch_id, job.job_id, step.step_id, att)
                    try:
                        self._recover_one(*key)
                    except Exception as exc:
                        log.exception("recovering attempt %s failed", att.run_id)
                        with contextlib.suppress(Exception):
                            self.finalize_lost(*key, why=f"recovery failed: "
                                               f"{type(exc).__name__}: {exc}")

    def _recover_one(self, batch_id: str, job_id: str, step_id: str, att: AttemptView
                    ) -> None:
        owner = att.runner_id or self.eng.runner_id
        if self.is_served(owner):
            return
        faultpoint("recover")
        st = att.state
        key = (batch_id, job_id, step_id, att)
        if self.eng.cluster and owner == self.eng.runner_id and att.meta is not None:
            # on a cluster node: its agent holds it, or its heartbeat goes stale and the
            # runner finalises it runner_lost (no local pid says anything)
            self.to_adopt.append(key)
            return
        if att.meta is None or st is None:
            self.finalize_lost(*key)  # never spawned: nothing can be running
            return
        pid = st.pid if st.pid and _alive(st.pid, st.pid_started_at) else None
        if pid is None and st.status == "queued":
            # crashed between spawn and the first 'running' write: find the wrapper
            pid = _find_wrapper(att.path)
        ended = (att.path / EXIT_CODE).exists()
        if pid is not None or ended:
            # alive: watch it to the end; ended with a recorded exit code: finalize
            # it normally from its files
            if st.status == "queued":
                self._mark_running(att, pid)
            self.to_adopt.append(key)
            return
        self.finalize_lost(*key)

    def repair_pointers(self) -> None:
        """A crash between a terminal state write and the current.json update leaves the
        index file stale: compare it with the attempts and rebuild it where they differ."""
        for batch in self.eng.index.batches.values():
            for job in batch.jobs.values():
                want = {a.run_id: a.status for s in job.steps.values() for a in s.attempts}
                if not want:
                    continue
                cur = read_model(self.eng.layout.current(batch.batch_id, job.job_id), CurrentIndex)
                have = ({rid: e.status for p in cur.steps.values()
                         for rid, e in p.by_run_id.items()} if cur else {})
                if have != want:
                    try:
                        update_current(self.eng.layout, batch.batch_id, job.job_id)
                    except OSError as exc:  # e.g. a stray directory named current.json
                        where = os.path.relpath(self.eng.layout.current(batch.batch_id, job.job_id),
                                                self.eng.layout.runs)
                        self.eng.index.unexpected[where] = (
                            f"runs/{where}: cannot rebuild this index file "
                            f"({exc.strerror or exc}); the engine works from the attempts")
                        log.warning("store: %s", self.eng.index.unexpected[where])

    def finalize_lost(self, batch_id: str, job_id: str, step_id: str, att: AttemptView,
                      why: str = "engine stopped while this attempt was in flight") -> None:
        """Record `att` failed / runner_lost (with its exit code when one was recorded) and
        emit `recovered`."""
        now = utcnow()
        st = att.state or AttemptState(
            batch_id=batch_id, job_id=job_id, step_id=step_id, run_id=att.run_id,
            runner_id=self.eng.runner_id, status="queued", updated_at=now)
        exit_code: int | None = None
        with contextlib.suppress(OSError, ValueError):
            exit_code = int((att.path / EXIT_CODE).read_text().strip())
        final = record_runner_lost(self.eng.layout, batch_id, job_id, att.path, st, why, exit_code)
        att.state = final
        self.eng.emit(EngineEvent("recovered", now, batch_id, job_id, step_id, att.run_id,
                                  final.status, detail="runner_lost"))

    def is_orphan(self, att: AttemptView) -> bool:
        """In flight on disk, ours (or its runner is served by no engine), and no task of
        this engine watches it."""
        if att.terminal or att.run_id in self.eng.tasks:
            return False
        return not self.is_served(att.runner_id or self.eng.runner_id)

    def end_orphan(self, batch_id: str, job_id: str, step_id: str, att: AttemptView,
                   *, adopt: bool = True) -> bool:
        """Make an orphaned attempt (see `is_orphan`) true again: adopt it while its process
        lives (when `adopt`), else record it failed / runner_lost. True when it changed."""
        if not self.is_orphan(att):
            return False
        # the view may be stale (another runner's attempt, ended by that runner before it
        # stopped): what is on disk decides, and an ended attempt is only re-read
        fresh = load_attempt(att.path) if att.path.is_dir() else None
        if fresh is not None and fresh.terminal:
            self.eng.index.put_attempt(batch_id, job_id, step_id, fresh)
            self.eng.boards.dirty.add(batch_id)
            return True
        st = att.state
        pid = st.pid if st and st.pid and _alive(st.pid, st.pid_started_at) else None
        if pid is None and (st is None or st.status == "queued"):
            pid = _find_wrapper(att.path)
        if pid is not None:
            if not adopt or att.meta is None or st is None or self.eng.stopping:
                return False
            if st.status == "queued":
                self._mark_running(att, pid)
            self.adopt(batch_id, job_id, step_id, att)
            return True
        self.finalize_lost(batch_id, job_id, step_id, att,
                           why="no process and no monitor: phh lost track of this attempt")
        self.eng.on_attempt_change(batch_id, job_id, step_id, att)
        return True

    def sweep_orphans(self) -> bool:
        """Before saying idle (and after an attempt task died): no attempt may stay
        `running` without a process or a monitor. O(attempts), only on those occasions.
        True when one was ended or adopted."""
        changed = False
        for batch in list(self.eng.index.batches.values()):
            for job, step in batch.steps():
                att = step.in_flight
                if att is None or not self.is_orphan(att):
                    continue
                try:
                    changed |= self.end_orphan(batch.batch_id, job.job_id, step.step_id, att)
                except Exception:
                    log.exception("could not end orphaned attempt %s", att.run_id)
        return changed

    def _mark_running(self, att: AttemptView, pid: int | None) -> None:
        assert att.state is not None
        now = utcnow()
        started = None
        with contextlib.suppress(psutil.Error, TypeError, ValueError):
            started = psutil.Process(pid).create_time() if pid else None
        st = att.state.model_copy(update={
            "status": "running", "updated_at": now, "started_at": now, "last_heartbeat_at": now,
            "pid": pid, "pid_started_at": started})
        write_state(att.path / STATE, st)
        att.state = st

    def adopt(self, batch_id: str, job_id: str, step_id: str, att: AttemptView) -> None:
        """Watch an attempt whose Codex outlived its engine to its end (a task of this
        engine); emit `adopted`. Call on the serving loop."""
        assert self.eng.runner is not None
        batch = self.eng.index.batches[batch_id]
        step = batch.jobs[job_id].steps[step_id]
        plan = AttemptPlan(batch_id=batch_id, job_id=job_id, step_id=step_id,
                           runner_id=att.runner_id or self.eng.runner_id)
        task = asyncio.create_task(
            self.eng.runner.adopt(plan, att, list(step.spec.artifacts_expected)),
            name=f"adopted-{att.run_id}")
        self.eng.track(att.run_id, task)
        self.eng.emit(EngineEvent("adopted", utcnow(), batch_id, job_id, step_id, att.run_id,
                                  "running", detail=f"pid {att.state.pid if att.state else '?'}"))


def _find_wrapper(path: Path) -> int | None:
    """The pid of an attempt's sh wrapper, found by its exit-code argument (unique per
    attempt); used when a crash hit between spawn and recording the pid."""
    marker = str(path / EXIT_CODE)
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = p.info.get("cmdline") or []
        if len(cmd) > 3 and cmd[0] == "/bin/sh" and cmd[3] == marker:
            return int(p.info["pid"])
    return None


def _alive(pid: int, started: float | None) -> bool:
    """Same process as recorded: a reused pid has a different create time."""
    try:
        p = psutil.Process(pid)
        if started is not None and abs(p.create_time() - started) > 1.0:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
