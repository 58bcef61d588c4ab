"""The dashboard's lists page (issue 14): a settled batch is not loaded by the dashboard's
engine (bounded, as headless) and is shown from the catalog; its lists and the All steps list
of a batch in memory hold a window of rows, moved by keyset pages as the operator scrolls,
jumps and filters. Real engine, real SQLite file, Pilot."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, final, step
from textual.pilot import Pilot
from textual.widgets import TabbedContent

from phh_engine.derive.scoreboards import batch_scoreboard
from phh_engine.interfaces.history import step_window
from phh_engine.models import utcnow
from phh_engine.store.catalog import Catalog
from phh_engine.store.index import StoreIndex
from phh_tui.app import PhhApp
from phh_tui.backend import EngineBackend, StoreBackend
from phh_tui.paging import PAGE, WINDOW, ListPager, Window
from phh_tui.screens import BatchScreen, StepScreen, SystemScreen
from phh_tui.widgets import KeyedTable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from scoreboard import fill_batch

SIZE = (160, 45)
JOBS = 200  # 400 steps: more than a window holds


async def until(pilot: Pilot[Any], cond: Callable[[], Any], timeout: float = 60.0,
                what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def two_step_jobs(n: int) -> list[dict[str, Any]]:
    return [{"job_id": f"job_{i:05d}", "steps": [
        {"step_id": "step1", "prompt": "p"},
        {"step_id": "step2", "prompt": "p", "resume_from": {"step_id": "step1"}}]}
        for i in range(n)]


def backdate(harness: Harness, batch_id: str) -> None:
    """Job directories last changed an hour ago (outside the fingerprint's racy window)."""
    t = time.time() - 3600
    for e in os.scandir(harness.layout.batch_dir(batch_id)):
        if e.is_dir() and not e.name.startswith(("_", ".")):
            os.utime(e.path, (t, t))


def settled_batch(harness: Harness) -> str:
    """A 400-step batch, every attempt finished (bench/scoreboard.py's writer: a few failed,
    retried, needing attention; step2 of a failed step1 blocked), recorded settled."""
    bid = harness.submit(two_step_jobs(JOBS))
    fill_batch(harness.root, bid, JOBS)
    harness.run()  # the catalog learns the batch (finished)
    backdate(harness, bid)
    harness.run()  # ... and its fingerprint, now outside the racy window
    return bid


def keys(app: PhhApp) -> list[str]:
    t = app.screen.table()  # type: ignore[attr-defined]
    assert isinstance(t, KeyedTable)
    return t.keys


@pytest.mark.codex
async def test_a_settled_batch_pages_from_the_catalog(harness: Harness) -> None:
    bid = await asyncio.to_thread(settled_batch, harness)  # (harness.run has its own loop)
    app = PhhApp(harness.root, alerts="off", exit_policy="cancel")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.backend.mode == "engine" and app.backend_up
                    and app.board is not None and app.board.system is not None
                    and app.board.system.batches, what="the system screen")
        backend = app.backend
        assert isinstance(backend, EngineBackend)
        assert bid not in backend.index.batches  # bounded: never loaded
        assert bid in backend.engine.index.skip
        # nor walked and watched for other processes' writes (O(open work), not O(history))
        watched = await until(pilot, lambda: backend.watcher is not None
                              and harness.layout.runs in backend.watcher.watchset.dirs
                              and backend.watcher.watchset.dirs, what="the watch set")
        assert not any(d.is_relative_to(harness.layout.batch_dir(bid)) for d in watched)
        table = app.screen.query_one("#batches", KeyedTable)
        assert isinstance(app.screen, SystemScreen) and table.keys == [bid]
        assert table.get_row(bid)[2].plain == "finished"  # the state column

        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(app.screen, BatchScreen)
                             and app.screen.settled is not None and app.screen, what="batch")
        assert isinstance(screen, BatchScreen) and screen.sb is None
        tabs = screen.query_one(TabbedContent)
        # 2 failed step1 (jobs 3, 103) and 4 needing attention (jobs 7, 57, 107, 157)
        assert str(tabs.get_tab("failures").label) == "Failures 6"
        await pilot.press("4")
        await until(pilot, lambda: len(keys(app)) == 6, what="the failures list")
        fails = screen.query_one("#t-failures", KeyedTable)
        assert fails.get_row("job_00003/step1")[5].plain == "model_error"  # from attempts

        await pilot.press("5")
        steps = screen.query_one("#t-steps", KeyedTable)
        await until(pilot, lambda: steps.row_count == PAGE, what="the first page")
        assert steps.keys[0] == "job_00000/step1" and steps.current_key == "job_00000/step1"
        w = screen.windows["steps"]
        assert w.more_after and not w.more_before
        # the cursor near the list's end fetches the next page; the window never holds more
        # than WINDOW rows (the first ones go)
        while screen.windows["steps"].more_after:
            last = screen.windows["steps"].last
            at = steps.keys[-5]
            steps.select_key(at)
            await until(pilot, lambda last=last: screen.windows["steps"].last != last,
                        what="the next page")
            assert steps.current_key == at and steps.row_count <= WINDOW
        assert steps.row_count == WINDOW and steps.keys[-1] == f"job_{JOBS - 1:05d}/step2"
        assert screen.windows["steps"].more_before
        # g: the first rows again; G: the last rows
        await pilot.press("g")
        await until(pilot, lambda: steps.current_key == "job_00000/step1", what="g")
        assert steps.keys[0] == "job_00000/step1" and steps.row_count == PAGE
        await pilot.press("G")
        await until(pilot, lambda: steps.current_key == f"job_{JOBS - 1:05d}/step2",
                    what="G")
        assert steps.row_count == PAGE and not screen.windows["steps"].more_after
        # near the top of a window that does not start at the batch's first row: the
        # previous page comes in above
        at = steps.keys[3]
        steps.select_key(at)
        await until(pilot, lambda: steps.row_count == 2 * PAGE, what="the previous page")
        assert steps.keys[0] == f"job_{(2 * JOBS - 2 * PAGE) // 2:05d}/step1"
        assert steps.current_key == at

        # filtering by typing reads the catalog with the text
        await pilot.press("slash", *"job_0015")
        await until(pilot, lambda: len(steps.keys) == 20, what="the filtered rows")
        assert steps.keys[0] == "job_00150/step1" and steps.keys[-1] == "job_00159/step2"
        await pilot.press("enter")
        await pilot.press("escape")  # clears the filter
        await until(pilot, lambda: steps.row_count == PAGE, what="the filter cleared")

        # a step of the settled batch opens, read from its files alone
        steps.select_key("job_00003/step1")
        await pilot.press("enter")
        step_screen = await until(pilot, lambda: isinstance(app.screen, StepScreen)
                                  and app.screen, what="the step screen")
        assert isinstance(step_screen, StepScreen)
        attempts = step_screen.query_one("#attempts", KeyedTable)
        await until(pilot, lambda: attempts.row_count == 2, what="both failed attempts")
        assert "not in batch" not in str(step_screen.query_one("#step-head").render())
        assert bid not in backend.index.batches  # still not loaded
        await pilot.press("q")


def test_list_pager_windows_match_the_catalog_order(harness: Harness) -> None:
    """A batch in memory pages from its board (ListPager) in the catalog's order, with the
    same keyset moves; filtered the same way."""
    bid = harness.submit(two_step_jobs(JOBS))
    fill_batch(harness.root, bid, JOBS)
    index = StoreIndex(harness.layout)
    index.load()
    sb = batch_scoreboard(index.batches[bid], utcnow())
    cat = Catalog.open(harness.layout)
    try:
        cat.rebuild()
        whole = step_window(cat, bid, limit=1000)
        assert [(d["job_id"], d["step_id"], d["seq"]) for d in whole] == [
            (r.job_id, r.step_id, i) for i, r in enumerate(sb.steps)]
        pager = ListPager(sb)
        w = pager.first(Window(bid), WINDOW)
        assert [d["seq"] for d in w.rows] == list(range(WINDOW)) and w.more_after
        w = pager.after(w)
        assert [d["seq"] for d in w.rows] == list(range(PAGE, 2 * JOBS))
        assert w.more_before and not w.more_after
        w = pager.before(w)
        assert [d["seq"] for d in w.rows] == list(range(WINDOW)) and not w.more_before
        w = pager.last(Window(bid), WINDOW)
        assert w.rows[-1]["seq"] == 2 * JOBS - 1 and len(w.rows) == WINDOW
        for text in ("job_0015", "blocked", "failed"):
            mine = pager.first(Window(bid, text=text)).rows
            theirs = step_window(cat, bid, text=text, limit=WINDOW)
            assert mine and [d["seq"] for d in mine] == [d["seq"] for d in theirs], text
        blocked = pager.first(Window(bid, statuses=("blocked",))).rows
        assert [d["job_id"] for d in blocked] == ["job_00003", "job_00103"]
    finally:
        cat.close()


@pytest.mark.codex
async def test_a_batch_that_settles_under_the_open_screen_pages_from_the_catalog(
        harness: Harness) -> None:
    """The dashboard's engine evicts a batch once it settles; the open batch screen turns
    to the catalog (same rows), and back to memory when an operator action loads it."""
    bid = harness.submit([{"job_id": f"j{i}", "steps": [step("s1", final(f"n{i}"))]}
                          for i in range(3)])
    app = PhhApp(harness.root, alerts="off", exit_policy="cancel")
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: app.board is not None and bid in app.board.batches,
                    what="the batch in memory")
        await pilot.press("enter")
        screen = await until(pilot, lambda: isinstance(app.screen, BatchScreen)
                             and app.screen, what="the batch screen")
        assert isinstance(screen, BatchScreen)
        await pilot.press("5")
        steps = screen.query_one("#t-steps", KeyedTable)
        await until(pilot, lambda: screen.sb is not None and screen.prog is not None
                    and screen.prog.finished, 120, "the batch to finish")
        assert steps.keys == ["j0/s1", "j1/s1", "j2/s1"]
        # settled once its job directories are outside the racy window (2 s): evicted at
        # the engine's next board write
        await until(pilot, lambda: bid not in app.backend.index.batches, 90, "eviction")
        await until(pilot, lambda: screen.settled is not None and screen.sb is None
                    and steps.keys == ["j0/s1", "j1/s1", "j2/s1"], 30, "the catalog's rows")
        assert str(screen.query_one(TabbedContent).get_tab("steps").label) == "All steps 3"
        # an operator action names it: loaded again, shown from memory again
        steps.select_key("j1/s1")
        await pilot.press("R")
        await until(pilot, lambda: type(app.screen).__name__ == "PromptScreen", what="prompt")
        await pilot.press(*"again", "enter")
        await until(pilot, lambda: bid in app.backend.index.batches, 60, "the batch loaded")
        await until(pilot, lambda: screen.sb is not None and screen.settled is None, 30,
                    "the screen from memory")
        await pilot.press("q")


@pytest.mark.codex
async def test_an_observing_dashboard_leaves_settled_batches_on_disk(harness: Harness) -> None:
    """Observing (another engine serves the root): settled batches are not loaded either;
    an operator action on one loads it when the serving engine's result arrives."""
    bid = await asyncio.to_thread(settled_batch, harness)
    eng = await asyncio.to_thread(harness.start)
    try:
        backend = StoreBackend(harness.root, reason="an engine already serves this root")
        app = PhhApp(harness.root, backend=backend, alerts="off")
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, lambda: app.board is not None and app.board.system is not None
                        and [r.batch_id for r in app.board.system.batches] == [bid],
                        what="the system screen")
            assert bid not in backend.index.batches and bid in backend.index.skip
            await pilot.press("enter")
            screen = await until(pilot, lambda: isinstance(app.screen, BatchScreen)
                                 and app.screen.settled is not None and app.screen,
                                 what="the settled batch")
            assert isinstance(screen, BatchScreen)
            await pilot.press("3")  # blocked: step2 of the two jobs whose step1 failed
            blocked = screen.query_one("#t-blocked", KeyedTable)
            await until(pilot, lambda: blocked.keys == ["job_00003/step2", "job_00103/step2"],
                        what="the blocked steps from the catalog")
            app.act("mark_failed", bid, [("job_00003", "step2")], reason="from the test")
            await until(pilot, lambda: app.action_log and bid in backend.index.batches, 60,
                        "the batch loaded when the engine applied the action")
            assert app.action_log[0][-1].outcome == "applied"
            await until(pilot, lambda: screen.sb is not None and any(
                r.job_id == "job_00003" and r.step_id == "step2" and r.status == "failed"
                for r in screen.sb.steps), 30, "the step failed, from memory")
            await pilot.press("q")
    finally:
        await asyncio.to_thread(harness.stop, eng)
