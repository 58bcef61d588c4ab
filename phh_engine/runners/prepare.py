"""Preparing an attempt (`PrepareSteps`, a stage of the local runner), in a worker thread:
workspace, resume base copied, codex_home provisioned (config, a linked auth.json), the
prompt composed and written, output schema and Codex command line, meta.json, then the
spawn under the exit-code wrapper and the `running` state (docs/resume.md, docs/layout.md).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from .. import __version__
from ..models import (
    AttemptMeta,
    AttemptState,
    EnvironmentSnapshot,
    ExecutionPolicy,
    NormalizedStep,
    PolicySnapshot,
    ResumeSource,
    utcnow,
)
from ..models.common import WorkspacePolicy
from ..store.crash import crashpoint, faultpoint
from ..store.files import write_once_bytes, write_once_json, write_state
from ..store.paths import (
    CODEX_HOME,
    EVENTS,
    EXIT_CODE,
    FINAL_JSON,
    FINAL_TXT,
    HANDOFF,
    META,
    OUTPUT_SCHEMA,
    STATE,
    STDERR,
    STDOUT,
)
from ..store.views import AttemptView, BatchView, JobView, StepView
from . import credentials
from . import verify as verification
from .attempt import AttemptPlan, LiveAttempt, RunnerCore, _Watch
from .candidates import candidate_policy, candidate_prompt_suffix, candidate_workdir
from .codex_cli import build_command
from .process import _WRAPPER, _ChildHandle, _Handle
from .workspace import WorkspaceError, copy_tree, resolve_workspace

PROMPT_FILE = "prompt.txt"
_PLACEHOLDER = re.compile(r"\{\{\s*steps\.([A-Za-z0-9._-]+)\.([a-z_]+)\s*\}\}")
_SECRET_ENV = ("CODEX_API_KEY", "OPENAI_API_KEY")

RECOVERY_PROMPT = (
    "Your previous attempt at this task ended before it finished ({reason}). Continue the same "
    "task from where you left off, check what is already done in the working directory, and "
    "finish with the final report."
)



def resolve_placeholders(text: str, job: JobView) -> str:
    """Hand-off by files: `{{steps.<id>.final_json_path}}` and friends (docs/resume.md)."""

    def sub(m: re.Match[str]) -> str:
        step = job.steps.get(m.group(1))
        att = step.latest_successful if step else None
        if att is None:
            return m.group(0)
        field_ = m.group(2)
        if field_ == "final_json_path":
            return str(att.path / FINAL_JSON)
        if field_ == "handoff_path":
            return str(att.path / HANDOFF)
        if field_ == "attempt_dir":
            return str(att.path)
        if field_ == "final_json":
            try:
                return (att.path / FINAL_JSON).read_text()
            except OSError:
                return m.group(0)
        if field_ == "summary":
            return att.report.summary if att.report else ""
        return m.group(0)

    return _PLACEHOLDER.sub(sub, text)


@dataclass(slots=True)
class _Prepared:
    """What the worker-thread half of a start hands back to the loop."""

    state: AttemptState
    meta: AttemptMeta | None = None
    watch: _Watch | None = None
    proc: _Handle | None = None
    error: str | None = None


@dataclass(slots=True)
class _Start:
    """One attempt's start as `LocalRunner._prepare` composes it, step by step."""

    plan: AttemptPlan
    path: Path
    run_id: str
    spec: NormalizedStep
    policy: ExecutionPolicy
    ws_policy: WorkspacePolicy
    workdir: Path
    #: the attempt whose conversation this one continues (resume, same-thread retry)
    source: AttemptView | None = None
    expected_thread: str | None = None
    prompt: str = ""
    schema_obj: dict[str, Any] = field(default_factory=dict)
    argv: list[str] = field(default_factory=list)


class PrepareSteps(RunnerCore):
    """The local runner's first stage: `_prepare` runs in a worker thread and hands back a
    `_Prepared` (the spawned process and its `_Watch`, or why it could not start)."""

    def _prepare(self, plan: AttemptPlan, batch: BatchView, job: JobView, step: StepView,
                 live: LiveAttempt, state: AttemptState, number: int) -> _Prepared:
        """Workspace, resume base, prompt, meta.json, spawn, 'running' state, current.json.
        Runs in a worker thread; touches no view."""
        faultpoint("start")
        try:
            ws_policy, workdir = resolve_workspace(self.layout, batch, job)
            if plan.candidate is not None:  # best-of-N hook: the candidate's own checkout
                workdir = candidate_workdir(self.layout, batch, job, step.step_id,
                                            plan.candidate)
        except WorkspaceError as exc:
            return _Prepared(state, error=str(exc))
        start = _Start(plan=plan, path=live.path, run_id=live.run_id, spec=step.spec,
                       policy=batch.meta.effective_defaults.execution_policy,
                       ws_policy=ws_policy, workdir=workdir)
        if plan.candidate is not None:  # best-of-N hook: candidate_overrides model/effort
            start.policy = candidate_policy(step.spec, plan.candidate, start.policy)
        self._provision(start)
        self._write_prompt(start, job)
        self._write_command(start)
        meta = self._write_meta(start, number)
        crashpoint("after_meta")
        watch = _Watch(
            events_path=start.path / (EVENTS if start.policy.capture_events else STDOUT),
            expected_thread=start.expected_thread, schema=start.schema_obj, workdir=workdir,
            timeout_seconds=start.spec.timeout_seconds,
            capture_git=start.policy.capture_git_artifacts,
            artifacts_expected=list(start.spec.artifacts_expected),
        )
        if live.cancel_requested.is_set():  # canceled while it was being prepared
            return _Prepared(state, meta=meta)  # queued -> canceled, never spawned
        return self._spawn_running(start, live, state, meta, watch)

    def _provision(self, start: _Start) -> None:
        """What the attempt continues (a resume or a same-thread retry) and its codex_home:
        the resume base copied, then auth/config provisioned."""
        plan, spec = start.plan, start.spec
        source = plan.resume.source if plan.resume else None
        if plan.resume_same_thread and plan.retry_of is not None:
            source = plan.retry_of
        if source is not None:
            start.expected_thread = (
                spec.resume_from.codex_thread_id
                if spec.resume_from and spec.resume_from.codex_thread_id and not
                plan.resume_same_thread else source.thread_id
            )
            self._copy_resume_base(source.resume_base_dir, start.path / CODEX_HOME)
        start.source = source
        self._provision_home(start.path / CODEX_HOME)

    def _write_prompt(self, start: _Start, job: JobView) -> None:
        """Compose what the attempt is told and write it once to prompt.txt (Codex's stdin)."""
        plan, spec = start.plan, start.spec
        if plan.trigger == "operator_resume" and plan.extra_prompt:
            prompt = plan.extra_prompt  # a follow-up turn in the same conversation
        else:
            if plan.resume_same_thread and plan.retry_of is not None:
                st = plan.retry_of.state
                prompt = verification.followup_prompt(  # hook: verify (repair, verify_failed)
                    plan, spec.output_schema or self._default_schema_obj, spec.verify
                ) or RECOVERY_PROMPT.format(reason=(st.failure_class if st else None) or "?")
            else:
                prompt = resolve_placeholders(spec.prompt, job)
                if spec.append_prompt:
                    prompt += "\n\n" + resolve_placeholders(spec.append_prompt, job)
                # best-of-N hook: the candidate's own instruction belongs to its first turn
                # only; a follow-up in the same thread (repair, verify retry) carries just
                # its own text, as append_prompt is not repeated there either
                suffix = candidate_prompt_suffix(spec, plan.candidate)
                if suffix:
                    prompt += "\n\n" + suffix
            if plan.extra_prompt:
                prompt += "\n\n" + plan.extra_prompt
        write_once_bytes(start.path / PROMPT_FILE, prompt.encode())
        start.prompt = prompt

    def _write_command(self, start: _Start) -> None:
        """The output schema (the step's own written once, else the default) and the Codex
        command line (`exec`, or `resume` of the expected thread / the last one)."""
        schema_path = self.default_schema
        start.schema_obj = self._default_schema_obj
        if start.spec.output_schema is not None:
            start.schema_obj = start.spec.output_schema
            schema_path = start.path / OUTPUT_SCHEMA
            write_once_json(schema_path, start.schema_obj)
        source, expected_thread = start.source, start.expected_thread
        start.argv = build_command(
            self.codex, start.policy, workdir=start.workdir, schema_path=schema_path,
            final_txt=start.path / FINAL_TXT,
            resume_thread_id=expected_thread if source is not None else None,
            resume_last=source is not None and expected_thread is None,
            extra_args=self.config.codex.extra_args,
        )

    def _write_meta(self, start: _Start, number: int) -> AttemptMeta:
        """meta.json: the write-once record of exactly how this attempt runs."""
        plan, spec, source, path = start.plan, start.spec, start.source, start.path
        resume_src: ResumeSource | None = None
        if source is not None:
            if plan.resume_same_thread:
                resume_src = ResumeSource(step_id=plan.step_id, selector="run_id",
                                          selected_run_id=source.run_id)
            elif plan.resume:
                resume_src = ResumeSource(step_id=plan.resume.step_id,
                                          selector=plan.resume.selector,
                                          selected_run_id=source.run_id)
        meta = AttemptMeta(
            batch_id=plan.batch_id, job_id=plan.job_id, step_id=plan.step_id,
            run_id=start.run_id, runner_id=self.runner_id, run_dir_name=path.name,
            created_at=utcnow(),
            attempt_number=number,
            trigger=plan.trigger,
            invocation="resume" if source is not None else "exec",
            parent_run_id=source.run_id if source is not None else None,
            resume_from=resume_src,
            resume_base_copied_from=str(source.resume_base_dir) if source is not None else None,
            codex_thread_id=start.expected_thread,
            retry_of=plan.retry_of.run_id if plan.retry_of else None,
            candidate=plan.candidate,
            override_nonce=plan.override_nonce,
            prompt_sha256=hashlib.sha256(start.prompt.encode()).hexdigest(),
            prompt_ref=spec.prompt_ref,
            policy_snapshot=PolicySnapshot(execution_policy=start.policy,
                                           timeout_seconds=spec.timeout_seconds,
                                           retry_policy=spec.retry_policy,
                                           verify=spec.verify),  # hook: verify
            command=start.argv,
            environment_snapshot=EnvironmentSnapshot(
                codex_cli_version=self.codex.version, phh_version=__version__, host=self.host,
                node=self.node,
                working_directory=str(start.workdir), workspace_policy=start.ws_policy,
                workspace_root=str(start.workdir),
            ),
        )
        write_once_json(path / META, meta)
        return meta

    def _spawn_running(self, start: _Start, live: LiveAttempt, state: AttemptState,
                       meta: AttemptMeta, watch: _Watch) -> _Prepared:
        """Spawn Codex on prompt.txt (events and stderr appended to their files) and record
        the attempt `running` with its pid. A spawn that fails is an error, not a raise."""
        path = start.path
        if (path / CODEX_HOME / "auth.json").is_symlink():
            src = credentials.source_path(self.config)
            watch.credential = (src, credentials.fingerprint(src))
        try:
            with open(path / PROMPT_FILE, "rb") as stdin, open(watch.events_path, "ab") as out, \
                    open(path / STDERR, "ab") as err:
                proc = self._spawn(path / EXIT_CODE, start.argv, stdin=stdin, stdout=out,
                                   stderr=err, cwd=start.workdir, env=self._env(path / CODEX_HOME))
        except OSError as exc:
            return _Prepared(state, meta=meta, error=f"spawn failed: {exc}")
        crashpoint("after_spawn")
        live.pid = proc.pid
        faultpoint("after_spawn")
        started = utcnow()
        pid_started: float | None = None
        with contextlib.suppress(psutil.Error):
            pid_started = psutil.Process(proc.pid).create_time()
        state = state.model_copy(update={
            "status": "running", "updated_at": started, "started_at": started,
            "last_heartbeat_at": started, "pid": proc.pid, "pid_started_at": pid_started,
            "codex_thread_id": None,
        })
        try:
            write_state(path / STATE, state)
        except OSError as exc:  # Codex runs now: watch it; the next heartbeat writes this
            self.writes.failed(exc, f"the running state of run {start.run_id}")
        # current.json follows once the thread id is known (_monitor), and at the end
        crashpoint("while_running")
        return _Prepared(state, meta=meta, watch=watch, proc=proc)

    def _spawn(self, exit_code_path: Path, argv: list[str], *, stdin: Any, stdout: Any,
               stderr: Any, cwd: Path, env: dict[str, str]) -> _Handle:
        """Start the exit-code wrapper around `argv` as a new session (its pid leads the
        process group a cancel signals). Raises OSError. The Ray node agent overrides this
        to double-fork (runners/ray_node.py)."""
        proc = subprocess.Popen(
            ["/bin/sh", "-c", _WRAPPER, str(exit_code_path), *argv],
            stdin=stdin, stdout=stdout, stderr=stderr, cwd=str(cwd), env=env,
            start_new_session=True,
        )
        return _ChildHandle(proc)

    @staticmethod
    def _copy_resume_base(src_home: Path, dst_home: Path) -> None:
        """Only the conversation files: Codex's SQLite state holds absolute paths to the source
        home, so copying it would make the resume write into the source (docs/codex.md)."""
        src = src_home / "sessions"
        if src.is_dir():
            # reflink where the filesystem can, else copy_file_range; the source is only read
            copy_tree(src, dst_home / "sessions")

    def _provision_home(self, home: Path) -> None:
        home.mkdir(exist_ok=True)
        cfg = self.codex_config_toml
        if cfg is not None and cfg.is_file():
            shutil.copyfile(cfg, home / "config.toml")
        if any(os.environ.get(k) for k in _SECRET_ENV):
            return  # the key reaches Codex through the environment, never through runs/
        # a link, never a copy: Codex writes refreshed tokens through it (temp + rename at
        # the target), so the source stays current and no token lands under runs/
        auth = credentials.source_path(self.config)
        if auth.is_file() and not (home / "auth.json").exists():
            (home / "auth.json").symlink_to(auth)

    @staticmethod
    def _env(home: Path) -> dict[str, str]:
        env = dict(os.environ)
        env["CODEX_HOME"] = str(home)
        return env
