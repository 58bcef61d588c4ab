"""The local runner: executes one run attempt as a Codex subprocess
(docs/architecture.md#the-runner-seam, docs/resume.md).

Codex writes its events straight into `codex.events.jsonl` and a tiny `sh` wrapper writes its
exit code to a file, so nothing depends on a pipe held by this process: an attempt's record
survives the engine. The runner only tails those files.

`LocalRunner` is the Runner protocol (runners/base.py): claim, run, adopt, cancel. An
attempt's run is three stages, each its own module: prepare (runners/prepare.py: workspace,
prompt, codex_home, meta.json, spawn), watch (runners/watch.py: events, heartbeats, timeout,
cancel, lingering) and conclude (runners/conclude.py: classification, report, final state).
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ..models import (
    TERMINAL_STATUSES,
    AttemptState,
    HarnessConfig,
    utcnow,
)
from ..store.candidates import read_marker, write_marker
from ..store.crash import crashpoint, faultpoint
from ..store.diskguard import WriteGuard, describe
from ..store.files import (
    job_lock,
    read_model,
    write_state,
)
from ..store.paths import (
    CODEX_HOME,
    EVENTS,
    OUTPUT_SCHEMA,
    STATE,
    STDOUT,
    Layout,
    attempt_dir_names,
    claim_time,
    new_run_id,
    run_dir_name,
)
from ..store.views import AttemptView, BatchView, JobView, StepView
from . import credentials
from .attempt import AttemptPlan, LiveAttempt, _Watch
from .codex_cli import CodexInfo
from .prepare import PrepareSteps, _Prepared
from .process import _AdoptedHandle
from .watch import WatchSteps

log = logging.getLogger(__name__)


class LocalRunner(PrepareSteps, WatchSteps):
    """Runs attempts as asyncio subprocesses on this host (no thread per run)."""

    def __init__(
        self,
        layout: Layout,
        config: HarnessConfig,
        codex: CodexInfo,
        runner_id: str,
        *,
        default_schema: Path,
        on_change: Callable[[str, str, str, AttemptView], None],
        codex_config_toml: Path | None = None,
    ) -> None:
        self.layout = layout
        self.config = config
        self.codex = codex
        self.runner_id = runner_id
        self.default_schema = default_schema
        self.on_change = on_change
        self.codex_config_toml = codex_config_toml
        self.live: dict[str, LiveAttempt] = {}
        self.host = socket.gethostname()
        self._default_schema_obj = json.loads(default_schema.read_text())
        #: failed store writes (the engine shares its own guard here)
        self.writes = WriteGuard()
        self._pool: ThreadPoolExecutor | None = None
        #: the cluster node this runner's attempts run on (meta.json environment_snapshot.node);
        #: None on a single host. Set by the Ray node agent (runners/ray_node.py).
        self.node: str | None = None
        #: current.json is written by whoever schedules: this runner when it is the engine's
        #: own, the engine when this runner is a cluster node agent (the engine's single writer)
        self.writes_pointers = True

    # ------------------------------------------------- Runner protocol (runners/base.py)
    def slots(self) -> int | None:
        """Attempts this runner can hold at once; None: the config's runner capacity."""
        return None

    def nodes(self) -> list[Any]:
        """Per-node status rows (runners/base.py NodeStatus); a single host has none."""
        return []

    def close(self) -> None:
        """Finish the file work already handed to the worker threads (a canceled attempt's
        end may still be writing its state), then let them go; a later attempt makes new
        ones. Blocks: call it off the loop."""
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=True)

    # ----------------------------------------------------------------- claim
    def claim(self, plan: AttemptPlan) -> tuple[str, Path] | None:
        """Exactly-once: under the job lock, re-check the disk and create the attempt dir.

        Another engine on the same root sees the queued state.json and will not start the step.
        """
        attempts = self.layout.attempts_dir(plan.batch_id, plan.job_id, plan.step_id)
        names: list[str] = []
        with job_lock(self.layout.job_lock(plan.batch_id, plan.job_id)):
            faultpoint("claim")
            if attempts.is_dir():
                for name in attempt_dir_names(attempts):  # stray files are not attempts
                    names.append(name)
                    if plan.known_attempts is not None and name not in plan.known_attempts:
                        return None  # decided without it (another runner's): look again
                    if plan.candidate is not None and \
                            plan.candidate != read_marker(attempts / name):  # best-of-N hook
                        continue  # another candidate index (or a plain attempt)
                    st = read_model(attempts / name / STATE, AttemptState)
                    status = st.status if st else "queued"
                    if status not in TERMINAL_STATUSES:
                        return None
                    if status == "succeeded" and plan.trigger != "operator_resume":
                        return None
            now = utcnow()
            named = claim_time(now, names)  # sorts after every earlier attempt of the step
            run_id = new_run_id(named)
            path = attempts / run_dir_name(named, run_id)
            # built under a hidden name and renamed into place: an attempt directory is born
            # with its state.json, so a crash here leaves only a hidden temp dir, and one
            # without state.json is never an attempt (store/paths.scan_attempts)
            making = attempts / f".claim-{run_id}"
            making.mkdir(parents=True, exist_ok=False)
            try:
                (making / CODEX_HOME).mkdir()
                if plan.candidate is not None:  # best-of-N hook (store/candidates.py)
                    write_marker(making, plan.candidate)
                write_state(making / STATE, self._state(plan, run_id, "queued", now))
                making.rename(path)
            except BaseException:
                shutil.rmtree(making, ignore_errors=True)
                raise
        # registered now, so a cancel between claim and spawn ends it queued -> canceled
        self.live[run_id] = LiveAttempt(plan=plan, run_id=run_id, path=path)
        crashpoint("after_claim")
        return run_id, path

    # ------------------------------------------------------------------ run
    async def run(self, plan: AttemptPlan, batch: BatchView, job: JobView, step: StepView,
                  claimed: tuple[str, Path]) -> AttemptView:
        run_id, path = claimed
        live = self.live.setdefault(run_id, LiveAttempt(plan=plan, run_id=run_id, path=path))
        view = AttemptView(run_id=run_id, dir_name=path.name, path=path,
                           candidate=plan.candidate)
        try:
            return await self._run(plan, batch, job, step, live, view)
        except Exception as exc:  # finalisation is total: any fault still ends the attempt
            return await self._internal_failure(plan, view, live, exc)
        finally:
            self.live.pop(run_id, None)

    def beat_ages(self) -> dict[str, float]:
        """Seconds since each monitored attempt's last heartbeat, on the monotonic clock:
        {run_id: seconds}. A wall-clock jump (resume from sleep) does not age them."""
        now = time.monotonic()
        items: list[tuple[str, LiveAttempt]] = []
        for _ in range(5):  # another thread (the dashboard's) may read while the loop adds
            with contextlib.suppress(RuntimeError):
                items = list(self.live.items())
                break
        return {rid: max(0.0, now - live.beat_mono) for rid, live in items
                if live.beat_mono is not None}

    def cancel(self, run_id: str, reason: str = "canceled") -> bool:
        live = self.live.get(run_id)
        if live is None:
            return False
        live.cancel_reason = reason
        live.cancel_requested.set()
        return True

    async def _run(self, plan: AttemptPlan, batch: BatchView, job: JobView, step: StepView,
                   live: LiveAttempt, view: AttemptView) -> AttemptView:
        state = self._state(plan, live.run_id, "queued", utcnow())
        view.state = state
        self._emit(plan, view)
        number = len(step.attempts) + (0 if step.find(live.run_id) else 1)
        # every file and the spawn in one worker-thread call: the loop stays free for events
        try:
            prep = await self._in_io(self._prepare, plan, batch, job, step, live, state, number)
        except OSError as exc:  # writing the prompt, meta.json, codex_home (before the spawn)
            self.writes.failed(exc, f"the files of run {live.run_id}")
            prep = _Prepared(state, error=f"could not write the attempt's files: "
                             f"{describe(exc)}")
        if prep.meta is not None:
            view.meta = prep.meta
        if prep.error is not None:
            return await self._spawn_failed(plan, view, state, prep.error, prep.meta)
        if prep.proc is None or prep.watch is None:  # canceled while it was being prepared
            now = utcnow()
            why = "shutdown" if live.cancel_reason == "shutdown" else "canceled"
            state = state.model_copy(update={
                "status": "canceled", "updated_at": now, "ended_at": now,
                "termination_reason": why, "failure_class": why,
                "errors": [f"canceled before it started ({live.cancel_reason})"],
            })
            return await self._finalize(plan, view, state)
        view.state = prep.state
        self._emit(plan, view)
        return await self._monitor(plan, view, live, prep.state, prep.proc, prep.watch)

    async def adopt(self, plan: AttemptPlan, view: AttemptView, spec_artifacts: list[str]
                    ) -> AttemptView:
        """Take over an attempt whose Codex outlived a previous engine: tail its files, keep
        its heartbeat, and finalize it with its real exit code when it ends."""
        assert view.meta is not None and view.state is not None
        meta, state = view.meta, view.state
        live = LiveAttempt(plan=plan, run_id=view.run_id, path=view.path, pid=state.pid)
        self.live[view.run_id] = live
        try:
            faultpoint("adopt")
            custom = view.path / OUTPUT_SCHEMA
            snap = meta.policy_snapshot
            watch = _Watch(
                events_path=view.path / (EVENTS if snap.execution_policy.capture_events
                                         else STDOUT),
                expected_thread=meta.codex_thread_id if meta.invocation == "resume" else None,
                schema=json.loads(custom.read_text()) if custom.exists() else
                self._default_schema_obj,
                workdir=Path(meta.environment_snapshot.working_directory),
                timeout_seconds=snap.timeout_seconds, capture_git=snap.execution_policy.
                capture_git_artifacts, artifacts_expected=spec_artifacts,
            )
            if (view.path / CODEX_HOME / "auth.json").is_symlink():
                # the file at its start is unknown: an `auth` end counts as "unchanged" (pause)
                watch.credential = (credentials.source_path(self.config), None)
            elapsed = (utcnow() - (state.started_at or utcnow())).total_seconds()
            return await self._monitor(plan, view, live, state,
                                       _AdoptedHandle(state.pid or 0), watch, elapsed=elapsed)
        except Exception as exc:  # a restart must not crash on the same fault every time
            return await self._internal_failure(plan, view, live, exc)
        finally:
            self.live.pop(view.run_id, None)

    # --------------------------------------------------------------- helpers

