"""Headless serving (`phh run --no-ui`, `phh demo --no-ui`): the engine's events as log lines
and a periodic progress summary, until idle or a signal. Shared by cli and demo, so neither
imports the other."""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING

from phh_tui.cli_common import EXIT_OK

if TYPE_CHECKING:
    from phh_engine.engine.loop import Engine, EngineEvent

SUMMARY_EVERY = 30.0


class HeadlessLog:
    """One line per fact, and a progress summary at most every `every` seconds."""

    def __init__(self, engine: Engine, json_log: bool = False, every: float = 10.0) -> None:
        self.engine = engine
        self.json_log = json_log
        self.every = every
        self._last_summary = 0.0

    def __call__(self, ev: EngineEvent) -> None:
        if self.json_log:
            rec = {k: v for k, v in {
                "at": ev.at.isoformat(), "event": ev.kind, "batch_id": ev.batch_id,
                "job_id": ev.job_id, "step_id": ev.step_id, "run_id": ev.run_id,
                "status": ev.status, "detail": ev.detail,
                "duration_seconds": ev.duration_seconds}.items() if v is not None}
            print(json.dumps(rec), flush=True)
            return
        ts = ev.at.astimezone().strftime("%H:%M:%S")
        where = "/".join(x for x in (ev.batch_id, ev.job_id, ev.step_id) if x)
        if ev.kind == "attempt_started":
            print(f"{ts} start  {where} run={ev.run_id} ({ev.detail})", flush=True)
        elif ev.kind == "attempt_ended":
            dur = f" {ev.duration_seconds:.1f}s" if ev.duration_seconds is not None else ""
            why = f" [{ev.detail}]" if ev.status != "succeeded" and ev.detail else ""
            print(f"{ts} end    {where} run={ev.run_id} {ev.status}{why}{dur}", flush=True)
            self.summary(ev.at)
        elif ev.kind == "attention":
            print(f"{ts} ATTENTION {where} {ev.status}: {ev.detail or ''}".rstrip(),
                  flush=True)
        elif ev.kind == "batch_finished":
            print(f"{ts} finished {where}: {ev.detail}", flush=True)
        elif ev.kind in ("batch_added", "recovered", "stopping", "idle", "admission_blocked",
                         "admission_resumed", "gc", "queue", "adopted", "override",
                         "concurrency", "concurrency_capped", "node_joined", "node_lost"):
            print(f"{ts} {ev.kind} {where} {ev.status or ''} {ev.detail or ''}".rstrip(),
                  flush=True)
            if ev.kind == "idle":
                self.summary(ev.at, force=True)

    def summary(self, at: datetime, force: bool = False) -> None:
        t = at.timestamp()
        if not force and t - self._last_summary < self.every:
            return
        self._last_summary = t
        from phh_engine.derive.scoreboards import batch_scoreboard
        from phh_engine.models import utcnow

        now = utcnow()
        for batch in self.engine.index.batches.values():
            sb = batch_scoreboard(batch, now)
            c = sb.counts
            done = c.succeeded
            print(f"  {sb.batch_id}: {done}/{sb.steps_total} succeeded, {c.running} running, "
                  f"{c.ready} ready, {c.blocked} blocked, {c.failed} failed, "
                  f"{c.needs_attention} needs_attention, {c.canceled} canceled", flush=True)


async def run_headless(engine: Engine) -> int:
    """Serve until idle (`--until-idle`) or a signal; returns the exit code: 0, or 128 + the
    first signal's number when SIGINT/SIGTERM stopped it (130 for Ctrl-C), as shells do."""
    import asyncio
    import signal

    from phh_engine.models import utcnow

    loop = asyncio.get_running_loop()
    hits: list[int] = []

    def on_signal(sig: int) -> None:
        hits.append(sig)
        engine.stop(cancel_running=len(hits) > 1)

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    log = engine.on_event
    ticker = None
    if isinstance(log, HeadlessLog) and not log.json_log:
        async def tick() -> None:  # the periodic progress summary, also while nothing ends
            while True:
                await asyncio.sleep(SUMMARY_EVERY)
                log.summary(utcnow(), force=True)

        ticker = asyncio.create_task(tick())
    try:
        await engine.serve()
    finally:
        if ticker is not None:
            ticker.cancel()
    return 128 + hits[0] if hits else EXIT_OK
