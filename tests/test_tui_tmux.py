"""End to end in a real terminal: `phh demo` / `phh run` inside tmux (a private server, `-L`),
read back with capture-pane, driven with send-keys. Real Codex, the scripted stand-in."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from conftest import Harness, final, step

pytestmark = [
    pytest.mark.codex,
    pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed"),
]
PHH = str(Path(sys.executable).with_name("phh"))
WIDTH, HEIGHT = 160, 45


class Tmux:
    """One private tmux server (its own socket name) running one command."""

    def __init__(self, name: str) -> None:
        self.socket = name

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, timeout=30)

    def start(self, command: str, cwd: Path) -> None:
        res = self.run("-f", "/dev/null", "new-session", "-d", "-x", str(WIDTH), "-y",
                       str(HEIGHT), "-c", str(cwd), command)
        assert res.returncode == 0, res.stderr

    def screen(self) -> str:
        return self.run("capture-pane", "-p", "-J").stdout

    def keys(self, *keys: str) -> None:
        self.run("send-keys", *keys)

    def alive(self) -> bool:
        return self.run("has-session").returncode == 0

    def wait_for(self, cond: Callable[[str], bool], timeout: float, what: str) -> str:
        deadline = time.monotonic() + timeout
        text = ""
        while time.monotonic() < deadline:
            text = self.screen()
            if cond(text):
                return text
            time.sleep(0.2)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}; screen:\n{text}")

    def kill(self) -> None:
        self.run("kill-server")


@pytest.fixture
def tmux() -> Iterator[Tmux]:
    t = Tmux(f"phh-test-{os.getpid()}-{time.monotonic_ns()}")
    try:
        yield t
    finally:
        t.kill()


def wait_file(path: Path, timeout: float, what: str) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and path.read_text().strip():
            return path.read_text().strip()
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def batch_row(text: str) -> str:
    return next((ln for ln in text.splitlines() if re.search(r"\bbatch_\w+\s+\d\d-\d\d", ln)),
                "")


def attempt_states(root: Path) -> list[dict[str, object]]:
    return [json.loads(p.read_text()) for p in
            sorted(root.glob("runs/*/*/steps/*/attempts/*/state.json"))]


def test_demo_in_a_real_terminal_runs_to_completion(tmux: Tmux, tmp_path: Path) -> None:
    root = tmp_path.resolve() / "demo"
    done = tmp_path / "exit_code"
    tmux.start(f"{PHH} --root {root} demo; echo $? > {done}", tmp_path)
    # agents start and run commands: the system screen shows the batch running
    tmux.wait_for(lambda s: " running " in batch_row(s), 90, "the demo batch running")
    # ... and finishes: 15 of 16 steps succeed (one report is off-schema on purpose)
    screen = tmux.wait_for(lambda s: " finished " in batch_row(s), 120, "the batch finished")
    row = batch_row(screen)
    assert "15/16" in row, row
    assert "1 needs_attention" in screen  # the totals line
    # the failing-then-retried job and the resumes really happened
    states = attempt_states(root)
    assert sum(1 for s in states if s["status"] == "succeeded"
               and s["job_id"] != "best_of_3") == 13
    # the best-of-3 step promoted candidate 2 (docs/verification.md#candidates-best-of-n)
    (promo,) = root.glob("runs/*/best_of_3/steps/solve/promotion.json")
    assert json.loads(promo.read_text())["winner_candidate"] == 2
    assert any(s.get("failure_class") == "model_error" for s in states)
    # drill in: the batch screen shows the attention list with the schema-invalid step
    tmux.keys("Enter")
    tmux.wait_for(lambda s: "sloppy_report.report" in s and "schema_invalid" in s, 30,
                  "the attention list")
    tmux.keys("q")  # nothing is running: quits without asking
    assert wait_file(done, 30, "phh to exit") == "0"


def test_demo_quit_while_running_cancels(tmux: Tmux, tmp_path: Path) -> None:
    root = tmp_path.resolve() / "demo"
    done = tmp_path / "exit_code"
    tmux.start(f"{PHH} --root {root} demo; echo $? > {done}", tmp_path)
    tmux.wait_for(lambda s: re.search(r"engine local · [1-9]\d*/\d+ slots", s) is not None,
                  90, "attempts running")
    tmux.keys("q")
    screen = tmux.wait_for(lambda s: "still running" in s, 30, "the quit question")
    assert "Cancel them (c)" in screen and "Leave running" not in screen  # demo: no detach
    tmux.keys("c")
    assert wait_file(done, 60, "phh to exit") == "0"
    states = attempt_states(root)
    assert states and all(s["status"] not in ("queued", "running") for s in states)
    assert any(s["status"] == "canceled" for s in states)
    for s in states:  # nothing of it is left running
        pid = s.get("pid")
        assert not (isinstance(pid, int) and psutil.pid_exists(pid)
                    and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE), s


def headless_engine(health: Path, root: Path) -> psutil.Process | None:
    """The `phh run --no-ui` the dashboard started for this root (it writes runner health)."""
    try:
        proc = psutil.Process(json.loads(health.read_text())["pid"])
        cmd = proc.cmdline()
    except (psutil.Error, OSError, ValueError, KeyError):
        return None
    return proc if "--no-ui" in cmd and str(root) in cmd else None


def test_run_quit_leaves_attempts_to_a_headless_engine(tmux: Tmux, harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"hang": 8}, final("finished under the headless engine"),
             prompt="tmux-leave-running")]}])
    done = harness.root / "exit_code"
    tmux.start(f"{PHH} --root {harness.root} run; echo $? > {done}", harness.root)
    tmux.wait_for(lambda s: "engine local · 1/4 slots" in s, 90, "the attempt running")
    tmux.keys("q")
    tmux.wait_for(lambda s: "Leave running (l)" in s, 30, "the quit question")
    tmux.keys("l")
    assert wait_file(done, 60, "the dashboard to exit") == "0"
    health = harness.layout.runner_health("local")
    headless: psutil.Process | None = None
    try:
        # the headless engine adopts the attempt and finishes it
        (att,) = harness.attempts(bid, "j1", "s1")
        deadline = time.monotonic() + 90
        while harness.state(att)["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, "the adopted attempt never finished"
            time.sleep(0.2)
        assert harness.state(att)["status"] == "succeeded"
        log_path = harness.layout.runners / "local" / "headless.log"
        wait_for = time.monotonic() + 30
        while f"run={harness.state(att)['run_id']} succeeded" not in log_path.read_text():
            assert time.monotonic() < wait_for, log_path.read_text()
            time.sleep(0.2)
        deadline = time.monotonic() + 30
        while headless is None:
            assert time.monotonic() < deadline, "no headless engine in runner health"
            headless = headless_engine(health, harness.root)
            time.sleep(0.2)
    finally:
        headless = headless or headless_engine(health, harness.root)
        if headless is not None and headless.is_running():
            headless.send_signal(signal.SIGTERM)  # the engine we had the dashboard start
            headless.wait(30)
