"""Where a job's steps run (SPEC §10): the shared directory, or the job's own checkout."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from .paths import Layout
from .store import job_lock
from .views import BatchView, JobView


class WorkspaceError(Exception):
    """The job's working directory is missing or its isolated copy cannot be made."""


def _git_toplevel(path: Path) -> Path | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(path), "rev-parse", "--show-toplevel"],
            capture_output=True, text=True, timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def resolve_workspace(layout: Layout, batch: BatchView, job: JobView) -> tuple[str, Path]:
    """(policy, directory Codex runs in). Isolated checkouts are made once and reused."""
    source = Path(job.spec.working_directory)
    policy = job.spec.workspace_policy
    if policy == "shared":
        if not source.is_dir():
            raise WorkspaceError(f"working directory does not exist: {source}")
        return policy, source
    target = layout.workspace(batch.batch_id, job.job_id)
    if target.is_dir():
        return policy, _subdir(source, target)
    if not source.is_dir():
        raise WorkspaceError(f"working directory does not exist: {source}")
    with job_lock(layout.job_lock(batch.batch_id, job.job_id)):
        if target.is_dir():
            return policy, _subdir(source, target)
        top = _git_toplevel(source)
        if top is not None:
            branch = f"phh/{batch.batch_id}/{job.job_id}"
            res = subprocess.run(
                ["git", "-C", str(top), "worktree", "add", "-b", branch, str(target), "HEAD"],
                capture_output=True, text=True, timeout=120,
            )
            if res.returncode != 0:
                raise WorkspaceError(f"git worktree add failed: {res.stderr.strip()[:300]}")
            # remember how the source maps into the worktree
            (target.parent / ".workspace_subdir").write_text(str(source.relative_to(top)))
        else:
            tmp = target.with_name("._workspace.tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.copytree(source, tmp, symlinks=True)
            tmp.rename(target)
    return policy, _subdir(source, target)


def _subdir(source: Path, target: Path) -> Path:
    marker = target.parent / ".workspace_subdir"
    if marker.exists():
        rel = marker.read_text().strip()
        return target / rel if rel and rel != "." else target
    return target
