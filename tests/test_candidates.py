"""Best-of-N candidates (issue 15 items 2, 4, 5; docs/verification.md#candidates-best-of-n),
with the real Codex binary against the stand-in.

Why: a step with `candidates: N` runs N attempts side by side, each in its own checkout from
the same starting point; phh ranks them and promotes the winner: the step's result (current.json
`latest_successful`, the thread a `resume_from` continues) and its changes in the job's
workspace. Losers stay on disk. A promotion must survive kill -9, a conflict must end visible
(`needs_attention`), and an operator may promote another candidate, exactly once.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, final, step

from phh_engine.derive.candidates import rank
from phh_engine.models.promotion import CandidateRank
from phh_engine.standin import script
from phh_engine.store.candidates import read_promotion

PHH = str(Path(sys.executable).with_name("phh"))


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True).stdout


def make_repo(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (path / rel).write_text(text)
    git(path, "add", ".")
    git(path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    return git(path, "rev-parse", "HEAD").strip()


def suffix(*actions: dict[str, Any]) -> dict[str, Any]:
    return {"prompt_suffix": script(*actions)}


def three(fail: str = "failed") -> list[dict[str, Any]]:
    """Candidate 2 writes `two` and succeeds; 1 and 3 write their own text and fail."""
    return [
        suffix({"shell": "echo one > f.txt"}, final("c1 gave up", status=fail)),
        suffix({"shell": "echo two > f.txt"}, final("c2 did it")),
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
