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
from .placement import PlacementGate

log = logging.getLogger(__name__)
_CHECK_SCHEDULER = os.environ.get("PHH_CHECK_SCHEDULER") == "1"

HEALTH_INTERVAL = 5.0  # default; harness config runner_health.interval_seconds
RESCAN_INTERVAL = 30.0
CONTEXT_EXHAUSTED_NOTE = (
    "Note: a previous attempt at this task ran out of room in the model's context window, so "
    "this is a fresh start. Check what is already done in the working directory first, and "
    "keep command output and file reads small.")


#: A board is derived from its whole batch (O(steps), on the loop): the loop spends at most
#: about 1/BOARD_DUTY of its time writing them. A 10,000-step batch (~0.1 s to derive) is
#: then rewritten every 2 s instead of every second, and the schedule stays responsive.
BOARD_DUTY = 20


T = TypeVar("T")


def board_delay(interval: float, spent: float) -> float:
    """Seconds until the next board write: the configured interval, stretched to BOARD_DUTY
    times what the last write took."""
    return max(interval, spent * BOARD_DUTY)


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
        self._placement = PlacementGate()  # steps a cluster has no node for (placement.py)
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
            on_placement=lambda keys: self._placement.wake(self._ready, self._poke, keys),
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

    def _pause_end(self, now: datetime) -> datetime | None:
        """When the last active start pause with a known end is over (None: no such pause)."""
        ends = [p.until for p in active_pauses(self._pauses, now) if p.until is not None]
        return max(ends) if ends else None

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
        if self._placement.hold(self.runner, plan, cand.step):  # no node for it now
            self._ready.touch(batch.batch_id, cand.job.job_id)
            self._dirty.add(batch.batch_id)
            self._poke()
            return
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

    def hold_starts(self, pause: StartPause) -> None:
        """Apply a start pause just written with `pauses.set_pause` at once (other engines on
        the root read it on their next health tick): report it and stop starting."""
        self._pauses = [p for p in self._pauses if p.name != pause.name] + [pause]
        self._after_sample()

    def _merge_pauses(self, on_disk: list[StartPause]) -> list[StartPause]:
        """The pauses a health tick read, plus one this engine set while the read was under
        way (the tick reads off the loop): without it the next starts could slip through
        until the following tick. A pause deleted on disk (ended early by hand) is dropped
        once it is older than that race."""
        assert self.config is not None
        now = utcnow()
        race = 2 * self.config.runner_health.interval_seconds
        by_name = {p.name: p for p in on_disk}
        for p in list(self._pauses):
            disk = by_name.get(p.name)
            if (disk is None or disk.set_at < p.set_at) and \
                    (now - p.set_at).total_seconds() < race:
                by_name[p.name] = p
        return list(by_name.values())

    def _after_outcome(self, st: AttemptState) -> None:
        """What one attempt's end teaches about the model API: a usage limit pauses every
        start on the root; HTTP 429 halves this runner's concurrency, a success adds one."""
        assert self.config is not None
        fc = st.failure_class
        if fc == "usage_limited":
            lim = self.config.limits
            try:
                pause = note_usage_limit(
                    self.layout, " ".join(st.errors), set_by=f"runner:{self.runner_id}",
                    base_seconds=lim.usage_limit_pause_seconds,
                    max_seconds=lim.usage_limit_pause_max_seconds)
            except OSError as exc:  # unwritable: this engine still pauses itself
                log.warning("cannot record the usage-limit pause: %s", exc)
                return
            self.hold_starts(pause)
        elif fc == "rate_limited":
            before = self.effective_capacity
            self._aimd = max(1, before // 2)
            self._emit(EngineEvent(
                "concurrency", utcnow(), status="lowered",
                detail=f"effective concurrency {self.effective_capacity}/{self.capacity} "
                       f"(halved after HTTP 429 rate limit)",
                data={"effective": self.effective_capacity, "capacity": self.capacity}))
            self._dirty.update(self.index.batches)
        elif st.status == "succeeded":
            if self._aimd is not None:
                self._aimd += 1
                if self._aimd >= self.capacity:
                    self._aimd = None
                self._emit(EngineEvent(
                    "concurrency", utcnow(), status="raised",
                    detail=f"effective concurrency {self.effective_capacity}/{self.capacity}"
                           + (" (back to the configured cap)" if self._aimd is None else ""),
                    data={"effective": self.effective_capacity, "capacity": self.capacity}))
                self._dirty.update(self.index.batches)
            if any(p.name == USAGE_LIMIT for p in self._pauses) and not any(
                    p.name == USAGE_LIMIT for p in active_pauses(self._pauses, utcnow())):
                # the limit is over: the next one starts a fresh exponential streak
                with contextlib.suppress(OSError):
                    clear_pause(self.layout, USAGE_LIMIT)
                self._pauses = [p for p in self._pauses if p.name != USAGE_LIMIT]

    # ------------------------------------------------------------ recovery
    def _runner_is_served(self, runner_id: str) -> bool:
        if runner_id == self.runner_id:
            return False  # we hold it: anything non-terminal of ours is an orphan
        return lock_held(self.layout.runners / runner_id / ".engine.lock")

    def _recover(self) -> None:
        """docs/failure-classes.md#recovery: attempts left queued/running by a dead engine end as
        runner_lost (or
        with their recorded exit code); a live Codex process is left alone. Total: a fault
        recovering one attempt ends that attempt and never stops the engine from starting."""
        for batch in self.index.batches.values():
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
                            self._finalize_lost(*key, why=f"recovery failed: "
                                                f"{type(exc).__name__}: {exc}")

    def _recover_one(self, batch_id: str, job_id: str, step_id: str, att: AttemptView
                     ) -> None:
        owner = att.runner_id or self.runner_id
        if self._runner_is_served(owner):
            return
        faultpoint("recover")
        st = att.state
        key = (batch_id, job_id, step_id, att)
        if self._cluster and owner == self.runner_id and att.meta is not None:
            # on a cluster node: its agent holds it, or its heartbeat goes stale and the
            # runner finalises it runner_lost (no local pid says anything)
            self._to_adopt.append(key)
            return
        if att.meta is None or st is None:
            self._finalize_lost(*key)  # never spawned: nothing can be running
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
            self._to_adopt.append(key)
            return
        self._finalize_lost(*key)

    def _repair_pointers(self) -> None:
        """A crash between a terminal state write and the current.json update leaves the
        index file stale: compare it with the attempts and rebuild it where they differ."""
        for batch in self.index.batches.values():
            for job in batch.jobs.values():
                want = {a.run_id: a.status for s in job.steps.values() for a in s.attempts}
                if not want:
                    continue
                cur = read_model(self.layout.current(batch.batch_id, job.job_id), CurrentIndex)
                have = ({rid: e.status for p in cur.steps.values()
                         for rid, e in p.by_run_id.items()} if cur else {})
                if have != want:
                    try:
                        update_current(self.layout, batch.batch_id, job.job_id)
                    except OSError as exc:  # e.g. a stray directory named current.json
                        where = os.path.relpath(self.layout.current(batch.batch_id, job.job_id),
                                                self.layout.runs)
                        self.index.unexpected[where] = (
                            f"runs/{where}: cannot rebuild this index file "
                            f"({exc.strerror or exc}); the engine works from the attempts")
                        log.warning("store: %s", self.index.unexpected[where])

    def _finalize_lost(self, batch_id: str, job_id: str, step_id: str, att: AttemptView,
                       why: str = "engine stopped while this attempt was in flight") -> None:
        now = utcnow()
        st = att.state or AttemptState(
            batch_id=batch_id, job_id=job_id, step_id=step_id, run_id=att.run_id,
            runner_id=self.runner_id, status="queued", updated_at=now)
        exit_code: int | None = None
        with contextlib.suppress(OSError, ValueError):
            exit_code = int((att.path / EXIT_CODE).read_text().strip())
        final = record_runner_lost(self.layout, batch_id, job_id, att.path, st, why, exit_code)
        att.state = final
        self._emit(EngineEvent("recovered", now, batch_id, job_id, step_id, att.run_id,
                               final.status, detail="runner_lost"))

    def _orphan(self, att: AttemptView) -> bool:
        """In flight on disk, ours (or its runner is served by no engine), and no task of
        this engine watches it."""
        if att.terminal or att.run_id in self.tasks:
            return False
        return not self._runner_is_served(att.runner_id or self.runner_id)

    def _end_orphan(self, batch_id: str, job_id: str, step_id: str, att: AttemptView,
                    *, adopt: bool = True) -> bool:
        """Make an orphaned attempt (see `_orphan`) true again: adopt it while its process
        lives (when `adopt`), else record it failed / runner_lost. True when it changed."""
        if not self._orphan(att):
            return False
        st = att.state
        pid = st.pid if st and st.pid and _alive(st.pid, st.pid_started_at) else None
        if pid is None and (st is None or st.status == "queued"):
            pid = _find_wrapper(att.path)
        if pid is not None:
            if not adopt or att.meta is None or st is None or self._stopping:
                return False
            if st.status == "queued":
                self._mark_running(att, pid)
            self._adopt(batch_id, job_id, step_id, att)
            return True
        self._finalize_lost(batch_id, job_id, step_id, att,
                            why="no process and no monitor: phh lost track of this attempt")
        self._on_attempt_change(batch_id, job_id, step_id, att)
        return True

    def _sweep_orphans(self) -> bool:
        """Before saying idle (and after an attempt task died): no attempt may stay
        `running` without a process or a monitor. O(attempts), only on those occasions.
        True when one was ended or adopted."""
        changed = False
        for batch in list(self.index.batches.values()):
            for job, step in batch.steps():
                att = step.in_flight
                if att is None or not self._orphan(att):
                    continue
                try:
                    changed |= self._end_orphan(batch.batch_id, job.job_id, step.step_id, att)
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

    def _adopt(self, batch_id: str, job_id: str, step_id: str, att: AttemptView) -> None:
        assert self.runner is not None
        batch = self.index.batches[batch_id]
        step = batch.jobs[job_id].steps[step_id]
        plan = AttemptPlan(batch_id=batch_id, job_id=job_id, step_id=step_id,
                           runner_id=att.runner_id or self.runner_id)
        task = asyncio.create_task(self.runner.adopt(plan, att, list(step.spec.artifacts_expected)),
                                   name=f"adopted-{att.run_id}")
        self.tasks[att.run_id] = task
        task.add_done_callback(functools.partial(self._task_done, att.run_id))
        self._emit(EngineEvent("adopted", utcnow(), batch_id, job_id, step_id, att.run_id,
                               "running", detail=f"pid {att.state.pid if att.state else '?'}"))

    # ------------------------------------------------------------ operator actions
    def _replay_overrides(self) -> None:
        """Applied overrides are the durable record of marks; an applied retry/resume that no
        attempt fulfilled yet (engine stopped first) is armed again."""
        fulfilled = {a.meta.override_nonce for b in self.index.batches.values()
                     for _, st in b.steps() for a in st.attempts
                     if a.meta is not None and a.meta.override_nonce}
        for res in list_results(self.layout):
            self._handled.add(res.nonce)
            step = apply_marks(self.index.batches, res)
            if (step is not None and res.action in ("retry", "requeue", "resume")
                    and res.nonce not in fulfilled):
                req = self._read_request(res.nonce)
                if req is not None and step.in_flight is None:
                    self._arm(step, req, res.run_id)

    def _read_request(self, nonce: str) -> OverrideRequest | None:
        return read_request(overrides_dir(self.layout) / f"{nonce}.json")

    @staticmethod
    def _arm(step: StepView, req: OverrideRequest, resume_run_id: str | None = None) -> None:
        step.marks.clear_request()
        step.marks.pending_nonce = req.nonce
        step.marks.retry_prompt = req.prompt
        if req.action == "resume":
            step.marks.resume_run_id = resume_run_id or req.run_id
        else:
            step.marks.marked_failed = None
            step.marks.force_retry = True
            step.marks.requeue_runner = req.runner_id

    def _process_overrides(self) -> None:
        """Apply every request no engine has taken yet (exactly once, via an O_EXCL claim)."""
        d = overrides_dir(self.layout)
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
            if nonce in self._handled or nonce in done:
                continue
            req = read_request(d / name)
            if req is None:
                # refused once (named in the log and on the scoreboards), never re-read
                self._handled.add(nonce)
                why = f"runs/_system/overrides/{name}: request refused: " + \
                    refuse_request(self.layout, d / name, f"engine:{self.runner_id}")
                log.warning("%s", why)
                self.index.unexpected[f"_system/overrides/{name}"] = why
                continue
            if not self._takes(req):
                continue
            if is_claimed(self.layout, nonce) and not self._steal_claim(nonce):
                continue
            if not claim(self.layout, nonce):
                continue
            self._handled.add(nonce)
            if self.catalog is not None:
                self.catalog.invalidate(req.batch_id)
            res = self._apply(req)
            write_result(self.layout, res)
            self._dirty.add(req.batch_id)
            self._ready.touch_all()  # marks, closed batches: rare, so a full pass is fine
            self._emit(EngineEvent(
                "override", utcnow(), req.batch_id, req.job_id, req.step_id, res.run_id,
                res.outcome, detail=f"{req.action}: {res.message}"))
            self._poke()

    def _steal_claim(self, nonce: str) -> bool:
        """A claim whose engine died before recording a result is taken over."""
        path = overrides_dir(self.layout) / f"{nonce}.claim"
        try:
            pid = int(path.read_text().strip() or 0)
        except (OSError, ValueError):
            pid = 0
        if pid and pid != os.getpid() and psutil.pid_exists(pid):
            return False
        path.unlink(missing_ok=True)
        return True

    def _takes(self, req: OverrideRequest) -> bool:
        if req.runner_id and req.runner_id != self.runner_id:
            return False  # requeue onto another runner: that runner's engine applies it
        if req.action == "cancel":
            step = self._find_step(req.batch_id, req.job_id, req.step_id)
            att = (step.find(req.run_id) if req.run_id else step.in_flight) if step else None
            owner = att.runner_id if att else None
            if owner and owner != self.runner_id and self._runner_is_served(owner):
                return False
        return True

    def _find_step(self, batch_id: str, job_id: str | None, step_id: str | None
                   ) -> StepView | None:
        batch = self.index.batches.get(batch_id)
        job = batch.jobs.get(job_id or "") if batch else None
        return job.steps.get(step_id or "") if job else None

    def _apply(self, req: OverrideRequest) -> OverrideResult:
        assert self.runner is not None

        def result(outcome: OverrideOutcome, message: str, run_id: str | None = None
                   ) -> OverrideResult:
            return OverrideResult(
                nonce=req.nonce, action=req.action, batch_id=req.batch_id, job_id=req.job_id,
                step_id=req.step_id, outcome=outcome, message=message,
                applied_at=utcnow(), applied_by=f"engine:{self.runner_id}", run_id=run_id,
                reason=req.reason)

        batch = self.index.batches.get(req.batch_id) or self.index.load_batch(req.batch_id)
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
        if inflight is not None and self._orphan(inflight):
            # a step left `running` with nothing behind it must not refuse every action
            orphan = inflight
            with contextlib.suppress(Exception):
                if self._end_orphan(req.batch_id, req.job_id, req.step_id, orphan,
                                    adopt=False):
                    inflight = step.in_flight
                    if req.action == "cancel" and (not req.run_id or
                                                   req.run_id == orphan.run_id):
                        return result("applied", f"{orphan.run_id} had no process; "
                                      f"recorded {orphan.status}", orphan.run_id)
        rule = actions.STEP_ACTIONS.get(req.action, actions.REQUEUE)
        if rule.open_batch_only and batch.closed:
            return result("rejected", f"batch {req.batch_id} is closed")
        return rule.run(actions.StepAction(req, batch, job, step, inflight,
                                           self.runner.cancel, self._arm, result))

    async def request(
        self, action: str, batch_id: str, job_id: str | None = None, step_id: str | None = None,
        *, run_id: str | None = None, runner_id: str | None = None, prompt: str | None = None,
        reason: str | None = None, requested_by: str = "engine",
    ) -> OverrideResult:
        """The one operator-action entry point (TUI, API): recorded as a request file, applied
        at once. Raises pydantic.ValidationError for malformed ids or actions."""
        req = make_request(self.layout, action, batch_id, job_id=job_id, step_id=step_id,
                           run_id=run_id, runner_id=runner_id, prompt=prompt, reason=reason,
                           requested_by=requested_by)
        self._process_overrides()
        res = read_result(self.layout, req.nonce)
        if res is None:  # taken by another engine (e.g. another runner's attempt)
            return OverrideResult(
                nonce=req.nonce, action=req.action, batch_id=batch_id, job_id=job_id,
                step_id=step_id, outcome="applied", message="request queued for its engine",
                applied_at=utcnow(), applied_by="pending")
        return res

    def request_threadsafe(self, action: str, batch_id: str, job_id: str | None = None,
                           step_id: str | None = None, **kw: Any
                           ) -> concurrent.futures.Future[OverrideResult]:
        """For a UI thread: run `request` on the engine's loop."""
        assert self._loop is not None, "engine not serving"
        return asyncio.run_coroutine_threadsafe(
            self.request(action, batch_id, job_id, step_id, **kw), self._loop)

    # ------------------------------------------------------------ stuck
    def check_stuck(self) -> None:
        """docs/statuses.md#stuck: stale heartbeats are shown, not changed; optional remediation,
        bounded.
        Call on the engine's loop (it applies override requests)."""
        assert self.config is not None
        rem = self.config.scoreboard.stuck_auto_remediation
        if not rem.enabled:
            return
        now = utcnow()
        ages = self.runner.beat_ages() if self.runner else {}  # own attempts: monotonic
        for batch in self.index.batches.values():
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
                    self.runner.cancel(att.run_id, "stuck") if self.runner else None
                    req = make_request(self.layout, "resume", batch.batch_id, job_id=job.job_id,
                                       step_id=step.step_id, run_id=att.run_id,
                                       prompt=RECOVERY_PROMPT.format(reason="stuck"),
                                       reason=why, requested_by="engine")
                    self._handled.add(req.nonce)
                    claim(self.layout, req.nonce)
                    self._arm(step, req, att.run_id)
                    write_result(self.layout, OverrideResult(
                        nonce=req.nonce, action="resume", batch_id=batch.batch_id,
                        job_id=job.job_id, step_id=step.step_id, outcome="applied",
                        message=f"canceled stuck {att.run_id}; resume queued",
                        applied_at=utcnow(), applied_by=f"engine:{self.runner_id}",
                        run_id=att.run_id, reason=why))
                else:
                    make_request(self.layout, "requeue", batch.batch_id, job_id=job.job_id,
                                 step_id=step.step_id, reason=why, requested_by="engine")
        self._process_overrides()

    # ------------------------------------------------------------ side loops
    # ------------------------------------------------------------ health / drain / GC
    def admission_reasons(self, mono: float | None = None) -> list[str]:
        """Why this runner starts nothing new right now, one sentence each (empty: it may
        start work). `mono`: the `time.monotonic()` reading to judge health.json's age at
        (default: now). Needs `setup()` first."""
        assert self.config is not None
        out: list[str] = []
        draining, why = self._drain
        if draining:
            out.append(f"draining: {why}")
        out.extend(self._resource_problems)
        if self._cred is not None:
            out.extend(self._cred.reasons())
        out.extend(pause_message(p) for p in active_pauses(self._pauses, utcnow()))
        if self.writes.problem:
            out.append(self.writes.problem)
        stale_after = self.config.runner_health.stale_after_seconds
        mono = time.monotonic() if mono is None else mono
        if self._health_ok_at is not None and mono - self._health_ok_at > stale_after:
            out.append(f"health.json not written for over {stale_after:g}s"
                       + (f" ({self._health_error})" if self._health_error else "")
                       + ": other harnesses would take this runner for dead")
        return out

    def sample_health(self) -> None:
        """Blocking part of a health tick: drain file, disk, memory, peers' health, pauses,
        system notes, and this runner's health.json written (a failed write is kept in
        `health_error`, not raised). The loop runs it in a thread; callable before `serve`."""
        assert self.config is not None
        self._drain = drain_state(self.layout, self.config, self.runner_id)
        self._resources = sample_resources(self.layout.root)
        self._resource_problems = resource_problems(self._resources, self.config.limits)
        self.writes.probe(self.layout.runs)  # space came back: starts resume
        try:
            self.write_health()
            self._health_ok_at = time.monotonic()
            self._health_error = None
        except OSError as exc:
            self._health_error = f"{type(exc).__name__}: {exc.strerror or exc}"
            log.warning("cannot write runner health: %s", self._health_error)
        self._peers = all_health(self.layout)
        self._pauses = self._merge_pauses(read_pauses(self.layout))
        self._notes = system_notes(self.layout, self.config)
        if self._health_error:
            self._notes.append(SystemNote(
                kind="health_unwritable", runner_id=self.runner_id,
                message=f"runner {self.runner_id} cannot write its health.json "
                        f"({self._health_error})"))
        if self.writes.problem:
            self._notes.append(SystemNote(kind="write_error", runner_id=self.runner_id,
                                          message=f"runner {self.runner_id}: "
                                                  f"{self.writes.problem}"))

    def _after_sample(self) -> None:
        """Loop side of a health tick: report admission changes, wake the scheduler."""
        reasons = self.admission_reasons()
        if reasons == self._admission_reported:
            return
        was_blocked = bool(self._admission_reported)
        self._admission_reported = reasons
        if reasons:
            self._emit(EngineEvent(
                "admission_blocked", utcnow(), status="paused",
                detail=f"runner {self.runner_id} starts no new attempts: " + "; ".join(reasons),
                data={"runner_id": self.runner_id, "reasons": reasons}))
        elif was_blocked:
            self._emit(EngineEvent("admission_resumed", utcnow(), status="accepting",
                                   detail=f"runner {self.runner_id} accepts work again",
                                   data={"runner_id": self.runner_id}))
        self._dirty.update(self.index.batches)  # notes appear in every scoreboard
        self._poke()

    def health_tick(self) -> None:
        """One health tick in full: `sample_health`, then report an admission change and
        wake the scheduler. Blocks (disk, files): the loop itself samples in a thread."""
        self.sample_health()
        self._after_sample()

    async def _health_loop(self) -> None:
        assert self.config is not None
        interval = self.config.runner_health.interval_seconds
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.sample_health)
            self._after_sample()

    def write_health(self, stopped: bool = False) -> None:
        """Write runners/<runner_id>/health.json now. Raises OSError when it cannot."""
        res = self._resources
        draining, why = self._drain
        if self._stopping and not draining:
            draining, why = True, "engine stopping"
        problems = list(self._resource_problems)
        if self.writes.problem:
            problems.append(self.writes.problem)
        health = RunnerHealth(
            runner_id=self.runner_id, host=socket.gethostname(), pid=os.getpid(),
            started_at=self.started_at, last_seen_at=utcnow(),
            capacity=self.capacity if self.config else 0, running=len(self.tasks),
            effective_capacity=self.effective_capacity if self.config else None,
            draining=draining, disk_free_bytes=res.disk_free_bytes,
            disk_free_inodes=res.disk_free_inodes,
            memory_available_bytes=res.memory_available_bytes,
            load_1m=res.load_1m, codex_cli_version=self.codex.version if self.codex else None,
            phh_version=__version__, drain_reason=why,
            accepting_work=not (draining or problems or stopped), problems=problems,
            interval_seconds=self.config.runner_health.interval_seconds if self.config else None,
            stopped_at=utcnow() if stopped else None,
            nodes=[RunnerNode(label=n.label, node_id=n.node_id, alive=n.alive,
                              slots_total=n.slots_total, slots_used=n.slots_used,
                              agents_running=n.agents_running, last_seen_at=n.last_seen,
                              error=n.error)
                   for n in (self.runner.nodes() if self.runner is not None else [])],
        )
        atomic_write_json(self.layout.runner_health(self.runner_id), health)

    async def _credential_loop(self) -> None:
        """Notice the credential file change promptly while a pause or a token-refresh pilot
        waits on it (a stat every 0.25 s), else every few seconds; report and reschedule."""
        assert self._cred is not None
        shown: str | None = None
        while True:
            await asyncio.sleep(0.25 if self._cred.watching else 2.0)
            changed = self._cred.poll()
            self._after_sample()  # reports a pause starting or lifting (no-op otherwise)
            held = self._cred.holding_note()
            if changed or held != shown:
                shown = held
                self._dirty.update(self.index.batches)
                self._poke()

    def _credential_notes(self) -> list[SystemNote]:
        cred = self._cred
        if cred is None:
            return []
        out = [SystemNote(kind="credential_paused", runner_id=self.runner_id, message=r,
                          since=cred.paused.since if cred.paused else None)
               for r in cred.reasons()]
        held = cred.holding_note()
        if held:
            out.append(SystemNote(kind="credential_refresh", runner_id=self.runner_id,
                                  message=held))
        return out

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

    async def _scoreboard_loop(self) -> None:
        assert self.config is not None
        interval = self.config.scoreboard.write_interval_seconds
        spent = self._timed_write(all_batches=True)
        since_full = 0.0
        while True:
            delay = board_delay(interval, spent)
            await asyncio.sleep(delay)
            since_full += delay
            # every 30 s rewrite all: heartbeat ages and stuck flags move with time
            full = since_full >= 30
            spent = self._timed_write(all_batches=full)
            if full:
                since_full = 0.0
                try:
                    self.check_stuck()
                except OSError as exc:  # its override files: a full disk must not end the loop
                    self.writes.failed(exc, "a stuck-attempt remediation")

    def _timed_write(self, all_batches: bool) -> float:
        t0 = time.perf_counter()
        try:
            self.write_scoreboards(all_batches=all_batches)
        except OSError as exc:  # a full disk must not end the scoreboard loop
            self.writes.failed(exc, "the scoreboards")
            self._dirty.update(self.index.batches)  # all of them again once writes work
        return time.perf_counter() - t0

    def write_scoreboards(self, all_batches: bool = False) -> None:
        """Write the scoreboards of batches changed since the last write (`all_batches`:
        every batch) and the system scoreboard. Raises OSError when a write fails."""
        dirty = set(self.index.batches) if all_batches else self._dirty
        self._dirty = set()
        if not dirty and not all_batches:
            return
        now = utcnow()
        notes = self._all_notes(now)
        ages = self.runner.beat_ages() if self.runner else {}
        # O(changed batches): unchanged batches reuse their last board (all are recomputed
        # every 30 s, when heartbeat ages move)
        for bid in dirty:
            batch = self.index.batches.get(bid)
            if batch is None:
                continue
            sb = batch_scoreboard(batch, now, beat_ages=ages)
            if notes:
                sb = sb.model_copy(update={"notes": list(notes)})
            self._announce(self._boards.get(bid), sb)
            settled = False
            if self.catalog is not None:
                full = bid in self._catalog_full
                self._catalog_full.discard(bid)
                settled = self.catalog.put_batch(
                    batch, sb, None if full else self._boards.get(bid), attempts=full)
            self._boards[bid] = sb
            if settled and self.bounded and not self._stopping:
                self._evict(bid)  # its board file is still written below
            try:
                atomic_write_json(self.layout.batch_scoreboard(bid), sb)
            except (IsADirectoryError, NotADirectoryError) as exc:  # a stray entry: go on
                where = f"{bid}/{self.layout.batch_scoreboard(bid).name}"
                if where not in self.index.unexpected:
                    self.index.unexpected[where] = (
                        f"runs/{where}: cannot write this batch's scoreboard "
                        f"({exc.strerror or exc}); the system scoreboard and the API still "
                        "show it")
                    log.warning("store: %s", self.index.unexpected[where])
        notes = self._all_notes(now)  # with stray entries found just now
        atomic_write_json(
            self.layout.system_scoreboard,
            system_scoreboard(self.index.batches.values(), now, self._boards,
                              extra_rows=self._settled_rows()).model_copy(
                update={"notes": notes}),
        )

    def _evict(self, batch_id: str) -> None:
        """A batch that settled while serving leaves memory (its board file stays on disk,
        its row and steps in the catalog); an operator action that names it loads it again
        (_TrackedIndex.load_batch). The ReadySet notices the batch going (a rebuild)."""
        self._boards.pop(batch_id, None)
        self.index.batches.pop(batch_id, None)
        self.index.skip.add(batch_id)

    def _settled_rows(self) -> list[str]:
        """System-view rows of the batches left on disk (bounded start), from the catalog."""
        if self.catalog is None or not self.index.skip:
            return []
        try:
            return self.catalog.system_rows(exclude=self.index.batches)
        except Exception:  # sqlite3.Error: the view then lacks settled batches until repair
            log.exception("catalog read failed")
            return []

    def _all_notes(self, now: datetime) -> list[SystemNote]:
        """The health tick's notes plus what this engine knows first-hand: start pauses,
        credential pauses, a concurrency lowered after 429s, a `--concurrency` above the
        configured cap, stray entries the store index skipped."""
        out = [*self._notes, *pause_notes(self._pauses, now), *self._credential_notes()]
        if self.config is not None and self.effective_capacity < self.capacity:
            out.append(SystemNote(kind="rate_limited", runner_id=self.runner_id, message=(
                f"runner {self.runner_id}: effective concurrency {self.effective_capacity}/"
                f"{self.capacity} after HTTP 429 rate limits (+1 per success)")))
        note = self.capacity_note()
        if note:
            out.append(SystemNote(kind="concurrency_capped", runner_id=self.runner_id,
                                  message=note))
        out.extend(unexpected_notes(self.index))
        return out

    def _announce(self, old: BatchScoreboard | None, new: BatchScoreboard) -> None:
        """Attention you cannot miss: a step newly stuck / needs_attention / failed, and a
        batch that has nothing left to run (headless log lines, dashboard alerts)."""
        if old is None:
            return  # first sight of a batch (engine start): old news is not announced
        seen = {(a.job_id, a.step_id, a.kind) for a in old.attention}
        for a in new.attention:
            if (a.job_id, a.step_id, a.kind) not in seen:
                self._emit(EngineEvent("attention", new.computed_at, new.batch_id, a.job_id,
                                       a.step_id, a.run_id, a.kind, detail=a.detail))
        c = new.counts
        finished = c.running == 0 and c.ready == 0 and new.steps_total > 0
        was = old.counts.running == 0 and old.counts.ready == 0
        if finished and not was:
            self._emit(EngineEvent(
                "batch_finished", new.computed_at, new.batch_id, status="finished",
                detail=f"{c.succeeded}/{new.steps_total} succeeded, {c.failed} failed, "
                f"{c.needs_attention} needs_attention, {c.canceled} canceled, "
                f"{c.blocked} blocked"))

    async def _watch_loop(self) -> None:
        """New batches from `phh submit` in another process: watch runs/ (not recursive) and
        rescan periodically, because inotify events can be lost on overflow."""
        from watchfiles import awatch

        stop = asyncio.Event()
        paths = [self.layout.runs, overrides_dir(self.layout)]
        if self.queue is not None:
            paths.append(self.queue.incoming)
        while True:
            # awatch registers its watches before it first waits, so this scan (which runs
            # once we wait) catches drops made before the watch began
            # held: the loop keeps only a weak reference to a task
            self._queue_catch_up = asyncio.create_task(self._scan_queue())
            try:
                async for _ in awatch(*paths,
                                      recursive=False, debounce=50, step=20, stop_event=stop,
                                      rust_timeout=int(RESCAN_INTERVAL * 1000),
                                      yield_on_timeout=True):
                    await self._scan_queue()
                    self._scan_batches()
                    self._process_overrides()
            except (OSError, RuntimeError):
                await asyncio.sleep(RESCAN_INTERVAL)
                await self._scan_queue()
                self._scan_batches()

    async def _scan_queue(self) -> None:
        """Ingest Launch Tables dropped into <queue_root>/incoming/ (see interfaces/queue.py)."""
        if self.queue is None:
            return
        try:
            outcomes = await asyncio.to_thread(self.queue.scan)
        except Exception:  # a queue problem must not stop the engine; the next scan retries
            log.exception("filesystem queue scan failed")
            return
        for res in outcomes:
            self._emit(EngineEvent("queue", utcnow(), res.batch_id, status=res.status,
                                   detail=res.name, data=res.as_dict()))
        if outcomes:
            self._scan_batches()

    def _scan_batches(self) -> None:
        for bid in self.index.scan_new_batches():
            self._dirty.add(bid)
            if self.catalog is not None:
                self._catalog_full.add(bid)
            batch = self.index.batches[bid]
            self._emit(EngineEvent("batch_added", utcnow(), bid,
                                   detail=f"{len(batch.jobs)} job(s)"))
            self._poke()


class _TrackedIndex(StoreIndex):
    """The engine's index tells its ReadySet which job changed, whoever changed it (own
    attempts, the dashboard's watcher in the same process, GC refreshes)."""

    ready: ReadySet | None = None
    catalog: Catalog | None = None

    def put_attempt(self, batch_id: str, job_id: str, step_id: str, view: AttemptView) -> None:
        super().put_attempt(batch_id, job_id, step_id, view)
        if self.ready is not None:
            self.ready.touch(batch_id, job_id)
        if self.catalog is not None and batch_id in self.batches:
            self.catalog.put_attempt(batch_id, job_id, step_id, view)

    def load_batch(self, batch_id: str) -> BatchView | None:
        """A settled batch left on disk is loaded when something names it (an operator
        action): with the marks its applied overrides left, as at start."""
        lazy = batch_id in self.skip
        self.skip.discard(batch_id)
        batch = super().load_batch(batch_id)
        if lazy and batch is not None:
            from ..store.overrides import apply_marks, list_results

            for res in list_results(self.layout):
                if res.batch_id == batch_id:
                    apply_marks(self.batches, res)
            if self.ready is not None:
                self.ready.touch_all()
        return batch


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
