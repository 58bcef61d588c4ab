"""The CLI as a newcomer uses it: init, submit (valid and every invalid class), headless run
with its live log, signals, scoreboard output."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import GOAL, Harness, final, step, wait_for

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")


def phh(root: Path, *args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHH, "--root", str(root), *args], capture_output=True, text=True,
                          timeout=180, **kw)  # type: ignore[call-overload]


def write(path: Path, obj: object) -> Path:
    path.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return path


def good_table(tmp: Path) -> dict:
    return {"batch_goal_summary": GOAL, "working_root": str(tmp),
            "jobs": [{"job_id": "j1", "steps": [{"step_id": "s1", "prompt": "hi"}]}]}


INVALID = {
    "bad_json": ('{"batch_goal_summary": "x", "jobs": [', ["line 1"]),
    "missing_goal": ({"jobs": [{"job_id": "j1", "steps": [{"step_id": "s", "prompt": "p"}]}]},
                     ["batch_goal_summary"]),
    "short_goal": ({"batch_goal_summary": "too short", "jobs": [
        {"job_id": "j1", "steps": [{"step_id": "s", "prompt": "p"}]}]}, ["150"]),
    "unknown_dependency": ({"batch_goal_summary": GOAL, "jobs": [{"job_id": "j1", "steps": [
        {"step_id": "s", "prompt": "p", "depends_on": ["nope"]}]}]}, ["nope"]),
    "cycle": ({"batch_goal_summary": GOAL, "jobs": [{"job_id": "j1", "steps": [
        {"step_id": "a", "prompt": "p", "depends_on": ["b"]},
        {"step_id": "b", "prompt": "p", "depends_on": ["a"]}]}]}, ["cycle"]),
    "bad_id": ({"batch_goal_summary": GOAL, "jobs": [{"job_id": "../x", "steps": [
        {"step_id": "s", "prompt": "p"}]}]}, ["../x"]),
    "duplicate_ids": ({"batch_goal_summary": GOAL, "jobs": [
        {"job_id": "j1", "steps": [{"step_id": "s", "prompt": "p"}]},
        {"job_id": "j1", "steps": [{"step_id": "s", "prompt": "p"},
                                   {"step_id": "s", "prompt": "q"}]}]}, ["j1", "s"]),
    "missing_prompt_file": ({"batch_goal_summary": GOAL, "jobs": [{"job_id": "j1", "steps": [
        {"step_id": "s", "prompt_ref": "no/such/prompt.md"}]}]}, ["prompt.md"]),
}


@pytest.mark.parametrize("case", list(INVALID))
def test_invalid_launch_tables_exit_2_and_write_nothing(tmp_path: Path, case: str) -> None:
    root = tmp_path / "root"
    doc, needles = INVALID[case]
    out = phh(root, "submit", str(write(tmp_path / "lt.json", doc)), "--json")
    assert out.returncode == 2, out
    for needle in needles:
        assert needle in out.stderr, (needle, out.stderr)
    errors = json.loads(out.stdout)["errors"]
    assert errors and all(e["path"] and e["message"] for e in errors)
    assert not (root / "runs").exists() or not any(
        p for p in (root / "runs").iterdir() if not p.name.startswith("_"))


def test_all_errors_of_one_file_are_listed_together(tmp_path: Path) -> None:
    doc = {"batch_goal_summary": "short", "jobs": [{"job_id": "../x", "steps": [
        {"step_id": "a", "prompt": "p", "depnds_on": ["b"]},
        {"step_id": "b", "prompt_ref": "missing.md"}]}]}
    out = phh(tmp_path, "submit", str(write(tmp_path / "lt.json", doc)), "--json")
    assert out.returncode == 2
    msgs = " ".join(e["message"] for e in json.loads(out.stdout)["errors"])
    for needle in ("150", "../x", "depnds_on", "did you mean", "missing.md"):
        assert needle in msgs, needle


def test_init_submit_scoreboard_round_trip(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert phh(root, "init").returncode == 0
    assert (root / "runs" / "_system" / "harness_config.json").exists()
    out = phh(root, "submit", str(write(tmp_path / "lt.json", good_table(tmp_path))), "--json")
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout)
    assert res["accepted_job_ids"] == ["j1"]
    sb = json.loads(phh(root, "scoreboard", "--json").stdout)
    assert sb["batches"][0]["batch_id"] == res["batch_id"]
    assert sb["batches"][0]["counts"]["ready"] == 1
    b = json.loads(phh(root, "scoreboard", "--batch", res["batch_id"], "--json").stdout)
    assert b["steps_total"] == 1 and b["counts"]["ready"] == 1
    human = phh(root, "scoreboard", "--batch", res["batch_id"]).stdout
    assert res["batch_id"] in human
    missing = phh(root, "scoreboard", "--batch", "nosuch")
    assert missing.returncode == 1 and "nosuch" in missing.stderr


@pytest.mark.codex
def test_headless_run_logs_each_attempt_and_until_idle_exits(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", final("one")), step("s2", final("two"), resume_from={"step_id": "s1"})]}])
    out = phh(harness.root, "run", "--no-ui", "--until-idle")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    starts = [ln for ln in lines if " start " in ln]
    ends = [ln for ln in lines if " end " in ln]
    assert len(starts) == 2 and len(ends) == 2
    assert f"{bid}/j1/s1" in starts[0] and "succeeded" in ends[0]
    assert "resume of" in starts[1]
    assert any("2/2 succeeded" in ln for ln in lines)
    js = phh(harness.root, "run", "--no-ui", "--until-idle", "--json-log")
    assert js.returncode == 0
    events = [json.loads(ln) for ln in js.stdout.splitlines()]
    assert events and events[-1]["event"] == "idle"


@pytest.mark.codex
def test_sigint_drains_then_second_sigint_cancels(harness: Harness) -> None:
    bid = harness.submit([{"job_id": f"j{i}", "steps": [
        step("s1", {"hang": 60}, prompt=f"drain {i}")]} for i in range(3)],
        retries={"max_attempts": 1})
    proc = subprocess.Popen([PHH, "--root", str(harness.root), "run", "--no-ui",
                             "--concurrency", "2"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        for ln in proc.stdout:
            lines.append(ln)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: sum(" start " in ln for ln in lines) == 2, 30, "two starts")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: any("no new starts" in ln for ln in lines), 10, "drain notice")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130  # 128 + SIGINT, as a shell reports it
    reader.join(10)
    started = [a for i in range(3) for a in harness.attempts(bid, f"j{i}", "s1")]
    assert len(started) == 2, "no new attempt may start after the first SIGINT"
    assert {harness.state(a)["status"] for a in started} == {"canceled"}
    assert os.path.exists(harness.layout.runner_health("local"))


@pytest.mark.codex
def test_headless_log_shows_attention_and_batch_finished(harness: Harness) -> None:
    """The same facts the dashboard alerts on reach the --no-ui log (and --json-log)."""
    bid = harness.submit([
        {"job_id": "ok", "steps": [step("s1", final("fine"), prompt="headless ok")]},
        {"job_id": "bad", "steps": [step("s1", {"final_text": "not a report"},
                                         prompt="headless bad", repair_turns=0)]},
        {"job_id": "down", "steps": [step("s1", {"http_error": 500}, prompt="headless 500")]},
    ], retries={"max_attempts": 1})
    out = phh(harness.root, "run", "--no-ui", "--until-idle", "--json-log")
    assert out.returncode == 0, out.stderr
    events = [json.loads(ln) for ln in out.stdout.splitlines()]
    attention = {(e["job_id"], e["status"]) for e in events if e["event"] == "attention"}
    assert attention == {("bad", "needs_attention"), ("down", "failed")}
    finished = [e for e in events if e["event"] == "batch_finished"]
    assert len(finished) == 1 and finished[0]["batch_id"] == bid
    assert "1/3 succeeded" in finished[0]["detail"]
    ends = {e["job_id"]: e["status"] for e in events if e["event"] == "attempt_ended"}
    assert ends == {"ok": "succeeded", "bad": "needs_attention", "down": "failed"}
    human = phh(harness.root, "run", "--no-ui", "--until-idle")
    assert human.returncode == 0  # nothing new to run: idle at once, with a summary
    assert "1/3 succeeded" in human.stdout
