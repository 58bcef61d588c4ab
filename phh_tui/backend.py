"""Where the dashboard's data and actions come from. No Textual here.

- `EngineBackend`: the engine runs in this process (in the app's thread worker, on its own
  asyncio loop). Its StoreIndex is what the dashboard reads; own attempts update it directly.
- `StoreBackend`: no engine here (another `phh` process serves the runner, or a static store
  for snapshots and benchmarks). A StoreIndex of our own, kept current by the watcher; actions
  are override request files that whichever engine serves the root applies.

Both run `watch_runs` (watchfiles on the runs tree, recursive, 50 ms debounce) on the loop that
owns their index, so index mutations stay on one thread: state changes written by other
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

from phh_engine.api_ops import engine_serving
from phh_engine.engine import Engine, EngineEvent
from phh_engine.index import CLOSED_MARKER, StoreIndex
from phh_engine.overrides import (
    OverrideResult,
    apply_marks,
    make_request,
    read_result,
    replay_marks,
)
from phh_engine.paths import FINAL_JSON, META, STATE, Layout, run_id_of
from phh_engine.views import BatchView

log = logging.getLogger(__name__)

WATCH_DEBOUNCE_MS = 50
WATCH_STEP_MS = 20
RESCAN_SECONDS = 30.0
POLL_FALLBACK_SECONDS = 2.0
ATTEMPT_FILES = frozenset({STATE, META, FINAL_JSON})
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


def _interesting(_change: Any, path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return (name in ATTEMPT_FILES or name == "batch_meta.json" or name == CLOSED_MARKER
            or name.endswith(".result.json"))


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
        self.polling = False

    def stop(self) -> None:
        """Call on the loop that runs the watcher (call_soon_threadsafe from elsewhere)."""
        self.stop_event.set()

    async def run(self) -> None:
        from watchfiles import awatch

        if self.stop_event.is_set():
            return
        last_rescan = time.monotonic()
        try:
            async for changes in awatch(
                self.layout.runs, watch_filter=_interesting, debounce=WATCH_DEBOUNCE_MS,
                step=WATCH_STEP_MS, stop_event=self.stop_event,
                rust_timeout=int(RESCAN_SECONDS * 1000), yield_on_timeout=True,
            ):
                if changes:
                    self.apply(sorted(path for _, path in changes))
                if time.monotonic() - last_rescan >= RESCAN_SECONDS:
                    last_rescan = time.monotonic()
                    self.rescan()  # inotify drops events on overflow (watchfiles #348)
        except (OSError, RuntimeError) as exc:  # e.g. out of inotify watches
            log.warning("watching %s failed (%s); polling every %ss", self.layout.runs, exc,
                        POLL_FALLBACK_SECONDS)
            self.polling = True
            while not self.stop_event.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop_event.wait(), POLL_FALLBACK_SECONDS)
                self.rescan()

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
            elif len(parts) == 7 and parts[2] == "steps" and parts[4] == "attempts":
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
        for bid, batch in list(self.index.batches.items()):
            for job, step in batch.steps():
                known = {a.dir_name: a for a in step.attempts}
                names: list[str] = []
                adir = self.layout.attempts_dir(bid, job.job_id, step.step_id)
                if self.observer or self.polling:
                    with contextlib.suppress(FileNotFoundError):
                        names = [n.name for n in adir.iterdir() if not n.name.startswith(".")]
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

    @property
    def root(self) -> Path:
        return self.layout.root

    def views(self) -> dict[str, BatchView]:
        """A copy of the batch map (the engine thread may add batches while we read)."""
        for _ in range(5):
            with contextlib.suppress(RuntimeError):
                return dict(self.index.batches)
        return {}

    def running_here(self) -> int:
        """Attempts this process runs (what quitting must decide about)."""
        return 0

    def slots(self) -> tuple[int, int] | None:
        return None

    def live_run_ids(self) -> set[str]:
        return set()

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
                 on_event: Callable[[EngineEvent], None] | None = None) -> None:
        super().__init__(root, runner_id)
        # bounded=False: the dashboard's screens read every batch from the in-memory views
        # (settled batches would otherwise only be in the catalog; see docs/catalog.md)
        self.engine = Engine(root, concurrency=concurrency, runner_id=runner_id,
                             on_event=on_event, bounded=False)
        self.index = self.engine.index
        self.serving = False

    def running_here(self) -> int:
        return len(self.engine.tasks)

    def slots(self) -> tuple[int, int] | None:
        if self.engine.config is None:
            return None
        return len(self.engine.tasks), self.engine.capacity

    def live_run_ids(self) -> set[str]:
        for _ in range(5):
            with contextlib.suppress(RuntimeError):
                return set(self.engine.tasks)
        return set()

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
