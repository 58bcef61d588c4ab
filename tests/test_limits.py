"""Harness limits (docs/layout.md#harness-config, issue 6): enforced at submit with an error naming
the limit, and
global concurrency also at run time.

Why: an operator's limits protect the host and the store; a Launch Table over a limit must be
refused whole (nothing written) with a message that says which limit and its value, at the
exact boundary (bytes, not characters), and the engine must never run more at once than
`limits.global_concurrency`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import GOAL, Harness, final, step

from phh_engine.interfaces.submit import SubmitError, submit
from phh_engine.models import HarnessConfig, HarnessSettings
from phh_engine.store.files import atomic_write_json
from phh_engine.store.harness_config import materialize
from phh_engine.store.paths import Layout


def table(jobs: list[dict[str, Any]], **kw: Any) -> dict[str, Any]:
    return {"batch_goal_summary": GOAL, "working_root": ".", **kw, "jobs": jobs}


def jobs(n_jobs: int, n_steps: int = 1, prompt: str = "p") -> list[dict[str, Any]]:
    return [{"job_id": f"j{i}", "steps": [{"step_id": f"s{k}", "prompt": prompt}
                                          for k in range(n_steps)]} for i in range(n_jobs)]


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "root")


def configure(layout: Layout, **limits: int) -> HarnessConfig:
    """The operator's settings file (what `phh submit` in another process reads) + snapshot."""
    settings = HarnessSettings.model_validate({"limits": limits})
    atomic_write_json(layout.settings_path, settings.model_dump(mode="json", exclude_none=True))
    return materialize(layout, settings)


def try_submit(layout: Layout, tmp_path: Path, lt: dict[str, Any]) -> SubmitError | str:
    path = tmp_path / "lt.json"
    path.write_text(json.dumps(lt), encoding="utf-8")
    try:
        return submit(layout, path).batch_id
    except SubmitError as exc:
        return exc


def batches_on_disk(layout: Layout) -> list[str]:
    if not layout.runs.is_dir():
        return []
    return [p.name for p in layout.runs.iterdir() if not p.name.startswith(("_", "."))]


def refused(result: SubmitError | str, path: str, *needles: str) -> SubmitError:
    assert isinstance(result, SubmitError), f"expected a refusal, got batch {result}"
    hits = [i for i in result.issues if i.path == path]
    assert hits, f"no issue at {path}: {result}"
    for n in needles:
        assert any(n in i.message for i in hits), f"{n!r} not in {[i.message for i in hits]}"
    return result


def test_max_jobs_per_batch_boundary(layout: Layout, tmp_path: Path) -> None:
    configure(layout, max_jobs_per_batch=2)
    assert isinstance(try_submit(layout, tmp_path, table(jobs(2))), str)
    err = refused(try_submit(layout, tmp_path, table(jobs(3))), "jobs",
                  "3 jobs exceed limits.max_jobs_per_batch = 2", "split the batch")
    assert len(err.issues) == 1
    assert len(batches_on_disk(layout)) == 1  # only the accepted one


def test_max_steps_per_job_boundary(layout: Layout, tmp_path: Path) -> None:
    configure(layout, max_steps_per_job=3)
    assert isinstance(try_submit(layout, tmp_path, table(jobs(1, 3))), str)
    lt = table([*jobs(1, 3), {"job_id": "big", "steps": [
        {"step_id": f"s{k}", "prompt": "p"} for k in range(4)]}])
    refused(try_submit(layout, tmp_path, lt), "jobs[1].steps",
            "4 steps exceed limits.max_steps_per_job = 3")
    assert len(batches_on_disk(layout)) == 1


def test_max_prompt_bytes_counts_utf8_bytes_at_the_boundary(layout: Layout,
                                                              tmp_path: Path) -> None:
    configure(layout, max_prompt_bytes=12)
    ok = "é" * 6  # 6 characters, 12 bytes
    assert isinstance(try_submit(layout, tmp_path, table(jobs(1, prompt=ok))), str)
    over = "é" * 6 + "x"  # 13 bytes, still only 7 characters
    refused(try_submit(layout, tmp_path, table(jobs(1, prompt=over))), "jobs[0].steps[0].prompt",
            "13 bytes", "limits.max_prompt_bytes = 12")


def test_max_prompt_bytes_covers_pack_append_and_prompt_files(layout: Layout,
                                                              tmp_path: Path) -> None:
    configure(layout, max_prompt_bytes=20)
    (tmp_path / "big.md").write_text("y" * 21, encoding="utf-8")
    lt = table([
        {"job_id": "a", "steps": [{"step_id": "s", "prompt_ref": str(tmp_path / "big.md")}]},
        {"job_id": "b", "steps": [{"step_id": "s", "prompt": "0123456789", "pack_id": "p"}]},
        {"job_id": "c", "steps": [{"step_id": "s", "prompt": "0123456789",
                                   "append_prompt": "0123456789"}]},
    ], packs={"p": "0123456789"})
    err = try_submit(layout, tmp_path, lt)
    refused(err, "jobs[0].steps[0].prompt_ref", "21 bytes", "limits.max_prompt_bytes = 20")
    refused(err, "jobs[1].steps[0].prompt", "pack + prompt", "limits.max_prompt_bytes = 20")
    refused(err, "jobs[2].steps[0].prompt", "append_prompt", "limits.max_prompt_bytes = 20")
    assert batches_on_disk(layout) == []


def test_batch_concurrency_above_global_concurrency_is_capped(layout: Layout,
                                                              tmp_path: Path) -> None:
    """Issue 17: the reference harness's users set 10; accepted, capped, and said so."""
    configure(layout, global_concurrency=3)
    path = tmp_path / "lt.json"
    path.write_text(json.dumps(table(jobs(1), concurrency=3)), encoding="utf-8")
    assert submit(layout, path).notes == []
    path.write_text(json.dumps(table(jobs(1), concurrency=4)), encoding="utf-8")
    res = submit(layout, path)
    (note,) = res.notes
    assert note.path == "concurrency"
    assert "limits.global_concurrency = 3" in note.message and "at most 3" in note.message
    meta = json.loads(layout.batch_meta(res.batch_id).read_text())
    assert meta["effective_defaults"]["concurrency"] == 3


def test_every_limit_reported_together_and_nothing_written(layout: Layout,
                                                           tmp_path: Path) -> None:
    configure(layout, max_jobs_per_batch=1, max_steps_per_job=1, max_prompt_bytes=5,
              global_concurrency=2)
    err = try_submit(layout, tmp_path, table(jobs(2, 2, prompt="longer than five"),
                                             concurrency=9))
    assert isinstance(err, SubmitError)
    text = str(err)
    for name in ("limits.max_jobs_per_batch = 1", "limits.max_steps_per_job = 1",
                 "limits.max_prompt_bytes = 5"):
        assert name in text, name
    assert "concurrency" not in text  # over the limit is capped, not refused (issue 17)
    assert batches_on_disk(layout) == []


def test_cli_submit_names_the_limit_and_exits_2(layout: Layout, tmp_path: Path) -> None:
    configure(layout, max_jobs_per_batch=1)
    path = tmp_path / "lt.json"
    path.write_text(json.dumps(table(jobs(2))), encoding="utf-8")
    out = subprocess.run([sys.executable, "-m", "phh_tui.cli", "--root", str(layout.root),
                          "submit", str(path)], capture_output=True, text=True)
    assert out.returncode == 2, out
    assert "jobs: 2 jobs exceed limits.max_jobs_per_batch = 1" in out.stderr
    assert "nothing was written" in out.stderr
    assert batches_on_disk(layout) == []


def _peak(spans: list[tuple[datetime, datetime]]) -> int:
    points = sorted([(s, 1) for s, _ in spans] + [(e, -1) for _, e in spans],
                    key=lambda p: (p[0], p[1]))
    live = peak = 0
    for _, d in points:
        live += d
        peak = max(peak, live)
    return peak


@pytest.mark.codex
def test_global_concurrency_caps_the_engine_below_runner_capacity(harness: Harness) -> None:
    harness.settings.limits.global_concurrency = 2
    harness.settings.runners[0].capacity = 6
    harness.write_settings()
    bid = harness.submit([{"job_id": f"j{i}", "steps": [
        step("s1", {"shell": "sleep 0.4"}, final(f"j{i}"), prompt=f"gc {i}")]}
        for i in range(6)])
    eng = harness.run(timeout=180)
    assert eng.capacity == 2
    spans = []
    for i in range(6):
        (att,) = harness.attempts(bid, f"j{i}", "s1")
        st = harness.state(att)
        assert st["status"] == "succeeded", st
        spans.append((datetime.fromisoformat(st["started_at"]),
                      datetime.fromisoformat(st["ended_at"])))
    assert _peak(spans) <= 2
    assert _peak(spans) == 2, "expected two at once"
