"""The catalog with a real engine (issue 14): kept equal to a from-scratch rebuild by the
engine and after kill -9 at each write point; settled batches stay on disk at start and come
back when an operator names them; the API pages from it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, as_left, final, rebuilt, step, wait_for
from fastapi.testclient import TestClient

from phh_engine.interfaces.api import Auth, create_app
from phh_engine.models import STEP_STATUSES, TERMINAL_STATUSES
from phh_engine.models.common import AttemptStatus
from phh_engine.store import catalog as catmod
from phh_engine.store.catalog import open_for_reader
from phh_engine.store.paths import Layout

pytestmark = pytest.mark.codex
PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")
POINTS = ["after_claim", "after_meta", "after_spawn", "while_running", "before_finalize",
          "after_final_state", "catalog.before_commit"]




def backdate(layout: Layout, batch_id: str) -> None:
    """Job directories last changed an hour ago (outside the fingerprint's racy window)."""
    t = os.path.getmtime(layout.batch_dir(batch_id)) - 3600
    for e in os.scandir(layout.batch_dir(batch_id)):
        if e.is_dir() and not e.name.startswith(("_", ".")):
            os.utime(e.path, (t, t))


def run_engine(harness: Harness, crash_at: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.pop("PHH_CRASH_AT", None)
    if crash_at:
        env["PHH_CRASH_AT"] = crash_at
    return subprocess.run([PHH, "--root", str(harness.root), "run", "--no-ui", "--until-idle"],
                          capture_output=True, text=True, timeout=180, env=env)


def test_constants_match_the_models() -> None:
    """catalog/history keep copies so that a read imports no models: they must not drift."""
    from phh_engine.interfaces import history

    assert set(catmod.TERMINAL) == set(TERMINAL_STATUSES)
    assert history.STEP_STATUSES == STEP_STATUSES
    assert set(history.ATTEMPT_STATUSES) == set(AttemptStatus.__args__)  # type: ignore[attr-defined]


@pytest.mark.parametrize("point", POINTS)
def test_catalog_equals_rebuild_after_kill_minus_nine(harness: Harness, point: str) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "sleep 1; echo one > one.txt"}, final("one"),
             prompt=f"crash {point}"),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"}),
    ]}], retries={"max_attempts": 2, "backoff_seconds": 0})
    crashed = run_engine(harness, point)
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    # a reader right after the crash: repaired from the files where they moved
    assert open_for_reader(harness.layout).snapshot() == rebuilt(harness.layout, harness.root)
    done = run_engine(harness)
    assert done.returncode == 0, done.stderr
    left = as_left(harness.layout)
    assert left == rebuilt(harness.layout, harness.root)
    statuses = {(r[2], r[3]): r[4] for r in left["steps"]}
    assert statuses == {("j1", "s1"): "succeeded", ("j1", "s2"): "succeeded"}
    assert {r[0] for r in left["batches"]} == {bid}


def test_settled_batches_stay_on_disk_and_return_when_named(harness: Harness) -> None:
    old = harness.submit([{"job_id": "j1", "steps": [step("s1", final("old one"))]},
                          {"job_id": "j2", "steps": [step("s1", final("old two"))]}])
    harness.run()
    assert as_left(harness.layout) == rebuilt(harness.layout, harness.root)
    backdate(harness.layout, old)
    harness.run()  # records the settled batch's fingerprint (now outside the racy window)
    new = harness.submit([{"job_id": "k", "steps": [step("s1", final("new"))]}])
    eng = harness.engine()
    assert old not in eng.index.batches and new in eng.index.batches
    asyncio_run(eng)
    system = json.loads(harness.layout.system_scoreboard.read_text())
    assert {r["batch_id"] for r in system["batches"]} == {old, new}  # old row from the catalog
    # an operator action on the settled batch loads it (with its marks) and runs it
    eng = harness.start()
    assert old not in eng.index.batches
    res = harness.call(eng, eng.request("retry", old, "j1", "s1", requested_by="test"))
    assert res.outcome == "rejected" and "already succeeded" in res.message
    res = harness.call(eng, eng.request("resume", old, "j1", "s1", prompt="once more",
                                        requested_by="test"))
    assert res.outcome == "applied", res.message
    wait_for(lambda: len(harness.attempts(old, "j1", "s1")) == 2
             and harness.state(harness.attempts(old, "j1", "s1")[-1])["status"] == "succeeded",
             90, "the resumed attempt")
    harness.stop(eng)
    assert as_left(harness.layout) == rebuilt(harness.layout, harness.root)


def asyncio_run(eng: Any) -> None:
    import asyncio

    asyncio.run(asyncio.wait_for(eng.serve(), 120))


def test_cli_override_and_second_runner_writes_reach_the_catalog(harness: Harness) -> None:
    """Writes by other processes: `phh mark-failed` applied by the next engine, and a second
    runner (another engine process, another runner id) sharing the root and the catalog."""
    bid = harness.submit([{"job_id": f"j{i}", "steps": [step("s1", final(f"n{i}"))]}
                          for i in range(4)] + [
        {"job_id": "m", "steps": [step("s1", final("m")), step("s2", final("x"),
                                                              depends_on=["s1"])]}])
    out = subprocess.run([PHH, "--root", str(harness.root), "mark-failed", bid, "m", "s2",
                          "--reason", "not needed", "--json"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    env = dict(os.environ)
    env.pop("PHH_CRASH_AT", None)
    second = subprocess.Popen([PHH, "--root", str(harness.root), "run", "--no-ui",
                               "--until-idle", "--runner-id", "second"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        harness.run()
    finally:
        assert second.wait(180) == 0, second.stderr.read() if second.stderr else ""
    harness.run()  # whatever the second runner left open, finished here
    left = as_left(harness.layout)
    assert left == rebuilt(harness.layout, harness.root)
    steps = {(r[2], r[3]): r[4] for r in left["steps"]}
    assert steps[("m", "s2")] == "failed"  # the CLI's mark-failed, applied by an engine
    runners = {r[19] for r in left["attempts"]}  # runner_id
    assert runners <= {"local", "second"} and len(left["attempts"]) >= 5


def test_api_steps_pages_and_history(harness: Harness) -> None:
    bid = harness.submit([{"job_id": f"j{i}", "steps": [step("s1", final(f"n{i}"))]}
                          for i in range(5)])
    harness.run()
    app = create_app(harness.layout, Auth("none"))
    with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 5555)) as c:
        r = c.get(f"/v1/batches/{bid}/steps", params={"limit": 2})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["total"] == 5 and [s["job_id"] for s in body["steps"]] == ["j0", "j1"]
        r2 = c.get(f"/v1/batches/{bid}/steps", params={"limit": 2,
                                                       "cursor": body["next_cursor"]})
        assert [s["job_id"] for s in r2.json()["steps"]] == ["j2", "j3"]
        assert c.get(f"/v1/batches/{bid}/steps", params={"status": "succeeded"}
                     ).json()["total"] == 5
        bad = c.get(f"/v1/batches/{bid}/steps", params={"status": "bogus"})
        assert bad.status_code == 400 and bad.json()["message"].startswith("status")
        assert c.get(f"/v1/batches/{bid}/steps", params={"cursor": "!!"}).status_code == 400
        assert c.get(f"/v1/batches/{bid}/steps", params={"limit": 0}).status_code == 400
        assert c.get("/v1/batches/nope/steps").status_code == 404
        h = c.get("/v1/history/attempts", params={"status": "succeeded"}).json()
        assert h["total"] == 5
        t = c.get("/v1/history/tokens", params={"by": "day"}).json()
        assert sum(r["attempts"] for r in t["rows"]) == 5
        assert c.get("/v1/history/retries").status_code == 200
        assert c.get("/v1/history/hourly").json()["rows"][0]["attempts"] == 5
        assert c.get("/v1/history/slowest", params={"limit": 1}).json()["attempts"]
        assert c.get("/v1/history/attempts", params={"since": "then"}).status_code == 400


def test_network_filesystem_refused_by_engine_and_cli(harness: Harness,
                                                     monkeypatch: pytest.MonkeyPatch,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from phh_engine.engine.loop import EngineError
    from phh_tui import cli

    monkeypatch.setattr(catmod, "fs_type", lambda path, mounts="/proc/mounts": "fuse.sshfs")
    with pytest.raises(EngineError) as exc:
        harness.engine()
    assert "fuse.sshfs" in str(exc.value) and "PHH_CATALOG=" in str(exc.value)
    assert not catmod.catalog_path(harness.layout).exists()
    assert cli.main(["--root", str(harness.root), "history", "retries", "--json"]) == 1
    out = json.loads(capsys.readouterr().out)
    assert out["error"] == "conflict" and "PHH_CATALOG=" in out["message"]
    monkeypatch.undo()
    harness.run()  # the runner lock was released: the next engine starts


def test_a_batch_that_settles_while_serving_leaves_memory(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("one"))]}])
    eng = harness.start()
    wait_for(lambda: harness.attempts(bid, "j1", "s1") and harness.state(
        harness.attempts(bid, "j1", "s1")[0])["status"] == "succeeded", 90, "the attempt")
    backdate(harness.layout, bid)  # outside the racy window, as 2 s later

    async def board_pass() -> None:
        eng.write_scoreboards(all_batches=True)

    wait_for(lambda: harness.call(eng, board_pass()) or bid not in eng.index.batches, 30,
             "eviction")
    system = json.loads(harness.layout.system_scoreboard.read_text())
    assert [r["batch_id"] for r in system["batches"]] == [bid]  # its row, from the catalog
    assert json.loads(harness.layout.batch_scoreboard(bid).read_text())["counts"][
        "succeeded"] == 1
    res = harness.call(eng, eng.request("resume", bid, "j1", "s1", prompt="again",
                                        requested_by="test"))
    assert res.outcome == "applied", res.message
    assert bid in eng.index.batches
    wait_for(lambda: len(harness.attempts(bid, "j1", "s1")) == 2 and harness.state(
        harness.attempts(bid, "j1", "s1")[-1])["status"] == "succeeded", 90, "the resume")
    harness.stop(eng)
    assert as_left(harness.layout) == rebuilt(harness.layout, harness.root)
