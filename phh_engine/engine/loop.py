"""The engine: one asyncio loop that schedules ready steps onto its runner and keeps the
StoreIndex current (docs/architecture.md). This module holds the lifecycle (setup, serve,
stop) and the scheduling; each other concern is a collaborator the Engine owns:

- `Admission` (admission.py): health tick, drain, resources, start pauses, credentials,
  AIMD after HTTP 429, health.json: whether new attempts may start
- `Recovery` (recovery.py): attempts left running without a process or monitor
- `Operator` (operator.py): override requests, stuck-attempt remediation
- `BoardWriter` (boards.py): scoreboards and the catalog's batch rows
- `Watcher` (watch.py): new batches, requests and queue drops from other processes

Event-driven: the loop sleeps until an attempt changes, a batch arrives, or a backoff
expires; an idle engine does no work.
"""

# Over 500 lines on purpose: lifecycle (setup, the runner lock, the catalog, serve, stop)
# and scheduling (the loop, caps, starting and tracking attempts) share the engine's state
# and stay together; each other concern is a collaborator module (above). The Engine also
# keeps one-line delegations for the calls the dashboard, the API and the tests make on it.

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import os
import threading
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout

from ..derive.candidates import request_still_wanted
from ..derive.scheduler import Caps, ReadySet, check_incremental
from ..interfaces.queue import DropQueue
from ..models import AttemptState, HarnessConfig, check_id, utcnow
from ..models.common import EventKind
from ..models.scoreboard import SystemNote
from ..runners.attempt import AttemptPlan
from ..runners.base import Runner
from ..runners.codex_cli import CodexInfo, locate_codex, probe_codex
from ..runners.credentials import CredentialGate
from ..runners.doctor import ENGINE_PREFLIGHT, codex_config_path, preflight
from ..runners.local import LocalRunner
from ..schemas import default_run_report_schema_path
from ..store.catalog import Catalog, CatalogConfigError, CatalogError
from ..store.diskguard import WriteGuard
from ..store.harness_config import ConfigError, load_config
from ..store.overrides import OverrideResult, overrides_dir
from ..store.paths import Layout, attempt_dir_names
from ..store.pauses import active_pauses, pause_message
from ..store.views import AttemptView, BatchView
from .admission import Admission
from .boards import BoardWriter
from .catalog_file import record_catalog_file
from .events import EngineError as EngineError
from .events import EngineEvent as EngineEvent
from .foreign import ForeignAttempts
from .health import available, is_stale
from .operator import Operator
from .placement import PlacementGate
from .promotion import Promoter
from .recovery import Recovery
from .tracked_index import TrackedIndex
from .watch import Watcher

log = logging.getLogger(__name__)
_CHECK_SCHEDULER = os.environ.get("PHH_CHECK_SCHEDULER") == "1"

CONTEXT_EXHAUSTED_NOTE = (
    "Note: a previous attempt at this task ran out of room in the model's context window, so "
    "this is a fresh start. Check what is already done in the working directory first, and "
    "keep command output and file reads small.")


T = TypeVar("T")


class Engine:
    """One engine serving one runner id on a phh root: `setup()` (blocking), then
    `await serve()` until idle (`until_idle`) or `stop()`. Thread-safe entry points:
    `stop`, `run_threadsafe`, `call_threadsafe`, `request_threadsafe`; everything else is
    called on the engine's loop (or before `serve`)."""

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
        self.index = TrackedIndex(self.layout)
        self.config: HarnessConfig | None = None
        self.codex: CodexInfo | None = None
        self.runner: Runner | None = None
        #: the runner runs attempts on other nodes (a Ray cluster): no local pid checks
        self.cluster = False
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.started_at = utcnow()
        self._wake: asyncio.Event | None = None
        self._stopping = False
        #: readiness per job, recomputed only for jobs that changed (scheduler.ReadySet)
        self.ready = ReadySet()
        self.placement = PlacementGate()  # steps a cluster has no node for (placement.py)
        self.index.ready = self.ready
        #: best-of-N promotion (engine/promotion.py)
        self.promoter = Promoter(self.index, self._promoted)
        # -- the catalog (phh_engine/store/catalog.py): derived, kept current with the files
        self.bounded = bounded
        self.use_catalog = use_catalog
        self.catalog: Catalog | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        #: set (never cleared) once `serve` runs on its loop: from then on the thread-safe
        #: entry points (`stop`, `run_threadsafe`, `call_threadsafe`) reach the loop
        self.serving = threading.Event()
        self._runner_lock: FileLock | None = None
        self.completed = 0
        self.queue: DropQueue | None = None  # the filesystem queue (docs/interfaces.md), if enabled
        #: store writes that failed (full disk, no inodes): no new starts until one succeeds
        self.writes = WriteGuard()
        # -- the collaborators, one per concern (docs/architecture.md#layers)
        #: health tick, drain, resources, start pauses, credentials, AIMD: may it start work?
        self.admission = Admission(self)
        #: attempts left running without a process or a monitor: ended or adopted
        self.recovery = Recovery(self)
        #: operator action requests: applied exactly once; stuck-attempt remediation
        self.operator = Operator(self)
        #: scoreboards (and the catalog's batch rows) for batches that changed
        self.boards = BoardWriter(self)
        #: new batches, requests and queue drops from other processes
        self.watch = Watcher(self)
        #: other runners' in-flight attempts on this root, followed until they end
        self.foreign = ForeignAttempts(self)
        self.index.foreign = self.foreign

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
        return cap if self.admission.aimd is None else max(1, min(self.admission.aimd, cap))

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
        out += [pause_message(p) for p in active_pauses(list(self.admission.pauses), utcnow())]
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

    # The calls below delegate to the collaborators; kept on Engine because the dashboard,
    # the API and the tests call them on the engine.
    @property
    def notes(self) -> list[SystemNote]:
        """System notes from the last health sample (a copy)."""
        return list(self.admission.notes)

    @property
    def health_error(self) -> str | None:
        """Why the last health.json write failed ("OSError: No space left ..."), else None."""
        return self.admission.health_error

    @property
    def health_written_at(self) -> float | None:
        """`time.monotonic()` of the last good health.json write (None: none yet)."""
        return self.admission.health_ok_at

    def record_outcome(self, st: AttemptState) -> None:
        """Learn from one ended attempt's state what the model API said: a usage limit
        pauses starts on the root, HTTP 429 halves the effective concurrency, a success
        raises it by one. Call on the engine's loop."""
        self.admission.record_outcome(st)

    def admission_reasons(self, mono: float | None = None) -> list[str]:
        """Why this runner starts nothing new right now (`Admission.reasons`)."""
        return self.admission.reasons(mono)

    def sample_health(self) -> None:
        """The blocking part of a health tick (`Admission.sample`)."""
        self.admission.sample()

    def health_tick(self) -> None:
        """One health tick in full (`Admission.tick`). Blocks."""
        self.admission.tick()

    def write_health(self, stopped: bool = False) -> None:
        """Write runners/<runner_id>/health.json now. Raises OSError when it cannot."""
        self.admission.write_health(stopped)

    def write_scoreboards(self, all_batches: bool = False) -> None:
        """Write the boards of changed batches (`all_batches`: every one) and the system
        scoreboard (`BoardWriter.write`). Raises OSError when a write fails."""
        self.boards.write(all_batches)

    def check_stuck(self) -> None:
        """Stuck-attempt remediation (`Operator.check_stuck`). Call on the engine's loop."""
        self.operator.check_stuck()

    async def request(
        self, action: str, batch_id: str, job_id: str | None = None, step_id: str | None = None,
        *, run_id: str | None = None, runner_id: str | None = None, prompt: str | None = None,
        reason: str | None = None, requested_by: str = "engine",
    ) -> OverrideResult:
        """The one operator-action entry point (TUI, API; `Operator.request`): recorded as a
        request file, applied at once. Raises pydantic.ValidationError for malformed ids or
        actions."""
        return await self.operator.request(
            action, batch_id, job_id, step_id, run_id=run_id, runner_id=runner_id,
            prompt=prompt, reason=reason, requested_by=requested_by)

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
            self.emit(EngineEvent("stopping", utcnow(), detail=(
                f"detaching: {len(self.tasks)} attempt(s) keep running for the next engine")))
            for task in list(self.tasks.values()):
                task.cancel()  # stops watching only; the Codex processes live on
            self.poke()
            return
        if cancel_running and self.runner is not None:
            for run_id in list(self.runner.live):
                self.runner.cancel(run_id, "shutdown")  # retried by the next engine
        if first or cancel_running:
            self.emit(EngineEvent("stopping", utcnow(), detail=(
                "canceling running attempts" if cancel_running else
                f"no new starts; waiting for {len(self.tasks)} running attempt(s)")))
        self.poke()

    def poke(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def emit(self, ev: EngineEvent) -> None:
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
            on_change=self.on_attempt_change,
            codex_config_toml=codex_config_path(self.config),
        )
        self.admission.cred = CredentialGate(self.layout, self.config)
        self.admission.cred.poll()
        self.runner.writes = self.writes
        overrides_dir(self.layout).mkdir(parents=True, exist_ok=True)
        self.queue = DropQueue.from_config(self.layout, self.config)
        if self.queue is not None:
            self.queue.ensure_dirs()
        self._open_catalog()
        self.index.load()
        if self.catalog is not None:
            self.boards.catalog_full.update(self.index.batches)
        self.operator.replay()
        self.recovery.recover()
        self.recovery.repair_pointers()
        self.promoter.note_all()  # best-of-N: finish promotions a crash interrupted

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
            on_change=self.on_attempt_change, on_node=self._on_node,
            on_placement=lambda keys: self.placement.wake(self.ready, self.poke, keys),
            codex_config_toml=codex_config_path(self.config))
        try:
            runner.connect()
        except RayUnavailable as exc:
            raise EngineError(str(exc)) from None
        self.cluster = True
        return runner

    def _on_node(self, kind: EventKind, label: str, detail: str) -> None:
        now, what = utcnow(), f"node {label}: {detail}"
        data = {"runner_id": self.runner_id, "node": label}
        # each kind spelled out: tests/test_vocabularies.py reads the kinds from the source
        self.emit(EngineEvent("node_joined", now, detail=what, data=data)
                  if kind == "node_joined" else
                  EngineEvent("node_lost", now, detail=what, data=data))
        self.poke()  # capacity changed
    def _open_catalog(self) -> None:
        """Open and verify the catalog; with `bounded`, settled batches are not loaded."""
        if not self.use_catalog:
            return
        try:
            cat = Catalog.open(self.layout, thorough=True)
            rep = cat.verify()
        except CatalogConfigError as exc:  # PHH_CATALOG names a directory: bad input, exit 2
            raise ConfigError(str(exc)) from None
        except CatalogError as exc:
            raise EngineError(str(exc)) from None
        if rep.rebuilt_file:
            log.warning("catalog %s was discarded (%s); rebuilding it from the files",
                        cat.path, rep.rebuilt_file)
        self.catalog = cat
        self.index.catalog = cat
        record_catalog_file(self)  # for `phh doctor`: which file this engine writes
        if self.bounded:
            self.index.skip = rep.settled

    async def serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self.serving.set()
        if self.runner is None:
            await asyncio.to_thread(self.setup)
        self.recovery.adopt_pending()
        self.operator.process()
        await self.watch.scan_queue()
        self.admission.tick()  # drain / resources / health.json before anything starts
        note = self.capacity_note()
        if note:
            self.emit(EngineEvent("concurrency_capped", utcnow(), status="capped",
                                  detail=note, data={"capacity": self.capacity}))
        aux = [
            asyncio.create_task(self.admission.run(), name="phh-health"),
            asyncio.create_task(self.boards.run(), name="phh-scoreboards"),
            asyncio.create_task(self.watch.run(), name="phh-watch"),
            asyncio.create_task(self.admission.credential_loop(), name="phh-credential"),
            asyncio.create_task(self.foreign.run(), name="phh-foreign"),
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
            self.boards.write(all_batches=True)
            with contextlib.suppress(OSError):
                self.admission.write_health(stopped=True)
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
            if self.admission.reasons() != self.admission.reported:
                self.admission.after_sample()  # a start pause ended (or began): say so at once
            await self.promoter.run_due()  # best-of-N hook (engine/promotion.py)
            caps = self.caps(now)
            sel = self.ready.select(self.index.batches, caps)
            if _CHECK_SCHEDULER:
                check_incremental(self.index.batches.values(), sel, caps, now)
            for cand in sel.start:
                self._start(cand.batch, cand)
            # steps held back by a start pause that ends at a known time are still to run
            pause_end = self.admission.pause_end(now) if sel.waiting else None
            if not sel.start and not self.tasks and sel.next_wakeup is None \
                    and pause_end is None:
                # another runner's attempts still run: their ends may make steps ready here
                # (engine/foreign.py); the sweep is for when they are all ended, or their
                # runner is gone (O(steps): not on every one of their changes)
                peers = self.foreign.running > 0
                if (not peers or self.foreign.owners_gone()) and self.recovery.sweep_orphans():
                    continue  # an attempt nobody watched was ended or adopted: look again
                if self.promoter.noted:
                    continue  # candidates ended while promotions ran: look at them first
                if self.foreign.running:
                    pass  # not idle: wait for them (the follower pokes on each change)
                elif self.until_idle:
                    self.emit(EngineEvent("idle", now, detail="nothing running or runnable"))
                    return
                elif not idle_reported:
                    idle_reported = True
                    self.emit(EngineEvent("idle", now, detail="waiting for work"))
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
        avail = {rid for rid, h in self.admission.peers.items()
                 if available(h, now, stale_after)} | {self.runner_id}
        self.ready.refresh(self.index.batches, now, self.runner_id, avail)
        # health/drain/resources (docs/architecture.md#scheduling): nothing new starts while any
        # reason holds
        if self.admission.cred is not None:
            self.admission.cred.poll()
        free = 0 if self.admission.reasons(mono) else self.effective_capacity - len(self.tasks)
        if self.admission.cred is not None:
            free = self.admission.cred.admit(free)  # a stale token: one attempt refreshes it first
        # global concurrency spans every live runner on this store (from their health.json)
        others = sum(h.running for rid, h in self.admission.peers.items()
                     if rid != self.runner_id and not is_stale(h, now, stale_after))
        free = min(free, self.config.limits.global_concurrency - len(self.tasks) - others)
        return Caps(
            runner_id=self.runner_id, available_runners=avail, free_slots=max(0, free),
            running_by_batch=dict(self.ready.running_by_batch),
            running_by_workdir=dict(self.ready.running_by_workdir),
            per_workdir=self.config.limits.per_working_directory,
        )

    def _start(self, batch: BatchView, cand: Any) -> None:
        assert self.runner is not None
        r = cand.readiness
        policy = cand.step.spec.retry_policy
        marks = cand.step.marks
        same_thread = r.trigger in ("operator_resume", "repair") or (  # hook: verify (repair)
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
            override_nonce=marks.pending_nonce, candidate=r.candidate,  # best-of-N
            known_attempts=frozenset(a.dir_name for a in cand.step.attempts),
        )
        if self.placement.hold(self.runner, plan, cand.step):  # no node for it now
            self.ready.touch(batch.batch_id, cand.job.job_id)
            self.boards.dirty.add(batch.batch_id)
            self.poke()
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
            self.ready.touch(batch.batch_id, cand.job.job_id)
            self.boards.dirty.add(batch.batch_id)
            self.poke()  # the loop looks again (and may go idle)
            return
        except OSError as exc:  # full disk, no inodes: pause starts, keep the loop alive
            self.writes.failed(exc, f"a claim of {batch.batch_id}/{cand.job.job_id}/"
                               f"{cand.step.step_id}")
            self.admission.after_sample()
            return
        except Exception as exc:  # a fault of phh's own: this step waits, the rest run
            log.exception("claim of %s/%s/%s failed", batch.batch_id, cand.job.job_id,
                          cand.step.step_id)
            cand.step.marks.unstartable = (
                f"internal_error while claiming: {type(exc).__name__}: {exc} (see the engine "
                "log; restart the engine to try again)")
            self.ready.touch(batch.batch_id, cand.job.job_id)
            self.boards.dirty.add(batch.batch_id)
            self.poke()
            return
        if claimed is None:  # another engine got there first: catch up, and look again
            self.refresh_step(batch.batch_id, cand.job.job_id, cand.step.step_id)
            self.boards.dirty.add(batch.batch_id)
            self.poke()  # its slot is still free: another ready step may take it
            return
        if (marks.pending_nonce or r.trigger.startswith("operator_")) and \
                not request_still_wanted(cand.step, r.candidate):  # best-of-N hook
            marks.clear_request()
        run_id, path = claimed
        view = AttemptView(run_id=run_id, dir_name=path.name, path=path,
                           candidate=plan.candidate)
        self.index.put_attempt(batch.batch_id, cand.job.job_id, cand.step.step_id, view)
        task = asyncio.create_task(
            self.runner.run(plan, batch, cand.job, cand.step, claimed), name=f"attempt-{run_id}")
        self.track(run_id, task)
        if self.admission.cred is not None:
            self.admission.cred.started(run_id)
        self.emit(EngineEvent(
            "attempt_started", utcnow(), batch.batch_id, cand.job.job_id, cand.step.step_id,
            run_id, "running",
            detail=(f"resume of {plan.resume.source.run_id}" if plan.resume and
                    plan.resume.source else r.trigger),
        ))

    def track(self, run_id: str, task: asyncio.Task[Any]) -> None:
        """Hold an attempt's task (started or adopted) until it ends; the scheduler counts
        it as running meanwhile."""
        self.tasks[run_id] = task
        task.add_done_callback(functools.partial(self._task_done, run_id))

    def _task_done(self, run_id: str, task: asyncio.Task[Any]) -> None:
        self.tasks.pop(run_id, None)
        self.promoter.recheck()  # best-of-N: the index is final for this attempt now
        if self.admission.cred is not None:
            self.admission.cred.ended(run_id)
        if task.cancelled():
            self.poke()
            return
        if not task.cancelled() and task.exception() is not None:
            log.error("attempt %s crashed", run_id, exc_info=task.exception())
            self.recovery.sweep_orphans()  # its attempt may still say running: end it now
        self.poke()

    def refresh_step(self, batch_id: str, job_id: str, step_id: str) -> None:
        """Re-read one step's attempt directories into the index (no-op for an unknown
        batch). Call on the engine's loop."""
        batch = self.index.batches.get(batch_id)
        if batch is None:
            return
        adir = self.layout.attempts_dir(batch_id, job_id, step_id)
        for name in attempt_dir_names(adir):
            self.index.refresh_attempt(batch_id, job_id, step_id, name)

    def on_attempt_change(self, batch_id: str, job_id: str, step_id: str,
                          view: AttemptView) -> None:
        """The runner's callback: an attempt's view changed (state written, ended). Call on
        the engine's loop."""
        self.index.put_attempt(batch_id, job_id, step_id, view)
        self.boards.dirty.add(batch_id)
        if view.terminal:
            self.completed += 1
            st = view.state
            dur = None
            if st and st.started_at and st.ended_at:
                dur = (st.ended_at - st.started_at).total_seconds()
            self.emit(EngineEvent(
                "attempt_ended", utcnow(), batch_id, job_id, step_id, view.run_id, view.status,
                detail=(st.failure_class or st.termination_reason) if st else None,
                duration_seconds=dur,
            ))
            if st is not None:
                self.admission.record_outcome(st)
            self.promoter.note(batch_id, job_id, step_id)  # best-of-N hook
            self.poke()

    def _promoted(self, batch_id: str, job_id: str) -> None:
        """A best-of-N step's promotion record changed: its job's readiness and the
        catalog's rows are stale."""
        if self.catalog is not None:
            self.catalog.invalidate(batch_id)
        self.ready.touch(batch_id, job_id)
        self.boards.dirty.add(batch_id)
        self.poke()

    # ------------------------------------------------------------ operator actions
    def request_threadsafe(self, action: str, batch_id: str, job_id: str | None = None,
                           step_id: str | None = None, **kw: Any
                           ) -> concurrent.futures.Future[OverrideResult]:
        """For a UI thread: run `request` on the engine's loop."""
        assert self._loop is not None, "engine not serving"
        return asyncio.run_coroutine_threadsafe(
            self.request(action, batch_id, job_id, step_id, **kw), self._loop)

    # ------------------------------------------------------------ side loops
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
                    self.emit(EngineEvent("gc", utcnow(), status="done",
                                          detail=report.summary(),
                                          data={"freed_bytes": report.freed_bytes}))
            await asyncio.sleep(self.config.gc.interval_seconds)
