"""Property tests of the pure derivations: step status, readiness, retries, selectors, ordering.

Why: the scheduler trusts these to never start a step twice, never start one too early and
never hide one from the operator. Random small batches (random step DAGs, attempt histories,
operator marks) find the corner cases hand-written examples miss. No disk involved.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import get_args

from hypothesis import given, settings
from hypothesis import strategies as st

from phh_engine.derive.readiness import (
    counted_attempts,
    is_stuck,
    resolve_resume_source,
    retry_delay_seconds,
    step_readiness,
)
from phh_engine.derive.scoreboards import batch_scoreboard, system_scoreboard
from phh_engine.models import (
    STEP_STATUSES,
    AttemptState,
    BatchMeta,
    EffectiveDefaults,
    ExecutionPolicy,
    FailureClass,
    NormalizedJob,
    NormalizedStep,
    ResumeFrom,
    RetentionPolicy,
    RetryPolicy,
    Timeouts,
)
from phh_engine.models.common import UNCOUNTED_FAILURE_CLASSES
from phh_engine.store.views import AttemptView, BatchView, JobView, StepView

NOW = datetime(2026, 1, 14, 18, 0, tzinfo=UTC)
FAILURE_CLASSES: list[str] = list(get_args(FailureClass))
ATTEMPT_STATUSES = ["queued", "running", "succeeded", "failed", "canceled", "needs_attention"]
TERMINATION_REASONS = ["exit", "timeout", "canceled", "runner_lost", "schema_invalid"]
SELECTORS = ["latest_successful", "latest", "run_id"]

# module-local settings (a loaded profile would leak into every other test module)
props = settings(deadline=None, max_examples=80)

finite = {"allow_nan": False, "allow_infinity": False}
retry_policies = st.builds(
    RetryPolicy,
    max_attempts=st.integers(1, 4),
    backoff_seconds=st.floats(0, 120, **finite),
    backoff_factor=st.floats(1, 4, **finite),
    backoff_max_seconds=st.floats(0, 1200, **finite),
    retry_on=st.lists(st.sampled_from(FAILURE_CLASSES), unique=True),
)


def _defaults(stale: float) -> EffectiveDefaults:
    return EffectiveDefaults(
        execution_policy=ExecutionPolicy(), timeouts=Timeouts(), retries=RetryPolicy(),
        retention_policy=RetentionPolicy(), workspace_policy="shared",
        heartbeat_stale_after_seconds=stale,
    )


@st.composite
def attempt_views(draw: st.DrawFn, batch_id: str, job_id: str, step_id: str, k: int
                  ) -> AttemptView:
    run_id = f"{job_id}.{step_id}.a{k}"
    dir_name = f"20260114T{k:06d}Z_{run_id}"
    path = Path("/runs", batch_id, job_id, "steps", step_id, "attempts", dir_name)
    base_ready = draw(st.booleans())
    if draw(st.integers(0, 9)) == 0:  # state.json not written yet
        return AttemptView(run_id, dir_name, path, resume_base_ready=base_ready)
    status = draw(st.sampled_from(ATTEMPT_STATUSES))
    started_ago = draw(st.integers(0, 10_000))
    started = NOW - timedelta(seconds=started_ago) if status != "queued" else None
    terminal = status not in ("queued", "running")
    ended = (NOW - timedelta(seconds=draw(st.integers(0, started_ago)))) if terminal else None
    if terminal and draw(st.integers(0, 9)) == 0:
        ended = None  # a legacy/corrupt state.json must not crash the derivations
    beat = None
    if status == "running" and draw(st.booleans()):
        beat = NOW - timedelta(seconds=draw(st.integers(0, min(started_ago, 6000))))
    failure = draw(st.none() | st.sampled_from(FAILURE_CLASSES)) if terminal else None
    state = AttemptState(
        batch_id=batch_id, job_id=job_id, step_id=step_id, run_id=run_id, runner_id="r1",
        status=status, updated_at=NOW, started_at=started, ended_at=ended,
        last_heartbeat_at=beat, failure_class=failure,
        termination_reason=draw(st.none() | st.sampled_from(TERMINATION_REASONS))
        if terminal else None,
    )
    return AttemptView(run_id, dir_name, path, state=state, resume_base_ready=base_ready)


@st.composite
def batch_views(draw: st.DrawFn, batch_id: str = "b1") -> BatchView:
    normalized = draw(st.booleans())  # resume_from implies depends_on after normalisation
    jobs: list[NormalizedJob] = []
    for j in range(draw(st.integers(1, 3))):
        job_id = f"job_{j:02d}"
        steps: list[NormalizedStep] = []
        for i in range(draw(st.integers(1, 5))):
            earlier = [f"step{n}" for n in range(i)]
            deps = draw(st.lists(st.sampled_from(earlier), unique=True)) if earlier else []
            rf = None
            if earlier and draw(st.booleans()):
                src = draw(st.sampled_from(earlier))
                sel = draw(st.sampled_from(SELECTORS))
                rid = f"{job_id}.{src}.a{draw(st.integers(0, 3))}" if sel == "run_id" else None
                rf = ResumeFrom(step_id=src, selector=sel, run_id=rid)
                if normalized and src not in deps:
                    deps.append(src)
            steps.append(NormalizedStep(
                step_id=f"step{i}", prompt="p", prompt_sha256="0" * 64, depends_on=deps,
                resume_from=rf, timeout_seconds=600, retry_policy=draw(retry_policies),
            ))
        jobs.append(NormalizedJob(job_id=job_id, working_directory="/w",
                                  workspace_policy="shared", steps=steps))
    meta = BatchMeta(
        batch_id=batch_id, submitted_at=NOW - timedelta(seconds=draw(st.integers(0, 10**6))),
        harness_config_version="hc", batch_goal_summary="Goal. More.",
        launch_table_sha256="0" * 64, working_root="/w", jobs=jobs,
        effective_defaults=_defaults(draw(st.sampled_from([1800.0, 2700.0]))),
    )
    batch = BatchView.from_meta(meta)
    batch.closed = draw(st.booleans())
    for job in batch.jobs.values():
        for step in job.steps.values():
            attempts = [draw(attempt_views(batch_id, job.job_id, step.step_id, k))
                        for k in range(draw(st.integers(0, 4)))]
            for a in draw(st.permutations(attempts)):  # arrival order must not matter
                step.add_attempt(a)
            step.marks.marked_failed = draw(st.none() | st.just("operator said so"))
            step.marks.force_retry = draw(st.booleans())
    return batch


def _all(batch: BatchView) -> list[tuple[JobView, StepView]]:
    return [(j, s) for j in batch.jobs.values() for s in j.steps.values()]


def _succeeded(step: StepView | None) -> bool:
    return step is not None and any(a.status == "succeeded" for a in step.attempts)


@props
@given(batch_views())
def test_every_step_has_exactly_one_status_and_counts_add_up(batch: BatchView) -> None:
    sb = batch_scoreboard(batch, NOW)
    assert sb.steps_total == len(_all(batch)) == len(sb.steps)
    counts = sb.counts.model_dump()
    assert set(counts) == set(STEP_STATUSES)
    assert sum(counts.values()) == sb.steps_total
    for status in STEP_STATUSES:
        assert counts[status] == sum(1 for r in sb.steps if r.status == status)
    assert len(sb.blocked) == counts["blocked"] and len(sb.running) == counts["running"]


@props
@given(batch_views())
def test_success_and_in_flight_decide_status_first(batch: BatchView) -> None:
    for job, step in _all(batch):
        status = step_readiness(batch, job, step, NOW).status
        if step.in_flight is not None:
            assert status == "running"
        elif _succeeded(step):
            assert status == "succeeded"
        else:
            assert status not in ("running", "succeeded")


@props
@given(batch_views())
def test_runnable_step_is_safe_to_start(batch: BatchView) -> None:
    for job, step in _all(batch):
        r = step_readiness(batch, job, step, NOW)
        if not r.runnable:
            continue
        assert r.status == "ready"
        assert not batch.closed
        assert step.in_flight is None and not _succeeded(step)
        assert not step.marks.marked_failed
        for dep in step.spec.depends_on:
            assert _succeeded(job.steps.get(dep)), dep
        if step.spec.resume_from is not None:
            assert r.resume is not None and r.resume.source is not None
            assert r.resume.source.resume_base_ready and r.resume.source.terminal
        assert r.not_before is None or r.not_before <= NOW


@props
@given(batch_views())
def test_unsatisfied_dependency_blocks_and_is_named(batch: BatchView) -> None:
    for job, step in _all(batch):
        r = step_readiness(batch, job, step, NOW)
        missing = [d for d in step.spec.depends_on if not _succeeded(job.steps.get(d))]
        if r.status == "ready":
            assert not missing
        if missing and r.status in ("ready", "blocked"):
            assert r.status == "blocked"
            for dep in missing:
                assert any(f"depends_on: {job.job_id}.{dep} " in x for x in r.reasons), r.reasons
        if r.status == "blocked":
            assert r.reasons


@props
@given(batch_views())
def test_retry_budget_is_never_exceeded_without_force(batch: BatchView) -> None:
    for job, step in _all(batch):
        if step.in_flight is not None or _succeeded(step):
            continue
        r = step_readiness(batch, job, step, NOW)
        latest = step.latest
        # a usage limit or an engine shutdown says nothing about the step: never counted
        uncounted = latest is not None and latest.state is not None and (
            latest.state.failure_class in UNCOUNTED_FAILURE_CLASSES)
        if counted_attempts(step) >= step.spec.retry_policy.max_attempts and \
                not step.marks.force_retry and not uncounted:
            assert not r.runnable
            assert r.status in ("failed", "needs_attention", "canceled")


@props
@given(batch_views())
def test_force_retry_ignores_budget_and_backoff(batch: BatchView) -> None:
    for job, step in _all(batch):
        if (not step.attempts or step.in_flight is not None or _succeeded(step)
                or step.marks.marked_failed or not step.marks.force_retry or batch.closed):
            continue
        r = step_readiness(batch, job, step, NOW)
        assert r.status in ("ready", "blocked")
        assert r.runnable == (r.status == "ready")
        if r.runnable:
            assert r.trigger == "operator_retry" and r.retry_of is step.latest


@settings(deadline=None, max_examples=300)
@given(
    retry_policies,
    st.integers(1, 5000),
    st.none() | st.sampled_from(FAILURE_CLASSES),
)
def test_backoff_is_monotonic_and_capped(policy: RetryPolicy, n: int, fc: str | None) -> None:
    cap = max(policy.backoff_max_seconds, policy.backoff_seconds)
    a = retry_delay_seconds(policy, n, fc)
    b = retry_delay_seconds(policy, n + 1, fc)
    assert 0 <= a <= b <= cap


@props
@given(batch_views())
def test_selectors_are_deterministic(batch: BatchView) -> None:
    for job, step in _all(batch):
        if step.attempts:
            assert step.latest is max(step.attempts, key=lambda a: a.dir_name)
        done = [a for a in step.attempts if a.status == "succeeded"]
        best = step.latest_successful
        if not done:
            assert best is None
            continue
        assert best is not None
        ends = [a.ended_at for a in done if a.ended_at is not None]
        latest_end = max(ends) if ends else None
        assert best.ended_at == latest_end
        # ties go to the later start
        assert best is max((a for a in done if a.ended_at == latest_end),
                           key=lambda a: a.dir_name)
        for selector in ("latest_successful", "latest"):
            res = resolve_resume_source(job, step.step_id, selector)
            again = resolve_resume_source(job, step.step_id, selector)
            assert res == again
            expected = best if selector == "latest_successful" else step.latest
            if res.source is not None:
                assert res.source is expected and expected.resume_base_ready
            else:
                assert res.reason


@props
@given(batch_views())
def test_attention_is_stuck_then_needs_attention_then_failed(batch: BatchView) -> None:
    sb = batch_scoreboard(batch, NOW)
    stale = batch.meta.effective_defaults.heartbeat_stale_after_seconds
    rank = {"stuck": 0, "needs_attention": 1, "failed": 2}
    kinds = [rank[r.kind] for r in sb.attention]
    assert kinds == sorted(kinds)
    expected = set()
    for job, step in _all(batch):
        flight = step.in_flight
        status = step_readiness(batch, job, step, NOW).status
        if (flight is not None and is_stuck(flight, NOW, stale)) or status in rank:
            expected.add((job.job_id, step.step_id))
    listed = [(r.job_id, r.step_id) for r in sb.attention]
    assert len(listed) == len(set(listed)) and set(listed) == expected


@props
@given(st.lists(batch_views(), min_size=1, max_size=3))
def test_system_order_attention_then_running_then_newest(batches: list[BatchView]) -> None:
    for i, b in enumerate(batches):  # distinct ids
        b.meta = b.meta.model_copy(update={"batch_id": f"b{i}"})
    sys_sb = system_scoreboard(batches, NOW)
    assert sorted(r.batch_id for r in sys_sb.batches) == sorted(b.batch_id for b in batches)
    keys = [(r.attention_steps == 0, r.running_steps == 0, -r.submitted_at.timestamp())
            for r in sys_sb.batches]
    assert keys == sorted(keys)
    for r in sys_sb.batches:
        assert r.running_steps == r.counts.running
        assert r.attention_steps >= r.counts.failed + r.counts.needs_attention


# -- exact reason strings (docs/statuses.md#step-statuses examples)
# -------------------------------------------------

def _job09(*steps: NormalizedStep, closed: bool = False) -> tuple[BatchView, JobView]:
    meta = BatchMeta(
        batch_id="b1", submitted_at=NOW, harness_config_version="hc", batch_goal_summary="g",
        launch_table_sha256="0" * 64, working_root="/w",
        jobs=[NormalizedJob(job_id="job_09", working_directory="/w", workspace_policy="shared",
                            steps=list(steps))],
        effective_defaults=_defaults(2700),
    )
    batch = BatchView.from_meta(meta)
    batch.closed = closed
    return batch, batch.jobs["job_09"]


def _step(step_id: str, deps: list[str], rf: ResumeFrom | None = None) -> NormalizedStep:
    return NormalizedStep(step_id=step_id, prompt="p", prompt_sha256="0" * 64, depends_on=deps,
                          resume_from=rf, timeout_seconds=60, retry_policy=RetryPolicy())


def _done(job: JobView, step_id: str, run_id: str, base: bool) -> None:
    state = AttemptState(batch_id="b1", job_id=job.job_id, step_id=step_id, run_id=run_id,
                         runner_id="r1", status="succeeded", updated_at=NOW, started_at=NOW,
                         ended_at=NOW)
    job.steps[step_id].add_attempt(AttemptView(run_id, f"20260114T170000Z_{run_id}",
                                               Path("/runs", run_id), state=state,
                                               resume_base_ready=base))


def test_reason_depends_on_not_succeeded() -> None:
    batch, job = _job09(_step("step1", []), _step("step2", ["step1"]))
    r = step_readiness(batch, job, job.steps["step2"], NOW)
    assert (r.status, r.reasons, r.runnable) == (
        "blocked", ["depends_on: job_09.step1 not succeeded"], False)


def test_reason_resume_from_no_resume_base_yet() -> None:
    # hand-built wiring without the implied depends_on: the resume reason stands alone
    batch, job = _job09(_step("step1", []), _step("step2", [], ResumeFrom(step_id="step1")))
    r = step_readiness(batch, job, job.steps["step2"], NOW)
    assert (r.status, r.reasons) == (
        "blocked", ["resume_from: no resume base available yet for job_09.step1"])


def test_normalized_resume_says_depends_on_once() -> None:
    batch, job = _job09(_step("step1", []),
                        _step("step2", ["step1"], ResumeFrom(step_id="step1")))
    r = step_readiness(batch, job, job.steps["step2"], NOW)
    assert r.reasons == ["depends_on: job_09.step1 not succeeded"]


def test_resume_source_without_base_blocks_then_unblocks() -> None:
    batch, job = _job09(_step("step1", []),
                        _step("step2", ["step1"], ResumeFrom(step_id="step1")))
    _done(job, "step1", "ra", base=False)
    r = step_readiness(batch, job, job.steps["step2"], NOW)
    assert (r.status, r.reasons) == (
        "blocked", ["resume_from: attempt ra of job_09.step1 left no resume base"])
    _done(job, "step1", "rb", base=True)
    r = step_readiness(batch, job, job.steps["step2"], NOW)
    assert r.runnable and r.resume is not None and r.resume.source is not None
    assert r.resume.source.run_id == "rb"


def test_closed_batch_reason() -> None:
    batch, job = _job09(_step("step1", []), closed=True)
    r = step_readiness(batch, job, job.steps["step1"], NOW)
    assert (r.status, r.reasons, r.runnable) == ("blocked", ["batch closed"], False)
