"""Best-of-N candidates (issue 15 items 2, 4, 5; docs/verification.md#candidates-best-of-n),
with the real Codex binary against the stand-in.

Why: a step with `candidates: N` runs N attempts side by side, each in its own checkout from
the same starting point; phh ranks them and promotes the winner: the step's result (current.json
`latest_successful`, the thread a `resume_from` continues) and its changes in the job's
workspace. Losers stay on disk. A promotion must survive kill -9, a conflict must end visible
(`needs_attention`), and an operator may promote another candidate, exactly once.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, final, step, wait_for
from test_workspace import git, make_repo

from phh_engine.derive.candidates import rank
from phh_engine.models.promotion import CandidateRank
from phh_engine.standin import script
from phh_engine.store.candidates import read_promotion

PHH = str(Path(sys.executable).with_name("phh"))


def suffix(*actions: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_suffix": script(*actions)}


def three(fail: str = "failed") -> list[dict[str, Any]]:
    """Candidate 2 writes `two` and succeeds; 1 and 3 write their own text and fail."""
    return [
        suffix({"shell": "echo one > f.txt"}, final("c1 gave up", status=fail)),
        {**suffix({"shell": "echo two > f.txt"}, final("c2 did it")),
         "model_reasoning_effort": "low"},
        suffix({"shell": "echo three > f.txt"}, final("c3 gave up", status=fail)),
    ]


def by_candidate(harness: Harness, bid: str, job: str, sid: str) -> dict[int, Path]:
    out = {}
    for att in harness.attempts(bid, job, sid):
        out[harness.meta(att)["candidate"]] = att
    return out


# ----------------------------------------------------------------------------- pure ranking
def row(k: int, passed: bool = True, score: float | None = None, tokens: int = 100,
        dur: float | None = 10.0) -> CandidateRank:
    return CandidateRank(candidate=k, run_id=f"r{k}", status="succeeded" if passed else "failed",
                         passed=passed, score=score, tokens=tokens, duration_seconds=dur)


def test_scores_break_a_tie_between_passed_candidates() -> None:
    ranked = rank([row(1, score=0.5), row(2, score=0.9), row(3, passed=False, score=5.0)])
    assert [r.candidate for r in ranked] == [2, 1, 3]


def test_ranking_falls_back_to_tokens_then_time_then_index() -> None:
    assert [r.candidate for r in rank([row(1, tokens=300), row(2, tokens=200)])] == [2, 1]
    assert [r.candidate for r in rank([row(1, dur=30), row(2, dur=20)])] == [2, 1]
    assert [r.candidate for r in rank([row(2), row(1)])] == [1, 2]
    # a score beats no score; passing beats any score
    assert [r.candidate for r in rank([row(1), row(2, score=-1.0)])] == [2, 1]
    assert rank([row(1, passed=False, score=9.0), row(2)])[0].candidate == 2


# ----------------------------------------------------------------------------- engine
@pytest.mark.codex
def test_best_of_three_promotes_candidate_two_and_the_next_step_resumes_it(
        harness: Harness) -> None:
    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("default"), candidates=3, candidate_overrides=three()),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"}),
    ]}])
    harness.run()
    cands = by_candidate(harness, bid, "j1", "s1")
    assert sorted(cands) == [1, 2, 3]
    states = {k: harness.state(a) for k, a in cands.items()}
    # candidate_overrides: candidate 2's effort, recorded in its meta.json and command line
    assert harness.meta(cands[2])["policy_snapshot"]["execution_policy"][
        "model_reasoning_effort"] == "low"
    assert 'model_reasoning_effort="low"' in harness.meta(cands[2])["command"]
    assert "model_reasoning_effort" not in " ".join(harness.meta(cands[1])["command"])
    assert states[2]["status"] == "succeeded"
    assert states[1]["status"] == states[3]["status"] == "failed"
    # each candidate worked in its own checkout; the losers' work is still there
    dirs = {harness.meta(a)["environment_snapshot"]["working_directory"] for a in cands.values()}
    assert len(dirs) == 3
    for k, text in ((1, "one"), (3, "three")):
        wd = Path(harness.meta(cands[k])["environment_snapshot"]["working_directory"])
        assert (wd / "f.txt").read_text() == f"{text}\n"
    promo = read_promotion(harness.layout, bid, "j1", "s1")
    assert promo is not None and promo.state == "applied" and promo.winner_candidate == 2
    winner = harness.state(cands[2])["run_id"]
    assert promo.winner_run_id == winner
    assert promo.ranking[0].candidate == 2
    # its change is in the job's workspace, merged onto the job's branch
    ws = harness.layout.workspace(bid, "j1")
    assert (ws / "f.txt").read_text() == "two\n"
    assert len(git(ws, "rev-list", "--merges", "HEAD").split()) == 1
    # the step's result is the winner, and s2 continued its thread
    cur = json.loads(harness.layout.current(bid, "j1").read_text())
    assert cur["steps"]["s1"]["latest_successful"]["run_id"] == winner
    (s2,) = harness.attempts(bid, "j1", "s2")
    m2 = harness.meta(s2)
    assert m2["resume_from"]["selected_run_id"] == winner
    assert m2["codex_thread_id"] == harness.state(cands[2])["codex_thread_id"]
    assert harness.state(s2)["status"] == "succeeded"
    # faces: the scoreboard lists the candidates, best first, the promoted one marked
    board = json.loads(subprocess.run(
        [PHH, "--root", str(harness.root), "scoreboard", "--batch", bid, "--json"],
        capture_output=True, text=True, timeout=120, check=True).stdout)
    (row_,) = [r for r in board["steps"] if r["step_id"] == "s1"]
    best = row_["candidates"][0]
    assert (best["candidate"], best["rank"], best["promoted"], best["passed"]) == (2, 1, True, True)
    assert {c["candidate"] for c in row_["candidates"] if not c["promoted"]} == {1, 3}
    text = subprocess.run([PHH, "--root", str(harness.root), "scoreboard", "--batch", bid],
                          capture_output=True, text=True, timeout=120, check=True).stdout
    assert "Candidates" in text and "★ promoted" in text and winner in text


@pytest.mark.codex
def test_no_candidate_passed_fails_the_step(harness: Harness) -> None:
    from phh_engine.interfaces.api_ops import derive_view

    make_repo(harness.workspace, {"f.txt": "base\n"})
    overrides = [suffix(final(f"c{k} gave up", status="failed")) for k in (1, 2)]
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("default"), candidates=2, candidate_overrides=overrides)]}])
    harness.run()
    assert read_promotion(harness.layout, bid, "j1", "s1") is None
    board, _ = derive_view(harness.layout, bid)
    (row_,) = [r for r in board.steps if r.step_id == "s1"]  # type: ignore[union-attr]
    assert row_.status == "failed"
    assert (harness.layout.workspace(bid, "j1") / "f.txt").read_text() == "base\n"


@pytest.mark.codex
def test_a_merge_conflict_ends_needs_attention_with_the_reason(harness: Harness) -> None:
    """s0 edits f.txt in the job's workspace while the candidates (made before it finished,
    from the same base) edit it too: the winner's merge conflicts."""
    make_repo(harness.workspace, {"f.txt": "base\n"})
    gate = harness.root / "gate"
    job_f = harness.layout.workspace("b1", "j1") / "f.txt"
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s0", {"shell": f"until [ -e {gate} ]; do sleep 0.05; done; echo zero > f.txt"},
             final("s0")),
        step("s1", final("default"), candidates=2, candidate_overrides=[
            suffix({"shell": f"echo one > f.txt && touch {gate} && "
                             f"until grep -q zero {job_f}; do sleep 0.05; done"}, final("c1")),
            suffix({"shell": "echo two > f.txt"}, final("c2 gave up", status="failed"))]),
    ]}], batch_id="b1")
    harness.run()
    promo = read_promotion(harness.layout, bid, "j1", "s1")
    assert promo is not None and promo.state == "conflict", promo
    assert "f.txt" in (promo.reason or "")
    from phh_engine.interfaces.api_ops import derive_view

    board, _ = derive_view(harness.layout, bid)
    (row_,) = [r for r in board.steps if r.step_id == "s1"]  # type: ignore[union-attr]
    assert row_.status == "needs_attention"
    assert "f.txt" in " ".join(row_.reasons)
    ws = harness.layout.workspace(bid, "j1")
    assert (ws / "f.txt").read_text() == "zero\n"  # the merge was aborted, nothing half done
    assert not (Path(git(ws, "rev-parse", "--git-dir").strip()) / "MERGE_HEAD").exists()


def run_engine(harness: Harness, crash_at: str | None = None) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    env.pop("PHH_CRASH_AT", None)
    if crash_at:
        env["PHH_CRASH_AT"] = crash_at
    return subprocess.run([PHH, "--root", str(harness.root), "run", "--no-ui", "--until-idle"],
                          capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.codex
@pytest.mark.parametrize("point", ["promotion_pending", "promotion_merged"])
def test_kill_minus_nine_during_promotion_is_finished_exactly_once(
        harness: Harness, point: str) -> None:
    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("default"), candidates=3, candidate_overrides=three(),
             prompt=f"crash at {point}"),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"}),
    ]}])
    crashed = run_engine(harness, point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr[-2000:]
    pending = read_promotion(harness.layout, bid, "j1", "s1")
    assert pending is not None and pending.state == "pending"
    assert harness.attempts(bid, "j1", "s2") == []  # nothing ran on a half-made promotion
    done = run_engine(harness)
    assert done.returncode == 0, done.stderr[-2000:]
    promo = read_promotion(harness.layout, bid, "j1", "s1")
    assert promo is not None and promo.state == "applied"
    assert promo.decided_at == pending.decided_at  # finished, not decided again
    assert promo.winner_candidate == 2
    ws = harness.layout.workspace(bid, "j1")
    assert (ws / "f.txt").read_text() == "two\n"
    assert len(git(ws, "rev-list", "--merges", "HEAD").split()) == 1  # merged exactly once
    (s2,) = harness.attempts(bid, "j1", "s2")
    assert harness.meta(s2)["resume_from"]["selected_run_id"] == promo.winner_run_id
    assert len(harness.attempts(bid, "j1", "s1")) == 3  # no candidate ran twice


@pytest.mark.codex
def test_operator_promote_over_api_and_cli_exactly_once(harness: Harness) -> None:
    from test_api import serving

    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("default"), candidates=3, candidate_overrides=[
            suffix(final("c1 gave up", status="failed")),
            suffix({"shell": "echo two > f.txt"}, final("c2")),
            suffix({"shell": "echo three > f.txt"}, final("c3"))]),
    ]}], batch_id="b1")
    harness.run()
    cands = by_candidate(harness, bid, "j1", "s1")
    run = {k: harness.state(a)["run_id"] for k, a in cands.items()}
    first = read_promotion(harness.layout, bid, "j1", "s1")
    assert first is not None and first.state == "applied" and first.winner_candidate in (2, 3)
    other = 5 - first.winner_candidate
    text = {2: "two\n", 3: "three\n"}
    ws = harness.layout.workspace(bid, "j1")
    assert (ws / "f.txt").read_text() == text[first.winner_candidate]

    # a run that is no candidate of the step: exit 2 / 400, nothing written
    bad = subprocess.run([PHH, "--root", str(harness.root), "promote", bid, "j1", "s1",
                          "rnotacandidate"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "not a candidate of j1.s1" in bad.stderr, bad
    eng = harness.start()
    with serving(harness.layout, harness.settings) as c:
        url = f"/v1/batches/{bid}/jobs/j1/steps/s1/promote"
        r = c.post(url, json={"run_id": "rnotacandidate"})
        assert r.status_code == 400 and "not a candidate" in r.text
        r = c.post(url, json={"run_id": run[1]})  # a candidate that failed
        assert r.status_code == 409 and "did not succeed" in r.json()["message"], r.text
        r = c.post(url, json={"run_id": run[other]})
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
        promo = read_promotion(harness.layout, bid, "j1", "s1")
        assert promo is not None and promo.state == "applied" and promo.by == "operator"
        assert promo.winner_run_id == run[other] and promo.previous_run_id == first.winner_run_id
        assert (ws / "f.txt").read_text() == text[other]
        assert len(git(ws, "rev-list", "--merges", "HEAD").split()) == 1
        cur = json.loads(harness.layout.current(bid, "j1").read_text())
        assert cur["steps"]["s1"]["latest_successful"]["run_id"] == run[other]
        # the same promote again is refused: applied exactly once
        r = c.post(url, json={"run_id": run[other]})
        assert r.status_code == 409 and "already the promoted" in r.json()["message"]
    # the CLI against the serving engine: back to the first winner
    back = subprocess.run([PHH, "--root", str(harness.root), "promote", bid, "j1", "s1",
                           first.winner_run_id], capture_output=True, text=True, timeout=60)
    assert back.returncode == 0 and "applied" in back.stdout, back
    assert (ws / "f.txt").read_text() == text[first.winner_candidate]
    results = [json.loads(p.read_text()) for p in
               (harness.layout.system / "overrides").glob("*.result.json")]
    assert sorted(r["outcome"] for r in results if r["action"] == "promote") == [
        "applied", "applied", "rejected", "rejected"]
    harness.stop(eng)


# ----------------------------------------------------------------------------- validation
@pytest.mark.parametrize(("changes", "path", "words"), [
    ({"candidates": 17}, "jobs[0].steps[0].candidates", "less than or equal to 16"),
    ({"candidates": 0}, "jobs[0].steps[0].candidates", "greater than or equal to 1"),
    ({"candidates": 3, "job": {"workspace_policy": "shared"}}, "jobs[0].steps[0].candidates",
     "workspace_policy is 'shared'"),
    ({"candidates": 2, "candidate_overrides": [{}, {}, {}]},
     "jobs[0].steps[0].candidate_overrides", "at most one per candidate"),
    ({"candidates": 2, "candidate_overrides": [{"model_reasoning_effort": "huge"}]},
     "jobs[0].steps[0].candidate_overrides[0].model_reasoning_effort", "minimal"),
    # a tester's: overrides no candidate would use, an empty model name
    ({"candidate_overrides": [{"model": "x"}]}, "jobs[0].steps[0].candidate_overrides",
     "best-of-N step only"),
    ({"candidates": 2, "candidate_overrides": [{"model": ""}]},
     "jobs[0].steps[0].candidate_overrides[0].model", "at least 1"),
])
def test_submit_refuses_bad_candidates_naming_the_json_path(
        harness: Harness, changes: dict[str, Any], path: str, words: str) -> None:
    job: dict[str, Any] = {"job_id": "j1", "workspace_policy": "isolated",
                           **changes.pop("job", {})}
    table = harness.table([{**job, "steps": [step("s1", final("x"), **changes)]}])
    lt = harness.root / "lt.json"
    lt.write_text(json.dumps(table))
    res = subprocess.run([PHH, "--root", str(harness.root), "submit", str(lt)],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2, res
    lines = [ln for ln in res.stderr.splitlines() if path + ":" in ln]
    assert any(words in ln for ln in lines), res.stderr
    assert not [p for p in harness.layout.runs.iterdir() if not p.name.startswith("_")]


def test_best_of_n_on_an_isolated_job_is_accepted_and_normalized(harness: Harness) -> None:
    from phh_engine.models import BatchMeta
    from phh_engine.store.files import read_model

    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("x"), candidates=16,
             candidate_overrides=[{"model": "gpt-5.5", "prompt_suffix": "be brief"}])]}])
    meta = read_model(harness.layout.batch_meta(bid), BatchMeta)
    assert meta is not None
    (s1,) = meta.jobs[0].steps
    assert s1.candidates == 16 and s1.candidate_overrides[0].prompt_suffix == "be brief"


# ----------------------------------------------------------------------------- dashboard
@pytest.mark.codex
async def test_step_screen_lists_candidates_shows_verify_log_and_diffs_two(
        harness: Harness) -> None:
    from test_tui_keys import SIZE, until

    from phh_tui.app import PhhApp
    from phh_tui.backend import StoreBackend
    from phh_tui.candidates_panel import NO_VERIFY_LOG, CandidatesPanel
    from phh_tui.dialogs import ConfirmScreen
    from phh_tui.screens import StepScreen

    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("default"), candidates=3, candidate_overrides=three())]}])
    await asyncio.to_thread(harness.run)
    cands = by_candidate(harness, bid, "j1", "s1")
    run = {k: harness.state(a)["run_id"] for k, a in cands.items()}
    # what a verifier leaves beside state.json (docs/verification.md#record)
    (cands[2] / "verify.log").write_text("pytest: 12 passed\nscore: 0.93\n")
    app = PhhApp(harness.root, backend=StoreBackend(harness.root), alerts="off")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.board is not None and bid in app.board.batches,
                    what="a first board")
        app.open_step(bid, "j1", "s1")
        await until(pilot, lambda: isinstance(app.screen, StepScreen), what="step screen")
        screen = app.screen
        assert isinstance(screen, StepScreen)
        await until(pilot, lambda: screen.is_mounted and screen.query(CandidatesPanel),
                    what="the step screen composed")
        panel = screen.query_one(CandidatesPanel)
        await until(pilot, lambda: len(panel.table.keys) == 3, what="three candidates")
        assert panel.display and panel.table.keys[0] == run[2]  # best first
        assert panel.rows[run[2]].promoted and not panel.rows[run[1]].promoted
        # the winner's verifier log is shown under the cursor's candidate
        await until(pilot, lambda: "12 passed" in panel.info_text, what="verify.log")
        panel.table.move_cursor(row=1)  # a loser: it has no verifier log
        await until(pilot, lambda: panel.info_text == NO_VERIFY_LOG,
                    what="the next candidate's log")
        # mark candidates 1 and 3 (space marks and moves down), then d: their diff
        panel.table.move_cursor(row=panel.table.keys.index(run[1]))
        await pilot.press("space")
        panel.table.move_cursor(row=panel.table.keys.index(run[3]))
        await pilot.press("space")
        assert set(panel.marked_runs()) == {run[1], run[3]}
        await pilot.press("d")
        await until(pilot, lambda: "+three" in panel.info_text, what="the candidates' diff")
        assert "-one" in panel.info_text and "f.txt" in panel.info_text
        # p on a candidate asks first, then requests the promote (queued: no engine here)
        panel.table.move_cursor(row=panel.table.keys.index(run[2]))
        await pilot.press("p")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirm")
        await pilot.press("y")
        await until(pilot, lambda: any(a[0] == "promote" for a in app.action_log),
                    what="the promote request")
        (entry,) = [a for a in app.action_log if a[0] == "promote"]
        assert entry[1:4] == (bid, "j1", "s1") and entry[4].outcome == "queued"
    reqs = [json.loads(p.read_text()) for p in (harness.layout.system / "overrides").glob("*.json")
            if not p.name.endswith(".result.json")]
    assert [(r["action"], r["run_id"]) for r in reqs] == [("promote", run[2])]


# ----------------------------------------------------------------------------- with a verifier
def _skip_without_verifier(harness: Harness, bid: str) -> None:
    """These run once the verifier (issue 15 item 1, the `verify` branch) is wired: submit
    then keeps the step's `verify` in batch_meta.json. Until then they skip, not fail."""
    from phh_engine.models import BatchMeta
    from phh_engine.store.files import read_model

    meta = read_model(harness.layout.batch_meta(bid), BatchMeta)
    assert meta is not None
    if meta.jobs[0].steps[0].verify is None:
        pytest.skip("the verifier is not wired in this branch yet (issue 15 item 1)")


def answer(text: str, **kw: Any) -> dict[str, Any]:
    return suffix({"shell": f"printf '{text}' > answer.txt"}, final("answered", **kw))


@pytest.mark.codex
def test_the_verifier_decides_and_scores_break_the_tie(harness: Harness) -> None:
    """All three turns succeed; the verifier fails candidate 1 (wrong answer) and scores 2
    and 3: candidate 3's higher score wins although candidate 2 spent fewer tokens."""
    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("default"), candidates=3,
             verify={"command": "grep -q correct answer.txt && cat answer.txt",
                     "score_pattern": "score: (?P<score>[0-9.]+)"},
             retry_policy={"max_attempts": 1},
             candidate_overrides=[
                 answer("wrong\\nscore: 9\\n"),
                 answer("correct\\nscore: 0.5\\n"),
                 {**answer("correct\\nscore: 0.8\\n"), "prompt_suffix": answer(
                     "correct\\nscore: 0.8\\n")["prompt_suffix"] + "\n" + "x" * 4000}]),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"}),
    ]}])
    _skip_without_verifier(harness, bid)
    harness.run()
    cands = by_candidate(harness, bid, "j1", "s1")
    st = {k: harness.state(a) for k, a in cands.items()}
    assert st[1]["status"] == "failed" and st[1]["failure_class"] == "verify_failed"
    assert st[2]["verify"]["passed"] and st[2]["verify"]["score"] == 0.5
    assert st[3]["verify"]["passed"] and st[3]["verify"]["score"] == 0.8
    promo = read_promotion(harness.layout, bid, "j1", "s1")
    assert promo is not None and promo.state == "applied" and promo.winner_candidate == 3
    assert [r.candidate for r in promo.ranking] == [3, 2, 1]
    ws = harness.layout.workspace(bid, "j1")
    assert (ws / "answer.txt").read_text() == "correct\nscore: 0.8\n"
    (s2,) = harness.attempts(bid, "j1", "s2")
    assert harness.meta(s2)["resume_from"]["selected_run_id"] == st[3]["run_id"]


@pytest.mark.codex
def test_outside_git_the_winner_is_copied_into_the_job_workspace(harness: Harness) -> None:
    (harness.workspace / "f.txt").write_text("base\n")
    (harness.workspace / "gone.txt").write_text("delete me\n")
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("default"), candidates=2, candidate_overrides=[
            suffix({"shell": "echo one > f.txt && echo junk > new1.txt"},
                   final("c1 gave up", status="failed")),
            suffix({"shell": "echo two > f.txt && mkdir -p sub && echo new > sub/new2.txt "
                             "&& rm gone.txt"}, final("c2"))]),
        step("s2", {"shell": "cat f.txt sub/new2.txt > seen.txt"}, final("read"),
             depends_on=["s1"]),
    ]}])
    harness.run()
    promo = read_promotion(harness.layout, bid, "j1", "s1")
    assert promo is not None and promo.state == "applied" and promo.kind == "copy"
    assert promo.winner_candidate == 2
    ws = harness.layout.workspace(bid, "j1")
    assert (ws / "f.txt").read_text() == "two\n"
    assert (ws / "sub" / "new2.txt").read_text() == "new\n"
    assert not (ws / "gone.txt").exists() and not (ws / "new1.txt").exists()
    assert (ws / "seen.txt").read_text() == "two\nnew\n"  # the next step saw the winner's work
    assert (harness.workspace / "f.txt").read_text() == "base\n"  # the source is untouched


@pytest.mark.codex
def test_operator_retry_of_a_step_no_candidate_passed_reruns_every_candidate(
        harness: Harness) -> None:
    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("gave up", status="failed"), candidates=2)]}])
    harness.settings.runners[0].capacity = 1  # one slot: the candidates never overlap
    harness.write_settings()
    eng = harness.start()
    def ended() -> bool:  # as the engine sees it (the files change first)
        batch = eng.index.batches.get(bid)
        atts = batch.jobs["j1"].steps["s1"].attempts if batch else []
        return len(atts) == 2 and all(a.status == "failed" for a in atts)

    wait_for(ended, 120, "both candidates failed")
    res = harness.call(eng, eng.request("retry", bid, "j1", "s1",
                                        prompt=script({"shell": "echo fixed > f.txt"},
                                                      final("fixed"))))
    assert res.outcome == "applied", res.message
    wait_for(lambda: (p := read_promotion(harness.layout, bid, "j1", "s1")) is not None
             and p.state == "applied", 120, "a promotion after the retry")
    harness.stop(eng)
    atts = harness.attempts(bid, "j1", "s1")
    assert len(atts) == 4  # each candidate once more, exactly
    retried = [harness.meta(a) for a in atts[2:]]
    assert sorted(m["candidate"] for m in retried) == [1, 2]
    assert {m["trigger"] for m in retried} == {"operator_retry"}
    assert {m["override_nonce"] for m in retried} == {res.nonce}
    assert (harness.layout.workspace(bid, "j1") / "f.txt").read_text() == "fixed\n"


@pytest.mark.codex
def test_a_retryable_failure_is_retried_as_the_same_candidate_before_ranking(
        harness: Harness) -> None:
    make_repo(harness.workspace, {"f.txt": "base\n"})
    flaky = {"http_error": 500, "times": 1, "key": f"{harness.root}-c2",
             "otherwise": final("c2, second time lucky")}
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("default"), candidates=2, candidate_overrides=[
            suffix({"shell": "echo one > f.txt"}, final("c1")),
            suffix({"shell": "echo two > f.txt"}, flaky)])]}],
        retries={"max_attempts": 2, "backoff_seconds": 0.5})
    harness.run()
    atts = harness.attempts(bid, "j1", "s1")
    metas = {harness.state(a)["run_id"]: harness.meta(a) for a in atts}
    assert sorted(m["candidate"] for m in metas.values()) == [1, 2, 2]
    first, again = sorted((a for a in atts if harness.meta(a)["candidate"] == 2),
                          key=lambda a: a.name)
    assert harness.state(first)["failure_class"] == "model_error"
    m = harness.meta(again)
    assert m["trigger"] == "retry" and m["retry_of"] == harness.state(first)["run_id"]
    assert harness.state(again)["status"] == "succeeded"
    # the promotion waited for the retry: it ranks candidate 2's latest attempt
    promo = read_promotion(harness.layout, bid, "j1", "s1")
    assert promo is not None and promo.state == "applied"
    assert {r.run_id for r in promo.ranking} == {
        harness.state(again)["run_id"],
        next(harness.state(a)["run_id"] for a in atts if harness.meta(a)["candidate"] == 1)}
    assert all(r.passed for r in promo.ranking)
    assert promo.decided_at >= datetime.fromisoformat(harness.state(again)["ended_at"])


@pytest.mark.codex
def test_each_candidate_takes_one_slot_of_the_batch_concurrency(harness: Harness) -> None:
    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", {"shell": "sleep 1"}, final("done"), candidates=3)]}], concurrency=2)
    harness.run()
    spans = []
    for a in harness.attempts(bid, "j1", "s1"):
        st = harness.state(a)
        assert st["status"] == "succeeded"
        spans.append((datetime.fromisoformat(st["started_at"]),
                      datetime.fromisoformat(st["ended_at"])))
    assert len(spans) == 3
    most = max(sum(1 for s, e in spans if s <= t < e) for t, _ in spans)
    assert most == 2  # side by side, but never more than the batch's 2 slots


@pytest.mark.codex
def test_cancel_of_a_best_of_n_step_stops_every_candidate(harness: Harness) -> None:
    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", {"hang": 60}, candidates=2)]}])
    eng = harness.start()

    def running() -> bool:
        batch = eng.index.batches.get(bid)
        atts = batch.jobs["j1"].steps["s1"].attempts if batch else []
        return len(atts) == 2 and all(a.status == "running" for a in atts)

    wait_for(running, 120, "both candidates running")
    res = harness.call(eng, eng.request("cancel", bid, "j1", "s1", reason="enough"))
    assert res.outcome == "applied", res.message
    wait_for(lambda: all(harness.state(a)["status"] == "canceled"
                         for a in harness.attempts(bid, "j1", "s1")), 60, "both canceled")
    harness.stop(eng)
    assert read_promotion(harness.layout, bid, "j1", "s1") is None


@pytest.mark.codex
async def test_an_observing_dashboard_sees_the_promotion(harness: Harness) -> None:
    """The promotion comes after the last candidate's files: a dashboard watching the store
    (another process's engine) must notice promotion.json, not stay at `running`."""
    from test_tui_keys import SIZE, status_of, until

    from phh_tui.app import PhhApp
    from phh_tui.backend import StoreBackend

    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("default"), candidates=3, candidate_overrides=three())]}])
    app = PhhApp(harness.root, backend=StoreBackend(harness.root), alerts="off")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.board is not None and bid in app.board.batches,
                    what="a first board")
        eng = await asyncio.to_thread(harness.start)
        await until(pilot, lambda: status_of(app, bid, "j1", "s1") == "succeeded", 120,
                    "the promotion seen by the observer")
        await asyncio.to_thread(harness.stop, eng)
        assert app.board is not None
        (row_,) = [r for r in app.board.batches[bid].steps if r.step_id == "s1"]
        assert row_.candidates is not None and row_.candidates[0].promoted


@pytest.mark.codex
def test_a_candidates_suffix_is_its_first_turn_only(harness: Harness) -> None:
    """A tester's: a verify_failed retry (same thread) of candidate k carried its
    prompt_suffix again after the verifier's feedback, so the agent redid the first turn's
    instruction instead of acting on the feedback."""
    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", final("plain"), candidates=2,
             candidate_overrides=[{"prompt_suffix": "SUFFIX-1"}, {"prompt_suffix": "SUFFIX-2"}],
             verify={"command": "test -f ok.txt || { touch ok.txt; exit 1; }"}),
    ]}], retries={"max_attempts": 2, "backoff_seconds": 0, "mode": "resume_same_thread"})
    harness.run()
    for k, atts in ((1, []), (2, [])):
        atts.extend(a for a in harness.attempts(bid, "j1", "s1")
                    if harness.meta(a).get("candidate") == k)
        first, retry = atts
        assert f"SUFFIX-{k}" in (first / "prompt.txt").read_text()
        assert harness.meta(retry)["invocation"] == "resume"
        assert f"SUFFIX-{k}" not in (retry / "prompt.txt").read_text()
        assert "verifier" in (retry / "prompt.txt").read_text()
        assert harness.state(retry)["status"] == "succeeded"
