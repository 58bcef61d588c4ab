"""The verifier (docs/verification.md#the-verifier) and the follow-up prompts built from what
it and the report validator said (docs/verification.md#repair-turns).

After a turn that would succeed, the runner's `_finish` calls `run_if_due`: it runs the step's
`verify.command` with `/bin/sh -c` in the attempt's working directory, under Codex's own sandbox
with the agent's sandbox mode (`codex sandbox`, Landlock/seccomp in bubblewrap), in its own
process group, with the attempt's ids and `verify.env` in an environment that holds none of
the harness's variables (no API keys, no tokens), bounded by `verify.timeout_seconds`. Its
output's tail goes to `verify.log`, the result to state.json `verify`; `judge` then turns a
would-be success into `failed` / `verify_failed` when the command did not exit 0.

Exactly once across an engine crash: the result is recorded in state.json (still `running`)
before the terminal write. An engine that adopts the attempt and finds `verify` recorded
concludes from it; one that finds the attempt `verifying` without a result ends whatever
the dead engine's verifier left running and runs it again (no result was ever recorded).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import psutil

from ..models import AttemptState, ExecutionPolicy, VerifyResult, VerifySpec, utcnow
from ..store.crash import crashpoint, faultpoint
from ..store.files import TerminalStateError, atomic_write_bytes, write_state
from ..store.paths import FINAL_TXT, STATE, VERIFY_HOME, VERIFY_LOG
from ..store.views import AttemptView
from .score import parse_score as parse_score  # re-exported: the rule, in-process

if TYPE_CHECKING:
    from .attempt import AttemptPlan, LiveAttempt, _Watch
    from .conclude import Outcome
    from .watch import WatchSteps, _Watching

log = logging.getLogger(__name__)

#: state.json `current_item` while the verifier runs
VERIFYING = "verifying"
#: verify.log keeps at most this much of the output's end (bytes, then lines)
LOG_MAX_BYTES = 64 * 1024
LOG_MAX_LINES = 400
#: the verifier output a follow-up prompt quotes (its last bytes)
PROMPT_MAX_BYTES = 6 * 1024
#: after the verifier's group is killed, how long its output pipe may stay open (a
#: grandchild that left the group holds it) before phh stops reading
DRAIN_SECONDS = 2.0
#: variables of the engine's environment a verifier sees: enough for a shell and the usual
#: tools, nothing that could hold a credential (API keys, tokens, proxies with passwords)
ENV_KEEP = ("PATH", "HOME", "USER", "LOGNAME", "SHELL", "LANG", "LANGUAGE", "TZ", "TERM")
ENV_KEEP_PREFIXES = ("LC_",)
SCRATCH = "scratch"

VERIFY_FAILED_PROMPT = (
    "Your previous turn finished, but the task's verifier did not pass: `{command}` {how}. "
    "The end of its output:\n\n```\n{output}\n```\n\nFix the work in the working directory so "
    "that the verifier passes, then finish with the final report."
)
REPAIR_PROMPT = (
    "Your final message could not be accepted: {error}. Reply again with only the corrected "
    "final message: one JSON object that matches the output schema you were given, nothing "
    "else. Do not redo the work."
)


# ------------------------------------------------------------------ pure parts
def verifier_env(spec: VerifySpec, *, batch_id: str, job_id: str, step_id: str, run_id: str,
                 attempt_dir: Path, scratch: Path,
                 base: dict[str, str] | None = None) -> dict[str, str]:
    """The verifier's whole environment: ENV_KEEP from `base` (default os.environ), TMPDIR =
    its scratch directory, the attempt's ids (PHH_BATCH_ID, PHH_JOB_ID, PHH_STEP_ID,
    PHH_RUN_ID, PHH_ATTEMPT_DIR), then `spec.env` (the operator's own choice wins)."""
    src = os.environ if base is None else base
    env = {k: v for k, v in src.items() if k in ENV_KEEP or k.startswith(ENV_KEEP_PREFIXES)}
    env.setdefault("PATH", os.defpath)
    env.update({
        "TMPDIR": str(scratch), "PHH_BATCH_ID": batch_id, "PHH_JOB_ID": job_id,
        "PHH_STEP_ID": step_id, "PHH_RUN_ID": run_id, "PHH_ATTEMPT_DIR": str(attempt_dir),
    })
    env.update(spec.env)
    return env


def _toml_str(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def sandboxed(policy: ExecutionPolicy) -> bool:
    """Does the verifier run under Codex's sandbox? Not when the agent has none
    (`bypass_sandbox`, `danger-full-access`): the same isolation as the agent."""
    return not policy.bypass_sandbox and policy.sandbox != "danger-full-access"


def verifier_argv(codex_bin: str, policy: ExecutionPolicy, command: str, marker: str,
                  scratch: Path) -> list[str]:
    """argv of one verifier run: `/bin/sh -c command marker` (the marker is `$0`, so a later
    engine can find the process), inside `codex sandbox` with the agent's sandbox mode when
    `sandboxed(policy)`. In `workspace-write` the verifier may write its working directory,
    its scratch directory and the step's `add_dirs`, not /tmp or $TMPDIR of the engine;
    network only with `network_access`."""
    shell = ["/bin/sh", "-c", command, marker]
    if not sandboxed(policy):
        return shell
    cfg: dict[str, str] = {"sandbox_mode": _toml_str(policy.sandbox)}
    if policy.sandbox == "workspace-write":
        roots = [str(scratch), *policy.add_dirs]
        cfg.update({
            "sandbox_workspace_write.exclude_slash_tmp": "true",
            "sandbox_workspace_write.exclude_tmpdir_env_var": "true",
            "sandbox_workspace_write.writable_roots":
                "[" + ", ".join(_toml_str(r) for r in roots) + "]",
            "sandbox_workspace_write.network_access":
                "true" if policy.network_access else "false",
        })
        for key, value in policy.config_overrides.items():
            if key.startswith("sandbox_workspace_write.") and key not in cfg:
                cfg[key] = (str(value).lower() if isinstance(value, bool)
                            else str(value) if isinstance(value, int | float)
                            else _toml_str(str(value)))
    argv = [codex_bin, "sandbox"]
    for key, value in cfg.items():
        argv += ["-c", f"{key}={value}"]
    return [*argv, "--", *shell]


#: Seconds a `score_pattern` may search the verifier's output. Python's `re` holds the GIL
#: while it matches, so a backtracking pattern in a thread would still stall the engine's
#: loop: the search runs in a child process that is killed at this deadline.
SCORE_SECONDS = 10.0
_SCORE_CHILD = ("import json, sys\nfrom phh_engine.runners.score import parse_score\n"
                "p, t = json.load(sys.stdin)\nprint(json.dumps(parse_score(p, t)))")


def parse_score_bounded(pattern: str | None, text: str, timeout: float = SCORE_SECONDS
                        ) -> tuple[float | None, str | None]:
    """`parse_score` in a child process with a deadline (blocking: call off the loop):
    (score or None, a note for verify.log when the search did not finish)."""
    if not pattern:
        return None, None
    try:
        r = subprocess.run([sys.executable, "-c", _SCORE_CHILD], input=json.dumps([pattern, text]),
                           capture_output=True, text=True, timeout=timeout, check=False)
        value = json.loads(r.stdout) if r.returncode == 0 else None
    except subprocess.TimeoutExpired:
        return None, (f"score_pattern did not finish searching the output within {timeout:g}s "
                      "(a pattern that backtracks?): no score")
    except (OSError, ValueError) as exc:
        return None, f"score_pattern could not be searched: {exc}"
    return (float(value) if isinstance(value, (int, float)) else None), None


def tail(data: bytes, max_bytes: int = LOG_MAX_BYTES, max_lines: int = LOG_MAX_LINES) -> bytes:
    """The end of `data`: at most `max_bytes`, then at most `max_lines` lines."""
    data = data[-max_bytes:]
    lines = data.splitlines(keepends=True)
    return b"".join(lines[-max_lines:])


def judge(outcome: Outcome, verify: VerifyResult | None) -> tuple[Outcome, str | None]:
    """A would-be success with a verifier that did not pass becomes `failed` /
    `verify_failed` (docs/failure-classes.md#classes); (outcome, error line or None)."""
    from .conclude import Outcome

    if outcome.status != "succeeded" or verify is None or verify.passed:
        return outcome, None
    if verify.timed_out:
        why = f"the verifier timed out after {verify.duration_seconds:.0f}s (see verify.log)"
    elif verify.exit_code is None:
        why = "the verifier did not run to its end: killed, or it could not start (see verify.log)"
    else:
        why = f"the verifier exited {verify.exit_code} (see verify.log)"
    return Outcome("failed", "verify_failed", "verify_failed"), why


def _how(verify: VerifyResult | None) -> str:
    if verify is None:
        return "did not pass"
    if verify.timed_out:
        return f"timed out after {verify.duration_seconds:.0f}s"
    if verify.exit_code is None:
        return "did not run to its end"
    return f"exited {verify.exit_code}"


def followup_prompt(plan: AttemptPlan, schema: dict[str, Any],
                    verify_spec: VerifySpec | None) -> str | None:
    """The prompt of a same-thread continuation that phh writes from what went wrong: a
    `repair` (the validator's error on the parent's final message, re-checked against
    `schema`) or a `resume_same_thread` retry after `verify_failed` (the verifier's output,
    its last PROMPT_MAX_BYTES). None: the runner's generic recovery prompt."""
    from .conclude import validate_report

    parent = plan.retry_of
    if parent is None:
        return None
    if plan.trigger == "repair":
        text = ""
        with contextlib.suppress(OSError):
            text = (parent.path / FINAL_TXT).read_text(encoding="utf-8", errors="replace")
        _, _, error = validate_report(text, schema)
        if error is None:  # read as valid now (a custom schema without a RunReport shape)
            error = "the final message did not match the output schema"
        return REPAIR_PROMPT.format(error=error)
    st = parent.state
    if st is None or st.failure_class != "verify_failed":
        return None
    output = b""
    with contextlib.suppress(OSError):
        output = (parent.path / VERIFY_LOG).read_bytes()
    shown = tail(output, PROMPT_MAX_BYTES).decode("utf-8", "replace").strip() or "(no output)"
    command = verify_spec.command if verify_spec else "the verifier"
    if len(command) > 300:
        command = command[:299] + "…"
    return VERIFY_FAILED_PROMPT.format(command=command, how=_how(st.verify), output=shown)


def marker_of(path: Path) -> str:
    """`$0` of an attempt's verifier shell: unique per attempt, found in any process's argv."""
    return f"phh-verify:{path}"


def kill_leftovers(path: Path) -> int:
    """End every process of a verifier a dead engine started for this attempt (found by its
    marker argument), with its process group and descendants. Returns how many matched."""
    from .process import kill_tree

    marker = marker_of(path)
    found = 0
    for p in psutil.process_iter(["pid", "cmdline"]):
        if marker in (p.info.get("cmdline") or []):
            found += 1
            kill_tree(int(p.info["pid"]), signal.SIGKILL)
    return found


# ------------------------------------------------------------------ the run
class _Output:
    """The verifier's output pipe, read on the loop into a bounded buffer."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.chunks: deque[bytes] = deque()
        self.size = 0
        self.dropped = 0
        self.eof: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        os.set_blocking(fd, False)
        asyncio.get_running_loop().add_reader(fd, self._read)

    def _read(self) -> None:
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close()
            return
        self.chunks.append(data)
        self.size += len(data)
        while self.size - len(self.chunks[0]) >= LOG_MAX_BYTES:
            gone = self.chunks.popleft()
            self.size -= len(gone)
            self.dropped += len(gone)

    def close(self) -> None:
        if not self.eof.done():
            asyncio.get_running_loop().remove_reader(self.fd)
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.eof.set_result(None)

    def text(self) -> bytes:
        return b"".join(self.chunks)


def _would_succeed(runner: WatchSteps, path: Path, w: _Watching, watch: _Watch) -> bool:
    """The runner's own classification of the ended turn, without writing anything."""
    from .conclude import _custom_ok, classify, validate_report

    text = ""
    with contextlib.suppress(OSError):
        text = (path / FINAL_TXT).read_text(encoding="utf-8", errors="replace")
    report, obj, error = validate_report(text, watch.schema)
    outcome = classify(
        exit_code=runner._read_exit_code(path, w.waiter.result()), facts=w.facts,
        report=report if (report or obj is None) else _custom_ok(obj), report_error=error,
        canceled=False, timed_out=w.timed_out, thread_mismatch=w.thread_mismatch,
        lingered=w.linger.ended)
    return outcome.status == "succeeded"


def _prepare_dirs(path: Path) -> Path:
    scratch = path / VERIFY_HOME / SCRATCH
    scratch.mkdir(parents=True, exist_ok=True)
    return scratch


def _spawn(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, cwd=str(cwd), env=env,
                            start_new_session=True)


async def _write(runner: WatchSteps, path: Path, state: AttemptState) -> bool:
    """A non-terminal state write; False when the attempt is already terminal on disk."""
    try:
        await runner._in_io(write_state, path / STATE, state)
    except TerminalStateError:
        return False
    except OSError as exc:  # full disk: the verifier still runs; the next beat retries
        runner.writes.failed(exc, f"the verifier state of {path.name}")
    return True


async def run_if_due(runner: WatchSteps, plan: AttemptPlan, view: AttemptView,
                     live: LiveAttempt, w: _Watching, watch: _Watch) -> None:
    """Run the attempt's verifier when its meta.json names one, nothing recorded one yet, and
    the ended turn would succeed; record the result in `w.state` (and state.json). Cancel
    (operator or shutdown) kills it; the attempt then ends `canceled` as usual."""
    spec = view.meta.policy_snapshot.verify if view.meta is not None else None
    if spec is None or w.state.verify is not None:
        return  # no verifier, or a previous engine recorded its result: conclude from it
    if live.cancel_requested.is_set() or w.timed_out or w.thread_mismatch:
        return
    path = view.path
    if not await runner._in_io(_would_succeed, runner, path, w, watch):
        return
    faultpoint("verify")
    # verify_home/ exists once a verifier was started: with no result recorded, an engine
    # died while it ran (adopted here); what it left running must end before the new run
    if await runner._in_io((path / VERIFY_HOME).exists):
        await runner._in_io(kill_leftovers, path)
    policy = view.meta.policy_snapshot.execution_policy if view.meta else ExecutionPolicy()
    started = utcnow()
    try:
        scratch = await runner._in_io(_prepare_dirs, path)
    except OSError as exc:  # full disk, no inodes: it cannot run, so it did not pass
        runner.writes.failed(exc, f"the verifier directory of {view.run_id}")
        result = VerifyResult(started_at=started, duration_seconds=0.0, exit_code=None,
                              passed=False)
        await _record(runner, plan, view, w, result, f"[phh: could not prepare the "
                      f"verifier's directory: {exc}]\n".encode(), w.state.current_item)
        return
    env = verifier_env(spec, batch_id=plan.batch_id, job_id=plan.job_id, step_id=plan.step_id,
                       run_id=view.run_id, attempt_dir=path, scratch=scratch)
    if sandboxed(policy):  # Codex's own files of the sandbox run: never the user's ~/.codex
        env["CODEX_HOME"] = str(path / VERIFY_HOME)
    argv = verifier_argv(runner.codex.bin, policy, spec.command, marker_of(path), scratch)
    item_before = w.state.current_item
    w.state = w.state.model_copy(update={"current_item": VERIFYING, "updated_at": started,
                                         "last_heartbeat_at": started})
    if not await _write(runner, path, w.state):
        return
    view.state = w.state
    runner._emit(plan, view)
    loop = asyncio.get_running_loop()
    t0 = time.monotonic()
    try:
        proc = await runner._in_io(_spawn, argv, watch.workdir, env)
    except (OSError, ValueError) as exc:  # ValueError: a NUL in argv/env (refused at submit)
        result = VerifyResult(started_at=started, duration_seconds=0.0, exit_code=None,
                              passed=False)
        await _record(runner, plan, view, w, result, f"[phh: could not start the verifier: "
                      f"{exc}]\n".encode(), item_before)
        return
    crashpoint("while_verifying")
    from .process import _ChildHandle, kill_group, kill_tree

    waiter = asyncio.ensure_future(_ChildHandle(proc).wait())
    canceller = asyncio.ensure_future(live.cancel_requested.wait())
    deadline = loop.time() + spec.timeout_seconds
    hb = runner.config.codex.heartbeat_seconds
    next_beat = loop.time() + hb
    timed_out = killed = False
    try:
        assert proc.stdout is not None
        out = _Output(os.dup(proc.stdout.fileno()))
        proc.stdout.close()
        while not waiter.done():
            now_t = loop.time()
            await asyncio.wait({waiter, canceller},
                               timeout=max(0.0, min(deadline, next_beat) - now_t),
                               return_when=asyncio.FIRST_COMPLETED)
            if waiter.done():
                break
            now_t = loop.time()
            if canceller.done() or now_t >= deadline:
                timed_out = not canceller.done()
                killed = True
                kill_tree(proc.pid, signal.SIGKILL)
                await waiter
                break
            if now_t >= next_beat:
                next_beat = now_t + hb
                now = utcnow()
                w.state = w.state.model_copy(update={"updated_at": now,
                                                     "last_heartbeat_at": now})
                if await _write(runner, path, w.state):
                    live.beat_mono = now_t
                view.state = w.state
                runner._emit(plan, view)
        rc = waiter.result()
    finally:
        canceller.cancel()
        if not waiter.done():  # a fault, or this task was canceled: nothing may outlive it
            kill_tree(proc.pid, signal.SIGKILL)
            waiter.cancel()
    # the rest of its group (the shell has exited and was reaped: its pid may name another
    # process by now, so the group only, never a tree walk from that pid)
    kill_group(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(out.eof), DRAIN_SECONDS)
    out.close()
    duration = time.monotonic() - t0
    text = out.text()
    note = b""
    body = tail(text)
    if out.dropped + len(text) > len(body):
        note = (f"[phh: {out.dropped + len(text) - len(body)} earlier bytes of output not "
                "kept]\n").encode()
    if timed_out:
        body += f"\n[phh: the verifier timed out after {spec.timeout_seconds:g}s; its process "\
                "group was killed]\n".encode()
    elif killed:
        body += b"\n[phh: the verifier was killed: the attempt was canceled]\n"
    exit_code = None if killed or rc is None or rc < 0 else rc
    passed = exit_code == 0
    score, score_note = await runner._in_io(parse_score_bounded, spec.score_pattern,
                                            text.decode("utf-8", "replace"))
    if score_note:
        body += f"\n[phh: {score_note}]\n".encode()
    result = VerifyResult(started_at=started, duration_seconds=round(duration, 3),
                          exit_code=exit_code, timed_out=timed_out, passed=passed, score=score)
    await _record(runner, plan, view, w, result, note + body, item_before)


async def _record(runner: WatchSteps, plan: AttemptPlan, view: AttemptView, w: _Watching,
                  result: VerifyResult, log_bytes: bytes, item_before: str | None) -> None:
    """verify.log, then state.json `verify` (still running): the record a later engine
    concludes from instead of running the verifier again."""
    path = view.path
    try:
        await runner._in_io(atomic_write_bytes, path / VERIFY_LOG, log_bytes)
    except OSError as exc:
        runner.writes.failed(exc, f"the verifier log of {view.run_id}")
    now = utcnow()
    w.state = w.state.model_copy(update={"verify": result, "updated_at": now,
                                         "current_item": item_before})
    await _write(runner, path, w.state)
    crashpoint("after_verify_record")
    view.state = w.state
    runner._emit(plan, view)
