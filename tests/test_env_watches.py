"""The dashboard's inotify watches grow with the store's layout, never with what agents
create (issue 11 E1): one agent making 20000 directories in an isolated workspace took the
dashboard from 44 to 20045 watches; the per-user limit is 8192 on many systems."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import Harness, final, step, wait_for

from phh_tui.backend import StoreBackend


def inotify_watches(pid: int | str = "self") -> int:
    """Watches held by a process: one `inotify wd:` line per watch in its inotify fds' fdinfo."""
    n = 0
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            if os.readlink(fd) != "anon_inode:inotify":
                continue
            info = Path(f"/proc/{pid}/fdinfo/{fd.name}").read_text()
        except OSError:
            continue
        n += sum(1 for line in info.splitlines() if line.startswith("inotify wd:"))
    return n


AGENT = """
import os, sys
root = sys.argv[1]
for i in range(200):
    for j in range(100):
        os.makedirs(os.path.join(root, f"d{i}", f"e{j}"))
"""


@pytest.mark.codex
def test_agent_directories_do_not_cost_dashboard_watches(harness: Harness) -> None:
    h = harness
    job = lambda name: {"job_id": name, "workspace_policy": "isolated",  # noqa: E731
                        "steps": [step("s1", final(f"{name} done"))]}
    b1 = h.submit([job("alpha")])
    h.run()
    attempt = h.attempts(b1, "alpha", "s1")[-1]
    assert h.state(attempt)["status"] == "succeeded"
    ws = h.layout.workspace(b1, "alpha")
    assert ws.is_dir() and (attempt / "codex_home").is_dir()

    baseline = inotify_watches()
    backend = StoreBackend(h.root)
    backend.load()
    changed: list[set[str]] = []
    t = threading.Thread(target=backend.serve, args=(changed.append,), daemon=True)
    t.start()
    try:
        # runs, _system, the batch, its job, steps/, the step, attempts/ (ended attempt: none)
        wait_for(lambda: inotify_watches() - baseline >= 6, 30, "the dashboard's watches")
        watching = inotify_watches() - baseline
        assert watching <= 12, watching

        # an agent-like process fills the isolated workspace and the attempt's codex_home
        subprocess.run([sys.executable, "-c", AGENT, str(ws / "made")], check=True)
        subprocess.run([sys.executable, "-c", AGENT.replace("range(200)", "range(10)"),
                        str(attempt / "codex_home" / "made")], check=True)
        assert sum(1 for _ in (ws / "made").rglob("*")) == 20200

        # the watcher is alive and still follows the store: a new batch from another
        # process (here an engine run) shows up with its attempt's end state
        b2 = h.submit([job("beta")])
        h.run()
        wait_for(lambda: b2 in backend.index.batches
                 and (a := backend.index.batches[b2].jobs["beta"].steps["s1"].latest)
                 is not None and a.status == "succeeded", 60, "the second batch on the board")
        after = inotify_watches() - baseline
        # the second batch adds its own layout dirs (batch, job, steps, step, attempts)
        assert after <= watching + 6, (watching, after)
        assert not backend.watcher.polling

        # the engine's own watch is bounded too (runs/, overrides/, the drop folder)
        eng = h.start()
        try:
            wait_for(lambda: inotify_watches() - baseline > after, 30, "the engine's watch")
            assert inotify_watches() - baseline - after <= 3
        finally:
            h.stop(eng)
    finally:
        backend.stop()
        t.join(30)
    assert not t.is_alive()
