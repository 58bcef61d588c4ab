"""Where a job's steps run (docs/layout.md#workspaces): the shared directory, or the job's own
checkout.

- `shared`: Codex runs in `working_root/working_directory` as it is. Two jobs sharing that
  directory do not run at once unless the batch sets `allow_shared_directory_concurrency`
  (the scheduler's per-directory limit, `limits.per_working_directory`).
- `isolated`: the job gets its own checkout under `runs/<batch_id>/<job_id>/_workspace`, made
  once (under the job lock) by the first step that runs and reused by every later step, so a
  resume or a dependent step sees the latest files. In a git repository it is a `git worktree`
  on the branch `phh/<batch_id>/<job_id>`, started from the repository's HEAD commit
  (uncommitted changes in the source are NOT carried over); elsewhere (or in a repository
  without any commit) it is a copy of the directory.

What was made is recorded in `runs/<batch_id>/<job_id>/workspace.json` (kind, source, branch,
base commit, ...); every attempt's meta.json records the policy and the directory it ran in.
GC removes an isolated workspace only after its batch is closed and no attempt of the job is in
flight; a worktree's uncommitted work is first committed onto the job's branch, which is kept.

`copy_tree` is also the resume copy (runner): reflink where the filesystem can, else
`copy_file_range`, else a plain read/write; sources are only ever read.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from filelock import FileLock
from pydantic import Field

from ..models import utcnow
from ..models.common import Record, WorkspacePolicy
from ..store.files import atomic_write_json, job_lock, read_model
from ..store.paths import Layout
from ..store.views import BatchView, JobView
from .gitcmd import git_argv, git_env

WORKSPACE_RECORD = "workspace.json"
_LEGACY_SUBDIR_MARKER = ".workspace_subdir"
GIT_TIMEOUT = 120
_GIT_IDENTITY = ("-c", "user.name=phh", "-c", "user.email=phh@localhost")


class WorkspaceError(Exception):
    """The job's working directory is missing or its isolated copy cannot be made."""


class WorkspaceRecord(Record):
    """runs/<batch_id>/<job_id>/workspace.json: what `isolated` made for this job."""

    batch_id: str
    job_id: str
    policy: WorkspacePolicy
    kind: Literal["git_worktree", "copy"]
    source: str = Field(description="the job's working_directory (what was checked out/copied)")
    path: str = Field(description="the checkout root: runs/<batch>/<job>/_workspace")
    workdir: str = Field(description="where Codex runs (path + the source's subdirectory)")
    subdir: str = "."
    repo_root: str | None = None
    branch: str | None = None
    base_commit: str | None = None
    note: str | None = None
    created_at: datetime


# ----------------------------------------------------------------------------- git
def _git(cwd: Path, *args: str, timeout: float = GIT_TIMEOUT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(git_argv(cwd, *args), capture_output=True, text=True,
                          timeout=timeout, env=git_env())


def _git_toplevel(path: Path) -> Path | None:
    try:
        out = _git(path, "rev-parse", "--show-toplevel", timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out.stdout.strip()) if out.returncode == 0 and out.stdout.strip() else None


def _git_head(top: Path) -> str | None:
    try:
        out = _git(top, "rev-parse", "--verify", "--quiet", "HEAD^{commit}", timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def branch_name(batch_id: str, job_id: str) -> str:
    """`phh/<batch>/<job>`; ids are path-safe, but git also refuses a component ending in
    `.lock` or `.`, so those get a `_`."""
    parts = []
    for part in ("phh", batch_id, job_id):
        if part.endswith((".lock", ".")):
            part += "_"
        parts.append(part)
    return "/".join(parts)


def _repo_lock(layout: Layout, top: Path) -> FileLock:
    """Worktree add/remove of one repository, one at a time (git's own locks are not meant
    for concurrent `worktree add` from many jobs)."""
    key = hashlib.sha256(str(top).encode()).hexdigest()[:16]
    path = layout.system / "locks" / f"git-{key}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path), timeout=300, thread_local=False)


# ----------------------------------------------------------------------------- resolve
def workspace_record_path(layout: Layout, batch_id: str, job_id: str) -> Path:
    return layout.job_dir(batch_id, job_id) / WORKSPACE_RECORD


def read_workspace_record(layout: Layout, batch_id: str, job_id: str) -> WorkspaceRecord | None:
    return read_model(workspace_record_path(layout, batch_id, job_id), WorkspaceRecord)


def resolve_workspace(layout: Layout, batch: BatchView, job: JobView
                      ) -> tuple[WorkspacePolicy, Path]:
    """(policy, directory Codex runs in). Isolated checkouts are made once and reused."""
    source = Path(job.spec.working_directory)
    policy = job.spec.workspace_policy
    if policy == "shared":
        if not source.is_dir():
            raise WorkspaceError(f"working directory does not exist: {source}")
        return policy, source
    target = layout.workspace(batch.batch_id, job.job_id)
    rec = read_workspace_record(layout, batch.batch_id, job.job_id)
    if rec is not None and target.is_dir():  # made (completely) by an earlier step
        return policy, Path(rec.workdir)
    with job_lock(layout.job_lock(batch.batch_id, job.job_id), timeout=GIT_TIMEOUT * 3):
        rec = read_workspace_record(layout, batch.batch_id, job.job_id)
        if target.is_dir() and rec is None and (target.parent / _LEGACY_SUBDIR_MARKER).exists():
            return policy, _workdir(layout, batch.batch_id, job.job_id, source, target)
        if rec is None or not target.is_dir():
            if not source.is_dir():
                raise WorkspaceError(f"working directory does not exist: {source}")
            if target.exists():
                # no record: a creation that crashed half-way (the record is written before
                # any step runs in it), so nothing of value is in there
                _rmtree_atomic(target)
            rec = _create(layout, batch.batch_id, job.job_id, source, target)
            atomic_write_json(workspace_record_path(layout, batch.batch_id, job.job_id), rec)
    return policy, Path(rec.workdir)


def _create(layout: Layout, batch_id: str, job_id: str, source: Path, target: Path
            ) -> WorkspaceRecord:
    top = _git_toplevel(source)
    head = _git_head(top) if top is not None else None
    note = None
    rel = source.resolve().relative_to(top.resolve()) if top is not None else Path(".")
    if top is not None and head is not None and str(rel) != "." and \
            _git(top, "cat-file", "-e", f"{head}:{rel.as_posix()}").returncode != 0:
        note = (f"{rel} is not in {top}'s HEAD commit (untracked or ignored): copied instead "
                "of a worktree")
        head = None  # fall through to the copy below
    if top is not None and head is not None:
        dirty = _git(top, "status", "--porcelain", "--untracked-files=no", "--", str(rel))
        if dirty.returncode == 0 and dirty.stdout.strip():
            note = ("the source had uncommitted changes; the worktree starts from HEAD "
                    "without them")
        branch = branch_name(batch_id, job_id)
        with _repo_lock(layout, top):
            with contextlib.suppress(OSError, subprocess.SubprocessError):
                _git(top, "worktree", "prune")  # forget worktrees whose directory is gone
            exists = _git(top, "rev-parse", "--verify", "--quiet",
                          f"refs/heads/{branch}").returncode == 0
            # an existing branch is this job's earlier workspace (removed by hand): continue it
            args = (["worktree", "add", str(target), branch] if exists else
                    ["worktree", "add", "-b", branch, str(target), head])
            res = _git(top, *args)
            if res.returncode != 0:
                shutil.rmtree(target, ignore_errors=True)
                raise WorkspaceError(f"git worktree add failed: {res.stderr.strip()[:300]}")
        if exists:
            note = f"continued the existing branch {branch}"
            head = _git_head(target) or head
        return WorkspaceRecord(
            batch_id=batch_id, job_id=job_id, policy="isolated", kind="git_worktree",
            source=str(source), path=str(target), workdir=str(target / rel),
            subdir=str(rel), repo_root=str(top), branch=branch, base_commit=head, note=note,
            created_at=utcnow())
    if top is not None and note is None:
        note = f"{top} is a git repository without any commit: copied instead of a worktree"
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    # never copy the phh root into itself when the runs store lives inside the source
    skip = {layout.root.resolve(), target.parent.resolve()}
    try:
        copy_tree(source, tmp, skip=skip)
        tmp.rename(target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return WorkspaceRecord(
        batch_id=batch_id, job_id=job_id, policy="isolated", kind="copy", source=str(source),
        path=str(target), workdir=str(target), repo_root=str(top) if top else None, note=note,
        created_at=utcnow())


def _workdir(layout: Layout, batch_id: str, job_id: str, source: Path, target: Path) -> Path:
    rec = read_workspace_record(layout, batch_id, job_id)
    if rec is not None:
        return Path(rec.workdir)
    marker = target.parent / _LEGACY_SUBDIR_MARKER
    if marker.exists():
        rel = marker.read_text().strip()
        return target / rel if rel and rel != "." else target
    return target


# ----------------------------------------------------------------------------- removal (GC)
@dataclass(slots=True)
class Removal:
    path: Path
    kind: str
    bytes: int
    detail: str
    saved_commit: str | None = None


def tree_bytes(path: Path) -> int:
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def describe_removal(layout: Layout, batch_id: str, job_id: str) -> Removal | None:
    """What removing this job's isolated workspace would do (for a GC plan); None if none."""
    target = layout.workspace(batch_id, job_id)
    if not target.is_dir():
        return None
    rec = read_workspace_record(layout, batch_id, job_id)
    size = tree_bytes(target)
    if rec is not None and rec.kind == "git_worktree":
        return Removal(target, "git_worktree", size,
                       f"git worktree on branch {rec.branch} (branch kept; uncommitted work is "
                       "committed onto it first)")
    return Removal(target, "copy", size, "isolated copy (no git): deleted")


def remove_workspace(layout: Layout, batch_id: str, job_id: str) -> Removal | None:
    """Remove a job's isolated workspace. A git worktree's uncommitted changes are committed
    onto its branch first (the branch is kept, so no work is lost); if that commit fails, the
    worktree is left in place and WorkspaceError says why."""
    plan = describe_removal(layout, batch_id, job_id)
    if plan is None:
        return None
    target = plan.path
    rec = read_workspace_record(layout, batch_id, job_id)
    if rec is not None and rec.kind == "git_worktree" and rec.repo_root:
        plan.saved_commit = _save_uncommitted(target, batch_id, job_id)
        top = Path(rec.repo_root)
        if top.is_dir():
            with _repo_lock(layout, top):
                res = _git(top, "worktree", "remove", "--force", str(target))
                if res.returncode != 0 and target.exists():
                    _rmtree_atomic(target)
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    _git(top, "worktree", "prune")
        else:
            _rmtree_atomic(target)
    else:
        _rmtree_atomic(target)
    return plan


def _save_uncommitted(worktree: Path, batch_id: str, job_id: str) -> str | None:
    try:
        status = _git(worktree, "status", "--porcelain", "--untracked-files=all")
    except (OSError, subprocess.SubprocessError) as exc:
        raise WorkspaceError(f"cannot read git status of {worktree}: {exc}") from exc
    if status.returncode != 0:
        raise WorkspaceError(f"git status failed in {worktree}: {status.stderr.strip()[:200]}")
    if not status.stdout.strip():
        return None
    add = _git(worktree, "add", "-A")
    commit = _git(worktree, *_GIT_IDENTITY, "commit", "-q", "--no-verify", "-m",
                  f"phh: uncommitted work of {batch_id}/{job_id}, saved before workspace GC")
    if add.returncode != 0 or commit.returncode != 0:
        raise WorkspaceError(
            f"could not commit uncommitted work in {worktree} before removing it: "
            f"{(add.stderr or commit.stderr).strip()[:200]}")
    return _git_head(worktree)


def _rmtree_atomic(path: Path) -> None:
    """Rename first, so nobody sees a half-deleted tree under the real name."""
    trash = path.with_name(f".{path.name}.gc-{os.getpid()}-{time.monotonic_ns()}")
    try:
        path.rename(trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


# ----------------------------------------------------------------------------- fast copy
FICLONE = 0x40049409  # _IOW(0x94, 9, int): share extents (btrfs, XFS reflink=1, bcachefs...)
_NO_CLONE = {errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
             errno.EPERM, errno.EBADF}
_NO_CFR = {errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EPERM,
           errno.EBADF, errno.ETXTBSY}


@dataclass(slots=True)
class CopyStats:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    bytes: int = 0
    seconds: float = 0.0
    methods: dict[str, int] = field(default_factory=dict)
    #: strategies still worth trying (one failure turns a strategy off for the rest of a tree)
    _reflink: bool = True
    _cfr: bool = True

    @property
    def method(self) -> str:
        return max(self.methods, key=lambda k: self.methods[k]) if self.methods else "none"


def copy_file(src: Path, dst: Path, stats: CopyStats | None = None,
              methods: tuple[str, ...] = ("reflink", "copy_file_range", "read_write")) -> str:
    """Copy one regular file's bytes (exclusive create) and its mode/times; returns the method
    used: `reflink` (FICLONE: shared extents, O(1)), `copy_file_range` (in-kernel copy; also
    clones on filesystems that support it), or `read_write`."""
    st = stats if stats is not None else CopyStats()
    used = "read_write"
    with open(src, "rb") as fi, open(dst, "xb") as fo:
        size = os.fstat(fi.fileno()).st_size
        done = False
        if "reflink" in methods and st._reflink and size > 0:
            try:
                fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
                done, used = True, "reflink"
            except OSError as exc:
                if exc.errno not in _NO_CLONE:
                    raise
                st._reflink = False
        if not done and "copy_file_range" in methods and st._cfr and size > 0 and hasattr(
                os, "copy_file_range"):
            try:
                left = size
                while left > 0:
                    n = os.copy_file_range(fi.fileno(), fo.fileno(), min(left, 1 << 30))
                    if n == 0:
                        break
                    left -= n
                # a file that grew while copied: finish with plain reads below
                done, used = True, "copy_file_range"
                rest = fi.read()
                if rest:
                    fo.write(rest)
            except OSError as exc:
                if exc.errno not in _NO_CFR:
                    raise
                st._cfr = False
                fi.seek(0)
                fo.seek(0)
                fo.truncate()
        if not done:
            shutil.copyfileobj(fi, fo, 1 << 20)
        st.bytes += os.fstat(fo.fileno()).st_size
    shutil.copystat(src, dst, follow_symlinks=False)
    st.files += 1
    st.methods[used] = st.methods.get(used, 0) + 1
    return used


def copy_tree(src: Path, dst: Path, *, skip: set[Path] | None = None,
              methods: tuple[str, ...] = ("reflink", "copy_file_range", "read_write")
              ) -> CopyStats:
    """Copy a directory tree to a NEW `dst` (FileExistsError if it exists). Symlinks are copied
    as links; special files are skipped; `src` is only read, never written."""
    t0 = time.perf_counter()
    stats = CopyStats()
    skip_resolved = {p.resolve() for p in (skip or set())}
    dst.mkdir(parents=True, exist_ok=False)
    stats.dirs += 1
    for root, dirs, files in os.walk(src):
        rroot = Path(root)
        out = dst / rroot.relative_to(src)
        keep = []
        for d in sorted(dirs):
            p = rroot / d
            if p.is_symlink():
                files.append(d)  # a link to a directory is copied as a link
                continue
            if skip_resolved and p.resolve() in skip_resolved:
                continue
            (out / d).mkdir()
            stats.dirs += 1
            keep.append(d)
        dirs[:] = keep
        for name in sorted(files):
            p = rroot / name
            q = out / name
            if p.is_symlink():
                os.symlink(os.readlink(p), q)
                stats.symlinks += 1
            elif p.is_file():
                copy_file(p, q, stats, methods)
        with contextlib.suppress(OSError):
            shutil.copystat(rroot, out)
    stats.seconds = time.perf_counter() - t0
    return stats
