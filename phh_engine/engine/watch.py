"""Watching runs/ and the queue (moved from loop.py)."""

RESCAN_INTERVAL = 30.0


class Watcher:
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
