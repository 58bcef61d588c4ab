"""Engine scenarios with the real Codex binary against the scripted stand-in."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from conftest import Harness, final, step

from phh_engine.models import utcnow
from phh_engine.store.pointers import build_current

pytestmark = pytest.mark.codex


def tree_hash(root: Path) -> str:
    """Content hash of a directory tree (names + bytes), to prove a source never changes."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        h.update(str(p.relative_to(root)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def test_exec_success_writes_every_promised_file(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "echo hi > hello.txt"},
             final("wrote hello", files_written=["hello.txt"])),
    ]}])
    harness.run()
    (att,) = harness.attempts(bid, "j1", "s1")
    st, meta = harness.state(att), harness.meta(att)
    assert st["status"] == "succeeded" and st["exit_code"] == 0
    assert st["started_at"] and st["ended_at"] and st["last_heartbeat_at"]
    assert st["codex_thread_id"] and st["turn_completed"] is True
    assert st["usage"]["input_tokens"] > 0
    assert st["current_item"]
    assert meta["invocation"] == "exec" and meta["run_id"] in att.name
    assert meta["environment_snapshot"]["codex_cli_version"]
    assert meta["command"][-1] == "-" and "--json" in meta["command"]
    report = json.loads((att / "final.json").read_text())
    assert report["summary"] == "wrote hello"
    assert (att / "final.txt").read_text().startswith("{")
    assert (att / "codex.events.jsonl").stat().st_size > 0
    assert (att / "codex_home" / "sessions").is_dir()
    assert (harness.workspace / "hello.txt").read_text().strip() == "hi"
    cur = json.loads(harness.layout.current(bid, "j1").read_text())
    assert cur["steps"]["s1"]["latest"]["run_id"] == meta["run_id"]
    assert cur["steps"]["s1"]["latest"]["codex_thread_id"] == st["codex_thread_id"]
    assert cur["steps"]["s1"]["latest_successful"]["run_id"] == meta["run_id"]
    sb = json.loads(harness.layout.batch_scoreboard(bid).read_text())
    assert sb["counts"]["succeeded"] == 1
    system = json.loads(harness.layout.system_scoreboard.read_text())
    assert [r["batch_id"] for r in system["batches"]] == [bid]
    health = json.loads(harness.layout.runner_health("local").read_text())
    assert health["runner_id"] == "local" and health["capacity"] == 4


def test_retry_after_model_error_keeps_both_attempts(harness: Harness) -> None:
    flaky = {"http_error": 500, "times": 1, "otherwise": final("second time lucky")}
    bid = harness.submit(
        [{"job_id": "j1", "steps": [step("s1", flaky, prompt="retry-test")]}],
        retries={"max_attempts": 2, "backoff_seconds": 0.2},
    )
    harness.run()
    first, second = harness.attempts(bid, "j1", "s1")
    s1, s2 = harness.state(first), harness.state(second)
    assert s1["status"] == "failed" and s1["failure_class"] == "model_error"
    assert s2["status"] == "succeeded"
    assert harness.meta(second)["retry_of"] == s1["run_id"]
    assert harness.meta(second)["trigger"] == "retry"
    cur = json.loads(harness.layout.current(bid, "j1").read_text())["steps"]["s1"]
    assert cur["latest"]["run_id"] == s2["run_id"]
    assert cur["latest_successful"]["run_id"] == s2["run_id"]
    assert set(cur["by_run_id"]) == {s1["run_id"], s2["run_id"]}
    gap = (datetime.fromisoformat(s2["started_at"]) -
           datetime.fromisoformat(s1["ended_at"])).total_seconds()
    assert gap >= 0.2  # the backoff was honoured


def test_resume_continues_thread_and_never_touches_source(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "echo one > one.txt"}, final("first")),
    ]}])
    harness.run()
    (src,) = harness.attempts(bid, "j1", "s1")
    before = tree_hash(src)
    # a second batch cannot resume another batch's step; so resume within one batch:
    bid2 = harness.submit([{"job_id": "j1", "steps": [
        step("s1", final("first"), prompt="resume-src"),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"}),
    ]}])
    harness.run()
    (a1,) = harness.attempts(bid2, "j1", "s1")
    h1 = tree_hash(a1)
    (a2,) = harness.attempts(bid2, "j1", "s2")
    m2, s2 = harness.meta(a2), harness.state(a2)
    thread = harness.state(a1)["codex_thread_id"]
    assert s2["status"] == "succeeded"
    assert m2["invocation"] == "resume" and m2["parent_run_id"] == harness.state(a1)["run_id"]
    assert m2["resume_from"] == {"step_id": "s1", "selector": "latest_successful",
                                 "selected_run_id": harness.state(a1)["run_id"]}
    assert m2["resume_base_copied_from"] == str(a1 / "codex_home")
    assert m2["codex_thread_id"] == thread and s2["codex_thread_id"] == thread
    assert m2["command"][-3:] == ["resume", thread, "-"]
    # the resumed conversation carried the first prompt: the stand-in saw two prompts
    assert "saw 2 user prompts" in json.loads((a2 / "final.json").read_text())["summary"]
    assert tree_hash(a1) == h1, "the resume base must never be modified"
    assert tree_hash(src) == before
    # the conversation file travelled into the copy; nothing was written into the source
    src_rollouts = {p.name for p in (a1 / "codex_home" / "sessions").rglob("*.jsonl")}
    assert src_rollouts and src_rollouts <= {
        p.name for p in (a2 / "codex_home" / "sessions").rglob("*.jsonl")}


def test_branch_resume_two_steps_from_one_source(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", final("root")),
        step("left", {"echo_thread": True}, prompt="go left", resume_from={"step_id": "s1"}),
        step("right", {"echo_thread": True}, prompt="go right", resume_from={"step_id": "s1"}),
    ]}])
    harness.run()
    (src,) = harness.attempts(bid, "j1", "s1")
    thread = harness.state(src)["codex_thread_id"]
    src_hash = tree_hash(src)
    for sid in ("left", "right"):
        (a,) = harness.attempts(bid, "j1", sid)
        st = harness.state(a)
        assert st["status"] == "succeeded", st
        assert st["codex_thread_id"] == thread
        assert "saw 2 user prompts" in json.loads((a / "final.json").read_text())["summary"]
    assert tree_hash(src) == src_hash


def _adopt_attempt(harness: Harness, att: Path, batch_id: str, job_id: str, step_id: str) -> str:
    """Place a finished attempt into another batch's step (as if it had run there)."""
    dst = harness.layout.attempts_dir(batch_id, job_id, step_id) / att.name
    shutil.copytree(att, dst, symlinks=True)
    st = json.loads((dst / "state.json").read_text())
    st.update(batch_id=batch_id, job_id=job_id, step_id=step_id)
    (dst / "state.json").write_text(json.dumps(st))
    return st["run_id"]


def test_selectors_run_id_and_latest_pick_the_named_attempt(harness: Harness) -> None:
    # two finished attempts with different threads, made by real Codex runs
    src = harness.submit([
        {"job_id": "a", "steps": [step("s1", final("alpha"), prompt="alpha")]},
        {"job_id": "b", "steps": [step("s1", final("beta"), prompt="beta")]},
    ])
    harness.run()
    (alpha,) = harness.attempts(src, "a", "s1")
    (beta,) = harness.attempts(src, "b", "s1")
    older, newer = sorted([alpha, beta], key=lambda p: harness.state(p)["ended_at"])
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", final("never runs: s1 already has successful attempts")),
        step("by_id", {"echo_thread": True}, prompt="by id",
             resume_from={"step_id": "s1", "selector": "run_id",
                          "run_id": harness.state(older)["run_id"]}),
        step("by_latest", {"echo_thread": True}, prompt="by latest",
             resume_from={"step_id": "s1", "selector": "latest"}),
        step("by_default", {"echo_thread": True}, prompt="by default",
             resume_from={"step_id": "s1"}),
    ]}])
    for att in (older, newer):
        _adopt_attempt(harness, att, bid, "j1", "s1")
    harness.run()
    assert len(harness.attempts(bid, "j1", "s1")) == 2  # nothing new ran for s1
    expect = {"by_id": older, "by_latest": max(older, newer, key=lambda p: p.name),
              "by_default": newer}
    for sid, source in expect.items():
        (a,) = harness.attempts(bid, "j1", sid)
        meta, st = harness.meta(a), harness.state(a)
        assert st["status"] == "succeeded", (sid, st)
        assert meta["resume_from"]["selected_run_id"] == harness.state(source)["run_id"], sid
        assert st["codex_thread_id"] == harness.state(source)["codex_thread_id"], sid


def test_selector_run_id_unknown_blocks_with_reason(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", final("src"), prompt="exact2"),
        step("s2", final("resumed"),
             resume_from={"step_id": "s1", "selector": "run_id", "run_id": "rnosuchrun"}),
    ]}])
    harness.run()
    assert harness.attempts(bid, "j1", "s2") == []
    sb = json.loads(harness.layout.batch_scoreboard(bid).read_text())
    assert sb["blocked"][0]["reasons"] == ["resume_from: run_id rnosuchrun not found in j1.s1"]


def test_schema_invalid_report_needs_attention_and_keeps_text(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"final_text": "Sure! all good, no JSON here"}, repair_turns=0),
    ]}])
    harness.run()
    (att,) = harness.attempts(bid, "j1", "s1")
    st = harness.state(att)
    assert st["status"] == "needs_attention"
    assert st["termination_reason"] == "schema_invalid"
    assert (att / "final.txt").read_text() == "Sure! all good, no JSON here"
    assert not (att / "final.json").exists()
    assert any("not JSON" in e for e in st["errors"])
    sb = json.loads(harness.layout.batch_scoreboard(bid).read_text())
    assert [a["kind"] for a in sb["attention"]] == ["needs_attention"]


def test_timeout_fails_with_reason_and_kills_codex(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"hang": 60}, timeout_seconds=2),
    ]}], retries={"max_attempts": 1})
    t0 = utcnow()
    harness.run(timeout=60)
    assert (utcnow() - t0).total_seconds() < 30
    (att,) = harness.attempts(bid, "j1", "s1")
    st = harness.state(att)
    assert st["status"] == "failed" and st["termination_reason"] == "timeout"
    assert st["failure_class"] == "timeout"
    import psutil
    assert not psutil.pid_exists(st["pid"]) or psutil.Process(st["pid"]).status() == "zombie"


def test_shell_tool_change_shows_in_git_diff(harness: Harness) -> None:
    ws = harness.workspace
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / "tracked.txt").write_text("old\n")
    subprocess.run(["git", "-C", str(ws), "add", "."], check=True)
    subprocess.run(["git", "-C", str(ws), "-c", "user.email=t@t", "-c", "user.name=t",
                    "commit", "-qm", "init"], check=True)
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "echo new > tracked.txt && echo fresh > added.txt"}, final("edited")),
    ]}])
    harness.run()
    (att,) = harness.attempts(bid, "j1", "s1")
    diff = (att / "git_diff.patch").read_text()
    assert "+new" in diff and "-old" in diff
    assert "added.txt" in diff and "+fresh" in diff
    assert len((att / "git_head.txt").read_text().strip()) == 40
    touched = json.loads((att / "files_touched.json").read_text())
    assert {"tracked.txt", "added.txt"} <= set(touched["from_git_status"])


def test_twenty_jobs_two_steps_respect_concurrency(harness: Harness) -> None:
    jobs = [{"job_id": f"j{i:02d}", "steps": [
        step("s1", {"shell": "true", "delay": 0.2}, final(f"j{i} s1"), prompt=f"fan {i}"),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"}),
    ]} for i in range(20)]
    bid = harness.submit(jobs)
    harness.run(timeout=300, concurrency=4)
    spans: list[tuple[datetime, datetime]] = []
    for i in range(20):
        for sid in ("s1", "s2"):
            (att,) = harness.attempts(bid, f"j{i:02d}", sid)
            st = harness.state(att)
            assert st["status"] == "succeeded", (i, sid, st)
            spans.append((datetime.fromisoformat(st["started_at"]),
                          datetime.fromisoformat(st["ended_at"])))
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                    key=lambda p: (p[0], p[1]))
    live = peak = 0
    for _, d in points:
        live += d
        peak = max(peak, live)
    assert peak <= 4, f"concurrency exceeded: {peak}"
    assert peak >= 2, "expected attempts to overlap"


def test_no_secret_from_environment_lands_under_runs(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = "sk-phhtest-" + "Z" * 32
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    monkeypatch.setenv("CODEX_API_KEY", secret)
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "echo working"}, final("ok")),
        step("s2", final("ok2"), resume_from={"step_id": "s1"}),
    ]}])
    harness.run()
    for sid in ("s1", "s2"):
        (att,) = harness.attempts(bid, "j1", sid)
        assert harness.state(att)["status"] == "succeeded"
        assert not (att / "codex_home" / "auth.json").exists()
    for p in harness.root.rglob("*"):
        if p.is_file() and not p.is_symlink():
            assert secret.encode() not in p.read_bytes(), f"secret leaked into {p}"


def test_reindex_rebuilds_current_json(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("x"), prompt="reidx")]}])
    harness.run()
    cur_path = harness.layout.current(bid, "j1")
    before = json.loads(cur_path.read_text())
    cur_path.unlink()
    out = subprocess.run([str(Path(__file__).parents[1] / ".venv/bin/phh"), "--root",
                          str(harness.root), "reindex", "--json"],
                         capture_output=True, text=True, check=True)
    assert json.loads(out.stdout)["jobs_reindexed"] == 1
    after = json.loads(cur_path.read_text())
    before.pop("updated_at"), after.pop("updated_at")
    assert after == before
    rebuilt = build_current(harness.layout, bid, "j1", utcnow()).model_dump(mode="json",
                                                                               exclude_none=True)
    rebuilt.pop("updated_at")
    assert rebuilt == after


def test_stop_after_the_engine_ended_is_a_no_op(harness: Harness) -> None:
    """A UI may quit after the engine finished on its own (until_idle): stop() from another
    thread must not raise because the engine's loop is closed."""
    harness.submit([{"job_id": "j1", "steps": [step("s1", final("x"))]}])
    eng = harness.run()
    assert eng.loop is not None and eng.loop.is_closed()
    eng.stop()
    eng.stop(cancel_running=True, detach=True)


def test_serving_signal_before_and_after_the_loop(harness: Harness) -> None:
    """`serving` is the public signal a caller waits on instead of polling the loop: unset
    (and the thread-safe entry points refuse) before `serve`; set once it ran."""
    from phh_engine.engine.loop import Engine

    idle = Engine(harness.root)
    assert idle.loop is None and not idle.wait_serving(0.01)
    with pytest.raises(RuntimeError, match="not serving"):
        idle.call_threadsafe(lambda: None)
    harness.submit([{"job_id": "j1", "steps": [step("s1", final("x"))]}])
    eng = harness.run()
    assert eng.serving.is_set() and eng.wait_serving(0)
    assert eng.loop is not None and eng.loop.is_closed()
