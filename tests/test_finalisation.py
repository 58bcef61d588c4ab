"""Issue 11 A: nothing an attempt does may leave it `running` without a process.

Faults are injected with PHH_FAULT_AT (phh_engine.store.crash.faultpoint) at every stage of an
attempt's life: starting, monitoring, concluding, recovering. Whatever raises, the attempt ends
terminal, the engine goes on, and `--until-idle` never says idle while a step shows running.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from conftest import Harness, final, step, wait_for

from phh_engine.derive.scoreboards import batch_scoreboard
from phh_engine.engine.loop import Engine
from phh_engine.models import utcnow
from phh_engine.store.files import atomic_write_json

pytestmark = pytest.mark.codex
PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")
TERMINAL = ("succeeded", "failed", "canceled", "needs_attention")


def run_cli_engine(harness: Harness, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PHH_CRASH_AT", "PHH_FAULT_AT")}
    env.update(env_extra)
    return subprocess.run([PHH, "--root", str(harness.root), "run", "--no-ui", "--until-idle"],
                          capture_output=True, text=True, timeout=240, env=env)


def assert_invariant(harness: Harness, bid: str) -> None:
    """No attempt is running unless its process is alive; the board shows no running step."""
    for job_dir in (harness.layout.runs / bid).iterdir():
        if not (job_dir / "steps").is_dir():
            continue
        for sdir in (job_dir / "steps").iterdir():
            for att in harness.attempts(bid, job_dir.name, sdir.name):
                st = harness.state(att)
                if st["status"] in ("running", "queued"):
                    pid = st.get("pid")
                    assert pid and psutil.pid_exists(pid), (att, st)
    out = subprocess.run([PHH, "--root", str(harness.root), "scoreboard", "--batch", bid,
                          "--json", "--recompute"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)["steps"]
    assert all(r["status"] != "running" for r in rows), rows


def test_deeply_nested_final_message_is_schema_invalid(harness: Harness) -> None:
    """The issue's example: `json.loads` raises RecursionError, not ValueError."""
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"final_text": "[" * 50000 + "]" * 50000}, repair_turns=0)]}])
    harness.run()
    (att,) = harness.attempts(bid, "j1", "s1")
    st = harness.state(att)
    assert st["status"] == "needs_attention", st
    assert st["failure_class"] == "schema_invalid" and st["exit_code"] == 0, st
    assert any("nested too deep" in e for e in st["errors"]), st["errors"]
    assert len((att / "final.txt").read_text()) == 100000
    assert_invariant(harness, bid)


#: where the fault is injected -> (status, failure class) the attempt must end with
FAULTS = {
    "start": ("failed", "internal_error"),
    "after_spawn": ("failed", "internal_error"),
    "monitor": ("failed", "internal_error"),
    "conclude": ("failed", "internal_error"),
    "report_parse": ("needs_attention", "schema_invalid"),
    "git_capture": ("failed", "internal_error"),
    "handoff_write": ("failed", "internal_error"),
    "final_state_write": ("failed", "internal_error"),
    # the internal-error record itself fails too: the idle sweep still ends the attempt
    "conclude,internal_record": ("failed", "runner_lost"),
}


@pytest.mark.parametrize("point", list(FAULTS))
def test_any_fault_ends_the_attempt_and_the_engine_goes_on(
        harness: Harness, point: str, monkeypatch: pytest.MonkeyPatch) -> None:
    subprocess.run(["git", "init", "-q", str(harness.workspace)], check=True)
    bid = harness.submit([
        # repair_turns 0: a report_parse fault would meet its repair too (verification.md)
        {"job_id": f"j{i}", "steps": [step("s1", {"shell": f"echo {i} > f{i}.txt"}, final("x"),
                                           repair_turns=0)]}
        for i in range(2)])
    monkeypatch.setenv("PHH_FAULT_AT", point)
    harness.run(timeout=180)
    want_status, want_class = FAULTS[point]
    for job in ("j0", "j1"):  # both jobs: one fault does not stop the engine
        # runner_lost is retried per policy (and that retry meets the same fault)
        att, *retries = harness.attempts(bid, job, "s1")
        assert len(retries) == (0 if want_class != "runner_lost" else 1), retries
        assert all(harness.state(a)["status"] in TERMINAL for a in retries)
        st = harness.state(att)
        assert (st["status"], st["failure_class"]) == (want_status, want_class), st
        if want_class == "internal_error":
            assert any("InjectedFault" in e and point in e for e in st["errors"]), st["errors"]
            log = (att / "internal_error.log").read_text()
            assert "Traceback" in log and "InjectedFault" in log
        assert not (st.get("pid") and psutil.pid_exists(st["pid"])), "Codex left running"
    assert any(e.kind == "idle" for e in harness.events)
    assert_invariant(harness, bid)
    # and the next engine (no fault) starts cleanly on the same root
    monkeypatch.delenv("PHH_FAULT_AT")
    harness.run(timeout=120)
    assert_invariant(harness, bid)


@pytest.mark.parametrize("point", ["conclude", "adopt"])
def test_restart_with_a_dead_adopted_pid_whose_conclude_raises(harness: Harness,
                                                               point: str) -> None:
    """Every restart adopted the dead pid and crashed again: now it ends once, for good."""
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("done"))]}])
    crashed = run_cli_engine(harness, PHH_CRASH_AT="before_finalize")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (att,) = harness.attempts(bid, "j1", "s1")
    assert harness.state(att)["status"] == "running"
    first = run_cli_engine(harness, PHH_FAULT_AT=point)
    assert first.returncode == 0, first.stderr
    st = harness.state(att)
    assert (st["status"], st["failure_class"]) == ("failed", "internal_error"), st
    assert "Traceback" in (att / "internal_error.log").read_text()
    second = run_cli_engine(harness)
    assert second.returncode == 0, second.stderr
    assert_invariant(harness, bid)


def test_recovery_fault_ends_the_attempt_not_the_engine(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("done"))]}],
                         retries={"max_attempts": 2, "backoff_seconds": 0})
    crashed = run_cli_engine(harness, PHH_CRASH_AT="before_finalize")
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    done = run_cli_engine(harness, PHH_FAULT_AT="recover")
    assert done.returncode == 0, done.stderr
    first, *rest = harness.attempts(bid, "j1", "s1")
    st = harness.state(first)
    assert st["status"] == "failed" and any("recovery failed" in e for e in st["errors"]), st
    assert [harness.state(a)["status"] for a in rest] == ["succeeded"]  # retried per policy
    assert_invariant(harness, bid)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_operator_actions_on_a_step_running_without_a_process(harness: Harness) -> None:
    """A `running` attempt with nothing behind it (hand-made here: what an older phh left):
    mark-failed makes the step failed on the board; requeue and retry are accepted."""
    harness.settings.runners[0].capacity = 1
    harness.write_settings()
    bid = harness.submit([
        {"job_id": "busy", "steps": [step("s1", {"shell": "sleep 60", "yield_time_ms": 500},
                                          {"hang": 120})]},
        {"job_id": "j2", "steps": [step("s1", final("x"))]},
        {"job_id": "j3", "steps": [step("s1", final("x"))]},
        {"job_id": "j4", "steps": [step("s1", final("x"))]},
    ])
    eng = harness.start()
    wait_for(lambda: any(harness.state(a)["status"] == "running"
                         for a in harness.attempts(bid, "busy", "s1")), 60, "busy running")
    now = utcnow()
    orphans = {}
    for job in ("j2", "j3", "j4"):
        d = harness.layout.attempts_dir(bid, job, "s1") / f"{now:%Y%m%dT%H%M%SZ}_r000000dead{job}"
        d.mkdir(parents=True)
        atomic_write_json(d / "state.json", {
            "batch_id": bid, "job_id": job, "step_id": "s1",
            "run_id": f"r000000dead{job}", "runner_id": "local", "status": "running",
            "updated_at": now.isoformat(), "started_at": now.isoformat(),
            "pid": _dead_pid()})
        orphans[job] = d
        harness.call(eng, _refresh(eng, bid, job))

    res = harness.call(eng, eng.request("mark_failed", bid, "j2", "s1", reason="stuck"))
    assert res.outcome == "applied", res
    assert harness.state(orphans["j2"])["status"] == "failed"
    board = {r.step_id + r.job_id: r.status for r in
             batch_scoreboard(eng.index.batches[bid], utcnow()).steps}
    assert board["s1j2"] == "failed", board
    for action in ("requeue", "retry"):
        res = harness.call(eng, eng.request(action, bid, "j3", "s1"))
        assert res.outcome == "applied", (action, res)
    assert harness.state(orphans["j3"])["status"] == "failed"
    res = harness.call(eng, eng.request("cancel", bid, "j4", "s1"))
    assert res.outcome == "applied" and "had no process" in res.message, res
    assert harness.state(orphans["j4"])["status"] == "failed"
    harness.stop(eng)
    assert_invariant(harness, bid)


async def _refresh(eng: Engine, bid: str, job: str) -> None:
    eng.refresh_step(bid, job, "s1")


#: only an attempt's run lingers (`exec --json`), not phh's `--version` / `--help` probes
LINGER_IF_RUN = 'case " $* " in *" --json "*) ;; *) exit $rc ;; esac;'


def test_lingering_codex_after_a_valid_report_succeeds(
        harness: Harness, codex_bin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 C3: a wrapper that sleeps 120 s after Codex exits 0, step timeout 30 s: the
    report is in, so after the grace phh ends the group and records `succeeded`."""
    wrapper = harness.root / "codex_lingers.sh"
    marker = f"linger-{os.getpid()}-{harness.root.name}"
    wrapper.write_text(f'#!/bin/sh\n"{codex_bin}" "$@"\nrc=$?\n'
                       f'[ "$rc" = 0 ] && {LINGER_IF_RUN} sleep 120 # {marker}\nexit $rc\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PHH_CODEX_BIN", str(wrapper))
    harness.settings.codex.linger_grace_seconds = 1.0
    harness.write_settings()
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", final("reported, then lingered"), timeout_seconds=30)]}])
    harness.run(timeout=120)
    (att,) = harness.attempts(bid, "j1", "s1")
    st = harness.state(att)
    assert st["status"] == "succeeded", st
    assert st["termination_reason"] == "lingered" and st.get("failure_class") is None, st
    started, ended = (datetime.fromisoformat(st[k]) for k in ("started_at", "ended_at"))
    assert (ended - started).total_seconds() < 30, "ended by the grace, not the timeout"
    assert json.loads((att / "final.json").read_text())["summary"] == "reported, then lingered"
    assert (att / "handoff.json").exists()
    wait_for(lambda: not [p for p in psutil.process_iter(["cmdline"])
                          if any(marker in c for c in (p.info["cmdline"] or []))],
             10, "the lingering wrapper's group to end")


def test_lingering_without_a_valid_report_is_still_a_timeout(
        harness: Harness, codex_bin: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The grace needs a valid final message: an invalid one waits for the step timeout."""
    wrapper = harness.root / "codex_lingers.sh"
    wrapper.write_text(f'#!/bin/sh\n"{codex_bin}" "$@"\nrc=$?\n'
                       f'{LINGER_IF_RUN} sleep 120\nexit $rc\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PHH_CODEX_BIN", str(wrapper))
    harness.settings.codex.linger_grace_seconds = 0.5
    harness.write_settings()
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"final_text": "not json"}, timeout_seconds=8)]}],
        retries={"max_attempts": 1})
    harness.run(timeout=120)
    (att,) = harness.attempts(bid, "j1", "s1")
    st = harness.state(att)
    assert (st["status"], st["failure_class"]) == ("failed", "timeout"), st


def test_monitor_event_parsing_survives_hostile_lines(tmp_path: Path) -> None:
    """Deep nesting, non-finite numbers, invalid UTF-8, wrong field types: skipped, and
    the events after them still count."""
    from phh_engine.store.events import EventFacts, EventTail, read_facts

    path = tmp_path / "codex.events.jsonl"
    good_start = json.dumps({"type": "thread.started", "thread_id": "t-1"}).encode()
    hostile = [
        b"[" * 50000 + b"]" * 50000,
        b'{"type": "turn.completed", "usage": {"input_tokens": NaN, "output_tokens": 1e400}}',
        b'{"type": "error", "message": "\xff\xfe bad bytes"}',
        b"\xff\xfe\xfd not even json",
        b'{"type": "turn.completed", "usage": [1, 2]}',
        b'{"type": "item.completed", "item": {"type": "file_change", "changes": 7}}',
        b'{"type": "turn.failed", "error": {"message": {"deep": [1]}}}',
    ]
    done = json.dumps({"type": "turn.completed", "usage": {"input_tokens": 5}}).encode()
    path.write_bytes(b"\n".join([good_start, *hostile, done]) + b"\n")
    tail = EventTail(path)
    events = tail.read_new() + tail.flush_partial()
    facts = EventFacts()
    for ev in events:
        facts.apply(ev)
    assert facts.thread_id == "t-1" and facts.turn_completed
    assert facts.usage.get("input_tokens") == 5
    assert facts.skipped_events >= 1  # the list usage / non-string message lines
    assert read_facts(path).thread_id == "t-1"
    from phh_engine.store.events import parse_event_line
    assert parse_event_line(hostile[1]) is None  # NaN / 1e400: no reader could echo them
    assert parse_event_line(b'{"type": "x", "v": 1.5}') == {"type": "x", "v": 1.5}


def test_a_fault_in_the_claim_blocks_that_step_not_the_engine(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 11 A at the claim: a fault of phh's own while claiming leaves nothing in flight,
    shows the step blocked with the reason, and the engine still goes idle."""
    bid = harness.submit([{"job_id": f"j{i}", "steps": [step("s1", final("x"))]}
                          for i in range(2)])
    monkeypatch.setenv("PHH_FAULT_AT", "claim")
    harness.run(timeout=120)
    assert any(e.kind == "idle" for e in harness.events)
    for job in ("j0", "j1"):
        assert harness.attempts(bid, job, "s1") == []
    assert_invariant(harness, bid)
    monkeypatch.delenv("PHH_FAULT_AT")
    harness.run(timeout=120)  # a restart tries again
    for job in ("j0", "j1"):
        (att,) = harness.attempts(bid, job, "s1")
        assert harness.state(att)["status"] == "succeeded"
