"""Retention / GC (docs/layout.md#retention): what may go, why, and doing it safely.

Policy: each job's `retention_policy` (batch `effective_defaults.retention_policy`, merged with
an optional job-level override at submit; both frozen in batch_meta.json). Ages count from the
attempt's `ended_at`; attempts that have not ended are never touched.

Rules, per ended attempt unless said otherwise:
- raw logs (codex.events.jsonl, stdout.log, stderr.log): gzip after
  `compress_events_after_days`; delete after `events_days`.
- git artifacts (git_head.txt, git_status.txt, git_diff.patch, files_touched.json): delete
  after `git_artifacts_days`.
- resume base (codex_home/): delete after `resume_bases_days`, CLOSED batches only.
- final.txt, final.json, handoff.json, prompt.txt, output_schema.json: delete after
  `state_and_final_days`, CLOSED batches only; a successful attempt's final.*/handoff.json only
  with `delete_successful_finals`.
- the job's isolated workspace: remove after `workspaces_days` (counted from the job's last
  attempt end), CLOSED batches only, never with an attempt of the job in flight.

Never deleted: state.json and meta.json (the store's truth, a few KB; the index and scoreboards
derive from them); anything of an attempt still queued/running; a successful attempt's
final.*/handoff.json unless configured; any codex_home/ of an open batch (every attempt of an
open batch can still be resumed — by `resume_from` with selector `run_id`, a retry with
`resume_same_thread`, or an operator resume — and every one is a `resume_base_dir` in its
current.json); a resume base an in-flight attempt is copying from (its meta.json's
`resume_base_copied_from`); anything in a job with an attempt in flight, for workspaces and
resume bases.

Compressed logs stay readable through `phh_engine.store.logs` (`open_events`, `read_log_bytes`).
Every executed action is appended to `runs/_system/gc_log.jsonl`. Two GCs never run at once
(`runs/_system/gc.lock`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from ..models import (
    TERMINAL_STATUSES,
    AttemptMeta,
    AttemptState,
    BatchMeta,
    CurrentIndex,
    RetentionPolicy,
    utcnow,
)
from ..runners.workspace import WorkspaceError, describe_removal, remove_workspace, tree_bytes
from ..store.files import job_lock, read_model
from ..store.index import CLOSED_MARKER
from ..store.logs import GZ_SUFFIX, RAW_LOGS, compress_log, log_path
from ..store.overrides import list_results
from ..store.paths import (
    CODEX_HOME,
    FILES_TOUCHED,
    FINAL_JSON,
    FINAL_TXT,
    GIT_DIFF,
    GIT_HEAD,
    GIT_STATUS,
    HANDOFF,
    META,
    OUTPUT_SCHEMA,
    STATE,
    Layout,
    attempt_dir_names,
)

Op = Literal["compress", "delete", "remove_workspace"]
GIT_ARTIFACTS: tuple[str, ...] = (GIT_HEAD, GIT_STATUS, GIT_DIFF, FILES_TOUCHED)
PROMPT_FILE = "prompt.txt"  # the runner's copy of the prompt sent (runner.PROMPT_FILE)
FINALS: tuple[str, ...] = (FINAL_TXT, FINAL_JSON, HANDOFF)
OTHER_OUTPUTS: tuple[str, ...] = (PROMPT_FILE, OUTPUT_SCHEMA)
DAY = 86400.0


class GcBusy(Exception):
    """Another GC holds runs/_system/gc.lock."""


@dataclass(slots=True)
class GcAction:
    op: Op
    path: str
    reason: str
    bytes: int
    batch_id: str
    job_id: str
    step_id: str | None = None
    dir_name: str | None = None
    done: bool = False
    error: str | None = None
    bytes_after: int | None = None  # compress: size of the .gz

    @property
    def freed(self) -> int:
        if not self.done:
            return 0
        return self.bytes - (self.bytes_after or 0)


@dataclass(slots=True)
class GcKept:
    path: str
    reason: str


@dataclass(slots=True)
class GcReport:
    dry_run: bool
    at: datetime
    actions: list[GcAction] = field(default_factory=list)
    kept: list[GcKept] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def freed_bytes(self) -> int:
        return sum(a.freed for a in self.actions)

    @property
    def planned_bytes(self) -> int:
        return sum(a.bytes for a in self.actions)

    @property
    def errors(self) -> list[GcAction]:
        return [a for a in self.actions if a.error]

    def touched_attempts(self) -> list[tuple[str, str, str, str]]:
        seen: dict[tuple[str, str, str, str], None] = {}
        for a in self.actions:
            if a.done and a.step_id and a.dir_name:
                seen[(a.batch_id, a.job_id, a.step_id, a.dir_name)] = None
        return list(seen)

    def summary(self) -> str:
        from .health import fmt_bytes

        counts: dict[str, int] = {}
        for a in self.actions:
            counts[a.op] = counts.get(a.op, 0) + 1
        what = ", ".join(f"{n} {op}" for op, n in sorted(counts.items())) or "nothing to do"
        if self.dry_run:
            return f"{what}; would free about {fmt_bytes(self.planned_bytes)}"
        err = f"; {len(self.errors)} failed" if self.errors else ""
        return f"{what}; freed {fmt_bytes(self.freed_bytes)}{err}"

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run, "at": self.at.isoformat(), "seconds": round(self.seconds, 3),
            "summary": self.summary(), "planned_bytes": self.planned_bytes,
            "freed_bytes": self.freed_bytes,
            "actions": [asdict(a) for a in self.actions],
            "kept": [asdict(k) for k in self.kept],
        }


# ----------------------------------------------------------------------------- helpers
def closed_batches(layout: Layout) -> set[str]:
    """Batches closed by the `close` action (applied override result) or a closed.json."""
    out = {r.batch_id for r in list_results(layout) if r.action == "close" and
           r.outcome == "applied"}
    if layout.runs.is_dir():
        for d in layout.runs.iterdir():
            if (d / CLOSED_MARKER).exists():
                out.add(d.name)
    return out


def _size(path: Path) -> int:
    try:
        if path.is_dir() and not path.is_symlink():
            return tree_bytes(path)
        return path.lstat().st_size
    except OSError:
        return 0


def _days(seconds: float) -> str:
    d = seconds / DAY
    return f"{d:.1f} days" if d >= 0.1 else f"{seconds:.0f}s"


@dataclass(slots=True)
class _Attempt:
    step_id: str
    path: Path
    state: AttemptState | None
    meta: AttemptMeta | None

    @property
    def terminal(self) -> bool:
        return self.state is not None and self.state.status in TERMINAL_STATUSES


def _scan_job(layout: Layout, batch_id: str, job_id: str) -> list[_Attempt]:
    out: list[_Attempt] = []
    steps = layout.job_dir(batch_id, job_id) / "steps"
    try:
        step_dirs = sorted(p for p in steps.iterdir() if p.is_dir())
    except (FileNotFoundError, NotADirectoryError):  # a stray file on the path: nothing here
        return out
    for sd in step_dirs:
        adir = sd / "attempts"
        for n in attempt_dir_names(adir):
            p = adir / n
            out.append(_Attempt(sd.name, p, read_model(p / STATE, AttemptState),
                                read_model(p / META, AttemptMeta)))
    return out


def _current_bases(layout: Layout, batch_id: str, job_id: str) -> set[str]:
    cur = read_model(layout.current(batch_id, job_id), CurrentIndex)
    out: set[str] = set()
    if cur is None:
        return out
    for sp in cur.steps.values():
        for ptr in (sp.latest, sp.latest_successful):
            if ptr is not None and ptr.resume_base_dir:
                out.add(str(Path(ptr.resume_base_dir)))
        for entry in sp.by_run_id.values():
            if entry.resume_base_dir:
                out.add(str(Path(entry.resume_base_dir)))
    return out


# ----------------------------------------------------------------------------- plan
def plan_gc(layout: Layout, now: datetime | None = None) -> GcReport:
    """Everything GC would do now, each with its reason; touches nothing."""
    t0 = time.perf_counter()
    now = now or utcnow()
    report = GcReport(dry_run=True, at=now)
    if not layout.runs.is_dir():
        return report
    closed = closed_batches(layout)
    batches: list[tuple[BatchMeta, dict[str, list[_Attempt]]]] = []
    copying: set[str] = set()  # resume bases an in-flight attempt is (or may be) copying
    for d in sorted(layout.runs.iterdir()):
        if d.name.startswith(("_", ".")):
            continue
        meta = read_model(d / "batch_meta.json", BatchMeta)
        if meta is None:
            continue
        jobs = {j.job_id: _scan_job(layout, meta.batch_id, j.job_id) for j in meta.jobs}
        for atts in jobs.values():
            for a in atts:
                if not a.terminal and a.meta is not None and a.meta.resume_base_copied_from:
                    copying.add(str(Path(a.meta.resume_base_copied_from)))
        batches.append((meta, jobs))
    for meta, jobs in batches:
        is_closed = meta.batch_id in closed
        for job in meta.jobs:
            policy = job.retention_policy or meta.effective_defaults.retention_policy
            _plan_job(layout, report, meta.batch_id, job.job_id, jobs[job.job_id], policy,
                      is_closed, copying, now)
    report.seconds = time.perf_counter() - t0
    return report


def _plan_job(layout: Layout, report: GcReport, batch_id: str, job_id: str,
              attempts: list[_Attempt], policy: RetentionPolicy, is_closed: bool,
              copying: set[str], now: datetime) -> None:
    in_flight = [a for a in attempts if not a.terminal]
    bases = set() if is_closed else _current_bases(layout, batch_id, job_id)

    def act(op: Op, path: Path, reason: str, a: _Attempt | None = None) -> None:
        report.actions.append(GcAction(
            op=op, path=str(path), reason=reason, bytes=_size(path), batch_id=batch_id,
            job_id=job_id, step_id=a.step_id if a else None, dir_name=a.path.name if a else None))

    def keep(path: Path, reason: str) -> None:
        report.kept.append(GcKept(path=str(path), reason=reason))

    last_end: datetime | None = None
    for a in attempts:
        if not a.terminal or a.state is None:
            continue
        ended = a.state.ended_at or a.state.updated_at
        last_end = ended if last_end is None or ended > last_end else last_end
        age = (now - ended).total_seconds()
        ago = f"attempt ended {_days(age)} ago"
        # raw event logs
        for name in RAW_LOGS:
            p = log_path(a.path, name)
            if p is None:
                continue
            if policy.events_days is not None and age > policy.events_days * DAY:
                act("delete", p, f"raw log past events_days={policy.events_days:g} ({ago})", a)
            elif (policy.compress_events_after_days is not None and not
                  p.name.endswith(GZ_SUFFIX) and age > policy.compress_events_after_days * DAY
                  and _size(p) > 0):
                act("compress", p, f"raw log past compress_events_after_days="
                    f"{policy.compress_events_after_days:g} ({ago}); stays readable as .gz", a)
        # git artifacts
        if policy.git_artifacts_days is not None and age > policy.git_artifacts_days * DAY:
            for name in GIT_ARTIFACTS:
                p = a.path / name
                if p.exists():
                    act("delete", p, f"git artifact past git_artifacts_days="
                        f"{policy.git_artifacts_days:g} ({ago})", a)
        # resume base
        home = a.path / CODEX_HOME
        if home.is_dir() and policy.resume_bases_days is not None and \
                age > policy.resume_bases_days * DAY:
            if not is_closed:
                why = ("open batch: its current.json names it as a resume_base_dir"
                       if str(home) in bases else "open batch: any attempt may still be resumed")
                keep(home, f"resume base kept ({why}; close the batch to let GC remove it)")
            elif in_flight:
                keep(home, f"resume base kept: {len(in_flight)} attempt(s) of this job in flight")
            elif str(home) in copying:
                keep(home, "resume base kept: an in-flight attempt is copying it")
            else:
                act("delete", home, f"resume base past resume_bases_days="
                    f"{policy.resume_bases_days:g} ({ago}); batch closed", a)
        # final outputs
        if policy.state_and_final_days is not None and age > policy.state_and_final_days * DAY:
            ok = a.state.status == "succeeded"
            for name in (*FINALS, *OTHER_OUTPUTS):
                p = a.path / name
                if not p.exists():
                    continue
                if not is_closed:
                    continue  # final outputs are hand-offs while a batch is open
                if ok and name in FINALS and not policy.delete_successful_finals:
                    keep(p, "final output of a successful attempt (delete_successful_finals "
                            "is false)")
                    continue
                act("delete", p, f"output past state_and_final_days="
                    f"{policy.state_and_final_days:g} ({ago}); batch closed", a)
    # the job's isolated workspace
    removal = describe_removal(layout, batch_id, job_id)
    if removal is None or policy.workspaces_days is None:
        return
    if not is_closed:
        return  # steps may still run in it
    if in_flight:
        keep(removal.path, f"workspace kept: {len(in_flight)} attempt(s) of this job in flight")
        return
    age = (now - last_end).total_seconds() if last_end else float("inf")
    if age > policy.workspaces_days * DAY:
        report.actions.append(GcAction(
            op="remove_workspace", path=str(removal.path),
            reason=f"{removal.detail}; batch closed, job ended "
                   f"{_days(age) if last_end else 'never ran'} ago, workspaces_days="
                   f"{policy.workspaces_days:g}",
            bytes=removal.bytes, batch_id=batch_id, job_id=job_id))


# ----------------------------------------------------------------------------- execute
def execute_gc(layout: Layout, plan: GcReport) -> GcReport:
    """Carry out a plan. Each job's actions run under its job lock, re-checking that nothing
    of the job started meanwhile (resume bases, workspaces)."""
    t0 = time.perf_counter()
    report = GcReport(dry_run=False, at=plan.at, kept=list(plan.kept))
    by_job: dict[tuple[str, str], list[GcAction]] = {}
    for a in plan.actions:
        copy = dataclasses.replace(a, done=False, error=None, bytes_after=None)
        by_job.setdefault((a.batch_id, a.job_id), []).append(copy)
        report.actions.append(copy)
    log_lines: list[str] = []
    for (bid, jid), actions in by_job.items():
        with job_lock(layout.job_lock(bid, jid), timeout=120):
            live = [a for a in _scan_job(layout, bid, jid) if not a.terminal]
            for act in actions:
                guarded = act.op == "remove_workspace" or Path(act.path).name == CODEX_HOME
                if live and guarded:
                    act.error = "skipped: an attempt of this job started meanwhile"
                    continue
                try:
                    _do(layout, act)
                    act.done = True
                except (OSError, WorkspaceError) as exc:
                    act.error = f"{type(exc).__name__}: {exc}"
                log_lines.append(json.dumps({
                    "at": utcnow().isoformat(), "op": act.op, "path": act.path,
                    "reason": act.reason, "bytes": act.bytes, "bytes_after": act.bytes_after,
                    "done": act.done, "error": act.error}))
    if log_lines:
        layout.system.mkdir(parents=True, exist_ok=True)
        with open(layout.system / "gc_log.jsonl", "a", encoding="utf-8") as fh:
            fh.write("\n".join(log_lines) + "\n")
    report.seconds = time.perf_counter() - t0
    return report


def _do(layout: Layout, act: GcAction) -> None:
    path = Path(act.path)
    if act.op == "compress":
        if path.exists():
            _, act.bytes_after = compress_log(path)
        return
    if act.op == "remove_workspace":
        remove_workspace(layout, act.batch_id, act.job_id)
        return
    if path.is_dir() and not path.is_symlink():
        # rename first: a half-deleted codex_home must never look like a resume base
        trash = path.with_name(f".{path.name}.gc-{os.getpid()}-{time.monotonic_ns()}")
        path.rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def run_gc(layout: Layout, *, now: datetime | None = None, dry_run: bool = False,
           wait: bool = False) -> GcReport:
    """Plan and (unless dry_run) execute, holding runs/_system/gc.lock. GcBusy when another GC
    runs (unless `wait`). Policies come from each batch's batch_meta.json, not the config."""
    if dry_run:
        return plan_gc(layout, now)
    layout.system.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(layout.system / "gc.lock"), timeout=-1 if wait else 0,
                    thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        raise GcBusy("another phh gc is running on this store") from None
    try:
        return execute_gc(layout, plan_gc(layout, now))
    finally:
        lock.release()
