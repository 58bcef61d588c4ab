"""Candidate workspaces and promotion (docs/verification.md#candidates-best-of-n).

Every candidate of a best-of-N step works in its own checkout made from the same starting
point, recorded once per step in `steps/<step>/candidates/base.json`:

- the job's workspace is a git worktree: its uncommitted work is committed onto the job's
  branch (that commit is the base), and candidate k is a worktree on its own branch
  `phh-cand/<batch>/<job>/<step>/c<k>` from it, at `steps/<step>/candidates/c<k>`;
- the job's workspace is a copy: a snapshot `candidates/base/` of it is taken once, and each
  candidate is a copy of the snapshot.

Promotion applies the winner's changes to the job's workspace: a `git merge --no-ff` of the
candidate's branch (its uncommitted work committed first), or, for copies, every file the
candidate changed relative to the snapshot written into the job's workspace (a file the job's
workspace changed differently meanwhile is a conflict and nothing is written). Both are
idempotent, so a promotion interrupted by a crash is finished by running it again.
"""

from __future__ import annotations

import contextlib
import filecmp
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ..models import ExecutionPolicy, NormalizedStep, utcnow
from ..models.promotion import CandidateBase, CandidateRank, Promotion
from ..store.candidates import (
    base_path,
    candidate_workspace_path,
    candidates_dir,
    read_base,
    write_promotion,
)
from ..store.crash import crashpoint
from ..store.files import atomic_write_json, job_lock
from ..store.paths import Layout
from ..store.views import BatchView, JobView
from .gitcmd import git_argv, git_env
from .workspace import GIT_TIMEOUT, WorkspaceError, _repo_lock, copy_tree, read_workspace_record

_IDENTITY = ("-c", "user.name=phh", "-c", "user.email=phh@localhost")


class PromotionError(Exception):
    """A promotion cannot be made (no candidate workspace, git failed for another reason than
    a conflict): the step ends `needs_attention` with this text."""


# ----------------------------------------------------------------------------- git
def _git(cwd: Path | str, *args: str, timeout: float = GIT_TIMEOUT
         ) -> subprocess.CompletedProcess[str]:
    return subprocess.run(git_argv(cwd, *args), capture_output=True, text=True,
                          timeout=timeout, env=git_env())


def _head(cwd: Path | str) -> str | None:
    out = _git(cwd, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    return out.stdout.strip() or None if out.returncode == 0 else None


def _commit_all(worktree: Path | str, message: str) -> str:
    """Commit every change (untracked files included) of a worktree; returns HEAD."""
    status = _git(worktree, "status", "--porcelain", "--untracked-files=all")
    if status.returncode != 0:
        raise PromotionError(f"git status failed in {worktree}: {status.stderr.strip()[:300]}")
    if status.stdout.strip():
        add = _git(worktree, "add", "-A")
        commit = _git(worktree, *_IDENTITY, "commit", "-q", "--no-verify", "-m", message)
        if add.returncode != 0 or commit.returncode != 0:
            raise PromotionError(f"could not commit the work in {worktree}: "
                                 f"{(add.stderr or commit.stderr).strip()[:300]}")
    head = _head(worktree)
    if head is None:
        raise PromotionError(f"{worktree} has no commit")
    return head


def candidate_branch(batch_id: str, job_id: str, step_id: str, candidate: int) -> str:
    """`phh-cand/<batch>/<job>/<step>/c<k>` (a component git would refuse gets a `_`)."""
    parts = []
    for part in ("phh-cand", batch_id, job_id, step_id, f"c{candidate}"):
        if part.endswith((".lock", ".")):
            part += "_"
        parts.append(part)
    return "/".join(parts)


# ----------------------------------------------------------------------------- per attempt
def candidate_policy(spec: NormalizedStep, candidate: int, policy: ExecutionPolicy
                     ) -> ExecutionPolicy:
    """The execution policy with candidate `candidate`'s model / reasoning effort."""
    if candidate > len(spec.candidate_overrides):
        return policy
    o = spec.candidate_overrides[candidate - 1]
    update: dict[str, str] = {}
    if o.model:
        update["model"] = o.model
    if o.model_reasoning_effort:
        update["model_reasoning_effort"] = o.model_reasoning_effort
    return policy.model_copy(update=update) if update else policy


def candidate_prompt_suffix(spec: NormalizedStep, candidate: int | None) -> str | None:
    if candidate is None or candidate > len(spec.candidate_overrides):
        return None
    return spec.candidate_overrides[candidate - 1].prompt_suffix or None


def candidate_workdir(layout: Layout, batch: BatchView, job: JobView, step_id: str,
                      candidate: int) -> Path:
    """Where candidate `candidate` of the step runs, made on first use (under the job lock)
    from the step's base (made on the first candidate's start). WorkspaceError says why not."""
    bid, jid = batch.batch_id, job.job_id
    if job.spec.workspace_policy != "isolated":
        raise WorkspaceError("candidates > 1 needs workspace_policy 'isolated' (each candidate "
                             "works in its own checkout)")
    rec = read_workspace_record(layout, bid, jid)
    if rec is None:
        raise WorkspaceError(f"the job's isolated workspace of {bid}/{jid} is not recorded")
    target = candidate_workspace_path(layout, bid, jid, step_id, candidate)
    with job_lock(layout.job_lock(bid, jid), timeout=GIT_TIMEOUT * 3):
        base = read_base(layout, bid, jid, step_id)
        if base is None:
            base = _make_base(layout, bid, jid, step_id, rec.kind, Path(rec.path), rec.subdir,
                              rec.repo_root, Path(rec.workdir))
        if not target.is_dir():
            _make_candidate(layout, base, target, candidate)
    return target / base.subdir


def _make_base(layout: Layout, bid: str, jid: str, step_id: str, kind: str, ws: Path,
               subdir: str, repo_root: str | None, workdir: Path) -> CandidateBase:
    cdir = candidates_dir(layout, bid, jid, step_id)
    cdir.mkdir(parents=True, exist_ok=True)
    if kind == "git_worktree":
        commit = _commit_all(ws, f"phh: the work of {bid}/{jid} before the candidates of "
                             f"{step_id}")
        base = CandidateBase(batch_id=bid, job_id=jid, step_id=step_id, kind="git_worktree",
                             created_at=utcnow(), job_workspace=str(ws), subdir=subdir,
                             repo_root=repo_root, base_commit=commit)
    else:
        snap = cdir / "base"
        tmp = cdir / f".base.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(snap, ignore_errors=True)  # a snapshot without base.json: half made
        copy_tree(ws, tmp)
        tmp.rename(snap)
        rel = os.path.relpath(workdir, ws)
        base = CandidateBase(batch_id=bid, job_id=jid, step_id=step_id, kind="copy",
                             created_at=utcnow(), job_workspace=str(ws), subdir=rel,
                             base_dir=str(snap))
    atomic_write_json(base_path(layout, bid, jid, step_id), base)
    return base


def _make_candidate(layout: Layout, base: CandidateBase, target: Path, candidate: int) -> None:
    if base.kind == "git_worktree":
        assert base.repo_root is not None and base.base_commit is not None
        top = Path(base.repo_root)
        branch = candidate_branch(base.batch_id, base.job_id, base.step_id, candidate)
        with _repo_lock(layout, top):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _git(top, "worktree", "prune")
            exists = _git(top, "rev-parse", "--verify", "--quiet",
                          f"refs/heads/{branch}").returncode == 0
            args = (["worktree", "add", str(target), branch] if exists else
                    ["worktree", "add", "-b", branch, str(target), base.base_commit])
            res = _git(top, *args)
            if res.returncode != 0:
                shutil.rmtree(target, ignore_errors=True)
                raise WorkspaceError(f"git worktree add of candidate {candidate} failed: "
                                     f"{res.stderr.strip()[:300]}")
        return
    assert base.base_dir is not None
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    copy_tree(Path(base.base_dir), tmp)
    tmp.rename(target)


# ----------------------------------------------------------------------------- promotion
def begin_promotion(layout: Layout, batch_id: str, job_id: str, step_id: str,
                    ranking: list[CandidateRank], winner: CandidateRank, *,
                    by: str = "engine", nonce: str | None = None,
                    previous: Promotion | None = None) -> Promotion:
    """Record the decision `pending` (call under the job lock): the winner's work committed
    on its branch (git), and the job branch's commit before any promotion of the step."""
    base = read_base(layout, batch_id, job_id, step_id)
    if base is None:
        raise PromotionError(f"no candidates/base.json for {job_id}.{step_id}")
    cand_commit = pre = None
    if base.kind == "git_worktree":
        cws = candidate_workspace_path(layout, batch_id, job_id, step_id, winner.candidate)
        if not cws.is_dir():
            raise PromotionError(f"the workspace of candidate {winner.candidate} is gone: {cws}")
        cand_commit = _commit_all(cws, f"phh: candidate {winner.candidate} ({winner.run_id}) "
                                  f"of {job_id}.{step_id}")
        pre = previous.pre_commit if previous is not None and previous.pre_commit else \
            _commit_all(base.job_workspace, f"phh: the work of {batch_id}/{job_id} before "
                        f"promoting {step_id}")
    promo = Promotion(
        batch_id=batch_id, job_id=job_id, step_id=step_id, state="pending",
        winner_run_id=winner.run_id, winner_candidate=winner.candidate, ranking=ranking,
        by="operator" if by == "operator" else "engine", nonce=nonce,
        previous_run_id=previous.winner_run_id if previous is not None else None,
        decided_at=utcnow(), kind=base.kind, candidate_commit=cand_commit, pre_commit=pre)
    write_promotion(layout, promo)
    crashpoint("promotion_pending")
    return promo


def finish_promotion(layout: Layout, promo: Promotion) -> Promotion:
    """Apply a `pending` promotion to the job's workspace and record the result (`applied`
    or `conflict`). Idempotent: what a crash interrupted is completed, never done twice."""
    base = read_base(layout, promo.batch_id, promo.job_id, promo.step_id)
    if base is None:
        raise PromotionError(f"no candidates/base.json for {promo.job_id}.{promo.step_id}")
    git = base.kind == "git_worktree"
    done = _merge(base, promo) if git else _copy_over(layout, base, promo)
    crashpoint("promotion_merged")
    write_promotion(layout, done)
    return done


def _merge(base: CandidateBase, promo: Promotion) -> Promotion:
    ws, tip = base.job_workspace, promo.candidate_commit
    assert tip is not None
    if _git(ws, "merge-base", "--is-ancestor", tip, "HEAD").returncode == 0:
        # merged already (a crash after the merge, before the record): nothing to do twice
        return promo.model_copy(update={"state": "applied", "applied_at": utcnow(),
                                        "merged_commit": _head(ws)})
    if _git(ws, "rev-parse", "--verify", "--quiet", "MERGE_HEAD").returncode == 0:
        _git(ws, "merge", "--abort")  # a merge a crash left half done
    if promo.previous_run_id is not None and promo.pre_commit and _head(ws) != promo.pre_commit:
        # an operator promote replaces the earlier winner: back to before it
        res = _git(ws, "reset", "-q", "--hard", promo.pre_commit)
        if res.returncode != 0:
            raise PromotionError(f"git reset to {promo.pre_commit} failed: "
                                 f"{res.stderr.strip()[:300]}")
    msg = (f"phh: promote candidate {promo.winner_candidate} ({promo.winner_run_id}) of "
           f"{promo.job_id}.{promo.step_id}")
    res = _git(ws, *_IDENTITY, "merge", "--no-ff", "--no-edit", "-m", msg, tip)
    if res.returncode != 0:
        files = _git(ws, "diff", "--name-only", "--diff-filter=U").stdout.split()
        _git(ws, "merge", "--abort")
        why = (f"merge conflict in {', '.join(files[:10])}" if files else
               (res.stderr.strip() or res.stdout.strip())[:300] or "git merge failed")
        return promo.model_copy(update={"state": "conflict", "reason": why})
    return promo.model_copy(update={"state": "applied", "applied_at": utcnow(),
                                    "merged_commit": _head(ws)})


def _files(root: Path) -> Iterator[str]:
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d != ".git" and not os.path.islink(os.path.join(dirpath, d))]
        for name in files:
            yield os.path.relpath(os.path.join(dirpath, name), root)
        for d in os.listdir(dirpath):
            p = os.path.join(dirpath, d)
            if os.path.islink(p) and os.path.isdir(p):
                yield os.path.relpath(p, root)


def _same(a: Path, b: Path) -> bool:
    """Same content (or both absent); links compare by target."""
    ea, eb = os.path.lexists(a), os.path.lexists(b)
    if not ea or not eb:
        return ea == eb
    if a.is_symlink() or b.is_symlink():
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    return filecmp.cmp(a, b, shallow=False)


def _changed(base: Path, cand: Path) -> set[str]:
    return {p for p in set(_files(base)) | set(_files(cand)) if not _same(base / p, cand / p)}


def _copy_over(layout: Layout, base: CandidateBase, promo: Promotion) -> Promotion:
    assert base.base_dir is not None
    snap, job = Path(base.base_dir), Path(base.job_workspace)
    cand = candidate_workspace_path(layout, promo.batch_id, promo.job_id, promo.step_id,
                                    promo.winner_candidate)
    if not cand.is_dir():
        raise PromotionError(f"the workspace of candidate {promo.winner_candidate} is gone")
    prev = None
    if promo.previous_run_id is not None:
        k = next((r.candidate for r in promo.ranking if r.run_id == promo.previous_run_id), None)
        if k is not None:
            prev = candidate_workspace_path(layout, promo.batch_id, promo.job_id,
                                            promo.step_id, k)
    paths = _changed(snap, cand) | (_changed(snap, prev) if prev is not None else set())
    conflicts = sorted(p for p in paths if not (
        _same(job / p, snap / p) or _same(job / p, cand / p)
        or (prev is not None and _same(job / p, prev / p))))
    if conflicts:
        return promo.model_copy(update={
            "state": "conflict",
            "reason": "the job's workspace changed these files differently meanwhile: "
                      + ", ".join(conflicts[:10])})
    for p in sorted(paths):
        src, dst = cand / p, job / p
        if _same(src, dst):
            continue
        if os.path.lexists(dst):
            if dst.is_dir() and not dst.is_symlink():
                shutil.rmtree(dst)
            else:
                dst.unlink()
        if os.path.lexists(src):
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_symlink():
                os.symlink(os.readlink(src), dst)
            else:
                shutil.copy2(src, dst)
    return promo.model_copy(update={"state": "applied", "applied_at": utcnow()})


# ----------------------------------------------------------------------------- diff
def candidate_diff(layout: Layout, batch_id: str, job_id: str, step_id: str, a: int, b: int,
                   max_bytes: int = 1 << 20) -> str:
    """The difference between two candidates' work (unified diff text, at most `max_bytes`):
    `git diff` between their checkouts' trees for worktrees (uncommitted work included),
    a file diff of the two copies otherwise. Blocking: call it off any UI thread."""
    base = read_base(layout, batch_id, job_id, step_id)
    pa = candidate_workspace_path(layout, batch_id, job_id, step_id, a)
    pb = candidate_workspace_path(layout, batch_id, job_id, step_id, b)
    if base is None or not pa.is_dir() or not pb.is_dir():
        return f"no workspaces to compare for candidates {a} and {b}"
    if base.kind == "git_worktree":
        ta, tb = _tree_of(pa), _tree_of(pb)
        res = subprocess.run(git_argv(pa, "diff", "--no-color", "--stat", "--patch", ta, tb),
                             capture_output=True, timeout=GIT_TIMEOUT, env=git_env())
        out = res.stdout[:max_bytes].decode(errors="replace")
    else:
        res = subprocess.run(["git", "diff", "--no-index", "--no-color", "--stat", "--patch",
                              "--", str(pa), str(pb)],
                             capture_output=True, timeout=GIT_TIMEOUT, env=git_env())
        out = res.stdout[:max_bytes].decode(errors="replace")
        out = out.replace(str(pa), f"c{a}").replace(str(pb), f"c{b}")
    return out.strip() or f"candidates {a} and {b} made the same changes"


def _tree_of(worktree: Path) -> str:
    """A tree object of the worktree as it is (uncommitted work included), written through a
    private index so the worktree's own index is left alone."""
    tmp = worktree.parent / f".{worktree.name}.diff-index.{os.getpid()}"
    env = {**git_env(), "GIT_INDEX_FILE": str(tmp)}
    try:
        for args in (("read-tree", "HEAD"), ("add", "-A"), ("write-tree",)):
            res = subprocess.run(git_argv(worktree, *args), capture_output=True, text=True,
                                 timeout=GIT_TIMEOUT, env=env)
            if res.returncode != 0:
                raise PromotionError(f"git {args[0]} failed in {worktree}: "
                                     f"{res.stderr.strip()[:200]}")
        return res.stdout.strip()
    finally:
        tmp.unlink(missing_ok=True)
