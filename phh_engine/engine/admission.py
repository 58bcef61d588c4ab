"""Admission: whether this runner may start new attempts now, and its health.json
(docs/architecture.md#scheduling). The engine's collaborator for the health tick: drain
switch, disk / inode / memory floors, peers' health, start pauses (usage limits, set by
hand), the credential gate, failed store writes, and the AIMD concurrency after HTTP 429s.

The pure parts (reading drain.json and peers' health, sampling resources, system notes)
live in engine/health.py, shared with the CLI; this module holds the engine's state of
them. `Admission.reasons()` empty means the scheduler may fill free slots.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from datetime import datetime
from typing import TYPE_CHECKING

from .. import __version__
from ..models import AttemptState, RunnerHealth, utcnow
from ..models.health import RunnerNode
from ..models.pause import StartPause
from ..models.scoreboard import SystemNote
from ..runners.credentials import CredentialGate
from ..store.files import atomic_write_json
from ..store.pauses import (
    USAGE_LIMIT,
    active_pauses,
    clear_pause,
    note_usage_limit,
    pause_message,
    read_pauses,
)
from .events import EngineEvent
from .health import (
    Resources,
    all_health,
    drain_state,
    resource_problems,
    sample_resources,
    system_notes,
)

if TYPE_CHECKING:
    from .loop import Engine

log = logging.getLogger(__name__)


class Admission:
    """One engine's admission state, refreshed by each health tick (`sample` off the loop,
    then `after_sample` on it). Attributes are read by the engine's scheduler and boards."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        #: (draining, why) from drain.json or the harness config
        self.drain: tuple[bool, str | None] = (False, None)
        self.resources = Resources()
        #: sentences for resources under their floors (limits.min_*)
        self.problems: list[str] = []
        self.health_ok_at: float | None = None  # monotonic time of the last good write
        self.health_error: str | None = None
        #: every runner's health.json on the root, by runner id
        self.peers: dict[str, RunnerHealth] = {}
        #: system notes from the last sample
        self.notes: list[SystemNote] = []
        #: the reasons last reported as an admission event (to report changes only)
        self.reported: list[str] = []
        #: the runner's credential file: pause on a spent one, one refresh per wave
        self.cred: CredentialGate | None = None
        #: start pauses of the whole root (runs/_system/pauses/), re-read every health tick
        self.pauses: list[StartPause] = []
        #: AIMD on HTTP 429: the lowered concurrency, None while at the configured cap
        self.aimd: int | None = None

    def reasons(self, mono: float | None = None) -> list[str]:
        """Why this runner starts nothing new right now, one sentence each (empty: it may
        start work). `mono`: the `time.monotonic()` reading to judge health.json's age at
        (default: now). Needs `setup()` first."""
        assert self.eng.config is not None
        out: list[str] = []
        draining, why = self.drain
        if draining:
            out.append(f"draining: {why}")
        out.extend(self.problems)
        if self.cred is not None:
            out.extend(self.cred.reasons())
        out.extend(pause_message(p) for p in active_pauses(self.pauses, utcnow()))
        if self.eng.writes.problem:
            out.append(self.eng.writes.problem)
        stale_after = self.eng.config.runner_health.stale_after_seconds
        mono = time.monotonic() if mono is None else mono
        if self.health_ok_at is not None and mono - self.health_ok_at > stale_after:
            out.append(f"health.json not written for over {stale_after:g}s"
                       + (f" ({self.health_error})" if self.health_error else "")
                       + ": other harnesses would take this runner for dead")
        return out

    def sample(self) -> None:
        """Blocking part of a health tick: drain file, disk, memory, peers' health, pauses,
        system notes, and this runner's health.json written (a failed write is kept in
        `health_error`, not raised). The loop runs it in a thread; callable before `serve`."""
        assert self.eng.config is not None
        self.drain = drain_state(self.eng.layout, self.eng.config, self.eng.runner_id)
        self.resources = sample_resources(self.eng.layout.root)
        self.problems = resource_problems(self.resources, self.eng.config.limits)
        self.eng.writes.probe(self.eng.layout.runs)  # space came back: starts resume
        try:
            self.write_health()
            self.health_ok_at = time.monotonic()
            self.health_error = None
        except OSError as exc:
            self.health_error = f"{type(exc).__name__}: {exc.strerror or exc}"
            log.warning("cannot write runner health: %s", self.health_error)
        self.peers = all_health(self.eng.layout)
        self.pauses = self.merge_pauses(read_pauses(self.eng.layout))
        self.notes = system_notes(self.eng.layout, self.eng.config)
        if self.health_error:
            self.notes.append(SystemNote(
                kind="health_unwritable", runner_id=self.eng.runner_id,
                message=f"runner {self.eng.runner_id} cannot write its health.json "
                        f"({self.health_error})"))
        if self.eng.writes.problem:
            self.notes.append(SystemNote(kind="write_error", runner_id=self.eng.runner_id,
                                         message=f"runner {self.eng.runner_id}: "
                                                 f"{self.eng.writes.problem}"))

    def after_sample(self) -> None:
        """Loop side of a health tick: report admission changes, wake the scheduler."""
        reasons = self.reasons()
        if reasons == self.reported:
            return
        was_blocked = bool(self.reported)
        self.reported = reasons
        if reasons:
            self.eng.emit(EngineEvent(
                "admission_blocked", utcnow(), status="paused",
                detail=f"runner {self.eng.runner_id} starts no new attempts: " + "; ".join(reasons),
                data={"runner_id": self.eng.runner_id, "reasons": reasons}))
        elif was_blocked:
            self.eng.emit(EngineEvent("admission_resumed", utcnow(), status="accepting",
                                      detail=f"runner {self.eng.runner_id} accepts work again",
                                      data={"runner_id": self.eng.runner_id}))
        self.eng.boards.dirty.update(self.eng.index.batches)  # notes appear in every scoreboard
        self.eng.poke()

    def tick(self) -> None:
        """One health tick in full: `sample`, then report an admission change and
        wake the scheduler. Blocks (disk, files): the loop itself samples in a thread."""
        self.sample()
        self.after_sample()

    async def run(self) -> None:
        """The health side loop: `sample` in a thread every `runner_health.interval_seconds`,
        then `after_sample` on the loop. Runs until canceled."""
        assert self.eng.config is not None
        interval = self.eng.config.runner_health.interval_seconds
        while True:
            await asyncio.sleep(interval)
            await asyncio.to_thread(self.sample)
            self.after_sample()

    def write_health(self, stopped: bool = False) -> None:
        """Write runners/<runner_id>/health.json now. Raises OSError when it cannot."""
        eng = self.eng
        res = self.resources
        draining, why = self.drain
        if self.eng.stopping and not draining:
            draining, why = True, "engine stopping"
        problems = list(self.problems)
        if self.eng.writes.problem:
            problems.append(self.eng.writes.problem)
        health = RunnerHealth(
            runner_id=self.eng.runner_id, host=socket.gethostname(), pid=os.getpid(),
            started_at=self.eng.started_at, last_seen_at=utcnow(),
            capacity=self.eng.capacity if self.eng.config else 0, running=len(self.eng.tasks),
            effective_capacity=self.eng.effective_capacity if self.eng.config else None,
            draining=draining, disk_free_bytes=res.disk_free_bytes,
            disk_free_inodes=res.disk_free_inodes,
            memory_available_bytes=res.memory_available_bytes,
            load_1m=res.load_1m, codex_cli_version=eng.codex.version if eng.codex else None,
            phh_version=__version__, drain_reason=why,
            accepting_work=not (draining or problems or stopped), problems=problems,
            interval_seconds=eng.config.runner_health.interval_seconds if eng.config else None,
            stopped_at=utcnow() if stopped else None,
            nodes=[RunnerNode(label=n.label, node_id=n.node_id, alive=n.alive,
                              slots_total=n.slots_total, slots_used=n.slots_used,
                              agents_running=n.agents_running, last_seen_at=n.last_seen,
                              error=n.error)
                   for n in (self.eng.runner.nodes() if self.eng.runner is not None else [])],
        )
        atomic_write_json(self.eng.layout.runner_health(self.eng.runner_id), health)

    async def credential_loop(self) -> None:
        """Notice the credential file change promptly while a pause or a token-refresh pilot
        waits on it (a stat every 0.25 s), else every few seconds; report and reschedule."""
        assert self.cred is not None
        shown: str | None = None
        while True:
            await asyncio.sleep(0.25 if self.cred.watching else 2.0)
            changed = self.cred.poll()
            self.after_sample()  # reports a pause starting or lifting (no-op otherwise)
            held = self.cred.holding_note()
            if changed or held != shown:
                shown = held
                self.eng.boards.dirty.update(self.eng.index.batches)
                self.eng.poke()

    def credential_notes(self) -> list[SystemNote]:
        """Scoreboard notes for a credential pause and a token refresh under way."""
        cred = self.cred
        if cred is None:
            return []
        out = [SystemNote(kind="credential_paused", runner_id=self.eng.runner_id, message=r,
                          since=cred.paused.since if cred.paused else None)
               for r in cred.reasons()]
        held = cred.holding_note()
        if held:
            out.append(SystemNote(kind="credential_refresh", runner_id=self.eng.runner_id,
                                  message=held))
        return out

    def pause_end(self, now: datetime) -> datetime | None:
        """When the last active start pause with a known end is over (None: no such pause)."""
        ends = [p.until for p in active_pauses(self.pauses, now) if p.until is not None]
        return max(ends) if ends else None

    def hold_starts(self, pause: StartPause) -> None:
        """Apply a start pause just written with `pauses.set_pause` at once (other engines on
        the root read it on their next health tick): report it and stop starting."""
        self.pauses = [p for p in self.pauses if p.name != pause.name] + [pause]
        self.after_sample()

    def merge_pauses(self, on_disk: list[StartPause]) -> list[StartPause]:
        """The pauses a health tick read, plus one this engine set while the read was under
        way (the tick reads off the loop): without it the next starts could slip through
        until the following tick. A pause deleted on disk (ended early by hand) is dropped
        once it is older than that race."""
        assert self.eng.config is not None
        now = utcnow()
        race = 2 * self.eng.config.runner_health.interval_seconds
        by_name = {p.name: p for p in on_disk}
        for p in list(self.pauses):
            disk = by_name.get(p.name)
            if (disk is None or disk.set_at < p.set_at) and \
                    (now - p.set_at).total_seconds() < race:
                by_name[p.name] = p
        return list(by_name.values())

    def record_outcome(self, st: AttemptState) -> None:
        """What one attempt's end teaches about the model API: a usage limit pauses every
        start on the root; HTTP 429 halves this runner's concurrency, a success adds one."""
        assert self.eng.config is not None
        fc = st.failure_class
        if fc == "usage_limited":
            lim = self.eng.config.limits
            try:
                pause = note_usage_limit(
                    self.eng.layout, " ".join(st.errors), set_by=f"runner:{self.eng.runner_id}",
                    base_seconds=lim.usage_limit_pause_seconds,
                    max_seconds=lim.usage_limit_pause_max_seconds)
            except OSError as exc:  # unwritable: this engine still pauses itself
                log.warning("cannot record the usage-limit pause: %s", exc)
                return
            self.hold_starts(pause)
        elif fc == "rate_limited":
            before = self.eng.effective_capacity
            self.aimd = max(1, before // 2)
            self.eng.emit(EngineEvent(
                "concurrency", utcnow(), status="lowered",
                detail=f"effective concurrency {self.eng.effective_capacity}/{self.eng.capacity} "
                       f"(halved after HTTP 429 rate limit)",
                data={"effective": self.eng.effective_capacity, "capacity": self.eng.capacity}))
            self.eng.boards.dirty.update(self.eng.index.batches)
        elif st.status == "succeeded":
            if self.aimd is not None:
                self.aimd += 1
                if self.aimd >= self.eng.capacity:
                    self.aimd = None
                self.eng.emit(EngineEvent(
                    "concurrency", utcnow(), status="raised",
                    detail=f"effective concurrency {self.eng.effective_capacity}/"
                           f"{self.eng.capacity}"
                           + (" (back to the configured cap)" if self.aimd is None else ""),
                    data={"effective": self.eng.effective_capacity, "capacity": self.eng.capacity}))
                self.eng.boards.dirty.update(self.eng.index.batches)
            if any(p.name == USAGE_LIMIT for p in self.pauses) and not any(
                    p.name == USAGE_LIMIT for p in active_pauses(self.pauses, utcnow())):
                # the limit is over: the next one starts a fresh exponential streak
                with contextlib.suppress(OSError):
                    clear_pause(self.eng.layout, USAGE_LIMIT)
                self.pauses = [p for p in self.pauses if p.name != USAGE_LIMIT]
