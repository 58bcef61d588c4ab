"""Crash safety (issue 3): kill -9 the engine at every named point, restart, and check that
the store is consistent, nothing ran twice at once, and live Codex runs were re-adopted."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
from datetime import datetime
from pathlib import Path

import psutil
import pytest
from conftest import Harness, final, step, wait_for

from phh_engine.models import utcnow
from phh_engine.store.pointers import build_current

pytestmark = pytest.mark.codex
PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")

#: where the engine dies, and whether the crashed attempt's Codex can finish on its own
POINTS = {
    "after_claim": False,
    "after_meta": False,
    "after_spawn": True,
    "while_running": True,
    "before_finalize": True,
    "after_final_state": True,
}


def run_engine(harness: Harness, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PHH_CRASH_AT", None)
    if crash_at:
        env["PHH_CRASH_AT"] = crash_at
    return subprocess.run([PHH, "--root", str(harness.root), "run", "--no-ui", "--until-idle"],
                          capture_output=True, text=True, timeout=180, env=env)


def codex_procs(root: Path) -> list[psutil.Process]:
    out = []
    for p in psutil.process_iter(["cmdline"]):
        if any(str(root) in part for part in (p.info.get("cmdline") or [])):
            out.append(p)
    return out


def check_consistent(harness: Harness, bid: str, steps: dict[str, list[str]]) -> None:
    for job, sids in steps.items():
        for sid in sids:
            atts = harness.attempts(bid, job, sid)
            states = [harness.state(a) for a in atts]
            assert all(s["status"] in ("succeeded", "failed", "canceled", "needs_attention")
                       for s in states), states
            assert any(s["status"] == "succeeded" for s in states), (job, sid, states)
            spans = sorted((datetime.fromisoformat(s["started_at"]),
                            datetime.fromisoformat(s["ended_at"]))
                           for s in states if s.get("started_at"))
            for (_, e1), (s2, _) in itertools.pairwise(spans):
                assert e1 <= s2, f"{job}.{sid} ran twice at once"
        cur = json.loads(harness.layout.current(bid, job).read_text())
        rebuilt = build_current(harness.layout, bid, job, utcnow()).model_dump(
            mode="json", exclude_none=True)
        cur.pop("updated_at"), rebuilt.pop("updated_at")
        assert cur == rebuilt, f"current.json of {job} differs from a reindex"


@pytest.mark.parametrize("point", list(POINTS))
def test_kill_minus_nine_matrix(harness: Harness, point: str) -> None:
    bid = harness.submit([
        {"job_id": "j1", "steps": [
            step("s1", {"shell": "sleep 1; echo one > one.txt"}, final("one"),
                 prompt=f"crash {point}"),
            step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"}),
        ]},
    ], retries={"max_attempts": 2, "backoff_seconds": 0})
    crashed = run_engine(harness, point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    (first,) = [a for a in harness.attempts(bid, "j1", "s1")]
    done = run_engine(harness)
    assert done.returncode == 0, done.stderr
    check_consistent(harness, bid, {"j1": ["s1", "s2"]})
    st = harness.state(first)
    if POINTS[point]:
        # the Codex process outlived the engine: adopted (or finalized from its files)
        # with its real exit code, not retried
        assert st["status"] == "succeeded", st
        assert st["exit_code"] == 0 and (first / "final.json").exists()
        assert len(harness.attempts(bid, "j1", "s1")) == 1
    else:
        assert st["status"] == "failed" and st["termination_reason"] == "runner_lost", st
        assert len(harness.attempts(bid, "j1", "s1")) == 2
    assert not codex_procs(harness.root)


def test_readoption_keeps_heartbeat_and_real_exit_code(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "sleep 3; echo late > late.txt"}, final("survived the engine"),
             prompt="adopt me"),
    ]}])
    crashed = run_engine(harness, "while_running")
    assert crashed.returncode == -signal.SIGKILL
    (att,) = harness.attempts(bid, "j1", "s1")
    pid = harness.state(att)["pid"]
    assert psutil.pid_exists(pid), "Codex should outlive the engine"
    eng = harness.start()
    wait_for(lambda: any(e.kind == "adopted" for e in harness.events), 30, "adoption")
    wait_for(lambda: harness.state(att).get("ended_at"), 60, "adopted attempt to end")
    harness.stop(eng)
    st = harness.state(att)
    assert st["status"] == "succeeded" and st["exit_code"] == 0
    assert st["codex_thread_id"] and st["turn_completed"]
    assert json.loads((att / "final.json").read_text())["summary"] == "survived the engine"
    assert (harness.workspace / "late.txt").read_text().strip() == "late"
    assert len(harness.attempts(bid, "j1", "s1")) == 1


def test_an_attempt_that_ended_while_no_engine_ran_keeps_its_exit_time(
        harness: Harness) -> None:
    """Its ended_at is when Codex exited (the exit_code file), not when a later engine
    concluded it: durations and `phh history slowest` do not count the engine's absence."""
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "sleep 1"}, final("done alone"), prompt="end alone"),
    ]}])
    crashed = run_engine(harness, "while_running")
    assert crashed.returncode == -signal.SIGKILL
    (att,) = harness.attempts(bid, "j1", "s1")
    wait_for(lambda: (att / "exit_code").exists(), 60, "Codex to exit with no engine")
    exited = (att / "exit_code").stat().st_mtime
    before_restart = utcnow()
    assert run_engine(harness).returncode == 0
    st = harness.state(att)
    assert st["status"] == "succeeded", st
    ended = datetime.fromisoformat(st["ended_at"])
    assert ended <= before_restart, (ended, before_restart)
    assert abs(ended.timestamp() - exited) < 0.05, (ended, exited)
    assert datetime.fromisoformat(st["updated_at"]) >= before_restart  # written then


def test_dead_process_without_exit_code_is_runner_lost_then_retried(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "sleep 30"}, final("x"), prompt="lost"),
    ]}], retries={"max_attempts": 2, "backoff_seconds": 0})
    crashed = run_engine(harness, "while_running")
    assert crashed.returncode == -signal.SIGKILL
    (att,) = harness.attempts(bid, "j1", "s1")
    pid = harness.state(att)["pid"]
    os.killpg(pid, signal.SIGKILL)  # the machine "lost" the process: no exit code recorded
    wait_for(lambda: not psutil.pid_exists(pid)
             or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE, 10, "process gone")
    for p in codex_procs(harness.root):
        p.kill()
    assert not (att / "exit_code").exists()
    eng = harness.start()
    wait_for(lambda: harness.state(att).get("status") == "failed", 30, "runner_lost")
    assert harness.state(att)["termination_reason"] == "runner_lost"
    wait_for(lambda: len(harness.attempts(bid, "j1", "s1")) == 2, 30, "retry started")
    harness.stop(eng, cancel_running=True)


def test_store_writes_leave_only_whole_files_beside_their_target(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Snapshots and write-once files go temp -> fsync -> rename/link in the target's own
    directory (a bare file name included); a write-once file is never replaced."""
    from phh_engine.store.files import atomic_write_bytes, write_once_bytes

    monkeypatch.chdir(tmp_path)
    renames: list[tuple[str, str]] = []
    real_replace = os.replace

    def replace(src: str, dst: str) -> None:
        renames.append((os.path.abspath(src), os.path.abspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    atomic_write_bytes("state.json", b'{"a": 1}\n')
    atomic_write_bytes(tmp_path / "state.json", b'{"a": 2}\n')
    write_once_bytes("meta.json", b"{}\n")
    with pytest.raises(FileExistsError):
        write_once_bytes(str(tmp_path / "meta.json"), b'{"other": true}\n')
    write_once_bytes(tmp_path / "new" / "final.json", b"{}\n")  # a missing directory is made
    assert sorted(os.listdir(tmp_path)) == ["meta.json", "new", "state.json"]  # no temp left
    assert (tmp_path / "state.json").read_bytes() == b'{"a": 2}\n'
    assert (tmp_path / "meta.json").read_bytes() == b"{}\n"
    assert os.listdir(tmp_path / "new") == ["final.json"]
    assert len(renames) == 2 and all(  # same directory: the rename is atomic
        os.path.dirname(src) == os.path.dirname(dst) for src, dst in renames), renames
