"""The CLI's rich rendering of both scoreboards shows what an operator looks for first.

Why: `phh scoreboard` is the quickest way to see a batch from a shell; if a section or a key
value silently disappears from it, nobody notices until they need it.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime

from rich.console import Console

from phh_engine.models import BatchScoreboard, StatusCounts, SystemScoreboard, Usage
from phh_engine.models.scoreboard import (
    AttentionRow,
    BlockedRow,
    FailureRow,
    ResumeView,
    RunningRow,
    SystemRow,
)
from phh_tui.render import counts_text, duration, render_batch, render_system

NOW = datetime(2026, 1, 14, 18, 0, tzinfo=UTC)
GOAL = "Fix the flaky payment tests across all services. " + "More words here. " * 40


def _text(renderable: object) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(renderable)
    return console.export_text()


def _batch() -> BatchScoreboard:
    return BatchScoreboard(
        batch_id="batch_20260114T173000Z_ab12", submitted_at=NOW, computed_at=NOW,
        batch_goal_summary=GOAL, jobs_total=3, steps_total=6, heartbeat_stale_after_seconds=2700,
        counts=StatusCounts(succeeded=1, running=2, blocked=1, failed=1, needs_attention=1),
        usage=Usage(input_tokens=12345, cached_input_tokens=1000, output_tokens=678),
        attention=[
            AttentionRow(job_id="job_03", step_id="step1", kind="stuck", run_id="r3",
                         detail="npm test", seconds_since_last_heartbeat=3000),
            AttentionRow(job_id="job_04", step_id="step1", kind="needs_attention",
                         run_id="r4", detail="schema_invalid"),
            AttentionRow(job_id="job_05", step_id="step1", kind="failed", run_id="r5",
                         detail="nonzero_exit; retry budget spent (2/2)"),
        ],
        running=[
            RunningRow(job_id="job_03", step_id="step1", run_id="r3", runner_id="local",
                       attempt_dir="/runs/x/r3", current_item="npm test",
                       seconds_since_last_heartbeat=3000, run_duration_seconds=3725, stuck=True),
            RunningRow(job_id="job_06", step_id="step2", run_id="r6", runner_id="local",
                       attempt_dir="/runs/x/r6", current_item="pytest -q",
                       seconds_since_last_heartbeat=12, run_duration_seconds=95,
                       resume_from=ResumeView(step_id="step1", selector="latest_successful",
                                              selected_run_id="r1",
                                              resume_base_dir="/runs/x/r1/codex_home")),
        ],
        blocked=[BlockedRow(job_id="job_09", step_id="step2",
                            reasons=["depends_on: job_09.step1 not succeeded"],
                            resume_from=ResumeView(step_id="step1",
                                                   selector="latest_successful"))],
        failures=[
            FailureRow(job_id="job_05", step_id="step1", run_id="r5", attempt_dir="/runs/x/r5",
                       state_status="failed", exit_code=2, failure_class="nonzero_exit",
                       final_status="failed", final_summary="3 tests still failing"),
            FailureRow(job_id="job_04", step_id="step1", run_id="r4", attempt_dir="/runs/x/r4",
                       state_status="needs_attention", exit_code=0,
                       termination_reason="schema_invalid", errors=["final.txt is not JSON"]),
        ],
    )


def test_batch_view_shows_header_and_every_section() -> None:
    out = _text(render_batch(_batch()))
    for expected in (
        "batch_20260114T173000Z_ab12", "Fix the flaky payment tests across all services.",
        "1/6 succeeded", "2 running", "1 failed", "1 needs_attention", "1 blocked",
        "12,345 in", "678 out",
        "Attention", "stuck", "job_03.step1", "50m00s", "schema_invalid",
        "Running", "1h02m", "pytest -q", "⟲ step1:r1",
        "Blocked", "depends_on: job_09.step1 not succeeded", "⟲ step1:(latest_successful)",
        "Failures", "3 tests still failing", "nonzero_exit", "final.txt is not JSON",
    ):
        assert expected in out, expected
    # order of sections follows the SPEC's severity
    assert out.index("Attention") < out.index("Running") < out.index("Blocked") \
        < out.index("Failures")


def test_empty_sections_are_left_out() -> None:
    sb = BatchScoreboard(batch_id="b1", submitted_at=NOW, computed_at=NOW,
                         batch_goal_summary="Quiet batch.", jobs_total=1, steps_total=1,
                         heartbeat_stale_after_seconds=2700, closed=True,
                         counts=StatusCounts(succeeded=1))
    out = _text(render_batch(sb))
    assert "1/1 succeeded" in out and "[closed]" in out
    for section in ("Attention", "Running", "Blocked", "Failures", "tokens"):
        assert section not in out


def test_system_view_lists_batches_in_given_order() -> None:
    rows = [
        SystemRow(batch_id="hurt", submitted_at=NOW, batch_goal_summary_preview="Fix payments.",
                  jobs_total=2, steps_total=4, counts=StatusCounts(failed=1, succeeded=3),
                  running_steps=0, attention_steps=1),
        SystemRow(batch_id="busy", submitted_at=NOW, batch_goal_summary_preview="Port to 3.13.",
                  jobs_total=5, steps_total=10, counts=StatusCounts(running=4, ready=6),
                  running_steps=4, attention_steps=0, closed=True),
    ]
    out = _text(render_system(SystemScoreboard(computed_at=NOW, batches=rows)))
    for expected in ("2 batches", "hurt", "Fix payments.", "3/4", "busy", "[closed]",
                     "Port to 3.13.", "0/10", "2026-01-14 18:00:00Z", "01-14 18:00", "attention"):
        assert expected in out, expected
    assert out.index("hurt") < out.index("busy")


def test_empty_system_view_says_how_to_start() -> None:
    out = _text(render_system(SystemScoreboard(computed_at=NOW)))
    assert "0 batches" in out and "phh submit" in out
    one = SystemScoreboard(computed_at=NOW, batches=[SystemRow(
        batch_id="b", submitted_at=NOW, batch_goal_summary_preview="g", jobs_total=1,
        steps_total=1, counts=StatusCounts(ready=1), running_steps=0, attention_steps=0)])
    assert "1 batch ·" in _text(render_system(one))


def test_helpers() -> None:
    assert [duration(s) for s in (None, 5, 65, 3725, 90000)] == [
        "-", "5s", "1m05s", "1h02m", "1d01h"]
    assert counts_text(StatusCounts(ready=2, canceled=1)).plain == "2 ready · 1 canceled"


def test_render_module_does_not_import_textual() -> None:
    import subprocess

    code = "import sys, phh_tui.render; print('textual' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "False"
