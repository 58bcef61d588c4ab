"""Codex's own failure modes get their own classes and policies (issue 11 C1, C2, B3, Also):
usage limits pause every start on the root, HTTP 429 lowers the runner's concurrency (AIMD),
an exhausted context window is never continued, a refused request is not retried, an engine
shutdown's cancels are retried by the next engine, and a capped --concurrency says so.

Every class is read from what the real Codex binary prints for the stand-in's HTTP answer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, final, step, wait_for

from phh_engine.models.pause import StartPause
from phh_engine.runners.conclude import classify, failure_class_of_text
from phh_engine.store.events import EventFacts
from phh_engine.store.pauses import (
    USAGE_LIMIT,
    active_pauses,
    parse_reset,
    pause_message,
    read_pauses,
    set_pause,
    usage_limit_until,
)

YOU = "You\u2019ve"  # what Codex prints (a typographic apostrophe)
PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")

#: the issue's example answer: 429 usage_limit_reached, reset in 300 s
USAGE_BODY = {"error": {"type": "usage_limit_reached", "resets_in_seconds": 300,
                        "message": "The usage limit has been reached"}}
CONTEXT_BODY = {"error": {"type": "invalid_request_error", "code": "context_length_exceeded",
                          "message": "Your input exceeds the context window of this model.",
                          "param": "input"}}
SCHEMA_BODY = {"error": {"type": "invalid_request_error", "code": "invalid_json_schema",
                         "message": "Invalid schema for response_format 'codex_output_schema': "
                         "In context=(), 'additionalProperties' is required to be supplied and "
                         "to be false.", "param": "text.format.schema"}}


def _states(harness: Harness, bid: str, job: str, sid: str = "s1") -> list[dict[str, Any]]:
    return [harness.state(a) for a in harness.attempts(bid, job, sid)]


def _board(harness: Harness) -> dict[str, Any]:
    try:
        return json.loads(harness.layout.system_scoreboard.read_text())
    except (OSError, ValueError):
        return {}


# ------------------------------------------------------------------ classes from real Codex
@pytest.mark.codex
@pytest.mark.parametrize(("action", "expect"), [
    ({"http_error": 400, "body": SCHEMA_BODY}, "invalid_request"),
    ({"http_error": 404, "body": {"error": {"type": "invalid_request_error",
                                            "code": "model_not_found",
                                            "message": "The model `nope` does not exist"}}},
     "invalid_request"),
    ({"http_error": 422}, "invalid_request"),
    ({"http_error": 400, "body": CONTEXT_BODY}, "context_exhausted"),
    ({"stream_fail": "context_length_exceeded"}, "context_exhausted"),
    ({"http_error": 429}, "rate_limited"),
])
def test_model_api_answers_get_their_class(harness: Harness, action: dict, expect: str) -> None:
    """Default retry policy (2 attempts): invalid_request is not retried at all."""
    bid = harness.submit([{"job_id": "j1", "steps": [step(
        "s1", action, prompt=f"class {expect} {action.get('http_error')}")]}],
        retries={"max_attempts": 2, "backoff_seconds": 0})
    harness.run()
    states = _states(harness, bid, "j1")
    assert states[0]["status"] == "failed" and states[0]["failure_class"] == expect, states[0]
    if expect == "invalid_request":
        assert len(states) == 1, "a request the API refuses is never sent again"
    else:
        assert len(states) == 2, f"{expect} is retried by default"


@pytest.mark.parametrize(("text", "expect"), [
    (f"{YOU} hit your usage limit. Try again later.", "usage_limited"),
    (f"{YOU} hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), visit "
     "https://chatgpt.com/settings/usage to purchase more credits or try again later.",
     "usage_limited"),
    ("Quota exceeded. Check your plan and billing details.", "usage_limited"),
    ("exceeded retry limit, last status: 429 Too Many Requests", "rate_limited"),
    ("Codex ran out of room in the model's context window. Start a new thread or clear earlier "
     "history before retrying.", "context_exhausted"),
    ('{"error": {"type": "invalid_request_error", "code": "invalid_json_schema"}}',
     "invalid_request"),
    ("unexpected status 422 Unprocessable Entity: x, url: http://127.0.0.1:42200/v1/responses",
     "invalid_request"),
    ("unexpected status 401 Unauthorized: missing bearer", "model_error"),  # not ours: auth
    ("error sending request for url (http://127.0.0.1:40400/v1/responses)", "model_error"),
])
def test_failure_class_texts(text: str, expect: str) -> None:
    assert failure_class_of_text(text, turn_failed=True) == expect


def test_shutdown_cancel_is_its_own_class() -> None:
    facts = EventFacts()
    out = classify(exit_code=1, facts=facts, report=None, report_error=None, canceled=True,
                   timed_out=False, thread_mismatch=None, cancel_reason="shutdown")
    assert (out.status, out.termination_reason, out.failure_class) == (
        "canceled", "shutdown", "shutdown")
    out = classify(exit_code=1, facts=facts, report=None, report_error=None, canceled=True,
                   timed_out=False, thread_mismatch=None, cancel_reason="canceled")
    assert out.failure_class == "canceled"


# ------------------------------------------------------------------ usage limits
NOW = datetime(2026, 11, 29, 14, 9, 16, tzinfo=UTC)


def test_reset_times_from_codex_text_and_error_bodies() -> None:
    local = NOW.astimezone()
    # Codex prints local clock times to the minute: the pause lasts to the end of it
    at = parse_reset(f"{YOU} hit your usage limit. Try again at "
                     + (local + timedelta(minutes=5)).strftime("%-I:%M %p") + ".", NOW)
    want = (local + timedelta(minutes=6)).replace(second=0, microsecond=0)
    assert at == want.astimezone(UTC)
    later = local + timedelta(days=1, hours=1)
    text = (f"{YOU} hit your usage limit. Upgrade to Pro (https://chatgpt.com/explore/pro), "
            "visit https://chatgpt.com/settings/usage to purchase more credits or try again at "
            + later.strftime("%b ") + f"{later.day}th, " + later.strftime("%Y %-I:%M %p") + ".")
    assert parse_reset(text, NOW) == (later.replace(second=0, microsecond=0)
                                      + timedelta(minutes=1)).astimezone(UTC)
    assert parse_reset(json.dumps(USAGE_BODY), NOW) == NOW + timedelta(seconds=300)
    assert parse_reset('{"resets_at": 1796000000}', NOW) == datetime.fromtimestamp(
        1796000000, UTC)
    assert parse_reset("Try again in 2 hours 5 minutes.", NOW) == NOW + timedelta(seconds=7500)
    assert parse_reset(f"{YOU} hit your usage limit. Try again later.", NOW) is None
    # a time of day already past is tomorrow's
    past = (local - timedelta(hours=2)).strftime("%-I:%M %p")
    assert parse_reset(f"Try again at {past}.", NOW) > NOW  # type: ignore[operator]


def test_unknown_reset_pauses_exponentially_with_a_cap() -> None:
    until, known, streak = usage_limit_until("Try again later.", NOW, None, 60, 300)
    assert (until - NOW, known, streak) == (timedelta(seconds=60), False, 1)
    prev = StartPause(name=USAGE_LIMIT, reason="usage limit", until=until, since=NOW,
                      set_at=NOW, set_by="t", streak=1)
    # while it holds, more usage limits (attempts started before it) do not extend it
    assert usage_limit_until("later", NOW + timedelta(seconds=10), prev, 60, 300)[0] == until
    delays = []
    t = NOW
    for _ in range(5):  # each retry after the pause hits the limit again
        t = until + timedelta(seconds=1)
        until, known, streak = usage_limit_until("later", t, prev, 60, 300)
        delays.append((until - t).total_seconds())
        prev = prev.model_copy(update={"until": until, "streak": streak})
    assert delays == [120, 240, 300, 300, 300]
    # a known reset wins over the guess
    assert usage_limit_until(json.dumps(USAGE_BODY), t, prev, 60, 300)[:2] == (
        t + timedelta(seconds=300), True)


def test_pause_store_is_shared_and_never_shortened(tmp_path: Path) -> None:
    from phh_engine.store.paths import Layout

    layout = Layout(tmp_path)
    now = datetime.now(UTC)
    set_pause(layout, USAGE_LIMIT, "usage limit", now + timedelta(seconds=300), set_by="a",
              now=now)
    # another engine with an earlier reset must not shorten it
    p = set_pause(layout, USAGE_LIMIT, "usage limit", now + timedelta(seconds=30), set_by="b",
                  now=now)
    assert p.until == now + timedelta(seconds=300)
    (layout.system / "pauses" / "junk.txt").write_text("x")  # stray files are skipped
    (layout.system / "pauses" / "broken.json").write_text("{")
    pauses = read_pauses(layout)
    assert [x.name for x in pauses] == [USAGE_LIMIT]
    msg = pause_message(pauses[0])
    local = (now + timedelta(seconds=300)).astimezone().strftime("%H:%M:%S")
    assert msg in (f"paused until {local} (usage limit)",) or msg.endswith(
        f"{local} (usage limit)")
    assert active_pauses(pauses, now + timedelta(seconds=301)) == []


@pytest.mark.codex
def test_usage_limit_pauses_every_start_and_is_not_counted(harness: Harness) -> None:
    """The issue's example: 429 usage_limit_reached (resets_in_seconds 300). Codex 0.169
    prints no reset time for that body ("Try again later."), so the pause is the exponential
    guess (2 s here); meanwhile nothing starts, the note says "paused until HH:MM:SS (usage
    limit)", and the attempt does not count toward max_attempts (1)."""
    harness.settings.limits.usage_limit_pause_seconds = 4
    harness.settings.runners[0].capacity = 1
    harness.write_settings()
    limited = {"http_error": 429, "body": USAGE_BODY, "times": 1, "otherwise": final("after")}
    bid = harness.submit(
        [{"job_id": "j0", "steps": [step("s1", limited, prompt="usage limit j0")]}]
        + [{"job_id": f"j{i}", "steps": [step("s1", final(f"ok {i}"), prompt=f"usage {i}")]}
           for i in (1, 2)],
        retries={"max_attempts": 1, "backoff_seconds": 0})
    proc = subprocess.Popen([PHH, "--root", str(harness.root), "run", "--no-ui",
                             "--until-idle"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err
    first = _states(harness, bid, "j0")
    assert [s["status"] for s in first] == ["failed", "succeeded"], first
    assert first[0]["failure_class"] == "usage_limited"
    ended = datetime.fromisoformat(first[0]["ended_at"]).astimezone()
    m = re.search(r"paused until (\d\d):(\d\d):(\d\d) \(usage limit\)", out)
    assert m, out
    until = ended.replace(hour=int(m[1]), minute=int(m[2]), second=int(m[3]), microsecond=0)
    assert 2.5 <= (until - ended).total_seconds() <= 6, (until, ended)
    for job in ("j1", "j2"):  # nothing started while the pause held
        (st,) = _states(harness, bid, job)
        assert st["status"] == "succeeded"
        assert datetime.fromisoformat(st["started_at"]) >= until
    assert datetime.fromisoformat(first[1]["started_at"]) >= until
    assert "admission_resumed" in out


@pytest.mark.codex
def test_usage_limit_with_a_reset_time_pauses_until_it(harness: Harness) -> None:
    """With `resets_at` Codex prints "Try again at 2:14 PM."; the pause (and the board's
    note, and the dashboard header) end at that minute's end, fleet-wide under _system/."""
    reset = int(time.time()) + 600
    body = {"error": {"type": "usage_limit_reached", "resets_at": reset,
                      "message": "The usage limit has been reached"}}
    bid = harness.submit([{"job_id": "j1", "steps": [step(
        "s1", {"http_error": 429, "body": body}, prompt="usage reset known")]}],
        retries={"max_attempts": 1})
    eng = harness.start()
    wait_for(lambda: read_pauses(harness.layout), 60, "the usage-limit pause")
    (pause,) = read_pauses(harness.layout)
    assert pause.reset_known and pause.until is not None
    want = datetime.fromtimestamp(reset, UTC)
    assert want <= pause.until <= want + timedelta(seconds=60)
    msg = pause_message(pause)
    assert msg == "paused until " + pause.until.astimezone().strftime("%H:%M:%S") + \
        " (usage limit)"
    wait_for(lambda: any(msg in n["message"] for n in _board(harness).get("notes", [])), 30,
             "the pause on the scoreboard notes")
    assert msg in eng.header_notes()  # the dashboard header's line
    board = subprocess.run([PHH, "--root", str(harness.root), "scoreboard"], text=True,
                           capture_output=True, timeout=60,
                           env={**os.environ, "COLUMNS": "200"})
    assert msg in board.stdout, board.stdout
    (st,) = _states(harness, bid, "j1")
    assert st["failure_class"] == "usage_limited"
    # a second engine (another runner on the same root) sees the pause and starts nothing
    other = harness.engine(runner_id="other")
    other.health_tick()
    assert msg in other.admission_reasons()
    harness.stop(eng)
    assert len(harness.attempts(bid, "j1", "s1")) == 1  # nothing started during the pause
    # with no engine serving, a derived board shows the pause too
    for _ in range(2):  # derived, then (if kept) from the cache
        board = subprocess.run([PHH, "--root", str(harness.root), "scoreboard"], text=True,
                               capture_output=True, timeout=60,
                               env={**os.environ, "COLUMNS": "200"})
        assert msg in board.stdout, board.stdout


# ------------------------------------------------------------------ AIMD on 429
@pytest.mark.codex
def test_rate_limit_halves_concurrency_and_successes_raise_it(harness: Harness) -> None:
    harness.settings.runners[0].capacity = 4
    harness.write_settings()
    flaky = {"http_error": 429, "times": 1, "otherwise": final("after 429")}
    slow = {**final(), "delay": 2}  # ends after the 429 did
    harness.submit([{"job_id": "j1", "steps": [step("s1", flaky, prompt="aimd 429")]}]
                   + [{"job_id": f"k{i}", "steps": [step("s1", slow, prompt=f"aimd ok {i}"),
                                                    step("s2", final(), prompt=f"aimd2 {i}",
                                                         depends_on=["s1"])]}
                      for i in range(2)],
                   retries={"max_attempts": 2, "backoff_seconds": 0})
    eng = harness.run()
    changes = [e for e in harness.events if e.kind == "concurrency"]
    assert changes and changes[0].status == "lowered"
    assert changes[0].data == {"effective": 2, "capacity": 4}
    assert "effective concurrency 2/4" in (changes[0].detail or "")
    seen = [c.data["effective"] for c in changes]
    assert all(1 <= v <= 4 for v in seen)
    assert seen[-1] == 4 and eng.effective_capacity == 4  # successes brought it back


def test_aimd_bounds(harness: Harness) -> None:
    """Halve per 429 but never below 1; +1 per success, never above the cap."""
    from phh_engine.models import AttemptState, utcnow

    harness.settings.runners[0].capacity = 6
    harness.write_settings()
    eng = harness.engine()

    def end(fc: str | None, status: str = "failed") -> None:
        eng.record_outcome(AttemptState(
            batch_id="b", job_id="j", step_id="s", run_id="r", runner_id="local",
            status=status, updated_at=utcnow(), failure_class=fc))  # type: ignore[arg-type]

    got = []
    for _ in range(4):
        end("rate_limited")
        got.append(eng.effective_capacity)
    assert got == [3, 1, 1, 1]
    eng.write_scoreboards(all_batches=True)
    notes = [n["message"] for n in _board(harness)["notes"]]
    assert any("effective concurrency 1/6" in n for n in notes), notes
    eng.write_health()
    assert json.loads(harness.layout.runner_health("local").read_text())[
        "effective_capacity"] == 1
    got = []
    for _ in range(7):
        end(None, "succeeded")
        got.append(eng.effective_capacity)
    assert got == [2, 3, 4, 5, 6, 6, 6]


# ------------------------------------------------------------------ context window
@pytest.mark.codex
def test_context_exhausted_retry_is_a_fresh_exec_with_a_note(harness: Harness) -> None:
    ctx = {"http_error": 400, "body": CONTEXT_BODY, "times": 1, "key": "ctx-fresh",
           "otherwise": final("fresh start worked")}
    bid = harness.submit([{"job_id": "j1", "steps": [step(
        "s1", {"shell": "echo first"}, ctx, prompt="context exhausted step")]}],
        retries={"max_attempts": 2, "backoff_seconds": 0, "mode": "resume_same_thread"})
    harness.run()
    first, second = harness.attempts(bid, "j1", "s1")
    assert harness.state(first)["failure_class"] == "context_exhausted"
    assert harness.state(first)["codex_thread_id"]
    assert harness.state(second)["status"] == "succeeded"
    meta = harness.meta(second)
    assert meta["invocation"] == "exec" and meta.get("resume_from") is None
    assert meta["retry_of"] == harness.state(first)["run_id"]
    assert harness.state(second)["codex_thread_id"] != harness.state(first)["codex_thread_id"]
    prompt = (second / "prompt.txt").read_text()
    assert prompt.startswith("context exhausted step")
    assert "ran out of room in the model's context window" in prompt


# ------------------------------------------------------------------ shutdown, Ctrl-C
@pytest.mark.codex
def test_ctrl_c_exits_130_and_shutdown_cancels_are_retried(harness: Harness) -> None:
    hang = {"hang": 120, "times": 1, "otherwise": final("done after restart")}
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", hang, prompt="shutdown me")]}],
                         retries={"max_attempts": 1})
    proc = subprocess.Popen([PHH, "--root", str(harness.root), "run", "--no-ui"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []

    def read() -> None:
        assert proc.stdout is not None
        lines.extend(proc.stdout)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    wait_for(lambda: harness.attempts(bid, "j1", "s1")
             and harness.state(harness.attempts(bid, "j1", "s1")[0]).get("pid"), 60, "running")
    proc.send_signal(signal.SIGINT)
    wait_for(lambda: any("no new starts" in ln for ln in lines), 20, "drain notice")
    proc.send_signal(signal.SIGINT)
    assert proc.wait(60) == 130
    reader.join(10)
    (att,) = harness.attempts(bid, "j1", "s1")
    st = harness.state(att)
    assert (st["status"], st["termination_reason"], st["failure_class"]) == (
        "canceled", "shutdown", "shutdown")
    # the next engine retries it by itself (max_attempts 1: a shutdown is not counted)
    out = subprocess.run([PHH, "--root", str(harness.root), "run", "--no-ui", "--until-idle"],
                         capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    states = _states(harness, bid, "j1")
    assert [s["status"] for s in states] == ["canceled", "succeeded"]


# ------------------------------------------------------------------ --concurrency cap
@pytest.mark.codex
def test_concurrency_above_the_global_cap_says_so(harness: Harness) -> None:
    harness.settings.limits.global_concurrency = 8
    harness.write_settings()
    harness.submit([{"job_id": "j1", "steps": [step("s1", final(), prompt="cap note")]}])
    out = subprocess.run([PHH, "--root", str(harness.root), "run", "--no-ui", "--until-idle",
                          "--concurrency", "400"], capture_output=True, text=True, timeout=180)
    assert out.returncode == 0, out.stderr
    capped = [ln for ln in out.stdout.splitlines() if "concurrency_capped" in ln]
    assert len(capped) == 1, out.stdout
    assert ("--concurrency 400 is capped at 8 by limits.global_concurrency in "
            "phh_config.json" in capped[0])
    eng = harness.engine(concurrency=400, runner_id="cap1")
    assert eng.capacity == 8 and eng.capacity_note() in eng.header_notes()
    assert harness.engine(concurrency=3, runner_id="cap2").capacity_note() is None


# ------------------------------------------------------------------ dashboard header
@pytest.mark.codex
async def test_dashboard_header_shows_the_pause_and_the_capped_concurrency(
        harness: Harness) -> None:
    from phh_engine.models import utcnow
    from phh_tui.app import PhhApp

    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final(), prompt="tui pause")]}])
    pause = set_pause(harness.layout, USAGE_LIMIT, "usage limit",
                      utcnow() + timedelta(seconds=600), set_by="test")
    app = PhhApp(harness.root, concurrency=400, alerts="off", exit_policy="cancel")
    async with app.run_test(size=(200, 45)) as pilot:
        deadline = time.monotonic() + 60
        while pause_message(pause) not in app.status_line().plain:
            assert time.monotonic() < deadline, app.status_line().plain
            await pilot.pause(0.05)
        line = app.status_line().plain
        assert "--concurrency 400 is capped at 8 by limits.global_concurrency" in line
        assert "/8 slots" in line
        assert harness.attempts(bid, "j1", "s1") == []  # the pause holds every start
