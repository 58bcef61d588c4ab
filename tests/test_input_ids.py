"""Issue 11 B1: an id that is one of phh's own store names is refused at every door, and a
stray file or directory anywhere in the tree is skipped with a note, never a crash."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import GOAL, Harness, final, step
from test_api import serving

from phh_engine.engine.gc import plan_gc
from phh_engine.interfaces.queue import DropQueue
from phh_engine.interfaces.submit import SubmitError, submit
from phh_engine.models import HarnessSettings, check_id
from phh_engine.store.files import atomic_write_json
from phh_engine.store.harness_config import ConfigError, load_config, load_settings, materialize
from phh_engine.store.paths import STORE_NAMES, Layout
from phh_engine.store.pointers import reindex

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")


def phh(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHH, "--root", str(root), *args], capture_output=True, text=True,
                          timeout=120)


def table(root: Path, job: dict[str, Any] | None = None, **kw: Any) -> dict[str, Any]:
    return {"batch_goal_summary": GOAL, "working_root": str(root),
            "jobs": [job or {"job_id": "j1", "steps": [{"step_id": "s1", "prompt": "hi"}]}],
            **kw}


def batch_dirs(layout: Layout) -> list[str]:
    return sorted(n for n in os.listdir(layout.runs) if not n.startswith(("_", ".")))


def test_job_id_batch_meta_json_is_refused_and_the_root_stays_usable(tmp_path: Path) -> None:
    """The issue's example: today accepted, then scoreboard and run die NotADirectoryError."""
    root = tmp_path / "root"
    assert phh(root, "init").returncode == 0
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(table(tmp_path, {
        "job_id": "batch_meta.json", "steps": [{"step_id": "s1", "prompt": "hi"}]})))
    res = phh(root, "submit", str(lt))
    assert res.returncode == 2, res
    assert "jobs[0].job_id" in res.stderr and "'batch_meta.json'" in res.stderr
    assert "runs/<batch>/batch_meta.json" in res.stderr  # names the clash
    assert "Traceback" not in res.stderr
    assert batch_dirs(Layout(root)) == []  # nothing written
    board = phh(root, "scoreboard", "--json")
    assert board.returncode == 0, board.stderr


@pytest.mark.parametrize("name", sorted(STORE_NAMES))
def test_every_store_name_is_refused_as_an_id(name: str) -> None:
    for value in (name, name.upper()):  # case-folding filesystems make these one name
        # `_system`-like names are also refused by the pattern (no leading '_')
        with pytest.raises(ValueError, match="own store" if name[0].isalnum() else "must match"):
            check_id(value, incoming=True)


@pytest.mark.parametrize(("where", "patch"), [
    ("batch_id", {"batch_id": "runners"}),
    ("jobs[0].job_id", {"job": {"job_id": "scoreboard.batch.json",
                                "steps": [{"step_id": "s1", "prompt": "hi"}]}}),
    ("jobs[0].job_id", {"job": {"job_id": "Closed.json",
                                "steps": [{"step_id": "s1", "prompt": "hi"}]}}),
    ("jobs[0].steps[0].step_id", {"job": {"job_id": "j1",
                                          "steps": [{"step_id": "attempts", "prompt": "hi"}]}}),
    ("jobs[0].steps[1].depends_on[0]", {"job": {"job_id": "j1", "steps": [
        {"step_id": "s1", "prompt": "hi"},
        {"step_id": "s2", "prompt": "hi", "depends_on": ["current.json"]}]}}),
    ("jobs[0].steps[1].resume_from.run_id", {"job": {"job_id": "j1", "steps": [
        {"step_id": "s1", "prompt": "hi"},
        {"step_id": "s2", "prompt": "hi", "resume_from": {
            "step_id": "s1", "selector": "run_id", "run_id": "state.json"}}]}}),
    ("jobs[0].steps[0].runner_affinity.runner_id", {"job": {"job_id": "j1", "steps": [
        {"step_id": "s1", "prompt": "hi", "runner_affinity": {"runner_id": "health.json"}}]}}),
])
def test_each_id_kind_in_a_launch_table_is_checked(tmp_path: Path, where: str,
                                                    patch: dict[str, Any]) -> None:
    layout = Layout(tmp_path)
    job = patch.pop("job", None)
    for suffix in (".json", ".yaml"):  # the CLI file door in both syntaxes
        lt = tmp_path / f"lt{suffix}"
        data = table(tmp_path, job, **patch)
        lt.write_text(json.dumps(data) if suffix == ".json" else yaml.safe_dump(data))
        with pytest.raises(SubmitError) as err:
            submit(layout, lt)
        hits = [i for i in err.value.issues if i.path == where]
        assert hits and "phh writes in its own store" in hits[0].message, err.value.issues
    assert not layout.runs.exists() or batch_dirs(layout) == []


def test_drop_folder_and_api_refuse_a_store_name(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    materialize(layout, HarnessSettings())
    q = DropQueue(layout, load_config(layout))
    q.ensure_dirs()
    bad = table(tmp_path, {"job_id": "batch_meta.json",
                           "steps": [{"step_id": "s1", "prompt": "hi"}]})
    (q.incoming / "bad.json").write_text(json.dumps(bad))
    (q.incoming / "good.json").write_text(json.dumps(table(tmp_path)))
    outcomes = {o.name: o for o in q.scan()}
    assert outcomes["bad.json"].status == "rejected"
    assert any(e["path"] == "jobs[0].job_id" and "batch_meta.json" in e["message"]
               for e in outcomes["bad.json"].errors)
    assert outcomes["good.json"].status == "accepted"  # the queue went on
    with serving(layout) as client:
        r = client.post("/v1/batches", json={"launch_table": bad})
        assert r.status_code == 422, r.text
        assert any(e["path"] == "jobs[0].job_id" for e in r.json()["errors"])
        r = client.get("/v1/batches/batch_meta.json")
        assert r.status_code == 400 and "phh writes in its own store" in r.json()["message"]


def test_runner_ids_are_checked_in_config_and_on_the_command_line(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    settings = HarnessSettings()
    data = settings.model_dump(mode="json", exclude_none=True)
    data["runners"][0]["runner_id"] = "drain.json"
    atomic_write_json(layout.settings_path, data)
    with pytest.raises(ConfigError, match=r"runners\[0\]\.runner_id"):
        load_settings(layout)
    layout.settings_path.unlink()
    res = phh(tmp_path, "run", "--no-ui", "--until-idle", "--runner-id", "health.json")
    assert res.returncode == 2 and "health.json" in res.stderr and "own store" in res.stderr
    assert not (layout.runners / "health.json").exists()
    res = phh(tmp_path, "cancel", "b1", "j1", "s1", "--run", "codex_home")
    assert res.returncode == 2 and "codex_home" in res.stderr


# ------------------------------------------------------------------ stray entries
@pytest.mark.codex
def test_stray_entries_at_every_level_are_skipped_with_a_note(harness: Harness) -> None:
    """A file where phh expects a directory, at each level of runs/, and odd entries in an
    attempts directory: index, scoreboards (derived and kept), reindex, gc and a running
    engine carry on, and the derived scoreboard says what it skipped."""
    jobs = [{"job_id": j, "steps": [step("s1", final("ok"))]}
            for j in ("done", "jobfile", "stepsfile", "stepfile", "attemptsfile")]
    bid = harness.submit(jobs)
    harness.run()
    layout = harness.layout
    bdir = layout.batch_dir(bid)
    # runs/<stray file>: where a batch directory would be
    (layout.runs / "stray_batch").write_text("x")
    # a file where each level's directory should be (each job already has one attempt)
    for job in ("jobfile", "stepsfile", "stepfile", "attemptsfile"):
        assert len(harness.attempts(bid, job, "s1")) == 1
    target = {"jobfile": bdir / "jobfile", "stepsfile": bdir / "stepsfile" / "steps",
              "stepfile": bdir / "stepfile" / "steps" / "s1",
              "attemptsfile": bdir / "attemptsfile" / "steps" / "s1" / "attempts"}
    import shutil
    for path in target.values():
        shutil.rmtree(path)
        path.write_text("not a directory")
    # odd entries in a real attempts directory: a file, and a directory no attempt name has
    adir = layout.attempts_dir(bid, "done", "s1")
    (adir / "notes.txt").write_text("left by hand")
    (adir / "scratch").mkdir()
    # a file where the kept views' directory and a runner's directory would be
    shutil.rmtree(layout.system / "cache", ignore_errors=True)
    (layout.system / "cache").write_text("not a directory")
    (layout.runners / "stray_runner").write_text("not a directory")
    # and directories where files are expected: the job index phh rebuilds at start, and
    # the batch scoreboard the engine writes (the system board carries the notes then)
    (layout.batch_scoreboard(bid).unlink())
    (layout.batch_scoreboard(bid) / "inside").mkdir(parents=True)
    cur = layout.current(bid, "done")
    cur.unlink()
    (cur / "inside").mkdir(parents=True)
    for args in (("scoreboard", "--json"), ("scoreboard", "--json", "--batch", bid),
                 ("scoreboard", "--json"), ("reindex",), ("gc", "--dry-run"), ("gc",),
                 ("runner", "list"), ("jobs", bid), ("attempts", bid, "done", "s1")):
        res = phh(harness.root, *args)
        assert res.returncode == 0, (args, res.stderr)
        assert "Traceback" not in res.stderr
    board = json.loads(phh(harness.root, "scoreboard", "--json", "--batch", bid,
                           "--recompute").stdout)
    notes = " | ".join(n["message"] for n in board["notes"])
    assert "notes.txt" in notes and "scratch" in notes, notes
    assert f"runs/{bid}/jobfile/steps/s1/attempts: not a directory" in notes
    assert board["counts"]["succeeded"] == 1  # only `done` still shows its attempt
    assert reindex(layout) >= 1
    plan_gc(layout)
    # the engine starts on this root, runs nothing in the broken jobs and goes idle
    harness.run(timeout=120)
    system = json.loads(layout.system_scoreboard.read_text())
    assert any("scoreboard.batch.json: cannot write" in n["message"] for n in system["notes"])
    shutil.rmtree(layout.batch_scoreboard(bid))
    harness.run(timeout=120)
    served = json.loads(layout.batch_scoreboard(bid).read_text())
    rows = {r["job_id"]: r for r in served["steps"]}
    assert rows["done"]["status"] == "succeeded"
    for job in ("jobfile", "stepsfile", "stepfile", "attemptsfile"):
        assert rows[job]["status"] == "blocked", rows[job]
        assert "cannot start" in " ".join(rows[job]["reasons"])
    assert any("notes.txt" in n["message"] for n in served["notes"])
    assert any("done/current.json: cannot rebuild" in n["message"] for n in served["notes"])


@pytest.mark.codex
def test_every_name_phh_writes_is_a_store_name(harness: Harness) -> None:
    """Walk a store after a real run (isolated workspace, resume, operator action, queue,
    scoreboard kept view, gc): every fixed name phh wrote at a level where ids live, or in an
    attempt directory, is in STORE_NAMES, so no id can ever take it."""
    ws = harness.workspace / "repo"
    ws.mkdir()
    subprocess.run(["git", "-C", str(ws), "init", "-q", "-b", "main"], check=True)
    (ws / "f.txt").write_text("x\n")
    subprocess.run(["git", "-C", str(ws), "add", "."], check=True)
    subprocess.run(["git", "-C", str(ws), "-c", "user.email=t@t", "-c", "user.name=t",
                    "commit", "-qm", "init"], check=True)
    bid = harness.submit([
        {"job_id": "j1", "working_directory": "repo", "workspace_policy": "isolated",
         "steps": [step("s1", final("ok")),
                   step("s2", final("ok"), resume_from={"step_id": "s1"})]},
        {"job_id": "j2", "steps": [step("s1", {"final_text": "not a report"}, repair_turns=0)]},
    ])
    harness.run()
    root = harness.root
    assert phh(root, "mark-failed", bid, "j2", "s1").returncode == 0
    assert phh(root, "close", bid).returncode == 0
    harness.run()
    assert phh(root, "scoreboard", "--json").returncode == 0
    assert phh(root, "gc").returncode == 0
    meta = json.loads(harness.layout.batch_meta(bid).read_text())
    ids = {bid, "local"} | {j["job_id"] for j in meta["jobs"]} | {
        s["step_id"] for j in meta["jobs"] for s in j["steps"]}

    def names(d: Path) -> set[str]:
        return {p.name for p in d.iterdir() if not p.name.startswith(".")} - ids

    runs = harness.layout.runs
    levels = [runs, runs / "_system", runs / bid, harness.layout.runners / "local"]
    for job in ("j1", "j2"):
        levels.append(runs / bid / job)
        for sd in (runs / bid / job / "steps").iterdir():
            levels.append(sd)
            for ad in (sd / "attempts").iterdir():
                levels.append(ad)
    unknown = {str(d.relative_to(root)): sorted(names(d) - set(STORE_NAMES))
               for d in levels if d.is_dir()}
    assert not any(unknown.values()), unknown
    assert (runs / bid / "j1" / "_workspace").exists() or (runs / bid / "j1" / "workspace.json"
                                                             ).exists()


@pytest.mark.parametrize("job_id", ["batch_meta.json", "steps", "_system", "Current.json"])
def test_a_refused_id_writes_nothing_on_a_fresh_root(tmp_path: Path, job_id: str) -> None:
    layout = Layout(tmp_path / "fresh")
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(table(tmp_path, {"job_id": job_id,
                                              "steps": [{"step_id": "s1", "prompt": "hi"}]})))
    with pytest.raises(SubmitError):
        submit(layout, lt)
    assert not layout.root.exists()


def test_a_store_made_before_a_name_was_reserved_stays_readable(tmp_path: Path) -> None:
    """Reserved names are refused at the doors; records phh already wrote are read as they
    are, so a batch whose job is called `cache` does not vanish from the board."""
    layout = Layout(tmp_path)
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(table(tmp_path, {"job_id": "jx",
                                              "steps": [{"step_id": "s1", "prompt": "hi"}]})))
    bid = submit(layout, lt).batch_id
    meta = layout.batch_meta(bid)
    text = meta.read_text().replace('"jx"', '"cache"')
    meta.chmod(0o644)
    meta.write_text(text)
    res = phh(tmp_path, "scoreboard", "--json", "--batch", bid, "--recompute")
    assert res.returncode == 0, res.stderr
    assert [r["job_id"] for r in json.loads(res.stdout)["steps"]] == ["cache"]


def test_a_working_directory_inside_the_store_is_refused(tmp_path: Path) -> None:
    """The same kind by path: an agent working inside runs/ writes among phh's own files."""
    layout = Layout(tmp_path / "root")
    layout.runs.mkdir(parents=True)
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(table(layout.runs, {"job_id": "j1", "working_directory": "x",
                                                 "steps": [{"step_id": "s1", "prompt": "hi"}]})))
    with pytest.raises(SubmitError) as err:
        submit(layout, lt)
    assert [i.path for i in err.value.issues] == ["jobs[0].working_directory"]
    assert "inside phh's store" in err.value.issues[0].message
    assert batch_dirs(layout) == []


@pytest.mark.codex
def test_an_empty_directory_named_like_an_attempt_is_skipped_not_finalised(
        harness: Harness) -> None:
    """Tester's case: `…/attempts/20990101T000000Z_rbogus`, an empty directory. It is not an
    attempt (phh's are born with a state.json), so it neither blocks the step, nor is
    finalised `runner_lost`, nor pushes the next attempt's name past 2099."""
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("ok"))]}])
    adir = harness.layout.attempts_dir(bid, "j1", "s1")
    bogus = adir / "20990101T000000Z_rbogus"
    bogus.mkdir(parents=True)
    harness.run()
    assert list(bogus.iterdir()) == []  # nothing written into it
    real = [p for p in adir.iterdir() if p != bogus]
    assert len(real) == 1 and harness.state(real[0])["status"] == "succeeded"
    assert real[0].name < bogus.name  # named by the clock, not after the stray
    board = json.loads(phh(harness.root, "scoreboard", "--json", "--batch", bid,
                           "--recompute").stdout)
    assert board["counts"]["succeeded"] == 1
    assert any("20990101T000000Z_rbogus" in n["message"] for n in board["notes"])
    res = phh(harness.root, "attempts", bid, "j1", "s1", "--json")
    assert res.returncode == 0 and "rbogus" not in res.stdout, res
