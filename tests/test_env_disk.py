"""A full disk (no space, no inodes) pauses phh; it never stops it (issue 11 E2).

On a small tmpfs (as root; skipped where mounting is not permitted): a heartbeat write that
fails keeps the attempt's monitor watching Codex, the attempt is finalised once space returns;
a claim that fails keeps the scheduling loop alive with new starts paused and a note; freeing
space resumes work in the same engine, no restart.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import Harness, final, step, wait_for

from phh_engine.engine.health import resource_problems, sample_resources
from phh_engine.models.harness_config import Limits
from phh_engine.standin import StandIn

pytestmark = pytest.mark.codex


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "fs"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256m,nr_inodes=6000", "tmpfs",
                          str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


class InodeHog:
    """Takes every free inode and keeps taking any that frees up (Codex deletes temp files
    now and then) until `release`, which deletes what it took."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.full = threading.Event()
        self._stop = threading.Event()
        self._n = 0
        where.mkdir()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        wait_for(self.full.is_set, 60, "the filesystem to be full")

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                (self.where / f"f{self._n}").touch()
                self._n += 1
            except OSError as exc:
                assert exc.errno in (errno.ENOSPC, errno.EDQUOT), exc
                self.full.set()
                self._stop.wait(0.005)  # poll for a freed inode

    def release(self) -> None:
        self._stop.set()
        self._t.join(10)
        shutil.rmtree(self.where, ignore_errors=True)


def attempt_dirs(h: Harness, bid: str, job: str) -> list[Path]:
    d = h.layout.attempts_dir(bid, job, "s1")
    return sorted(p for p in d.iterdir()) if d.is_dir() else []


def test_free_inodes_join_free_bytes_in_admission(small_fs: Path) -> None:
    res = sample_resources(small_fs)
    assert res.disk_free_inodes is not None and 0 < res.disk_free_inodes <= 6000
    probs = resource_problems(res, Limits(min_free_disk_bytes=0, min_available_memory_bytes=0,
                                          min_free_inodes=res.disk_free_inodes + 1))
    assert len(probs) == 1 and "low inodes" in probs[0]
    assert "limits.min_free_inodes" in probs[0]
    assert resource_problems(res, Limits(min_free_disk_bytes=0, min_available_memory_bytes=0,
                                         min_free_inodes=10)) == []


def test_full_disk_pauses_and_resumes_without_a_restart(small_fs: Path, standin: StandIn,
                                                       codex_bin: str) -> None:
    h = Harness(small_fs / "root", standin)
    h.settings.runners[0].capacity = 2
    h.settings.codex.heartbeat_seconds = 0.2
    h.settings.runner_health.interval_seconds = 0.2
    h.settings.limits.min_free_inodes = 0
    h.settings.limits.min_free_disk_bytes = 0
    h.settings.limits.min_available_memory_bytes = 0
    # boards only at start: the claim below must be the first write to meet the full disk
    # (any failed write pauses new starts, so a failed board write would keep it from trying)
    h.settings.scoreboard.write_interval_seconds = 3600
    h.write_settings()
    filler = small_fs / "filler"
    hog: InodeHog | None = None
    b1 = h.submit([{"job_id": "j1", "steps": [
        step("s1", {"hang": 15, "final": {"summary": "x"}})]}])
    eng = h.start()
    try:
        # -- a heartbeat fails: the monitor goes on, Codex ends, the end waits for space
        wait_for(lambda: (a := attempt_dirs(h, b1, "j1")) and h.state(a[0])["status"] == "running",
                 60, "j1 running")
        (att,) = attempt_dirs(h, b1, "j1")
        pid = h.state(att)["pid"]
        # Codex is in its turn, waiting on the model (it writes nothing while it waits)
        wait_for(lambda: b"turn.started" in (att / "codex.events.jsonl").read_bytes(), 60,
                 "the turn to start")
        hog = InodeHog(filler)
        wait_for(lambda: "heartbeat" in (eng.writes.problem or ""), 30, "a failed heartbeat")
        wait_for(lambda: any(n.kind == "write_error" for n in eng.notes), 10, "the note")
        assert any("write error" in r for r in eng.admission_reasons())
        # Codex itself may fail on the full disk or finish: either way it ends, and its end
        # is recorded once space returns (the monitor never stopped watching it)
        wait_for(lambda: not _alive(pid), 60, "Codex to end")
        hog.release()
        wait_for(lambda: h.state(att)["status"] in ("succeeded", "failed"), 60, "j1 finalised")
        assert not eng.tasks
        wait_for(lambda: eng.writes.problem is None, 30, "writes to work again")
        assert any(e.kind == "admission_blocked" and "write error" in (e.detail or "")
                   for e in h.events)

        # -- a claim fails: the scheduling loop goes on, starts resume once space returns
        retry = {"max_attempts": 2, "backoff_seconds": 8,  # time to fill the disk
                 "retry_on": ["agent_reported_failure"]}
        b2 = h.submit([{"job_id": "j2", "steps": [
            step("s1", final("no", status="failed"), retry_policy=retry)]}])
        wait_for(lambda: (a := attempt_dirs(h, b2, "j2")) and h.state(a[0])["status"] == "failed",
                 60, "j2's first attempt to fail")
        hog = InodeHog(filler)
        wait_for(lambda: "a claim of" in (eng.writes.problem or ""), 60, "the failed claim")
        assert len(attempt_dirs(h, b2, "j2")) == 1  # no half-made attempt dir left behind
        assert eng.stopping is False and eng.loop is not None and eng.loop.is_running()
        hog.release()
        wait_for(lambda: len(a := attempt_dirs(h, b2, "j2")) == 2
                 and h.state(a[1])["status"] == "failed", 90, "j2's retry after space returned")
        assert eng.writes.problem is None
    finally:
        if hog is not None:
            hog.release()
        h.stop(eng)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with contextlib.suppress(OSError), open(f"/proc/{pid}/stat") as f:
        return f.read().split(") ", 1)[1][0] != "Z"
    return False
