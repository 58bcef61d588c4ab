"""`phh scoreboard` prints a serving engine's own scoreboard files while they are fresh and
derives the view from the store otherwise (phh_tui/board_files.py).

Why: a cold derivation reads every attempt of the store (~1 s at 1000 jobs), while the engine
already keeps both views on disk. The output must stay exactly what the derivation prints
(same keys, nulls included, same order), and a file the serving engine did not write, or has
stopped rewriting, must never be shown.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import time
import types
import typing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import GOAL, Harness, final, step, wait_for
from filelock import FileLock
from pydantic import BaseModel
from test_scoreboards import NOW, ResumeFrom, ResumeSource, add, batch, meta_for, report
from test_scoreboards import step as spec_step

from phh_engine.derive.scoreboards import batch_scoreboard, system_scoreboard
from phh_engine.interfaces.api import Auth, create_app
from phh_engine.interfaces.submit import submit
from phh_engine.models import AttemptState, BatchScoreboard, RunnerHealth, SystemScoreboard
from phh_engine.models.scoreboard import SystemNote
from phh_engine.store import board_files
from phh_engine.store.board_files import FIELDS, fill
from phh_engine.store.files import atomic_write_json, to_bytes
from phh_engine.store.harness_config import materialize
from phh_engine.store.index import CLOSED_MARKER, StoreIndex
from phh_engine.store.overrides import OverrideResult, new_nonce, write_result
from phh_engine.store.paths import Layout, run_id_of
from phh_tui.cli import main

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")
NOTE = SystemNote(kind="draining", runner_id="local", message="drained for the test", since=NOW)


# ---------------------------------------------------------------- the shape table
def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside `X`, `list[X]` or `X | None`, else None."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None


@pytest.mark.parametrize("root", [BatchScoreboard, SystemScoreboard])
def test_fields_table_mirrors_the_scoreboard_models(root: type[BaseModel]) -> None:
    todo, seen = [root], set()
    while todo:
        model = todo.pop()
        if model.__name__ in seen:
            continue
        seen.add(model.__name__)
        names, nested = FIELDS[model.__name__]
        assert names == tuple(model.model_fields), model.__name__
        subs = {k: _model_of(f.annotation) for k, f in model.model_fields.items()}
        subs = {k: m for k, m in subs.items() if m is not None}
        assert nested == {k: m.__name__ for k, m in subs.items()}, model.__name__
        todo += subs.values()


def _full_batch_board() -> BatchScoreboard:
    """Every row kind, with and without nulls, resume views on blocked/ready/running rows."""
    rf = ResumeFrom(step_id="step1")
    b = batch({"job_01": [spec_step("step1"), spec_step("step2", resume_from=rf)],
               "job_02": [spec_step("step1"), spec_step("step2", resume_from=rf)],
               "job_03": [spec_step("step1"), spec_step("step2", resume_from=rf)],
               "job_04": [spec_step("step1")], "job_05": [spec_step("step1")]})
    add(b, "job_01", "step1", "s1", "running", beat=5, current_item="npm test")
    add(b, "job_02", "step1", "s2", "succeeded", ended=50)
    add(b, "job_03", "step1", "s3", "succeeded", ended=50)
    m = meta_for(b, "job_03", "step2", "rr", ResumeSource(
        step_id="step1", selector="latest_successful", selected_run_id="s3"))
    add(b, "job_03", "step2", "rr", "running", started=9000, beat=8000, meta=m)
    add(b, "job_04", "step1", "f4", "failed", exit_code=1, errors=["red"],
        report=report("failed", "Tests still failing: «ünïcode» kept"))
    add(b, "job_05", "step1", "n5", "needs_attention", termination_reason="schema_invalid")
    sb = batch_scoreboard(b, NOW)
    assert sb.running and sb.blocked and sb.failures and sb.attention
    return sb.model_copy(update={"notes": [NOTE, NOTE.model_copy(update={"since": None})]})


def test_fill_prints_exactly_what_the_derivation_prints() -> None:
    sb = _full_batch_board()
    on_disk = json.loads(to_bytes(sb))  # the engine's file: no null fields
    assert "resume_from" not in on_disk["steps"][0]
    printed = json.dumps(fill(on_disk, "BatchScoreboard"), indent=2, ensure_ascii=False)
    assert printed == sb.model_dump_json(indent=2)

    b = batch({"job_01": [spec_step("step1")]})
    sysb = system_scoreboard([b], NOW).model_copy(update={"notes": [NOTE]})
    printed = json.dumps(fill(json.loads(to_bytes(sysb)), "SystemScoreboard"), indent=2,
                         ensure_ascii=False)
    assert printed == sysb.model_dump_json(indent=2)


def test_fill_refuses_a_key_it_does_not_know() -> None:
    on_disk = json.loads(to_bytes(_full_batch_board()))
    on_disk["steps"][0]["new_field"] = 1
    with pytest.raises(board_files.Unknown):
        fill(on_disk, "BatchScoreboard")


# ---------------------------------------------------------------- files a serving engine wrote
class Store:
    """A real root with one submitted batch; `serve()` stands where an engine would be: it
    holds runner `local`'s engine lock (the real filelock) and writes health.json and the two
    scoreboard files through phh's own writer, with a chosen computed_at."""

    def __init__(self, tmp: Path) -> None:
        self.root = tmp.resolve() / "root"
        self.layout = Layout(self.root)
        materialize(self.layout)
        lt = tmp / "lt.json"
        lt.write_text(json.dumps({
            "batch_goal_summary": GOAL, "working_root": str(tmp),
            "jobs": [{"job_id": "j1", "steps": [{"step_id": "s1", "prompt": "p"}]}]}))
        self.batch_id = submit(self.layout, lt).batch_id
        self.lock: FileLock | None = None

    def serve(self, started: datetime, stopped: datetime | None = None) -> None:
        lock_path = self.layout.runners / "local" / ".engine.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        self.lock = FileLock(str(lock_path), timeout=0, thread_local=False)
        self.lock.acquire()
        atomic_write_json(self.layout.runner_health("local"), RunnerHealth(
            runner_id="local", host="h", pid=1, started_at=started, last_seen_at=started,
            capacity=1, running=0, draining=False, phh_version="0.1.0", stopped_at=stopped))

    def release(self) -> None:
        if self.lock is not None:
            self.lock.release()

    def write_boards(self, computed_at: datetime) -> tuple[BatchScoreboard, SystemScoreboard]:
        """What Engine.write_scoreboards writes, plus a note only the engine's files carry."""
        index = StoreIndex(self.layout)
        index.load()
        sb = batch_scoreboard(index.batches[self.batch_id], computed_at).model_copy(
            update={"notes": [NOTE]})
        sysb = system_scoreboard(index.batches.values(), computed_at,
                                 {self.batch_id: sb}).model_copy(update={"notes": [NOTE]})
        atomic_write_json(self.layout.batch_scoreboard(self.batch_id), sb)
        atomic_write_json(self.layout.system_scoreboard, sysb)
        return sb, sysb


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = Store(tmp_path)
    yield s
    s.release()


def scoreboard(capsys: pytest.CaptureFixture[str], store: Store, *args: str) -> Any:
    capsys.readouterr()
    assert main(["--root", str(store.root), "scoreboard", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def now() -> datetime:
    return datetime.now(UTC)


def test_serving_engine_files_are_printed_as_they_are(
        store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    store.serve(started=now() - timedelta(minutes=5))
    sb, sysb = store.write_boards(now() - timedelta(seconds=2))
    assert scoreboard(capsys, store) == json.loads(sysb.model_dump_json())
    assert scoreboard(capsys, store, "--batch", store.batch_id) == json.loads(
        sb.model_dump_json())
    # --recompute derives it here: no engine note, a new computed_at
    derived = scoreboard(capsys, store, "--recompute")
    assert derived["notes"] == [] and derived["computed_at"] != sysb.model_dump()["computed_at"]


def _derived(out: dict[str, Any], written: BaseModel) -> bool:
    return out["notes"] == [] and out["computed_at"] != json.loads(
        written.model_dump_json())["computed_at"]


@pytest.mark.parametrize("case", [
    "no_engine",            # files left by an engine that has stopped (lock free)
    "too_old",              # the serving engine stopped rewriting them
    "before_engine_start",  # left by an earlier engine; the serving one has not written yet
    "engine_starting",      # lock held, health.json still the last run's (stopped_at set)
])
def test_files_not_from_a_live_engine_are_never_printed(
        store: Store, capsys: pytest.CaptureFixture[str], case: str) -> None:
    started = now() - timedelta(minutes=5)
    computed = now() - timedelta(seconds=2)
    if case == "too_old":
        computed = now() - timedelta(seconds=board_files.max_age_seconds(store.root) + 5)
        started = computed - timedelta(minutes=5)
    if case == "before_engine_start":
        started = now() - timedelta(seconds=1)
        computed = started - timedelta(seconds=1)
    if case != "no_engine":
        store.serve(started=started,
                    stopped=started if case == "engine_starting" else None)
    sb, sysb = store.write_boards(computed)
    assert _derived(scoreboard(capsys, store), sysb)
    assert _derived(scoreboard(capsys, store, "--batch", store.batch_id), sb)


def test_max_age_follows_the_engine_write_interval(store: Store) -> None:
    assert board_files.max_age_seconds(store.root) == 30 + 1 + board_files.SLACK_SECONDS
    cfg = json.loads(store.layout.harness_config.read_text())
    cfg["scoreboard"]["write_interval_seconds"] = 45.0
    store.layout.harness_config.write_text(json.dumps(cfg))
    assert board_files.max_age_seconds(store.root) == 45 + 45 + board_files.SLACK_SECONDS


def test_a_batch_the_engine_has_not_seen_yet_is_derived(
        store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    store.serve(started=now() - timedelta(minutes=5))
    _, sysb = store.write_boards(now() - timedelta(seconds=2))
    lt = tmp_path / "lt2.json"
    lt.write_text(json.dumps({
        "batch_goal_summary": GOAL, "working_root": str(tmp_path),
        "jobs": [{"job_id": "j2", "steps": [{"step_id": "s1", "prompt": "p"}]}]}))
    new = submit(store.layout, lt).batch_id
    out = scoreboard(capsys, store)
    assert _derived(out, sysb)
    assert {r["batch_id"] for r in out["batches"]} == {store.batch_id, new}
    # its batch view has no engine file yet either
    assert scoreboard(capsys, store, "--batch", new)["batch_id"] == new


def test_a_file_with_an_unknown_key_is_derived_instead(
        store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    store.serve(started=now() - timedelta(minutes=5))
    _, sysb = store.write_boards(now() - timedelta(seconds=2))
    doc = json.loads(store.layout.system_scoreboard.read_text())
    doc["from_a_newer_engine"] = True
    store.layout.system_scoreboard.write_text(json.dumps(doc))
    assert _derived(scoreboard(capsys, store), sysb)


def test_human_output_says_where_it_came_from(store: Store) -> None:
    store.serve(started=now() - timedelta(minutes=5))
    store.write_boards(now() - timedelta(seconds=2))
    out = subprocess.run([PHH, "--root", str(store.root), "scoreboard"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert store.batch_id in out.stdout and "serving engine's scoreboard file" in out.stdout


# ---------------------------------------------------------------- the derived view's cache
def backdate(root: Path, seconds: float = 60.0) -> None:
    """Every file and directory under runs/ as if untouched for `seconds` (a finished run
    looked at later), without waiting."""
    t = time.time() - seconds
    for dirpath, dirnames, filenames in os.walk(root / "runs"):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (t, t))


def put_attempt(store: Store, status: str, name: str = "20260101T000000Z_r1",
                **fields: Any) -> Path:
    at = now() - timedelta(minutes=10)
    d = store.layout.attempts_dir(store.batch_id, "j1", "s1") / name
    d.mkdir(parents=True, exist_ok=True)
    ended = None if status == "running" else at
    atomic_write_json(d / "state.json", AttemptState(
        batch_id=store.batch_id, job_id="j1", step_id="s1", run_id=run_id_of(name),
        runner_id="local", status=status, updated_at=at, started_at=at, last_heartbeat_at=at,
        ended_at=ended, **fields))
    return d


def result(store: Store, action: str) -> OverrideResult:
    return OverrideResult(nonce=new_nonce(), action=action, batch_id=store.batch_id,
                          job_id="j1", step_id="s1", outcome="applied", message="done",
                          applied_at=now(), applied_by="test", reason="by the test")


def _views(store: Store) -> list[tuple[str, ...]]:
    return [(), ("--batch", store.batch_id)]


def _but_when(board: dict[str, Any]) -> dict[str, Any]:
    return {**board, "computed_at": None}


def test_a_settled_store_is_derived_once_then_printed_from_the_cache(
        store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    put_attempt(store, "succeeded", exit_code=0, turn_completed=True)
    backdate(store.root)
    for args in _views(store):
        first = scoreboard(capsys, store, *args)
        if args:  # the batch view: derived once, then the kept view
            assert board_files.cache_file(store.root, args[1]).is_file()
            assert scoreboard(capsys, store, *args) == first  # computed_at too: not derived
        else:  # the system view: every batch settled, so the catalog answers (no derivation)
            assert not board_files.cache_file(store.root, None).is_file()
            assert _but_when(scoreboard(capsys, store)) == _but_when(first)
        again = scoreboard(capsys, store, *args, "--recompute")
        assert again["computed_at"] != first["computed_at"]
        assert _but_when(again) == _but_when(first)


def _change(store: Store, how: str, tmp_path: Path) -> None:
    attempt = store.layout.attempts_dir(store.batch_id, "j1", "s1") / "20260101T000000Z_r1"
    if how == "new_attempt":
        put_attempt(store, "succeeded", "20260101T000100Z_r2", exit_code=0, turn_completed=True)
    elif how == "state_replaced":
        put_attempt(store, "failed", exit_code=3, errors=["rewritten"])
    elif how == "mark_failed":
        write_result(store.layout, result(store, "mark_failed"))
    elif how == "close":
        write_result(store.layout, result(store, "close"))
    elif how == "closed_marker":
        (store.layout.batch_dir(store.batch_id) / CLOSED_MARKER).write_text("{}")
    elif how == "resume_base_gone":
        (attempt / "codex_home" / "sessions").rmdir()
    elif how == "new_batch":
        lt = tmp_path / "lt2.json"
        lt.write_text(json.dumps({
            "batch_goal_summary": GOAL, "working_root": str(tmp_path),
            "jobs": [{"job_id": "j2", "steps": [{"step_id": "s1", "prompt": "p"}]}]}))
        submit(store.layout, lt)


@pytest.mark.parametrize("how", ["new_attempt", "state_replaced", "mark_failed", "close",
                                 "closed_marker", "resume_base_gone", "new_batch"])
def test_any_change_to_what_the_view_read_derives_it_again(
        store: Store, capsys: pytest.CaptureFixture[str], tmp_path: Path, how: str) -> None:
    attempt = put_attempt(store, "failed", exit_code=1, errors=["red"])
    (attempt / "codex_home" / "sessions").mkdir(parents=True)
    write_result(store.layout, result(store, "retry"))  # the overrides directory exists
    backdate(store.root)
    before = {args: scoreboard(capsys, store, *args) for args in _views(store)}
    assert all(scoreboard(capsys, store, *a) == b for a, b in before.items() if a)  # cached
    _change(store, how, tmp_path)
    for args, board in before.items():
        if not args and how not in ("closed_marker", "new_batch"):
            # the system view came from the catalog, which trusts a settled batch (phh's
            # writers mark a batch open before changing it; these writes bypass them) but
            # looks for a hand-made closed marker and new batches:
            # docs/catalog.md#the-scoreboard-from-the-catalog
            continue
        out = scoreboard(capsys, store, *args)
        assert _but_when(out) == _but_when(scoreboard(capsys, store, *args, "--recompute"))
        if args and how == "new_batch":  # another batch: this view's inputs are unchanged
            assert out == board
        else:
            assert out["computed_at"] != board["computed_at"], (how, args)  # derived again


def test_a_store_that_just_changed_or_is_running_is_not_cached(
        store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    put_attempt(store, "succeeded", exit_code=0, turn_completed=True)
    scoreboard(capsys, store)  # written a moment ago: it may still be changing
    assert not board_files.cache_file(store.root, None).exists()
    put_attempt(store, "running", "20260101T000100Z_r2")
    backdate(store.root)
    for args in _views(store):  # heartbeat ages and durations follow the clock
        first = scoreboard(capsys, store, *args)
        assert first["computed_at"] != scoreboard(capsys, store, *args)["computed_at"]
        assert not board_files.cache_file(store.root, args[1] if args else None).exists()


# ---------------------------------------------------------------- the HTTP API reads the same
def api_get(store: Store, path: str) -> httpx.Response:
    """One in-process request from a loopback peer (no server, no network)."""
    transport = httpx.ASGITransport(app=create_app(store.layout, Auth("local_trust")),
                                    client=("127.0.0.1", 5555))

    async def get() -> httpx.Response:
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as ac:
            return await ac.get(path)

    return asyncio.run(get())


def test_api_serves_the_engine_files_then_kept_views(
        store: Store, capsys: pytest.CaptureFixture[str]) -> None:
    """Why: every GET derived the whole store (~0.5 s at 1000 jobs) even while an engine
    kept the same view on disk; automation polls these endpoints."""
    store.serve(started=now() - timedelta(minutes=5))
    sb, sysb = store.write_boards(now() - timedelta(seconds=2))
    for path, written in ((f"/v1/batches/{store.batch_id}", sb), ("/v1/scoreboard", sysb)):
        r = api_get(store, path)
        assert r.status_code == 200, r.text
        assert r.json() == json.loads(written.model_dump_json())  # its notes: the file's
    assert api_get(store, "/v1/batches").json() == json.loads(sysb.model_dump_json())["batches"]
    store.release()  # the engine stops: derived, then kept once the store is settled
    put_attempt(store, "succeeded", exit_code=0, turn_completed=True)
    backdate(store.root)
    first = api_get(store, "/v1/scoreboard").json()
    # every batch settled: the catalog's rows (no derivation, so no kept view either)
    assert first["notes"] == [] and not board_files.cache_file(store.root, None).is_file()
    assert _but_when(api_get(store, "/v1/scoreboard").json()) == _but_when(first)
    assert _but_when(first) == _but_when(scoreboard(capsys, store))  # what the CLI prints
    b = api_get(store, f"/v1/batches/{store.batch_id}").json()  # the batch view: kept
    assert board_files.cache_file(store.root, store.batch_id).is_file()
    assert api_get(store, f"/v1/batches/{store.batch_id}").json() == b
    assert api_get(store, "/v1/batches/nosuch").status_code == 404
    assert api_get(store, "/v1/batches/..x").status_code in (400, 422)


# ---------------------------------------------------------------- a real engine
@pytest.mark.codex
def test_a_real_serving_engine_files_then_derivation_after_it_stops(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("one"))]}])
    harness.run()  # the work is done; the next engine only serves the store

    def phh_json(*args: str) -> Any:
        out = subprocess.run([PHH, "--root", str(harness.root), "scoreboard", *args, "--json"],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    def on_disk(path: Path) -> Any:
        return json.loads(path.read_text())

    eng = harness.start()
    system_file = harness.layout.system_scoreboard
    batch_file = harness.layout.batch_scoreboard(bid)
    wait_for(lambda: board_files.serving_since(harness.root) is not None
             and datetime.fromisoformat(on_disk(system_file)["computed_at"])
             >= board_files.serving_since(harness.root), 30, "the engine's first boards")
    for path, args in ((system_file, ()), (batch_file, ("--batch", bid))):
        before = on_disk(path)["computed_at"]
        out = phh_json(*args)
        after = on_disk(path)["computed_at"]  # the engine may rewrite it (every 30 s)
        assert out["computed_at"] in (before, after), args
        derived = phh_json(*args, "--recompute")
        assert derived["computed_at"] not in (before, after)
    assert out["counts"]["succeeded"] == 1 and out["steps"][0]["status"] == "succeeded"
    # every key the derivation prints, nulls included (the engine's file leaves them out)
    assert out["steps"][0].keys() == derived["steps"][0].keys()
    assert "resume_from" not in on_disk(batch_file)["steps"][0]

    harness.stop(eng)
    last = on_disk(system_file)["computed_at"]
    out = phh_json()
    assert out["computed_at"] != last and out["batches"][0]["batch_id"] == bid
