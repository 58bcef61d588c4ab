"""phh's own git never takes `.git/index.lock` (issue 11 E3): agents commit in the same
repository while phh captures `git status` / `git diff` / workspace checks."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from phh_engine.runners import workspace
from phh_engine.runners.git_artifacts import _write_git_artifacts


def _repo(path: Path) -> Path:
    path.mkdir()
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    for i in range(3):
        (path / f"f{i}.txt").write_text(f"x{i}\n")
    subprocess.run(["git", "-C", str(path), "add", "."], check=True)
    subprocess.run(["git", "-C", str(path), "commit", "-qm", "init"], check=True, env=env)
    # stat data no longer matches the index (same content): a plain `git status` would
    # refresh the index and write it back under index.lock
    for i in range(2):
        f = path / f"f{i}.txt"
        st = f.stat()
        os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    (path / "new.txt").write_text("untracked\n")
    (path / "f2.txt").write_text("changed\n")
    return path


def _index_stamp(repo: Path) -> tuple[int, int]:
    st = (repo / ".git" / "index").stat()
    return st.st_ino, st.st_mtime_ns


def test_git_capture_leaves_the_index_alone(tmp_path: Path) -> None:
    repo = _repo(tmp_path / "repo")
    before = _index_stamp(repo)
    attempt = tmp_path / "attempt"
    attempt.mkdir()
    _write_git_artifacts(repo, attempt, [])
    assert _index_stamp(repo) == before
    assert not (repo / ".git" / "index.lock").exists()
    # the capture still saw the changes
    status = (attempt / "git_status.txt").read_text()
    assert "f2.txt" in status and "new.txt" in status
    assert "changed" in (attempt / "git_diff.patch").read_text()
    # workspace checks (status of the source before a worktree is made) too
    res = workspace._git(repo, "status", "--porcelain", "--untracked-files=no", "--", ".")
    assert res.returncode == 0 and "f2.txt" in res.stdout
    assert _index_stamp(repo) == before


def test_plain_git_status_would_rewrite_the_index(tmp_path: Path) -> None:
    """The fixture above really is one where git takes the lock without the option."""
    repo = _repo(tmp_path / "repo")
    before = _index_stamp(repo)
    subprocess.run(["git", "-C", str(repo), "status", "--porcelain"], check=True,
                   capture_output=True, env={k: v for k, v in os.environ.items()
                                             if k != "GIT_OPTIONAL_LOCKS"})
    assert _index_stamp(repo) != before
