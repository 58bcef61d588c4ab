"""The engine: one asyncio loop that schedules ready steps onto the local runner, keeps the
StoreIndex current, writes scoreboards and runner health, and recovers from a crash on start.

Event-driven: the loop sleeps until an attempt changes, a batch arrives, or a backoff
expires; an idle engine does no work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import psutil
from filelock import FileLock, Timeout

from .. import __version__
from ..derive.readiness import is_stuck
from ..derive.scheduler import Caps, ReadySet, Selection, running_counts, select
from ..derive.scoreboards import batch_scoreboard, system_scoreboard
from ..interfaces.queue import DropQueue
from ..models import AttemptState, CurrentIndex, HarnessConfig, RunnerHealth, check_id, utcnow
from ..models.common import EventKind
from ..models.health import RunnerNode
from ..models.pause import StartPause
from ..models.scoreboard import BatchScoreboard, SystemNote
from ..runners.base import Runner
from ..runners.codex_cli import CodexInfo, locate_codex, probe_codex
from ..runners.credentials import CredentialGate
from ..runners.doctor import ENGINE_PREFLIGHT, codex_config_path, preflight
from ..runners.local import RECOVERY_PROMPT, AttemptPlan, LocalRunner, record_runner_lost
from ..schemas import default_run_report_schema_path
from ..store.catalog import Catalog, CatalogError
from ..store.crash import faultpoint
from ..store.diskguard import WriteGuard
from ..store.files import (
    atomic_write_json,
    lock_held,
    read_model,
    write_state,
)
from ..store.harness_config import load_config
from ..store.index import StoreIndex, unexpected_notes
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
from ..store.paths import EXIT_CODE, STATE, Layout, attempt_dir_names
from ..store.pauses import (
    USAGE_LIMIT,
    active_pauses,
    clear_pause,
    note_usage_limit,
    pause_message,
    pause_notes,
    read_pauses,
)
from ..store.pointers import update_current
from ..store.views import AttemptView, BatchView, StepView
from . import actions
from .health import (
    Resources,
    all_health,
    available,
    drain_state,
    is_stale,
    resource_problems,
    sample_resources,
    system_notes,
)

log = logging.getLogger(__name__)
_CHECK_SCHEDULER = os.environ.get("PHH_CHECK_SCHEDULER") == "1"

HEALTH_INTERVAL = 5.0  # default; harness config runner_health.interval_seconds
CONTEXT_EXHAUSTED_NOTE = (
    "Note: a previous attempt at this task ran out of room in the model's context window, so "
    "this is a fresh start. Check what is already done in the working directory first, and "
    "keep command output and file reads small.")


T = TypeVar("T")


class EngineError(Exception):
    """The engine cannot start (e.g. its runner is already served by another engine)."""


@dataclass(slots=True)
class EngineEvent:
    """What headless logs and the dashboard hear about: one fact, already derived."""

    kind: EventKind
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
        ray_address: str | None = None,
        bounded: bool = True,
        use_catalog: bool = True,
    ) -> None:
        """`bounded`: settled batches (finished or closed, as the catalog recorded and their
        fingerprints confirm) stay on disk and in the catalog, not in memory.
        `use_catalog=False` is the engine without a catalog (bench/catalog.py's baseline)."""
        self.layout = Layout(root)
        #: `phh run --ray ADDRESS`: this engine's runner is a Ray cluster (docs/scale-out.md)
        self.ray_address = ray_address
        self.concurrency = concurrency
        self.runner_id = runner_id
        self.until_idle = until_idle
        self.on_event = on_event or (lambda e: None)
        self.index = _TrackedIndex(self.layout)
        self.config: HarnessConfig | None = None
        self.codex: CodexInfo | None = None
        self.runner: Runner | None = None
        #: the runner runs attempts on other nodes (a Ray cluster): no local pid checks
        self._cluster = False
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.started_at = utcnow()
        self._wake: asyncio.Event | None = None
        self._stopping = False
        self._dirty: set[str] = set()
        #: readiness per job, recomputed only for jobs that changed (scheduler.ReadySet)
        self._ready = ReadySet()
        self.index.ready = self._ready
        # -- the catalog (phh_engine/store/catalog.py): derived, kept current with the files
        self.bounded = bounded
        self.use_catalog = use_catalog
        self.catalog: Catalog | None = None
        self._catalog_full: set[str] = set()  # loaded batches whose attempts it must get
        self._loop: asyncio.AbstractEventLoop | None = None
        #: set (never cleared) once `serve` runs on its loop: from then on the thread-safe
        #: entry points (`stop`, `run_threadsafe`, `call_threadsafe`) reach the loop
        self.serving = threading.Event()
        self._runner_lock: FileLock | None = None
        self._handled: set[str] = set()
        self._boards: dict[str, BatchScoreboard] = {}
        self._to_adopt: list[tuple[str, str, str, AttemptView]] = []
        self.completed = 0
        self.queue: DropQueue | None = None  # the filesystem queue (docs/interfaces.md), if enabled
        self._queue_catch_up: asyncio.Task[None] | None = None
        # -- runner health, drain, admission (docs/architecture.md#scheduling): see
        # phh_engine/engine/health.py
        self._drain: tuple[bool, str | None] = (False, None)
        self._resources = Resources()
        self._resource_problems: list[str] = []
        #: store writes that failed (full disk, no inodes): no new starts until one succeeds
        self.writes = WriteGuard()
        self._health_ok_at: float | None = None  # monotonic time of the last good write
        self._health_error: str | None = None
        self._peers: dict[str, RunnerHealth] = {}
        self._notes: list[SystemNote] = []
        self._admission_reported: list[str] = []
        #: the runner's credential file: pause on a spent one, one refresh per wave
        self._cred: CredentialGate | None = None
        #: start pauses of the whole root (runs/_system/pauses/), re-read every health tick
        self._pauses: list[StartPause] = []
        #: AIMD on HTTP 429: the lowered concurrency, None while at the configured cap
        self._aimd: int | None = None

    # ------------------------------------------------------------ lifecycle
    @property
    def capacity(self) -> int:
        """The configured cap: `--concurrency` (else the runner's `capacity`), never above
        the harness config's `limits.global_concurrency`."""
        assert self.config is not None
        slots = self.runner.slots() if self.runner is not None else None
        if self.concurrency is not None:
            cap = self.concurrency if slots is None else min(self.concurrency, slots)
            return min(cap, self.config.limits.global_concurrency)
        if slots is not None:  # a cluster: the live nodes' codex_slots
            return min(slots, self.config.limits.global_concurrency)
        spec = next((r for r in self.config.runners if r.runner_id == self.runner_id), None)
        cap = spec.capacity if spec else self.config.runners[0].capacity
        return min(cap, self.config.limits.global_concurrency)

    @property
    def effective_capacity(self) -> int:
        """What the scheduler fills now: `capacity`, lowered by AIMD after HTTP 429s (halved
        per rate-limited attempt, +1 per success, never below 1)."""
        cap = self.capacity
        return cap if self._aimd is None else max(1, min(self._aimd, cap))

    def capacity_note(self) -> str | None:
        """One line when `--concurrency N` asks for more than the configuration allows."""
        if self.config is None or self.concurrency is None:
            return None
        limit = self.config.limits.global_concurrency
        if self.concurrency <= limit:
            return None
        return (f"--concurrency {self.concurrency} is capped at {limit} by "
                f"limits.global_concurrency in {self.layout.settings_path.name}; raise it "
                "there to run more at once")

    def header_notes(self) -> list[str]:
        """Short lines for a dashboard header: the concurrency actually filled when AIMD
        lowered it, start pauses ("paused until 14:15:00 (usage limit)"), and a
        `--concurrency` above the configured cap."""
        if self.config is None:
            return []
        out: list[str] = []
        if self.effective_capacity < self.capacity:
            out.append(f"concurrency {self.effective_capacity}/{self.capacity} (HTTP 429)")
        out += [pause_message(p) for p in active_pauses(list(self._pauses), utcnow())]
        note = self.capacity_note()
        if note:
            out.append(note)
        return out

    # ------------------------------------------------------------ public seams
    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop `serve` runs on (None before it started; closed after it ended)."""
        return self._loop

    @property
    def stopping(self) -> bool:
        """True once `stop` was asked for (or the engine ended): no new starts."""
        return self._stopping

    def wait_serving(self, timeout: float | None = None) -> bool:
        """Block until `serve` runs on its loop; False when `timeout` seconds passed first."""
        return self.serving.wait(timeout)

    def run_threadsafe(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """From another thread: run `coro` on the serving engine's loop.
        Raises RuntimeError when the engine is not serving."""
        if self._loop is None:
            raise RuntimeError("engine not serving")
        return asyncio.run_coroutine_threadsafe(coro, self._loop)

    def call_threadsafe(self, fn: Callable[[], object]) -> None:
        """From another thread: call `fn` on the serving engine's loop soon.
        Raises RuntimeError when the engine is not serving (or its loop closed)."""
        if self._loop is None:
            raise RuntimeError("engine not serving")
        self._loop.call_soon_threadsafe(fn)

    def release_runner(self) -> None:
        """Release this runner's engine lock taken by `setup` (idempotent): for an engine
        set up but never served; `serve` releases it itself when it ends."""
        if self._runner_lock is not None:
            self._runner_lock.release()
            self._runner_lock = None

    @property
    def notes(self) -> list[SystemNote]:
        """System notes from the last health sample (a copy)."""
        return list(self._notes)

    @property
    def health_error(self) -> str | None:
        """Why the last health.json write failed ("OSError: No space left ..."), else None."""
        return self._health_error

    @property
    def health_written_at(self) -> float | None:
        """`time.monotonic()` of the last good health.json write (None: none yet)."""
        return self._health_ok_at

    def record_outcome(self, st: AttemptState) -> None:
        """Learn from one ended attempt's state what the model API said: a usage limit
        pauses starts on the root, HTTP 429 halves the effective concurrency, a success
        raises it by one. Call on the engine's loop."""
        self._after_outcome(st)

    def stop(self, cancel_running: bool = False, detach: bool = False) -> None:
        """Thread-safe: no new starts; running attempts finish, are canceled, or (detach) are
        left running for the next engine on this root to adopt."""
        loop = self._loop
        if loop is None or loop.is_closed():
            self._stopping = True
            return
        try:
            loop.call_soon_threadsafe(self._stop_now, cancel_running, detach)
        except RuntimeError:  # the loop closed meanwhile: the engine has already ended
            self._stopping = True

    def _stop_now(self, cancel_running: bool, detach: bool = False) -> None:
        first = not self._stopping
        self._stopping = True
        if detach:
            self._emit(EngineEvent("stopping", utcnow(), detail=(
                f"detaching: {len(self.tasks)} attempt(s) keep running for the next engine")))
            for task in list(self.tasks.values()):
                task.cancel()  # stops watching only; the Codex processes live on
            self._poke()
            return
        if cancel_running and self.runner is not None:
            for run_id in list(self.runner.live):
                self.runner.cancel(run_id, "shutdown")  # retried by the next engine
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
        """Everything before the loop: config, codex, index, recovery. Raises EngineError,
        ConfigError, or PreflightError (no usable Codex, a Codex config missing or not TOML);
        on any of them the runner lock is released again."""
        try:
            # it names runners/<runner_id>/: refused before anything is written
            check_id(self.runner_id, incoming=True)
        except ValueError as exc:
            raise EngineError(f"runner id: {exc}") from None
        self.layout.runs.mkdir(parents=True, exist_ok=True)
        self._acquire_runner()
        try:
            self._setup_locked()
        except BaseException:
            if self._runner_lock is not None:  # an engine that never served holds nothing
                self._runner_lock.release()
                self._runner_lock = None
            raise

    def _setup_locked(self) -> None:
        self.config = load_config(self.layout)
        # a missing Codex, or a Codex config that is missing or not TOML, would fail every
        # attempt (or, worse, make Codex fall back to its default provider): refuse now
        preflight(self.layout, self.config, ENGINE_PREFLIGHT)
        bin_path = locate_codex(self.config.codex.bin)
        self.codex = probe_codex(bin_path)
        self.runner = self._cluster_runner() or LocalRunner(
            self.layout, self.config, self.codex, self.runner_id,
            default_schema=default_run_report_schema_path(),
            on_change=self._on_attempt_change,
            codex_config_toml=codex_config_path(self.config),
        )
        self._cred = CredentialGate(self.layout, self.config)
        self._cred.poll()
        self.runner.writes = self.writes
        overrides_dir(self.layout).mkdir(parents=True, exist_ok=True)
        self.queue = DropQueue.from_config(self.layout, self.config)
        if self.queue is not None:
            self.queue.ensure_dirs()
        self._open_catalog()
        self.index.load()
        if self.catalog is not None:
            self._catalog_full.update(self.index.batches)
        self._replay_overrides()
        self._recover()
        self._repair_pointers()

    # ---------------------------------------------------------- cluster (issue 13)
    def _cluster_runner(self) -> Runner | None:
        """A RayRunner when `--ray ADDRESS` was given or this runner id is configured with
        kind "ray"; connected (blocking). Raises EngineError when Ray is missing or the
        cluster cannot be reached."""
        assert self.config is not None and self.codex is not None
        spec = next((r for r in self.config.runners if r.runner_id == self.runner_id), None)
        address = self.ray_address or (spec.address if spec and spec.kind == "ray" else None)
        if not address:
            return None
        try:
            from ..runners.ray_runner import RayRunner, RayUnavailable
        except ImportError as exc:
            raise EngineError(f"the Ray runner needs Ray: pip install 'phh[ray]' ({exc})"
                              ) from None
        runner = RayRunner(
            self.layout, self.config, self.codex, self.runner_id, address=address,
            namespace=spec.namespace if spec else None,
            slots_resource=spec.slots_resource if spec else "codex_slots",
            node_labels=spec.node_labels if spec else None,
            default_schema=default_run_report_schema_path(),
            on_change=self._on_attempt_change, on_node=self._on_node,
            codex_config_toml=codex_config_path(self.config))
        try:
            runner.connect()
        except RayUnavailable as exc:
            raise EngineError(str(exc)) from None
        self._cluster = True
        return runner

    def _on_node(self, kind: EventKind, label: str, detail: str) -> None:
        now, what = utcnow(), f"node {label}: {detail}"
        data = {"runner_id": self.runner_id, "node": label}
        # each kind spelled out: tests/test_vocabularies.py reads the kinds from the source
        self._emit(EngineEvent("node_joined", now, detail=what, data=data)
                   if kind == "node_joined" else
                   EngineEvent("node_lost", now, detail=what, data=data))
        self._poke()  # capacity changed
    def _open_catalog(self) -> None:
        """Open and verify the catalog; with `bounded`, settled batches are not loaded."""
        if not self.use_catalog:
            return
        try:
            cat = Catalog.open(self.layout, thorough=True)
            rep = cat.verify()
        except CatalogError as exc:
            raise EngineError(str(exc)) from None
        if rep.rebuilt_file:
            log.warning("catalog %s was discarded (%s); rebuilding it from the files",
                        cat.path, rep.rebuilt_file)
        self.catalog = cat
        self.index.catalog = cat
        if self.bounded:
            self.index.skip = rep.settled

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.serving.set()
        if self.runner is None:
            await asyncio.to_thread(self.setup)
        for batch_id, job_id, step_id, view in self._to_adopt:
            self._adopt(batch_id, job_id, step_id, view)
        self._to_adopt.clear()
        self._process_overrides()
        await self._scan_queue()
        self.health_tick()  # drain / resources / health.json before anything starts
        note = self.capacity_note()
        if note:
            self._emit(EngineEvent("concurrency_capped", utcnow(), status="capped",
                                   detail=note, data={"capacity": self.capacity}))
        aux = [
            asyncio.create_task(self._health_loop(), name="phh-health"),
            asyncio.create_task(self._scoreboard_loop(), name="phh-scoreboards"),
            asyncio.create_task(self._watch_loop(), name="phh-watch"),
            asyncio.create_task(self._credential_loop(), name="phh-credential"),
        ]
        if self.config is not None and self.config.gc.enabled:
            aux.append(asyncio.create_task(self._gc_loop(), name="phh-gc"))
        try:
            await self._schedule_loop()
            if self.tasks:
                await asyncio.gather(*self.tasks.values(), return_exceptions=True)
        except asyncio.CancelledError:
            for task in list(self.tasks.values()):
                task.cancel()
            raise
        finally:
            for t in aux:
                t.cancel()
            await asyncio.gather(*aux, return_exceptions=True)
            self.write_scoreboards(all_batches=True)
            with contextlib.suppress(OSError):
                self.write_health(stopped=True)
            self.release_runner()
            if self.runner is not None:  # as asyncio.run waits for its default pool
                await asyncio.to_thread(self.runner.close)
            if self.catalog is not None:
                self.catalog.close()

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
            if self.admission_reasons() != self._admission_reported:
                self._after_sample()  # a start pause ended (or began): say so at once
            caps = self.caps(now)
            sel = self._ready.select(self.index.batches, caps)
            if _CHECK_SCHEDULER:
                self._check_selection(sel, caps, now)
            for cand in sel.start:
                self._start(cand.batch, cand)
            # steps held back by a start pause that ends at a known time are still to run
            pause_end = self._pause_end(now) if sel.waiting else None
            if not sel.start and not self.tasks and sel.next_wakeup is None \
                    and pause_end is None:
                if self._sweep_orphans():
                    continue  # an attempt nobody watched was ended or adopted: look again
                if self.until_idle:
                    self._emit(EngineEvent("idle", now, detail="nothing running or runnable"))
                    return
                if not idle_reported:
                    idle_reported = True
                    self._emit(EngineEvent("idle", now, detail="waiting for work"))
            elif sel.start:
                idle_reported = False
            timeout = None
            wake = min((w for w in (sel.next_wakeup, pause_end) if w is not None), default=None)
            if wake is not None:
                timeout = max(0.05, (wake - utcnow()).total_seconds())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def caps(self, now: datetime | None = None, *, mono: float | None = None) -> Caps:
        """Free slots and running counts at wall time `now` (default: now) and monotonic
        reading `mono` (see `admission_reasons`); brings the ReadySet up to date first."""
        assert self.config is not None
        now = now or utcnow()
        stale_after = self.config.runner_health.stale_after_seconds
        avail = {rid for rid, h in self._peers.items()
                 if available(h, now, stale_after)} | {self.runner_id}
        self._ready.refresh(self.index.batches, now, self.runner_id, avail)
        # health/drain/resources (docs/architecture.md#scheduling): nothing new starts while any
        # reason holds
        if self._cred is not None:
            self._cred.poll()
        free = 0 if self.admission_reasons(mono) else self.effective_capacity - len(self.tasks)
        if self._cred is not None:
            free = self._cred.admit(free)  # a stale token: one attempt refreshes it first
        # global concurrency spans every live runner on this store (from their health.json)
        others = sum(h.running for rid, h in self._peers.items()
                     if rid != self.runner_id and not is_stale(h, now, stale_after))
        free = min(free, self.config.limits.global_concurrency - len(self.tasks) - others)
        return Caps(
            runner_id=self.runner_id, available_runners=avail, free_slots=max(0, free),
            running_by_batch=dict(self._ready.running_by_batch),
            running_by_workdir=dict(self._ready.running_by_workdir),
            per_workdir=self.config.limits.per_working_directory,
        )

    def _check_selection(self, sel: Selection, caps: Caps, now: datetime) -> None:
        """PHH_CHECK_SCHEDULER=1 (the test suite): the incremental answer must equal a full
        pass; a missed `touch` would otherwise show up as a step that silently never starts."""
        by_batch, by_dir = running_counts(self.index.batches.values())
        full = select(self.index.batches.values(), now, Caps(
            free_slots=caps.free_slots, runner_id=caps.runner_id,
            available_runners=caps.available_runners, per_workdir=caps.per_workdir,
            running_by_batch=by_batch, running_by_workdir=by_dir))

        def key(s: Selection) -> list[tuple[str, str, str, str]]:
            return [(c.batch.batch_id, c.job.job_id, c.step.step_id, c.readiness.trigger)
                    for c in s.start]

        got = ({k: v for k, v in caps.running_by_batch.items() if v},
               {k: v for k, v in caps.running_by_workdir.items() if v}, key(sel), sel.next_wakeup)
        want = (by_batch, by_dir, key(full), full.next_wakeup)
        if got != want:
            raise AssertionError(f"incremental scheduler disagrees with a full pass:\n"
                                 f"  incremental {got}\n  full        {want}")

    def _start(self, batch: BatchView, cand: Any) -> None:
        assert self.runner is not None
        r = cand.readiness
        policy = cand.step.spec.retry_policy
        marks = cand.step.marks
        same_thread = r.trigger == "operator_resume" or (
            r.retry_of is not None and policy.mode == "resume_same_thread"
            and r.retry_of.resume_base_ready and r.retry_of.thread_id is not None
        )
        extra = marks.retry_prompt if r.trigger.startswith("operator_") else None
        resume = r.resume
        prev = r.retry_of.state if r.retry_of is not None else None
        if r.trigger != "operator_resume" and prev is not None \
                and prev.failure_class == "context_exhausted":
            # that thread has no room left: continuing it (a same-thread retry, or the step's
            # own resume_from) would fail the same way at once
            same_thread, resume = False, None
            extra = "\n\n".join(x for x in (CONTEXT_EXHAUSTED_NOTE, extra) if x)
        plan = AttemptPlan(
            batch_id=batch.batch_id, job_id=cand.job.job_id, step_id=cand.step.step_id,
            runner_id=self.runner_id, trigger=r.trigger, retry_of=r.retry_of, resume=resume,
            resume_same_thread=same_thread, extra_prompt=extra,
            override_nonce=marks.pending_nonce,
        )
        if self.catalog is not None:  # before the files change: see Catalog.invalidate
            self.catalog.invalidate(batch.batch_id)
        try:
            claimed = self.runner.claim(plan)
        except (NotADirectoryError, FileExistsError, IsADirectoryError) as exc:
            # something other than phh's own directory stands on the step's path (a stray
            # file): this step cannot run here, the others can
            where = os.path.relpath(exc.filename or "?", self.layout.runs)
            cand.step.marks.unstartable = (
                f"runs/{where}: {exc.strerror or exc} (an unexpected entry on the step's path; "
                "move it away and restart the engine)")
            self.index.unexpected[where] = cand.step.marks.unstartable
            log.warning("cannot start %s/%s/%s: %s", batch.batch_id, cand.job.job_id,
                        cand.step.step_id, cand.step.marks.unstartable)
            self._ready.touch(batch.batch_id, cand.job.job_id)
            self._dirty.add(batch.batch_id)
            self._poke()  # the loop looks again (and may go idle)
            return
        except OSError as exc:  # full disk, no inodes: pause starts, keep the loop alive
            self.writes.failed(exc, f"a claim of {batch.batch_id}/{cand.job.job_id}/"
                               f"{cand.step.step_id}")
            self._after_sample()
            return
        except Exception as exc:  # a fault of phh's own: this step waits, the rest run
            log.exception("claim of %s/%s/%s failed", batch.batch_id, cand.job.job_id,
                          cand.step.step_id)
            cand.step.marks.unstartable = (
                f"internal_error while claiming: {type(exc).__name__}: {exc} (see the engine "
                "log; restart the engine to try again)")
            self._ready.touch(batch.batch_id, cand.job.job_id)
            self._dirty.add(batch.batch_id)
            self._poke()
            return
        if claimed is None:  # another engine got there first; the index will catch up
            self.refresh_step(batch.batch_id, cand.job.job_id, cand.step.step_id)
            return
        if marks.pending_nonce or r.trigger.startswith("operator_"):
            marks.clear_request()
        run_id, path = claimed
        view = AttemptView(run_id=run_id, dir_name=path.name, path=path)
        self.index.put_attempt(batch.batch_id, cand.job.job_id, cand.step.step_id, view)
        task = asyncio.create_task(
            self.runner.run(plan, batch, cand.job, cand.step, claimed), name=f"attempt-{run_id}")
        self.tasks[run_id] = task
        task.add_done_callback(functools.partial(self._task_done, run_id))
        if self._cred is not None:
            self._cred.started(run_id)
        self._emit(EngineEvent(
            "attempt_started", utcnow(), batch.batch_id, cand.job.job_id, cand.step.step_id,
            run_id, "running",
            detail=(f"resume of {plan.resume.source.run_id}" if plan.resume and
                    plan.resume.source else r.trigger),
        ))

    def _task_done(self, run_id: str, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(run_id, None)
        if self._cred is not None:
            self._cred.ended(run_id)
        if task.cancelled():
            self._poke()
            return
        if not task.cancelled() and task.exception() is not None:
            log.error("attempt %s crashed", run_id, exc_info=task.exception())
            self._sweep_orphans()  # its attempt may still say running: end it now
        self._poke()

    def refresh_step(self, batch_id: str, job_id: str, step_id: str) -> None:
        """Re-read one step's attempt directories into the index (no-op for an unknown
        batch). Call on the engine's loop."""
        batch = self.index.batches.get(batch_id)
        if batch is None:
            return
        adir = self.layout.attempts_dir(batch_id, job_id, step_id)
        for name in attempt_dir_names(adir):
            self.index.refresh_attempt(batch_id, job_id, step_id, name)

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
            if st is not None:
                self._after_outcome(st)
            self._poke()

    # ------------------------------------------------------------ recovery
    # ------------------------------------------------------------ operator actions
    def request_threadsafe(self, action: str, batch_id: str, job_id: str | None = None,
                           step_id: str | None = None, **kw: Any
                           ) -> concurrent.futures.Future[OverrideResult]:
        """For a UI thread: run `request` on the engine's loop."""
        assert self._loop is not None, "engine not serving"
        return asyncio.run_coroutine_threadsafe(
            self.request(action, batch_id, job_id, step_id, **kw), self._loop)

    # ------------------------------------------------------------ stuck
    # ------------------------------------------------------------ side loops
    # ------------------------------------------------------------ health / drain / GC
    async def _gc_loop(self) -> None:
        """Scheduled retention (harness config `gc`, off by default); `phh gc` is the same."""
        from .gc import run_gc

        assert self.config is not None
        await asyncio.sleep(2.0)  # first pass soon after start, then every interval
        while True:
            try:
                report = await asyncio.to_thread(run_gc, self.layout)
            except Exception:
                log.exception("scheduled GC failed")
            else:
                for bid, jid, sid, name in report.touched_attempts():
                    self.index.refresh_attempt(bid, jid, sid, name)
                if report.actions:
                    self._emit(EngineEvent("gc", utcnow(), status="done",
                                           detail=report.summary(),
                                           data={"freed_bytes": report.freed_bytes}))
            await asyncio.sleep(self.config.gc.interval_seconds)
