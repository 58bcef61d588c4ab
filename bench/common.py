"""What the benchmark scripts share: the fake `codex`, `phh init` + `phh submit` of a batch of
two-step jobs through the CLI entry point, and small measuring helpers.

Imported as `common`: `python bench/X.py` puts bench/ first on sys.path. The importing script
puts the checkout on sys.path before it imports this module (phh need not be installed).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import resource
from pathlib import Path
from typing import Any

from phh_tui import cli

BENCH = Path(__file__).resolve().parent
FAKE_CODEX = BENCH / "fake_codex"


def cli_json(*argv: str) -> Any:
    """`phh ARGV` in this process (its entry point, `cli.main`); its `--json` output, parsed."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = cli.main(list(argv))
    if rc != 0:
        raise SystemExit(f"phh {' '.join(argv)} exited {rc}:\n{buf.getvalue()}")
    return json.loads(buf.getvalue())


def submit_two_step_jobs(root: Path, jobs: int, *, goal: str, prompt: str,
                         **settings: Any) -> dict[str, Any]:
    """`phh init` + `phh submit` of `jobs` jobs `job_00000`... with two steps each, `step1` and
    `step2` (which resumes step1), both with `prompt`; working root `root/work`. `settings` are
    more Launch Table fields (retries, execution_policy, ...). Returns what submit printed."""
    (root / "work").mkdir(parents=True)
    cli_json("--root", str(root), "init", "--json")
    table = {
        "spec_version": "1.0.0",
        "batch_goal_summary": goal,
        "working_root": "work",
        "allow_shared_directory_concurrency": True,
        **settings,
        "jobs": [
            {"job_id": f"job_{i:05d}", "steps": [
                {"step_id": "step1", "prompt": prompt},
                {"step_id": "step2", "prompt": prompt, "resume_from": {"step_id": "step1"}},
            ]}
            for i in range(jobs)
        ],
    }
    path = root / "launch_table.json"
    path.write_text(json.dumps(table))
    res: dict[str, Any] = cli_json("--root", str(root), "submit", str(path), "--json")
    if len(res["accepted_job_ids"]) != jobs:
        raise SystemExit(f"submit accepted {len(res['accepted_job_ids'])} of {jobs} jobs")
    return res


def cpu_seconds(who: int) -> float:
    """User + system CPU time of `who` (resource.RUSAGE_SELF or RUSAGE_CHILDREN)."""
    r = resource.getrusage(who)
    return r.ru_utime + r.ru_stime


def busy_cpu_seconds() -> float:
    """CPU seconds every CPU of this machine has spent busy so far (not idle, not waiting for
    I/O), whoever ran: the difference over a phase says how much of the machine it used."""
    import psutil

    t = psutil.cpu_times()
    return sum(t) - t.idle - getattr(t, "iowait", 0.0)


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, as `0.42 0.37 0.30` ("?" where there are none)."""
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"
