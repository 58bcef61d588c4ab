"""Where the dashboard's data and actions come from. No Textual here.

- `EngineBackend`: the engine runs in this process (in the app's thread worker, on its own
  asyncio loop). Its StoreIndex is what the dashboard reads; own attempts update it directly.
- `StoreBackend`: no engine here (another `phh` process serves the runner, or a static store
  for snapshots and benchmarks). A StoreIndex of our own, kept current by the watcher; actions
  are override request files that whichever engine serves the root applies.

Both run a `RunsWatcher` (watchfiles, 50 ms debounce, non-recursive watches on the store's own
layout directories only: `watchset.WatchSet`; never agent workspaces or codex_home) on the
loop that owns their index, so index mutations stay on one thread: state changes written by other
processes (another runner's engine on the same root, a headless engine we are observing) are
re-read into the index, and every change pokes the app, which redraws at most ~10 times/s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from phh_engine.engine.loop import Engine, EngineEvent
from phh_engine.interfaces.api_ops import engine_serving
from phh_engine.models.promotion import PROMOTION_FILE
from phh_engine.store.candidates import read_promotion
from phh_engine.store.index import CLOSED_MARKER, StoreIndex
from phh_engine.store.overrides import (
    OverrideResult,
    apply_marks,
    make_request,
    read_result,
    replay_marks,
)
from phh_engine.store.paths import (
    Layout,
    attempt_dir_names,
    is_attempt_dir_name,
    run_id_of,
)
from phh_engine.store.views import BatchView, StepView

from .paging import CatalogPages
from .watchset import WatchSet, is_interesting

log = logging.getLogger(__name__)

WATCH_DEBOUNCE_MS = 50
WATCH_STEP_MS = 20
RESCAN_SECONDS = 30.0
POLL_FALLBACK_SECONDS = 2.0
REQUEST_WAIT_SECONDS = 15.0


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an operator action came to: applied | rejected | queued | pending | error."""

    outcome: str
    message: str
    run_id: str | None = None

    @classmethod
    def of(cls, res: OverrideResult) -> Outcome:
        return cls(res.outcome, res.message, res.run_id)


class RunsWatcher:
    """Keeps an index current with writes made by other processes; calls `on_change(batch_ids)`
    after each burst. Runs on the loop that owns the index."""

    def __init__(self, layout: Layout, index: StoreIndex, on_change: Callable[[set[str]], None],
                 *, skip: Callable[[], set[str]] = set, observer: bool = False) -> None:
        self.layout = layout
        self.index = index
        self.on_change = on_change
        self.skip = skip
        self.observer = observer
        self.stop_event = asyncio.Event()  # binds to a loop only when first awaited
        #: set to end the current watch (stop, or the watch set grew: restart with it)
        self._restart = asyncio.Event()
        self._watching: set[Path] = set()
        self.watchset = WatchSet(layout.runs, observer)
        self.polling = False
        #: the settled batches' fingerprints when they were left on disk (`moved`)
        self.fingerprints: dict[str, str | None] = {}

    def stop(self) -> None:
        """Call on the loop that runs the watcher (call_soon_threadsafe from elsewhere)."""
        self.stop_event.set()
        self._restart.set()

    async def run(self) -> None:
        """Watch the store's layout directories (`WatchSet`), non-recursively, until `stop`.

        The set changes as batches, steps and attempts appear; watchfiles cannot add a path
        to a running watch, so the watch restarts with the new set (once per burst) and a
        catch-up re-reads what the restart could have missed. Falls back to polling if
        watching fails (e.g. out of inotify watches)."""
        from watchfiles import awatch

        if self.stop_event.is_set():
            return
        last_rescan = time.monotonic()
        ws = self.watchset
        if self.observer:  # what `moved` compares with
            from phh_engine.store.catalog import fingerprint

            self.fingerprints = {b: fingerprint(self.layout, b) for b in self.index.skip}
        ws.initial(self._terminal_attempt_dirs(), skip=set(self.index.skip))
        fresh: list[Path] = []
        missing = 0
        try:
            while not self.stop_event.is_set():
                self._drop_ended()
                watched = self._watching = set(ws.dirs)
                if not watched:  # runs/ itself is gone: poll (below) until it is back
                    raise FileNotFoundError(self.layout.runs)
                self._restart = asyncio.Event()
                # runs once awatch has registered its watches and waits (as in the engine)
                asyncio.get_running_loop().call_soon(self._catch_up, fresh)
                fresh = []
                try:
                    async with contextlib.aclosing(awatch(
                        *sorted(watched), watch_filter=self._interesting, recursive=False,
                        debounce=WATCH_DEBOUNCE_MS, step=WATCH_STEP_MS,
                        stop_event=self._restart,
                        rust_timeout=int(RESCAN_SECONDS * 1000), yield_on_timeout=True,
                    )) as batches:
                        async for changes in batches:
                            if changes:
                                fresh += self._grow(changes)
                                self.apply(sorted(path for _, path in changes))
                            if time.monotonic() - last_rescan >= RESCAN_SECONDS:
                                last_rescan = time.monotonic()
                                self.rescan()  # inotify drops events on overflow (#348)
                            if ws.dirs - watched:
                                break
                    missing = 0
                except FileNotFoundError:  # a dir went (GC, cleanup) before its watch began
                    missing += 1
                    if missing > 5:
                        raise
                    ws.dirs = {d for d in ws.dirs if d.is_dir()}
        except (OSError, RuntimeError) as exc:  # e.g. out of inotify watches
            log.warning("watching %s failed (%s); polling every %ss", self.layout.runs, exc,
                        POLL_FALLBACK_SECONDS)
            self.polling = True
            while not self.stop_event.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), POLL_FALLBACK_SECONDS)
                self.rescan()

    def _interesting(self, _change: Any, path: str) -> bool:
        parts = self.watchset.parts(path)
        return parts is not None and is_interesting(parts, self.observer)

    def _grow(self, changes: set[tuple[Any, str]]) -> list[Path]:
        """New layout dirs in a burst: watch them (from the next restart); gone ones: drop."""
        added: list[Path] = []
        for _, p in changes:
            path = Path(p)
            if path.is_dir():
                added += self.watchset.grow(path)
            elif path in self.watchset.dirs:
                self.watchset.drop(path)
        return added

    def _catch_up(self, fresh: list[Path]) -> None:
        """After a restart: what changed while no watch was on it. New attempt dirs and the
        live attempts being watched are re-read (O(live attempts)); new batches scanned."""
        runs = self.layout.runs
        dirty: set[str] = set()
        new_batch = False
        skip = self.skip()
        seen: set[Path] = set()
        live = [d for d in self.watchset.dirs if len(d.relative_to(runs).parts) == 6]
        for path in [*fresh, *live]:
            if path in seen:
                continue
            seen.add(path)
            parts = path.relative_to(runs).parts
            if len(parts) == 1 and parts[0] != "_system":
                new_batch = True
            elif len(parts) == 6 and run_id_of(parts[5]) not in skip:
                bid, job_id, step_id = parts[0], parts[1], parts[3]
                batch = self.index.batches.get(bid)
                job = batch.jobs.get(job_id) if batch else None
                if job is None or step_id not in job.steps:
                    continue
                self.index.refresh_attempt(bid, job_id, step_id, parts[5])
                dirty.add(bid)
        if new_batch and self.observer:
            dirty.update(self.index.scan_new_batches())
        self._drop_ended()
        if self.watchset.dirs - self._watching:
            self._restart.set()
        if dirty:
            self.on_change(dirty)

    def _attempt_view(self, path: Path) -> Any:
        parts = path.relative_to(self.layout.runs).parts
        batch = self.index.batches.get(parts[0])
        job = batch.jobs.get(parts[1]) if batch else None
        step = job.steps.get(parts[3]) if job else None
        if step is None:
            return None
        return next((a for a in reversed(step.attempts) if a.dir_name == parts[5]), None)

    def _terminal_attempt_dirs(self) -> set[Path]:
        return {a.path for batch in self.index.batches.values() for _, step in batch.steps()
                for a in step.attempts if a.terminal}

    def _drop_ended(self) -> None:
        """Attempts known to be terminal need no watch any more (O(watched attempts))."""
        runs = self.layout.runs
        for d in [d for d in self.watchset.dirs if len(d.relative_to(runs).parts) == 6]:
            view = self._attempt_view(d)
            if view is not None and view.terminal:
                self.watchset.drop(d)

    def _step_of(self, batch_id: str, job_id: str, step_id: str) -> StepView | None:
        batch = self.index.batches.get(batch_id)
        job = batch.jobs.get(job_id) if batch else None
        return job.steps.get(step_id) if job else None

    def moved(self, batch_id: str) -> bool:
        """Has a settled batch (left on disk) changed since the catalog recorded it?"""
        from phh_engine.store.catalog import fingerprint

        return self.fingerprints.get(batch_id, "") != fingerprint(self.layout, batch_id)

    def reopen(self, batch_ids: set[str]) -> set[str]:
        """Load the settled batches among `batch_ids` (an engine changes them: an operator
        action named one, or its files moved) with their marks, and watch them."""
        out: set[str] = set()
        for bid in sorted(batch_ids & self.index.skip):
            self.index.skip.discard(bid)
            if self.index.load_batch(bid) is None:
                continue
            from phh_engine.store.overrides import list_results

            for res in list_results(self.layout):
                if res.batch_id == bid:
                    apply_marks(self.index.batches, res)
            if self.watchset.grow(self.layout.batch_dir(bid)):
                self._restart.set()  # watch it from the next restart (see run)
            out.add(bid)
        return out

    def apply(self, paths: list[str]) -> None:
        runs = self.layout.runs
        dirty: set[str] = set()
        attempts: set[tuple[str, str, str, str]] = set()
        new_batch = False
        skip = self.skip()
        for p in paths:
            try:
                parts = Path(p).relative_to(runs).parts
            except ValueError:
                continue
            if not parts:
                continue
            if parts[0] == "_system":
                if self.observer and len(parts) == 3 and parts[2].endswith(".result.json"):
                    res = read_result(self.layout, parts[2][: -len(".result.json")])
                    if res is not None:
                        self.reopen({res.batch_id})
                        apply_marks(self.index.batches, res)
                        dirty.add(res.batch_id)
                continue
            bid = parts[0]
            if len(parts) == 2 and parts[1] == "batch_meta.json":
                new_batch = True
            elif len(parts) == 2 and parts[1] == CLOSED_MARKER:
                batch = self.index.batches.get(bid)
                if batch is not None:
                    batch.closed = True
                    dirty.add(bid)
            elif len(parts) == 5 and parts[2] == "steps" and parts[4] == PROMOTION_FILE:
                step = self._step_of(bid, parts[1], parts[3])  # best-of-N: re-read it
                if step is not None:
                    step.promotion = read_promotion(self.layout, bid, parts[1], parts[3])
                    dirty.add(bid)
            elif len(parts) == 7 and parts[2] == "steps" and parts[4] == "attempts" and \
                    is_attempt_dir_name(parts[5]):  # a stray entry there is no attempt
                if run_id_of(parts[5]) not in skip:
                    attempts.add((bid, parts[1], parts[3], parts[5]))
                dirty.add(bid)
        if new_batch and self.observer:
            dirty.update(self.index.scan_new_batches())
        for bid, job_id, step_id, dir_name in sorted(attempts):
            batch = self.index.batches.get(bid)
            job = batch.jobs.get(job_id) if batch else None
            if job is None or step_id not in job.steps:
                continue
            self.index.refresh_attempt(bid, job_id, step_id, dir_name)
        if dirty:
            self.on_change(dirty)

    def rescan(self) -> None:
        """Re-read every attempt not known to be final (and, observing, new attempts and
        batches): what a lost inotify event would have told us."""
        dirty: set[str] = set()
        skip = self.skip()
        if self.observer:
            dirty.update(self.index.scan_new_batches())
            dirty.update(self.reopen({b for b in self.index.skip if self.moved(b)}))
        for bid, batch in list(self.index.batches.items()):
            for job, step in batch.steps():
                known = {a.dir_name: a for a in step.attempts}
                names: list[str] = []
                adir = self.layout.attempts_dir(bid, job.job_id, step.step_id)
                if self.observer or self.polling:
                    names = attempt_dir_names(adir)
                else:
                    names = [n for n, a in known.items() if not a.terminal]
                for name in names:
                    a = known.get(name)
                    if (a is not None and a.terminal) or run_id_of(name) in skip:
                        continue
                    self.index.refresh_attempt(bid, job.job_id, step.step_id, name)
                    dirty.add(bid)
        if dirty:
            self.on_change(dirty)


class Backend:
    """The dashboard's view of one phh root."""

    mode = "store"

    def __init__(self, root: Path, runner_id: str = "local") -> None:
        self.layout = Layout(root)
        self.runner_id = runner_id
        self.index = StoreIndex(self.layout)
        self.watcher: RunsWatcher | None = None
        #: the catalog's reads: settled batches' rows, paged lists (phh_tui/paging.py)
        self.pages = CatalogPages(self.layout)

    @property
    def root(self) -> Path:
        return self.layout.root

    def views(self) -> dict[str, BatchView]:
        """A copy of the batch map (the engine thread may add batches while we read)."""
        for _ in range(5):
            with contextlib.suppress(RuntimeError):
                return dict(self.index.batches)
        return {}

    def step(self, batch_id: str, job_id: str, step_id: str) -> StepView | None:
        """One step's view (its spec and attempts, as last read), None when unknown. A step
        of a batch not in memory (settled: docs/catalog.md#bounded-start-up) is read from
        its files, alone."""
        batch = self.index.batches.get(batch_id)
        if batch is None:
            return self.pages.load_step(batch_id, job_id, step_id)
        job = batch.jobs.get(job_id)
        return job.steps.get(step_id) if job else None

    def settled_rows(self) -> list[str]:
        """System rows (SystemRow JSON) of the batches on disk but not in memory (settled),
        from the catalog; any thread (the board's worker calls it)."""
        if not self.index.skip:
            return []
        return self.pages.system_rows(exclude=set(self.views()))

    def running_here(self) -> int:
        """Attempts this process runs (what quitting must decide about)."""
        return 0

    def slots(self) -> tuple[int, int] | None:
        return None

    def live_run_ids(self) -> set[str]:
        return set()

    def beat_ages(self) -> dict[str, float]:
        """Monotonic heartbeat ages of the attempts this process monitors: {run_id: s}."""
        return {}

    async def request(self, action: str, batch_id: str, job_id: str | None = None,
                      step_id: str | None = None, **kw: Any) -> Outcome:
        raise NotImplementedError

    def serve(self, on_change: Callable[[set[str]], None]) -> None:
        """Blocking; runs in the app's thread worker until `stop`."""
        raise NotImplementedError

    def stop(self, cancel_running: bool = False, detach: bool = False) -> None:
        """Any thread, any time, more than once: before `serve`, while serving, or after."""
        if self.watcher is not None and self._loop is not None:
            with contextlib.suppress(RuntimeError):  # its loop has closed: it already ended
                self._loop.call_soon_threadsafe(self.watcher.stop)

    _loop: asyncio.AbstractEventLoop | None = None


class EngineBackend(Backend):
    """The engine in this process: `serve` is `asyncio.run(engine.serve())` plus the watcher
    on the same loop."""

    mode = "engine"

    def __init__(self, root: Path, *, concurrency: int | None = None, runner_id: str = "local",
                 on_event: Callable[[EngineEvent], None] | None = None,
                 ray_address: str | None = None) -> None:
        super().__init__(root, runner_id)
        # bounded, as headless: settled batches stay on disk and in the catalog; the screens
        # show them from the catalog (phh_tui/paging.py, docs/catalog.md#the-dashboard)
        self.engine = Engine(root, concurrency=concurrency, runner_id=runner_id,
                             on_event=on_event, ray_address=ray_address)
        self.index = self.engine.index
        self.serving = False

    def running_here(self) -> int:
        return len(self.engine.tasks)

    def slots(self) -> tuple[int, int] | None:
        if self.engine.config is None:
            return None
        return len(self.engine.tasks), self.engine.capacity

    def header_notes(self) -> list[str]:
        return self.engine.header_notes()

    def live_run_ids(self) -> set[str]:
        for _ in range(5):
            with contextlib.suppress(RuntimeError):
                return set(self.engine.tasks)
        return set()

    def beat_ages(self) -> dict[str, float]:
        runner = self.engine.runner
        return runner.beat_ages() if runner is not None else {}

    def setup(self) -> None:
        """Config, codex, index, recovery; raises EngineError when another engine serves this
        runner (the app then falls back to watching the store)."""
        self.engine.setup()

    def serve(self, on_change: Callable[[set[str]], None]) -> None:
        self.watcher = RunsWatcher(self.layout, self.index, on_change, skip=self.live_run_ids)
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        assert self.watcher is not None
        self._loop = asyncio.get_running_loop()
        watch = asyncio.create_task(self.watcher.run(), name="phh-tui-watch")
        self.serving = True
        try:
            await self.engine.serve()
        finally:
            self.serving = False
            self.watcher.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(watch, 5)

    def stop(self, cancel_running: bool = False, detach: bool = False) -> None:
        self.engine.stop(cancel_running=cancel_running, detach=detach)  # safe after it ended

    async def request(self, action: str, batch_id: str, job_id: str | None = None,
                      step_id: str | None = None, **kw: Any) -> Outcome:
        if not self.serving:
            return Outcome("error", "the engine is not running yet")
        fut = self.engine.request_threadsafe(action, batch_id, job_id, step_id,
                                             requested_by="tui", **kw)
        return Outcome.of(await asyncio.wrap_future(fut))


class StoreBackend(Backend):
    """No engine in this process: read the store, watch it, request actions by file."""

    mode = "observer"

    def __init__(self, root: Path, runner_id: str = "local", *, watch: bool = True,
                 reason: str | None = None) -> None:
        super().__init__(root, runner_id)
        self.watch = watch
        self.reason = reason
        self._stop = False

    def load(self) -> None:
        """Every batch that can still change (settled ones stay on disk and come from the
        catalog, as for the bounded engine: docs/catalog.md#the-dashboard)."""
        self.index.skip = self.pages.settled_batches()
        self.index.load()
        replay_marks(self.layout, self.index.batches)

    def serve(self, on_change: Callable[[set[str]], None]) -> None:
        if not self.watch:
            return
        self.watcher = RunsWatcher(self.layout, self.index, on_change, observer=True)
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        assert self.watcher is not None
        self._loop = asyncio.get_running_loop()
        if self._stop:
            return
        await self.watcher.run()

    def stop(self, cancel_running: bool = False, detach: bool = False) -> None:
        self._stop = True
        super().stop()

    async def request(self, action: str, batch_id: str, job_id: str | None = None,
                      step_id: str | None = None, **kw: Any) -> Outcome:
        return await asyncio.to_thread(self._request, action, batch_id, job_id, step_id, kw)

    def _request(self, action: str, batch_id: str, job_id: str | None, step_id: str | None,
                 kw: dict[str, Any]) -> Outcome:
        req = make_request(self.layout, action, batch_id, job_id=job_id, step_id=step_id,
                           requested_by="tui", **kw)
        if not engine_serving(self.layout):
            return Outcome("queued", f"{action} queued: no engine is running; it applies when "
                           "one starts")
        deadline = time.monotonic() + REQUEST_WAIT_SECONDS
        while time.monotonic() < deadline:
            res = read_result(self.layout, req.nonce)
            if res is not None:
                apply_marks(self.index.batches, res)
                return Outcome.of(res)
            time.sleep(0.05)
        return Outcome("pending", f"{action}: no result from the engine within "
                       f"{REQUEST_WAIT_SECONDS:g}s; it stays queued")
