"""The dashboard reads attempt files through phh_engine.store.logs (compressed or not) and never on
the UI thread; screens show data and post intents instead of reaching into the engine."""

from __future__ import annotations

import ast
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

import phh_tui.screens as screens
from phh_engine.store import logs
from phh_engine.store.paths import EVENTS, FINAL_TXT, GIT_DIFF, STDOUT
from phh_tui import attempt_files
from phh_tui.app import PhhApp
from phh_tui.attempt_files import AttemptTail, read_diff, read_final_text
from phh_tui.backend import StoreBackend
from phh_tui.screens import BatchScreen, StepScreen
from phh_tui.synthetic import FIXED_NOW, build

TUI = Path(screens.__file__).parent


# ---------------------------------------------------------------- the reader functions
def test_tail_falls_back_to_a_compressed_stdout_log(tmp_path: Path) -> None:
    line = b'{"type":"item.completed","item":{"type":"agent_message","text":"from stdout"}}\n'
    (tmp_path / STDOUT).write_bytes(line * 3)
    logs.compress_log(tmp_path / STDOUT)
    assert not (tmp_path / STDOUT).exists() and not (tmp_path / EVENTS).exists()
    tail = AttemptTail(tmp_path)
    assert [ln.text for ln in tail.read_new(final=True)] == ["message: from stdout"] * 3
    assert tail.read_new(final=True) == []


def test_tail_prefers_the_event_log(tmp_path: Path) -> None:
    (tmp_path / STDOUT).write_text('{"type":"turn.started"}\n')
    (tmp_path / EVENTS).write_text('{"type":"thread.started","thread_id":"t-1"}\n')
    assert [ln.text for ln in AttemptTail(tmp_path).read_new()] == ["thread t-1 started"]


def test_diff_missing_empty_long_and_refused(tmp_path: Path) -> None:
    assert read_diff(tmp_path).missing
    (tmp_path / GIT_DIFF).write_text("")
    assert read_diff(tmp_path) == attempt_files.DiffText([])
    n = attempt_files.MAX_DIFF_LINES + 7
    (tmp_path / GIT_DIFF).write_text("".join(f"+line {i}\n" if i % 2 else " \n"
                                             for i in range(n)))
    diff = read_diff(tmp_path)
    assert len(diff.lines) == attempt_files.MAX_DIFF_LINES and diff.more == 7
    assert diff.lines[0] == " " and diff.lines[1] == "+line 1"  # blank context lines kept
    # a symlink an agent left in place of the diff is not followed
    (tmp_path / GIT_DIFF).unlink()
    (tmp_path / "secret").write_text("not a diff")
    (tmp_path / GIT_DIFF).symlink_to(tmp_path / "secret")
    refused = read_diff(tmp_path)
    assert refused.error is not None and refused.lines == []


def test_final_text_is_cut_at_4000_characters(tmp_path: Path) -> None:
    assert read_final_text(tmp_path) is None
    (tmp_path / FINAL_TXT).write_text("é" * 5000)
    text = read_final_text(tmp_path)
    assert text == "é" * attempt_files.MAX_FINAL_CHARS


# ---------------------------------------------------------------- off the UI thread
@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tui-reads").resolve()
    build(root, jobs=10)
    return root


async def until(pilot: Pilot[Any], cond: Callable[[], Any], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.02)


async def test_step_screen_reads_on_worker_threads(store: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Every attempt-file read of the step screen runs on a thread other than the UI's
    (the real readers, recorded on the way through)."""
    threads: dict[str, set[str]] = {}

    def record(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kw: Any) -> Any:
            threads.setdefault(name, set()).add(threading.current_thread().name)
            return real(*args, **kw)
        return call

    monkeypatch.setattr(screens, "read_diff", record("diff", read_diff))
    monkeypatch.setattr(screens, "read_final_text", record("final", read_final_text))
    monkeypatch.setattr(AttemptTail, "read_new", record("tail", AttemptTail.read_new))
    app = PhhApp(store, backend=StoreBackend(store, watch=False), clock=lambda: FIXED_NOW,
                 alerts="off", tick_seconds=3600)
    ui = threading.current_thread().name
    async with app.run_test(size=(150, 42)) as pilot:
        await until(pilot, lambda: app.board is not None and app.refreshes > 0)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, BatchScreen))
        await pilot.press("5", *["j"] * 11, "d")  # job_0005.implement: a diff, a resume
        await until(pilot, lambda: isinstance(app.screen, StepScreen)
                    and bool(app.screen.diff_text) and app.screen.log_lines > 0)
        # the first attention row: an attempt without a Run Report, so final.txt is read
        await pilot.press("escape", "1")
        await until(pilot, lambda: isinstance(app.screen, BatchScreen))
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, StepScreen)
                    and app.screen.log_lines > 0 and "final" in threads)
    assert set(threads) == {"diff", "final", "tail"}, threads
    assert all(ui not in names for names in threads.values()), threads


# ---------------------------------------------------------------- screens hold no engine
def _chains(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Attribute):
            parts = [node.attr]
            value: ast.expr = node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            out.add(".".join(reversed(parts)))
    return out


@pytest.mark.parametrize("name", ["screens.py", "dialogs.py", "widgets.py"])
def test_screens_neither_reach_into_the_engine_nor_read_files(name: str) -> None:
    chains = _chains(TUI / name)
    reaches = {c for c in chains if any(f"backend.{x}" in c for x in ("index", "engine",
                                                                        "layout", "watcher"))}
    assert not reaches, reaches
    io = {c for c in chains if c.rsplit(".", 1)[-1] in ("read_text", "read_bytes", "exists",
                                                         "open", "glob", "stat")}
    assert not io, io
