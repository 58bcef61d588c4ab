"""Wall-clock jumps (issue 11 E4): a laptop resuming from sleep jumps the wall clock forward;
NTP can step it back. Heartbeat ages and stuck detection of attempts this process monitors
use the monotonic clock, and attempts of a step keep their claim order whatever the wall
clock did. The wall clock is faked through `set_wall_clock_skew` (what `utcnow` returns);
everything else is real: the engine, Codex, the stand-in, the files."""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from conftest import Harness, final, step, wait_for

from phh_engine.derive.readiness import is_stuck
from phh_engine.derive.scoreboards import batch_scoreboard
from phh_engine.models import utcnow
from phh_engine.models.common import set_wall_clock_skew
from phh_engine.store.index import StoreIndex
from phh_engine.store.overrides import make_request
from phh_engine.store.paths import claim_time, run_id_of
from phh_engine.store.views import AttemptView

pytestmark = pytest.mark.codex

JUMP = 3 * 3600.0  # a night asleep: far past heartbeat_stale_after_seconds (2700 s)


@pytest.fixture
def wall_clock() -> Iterator[None]:
    yield
    set_wall_clock_skew(0)


def test_forward_jump_does_not_make_a_healthy_attempt_stuck(harness: Harness,
                                                            wall_clock: None) -> None:
    h = harness
    h.settings.scoreboard.stuck_auto_remediation.enabled = True  # would cancel a "stuck" one
    h.write_settings()
    bid = h.submit([{"job_id": "j1", "steps": [
        step("s1", {"hang": 8, "final": {"summary": "slept through it"}})]}])
    eng = h.start()
    try:
        wait_for(lambda: (a := h.attempts(bid, "j1", "s1")) and h.state(a[0])["status"]
                 == "running", 60, "the attempt running")
        (att,) = h.attempts(bid, "j1", "s1")
        batch = eng.index.batches[bid]

        def running_in_index() -> AttemptView | None:
            f = batch.jobs["j1"].steps["s1"].in_flight
            return f if f and f.state and f.state.status == "running" else None

        wait_for(running_in_index, 30, "the engine's index to see it running")
        # a frozen copy: once the clock jumps, the monitor beats at once and the index may
        # take the fresh beat before the assertion below reads it
        flight = running_in_index()
        assert flight is not None
        flight = copy.deepcopy(flight)
        set_wall_clock_skew(JUMP)
        jumped = utcnow()
        stale = batch.meta.effective_defaults.heartbeat_stale_after_seconds
        # by the wall clock alone the last beat is hours old ...
        assert is_stuck(flight, jumped, stale)
        # ... but this process beat it seconds ago on the monotonic clock
        ages = eng.runner.beat_ages()
        assert ages[flight.run_id] < 60
        sb = batch_scoreboard(batch, jumped, beat_ages=ages)
        (row,) = sb.running
        assert not row.stuck and row.seconds_since_last_heartbeat is not None
        assert row.seconds_since_last_heartbeat < 60
        assert not [r for r in sb.attention if r.kind == "stuck"]

        async def check() -> None:
            eng.check_stuck()

        h.call(eng, check())
        assert not eng.runner.live[flight.run_id].cancel_requested.is_set()
        # the monitor saw the jump and beat at once (heartbeat_seconds is 30): others
        # reading state.json see a fresh heartbeat on the new wall clock
        wait_for(lambda: datetime.fromisoformat(h.state(att)["last_heartbeat_at"])
                 >= jumped - timedelta(seconds=5), 20, "a heartbeat on the new wall clock")
        wait_for(lambda: h.state(att)["status"] != "running", 90, "the attempt to end")
        assert h.state(att)["status"] == "succeeded"
        assert len(h.attempts(bid, "j1", "s1")) == 1
        wait_for(lambda: json.loads(h.layout.batch_scoreboard(bid).read_text())["counts"]
                 ["succeeded"] == 1, 30, "the board")
    finally:
        h.stop(eng)


def test_backward_step_keeps_the_newest_attempt_latest(harness: Harness,
                                                       wall_clock: None) -> None:
    h = harness
    bid = h.submit([{"job_id": "j1", "steps": [
        step("s1", final("no", status="failed"), retry_policy={"max_attempts": 1})]}])
    h.run()
    (first,) = h.attempts(bid, "j1", "s1")
    assert h.state(first)["status"] == "failed"

    set_wall_clock_skew(-3600.0)  # NTP steps the clock back an hour
    make_request(h.layout, "retry", bid, job_id="j1", step_id="s1", requested_by="test")
    h.run()
    dirs = h.attempts(bid, "j1", "s1")  # sorted by name, as every reader orders them
    assert len(dirs) == 2 and dirs[0] == first
    second = dirs[1]
    # the clock really went back between them ...
    assert h.state(second)["started_at"] < h.state(first)["started_at"]
    # ... yet the second sorts after the first everywhere
    assert h.meta(first)["attempt_number"] == 1 and h.meta(second)["attempt_number"] == 2
    idx = StoreIndex(h.layout)
    idx.load()
    s1 = idx.batches[bid].jobs["j1"].steps["s1"]
    assert s1.latest is not None and s1.latest.dir_name == second.name
    assert [a.dir_name for a in s1.attempts] == [first.name, second.name]
    cur = json.loads(h.layout.current(bid, "j1").read_text())
    assert cur["steps"]["s1"]["latest"]["run_id"] == run_id_of(second.name)
    board = json.loads(h.layout.batch_scoreboard(bid).read_text())
    row = next(r for r in board["steps"] if r["step_id"] == "s1")
    assert row.get("latest_run_id", run_id_of(second.name)) == run_id_of(second.name)


def test_claim_time_sorts_after_the_newest_name() -> None:
    names = ["20260101T120000Z_r000005abcd1234", "20260101T115959Z_r999999abcd1234"]
    back = datetime(2026, 1, 1, 11, 0, 0, tzinfo=utcnow().tzinfo)
    t = claim_time(back, names)
    assert t == datetime(2026, 1, 1, 12, 0, 0, 6, tzinfo=back.tzinfo)
    assert claim_time(t + timedelta(seconds=1), names) == t + timedelta(seconds=1)
    assert claim_time(back, ["not-a-run-dir", ".tmp"]) == back
