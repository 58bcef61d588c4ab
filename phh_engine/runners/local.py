"""The local runner: executes one run attempt as a Codex subprocess
(docs/architecture.md#the-runner-seam, docs/resume.md).

Codex writes its events straight into `codex.events.jsonl` and a tiny `sh` wrapper writes its
exit code to a file, so nothing depends on a pipe held by this process: an attempt's record
survives the engine. The runner only tails those files.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import psutil
from pydantic import ValidationError

from .. import __version__
from ..derive.readiness import ResumeResolution
from ..models import (
    TERMINAL_STATUSES,
    AttemptMeta,
    AttemptState,
    AttemptStatus,
    EnvironmentSnapshot,
    ExecutionPolicy,
    FailureClass,
    HarnessConfig,
    NormalizedStep,
    PolicySnapshot,
    ResumeSource,
    RunReport,
    TerminationReason,
    Trigger,
    Usage,
    utcnow,
)
from ..models.common import WorkspacePolicy
from ..store.candidates import read_marker, write_marker
from ..store.crash import crashpoint, faultpoint
from ..store.diskguard import WriteGuard, describe, retry_writes
from ..store.events import EventFacts, EventTail
from ..store.files import (
    TerminalStateError,
    job_lock,
    read_model,
    write_once_bytes,
    write_once_json,
    write_state,
)
from ..store.paths import (
    CODEX_HOME,
    EVENTS,
    EXIT_CODE,
    FILES_TOUCHED,
    FINAL_JSON,
    FINAL_TXT,
    GIT_DIFF,
    GIT_HEAD,
    GIT_STATUS,
    HANDOFF,
    INTERNAL_LOG,
    META,
    OUTPUT_SCHEMA,
    STATE,
    STDERR,
    STDOUT,
    Layout,
    attempt_dir_names,
    claim_time,
    new_run_id,
    run_dir_name,
    run_id_of,
)
from ..store.pointers import update_current
from ..store.views import AttemptView, BatchView, JobView, StepView
from . import credentials
from .candidates import candidate_policy, candidate_prompt_suffix, candidate_workdir
from .codex_cli import CodexInfo, build_command
from .doctor import startup_error_line
from .gitcmd import git_argv, git_env
from .workspace import WorkspaceError, copy_tree, resolve_workspace

# `trap :` keeps the wrapper alive through SIGINT/SIGTERM (the child still gets them, as
# caught handlers reset on exec) so it can record the exit code; only SIGKILL loses it.
# The code is one write of a few bytes by the printf builtin, not temp + `mv`: a reader
# sees no file, an empty one (treated as "not recorded", like none) or the whole number,
# and the wrapper spawns no process of its own.
_WRAPPER = 'trap : INT TERM HUP; "$@"; rc=$?; printf "%s\\n" "$rc" > "$0"; exit "$rc"'
log = logging.getLogger(__name__)

PROMPT_FILE = "prompt.txt"
STATE_WRITE_MIN_INTERVAL = 1.0
#: a change of wall-minus-monotonic this large between two monitor wakes is a clock jump
CLOCK_JUMP_SECONDS = 5.0
_PLACEHOLDER = re.compile(r"\{\{\s*steps\.([A-Za-z0-9._-]+)\.([a-z_]+)\s*\}\}")
_SECRET_ENV = ("CODEX_API_KEY", "OPENAI_API_KEY")

RECOVERY_PROMPT = (
    "Your previous attempt at this task ended before it finished ({reason}). Continue the same "
    "task from where you left off, check what is already done in the working directory, and "
    "finish with the final report."
)


@dataclass(slots=True)
class AttemptPlan:
    """What the scheduler decided: which step, why, and where a resume copies from."""

    batch_id: str
    job_id: str
    step_id: str
    runner_id: str
    trigger: Trigger = "scheduled"
    retry_of: AttemptView | None = None
    resume: ResumeResolution | None = None
    resume_same_thread: bool = False
    extra_prompt: str | None = None
    override_nonce: str | None = None
    #: best-of-N: the candidate index this attempt runs (runners/candidates.py)
    candidate: int | None = None


@dataclass(slots=True)
class Outcome:
    status: AttemptStatus
    termination_reason: TerminationReason
    failure_class: FailureClass | None = None


@dataclass(slots=True)
class LiveAttempt:
    """Book-keeping for one running attempt, for cancel and status queries."""

    plan: AttemptPlan
    run_id: str
    path: Path
    pid: int | None = None
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str = "canceled"
    #: time.monotonic() of its last heartbeat (ages in this process ignore wall-clock jumps)
    beat_mono: float | None = None


# Status codes as whole numbers only: a URL's port (127.0.0.1:42913) or a request id in the
# same text must not read as HTTP 429 or 500. The texts are what Codex 0.169 prints for each
# API answer (docs/codex.md; tests/test_failure_classes.py drives them through the real binary).
# An account/plan usage limit ("You've hit your usage limit. Try again at 2:14 PM.") or an
# exhausted quota: waiting for the reset is the only cure, so the root pauses its starts.
_USAGE_LIMITED = re.compile(r"usage limit|usage_limit_reached|insufficient_quota|quota")
_CONTEXT_EXHAUSTED = re.compile(r"context_length_exceeded|ran out of room in the model's "
                                r"context window|exceeds the context window")
_RATE_LIMITED = re.compile(r"\b429\b|rate limit|rate_limit|too many requests")
# A request the API refuses as such (4xx other than 401/403 auth and 429 limits): sending it
# again gets the same answer. Codex prints the API's JSON error body (`invalid_request_error`,
# `invalid_json_schema`), its message, or "unexpected status 400 Bad Request: ...".
_INVALID_REQUEST = re.compile(r"invalid_request_error|invalid_json_schema|"
                              r"\b(?:status|last status:?) (?:400|404|405|409|413|415|422)\b|"
                              r"\b(?:400 bad request|404 not found|422 unprocessable)|"
                              r"model_not_found|\bmodel\b[^.]*\bdoes not exist")
# Codex's refresh failures ("...could not be refreshed because your refresh token was already
# used / has expired / was revoked. Please log out and sign in again.") and a provider's 401
_AUTH = re.compile(r"could not be refreshed|refresh token (?:was already used|has expired|"
                   r"was revoked)|sign in again|refresh_token_(?:reused|expired|invalidated)|"
                   r"\b401\b|unauthorized")
_MODEL_ERROR = re.compile(r"\b50[0234]\b|stream disconnected|high demand|"
                          r"internal server error|server_error")


def failure_class_of_text(text: str, turn_failed: bool = False) -> FailureClass:
    """The failure class a failed turn's text names (events' errors, `turn.failed`, stderr
    tail), most specific first; `model_error` for an unexplained failed turn, else
    `nonzero_exit`."""
    text = text.lower()
    if _USAGE_LIMITED.search(text):
        return "usage_limited"
    if _CONTEXT_EXHAUSTED.search(text):
        return "context_exhausted"
    if _RATE_LIMITED.search(text):
        return "rate_limited"
    if _INVALID_REQUEST.search(text):
        return "invalid_request"
    if turn_failed or _MODEL_ERROR.search(text):
        return "model_error"
    return "nonzero_exit"


def record_runner_lost(layout: Layout, batch_id: str, job_id: str, path: Path,
                       state: AttemptState, why: str, exit_code: int | None = None
                       ) -> AttemptState:
    """Write an in-flight attempt's terminal `failed` / `runner_lost` state under the job lock
    (docs/failure-classes.md#recovery) and refresh current.json. A terminal state written
    first by someone else wins (one terminal status, ever); returns what is on disk."""
    now = utcnow()
    st = state
    with job_lock(layout.job_lock(batch_id, job_id)):
        try:
            if st.status == "queued":
                st = st.model_copy(update={"status": "running", "started_at": now,
                                           "updated_at": now})
                write_state(path / STATE, st)
            final = st.model_copy(update={
                "status": "failed", "updated_at": now, "ended_at": now,
                "exit_code": exit_code, "termination_reason": "runner_lost",
                "failure_class": "runner_lost", "errors": [*st.errors[-19:], why],
            })
            write_state(path / STATE, final)
        except TerminalStateError:
            final = read_model(path / STATE, AttemptState) or st
        update_current(layout, batch_id, job_id, locked=True)
    return final


def classify(
    *,
    exit_code: int | None,
    facts: EventFacts,
    report: RunReport | None,
    report_error: str | None,
    canceled: bool,
    timed_out: bool,
    thread_mismatch: str | None,
    stderr_tail: str = "",
    cancel_reason: str | None = None,
    lingered: bool = False,
) -> Outcome:
    """Attempt status from everything observed. Success needs exit 0, turn.completed and a
    schema-valid report (docs/codex.md: Codex may exit 0 after a failed turn). A cancel for
    `cancel_reason="shutdown"` (the engine stopping) is class `shutdown`, retried by the
    next engine; any other cancel is the operator's `canceled`. `lingered`: phh ended a
    process that stayed up after turn.completed with a valid final message, so its exit code
    is phh's signal, not Codex's verdict."""
    if canceled:
        if cancel_reason == "shutdown":
            return Outcome("canceled", "shutdown", "shutdown")
        return Outcome("canceled", "canceled", "canceled")
    if timed_out:
        return Outcome("failed", "timeout", "timeout")
    if thread_mismatch:
        return Outcome("failed", "thread_mismatch", "thread_mismatch")
    if (exit_code != 0 and not lingered) or not facts.turn_completed or facts.turn_failed:
        # auth from Codex's own messages only: its stderr also logs refresh failures it
        # recovered from (another process's refresh, re-read from the file)
        if _AUTH.search(" ".join([facts.turn_failed or "", *facts.errors]).lower()):
            fc: FailureClass | None = "auth"
        else:
            # the failed turn's own message first: non-terminal `error` events (reconnects,
            # warnings) must not override what actually ended the turn
            fc = failure_class_of_text(facts.turn_failed, True) if facts.turn_failed else None
        if fc in (None, "model_error"):
            text = " ".join([facts.turn_failed or "", *facts.errors, stderr_tail])
            fc = failure_class_of_text(text, bool(facts.turn_failed))
        reason: TerminationReason = "exit" if exit_code is not None else "killed"
        return Outcome("failed", reason, fc)
    if report is None:
        return Outcome("needs_attention", "schema_invalid", "schema_invalid")
    if report.status == "failed":
        return Outcome("failed", "agent_reported_failure", "agent_reported_failure")
    if report.status == "needs_attention":
        return Outcome("needs_attention", "agent_reported_needs_attention",
                       "agent_reported_failure")
    return Outcome("succeeded", "lingered" if lingered and exit_code != 0 else "exit")


_VALIDATORS: dict[str, Any] = {}


def _validator(schema: dict[str, Any]) -> Any:
    """A checked validator per distinct schema: `jsonschema.validate` re-checks the schema
    itself on every call, which was the largest single cost of finalising an attempt."""
    key = json.dumps(schema, sort_keys=True)
    v = _VALIDATORS.get(key)
    if v is None:
        cls = jsonschema.validators.validator_for(schema)
        cls.check_schema(schema)
        v = _VALIDATORS[key] = cls(schema)
    return v


def validate_report(text: str, schema: dict[str, Any]) -> tuple[RunReport | None,
                                                                  dict[str, Any] | None,
                                                                  str | None]:
    """(report for the default schema, raw object, error). Custom schemas yield no RunReport."""
    if not text.strip():
        return None, None, "no final message (final.txt empty or missing)"
    # Any exception while reading the agent's text is a bad report, never a stuck attempt:
    # `json.loads` raises RecursionError (not ValueError) on deep nesting such as "[" * 50000.
    try:
        faultpoint("report_parse")
        obj = json.loads(text)
    except RecursionError:
        return None, None, "final message is not JSON phh accepts: nested too deep"
    except ValueError as exc:
        return None, None, f"final message is not JSON: {exc}"
    except Exception as exc:
        return None, None, f"final message could not be read: {type(exc).__name__}: {exc}"
    try:
        _validator(schema).validate(obj)
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "$"
        return None, None, f"final message does not match the schema at {where}: {exc.message}"
    except RecursionError:
        return None, None, "final message is nested too deep to check against the schema"
    try:
        return RunReport.model_validate(obj), obj, None
    except (ValidationError, RecursionError):
        return None, obj, None


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


def _tail_text(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def kill_group(pid: int, sig: int) -> None:
    """Signal the process group an attempt's wrapper leads (its pid: a new session)."""
    if pid <= 1:  # never signal our own group (killpg(0)) or init
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_tree(pid: int, sig: int) -> None:
    """Signal a process group and every descendant found by walking the tree: agent commands
    can run in their own session, outside the group (docs/codex.md)."""
    if pid <= 1:  # no walk of init's tree or ours (kill_group refuses those too)
        return
    victims: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        victims = psutil.Process(pid).children(recursive=True)
    kill_group(pid, sig)
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


@dataclass(slots=True)
class _Prepared:
    """What the worker-thread half of a start hands back to the loop."""

    state: AttemptState
    meta: AttemptMeta | None = None
    watch: _Watch | None = None
    proc: _Handle | None = None
    error: str | None = None


@dataclass(slots=True)
class _Watch:
    """What monitoring and finalisation need, whether we spawned the process or adopted it."""

    events_path: Path
    expected_thread: str | None
    schema: dict[str, Any]
    workdir: Path
    timeout_seconds: float
    capture_git: bool
    artifacts_expected: list[str]
    #: the linked credential file and its fingerprint when Codex started (credentials.py)
    credential: tuple[Path, str | None] | None = None


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


class _Handle:
    pid: int

    async def wait(self) -> int | None:
        raise NotImplementedError


class _ChildHandle(_Handle):
    """Our own child, waited on through a pidfd on the loop: Python 3.11's default asyncio
    child watcher costs a thread per child, which dominated the engine's CPU per attempt."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._rc: int | None = None
        self._done: asyncio.Future[int | None] | None = None

    async def wait(self) -> int | None:
        if self._done is None:
            self._done = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._done)

    async def _wait(self) -> int | None:
        try:
            fd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):  # no pidfds: wait in a worker thread
            return await asyncio.to_thread(self.proc.wait)
        await _exited(fd)
        return self.proc.wait()  # exited: reaps at once


class _AdoptedHandle(_Handle):
    """A process we did not spawn (left by a previous engine): no waitpid, so watch a pidfd
    (readable when it exits); fall back to polling where pidfds are unavailable."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    async def wait(self) -> int | None:
        if self.pid <= 0:
            return None  # it already ended (its exit code is on disk)
        try:
            fd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            while _pid_running(self.pid):
                await asyncio.sleep(0.5)
            return None
        await _exited(fd)
        return None


async def _exited(pidfd: int) -> None:
    """Wait on the loop until a pidfd is readable (its process exited); closes it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, wake)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _pid_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


T = TypeVar("T")

#: Worker threads for the attempts' file work (start, end, current.json). Few on purpose:
#: every blocking call in them releases and retakes the GIL, and each extra thread contending
#: for it costs futex hand-offs and context switches. Measured (bench/README.md): 6 threads
#: (asyncio's default pool here) 4.1 ms of system CPU per attempt, 2 threads 3.0 ms, same
#: wall time. Two keep one file-system wait (an fsync) from stalling every start and end.
IO_THREADS = 2


class LocalRunner:
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

    async def _in_io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the attempts' own worker threads (IO_THREADS)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="phh-attempt-io")
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(fn, *args, **kwargs))

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
            path.mkdir(parents=True, exist_ok=False)
            try:
                (path / CODEX_HOME).mkdir()
                if plan.candidate is not None:  # best-of-N hook (store/candidates.py)
                    write_marker(path, plan.candidate)
                write_state(path / STATE, self._state(plan, run_id, "queued", now))
            except BaseException:
                # a dir without state.json reads as queued and would block the step forever
                shutil.rmtree(path, ignore_errors=True)
                raise
        # registered now, so a cancel between claim and spawn ends it queued -> canceled
        self.live[run_id] = LiveAttempt(plan=plan, run_id=run_id, path=path)
        crashpoint("after_claim")
        return run_id, path

    def _state(self, plan: AttemptPlan, run_id: str, status: AttemptStatus, now: datetime,
               **kw: Any) -> AttemptState:
        return AttemptState(
            batch_id=plan.batch_id, job_id=plan.job_id, step_id=plan.step_id, run_id=run_id,
            runner_id=self.runner_id, status=status, updated_at=now, **kw,
        )

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

    def _emit(self, plan: AttemptPlan, view: AttemptView) -> None:
        self.on_change(plan.batch_id, plan.job_id, plan.step_id, view)

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
                prompt = RECOVERY_PROMPT.format(reason=(st.failure_class if st else None) or "?")
            else:
                prompt = resolve_placeholders(spec.prompt, job)
                if spec.append_prompt:
                    prompt += "\n\n" + resolve_placeholders(spec.append_prompt, job)
            if plan.extra_prompt:
                prompt += "\n\n" + plan.extra_prompt
            suffix = candidate_prompt_suffix(spec, plan.candidate)  # best-of-N hook
            if suffix:
                prompt += "\n\n" + suffix
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
                                           retry_policy=spec.retry_policy),
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

    async def _monitor(self, plan: AttemptPlan, view: AttemptView, live: LiveAttempt,
                       state: AttemptState, proc: _Handle, watch: _Watch,
                       elapsed: float = 0.0) -> AttemptView:
        """Watch one attempt's process until it ends (events, heartbeats, timeout, cancel,
        a Codex lingering after its report), then conclude it. `elapsed`: seconds it ran
        before this engine took it over."""
        w = self._watching(live, state, proc, watch, elapsed)
        while not await self._observe(w, live, watch):
            await self._enforce(w, view.path, live, proc, watch)
            await self._beat(w, plan, view, live)
        await self._stop_watching(w, proc)
        crashpoint("before_finalize")
        return await self._finish(w, plan, view, live, watch)

    def _watching(self, live: LiveAttempt, state: AttemptState, proc: _Handle, watch: _Watch,
                  elapsed: float) -> _Watching:
        loop = asyncio.get_running_loop()
        hb = self.config.codex.heartbeat_seconds
        t0 = loop.time()
        live.beat_mono = t0
        return _Watching(
            state=state, tail=EventTail(watch.events_path), hb=hb,
            deadline=t0 + watch.timeout_seconds - elapsed,
            # a started attempt's 'running' state already carries its first heartbeat; an
            # adopted one beats at once (the engine that wrote its last beat is gone)
            next_beat=t0 + hb if elapsed == 0.0 else t0,
            last_write=t0,
            # wall minus monotonic: when it moves (sleep/resume, NTP step), beat at once so
            # the heartbeat others read from state.json is fresh on the new wall clock
            wall_skew=utcnow().timestamp() - t0,
            waiter=asyncio.ensure_future(proc.wait()),
            canceller=asyncio.ensure_future(live.cancel_requested.wait()),
            # Codex that stays up after turn.completed with a valid final message (seen in
            # the wild) is ended after a short grace and recorded by its report, not by the
            # timeout
            linger=_Linger(self.config.codex.linger_grace_seconds),
            now=utcnow(), now_t=t0,
        )

    async def _observe(self, w: _Watching, live: LiveAttempt, watch: _Watch) -> bool:
        """Wait for the process to end, a cancel, or the next poll/beat/deadline; take in
        the new events. True once the process has ended."""
        loop = asyncio.get_running_loop()
        now_t = loop.time()
        timeout = max(0.0, min(w.poll, w.deadline - now_t, w.next_beat - now_t,
                               w.linger.until - now_t))
        await asyncio.wait({w.waiter, w.canceller}, timeout=timeout,
                           return_when=asyncio.FIRST_COMPLETED)
        faultpoint("monitor")
        new = w.tail.read_new()
        if w.waiter.done():
            new += w.tail.flush_partial()
        w.now = utcnow()
        w.now_t = loop.time()
        for ev in new:
            w.dirty |= w.facts.apply(ev)
        if new:
            w.poll = 0.1
            w.state = w.state.model_copy(update={"last_event_at": w.now})
        else:
            w.poll = min(w.poll * 1.5, 1.0)
        if (watch.expected_thread and w.facts.thread_id
                and w.facts.thread_id != watch.expected_thread and not w.thread_mismatch):
            w.thread_mismatch = (f"resumed thread {w.facts.thread_id} is not the expected "
                                 f"{watch.expected_thread}")
            live.cancel_reason = "thread_mismatch"
            live.cancel_requested.set()
        return w.waiter.done()

    async def _enforce(self, w: _Watching, path: Path, live: LiveAttempt, proc: _Handle,
                       watch: _Watch) -> None:
        """End the process when its report is in and it lingers, on timeout, or on cancel."""
        now_t, linger = w.now_t, w.linger
        if (linger.until == _NEVER and w.facts.turn_completed and not w.facts.turn_failed
                and w.killer is None and await self._in_io(linger.final_ready, path, watch)):
            linger.until = now_t + linger.grace
        if w.killer is None and (now_t >= linger.until
                                 or (linger.until < _NEVER and now_t >= w.deadline)):
            # the report is in: a timeout reached while Codex lingers does not discard it
            linger.ended = True
            w.killer = asyncio.ensure_future(self._stop_process(proc, signal.SIGTERM))
        if now_t >= w.deadline and not w.timed_out and not linger.ended:
            w.timed_out = True
            live.cancel_reason = "timeout"
            live.cancel_requested.set()
        if live.cancel_requested.is_set() and w.killer is None:
            w.killer = asyncio.ensure_future(self._stop_process(proc))

    async def _beat(self, w: _Watching, plan: AttemptPlan, view: AttemptView,
                    live: LiveAttempt) -> None:
        """Write state.json on a heartbeat, a clock jump, the thread id's arrival, or new
        facts (at most once a STATE_WRITE_MIN_INTERVAL); point current.json at the
        attempt once Codex names its thread."""
        now, now_t = w.now, w.now_t
        skew = now.timestamp() - now_t
        beat = now_t >= w.next_beat or abs(skew - w.wall_skew) > CLOCK_JUMP_SECONDS
        w.wall_skew = skew
        new_thread = w.pointer is None and w.facts.thread_id is not None
        if not (beat or new_thread
                or (w.dirty and now_t - w.last_write >= STATE_WRITE_MIN_INTERVAL)):
            return
        w.state = self._merge_facts(w.state, w.facts, now).model_copy(
            update={"last_heartbeat_at": now if beat else w.state.last_heartbeat_at}
        )
        if beat:
            w.next_beat = now_t + w.hb
        # on the worker threads: with hundreds of agents streaming events this is up
        # to one fsynced write per agent per second, which would stall the loop
        try:
            await self._in_io(write_state, view.path / STATE, w.state)
        except TerminalStateError:
            pass
        except OSError as exc:  # full disk: keep watching Codex; retried next beat
            self.writes.failed(exc, f"the heartbeat of run {view.run_id}")
        else:
            if beat:
                live.beat_mono = now_t
        view.state = w.state
        w.last_write, w.dirty = now_t, False
        self._emit(plan, view)
        if new_thread and self.writes_pointers:
            # current.json gets the live attempt and its thread id as soon as Codex names
            # it (docs/layout.md#currentjson, docs/layout.md#currentjson); an attempt that is
            # already over gets only the final update
            w.pointer = asyncio.ensure_future(self._in_io(
                update_current, self.layout, plan.batch_id, plan.job_id))

    async def _stop_watching(self, w: _Watching, proc: _Handle) -> None:
        w.canceller.cancel()
        if w.killer is not None:
            await w.killer
        if w.pointer is not None:
            with contextlib.suppress(Exception):  # the final update rewrites it anyway
                await w.pointer
        # Nothing of this attempt's process group outlives it. Only the group: the wrapper
        # is reaped by now, so its pid may already name another process whose children a
        # tree walk would kill (and a command that left the group was reparented, out of
        # any walk's reach; a cancel walks the tree while the process is alive).
        kill_group(proc.pid, signal.SIGKILL)

    async def _finish(self, w: _Watching, plan: AttemptPlan, view: AttemptView,
                      live: LiveAttempt, watch: _Watch) -> AttemptView:
        """Conclude the ended attempt (final state, report, artifacts) and report it."""
        canceled = live.cancel_requested.is_set() and live.cancel_reason not in (
            "timeout", "thread_mismatch")
        state = w.state
        state, report, ready = await retry_writes(
            self.writes, f"the end of run {view.run_id}", lambda: self._in_io(
                self._conclude, plan, view.path, view.run_id, state, w.facts, watch,
                w.waiter.result(), canceled=canceled, timed_out=w.timed_out,
                thread_mismatch=w.thread_mismatch, cancel_reason=live.cancel_reason,
                lingered=w.linger.ended))
        view.state, view.report, view.resume_base_ready = state, report, ready
        self._emit(plan, view)
        return view

    def _conclude(self, plan: AttemptPlan, path: Path, run_id: str, state: AttemptState,
                  facts: EventFacts, watch: _Watch, returncode: int | None, *, canceled: bool,
                  timed_out: bool, thread_mismatch: str | None, cancel_reason: str | None,
                  lingered: bool = False) -> tuple[AttemptState, RunReport | None, bool]:
        """Classify the ended process and write its results (worker thread; no views)."""
        faultpoint("conclude")
        exit_code = self._read_exit_code(path, returncode)
        final_text = ""
        with contextlib.suppress(OSError):
            final_text = (path / FINAL_TXT).read_text(encoding="utf-8", errors="replace")
        report, obj, report_error = validate_report(final_text, watch.schema)
        outcome = classify(
            exit_code=exit_code, facts=facts,
            report=report if (report or obj is None) else _custom_ok(obj),
            report_error=report_error, canceled=canceled, timed_out=timed_out,
            thread_mismatch=thread_mismatch, stderr_tail=_tail_text(path / STDERR, 2000),
            cancel_reason=cancel_reason, lingered=lingered,
        )
        if obj is not None:
            with contextlib.suppress(FileExistsError):
                write_once_json(path / FINAL_JSON, obj)
        errors = list(facts.errors)
        if outcome.status == "failed" and facts.thread_id is None and not timed_out:
            # Codex stopped before its first event: the cause is only on its stderr
            startup = startup_error_line(_tail_text(path / STDERR, 4000))
            if startup:
                errors.append(f"codex start-up failed: {startup}")
        if outcome.failure_class == "auth":
            outcome, note = self._auth_outcome(plan, run_id, outcome, facts, watch)
            errors.append(note)
        if report_error and outcome.termination_reason == "schema_invalid":
            errors.append(report_error)
        if thread_mismatch:
            errors.append(thread_mismatch)
        if timed_out:
            errors.append(f"timed out after {watch.timeout_seconds:g}s")
        if canceled and cancel_reason == "shutdown":
            errors.append("canceled by an engine shutdown; the next engine retries it")
        elif canceled and cancel_reason != "canceled":
            errors.append(f"canceled: {cancel_reason}")
        if lingered:
            errors.append(f"Codex stayed up {self.config.codex.linger_grace_seconds:g}s after "
                          "turn.completed with its final message written; phh ended it")
        if watch.capture_git:
            with contextlib.suppress(FileExistsError):
                faultpoint("git_capture")
                _write_git_artifacts(watch.workdir, path, facts.files_changed)
        missing = [a for a in watch.artifacts_expected if not (watch.workdir / a).exists()]
        errors += [f"expected artifact missing: {a}" for a in missing]
        if outcome.status == "succeeded" and obj is not None:
            with contextlib.suppress(FileExistsError):
                faultpoint("handoff_write")
                write_once_json(path / HANDOFF, {
                    "schema_version": "1.0.0", "batch_id": plan.batch_id,
                    "job_id": plan.job_id, "step_id": plan.step_id, "run_id": run_id,
                    "status": outcome.status, "final_json_path": str(path / FINAL_JSON),
                    "summary": report.summary if report else None,
                    "codex_thread_id": facts.thread_id,
                })
        ended = utcnow()
        state = self._merge_facts(state, facts, ended).model_copy(update={
            "status": outcome.status, "updated_at": ended, "ended_at": ended,
            "exit_code": exit_code, "termination_reason": outcome.termination_reason,
            "failure_class": outcome.failure_class, "errors": errors[-20:],
            "artifacts": sorted(n for n in os.listdir(path) if not n.startswith(".")),
        })
        state, ready = self._finalize_files(plan, path, state)
        return state, report, ready

    # --------------------------------------------------------------- helpers
    def _auth_outcome(self, plan: AttemptPlan, run_id: str, outcome: Outcome,
                      facts: EventFacts, watch: _Watch) -> tuple[Outcome, str]:
        """An `auth` failure: lost a refresh race (the credential file changed since the
        start: retried at once, see readiness) or needs a new sign-in (new starts pause)."""
        src, start_fp = watch.credential or (None, None)
        reason = (facts.turn_failed or (facts.errors[-1] if facts.errors else "auth"))[:300]
        decision = credentials.after_auth_failure(
            self.layout, src, start_fp, reason, runner_id=self.runner_id,
            batch_id=plan.batch_id, job_id=plan.job_id, step_id=plan.step_id, run_id=run_id)
        if decision == "changed":
            return (Outcome(outcome.status, credentials.CREDENTIAL_CHANGED, "auth"),
                    f"credential {src} changed during the attempt (another process refreshed "
                    "it): retried at once")
        if decision == "paused":
            return outcome, (f"{credentials.SIGN_IN_AGAIN}; new attempts wait until {src} "
                             "changes")
        return outcome, (f"{credentials.SIGN_IN_AGAIN}, or check the API key "
                         f"({' / '.join(credentials.SECRET_ENV)})")

    async def _finalize(self, plan: AttemptPlan, view: AttemptView, state: AttemptState
                        ) -> AttemptView:
        """Disk work in a worker thread; the view and listeners are touched only on the
        loop (the index is not thread-safe)."""
        state, ready = await retry_writes(
            self.writes, f"the end of run {view.run_id}",
            lambda: self._in_io(self._finalize_files, plan, view.path, state))
        view.state = state
        view.resume_base_ready = ready
        self._emit(plan, view)
        return view

    def _finalize_files(self, plan: AttemptPlan, path: Path, state: AttemptState
                        ) -> tuple[AttemptState, bool]:
        """Terminal state and current.json under the job lock: one terminal status, ever."""
        with job_lock(self.layout.job_lock(plan.batch_id, plan.job_id)):
            try:
                faultpoint("final_state_write")
                write_state(path / STATE, state)
            except TerminalStateError:
                state = read_model(path / STATE, AttemptState) or state
            crashpoint("after_final_state")
            if self.writes_pointers:
                update_current(self.layout, plan.batch_id, plan.job_id, locked=True)
        return state, (path / CODEX_HOME / "sessions").is_dir()

    async def _spawn_failed(self, plan: AttemptPlan, view: AttemptView, state: AttemptState,
                            message: str, meta: AttemptMeta | None = None) -> AttemptView:
        now = utcnow()
        # queued -> running -> failed keeps the transition rules without a special case
        running = state.model_copy(update={"status": "running", "started_at": now,
                                           "updated_at": now, "last_heartbeat_at": now})
        await retry_writes(self.writes, f"the state of run {view.run_id}",
                           lambda: self._in_io(write_state, view.path / STATE, running))
        final = running.model_copy(update={
            "status": "failed", "ended_at": now, "termination_reason": "spawn_failed",
            "failure_class": "spawn_failed", "errors": [message],
        })
        return await self._finalize(plan, view, final)

    async def _internal_failure(self, plan: AttemptPlan, view: AttemptView, live: LiveAttempt,
                                exc: Exception) -> AttemptView:
        """End an attempt phh itself failed on: stop its process (nothing watches it any
        more), keep the traceback in `internal_error.log`, record `failed` / `internal_error`
        with the exception in `errors`. Never raises: a fault here is logged, not spread."""
        log.error("attempt %s: internal error", live.run_id, exc_info=exc)
        if live.pid is not None:
            kill_tree(live.pid, signal.SIGKILL)
        try:
            state = await self._in_io(self._write_internal_failure, plan, live.path,
                                      view.state, exc)
        except Exception:
            log.exception("attempt %s: could not record its internal error", live.run_id)
            return view
        view.state = state
        with contextlib.suppress(Exception):
            view.resume_base_ready = (live.path / CODEX_HOME / "sessions").is_dir()
        with contextlib.suppress(Exception):
            self._emit(plan, view)
        return view

    def _write_internal_failure(self, plan: AttemptPlan, path: Path,
                                known: AttemptState | None, exc: Exception) -> AttemptState:
        """The terminal state for an internal error (worker thread); falls back to
        a plain state write if the locked finalisation fails."""
        now = utcnow()
        with contextlib.suppress(Exception), open(path / INTERNAL_LOG, "a",
                                                  encoding="utf-8") as fh:
            fh.write(f"{now.isoformat()} {type(exc).__name__} in phh "
                     f"{__version__}\n{''.join(traceback.format_exception(exc))}\n")
        faultpoint("internal_record")
        disk = read_model(path / STATE, AttemptState)
        if disk is not None and disk.status in TERMINAL_STATUSES:
            return disk  # already terminal: one terminal status, ever
        st = disk or known or self._state(plan, run_id_of(path.name), "queued", now)
        if st.status == "queued":  # queued -> running -> failed keeps the transition rules
            st = st.model_copy(update={"status": "running", "started_at": now,
                                       "updated_at": now})
            write_state(path / STATE, st)
        with contextlib.suppress(OSError, ValueError):
            st = st.model_copy(update={
                "exit_code": int((path / EXIT_CODE).read_text().strip())})
        message = f"internal error: {type(exc).__name__}: {exc}"
        artifacts: list[str] = []
        with contextlib.suppress(OSError):
            artifacts = sorted(n for n in os.listdir(path) if not n.startswith("."))
        final = st.model_copy(update={
            "status": "failed", "updated_at": now, "ended_at": now,
            "termination_reason": "internal_error", "failure_class": "internal_error",
            "errors": [*st.errors[-19:], _one_line_error(message)], "artifacts": artifacts,
        })
        try:
            final, _ = self._finalize_files(plan, path, final)
        except Exception:
            log.exception("attempt %s: locked finalisation failed; writing its state directly",
                          final.run_id)
            try:
                write_state(path / STATE, final)
            except TerminalStateError:
                final = read_model(path / STATE, AttemptState) or final
            with contextlib.suppress(Exception):
                update_current(self.layout, plan.batch_id, plan.job_id)
        return final

    @staticmethod
    def _merge_facts(state: AttemptState, facts: EventFacts, now: datetime) -> AttemptState:
        return state.model_copy(update={
            "updated_at": now,
            "codex_thread_id": facts.thread_id or state.codex_thread_id,
            "current_item": facts.current_item or state.current_item,
            "turn_completed": facts.turn_completed,
            "usage": Usage(**facts.usage),
            "errors": facts.errors[-20:],
        })

    async def _stop_process(self, proc: _Handle, sig: int = signal.SIGINT) -> None:
        """SIGINT first (Codex stops gracefully and ends its commands), SIGKILL after grace."""
        kill_tree(proc.pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(proc.wait()),
                                   self.config.codex.cancel_grace_seconds)
        except TimeoutError:
            kill_tree(proc.pid, signal.SIGKILL)

    @staticmethod
    def _read_exit_code(path: Path, returncode: int | None) -> int | None:
        try:
            return int((path / EXIT_CODE).read_text().strip())
        except (OSError, ValueError):
            return returncode

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


_NEVER = float("inf")


def _one_line_error(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass(slots=True)
class _Linger:
    """After turn.completed: when a valid final message is on disk, Codex gets `grace`
    seconds to exit by itself (`until`, loop time) before phh ends its process group."""

    grace: float
    until: float = _NEVER
    ended: bool = False
    _seen: tuple[int, int] | None = None

    def final_ready(self, path: Path, watch: _Watch) -> bool:
        """Is `final.txt` written and valid against the attempt's schema? Re-read only when
        its size or mtime changed (worker thread: a message can be megabytes)."""
        try:
            st = os.stat(path / FINAL_TXT)
        except OSError:
            return False
        key = (st.st_size, st.st_mtime_ns)
        if st.st_size == 0 or key == self._seen:
            return False
        self._seen = key
        try:
            text = (path / FINAL_TXT).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return False
        report, obj, _ = validate_report(text, watch.schema)
        return report is not None or obj is not None


@dataclass(slots=True)
class _Watching:
    """One attempt's watch loop as `LocalRunner._monitor` runs it (loop-clock times)."""

    state: AttemptState
    tail: EventTail
    hb: float
    deadline: float
    next_beat: float
    last_write: float
    wall_skew: float
    waiter: asyncio.Future[int | None]
    canceller: asyncio.Future[Any]
    linger: _Linger
    #: the wall and loop time of the last wake
    now: datetime
    now_t: float
    facts: EventFacts = field(default_factory=EventFacts)
    timed_out: bool = False
    thread_mismatch: str | None = None
    dirty: bool = False
    poll: float = 0.1
    killer: asyncio.Future[None] | None = None
    pointer: asyncio.Future[None] | None = None


def in_git_work_tree(workdir: Path) -> bool:
    """Cheap pre-check before spawning git: is there a `.git` here or in a parent? Most
    scratch directories are not repositories, and two git spawns per attempt cost more
    than the rest of finishing it. GIT_DIR in the environment defers to git itself."""
    if os.environ.get("GIT_DIR"):
        return True
    d = workdir.resolve()
    return any(_looks_like_git(os.path.join(p, ".git")) for p in (d, *d.parents))


def _looks_like_git(dot_git: str) -> bool:
    """What git's discovery accepts, roughly: a dir with HEAD, or a `gitdir:` file."""
    if os.path.isdir(dot_git):
        return os.path.exists(os.path.join(dot_git, "HEAD"))
    try:
        with open(dot_git, "rb") as f:
            return f.read(8) == b"gitdir: "
    except OSError:
        return False


def _git(workdir: Path, *args: str) -> tuple[int, bytes]:
    try:
        p = subprocess.run(git_argv(workdir, *args), stdout=subprocess.PIPE, env=git_env(),
                           stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, check=False)
    except OSError:
        return 1, b""
    return p.returncode, p.stdout


def _write_git_artifacts(workdir: Path, path: Path, files_from_events: list[str]) -> None:
    if not in_git_work_tree(workdir):
        return
    rc, head = _git(workdir, "rev-parse", "HEAD")
    if rc != 0:
        inside, _ = _git(workdir, "rev-parse", "--is-inside-work-tree")
        if inside != 0:
            return
        head = b"(no commits)\n"
    _, status = _git(workdir, "status", "--porcelain=v1", "--untracked-files=all", ".")
    # plumbing, not `git diff HEAD`: porcelain diff refreshes and rewrites the index under
    # index.lock even with --no-optional-locks (git 2.39), racing an agent's commit
    _, diff = (_git(workdir, "diff-index", "--binary", "-p", "HEAD", "--", ".") if rc == 0
               else (0, b""))
    untracked = [ln[3:] for ln in status.decode(errors="replace").splitlines()
                 if ln.startswith("?? ")]
    for rel in untracked[:200]:
        f = workdir / rel
        with contextlib.suppress(OSError):
            if f.is_file() and f.stat().st_size <= 1_000_000:
                _, d = _git(workdir, "diff", "--no-index", "--binary", "--", "/dev/null", rel)
                diff += d
    write_once_bytes(path / GIT_HEAD, head)
    write_once_bytes(path / GIT_STATUS, status)
    write_once_bytes(path / GIT_DIFF, diff)
    touched = sorted({ln[3:] for ln in status.decode(errors="replace").splitlines()
                      if len(ln) > 3})
    write_once_json(path / FILES_TOUCHED, {
        "from_git_status": touched, "from_events": files_from_events,
    })


def _custom_ok(obj: dict[str, Any]) -> RunReport:
    """A custom output schema validated: treat it as an ok report with a generic summary."""
    status = obj.get("status") if isinstance(obj, dict) else None
    return RunReport(
        schema_version="1.0.0",
        status=status if status in ("ok", "failed", "needs_attention") else "ok",
        summary=str(obj.get("summary", "")) if isinstance(obj, dict) else "",
        files_read=[], files_written=[], artifacts=[],
    )

