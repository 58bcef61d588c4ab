"""Concluding an ended attempt: the outcome classification (`classify`, failure classes
from Codex's texts, docs/failure-classes.md), the final report parsed and checked against
its schema (`validate_report`), and `ConcludeSteps`, the local runner's stage that writes
the terminal state, artifacts and current.json (one terminal status, ever), including the
ends without a normal exit (spawn failed, internal error, runner lost).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import time
import traceback
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import jsonschema
from pydantic import ValidationError

from .. import __version__
from ..models import (
    TERMINAL_STATUSES,
    AttemptMeta,
    AttemptState,
    AttemptStatus,
    FailureClass,
    RunReport,
    TerminationReason,
    Usage,
    utcnow,
)
from ..store.crash import crashpoint, faultpoint
from ..store.diskguard import retry_writes
from ..store.events import EventFacts
from ..store.files import TerminalStateError, job_lock, read_model, write_once_json, write_state
from ..store.paths import (
    CODEX_HOME,
    EXIT_CODE,
    FINAL_JSON,
    FINAL_TXT,
    HANDOFF,
    INTERNAL_LOG,
    STATE,
    STDERR,
    Layout,
    run_id_of,
)
from ..store.pointers import update_current
from ..store.views import AttemptView
from . import credentials
from . import verify as verification
from .attempt import AttemptPlan, LiveAttempt, RunnerCore, _Watch
from .doctor import startup_error_line
from .git_artifacts import _write_git_artifacts
from .process import kill_tree

log = logging.getLogger(__name__)

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

_VALIDATORS: dict[str, Any] = {}



@dataclass(slots=True)
class Outcome:
    status: AttemptStatus
    termination_reason: TerminationReason
    failure_class: FailureClass | None = None


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
    if st.status == "queued":
        st = st.model_copy(update={"status": "running", "started_at": now, "updated_at": now})
    final = st.model_copy(update={
        "status": "failed", "updated_at": now, "ended_at": now,
        "exit_code": exit_code, "termination_reason": "runner_lost",
        "failure_class": "runner_lost", "errors": [*st.errors[-19:], why],
    })
    with job_lock(layout.job_lock(batch_id, job_id)):
        try:
            if state.status == "queued":
                write_state(path / STATE, st)
            write_state(path / STATE, final)
        except TerminalStateError:
            on_disk = read_model(path / STATE, AttemptState)
            if on_disk is None:
                # terminal by its raw status, yet not a valid AttemptState (a file from a
                # newer or broken writer): it ended; say so here instead of handing back the
                # in-flight view, which recovery would pick up again and again
                log.warning("%s: state.json is terminal but unreadable; treated as ended",
                            path)
            else:
                final = on_disk
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


def ended_at(path: Path, state: AttemptState, now: datetime) -> datetime:
    """When the attempt ended (docs/statuses.md#attempt-transitions): when its Codex process
    exited, as the exit-code wrapper's `exit_code` file records it, or when its verifier
    finished, whichever is later; `now` without that file. An attempt concluded long after
    its process exited (adopted by an engine started after a kill -9) is thereby not
    charged the time no engine watched it. Clamped to [started_at, now]: another node's
    clock may write the file's mtime."""
    try:
        mtime = (path / EXIT_CODE).stat().st_mtime
    except OSError:
        return now
    # on phh's clock (utcnow may carry a test's wall-clock skew): the file's age, from now
    ended = now - timedelta(seconds=max(0.0, time.time() - mtime))
    v = state.verify
    if v is not None:
        ended = max(ended, v.started_at + timedelta(seconds=v.duration_seconds))
    if state.started_at is not None:
        ended = max(ended, state.started_at)
    return min(ended, now)


def _tail_text(path: Path, limit: int = 4000) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(path) - limit))
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return ""


def _custom_ok(obj: dict[str, Any]) -> RunReport:
    """A custom output schema validated: treat it as an ok report with a generic summary."""
    status = obj.get("status") if isinstance(obj, dict) else None
    return RunReport(
        schema_version="1.0.0",
        status=status if status in ("ok", "failed", "needs_attention") else "ok",
        summary=str(obj.get("summary", "")) if isinstance(obj, dict) else "",
        files_read=[], files_written=[], artifacts=[],
    )


def _one_line_error(text: str, limit: int = 400) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


class ConcludeSteps(RunnerCore):
    """The local runner's last stage: classify an ended attempt and write its results, or
    end one that never ran normally (spawn failed, internal error). File work runs in the
    runner's worker threads; views and listeners are touched only on the loop."""

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
        outcome, verify_note = verification.judge(outcome, state.verify)  # hook: verify
        errors += [verify_note] if verify_note else []
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
        now = utcnow()
        ended = ended_at(path, state, now)
        state = self._merge_facts(state, facts, ended).model_copy(update={
            "status": outcome.status, "updated_at": now, "ended_at": ended,
            "exit_code": exit_code, "termination_reason": outcome.termination_reason,
            "failure_class": outcome.failure_class, "errors": errors[-20:],
            "artifacts": sorted(n for n in os.listdir(path) if not n.startswith(".")),
        })
        state, ready = self._finalize_files(plan, path, state)
        return state, report, ready

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

    @staticmethod
    def _read_exit_code(path: Path, returncode: int | None) -> int | None:
        try:
            return int((path / EXIT_CODE).read_text().strip())
        except (OSError, ValueError):
            return returncode
