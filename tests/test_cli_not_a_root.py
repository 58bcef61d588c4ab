"""Read-only commands on a directory that is not a phh root say so (exit 1, like any
lookup of something that is not there; `--json` gets the API's error body) and write
nothing there (tester's F10: `phh scoreboard` in an empty directory created runs/)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")


@pytest.mark.parametrize("args", [["scoreboard"], ["scoreboard", "--json"], ["config"],
                                  ["jobs", "b1"], ["current", "b1", "j1"],
                                  ["attempts", "b1", "j1", "s1"], ["history", "attempts"],
                                  ["tail", "b1", "j1", "s1"]])
def test_a_read_only_command_outside_a_root_writes_nothing(tmp_path: Path,
                                                           args: list[str]) -> None:
    res = subprocess.run([PHH, "--root", str(tmp_path), *args], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 1, res
    assert "is not a phh root" in res.stderr and "Traceback" not in res.stderr
    if "--json" in args:
        assert json.loads(res.stdout)["error"] == "not_found"
    assert list(tmp_path.iterdir()) == []


def test_after_init_the_same_command_works(tmp_path: Path) -> None:
    assert subprocess.run([PHH, "--root", str(tmp_path), "init"], capture_output=True,
                          timeout=120).returncode == 0
    res = subprocess.run([PHH, "--root", str(tmp_path), "scoreboard", "--json"],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res
