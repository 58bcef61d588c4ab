"""A placement hold (engine/placement.py: a cluster has no node for the step now) on any step
of any batch: a step that would start now does not, shows the runner's reason and wakes when
the hold ends; an expired hold changes nothing; nothing else about the step changes."""

from __future__ import annotations

import dataclasses
from datetime import timedelta

from hypothesis import given
from hypothesis import strategies as st
from test_readiness_props import NOW, batch_views, props

from phh_engine.derive.readiness import step_readiness
from phh_engine.store.views import BatchView

REASON = "waiting for a Ray node that can see the resume source /x (not visible from: a)"


@props
@given(batch_views(), st.integers(1, 600), st.booleans())
def test_a_hold_stops_only_a_start_and_says_why(batch: BatchView, secs: int,
                                                operator_resume: bool) -> None:
    for job in batch.jobs.values():
        for step in job.steps.values():
            if operator_resume and step.attempts:
                step.marks.resume_run_id = step.attempts[0].run_id
            free = step_readiness(batch, job, step, NOW)
            until = NOW + timedelta(seconds=secs)
            step.marks.placement_hold, step.marks.placement_until = REASON, until
            held = step_readiness(batch, job, step, NOW)
            if free.runnable:
                assert held.status == "ready" and not held.runnable
                assert held.reasons == [*free.reasons, REASON]
                assert held.not_before == until
                assert (held.trigger, held.retry_of, held.resume) == (
                    free.trigger, free.retry_of, free.resume)
            else:  # a hold never changes a step that would not start anyway
                assert dataclasses.astuple(held) == dataclasses.astuple(free)
            step.marks.placement_until = NOW  # expired: as if there were none
            assert dataclasses.astuple(step_readiness(batch, job, step, NOW)) == \
                dataclasses.astuple(free)
            step.marks.placement_hold = step.marks.placement_until = None
