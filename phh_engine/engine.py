"""The engine: one asyncio loop that schedules ready steps onto the local runner, keeps the
StoreIndex current, writes scoreboards and runner health, and recovers from a crash on start.

Event-driven: the loop sleeps until an attempt changes, a batch arrives, or a backoff
expires; an idle engine does no work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil
from filelock import FileLock, Timeout

from . import __version__
from .codex_cli import CodexInfo, locate_codex, probe_codex
from .harness_config import load_config
from .index import StoreIndex
from .models import AttemptState, HarnessConfig, RunnerHealth, utcnow
from .paths import EXIT_CODE, STATE, Layout
from .pointers import update_current
from .runner import AttemptPlan, LocalRunner
from .scheduler import Caps, select
from .schemas import default_run_report_schema_path
from .scoreboards import batch_scoreboard, system_scoreboard
from .store import TerminalStateError, atomic_write_json, job_lock, read_model, write_state
from .views import AttemptView, BatchView

log = logging.getLogger(__name__)

HEALTH_INTERVAL = 5.0
RESCAN_INTERVAL = 30.0


class EngineError(Exception):
    """The engine cannot start (e.g. its runner is already served by another engine)."""


@dataclass(slots=True)
class EngineEvent:
    """What headless logs and the dashboard hear about: one fact, already derived."""

    kind: str  # attempt_started | attempt_ended | batch_added | idle | recovered | stopping
    at: datetime
    batch_id: str | None = None
    job_id: str | None = None
    step_id: str | None = None
    run_id: str | None = None
    status: str | None = None
    detail: str | None = None
    duration_seconds: float | None = None
    data: dict[str, Any] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        root: Path | str,
        *,
        concurrency: int | None = None,
        runner_id: str = "local",
        until_idle: bool = False,
        on_event: Callable[[EngineEvent], None] | None = None,
    ) -> None:
        self.layout = Layout(root)
        self.concurrency = concurrency
        self.runner_id = runner_id
        self.until_idle = until_idle
        self.on_event = on_event or (lambda e: None)
        self.index = StoreIndex(self.layout)
        self.config: HarnessConfig | None = None
        self.codex: CodexInfo | None = None
        self.runner: LocalRunner | None = None
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.started_at = utcnow()
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._cancel_on_stop = False
        self._dirty: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner_lock: FileLock | None = None
        self.completed = 0

    # ------------------------------------------------------------ lifecycle
    @property
    def capacity(self) -> int:
        assert self.config is not None
        if self.concurrency is not None:
            return self.concurrency
        spec = next((r for r in self.config.runners if r.runner_id == self.runner_id), None)
        cap = spec.capacity if spec else self.config.runners[0].capacity
        return min(cap, self.config.limits.global_concurrency)

    def stop(self, cancel_running: bool = False) -> None:
        """Thread-safe: no new starts; running attempts finish (or are canceled)."""
        loop = self._loop
        if loop is None:
            self._stopping = True
            return
        loop.call_soon_threadsafe(self._stop_now, cancel_running)

    def _stop_now(self, cancel_running: bool) -> None:
        first = not self._stopping
        self._stopping = True
        if cancel_running and self.runner is not None:
            self._cancel_on_stop = True
            for run_id in list(self.runner.live):
                self.runner.cancel(run_id, "canceled")
        if first or cancel_running:
            self._emit(EngineEvent("stopping", utcnow(), detail=(
                "canceling running attempts" if cancel_running else
                f"no new starts; waiting for {len(self.tasks)} running attempt(s)")))
        self._poke()

    def _poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _emit(self, ev: EngineEvent) -> None:
        try:
            self.on_event(ev)
        except Exception:  # a broken listener must not stop the engine
            log.exception("event listener failed")

    def _acquire_runner(self) -> None:
        """One engine per runner id: a second engine on the same root must not double-run."""
        lock_path = self.layout.runners / self.runner_id / ".engine.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path), timeout=0, thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            raise EngineError(
                f"runner '{self.runner_id}' is already served by another phh engine on "
                f"{self.layout.root}; stop it, or start this one with --runner-id NAME to join "
                "as another runner"
            ) from None
        self._runner_lock = lock

    def setup(self) -> None:
        """Everything before the loop: config, codex, index, recovery. Raises EngineError."""
        self.layout.runs.mkdir(parents=True, exist_ok=True)
        self._acquire_runner()
        self.config = load_config(self.layout)
        bin_path = locate_codex(self.config.codex.bin)
        self.codex = probe_codex(bin_path)
        cfg = os.environ.get("PHH_CODEX_CONFIG") or self.config.codex.config_toml
        self.runner = LocalRunner(
            self.layout, self.config, self.codex, self.runner_id,
            default_schema=default_run_report_schema_path(),
            on_change=self._on_attempt_change,
            codex_config_toml=Path(cfg).expanduser().resolve() if cfg else None,
        )
        self.index.load()
        self._recover()

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        if self.runner is None:
            await asyncio.to_thread(self.setup)
        aux = [
            asyncio.create_task(self._health_loop(), name="phh-health"),
            asyncio.create_task(self._scoreboard_loop(), name="phh-scoreboards"),
            asyncio.create_task(self._watch_loop(), name="phh-watch"),
        ]
        try:
            await self._schedule_loop()
            if self.tasks:
                await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        finally:
            for t in aux:
                t.cancel()
            await asyncio.gather(*aux, return_exceptions=True)
            self._write_scoreboards(all_batches=True)
            self._write_health()
            if self._runner_lock is not None:
                self._runner_lock.release()

    # ------------------------------------------------------------ scheduling
    async def _schedule_loop(self) -> None:
        assert self._wake is not None
        idle_reported = False
        while True:
            self._wake.clear()
            if self._stopping:
                if not self.tasks:
                    return
                await self._wake.wait()
                continue
            now = utcnow()
            sel = select(self.index.batches.values(), now, self._caps())
            for cand in sel.start:
                self._start(cand.batch, cand)
            if not sel.start and not self.tasks and sel.next_wakeup is None:
                if self.until_idle:
                    self._emit(EngineEvent("idle", now, detail="nothing running or runnable"))
                    return
                if not idle_reported:
                    idle_reported = True
                    self._emit(EngineEvent("idle", now, detail="waiting for work"))
            elif sel.start:
                idle_reported = False
            timeout = None
            if sel.next_wakeup is not None:
                timeout = max(0.05, (sel.next_wakeup - utcnow()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def _caps(self) -> Caps:
        assert self.config is not None
        by_batch: dict[str, int] = {}
        by_dir: dict[str, int] = {}
        for batch in self.index.batches.values():
            for job, step in batch.steps():
                if step.in_flight is not None:
                    by_batch[batch.batch_id] = by_batch.get(batch.batch_id, 0) + 1
                    by_dir[job.spec.working_directory] = (
                        by_dir.get(job.spec.working_directory, 0) + 1)
        return Caps(
            free_slots=max(0, self.capacity - len(self.tasks)),
            running_by_batch=by_batch, running_by_workdir=by_dir,
            per_workdir=self.config.limits.per_working_directory,
        )

    def _start(self, batch: BatchView, cand: Any) -> None:
        assert self.runner is not None
        r = cand.readiness
        policy = cand.step.spec.retry_policy
        marks = cand.step.marks
        plan = AttemptPlan(
            batch_id=batch.batch_id, job_id=cand.job.job_id, step_id=cand.step.step_id,
            runner_id=self.runner_id, trigger=r.trigger, retry_of=r.retry_of, resume=r.resume,
            resume_same_thread=(
                r.retry_of is not None and policy.mode == "resume_same_thread"
                and r.retry_of.resume_base_ready and r.retry_of.thread_id is not None
            ),
            extra_prompt=marks.retry_prompt if r.trigger == "operator_retry" else None,
        )
        claimed = self.runner.claim(plan)
        if claimed is None:  # another engine got there first; the index will catch up
            self._refresh_step(batch.batch_id, cand.job.job_id, cand.step.step_id)
            return
        if r.trigger == "operator_retry":
            marks.force_retry = False
            marks.retry_prompt = None
        run_id, path = claimed
        view = AttemptView(run_id=run_id, dir_name=path.name, path=path)
        self.index.put_attempt(batch.batch_id, cand.job.job_id, cand.step.step_id, view)
        task = asyncio.create_task(
            self.runner.run(plan, batch, cand.job, cand.step, claimed), name=f"attempt-{run_id}")
        self.tasks[run_id] = task
        task.add_done_callback(lambda t, rid=run_id: self._task_done(rid, t))
        self._emit(EngineEvent(
            "attempt_started", utcnow(), batch.batch_id, cand.job.job_id, cand.step.step_id,
            run_id, "running",
            detail=(f"resume of {plan.resume.source.run_id}" if plan.resume and
                    plan.resume.source else r.trigger),
        ))

    def _task_done(self, run_id: str, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(run_id, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("attempt %s crashed", run_id, exc_info=task.exception())
        self._poke()

    def _refresh_step(self, batch_id: str, job_id: str, step_id: str) -> None:
        batch = self.index.batches.get(batch_id)
        if batch is None:
            return
        adir = self.layout.attempts_dir(batch_id, job_id, step_id)
        with contextlib.suppress(FileNotFoundError):
            for d in sorted(adir.iterdir()):
                if not d.name.startswith("."):
                    self.index.refresh_attempt(batch_id, job_id, step_id, d.name)

    def _on_attempt_change(self, batch_id: str, job_id: str, step_id: str,
                           view: AttemptView) -> None:
        self.index.put_attempt(batch_id, job_id, step_id, view)
        self._dirty.add(batch_id)
        if view.terminal:
            self.completed += 1
            st = view.state
            dur = None
            if st and st.started_at and st.ended_at:
                dur = (st.ended_at - st.started_at).total_seconds()
            self._emit(EngineEvent(
                "attempt_ended", utcnow(), batch_id, job_id, step_id, view.run_id, view.status,
                detail=(st.failure_class or st.termination_reason) if st else None,
                duration_seconds=dur,
            ))
            self._poke()

    # ------------------------------------------------------------ recovery
    def _runner_is_served(self, runner_id: str) -> bool:
        if runner_id == self.runner_id:
            return False  # we hold it: anything non-terminal of ours is an orphan
        lock = FileLock(str(self.layout.runners / runner_id / ".engine.lock"), timeout=0,
                        thread_local=False)
        try:
            lock.acquire()
        except Timeout:
            return True
        lock.release()
        return False

    def _recover(self) -> None:
        """SPEC §7.4: attempts left queued/running by a dead engine end as runner_lost (or
        with their recorded exit code); a live Codex process is left alone."""
        for batch in self.index.batches.values():
            for job, step in batch.steps():
                for att in step.attempts:
                    if att.terminal:
                        continue
                    owner = att.runner_id or self.runner_id
                    if self._runner_is_served(owner):
                        continue
                    st = att.state
                    if st and st.pid and _alive(st.pid, st.pid_started_at):
                        log.warning("attempt %s still running as pid %s", att.run_id, st.pid)
                        continue
                    self._finalize_lost(batch.batch_id, job.job_id, step.step_id, att)

    def _finalize_lost(self, batch_id: str, job_id: str, step_id: str, att: AttemptView) -> None:
        now = utcnow()
        st = att.state or AttemptState(
            batch_id=batch_id, job_id=job_id, step_id=step_id, run_id=att.run_id,
            runner_id=self.runner_id, status="queued", updated_at=now)
        exit_code: int | None = None
        with contextlib.suppress(OSError, ValueError):
            exit_code = int((att.path / EXIT_CODE).read_text().strip())
        with job_lock(self.layout.job_lock(batch_id, job_id)):
            try:
                if st.status == "queued":
                    st = st.model_copy(update={"status": "running", "started_at": now,
                                               "updated_at": now})
                    write_state(att.path / STATE, st)
                final = st.model_copy(update={
                    "status": "failed", "updated_at": now, "ended_at": now,
                    "exit_code": exit_code, "termination_reason": "runner_lost",
                    "failure_class": "runner_lost",
                    "errors": [*st.errors, "engine stopped while this attempt was in flight"],
                })
                write_state(att.path / STATE, final)
            except TerminalStateError:
                final = read_model(att.path / STATE, AttemptState) or st
            update_current(self.layout, batch_id, job_id, locked=True)
        att.state = final
        self._emit(EngineEvent("recovered", now, batch_id, job_id, step_id, att.run_id,
                               final.status, detail="runner_lost"))

    # ------------------------------------------------------------ side loops
    async def _health_loop(self) -> None:
        while True:
            await asyncio.to_thread(self._write_health)
            await asyncio.sleep(HEALTH_INTERVAL)

    def _write_health(self) -> None:
        disk = mem = None
        load = None
        with contextlib.suppress(OSError):
            disk = shutil.disk_usage(self.layout.root).free
        with contextlib.suppress(Exception):
            mem = psutil.virtual_memory().available
        with contextlib.suppress(OSError):
            load = os.getloadavg()[0]
        health = RunnerHealth(
            runner_id=self.runner_id, host=socket.gethostname(), pid=os.getpid(),
            started_at=self.started_at, last_seen_at=utcnow(),
            capacity=self.capacity if self.config else 0, running=len(self.tasks),
            draining=self._stopping, disk_free_bytes=disk, memory_available_bytes=mem,
            load_1m=load, codex_cli_version=self.codex.version if self.codex else None,
            phh_version=__version__,
        )
        atomic_write_json(self.layout.runner_health(self.runner_id), health)

    async def _scoreboard_loop(self) -> None:
        assert self.config is not None
        interval = self.config.scoreboard.write_interval_seconds
        self._write_scoreboards(all_batches=True)
        ticks = 0
        while True:
            await asyncio.sleep(interval)
            ticks += 1
            # every 30 s rewrite all: heartbeat ages and stuck flags move with time
            self._write_scoreboards(all_batches=ticks * interval >= 30)
            if ticks * interval >= 30:
                ticks = 0

    def _write_scoreboards(self, all_batches: bool = False) -> None:
        dirty = set(self.index.batches) if all_batches else self._dirty
        self._dirty = set()
        if not dirty and not all_batches:
            return
        now = utcnow()
        boards = {}
        for bid, batch in self.index.batches.items():
            sb = batch_scoreboard(batch, now)
            boards[bid] = sb
            if bid in dirty:
                atomic_write_json(self.layout.batch_scoreboard(bid), sb)
        atomic_write_json(
            self.layout.system_scoreboard,
            system_scoreboard(self.index.batches.values(), now, boards),
        )

    async def _watch_loop(self) -> None:
        """New batches from `phh submit` in another process: watch runs/ (not recursive) and
        rescan periodically, because inotify events can be lost on overflow."""
        from watchfiles import awatch

        stop = asyncio.Event()
        while True:
            try:
                async for _ in awatch(self.layout.runs, recursive=False, debounce=50,
                                      step=20, stop_event=stop, rust_timeout=int(
                                          RESCAN_INTERVAL * 1000), yield_on_timeout=True):
                    self._scan_batches()
            except (OSError, RuntimeError):
                await asyncio.sleep(RESCAN_INTERVAL)
                self._scan_batches()

    def _scan_batches(self) -> None:
        for bid in self.index.scan_new_batches():
            self._dirty.add(bid)
            batch = self.index.batches[bid]
            self._emit(EngineEvent("batch_added", utcnow(), bid,
                                   detail=f"{len(batch.jobs)} job(s)"))
            self._poke()


def _alive(pid: int, started: float | None) -> bool:
    """Same process as recorded: a reused pid has a different create time."""
    try:
        p = psutil.Process(pid)
        if started is not None and abs(p.create_time() - started) > 1.0:
            return False
        return p.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
