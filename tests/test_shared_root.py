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


def test_two_engines_on_one_root_follow_each_others_attempts(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two engines (runners ra and rb) with --until-idle on one root, 24 jobs x 2 steps
    (step2 resumes step1), each attempt ~0.4 s: every step ends exactly once; neither
    engine stops while anything runs or is ready on disk; each one's view at its stop equals
    `phh scoreboard --json --recompute`, and so does the served board afterwards."""
    wrapper = harness.root / "codex_busy.sh"
    # the attempt's work takes a while (so the two runners' attempts overlap); phh's own
    # `--version` / `--help` probes do not
    wrapper.write_text('#!/bin/sh\ncase " $* " in *" --json "*) sleep 0.4 ;; esac\n'
                       f'exec "{FAKE_CODEX}" "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PHH_CODEX_BIN", str(wrapper))
    jobs = 24
    bid = harness.submit([{"job_id": f"j{i:02d}", "steps": [
        {"step_id": "step1", "prompt": "Do the task."},
        {"step_id": "step2", "prompt": "Go on.", "resume_from": {"step_id": "step1"}},
    ]} for i in range(jobs)])

    events: dict[str, list[EngineEvent]] = {"ra": [], "rb": []}
    at_idle: dict[str, tuple[Any, Any]] = {}  # runner -> (disk's board, its own view)
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

    # every step ended exactly once: one attempt each (nothing here fails or retries), ended
    # by the runner that started it, and by no one else
    attempts = {(f"j{i:02d}", s): harness.attempts(bid, f"j{i:02d}", s)
                for i in range(jobs) for s in ("step1", "step2")}
    assert {k: len(v) for k, v in attempts.items() if len(v) != 1} == {}
    assert {k: harness.state(v[0])["status"] for k, v in attempts.items()
            if harness.state(v[0])["status"] != "succeeded"} == {}
    ended = Counter(ev.run_id for evs in events.values() for ev in evs
                    if ev.kind == "attempt_ended")
    started = {ev.run_id: rid for rid, evs in events.items() for ev in evs
               if ev.kind == "attempt_started"}
    on_disk = {harness.state(v[0])["run_id"] for v in attempts.values()}
    assert set(ended) == set(started) == on_disk and set(ended.values()) == {1}
    assert not [ev for evs in events.values() for ev in evs if ev.kind == "recovered"]

    # neither stopped early: at each one's stop nothing ran or was ready on disk, and its
    # own view was the disk's
    assert set(at_idle) == {"ra", "rb"}
    for rid, (disk, own) in at_idle.items():
        counts = disk["counts"]
        assert (counts["running"], counts["ready"], counts["succeeded"]) == (0, 0, 2 * jobs), \
            (rid, counts)
        assert _shape(own) == _shape(disk), rid
    # and afterwards: each engine's final view, and the board readers are served
    final = _board(harness.root, bid, recompute=True)
    for rid, eng in engines.items():
        assert _shape(_own_board(eng, bid)) == _shape(final), rid
    assert _shape(_board(harness.root, bid, recompute=False)) == _shape(final)
