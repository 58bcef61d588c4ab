"""Verified results (issue 15, docs/verification.md): a verifier per step, `verify_failed`
retries that resume the thread with the verifier's output, repair turns for schema-invalid
reports, and submit validation of both. Real Codex against the stand-in."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import Harness, final, step, wait_for

from phh_engine.interfaces.submit import SubmitError, submit
from phh_engine.models import AttemptState
from phh_engine.standin import script
from phh_engine.store.files import read_model

pytestmark = pytest.mark.codex
PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")
FAST_RETRY = {"max_attempts": 2, "backoff_seconds": 0, "mode": "resume_same_thread"}


def q(text: str) -> str:
    return shlex.quote(text)


def verify_of(attempt: Path) -> dict[str, Any]:
    return Harness.state(attempt)["verify"]


def prompts_with(harness: Harness, needle: str) -> list[str]:
    return [p for r in list(harness.standin.requests) for p in (r.get("prompts") or [])[-1:]
            if needle in p]


def test_verifier_fails_then_passes_after_a_resume_with_its_output(harness: Harness) -> None:
    # the verifier's own output carries the stand-in's script for the follow-up turn: the
    # retry can only pass if phh sent that output back to the same thread
    fix = script({"shell": "echo fixed > fixed.txt"}, final("fixed it"))
    verifier = (f"if test -f fixed.txt; then echo 'all good, score: 0.75'; exit 0; fi; "
                f"echo 'VERIFY-7 fixed.txt is missing'; echo {q(fix)}; exit 1")
    bid = harness.submit([{"job_id": "j", "steps": [
        step("s", prompt="Make fixed.txt.", verify={"command": verifier,
                                                    "score_pattern": r"score: (\d+\.\d+)"}),
    ]}], retries=FAST_RETRY)
    harness.run()
    first, second = harness.attempts(bid, "j", "s")
    st1, st2 = harness.state(first), harness.state(second)
    assert (st1["status"], st1["failure_class"], st1["termination_reason"]) == (
        "failed", "verify_failed", "verify_failed"), st1
    assert st1["verify"]["passed"] is False and st1["verify"]["exit_code"] == 1
    assert st1["verify"].get("score") is None
    assert any("verifier exited 1" in e for e in st1["errors"]), st1["errors"]
    assert "VERIFY-7 fixed.txt is missing" in (first / "verify.log").read_text()
    assert not (first / "handoff.json").exists()
    assert st2["status"] == "succeeded", st2
    assert st2["verify"]["passed"] is True and st2["verify"]["exit_code"] == 0
    assert st2["verify"]["score"] == 0.75
    meta2 = harness.meta(second)
    assert (meta2["trigger"], meta2["invocation"], meta2["parent_run_id"]) == (
        "retry", "resume", st1["run_id"])
    assert st2["codex_thread_id"] == st1["codex_thread_id"]
    # the follow-up turn's prompt, as written and as the model received it
    prompt = (second / "prompt.txt").read_text()
    assert "verifier did not pass" in prompt and "exited 1" in prompt, prompt
    assert "VERIFY-7 fixed.txt is missing" in prompt
    sent = prompts_with(harness, "VERIFY-7 fixed.txt is missing")
    assert sent and "verifier did not pass" in sent[0], sent
    assert (harness.workspace / "fixed.txt").read_text().strip() == "fixed"


def test_verifier_env_has_the_ids_and_no_secrets(harness: Harness,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    # the engine runs in this process: its environment is what a verifier could inherit
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-0001")
    monkeypatch.setenv("CODEX_API_KEY", "sk-test-secret-0002")
    monkeypatch.setenv("PHH_API_TOKEN", "tok-test-secret-0003")
    bid = harness.submit([{"job_id": "j", "steps": [
        step("s", verify={"command": "env | sort > env.txt", "env": {"MY_FLAG": "on"}}),
    ]}])
    harness.run()
    (att,) = harness.attempts(bid, "j", "s")
    st = harness.state(att)
    assert st["status"] == "succeeded", st
    env = dict(line.split("=", 1) for line in
               (harness.workspace / "env.txt").read_text().splitlines() if "=" in line)
    assert env["PHH_BATCH_ID"] == bid and env["PHH_JOB_ID"] == "j"
    assert env["PHH_STEP_ID"] == "s" and env["PHH_RUN_ID"] == st["run_id"]
    assert env["PHH_ATTEMPT_DIR"] == str(att) and env["MY_FLAG"] == "on"
    text = (harness.workspace / "env.txt").read_text()
    for secret in ("sk-test-secret-0001", "sk-test-secret-0002", "tok-test-secret-0003"):
        assert secret not in text
    assert "OPENAI_API_KEY" not in env and "CODEX_API_KEY" not in env
    assert not any(secret in p.read_text(errors="replace") for p in att.rglob("*")
                   if p.is_file() for secret in ("sk-test-secret-0001",))


def test_verifier_cannot_write_outside_the_workspace(harness: Harness) -> None:
    outside = harness.root / "outside.txt"  # beside the workspace, not in it
    verifier = (f"echo in > inside.txt; echo out > {q(str(outside))} && echo WROTE-OUTSIDE; "
                "echo tmp > \"$TMPDIR/scratch.txt\" && echo SCRATCH-OK; "
                "echo slash > /tmp/phh-verify-escape-$PHH_RUN_ID.txt && echo WROTE-TMP; "
                "test -f inside.txt")
    bid = harness.submit([{"job_id": "j", "steps": [step("s", verify={"command": verifier})]}])
    harness.run()
    (att,) = harness.attempts(bid, "j", "s")
    st = harness.state(att)
    assert st["status"] == "succeeded", (st, (att / "verify.log").read_text())
    log = (att / "verify.log").read_text()
    assert (harness.workspace / "inside.txt").exists()
    assert not outside.exists() and "WROTE-OUTSIDE" not in log, log
    assert "WROTE-TMP" not in log and "Read-only file system" in log, log
    assert not Path(f"/tmp/phh-verify-escape-{st['run_id']}.txt").exists()
    assert "SCRATCH-OK" in log, log


def test_verifier_timeout_kills_its_group(harness: Harness) -> None:
    verifier = "echo started; sleep 300 & echo $! > sleeper.pid; wait"
    bid = harness.submit([{"job_id": "j", "steps": [
        step("s", verify={"command": verifier, "timeout_seconds": 2}),
    ]}], retries={"max_attempts": 1})
    harness.run()
    (att,) = harness.attempts(bid, "j", "s")
    st = harness.state(att)
    assert (st["status"], st["failure_class"]) == ("failed", "verify_failed"), st
    v = st["verify"]
    assert v["timed_out"] is True and v.get("exit_code") is None and v["passed"] is False
    assert v["duration_seconds"] >= 2
    log = (att / "verify.log").read_text()
    assert "started" in log and "timed out after 2s" in log
    assert any("timed out" in e for e in st["errors"])
    assert not [p for p in psutil.process_iter(["cmdline"])
                if f"phh-verify:{att}" in (p.info.get("cmdline") or [])]
    # the verifier's background `sleep 300` went with its group
    assert not [p for p in psutil.process_iter(["cwd", "cmdline"])
                if p.info.get("cwd") == str(harness.workspace)
                and "300" in (p.info.get("cmdline") or [])]
    # a tester's: the record without an exit code must read back as the model it is (it
    # read as `queued`, and the next engine "recovered" it in a loop that never went idle)
    assert read_model(att / "state.json", AttemptState) is not None
    harness.run(timeout=120)
    assert harness.state(att)["status"] == "failed" and len(harness.attempts(bid, "j", "s")) == 1
    assert not [e for e in harness.events if e.kind == "recovered"]


def test_verify_log_is_bounded(harness: Harness) -> None:
    verifier = "seq 1 200000; echo 'result=42'"
    bid = harness.submit([{"job_id": "j", "steps": [
        step("s", verify={"command": verifier, "score_pattern": r"result=(?P<score>\d+)"}),
    ]}])
    harness.run()
    (att,) = harness.attempts(bid, "j", "s")
    st = harness.state(att)
    assert st["status"] == "succeeded" and st["verify"]["score"] == 42.0, st
    log = (att / "verify.log").read_bytes()
    assert len(log) <= 64 * 1024 + 200 and b"result=42" in log and b"200000\n" in log
    dropped = re.match(rb"\[phh: (\d+) earlier bytes of output not kept\]\n", log)
    assert dropped, log[:200]
    said = sum(len(f"{i}\n") for i in range(1, 200001)) + len("result=42\n")
    kept = len(log) - dropped.end()
    assert int(dropped.group(1)) + kept >= said  # (+ the sandbox's own warning lines)


BAD_STATUS = script({"final_text": "still not valid"})


def invalid_report(tag: str) -> dict[str, Any]:
    # a Run Report whose status is not allowed: the validator's message quotes the value, so
    # the repair prompt carries the stand-in script inside it (for the exhausted case)
    return {"final_text": json.dumps({
        "schema_version": "1.0.0", "status": tag, "summary": "s", "files_read": [],
        "files_written": [], "artifacts": []})}


def test_repair_turn_fixes_a_schema_invalid_report(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j", "steps": [
        step("s", {"final_text": "this is not JSON"}),
        step("t", {"echo_thread": True}, resume_from={"step_id": "s"}),
    ]}])
    harness.run()
    first, repair = harness.attempts(bid, "j", "s")
    st1, st2 = harness.state(first), harness.state(repair)
    assert (st1["status"], st1["failure_class"]) == ("needs_attention", "schema_invalid")
    assert st2["status"] == "succeeded", st2
    meta = harness.meta(repair)
    assert (meta["trigger"], meta["invocation"], meta["parent_run_id"], meta["retry_of"]) == (
        "repair", "resume", st1["run_id"], st1["run_id"])
    prompt = (repair / "prompt.txt").read_text()
    assert "final message is not JSON" in prompt and "corrected final message" in prompt
    assert prompts_with(harness, "final message is not JSON")
    assert st2["codex_thread_id"] == st1["codex_thread_id"]
    (t,) = harness.attempts(bid, "j", "t")
    assert harness.state(t)["status"] == "succeeded"


def test_repair_turns_exhausted_ends_needs_attention(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j", "steps": [
        step("s", invalid_report(BAD_STATUS)),  # repair_turns: the default, 1
        step("z", {"final_text": "nope"}, repair_turns=0),
    ]}])
    harness.run()
    atts = harness.attempts(bid, "j", "s")
    assert len(atts) == 2, atts
    states = [harness.state(a) for a in atts]
    assert [(s["status"], s["failure_class"]) for s in states] == [
        ("needs_attention", "schema_invalid")] * 2
    assert [harness.meta(a)["trigger"] for a in atts] == ["scheduled", "repair"]
    assert harness.meta(atts[1])["parent_run_id"] == states[0]["run_id"]
    # the repair's prompt named the JSON path and the validator's message
    prompt = (atts[1] / "prompt.txt").read_text()
    assert "at status:" in prompt and "is not one of" in prompt, prompt
    (z,) = harness.attempts(bid, "j", "z")  # repair_turns: 0: no repair at all
    assert harness.state(z)["status"] == "needs_attention"
    board = json.loads(harness.layout.batch_scoreboard(bid).read_text())
    rows = {r["step_id"]: r for r in board["steps"]}
    assert rows["s"]["status"] == "needs_attention" and rows["z"]["status"] == "needs_attention"


# --------------------------------------------------------------------- crash
def run_engine(harness: Harness, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PHH_CRASH_AT", None)
    if crash_at:
        env["PHH_CRASH_AT"] = crash_at
    return subprocess.run([PHH, "--root", str(harness.root), "run", "--no-ui", "--until-idle"],
                          capture_output=True, text=True, timeout=240, env=env)


@pytest.mark.parametrize("point", ["while_verifying", "after_verify_record"])
def test_kill_minus_nine_during_verification_finishes_once(harness: Harness, point: str) -> None:
    verifier = "echo run >> verify_runs.txt; sleep 1; echo 'score=3'"
    bid = harness.submit([{"job_id": "j", "steps": [
        step("s", verify={"command": verifier, "score_pattern": r"score=(\d+)"}),
    ]}], retries={"max_attempts": 2, "backoff_seconds": 0})
    crashed = run_engine(harness, point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (att,) = harness.attempts(bid, "j", "s")
    mid = harness.state(att)
    assert mid["status"] == "running", mid
    if point == "after_verify_record":
        assert mid["verify"]["passed"] is True
    done = run_engine(harness)
    assert done.returncode == 0, done.stderr
    (att,) = harness.attempts(bid, "j", "s")  # concluded, not retried
    st = harness.state(att)
    assert st["status"] == "succeeded" and st["verify"]["passed"] is True, st
    assert st["verify"]["score"] == 3.0
    runs = (harness.workspace / "verify_runs.txt").read_text().split()
    if point == "after_verify_record":
        assert runs == ["run"]  # concluded from the recorded result, never run again
        assert st["verify"] == mid["verify"]
    else:
        assert 1 <= len(runs) <= 2  # the dead engine's run recorded nothing; one result
    assert not [p for p in psutil.process_iter(["cmdline"])
                if f"phh-verify:{att}" in (p.info.get("cmdline") or [])]


def test_cancel_kills_a_running_verifier_and_beats_go_on(harness: Harness) -> None:
    harness.settings.codex.heartbeat_seconds = 0.5
    harness.write_settings()
    bid = harness.submit([{"job_id": "j", "steps": [
        step("s", verify={"command": "echo waiting; sleep 300"}),
    ]}])
    eng = harness.start()
    att = wait_for(lambda: next(iter(harness.attempts(bid, "j", "s")), None), 60, "attempt")
    wait_for(lambda: harness.state(att).get("current_item") == "verifying", 90, "verifying")
    st = harness.state(att)
    assert st["status"] == "running" and st.get("verify") is None
    beat = st["last_heartbeat_at"]
    # heartbeats continue while the verifier runs (never stuck, never lost)
    wait_for(lambda: harness.state(att)["last_heartbeat_at"] > beat, 30, "a later heartbeat")
    assert harness.state(att)["current_item"] == "verifying"
    wait_for(lambda: [p for p in psutil.process_iter(["cmdline"])
                      if f"phh-verify:{att}" in (p.info.get("cmdline") or [])], 30, "verifier")
    res = harness.call(eng, eng.request("cancel", bid, "j", "s"))
    assert res.outcome == "applied", res
    wait_for(lambda: harness.state(att)["status"] == "canceled", 60, "canceled")
    harness.stop(eng)
    st = harness.state(att)
    assert st["failure_class"] == "canceled" and st["verify"]["passed"] is False
    assert "canceled" in (att / "verify.log").read_text()
    assert not [p for p in psutil.process_iter(["cmdline"])
                if f"phh-verify:{att}" in (p.info.get("cmdline") or [])]


# --------------------------------------------------------------------- submit
def _table(harness: Harness, **step_kw: Any) -> Path:
    path = harness.root / "bad.json"
    path.write_text(json.dumps(harness.table(
        [{"job_id": "j", "steps": [step("s", **step_kw)]}])))
    return path


@pytest.mark.parametrize(("kw", "where", "what"), [
    ({"verify": {"command": "   "}}, "jobs[0].steps[0].verify.command", "empty"),
    ({"verify": {"command": ""}}, "jobs[0].steps[0].verify.command", ""),
    ({"verify": {"command": "true", "score_pattern": "(unclosed"}},
     "jobs[0].steps[0].verify.score_pattern", "does not compile"),
    ({"verify": {"command": "true", "timeout_seconds": 0}},
     "jobs[0].steps[0].verify.timeout_seconds", ""),
    ({"verify": {"command": "true", "env": {"A=B": "x"}}},
     "jobs[0].steps[0].verify.env", "not an environment variable name"),
    ({"verify": {"command": "true", "env": {"A": "x\u0000y"}}},
     "jobs[0].steps[0].verify.env", "NUL"),
    ({"verify": {"command": "true\u0000"}}, "jobs[0].steps[0].verify.command", "NUL"),
    ({"verify": "pytest"}, "jobs[0].steps[0].verify", ""),
    ({"repair_turns": -1}, "jobs[0].steps[0].repair_turns", ""),
    ({"repair_turns": 11}, "jobs[0].steps[0].repair_turns", ""),
    # a tester's: a pattern that can never score, and one execve could not even pass on
    ({"verify": {"command": "true", "score_pattern": ""}},
     "jobs[0].steps[0].verify.score_pattern", "empty"),
    ({"verify": {"command": "true", "score_pattern": "a\u0000"}},
     "jobs[0].steps[0].verify.score_pattern", "NUL"),
])
def test_submit_refuses_bad_verify_and_repair_turns(harness: Harness, kw: dict[str, Any],
                                                     where: str, what: str) -> None:
    path = _table(harness, **kw)
    with pytest.raises(SubmitError) as err:
        submit(harness.layout, path)
    issues = [(i.path, i.message) for i in err.value.issues]
    assert any(p == where and what in m for p, m in issues), issues
    assert not [p for p in harness.layout.runs.iterdir() if not p.name.startswith("_")]
    cli = subprocess.run([PHH, "--root", str(harness.root), "submit", str(path)],
                         capture_output=True, text=True, timeout=60)
    assert cli.returncode == 2 and where in cli.stderr + cli.stdout, cli
    assert "Traceback" not in cli.stderr


def test_submit_batch_verify_is_each_steps_default(harness: Harness) -> None:
    path = harness.root / "ok.json"
    path.write_text(json.dumps(harness.table([{"job_id": "j", "steps": [
        step("a"), step("b", verify={"command": "make check"}, repair_turns=0),
    ]}], verify={"command": "make test", "timeout_seconds": 30}, repair_turns=3)))
    bid = submit(harness.layout, path).batch_id
    meta = json.loads(harness.layout.batch_meta(bid).read_text())
    a, b = meta["jobs"][0]["steps"]
    assert a["verify"]["command"] == "make test" and a["verify"]["timeout_seconds"] == 30
    assert a["repair_turns"] == 3
    assert b["verify"]["command"] == "make check"  # the step's wins wholesale
    assert b["verify"]["timeout_seconds"] == 600.0 and b["repair_turns"] == 0
    bad = harness.root / "bad_batch.json"
    bad.write_text(json.dumps(harness.table([{"job_id": "j", "steps": [step("a")]}],
                                            verify={"command": "x", "score_pattern": "[z-a]"})))
    with pytest.raises(SubmitError) as err:
        submit(harness.layout, bad)
    assert [i.path for i in err.value.issues] == ["verify.score_pattern"]
    assert re.search("does not compile", err.value.issues[0].message)


# --------------------------------------------------------------------- pure: repair budget
def _view(k: int, status: str, reason: str | None, trigger: str | None) -> Any:
    from phh_engine.models import AttemptMeta, AttemptState
    from phh_engine.store.views import AttemptView

    now = datetime(2026, 1, 1, tzinfo=UTC)
    st = AttemptState(batch_id="b", job_id="j", step_id="s", run_id=f"r{k}", runner_id="x",
                      status=status, updated_at=now, ended_at=now, codex_thread_id="t",
                      termination_reason=reason,
                      failure_class="schema_invalid" if reason == "schema_invalid" else None)
    meta = AttemptMeta.model_construct(trigger=trigger) if trigger else None
    return AttemptView(f"r{k}", f"2026{k:04d}_r{k}", Path(f"/x/r{k}"), meta=meta, state=st,
                       resume_base_ready=True)


@pytest.mark.parametrize(("history", "turns", "want"), [
    ([("scheduled", "schema_invalid")], 1, "repair 1/1 after schema_invalid"),
    ([("scheduled", "schema_invalid"), ("repair", "schema_invalid")], 1, None),
    ([("scheduled", "schema_invalid"), ("repair", "schema_invalid")], 2,
     "repair 2/2 after schema_invalid"),
    ([("scheduled", "schema_invalid"), (None, "schema_invalid"), ("repair", "schema_invalid")],
     2, None),  # the middle one's meta.json unread (scoreboard index): still a repair
    ([("scheduled", "schema_invalid"), ("repair", "schema_invalid"),
      ("operator_retry", "schema_invalid")], 1, "repair 1/1 after schema_invalid"),
    ([("scheduled", "schema_invalid")], 0, None),
    ([("scheduled", "exit")], 1, None),
])
def test_repair_budget(history: list[tuple[str | None, str]], turns: int,
                       want: str | None) -> None:
    from phh_engine.derive.readiness import step_readiness
    from phh_engine.derive.repair import repair_due
    from phh_engine.models import (
        BatchMeta,
        EffectiveDefaults,
        ExecutionPolicy,
        NormalizedJob,
        NormalizedStep,
        RetentionPolicy,
        RetryPolicy,
        Timeouts,
    )
    from phh_engine.store.views import BatchView

    spec = NormalizedStep(step_id="s", prompt="p", prompt_sha256="x", depends_on=[],
                          timeout_seconds=60, retry_policy=RetryPolicy(retry_on=[]),
                          repair_turns=turns)
    meta = BatchMeta.model_construct(
        batch_id="b", jobs=[NormalizedJob.model_construct(job_id="j", steps=[spec])],
        effective_defaults=EffectiveDefaults(
            execution_policy=ExecutionPolicy(), timeouts=Timeouts(), retries=RetryPolicy(),
            retention_policy=RetentionPolicy(), workspace_policy="shared",
            heartbeat_stale_after_seconds=3600))
    batch = BatchView.from_meta(meta)
    job = batch.jobs["j"]
    stv = job.steps["s"]
    for k, (trigger, reason) in enumerate(history):
        status = "needs_attention" if reason == "schema_invalid" else "failed"
        stv.add_attempt(_view(k, status, reason, trigger))
    assert repair_due(stv) == want
    r = step_readiness(batch, job, stv, datetime(2026, 1, 2, tzinfo=UTC))
    if want:  # the step is not needs_attention while its repair is due
        assert (r.status, r.trigger, r.runnable, r.reasons) == ("ready", "repair", True, [want])
        assert r.retry_of is stv.latest
    else:
        assert r.status in ("needs_attention", "failed") and r.trigger != "repair"


def test_bad_verify_is_refused_at_every_entry(harness: Harness) -> None:
    """The same error with its JSON path from the drop folder (rejected with an error file)
    and the HTTP API (422, every error), as from the CLI above; nothing is created."""
    from test_api import serving

    from phh_engine.interfaces.queue import DropQueue
    from phh_engine.store.harness_config import load_config

    lt = harness.table([{"job_id": "j", "steps": [
        step("s", verify={"command": " ", "score_pattern": "(x"}, repair_turns=99)]}])
    want = {"jobs[0].steps[0].verify.command", "jobs[0].steps[0].verify.score_pattern",
            "jobs[0].steps[0].repair_turns"}
    q = DropQueue(harness.layout, load_config(harness.layout))
    q.ensure_dirs()
    (q.incoming / "bad.json").write_text(json.dumps(lt))
    (res,) = q.scan()
    assert res.status == "rejected"
    err = json.loads((q.rejected / "bad.json.error.json").read_text())
    assert want <= {e["path"] for e in err["errors"]}, err
    with serving(harness.layout, harness.settings) as c:
        r = c.post("/v1/batches", json={"launch_table": lt})
        assert r.status_code == 422, r.text
        assert want <= {e["path"] for e in r.json()["errors"]}, r.text
    assert not [p for p in harness.layout.runs.iterdir() if not p.name.startswith("_")]


# --------------------------------------------------------------------- pure: argv, env, score
def test_verifier_argv_follows_the_agents_sandbox(tmp_path: Path) -> None:
    from phh_engine.models import ExecutionPolicy
    from phh_engine.runners.verify import verifier_argv

    scratch = tmp_path / "scratch"
    ww = verifier_argv("/c", ExecutionPolicy(add_dirs=["/data"]), "make test", "m", scratch)
    assert ww[:2] == ["/c", "sandbox"] and ww[-5:] == ["--", "/bin/sh", "-c", "make test", "m"]
    cfg = [ww[i + 1] for i, a in enumerate(ww) if a == "-c" and ww[i + 1] != "make test"]
    assert 'sandbox_mode="workspace-write"' in cfg
    assert "sandbox_workspace_write.exclude_slash_tmp=true" in cfg
    assert f'sandbox_workspace_write.writable_roots=["{scratch}", "/data"]' in cfg
    assert "sandbox_workspace_write.network_access=false" in cfg
    ro = verifier_argv("/c", ExecutionPolicy(sandbox="read-only"), "x", "m", scratch)
    assert ro[:4] == ["/c", "sandbox", "-c", 'sandbox_mode="read-only"'] and len(ro) == 9
    for plain in (ExecutionPolicy(bypass_sandbox=True),
                  ExecutionPolicy(sandbox="danger-full-access")):
        assert verifier_argv("/c", plain, "x", "m", scratch) == ["/bin/sh", "-c", "x", "m"]


def test_verifier_env_is_built_from_scratch(tmp_path: Path) -> None:
    from phh_engine.models import VerifySpec
    from phh_engine.runners.verify import verifier_env

    base = {"PATH": "/bin", "HOME": "/h", "LC_ALL": "C", "OPENAI_API_KEY": "k",
            "AWS_SECRET_ACCESS_KEY": "s", "HTTPS_PROXY": "http://u:p@x", "PHH_API_TOKEN": "t"}
    env = verifier_env(VerifySpec(command="x", env={"A": "1", "PATH": "/opt"}), batch_id="b",
                       job_id="j", step_id="s", run_id="r", attempt_dir=tmp_path,
                       scratch=tmp_path / "t", base=base)
    assert env == {"PATH": "/opt", "HOME": "/h", "LC_ALL": "C", "TMPDIR": str(tmp_path / "t"),
                   "PHH_BATCH_ID": "b", "PHH_JOB_ID": "j", "PHH_STEP_ID": "s",
                   "PHH_RUN_ID": "r", "PHH_ATTEMPT_DIR": str(tmp_path), "A": "1"}


@pytest.mark.parametrize(("pattern", "text", "want"), [
    (r"score=(\d+)", "score=1\nscore=2\n", 2.0),  # the last match
    (r"(?P<score>[\d.]+)% covered", "87.5% covered", 87.5),
    (r"\d+\.\d+", "took 1.25", 1.25),  # no group: the whole match
    (r"score=(\w+)", "score=high", None),  # not a number
    (r"score=(\S+)", "score=nan", None),
    (r"missing", "nothing here", None),
    (None, "score=1", None),
    (r"score=(\S+)", "score=1_000", None),  # float() would read it; a score is plain digits
])
def test_parse_score(pattern: str | None, text: str, want: float | None) -> None:
    from phh_engine.runners.verify import parse_score

    assert parse_score(pattern, text) == want


def test_a_backtracking_score_pattern_is_bounded_not_run_on_the_engine() -> None:
    """A tester's `(a+)+b` over `aaa…a!` doubles its time with each `a`: Python's re holds
    the GIL, so in a thread it stalled the engine's loop for seconds; in the child process
    it is killed at the deadline and there is no score, with a note."""
    from phh_engine.runners.verify import parse_score_bounded

    assert parse_score_bounded(r"score=(\d+)", "score=7\n") == (7.0, None)
    score, note = parse_score_bounded("(a+)+b", "a" * 60 + "!", timeout=1.0)
    assert score is None and note is not None and "did not finish" in note


def test_a_fault_in_the_verifier_hook_still_ends_the_attempt(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    bid = harness.submit([
        {"job_id": "a", "steps": [step("s", verify={"command": "echo ran > ran.txt"})]},
        {"job_id": "b", "steps": [step("s")]},  # no verifier: the hook is not reached
    ], retries={"max_attempts": 1})
    monkeypatch.setenv("PHH_FAULT_AT", "verify")
    harness.run()
    (a,) = harness.attempts(bid, "a", "s")
    st = harness.state(a)
    assert (st["status"], st["failure_class"]) == ("failed", "internal_error"), st
    assert any("injected fault at verify" in e for e in st["errors"]), st["errors"]
    assert not (harness.workspace / "ran.txt").exists()
    (b,) = harness.attempts(bid, "b", "s")
    assert harness.state(b)["status"] == "succeeded"


def test_no_verifier_on_an_invalid_report_and_the_repair_is_verified(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j", "steps": [
        step("s", {"shell": "echo data > out.txt"}, {"final_text": "done, no JSON"},
             verify={"command": "echo checked >> checks.txt; grep -q data out.txt"}),
    ]}])
    harness.run()
    first, repair = harness.attempts(bid, "j", "s")
    st1, st2 = harness.state(first), harness.state(repair)
    assert st1["status"] == "needs_attention" and "verify" not in st1
    assert not (first / "verify.log").exists()
    assert st2["status"] == "succeeded" and st2["verify"]["passed"] is True, st2
    assert harness.meta(repair)["trigger"] == "repair"
    assert (harness.workspace / "checks.txt").read_text().split() == ["checked"]


def test_an_engine_that_detaches_mid_verification_leaves_it_to_the_next(
        harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j", "steps": [
        step("s", verify={"command": "echo run >> runs.txt; sleep 2; echo score=5",
                          "score_pattern": r"score=(\d)"}),
    ]}])
    eng = harness.start()
    att = wait_for(lambda: next(iter(harness.attempts(bid, "j", "s")), None), 60, "attempt")
    wait_for(lambda: (harness.workspace / "runs.txt").exists(), 90, "the verifier running")
    assert harness.state(att)["current_item"] == "verifying"
    eng.stop(detach=True)  # stops watching; the verifier must not outlive its watcher
    for e, t, _ in harness._threads:
        if e is eng:
            t.join(60)
            assert not t.is_alive()
    st = harness.state(att)
    assert st["status"] == "running" and "verify" not in st, st
    assert not [p for p in psutil.process_iter(["cmdline"])
                if f"phh-verify:{att}" in (p.info.get("cmdline") or [])]
    harness.run()  # adopts it: Codex has exited, the verifier runs again, once
    (att,) = harness.attempts(bid, "j", "s")
    st = harness.state(att)
    assert st["status"] == "succeeded" and st["verify"]["score"] == 5.0, st
    assert (harness.workspace / "runs.txt").read_text().split() == ["run", "run"]
