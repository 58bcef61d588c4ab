"""Dashboard parts without an engine: readable event lines, board derivations and alerts, the
keyed table's in-place updates, and the rule that the engine never imports Textual."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.widgets.data_table import ColumnKey

from phh_engine.models import BatchScoreboard
from phh_engine.store.index import StoreIndex
from phh_engine.store.paths import Layout
from phh_tui.board import alerts_between, compute_board, finished, progress
from phh_tui.eventlines import EventLog, event_lines, shell_command
from phh_tui.synthetic import FIXED_NOW, build
from phh_tui.widgets import Column, KeyedTable, Row


# ---------------------------------------------------------------- event lines
def texts(ev: dict[str, Any]) -> list[str]:
    return [ln.text for ln in event_lines(ev)]


def test_event_lines_are_readable() -> None:
    cmd = {"id": "i1", "type": "command_execution", "command": "/bin/bash -lc 'ls -la'",
           "aggregated_output": "a\nb\n", "exit_code": 0, "status": "completed"}
    assert texts({"type": "item.started", "item": {**cmd, "status": "in_progress"}}) == [
        "$ ls -la"]
    assert texts({"type": "item.completed", "item": cmd}) == ["  ↳ exit 0", "    a", "    b"]
    failing = {**cmd, "exit_code": 2, "aggregated_output": "\n".join(map(str, range(10)))}
    lines = event_lines({"type": "item.completed", "item": failing})
    assert lines[0].style == "red" and lines[-1].text == "    … 4 more line(s)"
    assert texts({"type": "item.completed", "item": {"type": "agent_message",
                                                     "text": "done\nsecond"}}) == [
        "message: done", "  second"]
    assert texts({"type": "turn.failed", "error": {"message": "boom"}}) == ["turn failed: boom"]
    assert texts({"type": "error", "message": "Reconnecting... 1/5"})[0].startswith("error:")
    assert texts({"type": "turn.completed", "usage": {"input_tokens": 1200,
                                                      "cached_input_tokens": 200,
                                                      "output_tokens": 30}}) == [
        "turn completed · tokens 1,200 in (200 cached) · 30 out"]
    assert texts({"type": "item.completed", "item": {"type": "file_change", "changes": [
        {"path": "a.py", "kind": "update"}]}}) == ["edit a.py (update)"]
    assert texts({"type": "item.updated", "item": {"type": "todo_list"}}) == []
    assert texts({"type": "item.started", "item": {"type": "agent_message", "text": "x"}}) == []


def test_shell_command_unwraps_the_wrapper() -> None:
    assert shell_command("/bin/bash -lc 'sleep 1; ls'") == "sleep 1; ls"
    assert shell_command("/bin/bash -lc \"echo 'hi' > f\"") == "echo 'hi' > f"
    assert shell_command("git status") == "git status"
    assert shell_command("/bin/bash -lc 'unterminated") == "'unterminated"


def test_event_log_reads_incrementally(tmp_path: Path) -> None:
    path = tmp_path / "codex.events.jsonl"
    log = EventLog(path)
    assert log.read_new() == []  # not there yet
    started = {"type": "item.started", "item": {"type": "command_execution",
                                                "command": "make"}}
    raw = json.dumps(started)
    path.write_text(raw[:10])
    assert log.read_new() == []  # a partial line waits
    with path.open("a") as fh:
        fh.write(raw[10:] + "\nnot json\n")
    assert [ln.text for ln in log.read_new()] == ["$ make"]
    with path.open("a") as fh:
        fh.write(json.dumps({"type": "turn.started"}))
    assert log.read_new() == []
    assert [ln.text for ln in log.read_new(final=True)] == ["turn started"]


# ---------------------------------------------------------------- board
def _board(root: Path) -> tuple[StoreIndex, str]:
    bid = build(root, jobs=10)
    index = StoreIndex(Layout(root))
    index.load()
    return index, bid


def test_board_counts_progress_and_reuse(tmp_path: Path) -> None:
    index, bid = _board(tmp_path.resolve())
    board, alerts = compute_board(index.batches, FIXED_NOW)
    assert alerts == []  # nothing to compare with yet
    sb = board.batches[bid]
    assert sb.counts.succeeded == 8 and sb.counts.running == 3 and sb.steps_total == 20
    assert [a.kind for a in sb.attention] == ["stuck", "needs_attention", "failed"]
    p = board.progress[bid]
    assert (p.done, p.total, p.finished) == (11, 20, False)
    assert p.eta_seconds is not None and p.elapsed_seconds is not None
    assert p.eta_seconds == (20 - 11) * p.elapsed_seconds / 11
    assert board.system is not None and [r.batch_id for r in board.system.batches] == [bid]
    later, _ = compute_board(index.batches, FIXED_NOW + timedelta(seconds=5), board, dirty=set())
    assert later.batches[bid] is sb  # not dirty: reused, not recomputed
    again, _ = compute_board(index.batches, FIXED_NOW, board, dirty={bid})
    assert again.batches[bid] is not sb


def _with(sb: BatchScoreboard, job: str, step: str, **change: Any) -> BatchScoreboard:
    steps = [r.model_copy(update=change) if (r.job_id, r.step_id) == (job, step) else r
             for r in sb.steps]
    return sb.model_copy(update={"steps": steps})


def test_alerts_on_transitions_only(tmp_path: Path) -> None:
    index, bid = _board(tmp_path.resolve())
    board, _ = compute_board(index.batches, FIXED_NOW)
    sb = board.batches[bid]
    assert alerts_between(sb, sb) == []
    ready = _with(sb, "job_0006", "diagnose", status="ready")
    failed = _with(sb, "job_0006", "diagnose", status="failed", reasons=["model_error"])
    (a,) = alerts_between(ready, failed)
    assert (a.kind, a.job_id, a.step_id) == ("failed", "job_0006", "diagnose")
    assert "model_error" in a.message
    running = _with(sb, "job_0002", "diagnose", stuck=False)
    stuck = _with(sb, "job_0002", "diagnose", stuck=True)
    assert [x.kind for x in alerts_between(running, stuck)] == ["stuck"]
    att = _with(sb, "job_0006", "diagnose", status="needs_attention")
    assert [x.kind for x in alerts_between(ready, att)] == ["needs_attention"]
    # a batch finishes when nothing runs and nothing is ready
    done_counts = sb.counts.model_copy(update={"running": 0, "ready": 0})
    done = sb.model_copy(update={"counts": done_counts})
    assert finished(done) and not finished(sb)
    assert [x.kind for x in alerts_between(sb, done)] == ["batch_finished"]
    assert alerts_between(done, done) == []


def test_progress_of_a_finished_batch_stops_the_clock(tmp_path: Path) -> None:
    index, bid = _board(tmp_path.resolve())
    board, _ = compute_board(index.batches, FIXED_NOW)
    sb = board.batches[bid]
    done = sb.model_copy(update={"counts": sb.counts.model_copy(update={"running": 0,
                                                                        "ready": 0})})
    p1 = progress(index.batches[bid], done, FIXED_NOW)
    p2 = progress(index.batches[bid], done, FIXED_NOW + timedelta(hours=1))
    assert p1.finished and p1.eta_seconds is None and p1.elapsed_seconds == p2.elapsed_seconds


# ---------------------------------------------------------------- keyed table
class TableApp(App[None]):
    def compose(self) -> ComposeResult:
        yield KeyedTable([Column("a", "a"), Column("b", "b", max_width=8)],
                         lambda key, sig: sig, markable=True, id="t")  # type: ignore[arg-type]


def rows(*items: tuple[str, str, str]) -> list[Row]:
    return [Row(k, (a, b), f"{k} {a} {b}") for k, a, b in items]


async def test_keyed_table_updates_in_place() -> None:
    app = TableApp()
    async with app.run_test() as pilot:
        t = app.query_one(KeyedTable)
        t.sync(rows(("x", "1", "one"), ("y", "2", "two"), ("z", "3", "three")))
        await pilot.pause()
        assert t.keys == ["x", "y", "z"] and t.row_count == 3
        t.move_cursor(row=1)
        assert t.current_key == "y"
        # one cell changed: one update, nothing else touched
        t.sync(rows(("x", "1", "one"), ("y", "2", "TWO"), ("z", "3", "three")))
        assert t.cells_updated == 1
        assert t.get_cell("y", "b") == Text("TWO")
        assert isinstance(t.get_cell("x", "a"), Text)  # never parsed as markup
        # new order: the cursor stays on its row, no row rebuilt
        t.sync(rows(("z", "3", "three"), ("y", "2", "TWO"), ("x", "1", "one")))
        assert t.keys == ["z", "y", "x"] and t.current_key == "y" and t.cells_updated == 1
        assert [t.coordinate_to_cell_key((i, 1)).row_key.value for i in range(3)] == [
            "z", "y", "x"]
        # removal keeps the cursor on its row; additions append
        t.sync(rows(("y", "2", "TWO"), ("w", "4", "a long value, cropped")))
        assert t.keys == ["y", "w"] and t.current_key == "y"
        assert t.columns[ColumnKey("b")].width == 8  # grew to its cap, no further
        # filter
        t.set_filter("cropped")
        assert t.keys == ["w"]
        t.set_filter("")
        assert t.keys == ["y", "w"]
        # marks: space semantics (mark and move down), targets are the marked rows
        t.move_cursor(row=0)
        t.toggle_mark()
        assert t.marked == {"y"} and t.current_key == "w" and t.targets() == ["y"]
        t.clear_marks()
        assert t.targets() == ["w"]


async def test_keyed_table_many_removals_rebuild() -> None:
    app = TableApp()
    async with app.run_test() as pilot:
        t = app.query_one(KeyedTable)
        t.sync(rows(*[(f"k{i:03d}", str(i), "v") for i in range(300)]))
        await pilot.pause()
        t.select_key("k150")
        t.sync(rows(*[(f"k{i:03d}", str(i), "v") for i in range(100, 200)]))
        assert t.row_count == 100 and t.current_key == "k150"


# ---------------------------------------------------------------- layering
def test_engine_never_imports_textual() -> None:
    code = ("import sys, phh_engine.engine.loop, phh_engine.derive.scoreboards, "
            "phh_engine.standin; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('textual', "
            "'phh_tui')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]"


def test_system_totals_show_each_cluster_node() -> None:
    """A Ray runner's nodes appear next to it on the system screen; a lost one says so."""
    from phh_engine.derive.scoreboards import system_scoreboard
    from phh_engine.models import RunnerHealth, utcnow
    from phh_engine.models.health import RunnerNode
    from phh_tui.board import Board
    from phh_tui.screens import SystemScreen

    now = utcnow()
    nodes = [RunnerNode(label="a", alive=True, slots_total=8, slots_used=3, agents_running=3),
             RunnerNode(label="b", alive=False, slots_total=8, slots_used=1, agents_running=0)]
    health = RunnerHealth(runner_id="cluster", host="h", pid=1, started_at=now,
                          last_seen_at=now, capacity=8, running=4, draining=False,
                          phh_version="0", nodes=nodes)
    board = Board(computed_at=now, system=system_scoreboard([], now), runners=[health])
    text = SystemScreen._totals(None, board).plain  # type: ignore[arg-type]
    assert "cluster 4/8 [a 3/8, b 1/8 lost]" in text, text
