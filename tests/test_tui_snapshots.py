"""SVG snapshots of the three screens (pytest-textual-snapshot).

Deterministic: a synthetic store written from phh's models with a fixed clock (no engine, no
Codex), the app's clock fixed to the same instant, a fixed terminal size, Textual pinned.
Update with `pytest tests/test_tui_snapshots.py --snapshot-update` after a deliberate change,
and look at the pictures (snapshot_report.html) before accepting them.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot

from phh_tui.app import PhhApp
from phh_tui.backend import StoreBackend
from phh_tui.screens import BatchScreen, StepScreen
from phh_tui.synthetic import FIXED_NOW, build

SIZE = (150, 42)
Snap = Callable[..., bool]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("tui-snapshots").resolve()
    build(root, jobs=10)
    yield root


def app_for(root: Path) -> PhhApp:
    return PhhApp(root, backend=StoreBackend(root, watch=False), clock=lambda: FIXED_NOW,
                  alerts="off", tick_seconds=3600)


async def until(pilot: Pilot[Any], cond: Callable[[], Any], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await pilot.pause(0.02)


def steps(*actions: Callable[[Pilot[Any]], Awaitable[None]]
          ) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run(pilot: Pilot[Any]) -> None:
        app = pilot.app
        assert isinstance(app, PhhApp)
        await until(pilot, lambda: app.board is not None and app.refreshes > 0)
        for action in actions:
            await action(pilot)
        await pilot.pause()
    return run


def press(*keys: str, then: Callable[[PhhApp], bool] = lambda app: True
          ) -> Callable[[Pilot[Any]], Awaitable[None]]:
    async def run(pilot: Pilot[Any]) -> None:
        await pilot.press(*keys)
        app = pilot.app
        assert isinstance(app, PhhApp)
        await until(pilot, lambda: then(app))
    return run


def test_system_screen(snap_compare: Snap, store: Path) -> None:
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=steps())


def test_batch_screen_attention(snap_compare: Snap, store: Path) -> None:
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=steps(
        press("enter", then=lambda app: isinstance(app.screen, BatchScreen))))


def test_batch_screen_all_steps(snap_compare: Snap, store: Path) -> None:
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=steps(
        press("enter", then=lambda app: isinstance(app.screen, BatchScreen)),
        press("5", "j", "j", "j")))


def _step_ready(app: PhhApp) -> bool:
    s = app.screen
    return isinstance(s, StepScreen) and s.log_lines > 0 and s.step_id == "implement"


def test_step_screen_events(snap_compare: Snap, store: Path) -> None:
    # All steps, down to job_0005.implement (a resume that succeeded after its source retried)
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=steps(
        press("enter", then=lambda app: isinstance(app.screen, BatchScreen)),
        press("5", *["j"] * 11, "enter", then=_step_ready)))


def test_step_screen_diff(snap_compare: Snap, store: Path) -> None:
    assert snap_compare(app_for(store), terminal_size=SIZE, run_before=steps(
        press("enter", then=lambda app: isinstance(app.screen, BatchScreen)),
        press("5", *["j"] * 11, "d", then=lambda app: isinstance(app.screen, StepScreen)
              and bool(app.screen.diff_text))))
