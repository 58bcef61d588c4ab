"""Watching the store for work from other processes: new batches under runs/ (`phh submit`
elsewhere), override requests (`phh retry`, the API of another process) and Launch Tables
dropped into the filesystem queue (docs/interfaces.md). inotify via watchfiles, plus a
rescan every RESCAN_INTERVAL seconds because inotify events can be lost on overflow.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from ..models import utcnow
from ..store.overrides import overrides_dir
from .events import EngineEvent

if TYPE_CHECKING:
    from .loop import Engine

log = logging.getLogger(__name__)

RESCAN_INTERVAL = 30.0


class Watcher:
    """The engine's watching collaborator (call its methods on the engine's loop)."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        #: the catch-up scan of the queue started with each watch
        self.queue_catch_up: asyncio.Task[None] | None = None

    async def run(self) -> None:
        """New batches from `phh submit` in another process: watch runs/ (not recursive) and
        rescan periodically, because inotify events can be lost on overflow."""
        from watchfiles import awatch

        stop = asyncio.Event()
        paths = [self.eng.layout.runs, overrides_dir(self.eng.layout)]
        if self.eng.queue is not None:
            paths.append(self.eng.queue.incoming)
        while True:
            # awatch registers its watches before it first waits, so this scan (which runs
            # once we wait) catches drops made before the watch began
            # held: the loop keeps only a weak reference to a task
            self.queue_catch_up = asyncio.create_task(self.scan_queue())
            try:
                async for _ in awatch(*paths,
                                      recursive=False, debounce=50, step=20, stop_event=stop,
                                      rust_timeout=int(RESCAN_INTERVAL * 1000),
                                      yield_on_timeout=True):
                    await self.scan_queue()
                    self.scan_batches()
                    self.eng.operator.process()
            except (OSError, RuntimeError):
                await asyncio.sleep(RESCAN_INTERVAL)
                await self.scan_queue()
                self.scan_batches()

    async def scan_queue(self) -> None:
        """Ingest Launch Tables dropped into <queue_root>/incoming/ (see interfaces/queue.py)."""
        if self.eng.queue is None:
            return
        try:
            outcomes = await asyncio.to_thread(self.eng.queue.scan)
        except Exception:  # a queue problem must not stop the engine; the next scan retries
            log.exception("filesystem queue scan failed")
            return
        for res in outcomes:
            self.eng.emit(EngineEvent("queue", utcnow(), res.batch_id, status=res.status,
                                      detail=res.name, data=res.as_dict()))
        if outcomes:
            self.scan_batches()

    def scan_batches(self) -> None:
        """Load batches that appeared under runs/ since the last scan; emit `batch_added`."""
        for bid in self.eng.index.scan_new_batches():
            self.eng.boards.dirty.add(bid)
            if self.eng.catalog is not None:
                self.eng.boards.catalog_full.add(bid)
            batch = self.eng.index.batches[bid]
            self.eng.emit(EngineEvent("batch_added", utcnow(), bid,
                                      detail=f"{len(batch.jobs)} job(s)"))
            self.eng.poke()
