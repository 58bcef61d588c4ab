"""Retention / GC (docs/layout.md#retention, issue 6) on attempts made by the real Codex binary.

Why: GC runs unattended over hundreds of agents' records. It must do exactly what its dry run
listed, never take what a later step can still use (a resume base of an open batch, or one an
attempt in flight is copying; a successful attempt's final outputs), and compressed logs must
read back byte for byte through the one reader every interface uses.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, final, step, wait_for
from filelock import FileLock

from phh_engine.engine.gc import GcBusy, closed_batches, plan_gc, run_gc
from phh_engine.models import utcnow
from phh_engine.store.logs import iter_events, log_path, open_events, read_log_bytes
from phh_engine.store.overrides import make_request
from phh_engine.store.paths import EVENTS, STDERR

pytestmark = pytest.mark.codex

DAY = timedelta(days=1)


def two_step_job(job_id: str, **kw: Any) -> dict[str, Any]:
    return {"job_id": job_id, **kw, "steps": [
        step("s1", {"shell": f"echo {job_id} > {job_id}.txt"}, final(f"{job_id} one"),
             prompt=f"gc {job_id}"),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"}),
    ]}


def git_workspace(harness: Harness) -> None:
    """Make the shared workspace a git repo, so attempts leave git artifacts."""
    ws = harness.workspace
    subprocess.run(["git", "init", "-q", str(ws)], check=True)
    (ws / "README").write_text("r\n")
    subprocess.run(["git", "-C", str(ws), "add", "."], check=True)
    subprocess.run(["git", "-C", str(ws), "-c", "user.email=t@t", "-c", "user.name=t",
                    "commit", "-qm", "init"], check=True)


def close(harness: Harness, bid: str) -> None:
    make_request(harness.layout, "close", bid, reason="test")
    harness.run()
    assert bid in closed_batches(harness.layout)


def ops(report: Any) -> list[tuple[str, str]]:
    return [(a.op, a.path) for a in report.actions]


def test_dry_run_plan_is_exactly_what_gc_does_and_logs_stay_readable(harness: Harness) -> None:
    bid = harness.submit([two_step_job("j1"), two_step_job("j2")])
    harness.run()
    atts = [a for j in ("j1", "j2") for s in ("s1", "s2")
            for a in harness.attempts(bid, j, s)]
    raw = {a: read_log_bytes(a, EVENTS) for a in atts}
    events = {a: list(iter_events(a)) for a in atts}
    assert all(events.values())
    later = utcnow() + 8 * DAY  # past compress_events_after_days=7, before events_days=30
    dry = run_gc(harness.layout, now=later, dry_run=True)
    assert dry.dry_run and dry.actions
    assert {a.op for a in dry.actions} == {"compress"}
    assert all("compress_events_after_days=7" in a.reason for a in dry.actions)
    # a dry run changes nothing
    assert all(log_path(a, EVENTS) == a / EVENTS for a in atts)
    done = run_gc(harness.layout, now=later)
    assert ops(done) == ops(dry)
    assert all(a.done and a.error is None for a in done.actions)
    assert done.freed_bytes > 0
    for a in atts:
        assert not (a / EVENTS).exists() and (a / f"{EVENTS}.gz").exists()
        assert read_log_bytes(a, EVENTS) == raw[a]  # byte for byte
        assert list(iter_events(a)) == events[a]
        with open_events(a) as fh:
            assert fh.readline().startswith("{")
        assert harness.state(a)["status"] == "succeeded"  # state.json untouched
    # idempotent: nothing left to do at the same age
    assert run_gc(harness.layout, now=later).actions == []
    lines = (harness.layout.system / "gc_log.jsonl").read_text().splitlines()
    assert len(lines) == len(done.actions)
    assert json.loads(lines[0])["op"] == "compress"
    # the engine still reads a store with compressed logs (index, scoreboards)
    harness.run()
    sb = json.loads(harness.layout.batch_scoreboard(bid).read_text())
    assert sb["counts"]["succeeded"] == 4


def test_open_batch_keeps_every_resume_base_closed_batch_releases_them(
        harness: Harness) -> None:
    git_workspace(harness)
    bid = harness.submit([two_step_job("j1")])
    harness.run()
    (s1,) = harness.attempts(bid, "j1", "s1")
    (s2,) = harness.attempts(bid, "j1", "s2")
    much_later = utcnow() + 40 * DAY  # past every default retention
    plan = plan_gc(harness.layout, much_later)
    homes = {str(s1 / "codex_home"), str(s2 / "codex_home")}
    assert not homes & {a.path for a in plan.actions}
    kept = {k.path: k.reason for k in plan.kept}
    assert homes <= set(kept)
    assert "current.json" in kept[str(s1 / "codex_home")]
    # events and git artifacts are not protected by an open batch
    assert {(a.op, Path(a.path).name) for a in plan.actions} >= {
        ("delete", EVENTS), ("delete", "git_diff.patch")}
    run_gc(harness.layout, now=much_later)
    assert (s1 / "codex_home" / "sessions").is_dir() and (s2 / "codex_home").is_dir()
    before = len(harness.attempts(bid, "j1", "s1"))
    close(harness, bid)
    assert len(harness.attempts(bid, "j1", "s1")) == before
    plan = plan_gc(harness.layout, much_later)
    deletes = {a.path: a.reason for a in plan.actions if a.op == "delete"}
    assert homes <= set(deletes)
    assert "batch closed" in deletes[str(s1 / "codex_home")]
    # successful finals are never part of a plan (state_and_final_days unset: kept anyway)
    report = run_gc(harness.layout, now=much_later)
    assert ops(report) == ops(plan)
    for a in (s1, s2):
        assert not (a / "codex_home").exists()
        assert (a / "final.json").exists() and (a / "handoff.json").exists()
        assert (a / "state.json").exists() and (a / "meta.json").exists()
    assert not list(s1.glob(".codex_home.gc-*")), "no half-deleted leftovers"


def test_successful_finals_kept_unless_configured(harness: Harness) -> None:
    bid = harness.submit([
        two_step_job("keep", retention_policy={"state_and_final_days": 1}),
        two_step_job("drop", retention_policy={"state_and_final_days": 1,
                                               "delete_successful_finals": True}),
    ])
    harness.run()
    close(harness, bid)
    report = run_gc(harness.layout, now=utcnow() + 2 * DAY)
    deleted = {a.path for a in report.actions if a.op == "delete" and a.done}
    for sid in ("s1", "s2"):
        (keep,) = harness.attempts(bid, "keep", sid)
        (drop,) = harness.attempts(bid, "drop", sid)
        for name in ("final.json", "final.txt", "handoff.json"):
            assert (keep / name).exists(), name
            assert not (drop / name).exists(), name
            assert str(drop / name) in deleted
        assert not (keep / "prompt.txt").exists()  # not a final output: policy applies
        assert any(k.path == str(keep / "final.json") and "successful" in k.reason
                   for k in report.kept)


def test_in_flight_attempt_protects_its_job_and_the_base_it_copies(harness: Harness) -> None:
    bid = harness.submit([two_step_job("j1")])
    harness.run()
    close(harness, bid)
    (s1,) = harness.attempts(bid, "j1", "s1")
    (s2,) = harness.attempts(bid, "j1", "s2")
    # fake an attempt of s2 still running (as if another engine started it before the close)
    ghost = s2.with_name("29990101T000000Z_rghost")
    shutil.copytree(s2, ghost, symlinks=True)
    st = json.loads((ghost / "state.json").read_text())
    st.update(run_id="rghost", status="running")
    st.pop("ended_at", None)
    (ghost / "state.json").write_text(json.dumps(st))
    plan = plan_gc(harness.layout, utcnow() + 40 * DAY)
    assert not [a for a in plan.actions if Path(a.path).name == "codex_home"]
    assert not [a for a in plan.actions if str(ghost) in a.path]
    assert any("in flight" in k.reason and k.path == str(s1 / "codex_home")
               for k in plan.kept)


def test_cli_dry_run_lists_each_deletion_with_reason_then_gc_does_it(harness: Harness) -> None:
    git_workspace(harness)
    bid = harness.submit([two_step_job("j1")], retention_policy={
        "events_days": 0, "git_artifacts_days": 0, "resume_bases_days": 0})
    harness.run()
    (s1,) = harness.attempts(bid, "j1", "s1")
    cli = [sys.executable, "-m", "phh_tui.cli", "--root", str(harness.root), "gc"]
    out = subprocess.run([*cli, "--dry-run"], capture_output=True, text=True, check=True)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("would ")]
    assert lines, out.stdout
    rel = s1.relative_to(harness.root)
    events_line = next(ln for ln in lines if f"{rel}/{EVENTS}" in ln)
    assert events_line.startswith("would delete") and "events_days=0" in events_line
    assert any(f"{rel}/git_diff.patch" in ln and "git_artifacts_days=0" in ln for ln in lines)
    assert "kept" in out.stdout  # resume bases of the open batch, said so
    assert out.stdout.rstrip().splitlines()[-1].startswith("dry run: ")
    assert (s1 / EVENTS).exists()  # dry run: nothing happened
    verbose = subprocess.run([*cli, "--dry-run", "-v"], capture_output=True, text=True,
                             check=True).stdout
    assert any(ln.startswith("keep") and "codex_home" in ln and "open batch" in ln
               for ln in verbose.splitlines())
    res = subprocess.run([*cli, "--json"], capture_output=True, text=True, check=True)
    body = json.loads(res.stdout)
    assert body["dry_run"] is False
    assert len(body["actions"]) == len(lines)
    assert all(a["done"] for a in body["actions"])
    assert log_path(s1, EVENTS) is None and log_path(s1, STDERR) is None
    assert not (s1 / "git_diff.patch").exists()
    assert (s1 / "final.json").exists()


def test_only_one_gc_at_a_time(harness: Harness) -> None:
    harness.layout.system.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(harness.layout.system / "gc.lock"), timeout=0, thread_local=False)
    with lock, pytest.raises(GcBusy):
        run_gc(harness.layout)
    assert run_gc(harness.layout).actions == []


def test_engine_runs_gc_on_its_schedule_when_enabled(harness: Harness) -> None:
    harness.settings.gc.enabled = True
    harness.settings.gc.interval_seconds = 60
    harness.write_settings()
    bid = harness.submit([two_step_job("j1")], retention_policy={"events_days": 0})
    harness.run()  # until idle: attempts end before the first scheduled pass
    (s1,) = harness.attempts(bid, "j1", "s1")
    from phh_engine.engine.loop import Engine

    eng = Engine(harness.root, on_event=harness.events.append)
    eng.setup()
    import asyncio

    t = threading.Thread(target=lambda: asyncio.run(eng.serve()), daemon=True)
    t.start()
    try:
        ev = wait_for(lambda: next((e for e in harness.events if e.kind == "gc"), None), 30,
                      "a scheduled gc pass")
        assert "delete" in (ev.detail or "")
        assert log_path(s1, EVENTS) is None
    finally:
        assert eng.wait_serving(10), "loop"
        eng.stop()
        t.join(30)
    assert not t.is_alive()
    # off by default
    from phh_engine.models import HarnessSettings

    assert HarnessSettings().gc.enabled is False


def test_minimal_resume_copy_still_continues_the_thread_after_gc(harness: Harness) -> None:
    """A resume copies only sessions/ (docs/codex.md), via the fast copy; after GC compressed
    the source's logs, a real Codex resume still continues the same thread and the source's
    files stay byte-identical."""
    bid = harness.submit([two_step_job("j1")])
    harness.run()
    (s2,) = harness.attempts(bid, "j1", "s2")
    thread = harness.state(s2)["codex_thread_id"]
    run_gc(harness.layout, now=utcnow() + 8 * DAY)  # compress every raw log
    src_home = s2 / "codex_home"
    src_files = {p.relative_to(src_home): p.read_bytes()
                 for p in src_home.rglob("*") if p.is_file() and not p.is_symlink()}
    assert any(p.parts[0] == "sessions" for p in src_files)
    make_request(harness.layout, "resume", bid, job_id="j1", step_id="s2",
                 run_id=harness.state(s2)["run_id"],
                 prompt="one more turn\n\n" + step("x", {"echo_thread": True})["prompt"])
    harness.run()
    first, again = harness.attempts(bid, "j1", "s2")
    assert first == s2
    st, meta = harness.state(again), harness.meta(again)
    assert st["status"] == "succeeded", st
    assert st["codex_thread_id"] == thread and meta["codex_thread_id"] == thread
    assert meta["resume_base_copied_from"] == str(src_home)
    assert "saw 3 user prompts" in json.loads((again / "final.json").read_text())["summary"]
    # the source resume base is byte-identical; the copy held only the conversation
    assert {p.relative_to(src_home): p.read_bytes() for p in src_home.rglob("*")
            if p.is_file() and not p.is_symlink()} == src_files
    copied = {p.relative_to(again / "codex_home") for p in (again / "codex_home" /
                                                            "sessions").rglob("*.jsonl")}
    src_rollouts = {p for p in src_files if p.suffix == ".jsonl" and p.parts[0] == "sessions"}
    assert src_rollouts <= copied
    for rel in src_rollouts:  # the copy grew by the new turn, from identical bytes
        assert (again / "codex_home" / rel).read_bytes().startswith(src_files[rel])
