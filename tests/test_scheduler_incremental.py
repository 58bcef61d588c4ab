"""The engine's incremental scheduler (ReadySet) must pick exactly what a full pass picks.

Why: it recomputes readiness only for jobs it was told changed; a wrong answer means a step
that never starts or one that starts twice. Random batches (the readiness property
strategies) go through random histories — attempts appearing, starting, ending, batches
closing, the clock passing backoffs — and after every change both answers are compared.
The engine does the same comparison on every wake when PHH_CHECK_SCHEDULER=1 (conftest).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from test_readiness_props import NOW, batch_views

from phh_engine.derive.scheduler import Caps, ReadySet, Selection, running_counts, select
from phh_engine.models import AttemptState
from phh_engine.store.views import AttemptView, BatchView

props = settings(deadline=None, max_examples=60)


def _key(sel: Selection) -> list[tuple[str, str, str, str]]:
    return [(c.batch.batch_id, c.job.job_id, c.step.step_id, c.readiness.trigger)
            for c in sel.start]


def _compare(rs: ReadySet, batches: dict[str, BatchView], now: object, free: int) -> None:
    rs.refresh(batches, now, "r1", None)  # type: ignore[arg-type]
    by_batch, by_dir = running_counts(batches.values())
    assert {k: v for k, v in rs.running_by_batch.items() if v} == by_batch
    assert {k: v for k, v in rs.running_by_workdir.items() if v} == by_dir
    caps = Caps(free_slots=free, runner_id="r1", running_by_batch=by_batch,
                running_by_workdir=by_dir, per_workdir=2)
    full = select(batches.values(), now, caps)  # type: ignore[arg-type]
    inc = rs.select(batches, replace(caps))
    assert _key(inc) == _key(full)
    assert inc.next_wakeup == full.next_wakeup


def _new_attempt(batch: BatchView, job_id: str, step_id: str, k: int, status: str,
                 now: object) -> AttemptView:
    run_id = f"{job_id}.{step_id}.n{k}"
    dir_name = f"20260115T{k:06d}Z_{run_id}"
    terminal = status not in ("queued", "running")
    state = AttemptState(
        batch_id=batch.batch_id, job_id=job_id, step_id=step_id, run_id=run_id,
        runner_id="r1", status=status, updated_at=now, started_at=now,  # type: ignore[arg-type]
        ended_at=now if terminal else None,  # type: ignore[arg-type]
        failure_class="transient" if status == "failed" else None,
    )
    return AttemptView(run_id, dir_name, Path("/runs", dir_name), state=state,
                       resume_base_ready=terminal)


@props
@given(st.data(), batch_views("b1"), batch_views("b2"))
def test_incremental_selection_equals_a_full_pass(data: st.DataObject, b1: BatchView,
                                                  b2: BatchView) -> None:
    batches = {"b1": b1, "b2": b2}
    rs = ReadySet()
    now = NOW
    _compare(rs, batches, now, data.draw(st.integers(0, 6)))
    for k in range(data.draw(st.integers(1, 12))):
        action = data.draw(st.sampled_from(["start", "end", "close", "time", "mark"]))
        batch = batches[data.draw(st.sampled_from(sorted(batches)))]
        job = batch.jobs[data.draw(st.sampled_from(sorted(batch.jobs)))]
        step = job.steps[data.draw(st.sampled_from(sorted(job.steps)))]
        if action == "start":
            step.add_attempt(_new_attempt(batch, job.job_id, step.step_id, k, "running", now))
            rs.touch(batch.batch_id, job.job_id)
        elif action == "end" and step.in_flight is not None:
            att = step.in_flight
            att.state = (att.state or _new_attempt(batch, job.job_id, step.step_id, k,
                                                   "running", now).state)
            assert att.state is not None
            att.state = att.state.model_copy(update={
                "status": data.draw(st.sampled_from(["succeeded", "failed", "canceled"])),
                "ended_at": now, "failure_class": "transient"})
            att.resume_base_ready = True
            rs.touch(batch.batch_id, job.job_id)
        elif action == "close":
            batch.closed = not batch.closed  # noticed without a touch
        elif action == "time":
            now = now + timedelta(seconds=data.draw(st.integers(1, 4000)))
        elif action == "mark":
            step.marks.force_retry = not step.marks.force_retry
            rs.touch_all()  # what the engine does after applying any override
        _compare(rs, batches, now, data.draw(st.integers(0, 6)))


@settings(deadline=None, max_examples=10)
@given(batch_views("b1"))
def test_only_touched_jobs_are_recomputed(b: BatchView) -> None:
    """The point of it: a wake after one attempt ends reads one job, not the batch."""
    rs = ReadySet()
    rs.refresh({"b1": b}, NOW, "r1", None)
    computed: list[str] = []
    orig = rs._compute

    def spy(batch: BatchView, job: object, now: object, runner_id: str | None) -> None:
        computed.append(job.job_id)  # type: ignore[attr-defined]
        orig(batch, job, now, runner_id)  # type: ignore[arg-type]

    rs._compute = spy  # type: ignore[method-assign]
    first = next(iter(b.jobs))
    rs.touch("b1", first)
    rs.refresh({"b1": b}, NOW, "r1", None)
    assert computed == [first]
