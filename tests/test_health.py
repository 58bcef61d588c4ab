"""Runner health, drain, stale runners and low-resource admission (docs/architecture.md#scheduling,
issue 6).

Why: an operator must be able to take a runner out of service from any process without losing
work (drain: running attempts finish, nothing new starts), schedulers must not wait on a runner
that is gone, and a host short of disk or memory must stop taking agents before it falls over —
each visibly (a system note in the scoreboards and an engine event), never silently.
"""

from __future__ import annotations

import asyncio
import errno
import json
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, final, step, wait_for

from phh_engine.engine import admission as engine_mod
from phh_engine.engine.health import (
    Resources,
    read_drain,
    read_health,
    runner_statuses,
    set_drain,
)
from phh_engine.engine.loop import Engine
from phh_engine.models import RunnerHealth, utcnow
from phh_engine.models.harness_config import RunnerSpec
from phh_engine.store.files import atomic_write_json

pytestmark = pytest.mark.codex


def serve_in_thread(harness: Harness, **kw: Any) -> tuple[Engine, threading.Thread]:
    eng = Engine(harness.root, on_event=harness.events.append, **kw)
    eng.setup()
    t = threading.Thread(target=lambda: asyncio.run(eng.serve()), daemon=True)
    t.start()
    assert eng.wait_serving(10), "engine loop"
    return eng, t


def phh(harness: Harness, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "phh_tui.cli", "--root", str(harness.root),
                           *args], capture_output=True, text=True)


def fake_health(harness: Harness, runner_id: str, *, age: float = 0.0, running: int = 0,
                stopped: bool = False) -> None:
    now = utcnow()
    atomic_write_json(harness.layout.runner_health(runner_id), RunnerHealth(
        runner_id=runner_id, host="elsewhere", pid=1, started_at=now - timedelta(hours=1),
        last_seen_at=now - timedelta(seconds=age), capacity=4, running=running, draining=False,
        phh_version="test", stopped_at=now if stopped else None))


def system_notes(harness: Harness) -> list[dict[str, Any]]:
    return json.loads(harness.layout.system_scoreboard.read_text()).get("notes", [])


def fast_health(harness: Harness) -> None:
    harness.settings.runner_health.interval_seconds = 0.2
    harness.settings.runner_health.stale_after_seconds = 5
    harness.write_settings()


def test_health_json_has_every_field_while_serving_and_marks_a_clean_stop(
        harness: Harness) -> None:
    fast_health(harness)
    eng, t = serve_in_thread(harness)
    try:
        first = wait_for(lambda: read_health(harness.layout, "local"), 10, "health.json")
        wait_for(lambda: (h := read_health(harness.layout, "local")) is not None
                 and h.last_seen_at > first.last_seen_at, 10, "a second health write")
        h = read_health(harness.layout, "local")
        assert h is not None
        assert h.capacity == 4 and h.running == 0 and h.accepting_work and not h.draining
        assert h.disk_free_bytes and h.disk_free_bytes > 0
        assert h.memory_available_bytes and h.memory_available_bytes > 0
        assert h.load_1m is not None and h.interval_seconds == 0.2
        assert h.stopped_at is None and h.problems == []
        (row,) = [r for r in runner_statuses(harness.layout, eng.config) if  # type: ignore[arg-type]
                  r.runner_id == "local"]
        assert row.state == "running"
    finally:
        eng.stop()
        t.join(30)
    h = read_health(harness.layout, "local")
    assert h is not None and h.stopped_at is not None and not h.accepting_work
    out = phh(harness, "runner", "list", "--json")
    assert json.loads(out.stdout)[0]["state"] == "stopped"


def test_drained_runner_starts_nothing_and_says_why(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("ok"))]}])
    out = phh(harness, "runner", "drain", "local", "--reason", "kernel upgrade")
    assert out.returncode == 0, out.stderr
    assert "recorded" in out.stdout  # no engine serving: applies when one starts
    req = read_drain(harness.layout, "local")
    assert req is not None and req.draining and req.reason == "kernel upgrade"
    harness.run()
    assert harness.attempts(bid, "j1", "s1") == []
    blocked = [e for e in harness.events if e.kind == "admission_blocked"]
    assert blocked and "draining: kernel upgrade" in (blocked[0].detail or "")
    notes = system_notes(harness)
    assert [n["kind"] for n in notes] == ["draining"]
    assert "kernel upgrade" in notes[0]["message"] and "undrain" in notes[0]["message"]
    sb = json.loads(harness.layout.batch_scoreboard(bid).read_text())
    assert sb["notes"] == notes and sb["counts"]["ready"] == 1
    assert phh(harness, "runner", "undrain", "local").returncode == 0
    harness.run()
    (att,) = harness.attempts(bid, "j1", "s1")
    assert harness.state(att)["status"] == "succeeded"


def test_drain_while_running_finishes_the_work_and_starts_none(harness: Harness) -> None:
    fast_health(harness)
    bid = harness.submit([
        {"job_id": "j1", "steps": [step("s1", {"shell": "sleep 2"}, final("long one"))]},
        {"job_id": "j2", "steps": [step("s1", final("waits"), prompt="second")]},
    ])
    eng, t = serve_in_thread(harness, concurrency=1, until_idle=True)
    wait_for(lambda: harness.attempts(bid, "j1", "s1"), 20, "j1 to start")
    out = phh(harness, "runner", "drain", "local", "--reason", "maintenance", "--json")
    assert out.returncode == 0, out.stderr
    ack = json.loads(out.stdout)
    assert ack["status"] == "applied" and ack["running"] == 1
    t.join(60)
    assert not t.is_alive(), "a drained engine with nothing running is idle"
    (att,) = harness.attempts(bid, "j1", "s1")
    assert harness.state(att)["status"] == "succeeded"  # finished, not canceled
    assert harness.attempts(bid, "j2", "s1") == []  # never started
    h = read_health(harness.layout, "local")
    assert h is not None and h.draining and h.drain_reason == "maintenance"
    del eng
    set_drain(harness.layout, "local", False)
    harness.run()
    (att2,) = harness.attempts(bid, "j2", "s1")
    assert harness.state(att2)["status"] == "succeeded"


def test_config_draining_runner_cannot_be_undrained_by_file(harness: Harness) -> None:
    harness.settings.runners[0].draining = True
    harness.write_settings()
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("ok"))]}])
    out = phh(harness, "runner", "undrain", "local")
    assert "runners[].draining" in out.stdout
    harness.run()
    assert harness.attempts(bid, "j1", "s1") == []
    assert "harness config" in system_notes(harness)[0]["message"]


def _affinity_batch(harness: Harness) -> str:
    harness.settings.runners = [RunnerSpec(runner_id="local"), RunnerSpec(runner_id="r2")]
    harness.write_settings()
    return harness.submit([{"job_id": "j1", "steps": [
        step("s1", final("on r2"), runner_affinity={"runner_id": "r2"}),
        step("gate", final("on local"), runner_affinity={"runner_id": "local"}),
        step("s2", final("follows s1"), depends_on=["gate"],
             runner_affinity={"same_runner_as": "s1"}),
    ]}])


def test_live_runner_keeps_its_steps_a_stale_runner_does_not(harness: Harness) -> None:
    bid = _affinity_batch(harness)
    harness.run(runner_id="r2")  # runs s1; gate is pinned elsewhere, so s2 waits
    (s1,) = harness.attempts(bid, "j1", "s1")
    assert harness.state(s1)["runner_id"] == "r2"
    assert harness.attempts(bid, "j1", "s2") == []
    # r2 looks alive and accepting: local runs its own `gate` but leaves s2 to r2
    fake_health(harness, "r2", age=1)
    harness.run()
    assert harness.attempts(bid, "j1", "gate")
    assert harness.attempts(bid, "j1", "s2") == []
    # r2 goes silent past stale_after_seconds: nobody waits for it any more
    fake_health(harness, "r2", age=600, running=2)
    harness.run()
    (s2,) = harness.attempts(bid, "j1", "s2")
    assert harness.state(s2)["status"] == "succeeded"
    assert harness.state(s2)["runner_id"] == "local"
    notes = system_notes(harness)
    assert [n["kind"] for n in notes] == ["runner_stale"]
    assert notes[0]["runner_id"] == "r2" and "not seen for" in notes[0]["message"]
    rows = {r["runner_id"]: r for r in json.loads(phh(harness, "runner", "list", "--json").stdout)}
    assert rows["r2"]["state"] == "stale" and rows["local"]["state"] == "stopped"


def test_stale_peers_stop_counting_against_global_concurrency(harness: Harness) -> None:
    harness.settings.limits.global_concurrency = 4
    harness.write_settings()
    eng = harness.engine()
    try:
        fake_health(harness, "r2", age=1, running=3)
        eng.sample_health()
        assert eng.caps().free_slots == 1  # 4 global - 3 running on r2
        fake_health(harness, "r2", age=600, running=3)
        eng.sample_health()
        assert eng.caps().free_slots == 4
    finally:
        eng.release_runner()


def test_own_health_unwritable_stops_new_starts(harness: Harness,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """For its own runner, 'stale' means this engine could not publish health.json for
    stale_after_seconds: others would take it for dead, so it must not start work."""
    eng = harness.engine()
    real = engine_mod.atomic_write_json

    def failing(path: Path, obj: Any) -> None:
        if path.name == "health.json":
            raise OSError(errno.ENOSPC, "No space left on device")
        real(path, obj)

    try:
        eng.sample_health()
        assert eng.admission_reasons() == [] and eng.caps().free_slots == 4
        monkeypatch.setattr(engine_mod, "atomic_write_json", failing)
        eng.sample_health()
        assert eng.health_error and "No space left" in eng.health_error
        assert eng.caps().free_slots == 4  # not stale yet: one missed write is not death
        assert eng.health_written_at is not None
        assert eng.config is not None
        # judged one stale period after the last good write: others take it for dead
        later = eng.health_written_at + eng.config.runner_health.stale_after_seconds + 1
        (why,) = eng.admission_reasons(mono=later)
        assert "health.json not written" in why and "No space left" in why
        assert eng.caps(mono=later).free_slots == 0
        assert any(n.kind == "health_unwritable" for n in eng.notes)
        monkeypatch.setattr(engine_mod, "atomic_write_json", real)
        eng.sample_health()
        assert eng.admission_reasons() == [] and eng.caps().free_slots == 4
    finally:
        eng.release_runner()


@pytest.mark.parametrize(("limit", "needle"), [
    ("min_free_disk_bytes", "low disk"), ("min_available_memory_bytes", "low memory"),
    ("min_free_inodes", "low inodes"),
])
def test_low_resources_stop_new_starts_with_a_clear_attention_item(
        harness: Harness, limit: str, needle: str) -> None:
    setattr(harness.settings.limits, limit, 1 << 52)  # 4 PiB, 4e15 inodes: always below it
    harness.write_settings()
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("ok"))]}])
    harness.run()
    assert harness.attempts(bid, "j1", "s1") == []
    (ev,) = [e for e in harness.events if e.kind == "admission_blocked"]
    assert needle in (ev.detail or "") and f"limits.{limit}" in (ev.detail or "")
    (note,) = system_notes(harness)
    assert note["kind"] == "low_resources" and needle in note["message"]
    assert f"limits.{limit}" in note["message"]
    sb = json.loads(harness.layout.batch_scoreboard(bid).read_text())
    assert sb["notes"][0]["kind"] == "low_resources"
    h = read_health(harness.layout, "local")
    assert h is not None and not h.accepting_work and needle in h.problems[0]
    setattr(harness.settings.limits, limit, 0)
    harness.write_settings()
    harness.run()
    (att,) = harness.attempts(bid, "j1", "s1")
    assert harness.state(att)["status"] == "succeeded"


def test_memory_drop_mid_run_lets_running_work_finish(harness: Harness,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    fast_health(harness)
    low = threading.Event()
    real = engine_mod.sample_resources

    def sample(path: Path) -> Resources:
        r = real(path)
        if low.is_set():
            r.memory_available_bytes = 1024
        return r

    monkeypatch.setattr(engine_mod, "sample_resources", sample)
    bid = harness.submit([
        {"job_id": "j1", "steps": [step("s1", {"shell": "sleep 2"}, final("long"))]},
        {"job_id": "j2", "steps": [step("s1", final("later"), prompt="second")]},
    ])
    eng, t = serve_in_thread(harness, concurrency=1, until_idle=True)
    wait_for(lambda: harness.attempts(bid, "j1", "s1"), 20, "j1 to start")
    low.set()
    wait_for(lambda: any(e.kind == "admission_blocked" for e in harness.events), 10,
             "admission to close")
    t.join(60)
    assert not t.is_alive()
    (att,) = harness.attempts(bid, "j1", "s1")
    assert harness.state(att)["status"] == "succeeded"
    assert harness.attempts(bid, "j2", "s1") == []
    low.clear()
    start = time.monotonic()
    harness.run()
    assert harness.attempts(bid, "j2", "s1") and time.monotonic() - start < 60
    del eng
