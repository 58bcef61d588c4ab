"""A synthetic runs store: attempt directories laid out as the runner leaves them, written from
phh's own models, with no engine and no Codex. Used by the dashboard's snapshot tests (small,
fixed clock, so the pictures are deterministic) and by `bench/tui.py` (2,000 steps).

Every job has two steps, `diagnose` and `implement` (which resumes `diagnose`). Job *i* plays
story `i % 10`, so any ten consecutive jobs show every state the dashboard can draw.

`AttemptWriter` (an attempt's ids, directory and meta.json) is shared with
`bench/scoreboard.py`, which writes a larger store of its own shape.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from phh_engine.interfaces.submit import submit
from phh_engine.models import (
    AttemptMeta,
    AttemptState,
    AttemptStatus,
    BatchMeta,
    EnvironmentSnapshot,
    ExecutionPolicy,
    FailureClass,
    HarnessSettings,
    NormalizedJob,
    PolicySnapshot,
    ResumeSource,
    RunReport,
    TerminationReason,
    Usage,
)
from phh_engine.store.files import read_model, to_bytes
from phh_engine.store.harness_config import materialize
from phh_engine.store.paths import (
    CODEX_HOME,
    EVENTS,
    FINAL_JSON,
    FINAL_TXT,
    GIT_DIFF,
    META,
    STATE,
    Layout,
    run_dir_name,
)

FIXED_NOW = datetime(2026, 1, 14, 17, 30, 0, tzinfo=UTC)
GOAL = (
    "Synthetic batch for the dashboard: every job diagnoses one small service of the example "
    "workspace and then implements the fix it proposed, continuing the same Codex conversation "
    "with a resume so the agent remembers what it read. A few jobs are still running, one is "
    "silent for so long that it counts as stuck, some failed after spending their retry budget, "
    "one returned a report that does not match the schema, one was canceled by the operator "
    "and the rest succeeded, so that every list of the batch view has rows to show. Nothing "
    "here ran a real agent: the attempt directories were written by phh_tui.synthetic from "
    "phh's own models with a fixed clock, which keeps the snapshot pictures stable from one "
    "run of the test suite to the next and lets the benchmark build two thousand steps in a "
    "couple of seconds without spawning a single process or talking to any model at all."
)
STORIES = (
    "succeeded", "implement_running", "diagnose_running", "failed", "needs_attention",
    "retried", "ready", "canceled", "stuck", "succeeded",
)
_USAGE = Usage(input_tokens=22014, cached_input_tokens=11007, output_tokens=412)


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)


def _events(command: str, *, message: str | None, usage: Usage | None,
            error: str | None = None, thread: str) -> bytes:
    evs: list[dict[str, Any]] = [
        {"type": "thread.started", "thread_id": thread},
        {"type": "turn.started"},
        {"type": "item.completed", "item": {"id": "item_0", "type": "reasoning",
                                            "text": "Looking at the workspace first."}},
        {"type": "item.started", "item": {"id": "item_1", "type": "command_execution",
                                          "command": f"/bin/bash -lc '{command}'",
                                          "aggregated_output": "", "exit_code": None,
                                          "status": "in_progress"}},
        {"type": "item.completed", "item": {"id": "item_1", "type": "command_execution",
                                            "command": f"/bin/bash -lc '{command}'",
                                            "aggregated_output": "README.md\nsrc\ntests\n",
                                            "exit_code": 0, "status": "completed"}},
        {"type": "item.completed", "item": {"id": "item_2", "type": "file_change",
                                            "changes": [{"path": "notes.txt", "kind": "add"}],
                                            "status": "completed"}},
    ]
    if error:
        evs.append({"type": "error", "message": error})
        evs.append({"type": "turn.failed", "error": {"message": error}})
    if message:
        evs.append({"type": "item.completed", "item": {"id": "item_3", "type": "agent_message",
                                                       "text": message}})
    if usage:
        evs.append({"type": "turn.completed", "usage": usage.model_dump()})
    return b"".join(json.dumps(e, separators=(",", ":")).encode() + b"\n" for e in evs)


Parent = tuple[str, Path, str]
"""The attempt a resume continues: (run_id, attempt directory, Codex thread id)."""


class AttemptWriter:
    """Starts attempts as the runner does: a run id, the Codex thread (the parent's when
    resuming, else a new one), the attempt directory's path and meta.json's AttemptMeta.
    Subclasses write the directory. The class attributes are the environment the attempts say
    they ran in."""

    codex_cli_version = "0.130.0"
    phh_version = "0.1.0"
    host = "synthetic-host"

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.seq = 0

    def exec_options(self, job: NormalizedJob, policy: ExecutionPolicy) -> list[str]:
        """The `codex exec` options before `-o` in meta.json's command."""
        return ["--json", "-C", job.working_directory, "--color", "never",
                "--sandbox", policy.sandbox]

    def new_attempt(self, meta: BatchMeta, job_index: int, step_index: int, *,
                    started: datetime, parent: Parent | None = None,
                    retry_of: str | None = None,
                    number: int = 1) -> tuple[AttemptMeta, Path, str]:
        """The next attempt's AttemptMeta, its directory (not created yet) and thread id."""
        job = meta.jobs[job_index]
        step = job.steps[step_index]
        self.seq += 1
        run_id = f"r{self.seq:012x}"
        thread = parent[2] if parent else f"0199aaaa-0000-7000-8000-{self.seq:012x}"
        path = self.layout.attempts_dir(meta.batch_id, job.job_id, step.step_id) / run_dir_name(
            started, run_id)
        policy = meta.effective_defaults.execution_policy
        argv = ["codex", "exec", *self.exec_options(job, policy), "-o", str(path / FINAL_TXT)]
        if parent:
            argv += ["resume", thread]
        am = AttemptMeta(
            batch_id=meta.batch_id, job_id=job.job_id, step_id=step.step_id, run_id=run_id,
            runner_id="local", run_dir_name=path.name, created_at=started,
            attempt_number=number, trigger="retry" if retry_of else "scheduled",
            invocation="resume" if parent else "exec",
            parent_run_id=parent[0] if parent else None,
            resume_from=ResumeSource(step_id=job.steps[0].step_id, selector="latest_successful",
                                     selected_run_id=parent[0]) if parent else None,
            resume_base_copied_from=str(parent[1] / CODEX_HOME) if parent else None,
            codex_thread_id=thread if parent else None, retry_of=retry_of,
            prompt_sha256=step.prompt_sha256,
            policy_snapshot=PolicySnapshot(execution_policy=policy,
                                           timeout_seconds=step.timeout_seconds,
                                           retry_policy=step.retry_policy),
            command=[*argv, "-"],
            environment_snapshot=EnvironmentSnapshot(
                codex_cli_version=self.codex_cli_version, phh_version=self.phh_version,
                host=self.host, working_directory=job.working_directory,
                workspace_policy=job.workspace_policy, workspace_root=job.working_directory),
        )
        return am, path, thread


class SyntheticStore(AttemptWriter):
    """Writes one batch and its attempts; `now` fixes every timestamp."""

    def __init__(self, root: Path, now: datetime = FIXED_NOW) -> None:
        super().__init__(Layout(root))
        self.root = root
        self.now = now

    def batch(self, jobs: int, batch_id: str = "batch_synthetic",
              submitted_at: datetime | None = None, stories: tuple[str, ...] = STORIES) -> str:
        workspace = self.root / "workspace"
        workspace.mkdir(parents=True, exist_ok=True)
        if not self.layout.harness_config.exists():
            materialize(self.layout, HarnessSettings())
        table = {
            "batch_id": batch_id,
            "batch_goal_summary": GOAL,
            "working_root": str(workspace),
            "allow_shared_directory_concurrency": True,
            "retries": {"max_attempts": 2, "backoff_seconds": 30},
            # the needs_attention story ends schema_invalid for good, not with a repair due
            "repair_turns": 0,
            "jobs": [
                {"job_id": f"job_{i:04d}", "steps": [
                    {"step_id": "diagnose", "prompt": f"Diagnose service {i}."},
                    {"step_id": "implement", "prompt": f"Implement the fix for service {i}.",
                     "resume_from": {"step_id": "diagnose"}},
                ]} for i in range(jobs)
            ],
        }
        when = submitted_at or self.now - timedelta(hours=1)
        submit(self.layout, table, now=when)
        meta = read_model(self.layout.batch_meta(batch_id), BatchMeta)
        assert meta is not None
        base = when + timedelta(minutes=1)
        for i in range(len(meta.jobs)):
            self._story(meta, i, stories[i % len(stories)], base + timedelta(seconds=i))
        return batch_id

    # ------------------------------------------------------------------ stories
    def _story(self, meta: BatchMeta, i: int, story: str, t: datetime) -> None:
        def a(step: int, status: AttemptStatus, **kw: Any) -> tuple[str, Path, str]:
            return self.attempt(meta, i, step, status, **kw)

        if story == "succeeded":
            d = a(0, "succeeded", started=t)
            a(1, "succeeded", started=t + timedelta(minutes=2), parent=d, diff=True)
        elif story == "implement_running":
            d = a(0, "succeeded", started=t)
            a(1, "running", started=self.now - timedelta(minutes=3), parent=d)
        elif story == "diagnose_running":
            a(0, "running", started=self.now - timedelta(seconds=95))
        elif story == "failed":
            r = a(0, "failed", started=t, failure_class="model_error")
            a(0, "failed", started=t + timedelta(minutes=2), failure_class="model_error",
              retry_of=r[0], number=2)
        elif story == "needs_attention":
            a(0, "needs_attention", started=t, failure_class="schema_invalid")
        elif story == "retried":
            r = a(0, "failed", started=t, failure_class="model_error")
            d = a(0, "succeeded", started=t + timedelta(minutes=2), retry_of=r[0], number=2)
            a(1, "succeeded", started=t + timedelta(minutes=4), parent=d, diff=True)
        elif story == "canceled":
            d = a(0, "succeeded", started=t)
            a(1, "canceled", started=t + timedelta(minutes=2), parent=d)
        elif story == "stuck":
            a(0, "running", started=self.now - timedelta(hours=2),
              heartbeat=self.now - timedelta(minutes=75))
        # "ready": no attempts at all

    def attempt(self, meta: BatchMeta, job_index: int, step_index: int,
                status: AttemptStatus, *, started: datetime, parent: Parent | None = None,
                failure_class: FailureClass | None = None, retry_of: str | None = None,
                number: int = 1, heartbeat: datetime | None = None,
                diff: bool = False) -> tuple[str, Path, str]:
        """One attempt directory; returns (run_id, path, thread id)."""
        am, path, thread = self.new_attempt(meta, job_index, step_index, started=started,
                                            parent=parent, retry_of=retry_of, number=number)
        run_id = am.run_id
        job = meta.jobs[job_index]
        step = job.steps[step_index]
        terminal = status not in ("queued", "running")
        ended = started + timedelta(seconds=42 + job_index % 7) if terminal else None
        (path / CODEX_HOME).mkdir(parents=True)
        if terminal and status != "canceled":
            (path / CODEX_HOME / "sessions").mkdir()
        report: RunReport | None = None
        if status in ("succeeded", "failed"):
            report = RunReport(
                schema_version="1.0.0", status="ok" if status == "succeeded" else "failed",
                summary=f"{job.job_id}/{step.step_id}: "
                        + ("fix applied and tests pass" if step_index else "findings written"),
                files_read=["README.md"], files_written=["notes.txt"], artifacts=[])
        errors: list[str] = []
        reason: TerminationReason | None = "exit" if terminal else None
        exit_code: int | None = 0 if terminal else None
        if failure_class == "model_error":
            errors = ["stream disconnected before completion: 500 Internal Server Error"]
            reason, exit_code, report = "exit", 1, None
        elif failure_class == "schema_invalid":
            errors = ["final.txt is not valid JSON: Expecting value: line 1 column 1"]
            reason = "schema_invalid"
        elif status == "canceled":
            reason, exit_code = "canceled", None
        usage = _USAGE if status in ("succeeded", "needs_attention") else Usage()
        beat = heartbeat or (self.now - timedelta(seconds=12) if not terminal else ended)
        item = "$ ls -la" if not terminal else None
        state = AttemptState(
            batch_id=meta.batch_id, job_id=job.job_id, step_id=step.step_id, run_id=run_id,
            runner_id="local", status=status,
            updated_at=ended or beat or started, started_at=started, ended_at=ended,
            last_heartbeat_at=beat, last_event_at=beat, current_item=item,
            pid=None, exit_code=exit_code, termination_reason=reason,
            failure_class=failure_class,
            codex_thread_id=thread, turn_completed=status == "succeeded", usage=usage,
            errors=errors,
        )
        _write(path / META, to_bytes(am))
        _write(path / STATE, to_bytes(state))
        message = report.model_dump_json() if report else (
            "Sure! Here is my report: all good." if failure_class == "schema_invalid" else None)
        _write(path / EVENTS, _events(
            "ls -la", message=message, usage=usage if terminal and usage.input_tokens else None,
            error=errors[0] if failure_class == "model_error" else None, thread=thread))
        if report is not None:
            _write(path / FINAL_JSON, to_bytes(report))
        if message is not None:
            _write(path / FINAL_TXT, message.encode())
        if diff:
            _write(path / GIT_DIFF, (
                f"diff --git a/fix_{job_index:04d}.txt b/fix_{job_index:04d}.txt\n"
                "new file mode 100644\n"
                "index 0000000..3b18e51\n"
                "--- /dev/null\n"
                f"+++ b/fix_{job_index:04d}.txt\n"
                "@@ -0,0 +1,2 @@\n"
                f"+fix applied for service {job_index}\n"
                "+tests: 12 passed\n"
                "diff --git a/src/service.py b/src/service.py\n"
                "index 83db48f..bf269f4 100644\n"
                "--- a/src/service.py\n"
                "+++ b/src/service.py\n"
                "@@ -1,4 +1,4 @@\n"
                " def handler(request):\n"
                "-    return request.body\n"
                "+    return request.body or b\"\"\n"
                " \n"
            ).encode())
        return run_id, path, thread


def build(root: Path, jobs: int = 10, now: datetime = FIXED_NOW,
          batch_id: str = "batch_synthetic") -> str:
    """A root with one synthetic batch of `jobs` jobs (2 steps each); returns the batch id."""
    return SyntheticStore(root, now).batch(jobs, batch_id=batch_id)
