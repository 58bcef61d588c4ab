"""Several engines (runners) on one root (docs/architecture.md: one engine per runner id,
steps claimed under the per-job lock): each must see the others' progress, or it keeps
their attempts `running` forever, stops early with --until-idle, or serves stale boards
(tester report t24, finding 14)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness

from phh_engine.derive.scoreboards import batch_scoreboard
from phh_engine.engine.loop import Engine, EngineEvent
from phh_engine.models import utcnow

ROOT = Path(__file__).parents[1]
PHH = str(ROOT / ".venv" / "bin" / "phh")
FAKE_CODEX = ROOT / "bench" / "fake_codex"


def _board(root: Path, batch_id: str, *, recompute: bool) -> dict[str, Any]:
    argv = [PHH, "--root", str(root), "scoreboard", "--batch", batch_id, "--json"]
    out = subprocess.run(argv + (["--recompute"] if recompute else []),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    board: dict[str, Any] = json.loads(out.stdout)
    return board


def _shape(board: dict[str, Any]) -> tuple[dict[str, int], list[tuple[Any, ...]]]:
    """What two scoreboards of one batch must agree on: counts and each step's row."""
    return board["counts"], [(s["job_id"], s["step_id"], s["status"], s["attempts"],
                              s.get("run_id")) for s in board["steps"]]


def _own_board(eng: Engine, batch_id: str) -> dict[str, Any]:
    """The engine's own view of the batch (what its boards and summaries show)."""
    board: dict[str, Any] = batch_scoreboard(eng.index.batches[batch_id], utcnow()
                                             ).model_dump(mode="json")
    return board


#: `codex exec` that works ~0.4 s (so the two runners' attempts overlap), or fails at once
#: (exit 1) when the prompt says FAIL (so one runner retries faster than the other sees it);
#: phh's own `--version` / `--help` probes go straight through
WRAPPER = """#!/bin/sh
case " $* " in *" --json "*) ;; *) exec "{fake}" "$@" ;; esac
p=$(cat)
case "$p" in *FAIL*) echo "error: boom" >&2; exit 1 ;; esac
sleep 0.4
printf '%s\\n' "$p" | exec "{fake}" "$@"
"""


def _run_two(harness: Harness, monkeypatch: pytest.MonkeyPatch, jobs: list[dict[str, Any]],
             **batch: Any) -> tuple[str, dict[str, Engine], dict[str, list[EngineEvent]],
                                    dict[str, tuple[Any, Any]]]:
    """Submit `jobs`, serve the root with two engines (runners ra and rb, --until-idle)
    started at once, each in its own thread, to their ends. Returns the batch id, the
    engines, their events, and per runner (the disk's board, its own view) at its stop."""
    wrapper = harness.root / "codex_busy.sh"
    wrapper.write_text(WRAPPER.format(fake=FAKE_CODEX))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PHH_CODEX_BIN", str(wrapper))
    bid = harness.submit(jobs, **batch)
    events: dict[str, list[EngineEvent]] = {"ra": [], "rb": []}
    at_idle: dict[str, tuple[Any, Any]] = {}
    engines: dict[str, Engine] = {}

    def listener(rid: str) -> Any:
        def on_event(ev: EngineEvent) -> None:
            events[rid].append(ev)
            if ev.kind == "idle" and ev.detail == "nothing running or runnable":
                # on the engine's loop, at the moment it decided to stop: the disk's truth
                at_idle[rid] = (_board(harness.root, bid, recompute=True),
                                _own_board(engines[rid], bid))
        return on_event

    for rid in events:
        engines[rid] = Engine(harness.root, runner_id=rid, until_idle=True,
                              on_event=listener(rid))
    for eng in engines.values():
        eng.setup()
    errors: list[BaseException] = []
    go = threading.Barrier(len(engines))

    def serve(eng: Engine) -> None:
        go.wait(30)  # both start scheduling at once, as two `phh run` started together
        try:
            asyncio.run(asyncio.wait_for(eng.serve(), 240))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=serve, args=(e,), daemon=True, name=f"phh-{r}")
               for r, e in engines.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not any(t.is_alive() for t in threads), "an engine did not stop"
    assert not errors, errors
    return bid, engines, events, at_idle


def _check_ends(harness: Harness, bid: str, engines: dict[str, Engine],
                events: dict[str, list[EngineEvent]], at_idle: dict[str, tuple[Any, Any]]
                ) -> None:
    """Each attempt ended once, by the runner that started it; neither engine stopped while
    anything ran or was ready on disk; each one's view (at its stop and at the end) and the
    served board equal `phh scoreboard --json --recompute`."""
    ended = Counter(ev.run_id for evs in events.values() for ev in evs
                    if ev.kind == "attempt_ended")
    started = {ev.run_id for evs in events.values() for ev in evs
               if ev.kind == "attempt_started"}
    on_disk = {harness.state(a)["run_id"] for b in [engines["ra"].index.batches[bid]]
               for job, s in b.steps()
               for a in harness.attempts(bid, job.job_id, s.step_id)}
    assert set(ended) == started == on_disk and set(ended.values()) == {1}
    assert not [ev for evs in events.values() for ev in evs if ev.kind == "recovered"]
    assert set(at_idle) == {"ra", "rb"}
    for rid, (disk, own) in at_idle.items():
        counts = disk["counts"]
        assert (counts["running"], counts["ready"]) == (0, 0), (rid, counts)
        assert _shape(own) == _shape(disk), rid
    final = _board(harness.root, bid, recompute=True)
    for rid, eng in engines.items():
        assert _shape(_own_board(eng, bid)) == _shape(final), rid
    assert _shape(_board(harness.root, bid, recompute=False)) == _shape(final)


def test_two_engines_on_one_root_follow_each_others_attempts(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Finding 14: 24 jobs x 2 steps (step2 resumes step1) under two engines: every step
    ends exactly once (one attempt each: nothing fails here), and neither engine stops
    early or keeps a stale view. Before the fix one engine froze with the other's attempts
    `running` in its view (or stopped with --until-idle while work remained)."""
    jobs = 24
    bid, engines, events, at_idle = _run_two(harness, monkeypatch, [
        {"job_id": f"j{i:02d}", "steps": [
            {"step_id": "step1", "prompt": "Do the task."},
            {"step_id": "step2", "prompt": "Go on.", "resume_from": {"step_id": "step1"}},
        ]} for i in range(jobs)])
    attempts = {(f"j{i:02d}", s): harness.attempts(bid, f"j{i:02d}", s)
                for i in range(jobs) for s in ("step1", "step2")}
    assert {k: len(v) for k, v in attempts.items() if len(v) != 1} == {}
    assert {k: harness.state(v[0])["status"] for k, v in attempts.items()
            if harness.state(v[0])["status"] != "succeeded"} == {}
    _check_ends(harness, bid, engines, events, at_idle)
    assert at_idle["ra"][0]["counts"]["succeeded"] == 2 * jobs


def test_two_engines_spend_a_retry_budget_once(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A step that always fails, max_attempts 3 and no backoff, under two engines: exactly 3
    attempts, never a 4th by the runner that had not yet seen the other's retry (a claim
    decided without an attempt on disk is refused and looked at again)."""
    jobs = 8
    bid, engines, events, at_idle = _run_two(harness, monkeypatch, [
        {"job_id": f"j{i:02d}", "steps": [
            {"step_id": "step1", "prompt": "FAIL" if i % 2 else "Do the task."},
            {"step_id": "step2", "prompt": "Go on.", "depends_on": ["step1"]},
        ]} for i in range(jobs)], retries={"max_attempts": 3, "backoff_seconds": 0})
    for i in range(jobs):
        job = f"j{i:02d}"
        s1 = [harness.state(a)["status"] for a in harness.attempts(bid, job, "step1")]
        s2 = [harness.state(a)["status"] for a in harness.attempts(bid, job, "step2")]
        if i % 2:
            assert (s1, s2) == (["failed"] * 3, []), job
        else:
            assert (s1, s2) == (["succeeded"], ["succeeded"]), job
    _check_ends(harness, bid, engines, events, at_idle)


def test_a_stale_view_of_an_ended_attempt_is_reread_not_ended_again(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine holding another runner's attempt as `running` after that runner ended it
    and stopped: the orphan sweep re-reads it (succeeded, with its resume base) instead of
    recording runner_lost over a stale view, which left its resume_from dependant blocked
    ("left no resume base")."""
    from dataclasses import replace

    wrapper = harness.root / "codex_busy.sh"
    wrapper.write_text(WRAPPER.format(fake=FAKE_CODEX))
    wrapper.chmod(0o755)
    monkeypatch.setenv("PHH_CODEX_BIN", str(wrapper))
    bid = harness.submit([{"job_id": "j", "steps": [{"step_id": "s1", "prompt": "Do it."}]}])
    harness.run(runner_id="rb")
    (path,) = harness.attempts(bid, "j", "s1")
    on_disk = (path / "state.json").read_text()
    eng = harness.engine(runner_id="ra")
    try:
        step = eng.index.batches[bid].jobs["j"].steps["s1"]
        (ended,) = step.attempts
        assert ended.status == "succeeded" and ended.resume_base_ready
        assert ended.state is not None
        stale = replace(ended, state=ended.state.model_copy(
            update={"status": "running", "ended_at": None}), resume_base_ready=False)
        step.attempts[0] = stale
        assert eng.recovery.end_orphan(bid, "j", "s1", stale)
        (now,) = step.attempts
        assert now.status == "succeeded" and now.resume_base_ready
        assert (path / "state.json").read_text() == on_disk  # no runner_lost written
    finally:
        eng.release_runner()
