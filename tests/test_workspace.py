"""Workspaces (docs/layout.md#workspaces, issue 6): shared vs isolated, with the real Codex binary.

Why: `isolated` exists so parallel jobs on one repository cannot trample each other, while the
steps of one job must see each other's files (a resume continues the conversation against the
job's CURRENT workspace). The record of where an attempt ran must be in its meta.json, and a
worktree may only go away once nothing of its job can run again (batch closed), without losing
the work (the branch is kept).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, final, step

from phh_engine.engine.gc import plan_gc, run_gc
from phh_engine.runners.workspace import (
    CopyStats,
    branch_name,
    copy_file,
    copy_tree,
    read_workspace_record,
)
from phh_engine.store.overrides import make_request


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(cwd), *args], check=True, capture_output=True,
                          text=True).stdout


def make_repo(path: Path, files: dict[str, str]) -> str:
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (path / rel).parent.mkdir(parents=True, exist_ok=True)
        (path / rel).write_text(text)
    git(path, "add", ".")
    git(path, "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init")
    return git(path, "rev-parse", "HEAD").strip()


def spans(harness: Harness, bid: str, job_ids: list[str], sid: str = "s1"
          ) -> list[tuple[datetime, datetime]]:
    out = []
    for j in job_ids:
        (att,) = harness.attempts(bid, j, sid)
        st = harness.state(att)
        assert st["status"] == "succeeded", st
        out.append((datetime.fromisoformat(st["started_at"]),
                    datetime.fromisoformat(st["ended_at"])))
    return out


def overlap(a: tuple[datetime, datetime], b: tuple[datetime, datetime]) -> bool:
    return a[0] < b[1] and b[0] < a[1]


# ----------------------------------------------------------------------------- engine + codex
@pytest.mark.codex
def test_isolated_jobs_editing_the_same_file_do_not_collide(harness: Harness) -> None:
    base = make_repo(harness.workspace, {"shared.txt": "base\n"})
    bid = harness.submit([
        {"job_id": name, "workspace_policy": "isolated", "steps": [
            step("s1", {"shell": f"echo {name} > shared.txt", "delay": 0.3},
                 final(f"{name} wrote"), prompt=f"write {name}")]}
        for name in ("alpha", "beta")
    ], allow_shared_directory_concurrency=False)
    harness.run()
    a, b = spans(harness, bid, ["alpha", "beta"])
    assert overlap(a, b), "isolated jobs on one directory should run at the same time"
    for name in ("alpha", "beta"):
        ws = harness.layout.workspace(bid, name)
        assert (ws / "shared.txt").read_text() == f"{name}\n"
        assert git(ws, "rev-parse", "--abbrev-ref", "HEAD").strip() == branch_name(bid, name)
        rec = read_workspace_record(harness.layout, bid, name)
        assert rec is not None and rec.kind == "git_worktree" and rec.base_commit == base
        (att,) = harness.attempts(bid, name, "s1")
        # git artifacts describe the job's own checkout
        assert f"+{name}" in (att / "git_diff.patch").read_text()
    # the source checkout is untouched
    assert (harness.workspace / "shared.txt").read_text() == "base\n"
    assert git(harness.workspace, "status", "--porcelain").strip() == ""


@pytest.mark.codex
def test_step2_sees_step1_changes_and_meta_records_policy_and_path(harness: Harness) -> None:
    make_repo(harness.workspace, {"pkg/code.py": "x = 1\n", "README": "r\n"})
    bid = harness.submit([{"job_id": "j1", "working_directory": "pkg",
                           "workspace_policy": "isolated", "steps": [
        step("s1", {"shell": "echo 'x = 2' > code.py && echo note > notes.txt"},
             final("changed")),
        step("s2", {"shell": "cat code.py notes.txt > seen.txt"}, final("read"),
             resume_from={"step_id": "s1"}),
        step("s3", {"shell": "cat seen.txt > seen_again.txt"}, final("read again"),
             depends_on=["s2"]),
    ]}])
    harness.run()
    ws = harness.layout.workspace(bid, "j1")
    workdir = ws / "pkg"  # the job's directory inside its own checkout
    assert (workdir / "seen.txt").read_text() == "x = 2\nnote\n"
    assert (workdir / "seen_again.txt").read_text() == "x = 2\nnote\n"
    for sid in ("s1", "s2", "s3"):
        (att,) = harness.attempts(bid, "j1", sid)
        env = harness.meta(att)["environment_snapshot"]
        assert env["workspace_policy"] == "isolated"
        assert env["working_directory"] == str(workdir)
        assert env["workspace_root"] == str(workdir)
    assert harness.meta(harness.attempts(bid, "j1", "s2")[0])["invocation"] == "resume"
    # the source directory never saw any of it
    assert (harness.workspace / "pkg" / "code.py").read_text() == "x = 1\n"
    assert not (harness.workspace / "pkg" / "seen.txt").exists()
    rec = read_workspace_record(harness.layout, bid, "j1")
    assert rec is not None and rec.subdir == "pkg" and rec.workdir == str(workdir)


@pytest.mark.codex
def test_shared_policy_meta_records_the_source_directory(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "echo hi > here.txt"}, final("ok"))]}])
    harness.run()
    (att,) = harness.attempts(bid, "j1", "s1")
    env = harness.meta(att)["environment_snapshot"]
    assert env["workspace_policy"] == "shared"
    assert env["working_directory"] == str(harness.workspace)
    assert (harness.workspace / "here.txt").exists()
    assert not harness.layout.workspace(bid, "j1").exists()


@pytest.mark.codex
def test_isolated_outside_git_is_a_copy(harness: Harness) -> None:
    (harness.workspace / "data.txt").write_text("orig\n")
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", {"shell": "echo changed > data.txt"}, final("ok"))]}])
    harness.run()
    ws = harness.layout.workspace(bid, "j1")
    assert (ws / "data.txt").read_text() == "changed\n"
    assert (harness.workspace / "data.txt").read_text() == "orig\n"
    rec = read_workspace_record(harness.layout, bid, "j1")
    assert rec is not None and rec.kind == "copy" and rec.branch is None


@pytest.mark.codex
def test_shared_directory_jobs_never_overlap_unless_allowed(harness: Harness) -> None:
    jobs = [{"job_id": f"j{i}", "steps": [
        step("s1", {"shell": "sleep 0.5"}, final(f"j{i}"), prompt=f"sd {i}")]} for i in range(3)]
    bid = harness.submit(jobs, allow_shared_directory_concurrency=False)
    harness.run()
    s = spans(harness, bid, ["j0", "j1", "j2"])
    assert not any(overlap(x, y) for i, x in enumerate(s) for y in s[i + 1:]), s
    # the same jobs, allowed to share: they run side by side
    bid2 = harness.submit(jobs, allow_shared_directory_concurrency=True)
    harness.run()
    s2 = spans(harness, bid2, ["j0", "j1", "j2"])
    assert any(overlap(x, y) for i, x in enumerate(s2) for y in s2[i + 1:]), s2


@pytest.mark.codex
def test_worktree_removed_by_gc_only_when_batch_closed_and_branch_keeps_work(
        harness: Harness) -> None:
    make_repo(harness.workspace, {"f.txt": "base\n"})
    bid = harness.submit([{"job_id": "j1", "workspace_policy": "isolated", "steps": [
        step("s1", {"shell": "echo work > f.txt && echo new > added.txt"}, final("ok"))]}])
    harness.run()
    ws = harness.layout.workspace(bid, "j1")
    assert ws.is_dir()
    # open batch: GC leaves the worktree alone (a resume or retry may still run in it)
    assert not [a for a in plan_gc(harness.layout).actions if a.op == "remove_workspace"]
    run_gc(harness.layout)
    assert ws.is_dir()
    make_request(harness.layout, "close", bid, reason="done")
    harness.run()  # the engine applies the close
    plan = [a for a in plan_gc(harness.layout).actions if a.op == "remove_workspace"]
    assert [a.path for a in plan] == [str(ws)]
    assert "branch kept" in plan[0].reason
    report = run_gc(harness.layout)
    done = [a for a in report.actions if a.op == "remove_workspace"]
    assert done and done[0].done and not done[0].error
    assert not ws.exists()
    assert str(ws) not in git(harness.workspace, "worktree", "list")
    branch = branch_name(bid, "j1")
    # the uncommitted work was committed onto the kept branch
    assert git(harness.workspace, "show", f"{branch}:f.txt") == "work\n"
    assert git(harness.workspace, "show", f"{branch}:added.txt") == "new\n"
    assert (harness.workspace / "f.txt").read_text() == "base\n"


# ----------------------------------------------------------------------------- copy primitives
def digest(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_symlink():
            out[rel] = "link:" + os.readlink(p)
        elif p.is_file():
            out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
        else:
            out[rel] = "dir"
    return out


def sample_tree(root: Path) -> None:
    (root / "sessions" / "2026" / "01" / "14").mkdir(parents=True)
    (root / "sessions" / "2026" / "01" / "14" / "rollout-a.jsonl").write_bytes(
        b"".join(json.dumps({"i": i, "pad": "x" * 200}).encode() + b"\n" for i in range(3000)))
    (root / "empty.txt").write_bytes(b"")
    (root / "bin.dat").write_bytes(bytes(range(256)) * 40)
    os.symlink("bin.dat", root / "link")


@pytest.mark.parametrize("methods", [
    ("reflink", "copy_file_range", "read_write"), ("copy_file_range",), ("read_write",),
])
def test_copy_tree_is_byte_identical_and_never_touches_source(
        tmp_path: Path, methods: tuple[str, ...]) -> None:
    src = tmp_path / "src"
    src.mkdir()
    sample_tree(src)
    before = digest(src)
    mtimes = {p: p.lstat().st_mtime_ns for p in src.rglob("*")}
    stats = copy_tree(src, tmp_path / "dst", methods=methods)
    assert digest(tmp_path / "dst") == before
    assert digest(src) == before
    assert {p: p.lstat().st_mtime_ns for p in src.rglob("*")} == mtimes
    assert stats.files == 3 and stats.symlinks == 1
    assert stats.bytes == sum(p.stat().st_size for p in src.rglob("*")
                              if p.is_file() and not p.is_symlink())
    assert set(stats.methods) <= {*methods, "read_write"}
    # mtimes travel with the copy (the rollout's age stays meaningful)
    rollout = "sessions/2026/01/14/rollout-a.jsonl"
    assert (tmp_path / "dst" / rollout).stat().st_mtime_ns == (src / rollout).stat().st_mtime_ns
    with pytest.raises(FileExistsError):
        copy_tree(src, tmp_path / "dst")


def test_copy_file_falls_back_when_clone_is_unsupported(tmp_path: Path) -> None:
    """On ext4/tmpfs FICLONE fails: the fallback must still give identical bytes, and stop
    trying clone for the rest of the tree."""
    src = tmp_path / "a"
    src.write_bytes(os.urandom(300_000))
    st = CopyStats()
    used = copy_file(src, tmp_path / "b", st)
    assert (tmp_path / "b").read_bytes() == src.read_bytes()
    assert used in ("reflink", "copy_file_range", "read_write")
    if used != "reflink":
        assert st._reflink is False  # not retried file after file


def test_copy_tree_skips_a_nested_phh_root(tmp_path: Path) -> None:
    src = tmp_path / "proj"
    (src / "phhroot" / "runs").mkdir(parents=True)
    (src / "phhroot" / "runs" / "x").write_text("x")
    (src / "code.py").write_text("c")
    copy_tree(src, tmp_path / "out", skip={src / "phhroot"})
    assert (tmp_path / "out" / "code.py").exists()
    assert not (tmp_path / "out" / "phhroot").exists()


def test_branch_names_are_valid_git_refs(tmp_path: Path) -> None:
    for job in ("j1", "job.lock", "ends.", "a-b_c.d"):
        name = branch_name("batch_1", job)
        res = subprocess.run(["git", "check-ref-format", "--branch", name],
                             capture_output=True, text=True)
        assert res.returncode == 0, (job, name, res.stderr)


# ----------------------------------------------------------------------------- resolution
def _resolve(tmp_path: Path, working_directory: str, workspace_policy: str = "isolated"
             ) -> tuple[str, Path, Any]:
    from conftest import GOAL

    from phh_engine.interfaces.submit import submit
    from phh_engine.runners.workspace import resolve_workspace
    from phh_engine.store.harness_config import materialize
    from phh_engine.store.index import StoreIndex
    from phh_engine.store.paths import Layout

    layout = Layout(tmp_path / "root")
    materialize(layout)
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps({"batch_goal_summary": GOAL, "working_root": str(tmp_path / "repo"),
                              "jobs": [{"job_id": "j1", "working_directory": working_directory,
                                        "workspace_policy": workspace_policy,
                                        "steps": [{"step_id": "s1", "prompt": "p"}]}]}))
    bid = submit(layout, lt).batch_id
    index = StoreIndex(layout)
    batch = index.load_batch(bid)
    assert batch is not None
    job = batch.jobs["j1"]
    policy, workdir = resolve_workspace(layout, batch, job)
    again = resolve_workspace(layout, batch, job)  # made once, then reused
    assert again == (policy, workdir)
    return policy, workdir, read_workspace_record(layout, bid, "j1")


def test_untracked_subdirectory_is_copied_with_a_note(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {"tracked/a.txt": "a"})
    (tmp_path / "repo" / "scratch").mkdir()
    (tmp_path / "repo" / "scratch" / "b.txt").write_text("b")
    policy, workdir, rec = _resolve(tmp_path, "scratch")
    assert policy == "isolated" and (workdir / "b.txt").read_text() == "b"
    assert rec.kind == "copy" and "not in" in rec.note


def test_dirty_source_is_noted_and_not_carried_into_the_worktree(tmp_path: Path) -> None:
    make_repo(tmp_path / "repo", {"a.txt": "committed\n"})
    (tmp_path / "repo" / "a.txt").write_text("uncommitted\n")
    _, workdir, rec = _resolve(tmp_path, ".")
    assert rec.kind == "git_worktree" and "uncommitted" in rec.note
    assert (workdir / "a.txt").read_text() == "committed\n"


def test_repo_without_commits_falls_back_to_a_copy(tmp_path: Path) -> None:
    (tmp_path / "repo").mkdir()
    git(tmp_path / "repo", "init", "-q")
    (tmp_path / "repo" / "x.txt").write_text("x")
    _, workdir, rec = _resolve(tmp_path, ".")
    assert rec.kind == "copy" and "without any commit" in rec.note
    assert (workdir / "x.txt").read_text() == "x"


def test_reflink_used_where_the_filesystem_supports_it(tmp_path: Path) -> None:
    """Set PHH_TEST_REFLINK_DIR to a btrfs/XFS(reflink=1) directory to exercise the clone
    path; otherwise runs where tmp_path supports FICLONE, else skips."""
    import fcntl

    from phh_engine.runners.workspace import FICLONE

    base = Path(os.environ.get("PHH_TEST_REFLINK_DIR") or tmp_path)
    work = base / f"phh_reflink_{os.getpid()}"
    work.mkdir(parents=True)
    try:
        probe = work / "probe"
        probe.write_bytes(b"x" * 4096)
        try:
            with open(probe, "rb") as fi, open(work / "probe2", "wb") as fo:
                fcntl.ioctl(fo.fileno(), FICLONE, fi.fileno())
        except OSError:
            pytest.skip(f"no reflink on {base} (set PHH_TEST_REFLINK_DIR)")
        src = work / "src"
        src.mkdir()
        sample_tree(src)
        before = digest(src)
        stats = copy_tree(src, work / "dst")
        assert stats.methods.get("reflink") == 2  # the two non-empty regular files
        assert digest(work / "dst") == before == digest(src)
        # clones are independent: writing the copy leaves the source alone
        (work / "dst" / "bin.dat").write_bytes(b"changed")
        assert digest(src) == before
    finally:
        import shutil

        shutil.rmtree(work, ignore_errors=True)


def test_git_probe_is_skipped_only_outside_repositories(tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cheap `.git` walk must never skip a real work tree (worktrees have a .git file)."""
    from phh_engine.runners.git_artifacts import in_git_work_tree

    monkeypatch.delenv("GIT_DIR", raising=False)
    plain = tmp_path / "plain" / "deep"
    plain.mkdir(parents=True)
    (tmp_path / "plain" / ".git").mkdir()  # an empty .git is not a repository to git either
    assert not in_git_work_tree(plain)
    repo = tmp_path / "repo"
    (repo / "sub" / "dir").mkdir(parents=True)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    assert in_git_work_tree(repo) and in_git_work_tree(repo / "sub" / "dir")
    linked = tmp_path / "linked"
    linked.mkdir()
    (linked / ".git").write_text(f"gitdir: {repo / '.git'}\n")
    assert in_git_work_tree(linked)
    monkeypatch.setenv("GIT_DIR", str(repo / ".git"))
    assert in_git_work_tree(plain)  # git decides when GIT_DIR is set
