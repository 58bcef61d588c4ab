"""Bare `phh` (issue 16): the dashboard on the root (`--root`, `$PHH_ROOT`, else the current
directory); it runs an engine unless one already serves the root, then it observes."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
from conftest import Harness
from test_tui_tmux import PHH, Tmux, tmux, wait_file

pytestmark = [
    pytest.mark.codex,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]
__all__ = ["tmux"]  # the fixture, shared with the dashboard's other terminal tests


def test_bare_phh_runs_an_engine_on_the_current_directory(tmux: Tmux, harness: Harness,
                                                          tmp_path: Path) -> None:
    done = tmp_path / "exit_code"
    tmux.start(f"env -u PHH_ROOT {PHH}; echo $? > {done}", harness.root)
    tmux.wait_for(lambda s: re.search(r"engine local · \d+/\d+ slots", s) is not None, 60,
                  "the dashboard with its own engine")
    tmux.keys("q")  # nothing runs: quits without asking
    assert wait_file(done, 30, "phh to exit") == "0"


def test_bare_phh_observes_a_served_root(tmux: Tmux, harness: Harness, tmp_path: Path) -> None:
    eng = harness.start()
    try:
        done = tmp_path / "exit_code"
        tmux.start(f"PHH_ROOT={harness.root} {PHH}; echo $? > {done}", tmp_path)
        tmux.wait_for(lambda s: "observing" in s, 60, "the dashboard observing")
        assert "engine local ·" not in tmux.screen()
        tmux.keys("q")
        assert wait_file(done, 30, "phh to exit") == "0"
    finally:
        harness.stop(eng)
