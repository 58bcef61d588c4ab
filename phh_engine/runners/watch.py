"""Watching a running attempt (`WatchSteps`, a stage of the local runner): tail its events,
write heartbeats (and at once after a wall-clock jump), enforce the timeout and cancels,
end a Codex that lingers after its final report, then hand over to concluding.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from ..models import AttemptState, utcnow
from ..store.crash import crashpoint, faultpoint
from ..store.diskguard import retry_writes
from ..store.events import EventFacts, EventTail
from ..store.files import TerminalStateError, write_state
from ..store.paths import FINAL_TXT, STATE
from ..store.pointers import update_current
from ..store.views import AttemptView
from . import verify as verification
from .attempt import AttemptPlan, LiveAttempt, _Watch
from .conclude import ConcludeSteps, validate_report
from .process import _Handle, kill_group, kill_tree

STATE_WRITE_MIN_INTERVAL = 1.0
#: a change of wall-minus-monotonic this large between two monitor wakes is a clock jump
CLOCK_JUMP_SECONDS = 5.0
_NEVER = float("inf")



@dataclass(slots=True)
class _Linger:
    """After turn.completed: when a valid final message is on disk, Codex gets `grace`
    seconds to exit by itself (`until`, loop time) before phh ends its process group."""

    grace: float
    until: float = _NEVER
    ended: bool = False
    _seen: tuple[int, int] | None = None

    def final_ready(self, path: Path, watch: _Watch) -> bool:
        """Is `final.txt` written and valid against the attempt's schema? Re-read only when
        its size or mtime changed (worker thread: a message can be megabytes)."""
        try:
            st = os.stat(path / FINAL_TXT)
        except OSError:
            return False
        key = (st.st_size, st.st_mtime_ns)
        if st.st_size == 0 or key == self._seen:
            return False
        self._seen = key
        try:
            text = (path / FINAL_TXT).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        report, obj, _ = validate_report(text, watch.schema)
        return report is not None or obj is not None


@dataclass(slots=True)
class _Watching:
    """One attempt's watch loop as `LocalRunner._monitor` runs it (loop-clock times)."""

    state: AttemptState
    tail: EventTail
    hb: float
    deadline: float
    next_beat: float
    last_write: float
    wall_skew: float
    waiter: asyncio.Future[int | None]
    canceller: asyncio.Future[Any]
    linger: _Linger
    #: the wall and loop time of the last wake
    now: datetime
    now_t: float
    facts: EventFacts = field(default_factory=EventFacts)
    timed_out: bool = False
    thread_mismatch: str | None = None
    dirty: bool = False
    poll: float = 0.1
    killer: asyncio.Future[None] | None = None
    pointer: asyncio.Future[None] | None = None


class WatchSteps(ConcludeSteps):
    """The local runner's watch stage: `_monitor` runs one attempt's watch loop to its end,
    then concludes it (`ConcludeSteps`)."""

    async def _monitor(self, plan: AttemptPlan, view: AttemptView, live: LiveAttempt,
                       state: AttemptState, proc: _Handle, watch: _Watch,
                       elapsed: float = 0.0) -> AttemptView:
        """Watch one attempt's process until it ends (events, heartbeats, timeout, cancel,
        a Codex lingering after its report), then conclude it. `elapsed`: seconds it ran
        before this engine took it over."""
        w = self._watching(live, state, proc, watch, elapsed)
        while not await self._observe(w, live, watch):
            await self._enforce(w, view.path, live, proc, watch)
            await self._beat(w, plan, view, live)
        await self._stop_watching(w, proc)
        crashpoint("before_finalize")
        return await self._finish(w, plan, view, live, watch)

    def _watching(self, live: LiveAttempt, state: AttemptState, proc: _Handle, watch: _Watch,
                  elapsed: float) -> _Watching:
        loop = asyncio.get_running_loop()
        hb = self.config.codex.heartbeat_seconds
        t0 = loop.time()
        live.beat_mono = t0
        return _Watching(
            state=state, tail=EventTail(watch.events_path), hb=hb,
            deadline=t0 + watch.timeout_seconds - elapsed,
            # a started attempt's 'running' state already carries its first heartbeat; an
            # adopted one beats at once (the engine that wrote its last beat is gone)
            next_beat=t0 + hb if elapsed == 0.0 else t0,
            last_write=t0,
            # wall minus monotonic: when it moves (sleep/resume, NTP step), beat at once so
            # the heartbeat others read from state.json is fresh on the new wall clock
            wall_skew=utcnow().timestamp() - t0,
            waiter=asyncio.ensure_future(proc.wait()),
            canceller=asyncio.ensure_future(live.cancel_requested.wait()),
            # Codex that stays up after turn.completed with a valid final message (seen in
            # the wild) is ended after a short grace and recorded by its report, not by the
            # timeout
            linger=_Linger(self.config.codex.linger_grace_seconds),
            now=utcnow(), now_t=t0,
        )

    async def _observe(self, w: _Watching, live: LiveAttempt, watch: _Watch) -> bool:
        """Wait for the process to end, a cancel, or the next poll/beat/deadline; take in
        the new events. True once the process has ended."""
        loop = asyncio.get_running_loop()
        now_t = loop.time()
        timeout = max(0.0, min(w.poll, w.deadline - now_t, w.next_beat - now_t,
                               w.linger.until - now_t))
        await asyncio.wait({w.waiter, w.canceller}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        faultpoint("monitor")
        new = w.tail.read_new()
        if w.waiter.done():
            new += w.tail.flush_partial()
        w.now = utcnow()
        w.now_t = loop.time()
        for ev in new:
            w.dirty |= w.facts.apply(ev)
        if new:
            w.poll = 0.1
            w.state = w.state.model_copy(update={"last_event_at": w.now})
        else:
            w.poll = min(w.poll * 1.5, 1.0)
        if (watch.expected_thread and w.facts.thread_id
                and w.facts.thread_id != watch.expected_thread and not w.thread_mismatch):
            w.thread_mismatch = (f"resumed thread {w.facts.thread_id} is not the expected "
                                 f"{watch.expected_thread}")
            live.cancel_reason = "thread_mismatch"
            live.cancel_requested.set()
        return w.waiter.done()

    async def _enforce(self, w: _Watching, path: Path, live: LiveAttempt, proc: _Handle,
                       watch: _Watch) -> None:
        """End the process when its report is in and it lingers, on timeout, or on cancel."""
        now_t, linger = w.now_t, w.linger
        if (linger.until == _NEVER and w.facts.turn_completed and not w.facts.turn_failed
                and w.killer is None and await self._in_io(linger.final_ready, path, watch)):
            linger.until = now_t + linger.grace
        if w.killer is None and (now_t >= linger.until
                                 or (linger.until < _NEVER and now_t >= w.deadline)):
            # the report is in: a timeout reached while Codex lingers does not discard it
            linger.ended = True
            w.killer = asyncio.ensure_future(self._stop_process(proc, signal.SIGTERM))
        if now_t >= w.deadline and not w.timed_out and not linger.ended:
            w.timed_out = True
            live.cancel_reason = "timeout"
            live.cancel_requested.set()
        if live.cancel_requested.is_set() and w.killer is None:
            w.killer = asyncio.ensure_future(self._stop_process(proc))

    async def _beat(self, w: _Watching, plan: AttemptPlan, view: AttemptView,
                    live: LiveAttempt) -> None:
        """Write state.json on a heartbeat, a clock jump, the thread id's arrival, or new
        facts (at most once a STATE_WRITE_MIN_INTERVAL); point current.json at the
        attempt once Codex names its thread."""
        now, now_t = w.now, w.now_t
        skew = now.timestamp() - now_t
        beat = now_t >= w.next_beat or abs(skew - w.wall_skew) > CLOCK_JUMP_SECONDS
        w.wall_skew = skew
        new_thread = w.pointer is None and w.facts.thread_id is not None
        if not (beat or new_thread
                or (w.dirty and now_t - w.last_write >= STATE_WRITE_MIN_INTERVAL)):
            return
        w.state = self._merge_facts(w.state, w.facts, now).model_copy(
            update={"last_heartbeat_at": now if beat else w.state.last_heartbeat_at}
        )
        if beat:
            w.next_beat = now_t + w.hb
        # on the worker threads: with hundreds of agents streaming events this is up
        # to one fsynced write per agent per second, which would stall the loop
        try:
            await self._in_io(write_state, view.path / STATE, w.state)
        except TerminalStateError:
            pass
        except OSError as exc:  # full disk: keep watching Codex; retried next beat
            self.writes.failed(exc, f"the heartbeat of run {view.run_id}")
        else:
            if beat:
                live.beat_mono = now_t
        view.state = w.state
        w.last_write, w.dirty = now_t, False
        self._emit(plan, view)
        if new_thread and self.writes_pointers:
            # current.json gets the live attempt and its thread id as soon as Codex names
            # it (docs/layout.md#currentjson, docs/layout.md#currentjson); an attempt that is
            # already over gets only the final update
            w.pointer = asyncio.ensure_future(self._in_io(
                update_current, self.layout, plan.batch_id, plan.job_id))

    async def _stop_watching(self, w: _Watching, proc: _Handle) -> None:
        w.canceller.cancel()
        if w.killer is not None:
            await w.killer
        if w.pointer is not None:
            with contextlib.suppress(Exception):  # the final update rewrites it anyway
                await w.pointer
        # Nothing of this attempt's process group outlives it. Only the group: the wrapper
        # is reaped by now, so its pid may already name another process whose children a
        # tree walk would kill (and a command that left the group was reparented, out of
        # any walk's reach; a cancel walks the tree while the process is alive).
        kill_group(proc.pid, signal.SIGKILL)

    async def _finish(self, w: _Watching, plan: AttemptPlan, view: AttemptView,
                      live: LiveAttempt, watch: _Watch) -> AttemptView:
        """Conclude the ended attempt (final state, report, artifacts) and report it."""
        await verification.run_if_due(self, plan, view, live, w, watch)  # hook: verify
        canceled = live.cancel_requested.is_set() and live.cancel_reason not in (
            "timeout", "thread_mismatch")
        state = w.state
        state, report, ready = await retry_writes(
            self.writes, f"the end of run {view.run_id}", lambda: self._in_io(
                self._conclude, plan, view.path, view.run_id, state, w.facts, watch,
                w.waiter.result(), canceled=canceled, timed_out=w.timed_out,
                thread_mismatch=w.thread_mismatch, cancel_reason=live.cancel_reason,
                lingered=w.linger.ended))
        view.state, view.report, view.resume_base_ready = state, report, ready
        self._emit(plan, view)
        return view

    async def _stop_process(self, proc: _Handle, sig: int = signal.SIGINT) -> None:
        """SIGINT first (Codex stops gracefully and ends its commands), SIGKILL after grace."""
        kill_tree(proc.pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()),
                                   self.config.codex.cancel_grace_seconds)
        except TimeoutError:
            kill_tree(proc.pid, signal.SIGKILL)
