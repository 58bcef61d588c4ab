"""Best-of-N candidates (docs/verification.md#candidates-best-of-n): where the candidates of a
step started from, and which one was promoted.

- `steps/<step_id>/candidates/base.json` (`CandidateBase`): the starting point every candidate
  workspace of the step is made from, recorded once when the first candidate starts.
- `steps/<step_id>/promotion.json` (`Promotion`): the ranking and the winner, written
  atomically `pending` before the winner's changes are applied to the job's workspace and
  `applied` (or `conflict`) after, so a restarted engine finishes a promotion exactly once and
  current.json stays rebuildable from the files.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field

from .common import AttemptStatus, Id, Record

#: per attempt directory of a best-of-N step: the candidate index, written at claim time
CANDIDATE_MARKER = "candidate"
PROMOTION_FILE = "promotion.json"
CANDIDATES_DIR = "candidates"
CANDIDATE_BASE_FILE = "base.json"

WorkspaceKind = Literal["git_worktree", "copy"]


class CandidateBase(Record):
    """candidates/base.json: what every candidate workspace of the step starts from."""

    batch_id: Id
    job_id: Id
    step_id: Id
    kind: WorkspaceKind
    created_at: datetime
    job_workspace: str = Field(description="the job's checkout root (runs/<b>/<j>/_workspace)")
    subdir: str = Field(default=".", description="where Codex runs inside a checkout")
    repo_root: str | None = None
    base_commit: str | None = Field(default=None, description="git: the job branch's commit "
                                    "(its uncommitted work committed first) candidates branch "
                                    "from")
    base_dir: str | None = Field(default=None, description="copy: the snapshot of the job's "
                                 "workspace candidates are copied from")


class CandidateRank(Record):
    """One candidate's standing: the facts it was ranked on (docs/verification.md#ranking)."""

    candidate: int = Field(ge=1)
    run_id: Id
    status: AttemptStatus
    passed: bool = Field(description="succeeded, and the verifier (if any) passed")
    score: float | None = None
    tokens: int = Field(ge=0, description="input + output tokens (state.json usage)")
    duration_seconds: float | None = Field(default=None, ge=0)


class Promotion(Record):
    """steps/<step_id>/promotion.json: the step's promoted candidate."""

    batch_id: Id
    job_id: Id
    step_id: Id
    state: Literal["pending", "applied", "conflict"]
    winner_run_id: Id
    winner_candidate: int = Field(ge=1)
    ranking: list[CandidateRank] = Field(description="best first; what the engine ranked")
    by: Literal["engine", "operator"] = "engine"
    nonce: str | None = Field(default=None, description="the operator request (promote)")
    previous_run_id: Id | None = Field(default=None, description="the winner an operator "
                                       "promote replaced")
    decided_at: datetime
    applied_at: datetime | None = None
    kind: WorkspaceKind
    candidate_commit: str | None = Field(default=None, description="git: the winner's branch "
                                         "tip (its uncommitted work committed) merged")
    pre_commit: str | None = Field(default=None, description="git: the job branch before the "
                                   "step's first promotion (an operator promote resets to it)")
    merged_commit: str | None = None
    reason: str | None = Field(default=None, description="why it is `conflict`")
