"""The board writer: runs/<batch>/scoreboard.batch.json and the system scoreboard
(docs/statuses.md#scoreboard-lists), written from the index every
`scoreboard.write_interval_seconds` (stretched for huge batches, see BOARD_DUTY), only for
batches changed since the last write (`dirty`), all of them every 30 s. It also keeps the
catalog's batch rows current, evicts settled batches from memory (bounded engines), and
announces attention items and finished batches as engine events.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING

from ..derive.scoreboards import batch_scoreboard, system_scoreboard
from ..models import utcnow
from ..models.scoreboard import BatchScoreboard, SystemNote
from ..store.files import atomic_write_json
from ..store.index import unexpected_notes
from ..store.pauses import pause_notes
from .catalog_file import keep_catalog_file
from .events import EngineEvent

if TYPE_CHECKING:
    from .loop import Engine

log = logging.getLogger(__name__)

#: A board is derived from its whole batch (O(steps), on the loop): the loop spends at most
#: about 1/BOARD_DUTY of its time writing them. A 10,000-step batch (~0.1 s to derive) is
#: then rewritten every 2 s instead of every second, and the schedule stays responsive.
BOARD_DUTY = 20


def board_delay(interval: float, spent: float) -> float:
    """Seconds until the next board write: the configured interval, stretched to BOARD_DUTY
    times what the last write took."""
    return max(interval, spent * BOARD_DUTY)


class BoardWriter:
    """The engine's board-writing collaborator (call its methods on the engine's loop)."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        #: batches whose boards are due (changed since the last write)
        self.dirty: set[str] = set()
        #: the last board written per batch (unchanged batches reuse theirs)
        self.boards: dict[str, BatchScoreboard] = {}
        #: loaded batches whose attempts the catalog must still get in full
        self.catalog_full: set[str] = set()

    async def run(self) -> None:
        """The board side loop: write changed boards every interval (see `board_delay`), all
        boards and the stuck-attempt check every 30 s. Runs until canceled."""
        assert self.eng.config is not None
        interval = self.eng.config.scoreboard.write_interval_seconds
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
                    self.eng.operator.check_stuck()
                except OSError as exc:  # its override files: a full disk must not end the loop
                    self.eng.writes.failed(exc, "a stuck-attempt remediation")

    def _timed_write(self, all_batches: bool) -> float:
        t0 = time.perf_counter()
        try:
            self.write(all_batches=all_batches)
        except OSError as exc:  # a full disk must not end the scoreboard loop
            self.eng.writes.failed(exc, "the scoreboards")
            self.dirty.update(self.eng.index.batches)  # all of them again once writes work
        return time.perf_counter() - t0

    def write(self, all_batches: bool = False) -> None:
        """Write the scoreboards of batches changed since the last write (`all_batches`:
        every batch) and the system scoreboard. Raises OSError when a write fails."""
        keep_catalog_file(self.eng)  # its file deleted/replaced/damaged: reopen, re-put
        dirty = set(self.eng.index.batches) if all_batches else self.dirty
        self.dirty = set()
        if not dirty and not all_batches:
            return
        now = utcnow()
        notes = self.all_notes(now)
        ages = self.eng.runner.beat_ages() if self.eng.runner else {}
        # O(changed batches): unchanged batches reuse their last board (all are recomputed
        # every 30 s, when heartbeat ages move)
        for bid in dirty:
            batch = self.eng.index.batches.get(bid)
            if batch is None:
                continue
            sb = batch_scoreboard(batch, now, beat_ages=ages)
            if notes:
                sb = sb.model_copy(update={"notes": list(notes)})
            self._announce(self.boards.get(bid), sb)
            settled = False
            if self.eng.catalog is not None:
                full = bid in self.catalog_full
                self.catalog_full.discard(bid)
                settled = self.eng.catalog.put_batch(
                    batch, sb, None if full else self.boards.get(bid), attempts=full)
            self.boards[bid] = sb
            if settled and self.eng.bounded and not self.eng.stopping:
                self.evict(bid)  # its board file is still written below
            try:
                atomic_write_json(self.eng.layout.batch_scoreboard(bid), sb)
            except (IsADirectoryError, NotADirectoryError) as exc:  # a stray entry: go on
                where = f"{bid}/{self.eng.layout.batch_scoreboard(bid).name}"
                if where not in self.eng.index.unexpected:
                    self.eng.index.unexpected[where] = (
                        f"runs/{where}: cannot write this batch's scoreboard "
                        f"({exc.strerror or exc}); the system scoreboard and the API still "
                        "show it")
                    log.warning("store: %s", self.eng.index.unexpected[where])
        notes = self.all_notes(now)  # with stray entries found just now
        atomic_write_json(
            self.eng.layout.system_scoreboard,
            system_scoreboard(self.eng.index.batches.values(), now, self.boards,
                              extra_rows=self._settled_rows()).model_copy(
                update={"notes": notes}),
        )

    def evict(self, batch_id: str) -> None:
        """A batch that settled while serving leaves memory (its board file stays on disk,
        its row and steps in the catalog); an operator action that names it loads it again
        (TrackedIndex.load_batch). The ReadySet notices the batch going (a rebuild)."""
        self.boards.pop(batch_id, None)
        self.eng.index.batches.pop(batch_id, None)
        self.eng.index.skip.add(batch_id)

    def _settled_rows(self) -> list[str]:
        """System-view rows of the batches left on disk (bounded start), from the catalog."""
        if self.eng.catalog is None or not self.eng.index.skip:
            return []
        try:
            return self.eng.catalog.system_rows(exclude=self.eng.index.batches)
        except Exception:  # sqlite3.Error: the view then lacks settled batches until repair
            log.exception("catalog read failed")
            return []

    def all_notes(self, now: datetime) -> list[SystemNote]:
        """The health tick's notes plus what this engine knows first-hand: start pauses,
        credential pauses, a concurrency lowered after 429s, a `--concurrency` above the
        configured cap, stray entries the store index skipped."""
        adm = self.eng.admission
        out = [*adm.notes, *pause_notes(adm.pauses, now), *adm.credential_notes()]
        if self.eng.config is not None and self.eng.effective_capacity < self.eng.capacity:
            out.append(SystemNote(kind="rate_limited", runner_id=self.eng.runner_id, message=(
                f"runner {self.eng.runner_id}: effective concurrency {self.eng.effective_capacity}/"
                f"{self.eng.capacity} after HTTP 429 rate limits (+1 per success)")))
        note = self.eng.capacity_note()
        if note:
            out.append(SystemNote(kind="concurrency_capped", runner_id=self.eng.runner_id,
                                  message=note))
        out.extend(unexpected_notes(self.eng.index))
        return out

    def _announce(self, old: BatchScoreboard | None, new: BatchScoreboard) -> None:
        """Attention you cannot miss: a step newly stuck / needs_attention / failed, and a
        batch that has nothing left to run (headless log lines, dashboard alerts)."""
        if old is None:
            return  # first sight of a batch (engine start): old news is not announced
        seen = {(a.job_id, a.step_id, a.kind) for a in old.attention}
        for a in new.attention:
            if (a.job_id, a.step_id, a.kind) not in seen:
                self.eng.emit(EngineEvent("attention", new.computed_at, new.batch_id, a.job_id,
                                          a.step_id, a.run_id, a.kind, detail=a.detail))
        c = new.counts
        finished = c.running == 0 and c.ready == 0 and new.steps_total > 0
        was = old.counts.running == 0 and old.counts.ready == 0
        if finished and not was:
            self.eng.emit(EngineEvent(
                "batch_finished", new.computed_at, new.batch_id, status="finished",
                detail=f"{c.succeeded}/{new.steps_total} succeeded, {c.failed} failed, "
                f"{c.needs_attention} needs_attention, {c.canceled} canceled, "
                f"{c.blocked} blocked"))
