"""Batch and system scoreboards (docs/statuses.md#step-statuses) on hand-built views.

Why: every interface (files, API, CLI, dashboard) shows these rows, so each field the SPEC names
is pinned here with exact values, including the stuck threshold at both 2700 s and 1800 s.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
import pytest

from phh_engine.derive.scoreboards import batch_scoreboard, goal_preview, system_scoreboard
from phh_engine.models import (
    AttemptMeta,
    AttemptState,
    BatchMeta,
    EffectiveDefaults,
    EnvironmentSnapshot,
    ExecutionPolicy,
    NormalizedJob,
    NormalizedStep,
    PolicySnapshot,
    ResumeFrom,
    ResumeSource,
    RetentionPolicy,
    RetryPolicy,
    RunReport,
    Timeouts,
    Usage,
)
from phh_engine.store.views import AttemptView, BatchView

NOW = datetime(2026, 1, 14, 18, 0, tzinfo=UTC)
ROOT = Path("/runs")
SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
GOAL = (
    "Fix the flaky payment tests across every service. Then make CI green again. "
    + "word " * 150
)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


def step(
    step_id: str, depends_on: list[str] | None = None, resume_from: ResumeFrom | None = None,
    max_attempts: int = 1,
) -> NormalizedStep:
    deps = list(depends_on or [])
    if resume_from and resume_from.step_id not in deps:
        deps.append(resume_from.step_id)  # normalisation makes resume_from imply depends_on
    return NormalizedStep(
        step_id=step_id, prompt="do it", prompt_sha256="0" * 64, depends_on=deps,
        resume_from=resume_from, timeout_seconds=600,
        retry_policy=RetryPolicy(max_attempts=max_attempts),
    )


def batch(
    jobs: dict[str, list[NormalizedStep]], batch_id: str = "b1", submitted: datetime = NOW,
    stale: float = 2700, goal: str = GOAL,
) -> BatchView:
    meta = BatchMeta(
        batch_id=batch_id, submitted_at=submitted, harness_config_version="hc1",
        batch_goal_summary=goal, launch_table_sha256="0" * 64, working_root="/w",
        jobs=[NormalizedJob(job_id=j, working_directory=f"/w/{j}", workspace_policy="shared",
                            steps=steps) for j, steps in jobs.items()],
        effective_defaults=EffectiveDefaults(
            execution_policy=ExecutionPolicy(), timeouts=Timeouts(), retries=RetryPolicy(),
            retention_policy=RetentionPolicy(), workspace_policy="shared",
            heartbeat_stale_after_seconds=stale,
        ),
    )
    return BatchView.from_meta(meta)


def meta_for(
    b: BatchView, job_id: str, step_id: str, run_id: str, resume: ResumeSource | None = None
) -> AttemptMeta:
    return AttemptMeta(
        batch_id=b.batch_id, job_id=job_id, step_id=step_id, run_id=run_id, runner_id="r1",
        run_dir_name=f"x_{run_id}", created_at=NOW, attempt_number=1,
        invocation="resume" if resume else "exec", resume_from=resume,
        resume_base_copied_from=f"/src/{resume.selected_run_id}/codex_home" if resume else None,
        prompt_sha256="0" * 64,
        policy_snapshot=PolicySnapshot(execution_policy=ExecutionPolicy(), timeout_seconds=600,
                                       retry_policy=RetryPolicy()),
        command=["codex", "exec"],
        environment_snapshot=EnvironmentSnapshot(phh_version="0.1.0", host="h",
                                                 working_directory="/w", workspace_policy="shared",
                                                 workspace_root="/w"),
    )


def add(
    b: BatchView, job_id: str, step_id: str, run_id: str, status: str, *, seq: int = 0,
    started: float | None = 600, ended: float | None = None, beat: float | None = None,
    report: RunReport | None = None, meta: AttemptMeta | None = None, base: bool = True,
    **state: Any,
) -> AttemptView:
    """Attach one attempt; times are seconds before NOW. `seq` orders dir names."""
    terminal = status not in ("queued", "running")
    st = AttemptState(
        batch_id=b.batch_id, job_id=job_id, step_id=step_id, run_id=run_id, runner_id="r1",
        status=status, updated_at=NOW,
        started_at=ago(started) if started is not None else None,
        ended_at=ago(ended if ended is not None else 0) if terminal else None,
        last_heartbeat_at=ago(beat) if beat is not None else None, **state,
    )
    dir_name = f"20260114T17{seq:04d}Z_{run_id}"
    a = AttemptView(
        run_id=run_id, dir_name=dir_name,
        path=ROOT / b.batch_id / job_id / "steps" / step_id / "attempts" / dir_name,
        meta=meta, state=st, report=report, resume_base_ready=base,
    )
    b.jobs[job_id].steps[step_id].add_attempt(a)
    return a


def report(status: str, summary: str) -> RunReport:
    return RunReport(schema_version="1.0.0", status=status, summary=summary, files_read=[],
                     files_written=[], artifacts=[])


def test_header_counts_and_every_step_in_job_then_step_order() -> None:
    b = batch({"job_02": [step("step1"), step("step2", ["step1"])],
               "job_01": [step("step1")]})
    add(b, "job_02", "step1", "ra", "succeeded", ended=100)
    sb = batch_scoreboard(b, NOW)
    assert (sb.batch_id, sb.submitted_at, sb.computed_at) == ("b1", NOW, NOW)
    assert sb.batch_goal_summary == GOAL
    assert (sb.jobs_total, sb.steps_total, sb.heartbeat_stale_after_seconds) == (2, 3, 2700)
    assert sb.counts.model_dump() == {"blocked": 0, "ready": 2, "running": 0, "succeeded": 1,
                                      "failed": 0, "needs_attention": 0, "canceled": 0}
    assert [(r.job_id, r.step_id, r.status) for r in sb.steps] == [
        ("job_02", "step1", "succeeded"), ("job_02", "step2", "ready"),
        ("job_01", "step1", "ready"),
    ]
    assert sb.steps[0].run_id == "ra" and sb.steps[0].attempts == 1
    assert sb.steps[0].attempt_dir and sb.steps[0].attempt_dir.endswith("_ra")
    assert not sb.closed and not sb.attention and not sb.running and not sb.blocked


def test_running_row_has_every_field_derived_from_now() -> None:
    b = batch({"job_01": [step("step1")]})
    a = add(b, "job_01", "step1", "ra", "running", started=900, beat=45,
            current_item="pytest -q tests/payments")
    sb = batch_scoreboard(b, NOW)
    (row,) = sb.running
    assert row.model_dump() == {
        "job_id": "job_01", "step_id": "step1", "run_id": "ra", "runner_id": "r1",
        "attempt_dir": str(a.path), "state_status": "running",
        "current_item": "pytest -q tests/payments", "last_heartbeat_at": ago(45),
        "seconds_since_last_heartbeat": 45.0, "started_at": ago(900),
        "run_duration_seconds": 900.0, "stuck": False, "resume_from": None,
    }
    assert sb.counts.running == 1 and sb.attention == []


def test_queued_attempt_without_state_is_listed_as_running_with_unknown_fields() -> None:
    b = batch({"job_01": [step("step1")]})
    b.jobs["job_01"].steps["step1"].add_attempt(
        AttemptView(run_id="rq", dir_name="20260114T170000Z_rq", path=ROOT / "rq"))
    (row,) = batch_scoreboard(b, NOW).running
    assert (row.run_id, row.runner_id, row.state_status) == ("rq", None, "queued")
    assert row.seconds_since_last_heartbeat is None and row.run_duration_seconds is None


@pytest.mark.parametrize(("stale", "beat", "stuck"), [
    (2700, 2699, False), (2700, 2701, True), (1800, 1799, False), (1800, 1801, True),
])
def test_stuck_uses_batch_threshold(stale: float, beat: float, stuck: bool) -> None:
    b = batch({"job_01": [step("step1")]}, stale=stale)
    add(b, "job_01", "step1", "ra", "running", started=5000, beat=beat)
    sb = batch_scoreboard(b, NOW)
    assert sb.heartbeat_stale_after_seconds == stale
    assert sb.running[0].stuck is stuck and sb.steps[0].stuck is stuck
    assert sb.counts.running == 1  # stale never changes the status
    assert [r.kind for r in sb.attention] == (["stuck"] if stuck else [])


def test_stale_after_argument_overrides_batch_default() -> None:
    b = batch({"job_01": [step("step1")]})  # batch default 2700
    add(b, "job_01", "step1", "ra", "running", started=5000, beat=2000)
    assert not batch_scoreboard(b, NOW).running[0].stuck
    sb = batch_scoreboard(b, NOW, stale_after=1800)
    assert sb.running[0].stuck and sb.heartbeat_stale_after_seconds == 1800


def test_attention_order_stuck_then_needs_attention_then_failed() -> None:
    b = batch({
        "job_01": [step("step1")], "job_02": [step("step1")], "job_03": [step("step1")],
        "job_04": [step("step1")], "job_05": [step("step1")],
    })
    add(b, "job_01", "step1", "r1f", "failed", failure_class="nonzero_exit", exit_code=2)
    add(b, "job_02", "step1", "r2n", "needs_attention", termination_reason="schema_invalid",
        failure_class="schema_invalid")
    add(b, "job_03", "step1", "r3s", "running", started=9000, beat=3000,
        current_item="npm test")
    add(b, "job_04", "step1", "r4s", "running", started=9000, beat=8000)
    add(b, "job_05", "step1", "r5r", "running", started=100, beat=10)
    sb = batch_scoreboard(b, NOW)
    assert [(r.kind, r.job_id, r.run_id) for r in sb.attention] == [
        ("stuck", "job_04", "r4s"),  # most stale first
        ("stuck", "job_03", "r3s"),
        ("needs_attention", "job_02", "r2n"),
        ("failed", "job_01", "r1f"),
    ]
    stuck = sb.attention[1]
    assert stuck.detail == "npm test" and stuck.seconds_since_last_heartbeat == 3000
    assert sb.attention[2].detail == "schema_invalid"
    assert sb.attention[3].detail == "nonzero_exit; retry budget spent (1/1)"
    assert sb.counts.running == 3 and sb.counts.failed == 1 and sb.counts.needs_attention == 1


def test_blocked_rows_carry_reasons() -> None:
    b = batch({"job_09": [step("step1"), step("step2", ["step1"]),
                          step("step3", ["step1", "step2"])]})
    add(b, "job_09", "step1", "ra", "running", beat=5)
    sb = batch_scoreboard(b, NOW)
    assert [(r.step_id, r.reasons) for r in sb.blocked] == [
        ("step2", ["depends_on: job_09.step1 not succeeded"]),
        ("step3", ["depends_on: job_09.step1 not succeeded",
                   "depends_on: job_09.step2 not succeeded"]),
    ]
    assert sb.counts.blocked == 2


def test_failures_list_latest_attempt_with_host_and_agent_outcome() -> None:
    b = batch({"job_01": [step("step1")], "job_02": [step("step1")]})
    add(b, "job_01", "step1", "old", "failed", seq=1, ended=500)
    a = add(b, "job_01", "step1", "new", "failed", seq=2, ended=100, exit_code=1,
            termination_reason="exit", failure_class="agent_reported_failure",
            errors=["tests still red"], report=report("failed", "3 tests still failing"))
    n = add(b, "job_02", "step1", "na", "needs_attention", termination_reason="schema_invalid",
            failure_class="schema_invalid", exit_code=0)
    sb = batch_scoreboard(b, NOW)
    assert [f.model_dump() for f in sb.failures] == [
        {"job_id": "job_01", "step_id": "step1", "run_id": "new", "attempt_dir": str(a.path),
         "state_status": "failed", "exit_code": 1, "termination_reason": "exit",
         "failure_class": "agent_reported_failure", "final_status": "failed",
         "final_summary": "3 tests still failing", "errors": ["tests still red"]},
        {"job_id": "job_02", "step_id": "step1", "run_id": "na", "attempt_dir": str(n.path),
         "state_status": "needs_attention", "exit_code": 0,
         "termination_reason": "schema_invalid", "failure_class": "schema_invalid",
         "final_status": None, "final_summary": None, "errors": []},
    ]


def test_marked_failed_without_attempts_is_attention_not_failure_row() -> None:
    b = batch({"job_01": [step("step1")]})
    b.jobs["job_01"].steps["step1"].marks.marked_failed = "bad prompt"
    sb = batch_scoreboard(b, NOW)
    assert [(r.kind, r.run_id, r.detail) for r in sb.attention] == [
        ("failed", None, "marked failed by operator: bad prompt")]
    assert sb.failures == []


def test_resume_source_visible_on_blocked_ready_and_running_rows() -> None:
    rf = ResumeFrom(step_id="step1")
    b = batch({"job_01": [step("step1"), step("step2", resume_from=rf)],
               "job_02": [step("step1"), step("step2", resume_from=rf)],
               "job_03": [step("step1"), step("step2", resume_from=rf)]})
    # job_01: source has no success -> blocked, nothing selected yet
    add(b, "job_01", "step1", "s1", "running", beat=5)
    # job_02: source succeeded -> ready, resolved source shown
    src = add(b, "job_02", "step1", "s2", "succeeded", ended=50)
    # job_03: resume attempt running -> what it actually copied (meta)
    add(b, "job_03", "step1", "s3", "succeeded", ended=50)
    m = meta_for(b, "job_03", "step2", "rr",
                 ResumeSource(step_id="step1", selector="latest_successful",
                              selected_run_id="s3"))
    add(b, "job_03", "step2", "rr", "running", beat=5, meta=m)
    sb = batch_scoreboard(b, NOW)

    (blocked,) = sb.blocked
    assert blocked.job_id == "job_01" and blocked.resume_from is not None
    assert blocked.resume_from.model_dump() == {"step_id": "step1",
                                                "selector": "latest_successful",
                                                "selected_run_id": None, "resume_base_dir": None}
    rows = {(r.job_id, r.step_id): r for r in sb.steps}
    ready = rows["job_02", "step2"]
    assert ready.status == "ready" and ready.resume_from is not None
    assert ready.resume_from.selected_run_id == "s2"
    assert ready.resume_from.resume_base_dir == str(src.path / "codex_home")
    running = next(r for r in sb.running if r.job_id == "job_03")
    assert running.resume_from is not None
    assert (running.resume_from.selected_run_id, running.resume_from.resume_base_dir) == (
        "s3", "/src/s3/codex_home")
    assert rows["job_03", "step2"].resume_from == running.resume_from
    assert rows["job_01", "step1"].resume_from is None


def test_usage_is_summed_over_all_attempts() -> None:
    b = batch({"job_01": [step("step1", max_attempts=3)], "job_02": [step("step1")]})
    add(b, "job_01", "step1", "a1", "failed", seq=1, failure_class="nonzero_exit",
        usage=Usage(input_tokens=100, cached_input_tokens=10, output_tokens=5,
                    reasoning_output_tokens=1))
    add(b, "job_01", "step1", "a2", "succeeded", seq=2,
        usage=Usage(input_tokens=200, cached_input_tokens=20, output_tokens=7))
    add(b, "job_02", "step1", "b1", "running", beat=1, usage=Usage(input_tokens=3))
    assert batch_scoreboard(b, NOW).usage == Usage(
        input_tokens=303, cached_input_tokens=30, output_tokens=12, reasoning_output_tokens=1)


def test_closed_batch_blocks_unstarted_steps() -> None:
    b = batch({"job_01": [step("step1")]})
    b.closed = True
    sb = batch_scoreboard(b, NOW)
    assert sb.closed and sb.blocked[0].reasons == ["batch closed"]


def test_batch_scoreboard_matches_its_published_schema() -> None:
    b = batch({"job_01": [step("step1"), step("step2", resume_from=ResumeFrom(step_id="step1"))]})
    add(b, "job_01", "step1", "ra", "failed", failure_class="timeout")
    data = json.loads(batch_scoreboard(b, NOW).model_dump_json())
    schema = json.loads((SCHEMAS / "scoreboard.batch.schema.json").read_text())
    jsonschema.validate(data, schema)


def test_system_rows_and_order() -> None:
    quiet_old = batch({"j": [step("s")]}, "quiet_old", submitted=ago(3000))
    quiet_new = batch({"j": [step("s")]}, "quiet_new", submitted=ago(10))
    busy = batch({"j": [step("s")]}, "busy", submitted=ago(5000))
    add(busy, "j", "s", "r", "running", beat=1)
    hurt = batch({"j": [step("s"), step("t")]}, "hurt", submitted=ago(9000),
                 goal="Short goal. More text follows here.")
    add(hurt, "j", "s", "r", "failed", failure_class="nonzero_exit")
    sys_sb = system_scoreboard([quiet_old, busy, quiet_new, hurt], NOW)
    assert sys_sb.computed_at == NOW
    assert [r.batch_id for r in sys_sb.batches] == ["hurt", "busy", "quiet_new", "quiet_old"]
    row = sys_sb.batches[0]
    assert row.model_dump() == {
        "batch_id": "hurt", "submitted_at": ago(9000), "batch_goal_summary_preview": "Short goal.",
        "jobs_total": 1, "steps_total": 2,
        "counts": {"blocked": 0, "ready": 1, "running": 0, "succeeded": 0, "failed": 1,
                   "needs_attention": 0, "canceled": 0},
        "running_steps": 0, "attention_steps": 1, "closed": False,
    }
    assert sys_sb.batches[1].running_steps == 1 and sys_sb.batches[1].attention_steps == 0


def test_system_attention_counts_stuck_and_reuses_given_batch_scoreboards() -> None:
    b = batch({"j": [step("s"), step("t")]})
    add(b, "j", "s", "r", "running", started=9000, beat=2800)
    add(b, "j", "t", "q", "needs_attention")
    row = system_scoreboard([b], NOW).batches[0]
    assert (row.running_steps, row.attention_steps) == (1, 2)
    cached = batch_scoreboard(b, NOW, stale_after=5000)  # not stuck at 5000 s
    row = system_scoreboard([b], NOW, per_batch={"b1": cached}).batches[0]
    assert row.attention_steps == 1


def test_system_scoreboard_matches_its_published_schema() -> None:
    data = json.loads(system_scoreboard([batch({"j": [step("s")]})], NOW).model_dump_json())
    jsonschema.validate(data, json.loads((SCHEMAS / "scoreboard.system.schema.json").read_text()))


@pytest.mark.parametrize(("text", "expected"), [
    ("Fix the tests. Then deploy.", "Fix the tests."),
    ("Use e.g. pytest to check. Then go.", "Use e.g. pytest to check."),
    ("  spaced\n\nout   text  ", "spaced out text"),
    ("no sentence end at all", "no sentence end at all"),
])
def test_goal_preview_first_sentence(text: str, expected: str) -> None:
    assert goal_preview(text) == expected


def test_goal_preview_cuts_long_text_at_a_word() -> None:
    out = goal_preview("alpha " * 60)
    assert len(out) <= 120 and out.endswith("alpha…")
    assert goal_preview("x" * 300, limit=50) == "x" * 49 + "…"


def test_board_writes_are_spaced_by_what_they_cost() -> None:
    """The engine derives whole batches on its loop: a huge batch is written less often
    rather than starving the schedule (engine/boards.py board_delay)."""
    from phh_engine.engine.boards import BOARD_DUTY, board_delay

    assert board_delay(1.0, 0.01) == 1.0  # a small batch: the configured interval
    assert board_delay(1.0, 0.1) == pytest.approx(0.1 * BOARD_DUTY)  # ~10,000 steps
    assert board_delay(5.0, 0.1) == 5.0
