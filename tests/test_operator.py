"""Operator control (issue 3): cancel, retry-now, resume, mark-failed, close, stuck."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import uuid
from datetime import timedelta
from pathlib import Path

import psutil
import pytest
from conftest import Harness, final, step, wait_for

from phh_engine.engine.loop import Engine, EngineError
from phh_engine.models import utcnow
from phh_engine.runners.attempt import AttemptPlan
from phh_engine.runners.conclude import classify
from phh_engine.store.events import EventFacts
from phh_engine.store.files import TerminalStateError, write_state
from phh_engine.store.overrides import list_results

pytestmark = pytest.mark.codex
PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")


def phh(harness: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHH, "--root", str(harness.root), *args], capture_output=True,
                          text=True, timeout=120)


def procs_with(marker: str) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in (p.info.get("cmdline") or [])):
            out.append(p)
    return out


def running_attempt(harness: Harness, bid: str, job: str, sid: str) -> Path:
    def ready() -> Path | None:
        for a in harness.attempts(bid, job, sid):
            st = json.loads((a / "state.json").read_text()) if (a / "state.json").exists() else {}
            if st.get("status") == "running" and st.get("pid"):
                return a
        return None
    return wait_for(ready, 30, f"{job}.{sid} running")


def test_cancel_running_codex_kills_whole_tree_even_in_bypass_mode(harness: Harness) -> None:
    marker = f"phh-orphan-{uuid.uuid4().hex[:8]}"
    # bypass mode: the agent's command runs in its own session, outside Codex's group
    bid = harness.submit(
        [{"job_id": "j1", "steps": [step(
            "s1", {"shell": f"sleep 300 # {marker}", "yield_time_ms": 500}, {"hang": 120})]}],
        execution_policy={"bypass_sandbox": True}, retries={"max_attempts": 1},
    )
    eng = harness.start()
    att = running_attempt(harness, bid, "j1", "s1")
    wait_for(lambda: procs_with(marker), 30, "the agent's sleep command")
    pid = harness.state(att)["pid"]
    res = harness.call(eng, eng.request("cancel", bid, "j1", "s1"))
    assert res.outcome == "applied" and res.run_id == harness.state(att)["run_id"]
    wait_for(lambda: harness.state(att)["status"] == "canceled", 30, "canceled state")
    st = harness.state(att)
    assert st["termination_reason"] == "canceled" and st["ended_at"]
    assert not procs_with(marker), "the agent's command outlived the cancel"
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert (att / "codex.events.jsonl").stat().st_size > 0  # partial events kept
    harness.stop(eng)
    # an engine restart does not touch a terminal attempt
    assert harness.state(att)["status"] == "canceled"


def test_cancel_racing_normal_exit_gives_one_terminal_status(harness: Harness) -> None:
    bid = harness.submit([{"job_id": f"j{i}", "steps": [step("s1", final("quick"),
                                                              prompt=f"race {i}")]}
                          for i in range(4)], retries={"max_attempts": 1})
    eng = harness.start()
    results = []
    for i in range(4):
        att = running_attempt(harness, bid, f"j{i}", "s1")
        results.append((att, harness.call(eng, eng.request("cancel", bid, f"j{i}", "s1"))))
    for att, _ in results:
        wait_for(lambda a=att: harness.state(a).get("ended_at"), 30, "terminal state")
    harness.stop(eng)
    for att, res in results:
        st = harness.state(att)
        assert st["status"] in ("canceled", "succeeded")
        # whichever won, a second terminal write is refused
        other = "succeeded" if st["status"] == "canceled" else "canceled"
        from phh_engine.models import AttemptState

        with pytest.raises(TerminalStateError):
            write_state(att / "state.json",
                        AttemptState.model_validate({**st, "status": other}))
        assert res.outcome in ("applied", "rejected")


def test_cancel_before_start_goes_queued_to_canceled(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("never"))]}])
    eng = harness.engine()
    assert eng.runner is not None
    batch = eng.index.batches[bid]
    job = batch.jobs["j1"]
    st = job.steps["s1"]
    plan = AttemptPlan(batch_id=bid, job_id="j1", step_id="s1", runner_id="local")
    claimed = eng.runner.claim(plan)
    assert claimed is not None
    assert eng.runner.cancel(claimed[0])
    view = asyncio.run(eng.runner.run(plan, batch, job, st, claimed))
    assert view.status == "canceled"
    state = json.loads((claimed[1] / "state.json").read_text())
    assert state["status"] == "canceled" and "pid" not in state
    assert not (claimed[1] / "codex.events.jsonl").exists()  # Codex never started
    eng.release_runner()


def test_retry_now_past_max_attempts_and_resume_with_prompt(harness: Harness) -> None:
    flaky = {"http_error": 500, "times": 1, "otherwise": final("fixed on operator retry")}
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", flaky, prompt="op-retry")]}],
                         retries={"max_attempts": 1})
    harness.run()
    (first,) = harness.attempts(bid, "j1", "s1")
    assert harness.state(first)["status"] == "failed"
    out = phh(harness, "retry", bid, "j1", "s1", "--json")
    assert out.returncode == 0, out.stderr
    queued = json.loads(out.stdout)
    assert queued["status"] == "queued"  # no engine running: applied when one starts
    harness.run()
    first, second = harness.attempts(bid, "j1", "s1")
    meta2 = harness.meta(second)
    assert harness.state(second)["status"] == "succeeded"
    assert meta2["trigger"] == "operator_retry" and meta2["retry_of"] == harness.state(first)[
        "run_id"]
    assert meta2["override_nonce"] == queued["nonce"]
    # a succeeded step cannot be retried, but its conversation can be resumed
    eng = harness.start()
    res = harness.call(eng, eng.request("retry", bid, "j1", "s1"))
    assert res.outcome == "rejected" and "already succeeded" in res.message
    res = harness.call(eng, eng.request(
        "resume", bid, "j1", "s1", prompt="follow-up " + json.dumps({}) + "\n\n[[standin "
        + json.dumps({"actions": [{"echo_thread": True}]}) + "]]"))
    assert res.outcome == "applied"
    wait_for(lambda: len(harness.attempts(bid, "j1", "s1")) == 3
             and harness.state(harness.attempts(bid, "j1", "s1")[2]).get("ended_at"),
             60, "resumed attempt to finish")
    harness.stop(eng)
    third = harness.attempts(bid, "j1", "s1")[2]
    m3, s3 = harness.meta(third), harness.state(third)
    assert m3["trigger"] == "operator_resume" and m3["invocation"] == "resume"
    assert s3["codex_thread_id"] == harness.state(second)["codex_thread_id"]
    assert (third / "prompt.txt").read_text().startswith("follow-up")
    assert s3["status"] == "succeeded"


def test_mark_failed_keeps_dependants_blocked_and_survives_restart(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", final("would succeed")),
        step("s2", final("after"), depends_on=["s1"]),
    ]}])
    out = phh(harness, "mark-failed", bid, "j1", "s1", "--reason", "upstream is gone")
    assert out.returncode == 0 and "queued" in out.stdout
    harness.run()
    assert harness.attempts(bid, "j1", "s1") == [] and harness.attempts(bid, "j1", "s2") == []
    sb = json.loads(harness.layout.batch_scoreboard(bid).read_text())
    rows = {r["step_id"]: r for r in sb["steps"]}
    assert rows["s1"]["status"] == "failed"
    assert rows["s1"]["reasons"] == ["marked failed by operator: upstream is gone"]
    assert rows["s2"]["status"] == "blocked"
    assert rows["s2"]["reasons"] == ["depends_on: j1.s1 marked failed (upstream is gone)"]
    (res,) = list_results(harness.layout)
    assert res.action == "mark_failed" and res.outcome == "applied"
    harness.run()  # replayed from the recorded result after a restart
    sb = json.loads(harness.layout.batch_scoreboard(bid).read_text())
    assert sb["counts"]["failed"] == 1 and sb["counts"]["blocked"] == 1


def test_close_batch_starts_nothing(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("x"))]}])
    assert phh(harness, "close", bid).returncode == 0
    harness.run()
    assert harness.attempts(bid, "j1", "s1") == []
    sb = json.loads(harness.layout.batch_scoreboard(bid).read_text())
    assert sb["closed"] is True and sb["blocked"][0]["reasons"] == ["batch closed"]
    out = phh(harness, "close", bid, "--json")
    assert out.returncode == 0  # no engine: queued; the engine rejects a second close
    harness.run()
    assert [r.outcome for r in list_results(harness.layout)] == ["applied", "rejected"]


def test_rejections_are_clear(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("x"))]}])
    eng = harness.start()
    # the engine's own end event, not state.json: the file is final a moment before the
    # engine has taken the attempt off its live list
    wait_for(lambda: any(e.kind == "attempt_ended" for e in harness.events), 30, "run")
    res = harness.call(eng, eng.request("cancel", bid, "j1", "s1"))
    assert res.outcome == "rejected" and "no attempt in flight" in res.message
    res = harness.call(eng, eng.request("cancel", bid, "j1", "nosuch"))
    assert res.outcome == "rejected" and "unknown step" in res.message
    out = phh(harness, "cancel", bid, "j1", "../x")
    assert out.returncode == 2 and "invalid id" in out.stderr
    out = phh(harness, "cancel", bid, "j1", "s1", "--json")
    assert out.returncode == 1 and json.loads(out.stdout)["status"] == "rejected"
    harness.stop(eng)


def test_a_claim_blocked_by_a_stray_file_blocks_that_step_only(harness: Harness) -> None:
    """A claim that fails on a stray file must not leave its step looking in flight, nor be
    retried in a loop, nor stop the engine (issue 11 B1): that step is blocked with the
    reason, the others run, and the engine goes idle."""
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("never"))]},
                          {"job_id": "j2", "steps": [step("s1", final("ok"))]}])
    eng = harness.engine()
    blocker = harness.layout.attempts_dir(bid, "j1", "s1")  # after the engine's first read
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("a file where the attempts directory belongs\n")
    asyncio.run(asyncio.wait_for(eng.serve(), 60))
    s1 = eng.index.batches[bid].jobs["j1"].steps["s1"]
    assert s1.attempts == []
    assert s1.marks.unstartable and "Not a directory" in s1.marks.unstartable
    assert not eng.runner.live  # type: ignore[union-attr]
    (att,) = harness.attempts(bid, "j2", "s1")
    assert harness.state(att)["status"] == "succeeded"


def test_second_engine_on_same_runner_refuses_and_another_runner_joins(
    harness: Harness,
) -> None:
    jobs = [{"job_id": f"j{i}", "steps": [step("s1", {"shell": "true", "delay": 0.3},
                                               final(f"{i}"), prompt=f"two engines {i}")]}
            for i in range(8)]
    bid = harness.submit(jobs)
    first = harness.start(concurrency=2)
    with pytest.raises(EngineError, match="--runner-id"):
        Engine(harness.root).setup()
    second = harness.start(concurrency=2, runner_id="r2")
    wait_for(lambda: all(
        any(harness.state(a).get("status") == "succeeded"
            for a in harness.attempts(bid, f"j{i}", "s1")) for i in range(8)), 120, "all done")
    harness.stop(first)
    harness.stop(second)
    runners = set()
    for i in range(8):
        atts = harness.attempts(bid, f"j{i}", "s1")
        assert len(atts) == 1, f"j{i} ran {len(atts)} times"
        runners.add(harness.state(atts[0])["runner_id"])
    assert runners == {"local", "r2"}


def test_stuck_attempt_is_shown_and_auto_remediation_recorded(harness: Harness) -> None:
    harness.settings.scoreboard.stuck_auto_remediation.enabled = True
    harness.settings.scoreboard.stuck_auto_remediation.action = "cancel_retry"
    harness.write_settings()
    slow = {"hang": 120, "times": 1, "otherwise": final("recovered after remediation")}
    bid = harness.submit(
        [{"job_id": "j1", "steps": [step("s1", slow, prompt="stuck-remediation")]}])
    eng = harness.start()
    att = running_attempt(harness, bid, "j1", "s1")
    # the model request is in flight (the stand-in now holds it): only then is it "stuck"
    wait_for(lambda: any("stuck-remediation" in (r.get("prompts") or [""])[-1]
                         for r in list(harness.standin.requests)), 30, "model request held")

    def age_heartbeat() -> None:
        view = eng.index.batches[bid].jobs["j1"].steps["s1"].in_flight
        assert view is not None and view.state is not None
        old = utcnow() - timedelta(seconds=2701)
        view.state = view.state.model_copy(update={"last_heartbeat_at": old})
        # this engine's own attempts age on the monotonic clock (issue 11 E4): its monitor
        # last beat 2701 s ago
        live = eng.runner.live[view.run_id]  # type: ignore[union-attr]
        assert live.beat_mono is not None
        live.beat_mono -= 2701
        from phh_engine.derive.scoreboards import batch_scoreboard

        sb = batch_scoreboard(eng.index.batches[bid], utcnow(),
                              beat_ages=eng.runner.beat_ages())  # type: ignore[union-attr]
        assert [a.kind for a in sb.attention] == ["stuck"]
        assert sb.running[0].stuck is True
        eng.check_stuck()

    eng.call_threadsafe(age_heartbeat)
    wait_for(lambda: len(harness.attempts(bid, "j1", "s1")) == 2
             and harness.state(harness.attempts(bid, "j1", "s1")[1]).get("status")
             == "succeeded", 60, "remediated retry")
    harness.stop(eng)
    assert harness.state(att)["status"] == "canceled"
    res = [r for r in list_results(harness.layout) if r.action == "requeue"]
    assert len(res) == 1 and res[0].outcome == "applied"
    assert res[0].reason and res[0].reason.startswith("stuck: no heartbeat")


@pytest.mark.parametrize(
    ("action", "expect"),
    [({"http_error": 500}, "model_error"), ({"http_error": 429}, "rate_limited"),
     ({"stream_fail": "boom"}, "model_error")],
)
def test_failure_classes_from_real_codex(harness: Harness, action: dict, expect: str) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", action,
                                                         prompt=f"class {expect}")]}],
                         retries={"max_attempts": 1})
    harness.run()
    (att,) = harness.attempts(bid, "j1", "s1")
    st = harness.state(att)
    assert st["status"] == "failed" and st["failure_class"] == expect, st


def test_exit_zero_with_failed_turn_is_not_success() -> None:
    facts = EventFacts()
    facts.apply({"type": "thread.started", "thread_id": "t"})
    facts.apply({"type": "turn.failed", "error": {"message": "stream disconnected"}})
    out = classify(exit_code=0, facts=facts, report=None, report_error=None, canceled=False,
                   timed_out=False, thread_mismatch=None)
    assert (out.status, out.failure_class) == ("failed", "model_error")
    facts = EventFacts()
    facts.apply({"type": "error", "message": "Reconnecting... 1/5"})  # not terminal
    facts.apply({"type": "turn.completed", "usage": {"input_tokens": 3}})
    from phh_engine.models import RunReport

    ok = RunReport(schema_version="1.0.0", status="ok", summary="s", files_read=[],
                   files_written=[], artifacts=[])
    out = classify(exit_code=0, facts=facts, report=ok, report_error=None, canceled=False,
                   timed_out=False, thread_mismatch=None)
    assert out.status == "succeeded"
    assert facts.usage == {"input_tokens": 3}


@pytest.mark.parametrize(("stderr", "expect"), [
    # the stand-in's port in a URL once read as HTTP 429 / 500 (a flaky failure class)
    ("error sending request for url (http://127.0.0.1:42913/v1/responses): boom",
     "nonzero_exit"),
    ("stream error at http://127.0.0.1:50043/v1/responses, request id 5029", "nonzero_exit"),
    ("unexpected status 429 Too Many Requests", "rate_limited"),
    ("exceeded retry limit, last status: 503 Service Unavailable", "model_error"),
])
def test_failure_class_reads_status_codes_not_digits(stderr: str, expect: str) -> None:
    facts = EventFacts()
    facts.apply({"type": "thread.started", "thread_id": "t"})
    out = classify(exit_code=1, facts=facts, report=None, report_error=None, canceled=False,
                   timed_out=False, thread_mismatch=None, stderr_tail=stderr)
    assert (out.status, out.failure_class) == ("failed", expect)


def test_engine_cpu_is_near_zero_when_idle(harness: Harness) -> None:
    """Event-driven, not polling: an idle engine sleeps (CPU time barely moves)."""
    eng = harness.start()
    proc = psutil.Process(os.getpid())
    wait_for(lambda: any(e.kind == "idle" for e in harness.events), 30, "idle")
    before = sum(proc.cpu_times()[:2])
    wait_for(lambda: False or (utcnow() - harness.events[-1].at).total_seconds() > 2, 10, "2s")
    used = sum(proc.cpu_times()[:2]) - before
    harness.stop(eng)
    assert used < 0.5, f"idle engine used {used:.2f}s CPU in ~2s"


def test_readers_without_an_engine_show_operator_marks(harness: Harness) -> None:
    """`phh scoreboard` recomputed from the store and the API must show a mark-failed step
    as the engine does (failed, dependants blocked), not as ready."""
    from phh_engine.interfaces.api_ops import view_json

    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", final("x")), step("s2", final("y"), depends_on=["s1"])]}])
    assert phh(harness, "mark-failed", bid, "j1", "s1", "--reason", "bad input").returncode == 0
    harness.run()  # the engine applies the request; nothing is left to run
    assert [r.outcome for r in list_results(harness.layout)] == ["applied"]
    assert harness.attempts(bid, "j1", "s1") == []
    out = phh(harness, "scoreboard", "--batch", bid, "--json", "--recompute")
    assert out.returncode == 0, out.stderr
    rows = {r["step_id"]: r["status"] for r in json.loads(out.stdout)["steps"]}
    assert rows == {"s1": "failed", "s2": "blocked"}
    api = {r["step_id"]: r["status"] for r in view_json(harness.layout, bid)["steps"]}
    assert api == rows
    assert view_json(harness.layout)["batches"][0]["counts"]["failed"] == 1
