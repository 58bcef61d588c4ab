"""What the dashboard draws, derived from the StoreIndex views with the engine's own pure
scoreboard functions (so the TUI, CLI, API and scoreboard files agree), plus what changed
since the last look (alerts). No Textual here: the app computes a Board in a thread worker and
applies it on the UI thread.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from phh_engine.derive.scoreboards import batch_scoreboard, system_scoreboard
from phh_engine.models import BatchScoreboard, RunnerHealth, SystemScoreboard
from phh_engine.store.views import BatchView

ATTENTION_KINDS = ("stuck", "needs_attention", "failed")
TERMINAL_STEP_STATUSES = ("succeeded", "failed", "needs_attention", "canceled")
RATE_WINDOW_SECONDS = 300.0


@dataclass(frozen=True, slots=True)
class Alert:
    """Something an operator must not miss: a step turned stuck/needs_attention/failed, or a
    batch finished."""

    kind: str  # stuck | needs_attention | failed | batch_finished
    batch_id: str
    message: str
    job_id: str | None = None
    step_id: str | None = None


@dataclass(frozen=True, slots=True)
class Progress:
    done: int
    total: int
    finished: bool
    eta_seconds: float | None
    #: since the batch's first attempt started (until its last ended, once finished)
    elapsed_seconds: float | None


@dataclass(slots=True)
class Board:
    computed_at: datetime
    batches: dict[str, BatchScoreboard] = field(default_factory=dict)
    progress: dict[str, Progress] = field(default_factory=dict)
    system: SystemScoreboard | None = None
    #: attempts that ended in the last RATE_WINDOW_SECONDS, per minute
    steps_per_minute: float = 0.0
    #: seconds the last compute took (the app throttles on it)
    cost_seconds: float = 0.0
    #: runners/*/health.json as last read (the app re-reads them on full refreshes)
    runners: list[RunnerHealth] = field(default_factory=list)


def finished(sb: BatchScoreboard) -> bool:
    """Nothing running and nothing ready (or waiting for a retry backoff): the batch is done,
    whatever is left is blocked for good or needs an operator."""
    c = sb.counts
    return sb.steps_total > 0 and c.running == 0 and c.ready == 0


def progress(batch: BatchView, sb: BatchScoreboard, now: datetime) -> Progress:
    """Done/total and an ETA from the batch's own pace (steps done per second since its first
    attempt started)."""
    c = sb.counts
    done = c.succeeded + c.failed + c.needs_attention + c.canceled
    first: datetime | None = None
    last: datetime | None = None
    for _, step in batch.steps():
        for a in step.attempts:
            s, e = a.started_at, a.ended_at
            if s is not None and (first is None or s < first):
                first = s
            if e is not None and (last is None or e > last):
                last = e
    fin = finished(sb)
    end = last if fin and last is not None else now
    elapsed = (end - first).total_seconds() if first is not None else None
    eta: float | None = None
    if not fin and done and elapsed and elapsed > 0:
        eta = (sb.steps_total - done) * elapsed / done
    return Progress(done=done, total=sb.steps_total, finished=fin, eta_seconds=eta,
                    elapsed_seconds=elapsed)


def _step_states(sb: BatchScoreboard) -> dict[tuple[str, str], tuple[str, bool]]:
    return {(r.job_id, r.step_id): (r.status, r.stuck) for r in sb.steps}


def alerts_between(old: BatchScoreboard, new: BatchScoreboard) -> list[Alert]:
    out: list[Alert] = []
    before = _step_states(old)
    for row in new.steps:
        prev = before.get((row.job_id, row.step_id))
        if prev is None:
            continue
        status, stuck = prev
        where = f"{row.job_id}.{row.step_id}"
        if row.stuck and not stuck:
            out.append(Alert("stuck", new.batch_id, f"{where} is stuck: no heartbeat for over "
                             f"{new.heartbeat_stale_after_seconds:g}s", row.job_id, row.step_id))
        if row.status != status and row.status in ("needs_attention", "failed"):
            why = f": {row.reasons[0]}" if row.reasons else ""
            out.append(Alert(row.status, new.batch_id, f"{where} {row.status}{why}",
                             row.job_id, row.step_id))
    if finished(new) and not finished(old):
        c = new.counts
        out.append(Alert("batch_finished", new.batch_id,
                         f"{new.batch_id} finished: {c.succeeded}/{new.steps_total} succeeded"
                         + (f", {len(new.attention)} need attention" if new.attention else "")))
    return out


def _rate(batches: Iterable[BatchView], now: datetime) -> float:
    n = 0
    for batch in batches:
        for _, step in batch.steps():
            for a in reversed(step.attempts):
                end = a.ended_at
                if end is None:
                    continue
                age = (now - end).total_seconds()
                if 0 <= age <= RATE_WINDOW_SECONDS:
                    n += 1
                elif age > RATE_WINDOW_SECONDS:
                    break
    return n * 60.0 / RATE_WINDOW_SECONDS


RUNNER_FRESH_SECONDS = 60.0


def live_runners(runners: Iterable[RunnerHealth], now: datetime) -> list[RunnerHealth]:
    """Runners whose health snapshot is recent (an engine serves them)."""
    return [r for r in runners
            if 0 <= (now - r.last_seen_at).total_seconds() <= RUNNER_FRESH_SECONDS]


def compute_board(
    views: Mapping[str, BatchView], now: datetime, previous: Board | None = None,
    dirty: set[str] | None = None, beat_ages: Mapping[str, float] | None = None,
    extra_rows: Iterable[str] = (),
) -> tuple[Board, list[Alert]]:
    """Recompute the scoreboards of `dirty` batches (all when None; batches new since
    `previous` always), reuse the rest, and list the alerts the changes raise. `beat_ages`:
    monotonic heartbeat ages of attempts this process monitors (see `batch_scoreboard`).
    `extra_rows`: system rows (SystemRow JSON) of batches not in `views` (settled, from the
    catalog): listed on the system screen, without a batch scoreboard in `batches`."""
    board = Board(computed_at=now, runners=list(previous.runners) if previous else [])
    alerts: list[Alert] = []
    old = previous.batches if previous else {}
    for bid, view in views.items():
        prev = old.get(bid)
        if prev is not None and dirty is not None and bid not in dirty and previous:
            board.batches[bid] = prev
            if bid in previous.progress:
                board.progress[bid] = previous.progress[bid]
                continue
        sb = batch_scoreboard(view, now, beat_ages=beat_ages)
        board.batches[bid] = sb
        board.progress[bid] = progress(view, sb, now)
        if prev is not None:
            alerts.extend(alerts_between(prev, sb))
    board.system = system_scoreboard(views.values(), now, board.batches,
                                     extra_rows=extra_rows)
    board.steps_per_minute = _rate(views.values(), now)
    return board, alerts
