"""Git artifacts of an ended attempt (docs/layout.md): `git_head.txt`, `git_status.txt`,
`git.diff` (untracked files included) and `files_touched.json`, when the attempt's working
directory is in a git work tree. Plumbing only, never taking the index lock.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from ..store.files import write_once_bytes, write_once_json
from ..store.paths import FILES_TOUCHED, GIT_DIFF, GIT_HEAD, GIT_STATUS
from .gitcmd import git_argv, git_env


def in_git_work_tree(workdir: Path) -> bool:
    """Cheap pre-check before spawning git: is there a `.git` here or in a parent? Most
    scratch directories are not repositories, and two git spawns per attempt cost more
    than the rest of finishing it. GIT_DIR in the environment defers to git itself."""
    if os.environ.get("GIT_DIR"):
        return True
    d = workdir.resolve()
    return any(_looks_like_git(os.path.join(p, ".git")) for p in (d, *d.parents))


def _looks_like_git(dot_git: str) -> bool:
    """What git's discovery accepts, roughly: a dir with HEAD, or a `gitdir:` file."""
    if os.path.isdir(dot_git):
        return os.path.exists(os.path.join(dot_git, "HEAD"))
    try:
        with open(dot_git, "rb") as f:
            return f.read(8) == b"gitdir: "
    except OSError:
        return False


def _git(workdir: Path, *args: str) -> tuple[int, bytes]:
    try:
        p = subprocess.run(git_argv(workdir, *args), stdout=subprocess.PIPE, env=git_env(),
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=False)
    except OSError:
        return 1, b""
    return p.returncode, p.stdout


def _write_git_artifacts(workdir: Path, path: Path, files_from_events: list[str]) -> None:
    if not in_git_work_tree(workdir):
        return
    rc, head = _git(workdir, "rev-parse", "HEAD")
    if rc != 0:
        inside, _ = _git(workdir, "rev-parse", "--is-inside-work-tree")
        if inside != 0:
            return
        head = b"(no commits)\n"
    _, status = _git(workdir, "status", "--porcelain=v1", "--untracked-files=all", ".")
    # plumbing, not `git diff HEAD`: porcelain diff refreshes and rewrites the index under
    # index.lock even with --no-optional-locks (git 2.39), racing an agent's commit
    _, diff = (_git(workdir, "diff-index", "--binary", "-p", "HEAD", "--", ".") if rc == 0
               else (0, b""))
    untracked = [ln[3:] for ln in status.decode(errors="replace").splitlines()
                 if ln.startswith("?? ")]
    for rel in untracked[:200]:
        f = workdir / rel
        with contextlib.suppress(OSError):
            if f.is_file() and f.stat().st_size <= 1_000_000:
                _, d = _git(workdir, "diff", "--no-index", "--binary", "--", "/dev/null", rel)
                diff += d
    write_once_bytes(path / GIT_HEAD, head)
    write_once_bytes(path / GIT_STATUS, status)
    write_once_bytes(path / GIT_DIFF, diff)
    touched = sorted({ln[3:] for ln in status.decode(errors="replace").splitlines()
                      if len(ln) > 3})
    write_once_json(path / FILES_TOUCHED, {
        "from_git_status": touched, "from_events": files_from_events,
    })
