"""Pure selection: which ready steps start now, within every cap, fair across batches."""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from ..store.views import BatchView, JobView, StepView
from .candidates import in_flight_count
from .readiness import Readiness, step_readiness


@dataclass(slots=True)
class Candidate:
    batch: BatchView
    job: JobView
    step: StepView
    readiness: Readiness


@dataclass(slots=True)
class Selection:
    start: list[Candidate] = field(default_factory=list)
    #: the earliest backoff expiry among ready-but-waiting steps (when to look again)
    next_wakeup: datetime | None = None
    #: steps that could run but got no slot
    waiting: int = 0


@dataclass(slots=True)
class Caps:
    free_slots: int
    runner_id: str | None = None
    running_by_batch: dict[str, int] = field(default_factory=dict)
    running_by_workdir: dict[str, int] = field(default_factory=dict)
    per_workdir: int = 1
    #: runners with fresh health that accept work; None = unknown (affinity is then strict)
    available_runners: set[str] | None = None


def runs_here(job: JobView, step: StepView, runner_id: str | None,
              available_runners: set[str] | None = None) -> bool:
    """Runner affinity: a requeue target, a pinned runner, or the runner of another step.

    `same_runner_as` is a preference (the store is shared): when that runner is stale, stopped
    or draining (not in `available_runners`), any runner may take the step. An explicit
    `runner_id` or a requeue target stays pinned."""
    if runner_id is None:
        return True
    if step.marks.requeue_runner:
        return step.marks.requeue_runner == runner_id
    aff = step.spec.runner_affinity
    if aff is None:
        return True
    if aff.runner_id:
        return aff.runner_id == runner_id
    if aff.same_runner_as:
        other = job.steps.get(aff.same_runner_as)
        src = (other.latest_successful or other.latest) if other else None
        if src is None or src.runner_id in (None, runner_id):
            return True
        return available_runners is not None and src.runner_id not in available_runners
    return True


def running_counts(batches: Iterable[BatchView]) -> tuple[dict[str, int], dict[str, int]]:
    """Steps in flight per batch and per shared working directory (isolated jobs use their
    own checkout): a full walk, the reference for ReadySet's running sums."""
    by_batch: dict[str, int] = {}
    by_dir: dict[str, int] = {}
    for batch in batches:
        for job, step in batch.steps():
            n = in_flight_count(step)  # best-of-N: one slot per running candidate
            if n:
                by_batch[batch.batch_id] = by_batch.get(batch.batch_id, 0) + n
                if job.spec.workspace_policy == "shared":
                    wd = job.spec.working_directory
                    by_dir[wd] = by_dir.get(wd, 0) + 1
    return by_batch, by_dir


def runnable_in(batch: BatchView, now: datetime, runner_id: str | None = None,
                available_runners: set[str] | None = None
                ) -> tuple[list[Candidate], datetime | None]:
    """Every step of a batch that may start now, in job/step order, plus the next backoff."""
    out: list[Candidate] = []
    wake: datetime | None = None
    for job in batch.jobs.values():
        for step in job.steps.values():
            r = step_readiness(batch, job, step, now)
            if r.status != "ready" or not runs_here(job, step, runner_id, available_runners):
                continue
            if r.runnable:
                out.extend(Candidate(batch, job, step, s) for s in (r.starts or [r]))
            elif r.not_before is not None and (wake is None or r.not_before < wake):
                wake = r.not_before
    return out, wake


def select(batches: Iterable[BatchView], now: datetime, caps: Caps) -> Selection:
    """Round-robin over batches (fewest running first), so one huge batch cannot starve
    the others; per-batch `concurrency` and the per-working-directory limit (shared
    workspaces) are respected. The reference the incremental ReadySet must agree with."""
    sel = Selection()
    queues: list[tuple[BatchView, Iterator[Candidate], int]] = []
    for batch in batches:
        cands, wake = runnable_in(batch, now, caps.runner_id, caps.available_runners)
        if wake is not None and (sel.next_wakeup is None or wake < sel.next_wakeup):
            sel.next_wakeup = wake
        if cands:
            queues.append((batch, iter(cands), len(cands)))
    _fill(sel, queues, caps)
    return sel


def _fill(sel: Selection, queues: list[tuple[BatchView, Iterator[Candidate], int]],
          caps: Caps) -> None:
    """Take candidates round-robin until the slots run out; reads only as far as it takes."""
    queues.sort(key=lambda q: (caps.running_by_batch.get(q[0].batch_id, 0),
                               q[0].meta.submitted_at))
    by_batch = dict(caps.running_by_batch)
    by_dir = dict(caps.running_by_workdir)
    free = caps.free_slots
    taken = [0] * len(queues)
    live = [True] * len(queues)
    progressed = True
    while free > 0 and progressed:
        progressed = False
        for i, (batch, cands, _) in enumerate(queues):
            if free <= 0:
                break
            if not live[i]:
                continue
            limit = batch.meta.effective_defaults.concurrency
            allow_dir = batch.meta.effective_defaults.allow_shared_directory_concurrency
            if limit is not None and by_batch.get(batch.batch_id, 0) >= limit:
                live[i] = False
                continue
            for c in cands:
                taken[i] += 1
                wd = c.job.spec.working_directory
                shared = c.job.spec.workspace_policy == "shared" and not allow_dir
                if shared and by_dir.get(wd, 0) >= caps.per_workdir:
                    continue
                sel.start.append(c)
                by_batch[batch.batch_id] = by_batch.get(batch.batch_id, 0) + 1
                if shared:
                    by_dir[wd] = by_dir.get(wd, 0) + 1
                free -= 1
                progressed = True
                break
            else:
                live[i] = False
    sel.waiting = sum(n - t for (_, _, n), t in zip(queues, taken, strict=True))


@dataclass(slots=True)
class _JobEntry:
    cands: list[Candidate]
    wake: datetime | None
    running: int
    #: the job's shared working directory while any of its steps is in flight
    shared_dir: str | None


class ReadySet:
    """select() that recomputes readiness only for jobs that changed since the last wake.

    A full pass costs O(all steps) and runs once per wake (each attempt's end), which made a
    batch O(steps^2). Here the engine reports what changed (`touch*`); readiness is
    per job (dependencies and resume sources never cross jobs), so only touched jobs and
    jobs whose backoff expired are recomputed, and running counts are kept as running sums.
    Batches appearing or going and closed flags are noticed here (a rebuild); anything else
    the engine cannot pin to a job (operator marks, runner availability) is a `touch_all()`.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple[str, str], _JobEntry] = {}
        self._ready: dict[str, dict[int, list[Candidate]]] = {}
        self._ready_order: dict[str, list[int]] = {}
        self._ncands: dict[str, int] = {}
        self._order: dict[str, dict[str, int]] = {}
        self._dirty: set[tuple[str, str]] = set()
        self._all = True
        self._wakes: list[tuple[datetime, str, str]] = []
        #: the batches (and their closed flags) the entries were computed for
        self._known: dict[str, tuple[BatchView, bool]] = {}
        self._available: set[str] | None = None
        self.running_by_batch: dict[str, int] = {}
        self.running_by_workdir: dict[str, int] = {}

    def touch(self, batch_id: str, job_id: str) -> None:
        self._dirty.add((batch_id, job_id))

    def touch_all(self) -> None:
        self._all = True

    # ------------------------------------------------------------ upkeep
    def refresh(self, batches: dict[str, BatchView], now: datetime, runner_id: str | None,
                available_runners: set[str] | None) -> None:
        """Bring entries up to date with the index: O(changed jobs + expired backoffs)."""
        if available_runners != self._available:
            self._available = set(available_runners) if available_runners is not None else None
            self._all = True
        if self._all or batches.keys() != self._known.keys() or any(
                batches[b] is not v or batches[b].closed != closed
                for b, (v, closed) in self._known.items()):
            self._rebuild(batches)
        while self._wakes and self._wakes[0][0] <= now:
            _, bid, jid = heapq.heappop(self._wakes)
            self._dirty.add((bid, jid))
        dirty, self._dirty = self._dirty, set()
        for bid, jid in dirty:
            batch = batches.get(bid)
            job = batch.jobs.get(jid) if batch is not None else None
            if batch is not None and job is not None:
                self._compute(batch, job, now, runner_id)

    def _rebuild(self, batches: dict[str, BatchView]) -> None:
        self._entries.clear()
        self._ready.clear()
        self._ready_order.clear()
        self._ncands.clear()
        self._wakes.clear()
        self.running_by_batch.clear()
        self.running_by_workdir.clear()
        self._known = {bid: (b, b.closed) for bid, b in batches.items()}
        self._order = {bid: {jid: i for i, jid in enumerate(b.jobs)}
                       for bid, b in batches.items()}
        self._dirty = {(bid, jid) for bid, b in batches.items() for jid in b.jobs}
        self._all = False

    def _compute(self, batch: BatchView, job: JobView, now: datetime,
                 runner_id: str | None) -> None:
        bid, jid = batch.batch_id, job.job_id
        cands: list[Candidate] = []
        wake: datetime | None = None
        running = 0
        for step in job.steps.values():
            r = step_readiness(batch, job, step, now)
            running += in_flight_count(step)  # best-of-N: one slot per running candidate
            if r.status != "ready" or not runs_here(job, step, runner_id, self._available):
                continue
            if r.runnable:
                cands.extend(Candidate(batch, job, step, s) for s in (r.starts or [r]))
            elif r.not_before is not None and (wake is None or r.not_before < wake):
                wake = r.not_before
        shared_dir = job.spec.working_directory if (
            running and job.spec.workspace_policy == "shared") else None
        old = self._entries.get((bid, jid))
        if old is not None:
            self._count(bid, old.running, old.shared_dir, -1)
        self._count(bid, running, shared_dir, +1)
        self._entries[(bid, jid)] = _JobEntry(cands, wake, running, shared_dir)
        if wake is not None:
            heapq.heappush(self._wakes, (wake, bid, jid))
        idx = self._order[bid][jid]
        ready = self._ready.setdefault(bid, {})
        order = self._ready_order.setdefault(bid, [])
        if cands and idx not in ready:
            bisect.insort(order, idx)
        elif not cands and idx in ready:
            del order[bisect.bisect_left(order, idx)]
        gone = ready.pop(idx, None)
        self._ncands[bid] = self._ncands.get(bid, 0) - len(gone or ()) + len(cands)
        if cands:
            ready[idx] = cands

    def _count(self, bid: str, running: int, shared_dir: str | None, sign: int) -> None:
        if not running:
            return
        self.running_by_batch[bid] = self.running_by_batch.get(bid, 0) + sign * running
        if shared_dir is not None:
            self.running_by_workdir[shared_dir] = (
                self.running_by_workdir.get(shared_dir, 0) + sign * running)

    # ------------------------------------------------------------ selection
    def next_wakeup(self) -> datetime | None:
        """The earliest pending backoff (stale heap entries are dropped on the way)."""
        while self._wakes:
            wake, bid, jid = self._wakes[0]
            entry = self._entries.get((bid, jid))
            if entry is not None and entry.wake == wake:
                return wake
            heapq.heappop(self._wakes)
        return None

    def select(self, batches: dict[str, BatchView], caps: Caps) -> Selection:
        """Same answer as `select()` after `refresh()`; reads only the ready jobs it takes."""
        sel = Selection(next_wakeup=self.next_wakeup())
        queues: list[tuple[BatchView, Iterator[Candidate], int]] = []
        for bid, batch in batches.items():  # index order: the tie-break of a full pass
            ready = self._ready.get(bid)
            if ready:
                queues.append((batch, _walk(ready, self._ready_order[bid]), self._ncands[bid]))
        _fill(sel, queues, caps)
        return sel


def _walk(ready: dict[int, list[Candidate]], order: list[int]) -> Iterator[Candidate]:
    for idx in order:  # nothing changes the order while a selection walks it
        yield from ready[idx]


def check_incremental(batches: Iterable[BatchView], sel: Selection, caps: Caps,
                      now: datetime) -> None:
    """PHH_CHECK_SCHEDULER=1 (the test suite): the incremental answer (`ReadySet.select`)
    must equal a full pass over `batches`; a missed `touch` would otherwise show up as a step
    that silently never starts. Raises AssertionError naming both answers."""
    batches = list(batches)
    by_batch, by_dir = running_counts(batches)
    full = select(batches, now, Caps(
        free_slots=caps.free_slots, runner_id=caps.runner_id,
        available_runners=caps.available_runners, per_workdir=caps.per_workdir,
        running_by_batch=by_batch, running_by_workdir=by_dir))

    def key(s: Selection) -> list[tuple[str, str, str, str]]:
        return [(c.batch.batch_id, c.job.job_id, c.step.step_id, c.readiness.trigger)
                for c in s.start]

    got = ({k: v for k, v in caps.running_by_batch.items() if v},
           {k: v for k, v in caps.running_by_workdir.items() if v}, key(sel), sel.next_wakeup)
    want = (by_batch, by_dir, key(full), full.next_wakeup)
    if got != want:
        raise AssertionError(f"incremental scheduler disagrees with a full pass:\n"
                             f"  incremental {got}\n  full        {want}")
