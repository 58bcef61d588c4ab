"""The operations every automation interface offers (docs/interfaces.md), once, for the CLI and the
API.

Each returns plain JSON-able data (the same dict the CLI prints with `--json` and the API
answers) or raises `LookupFailed` with the HTTP status that fits (400 malformed, 404 unknown,
409 conflict, 422 invalid Launch Table). Operator actions are request files the engine
serving the root applies exactly once (`store/overrides.py`); without an engine they stay queued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from ..derive.scoreboards import batch_scoreboard, system_scoreboard
from ..models import BatchMeta, BatchScoreboard, CurrentIndex, SystemScoreboard, utcnow
from ..store.board_files import cached_board, engine_board, keep_board
from ..store.candidates import read_marker
from ..store.documents import DocumentError, check_tree
from ..store.files import lock_held, read_model
from ..store.index import StoreIndex, unexpected_notes
from ..store.overrides import make_request, read_result, replay_marks
from ..store.paths import Layout, attempt_dir_names, run_id_of
from ..store.pauses import PAUSES_DIR, pause_notes, read_pauses
from ..store.pointers import build_current
from .artifacts import LookupFailed as LookupFailed  # raised by every function here
from .artifacts import attempt_summary, list_attempt_dirs, missing, valid_id

if TYPE_CHECKING:  # at run time imported by submit_table: a read (`phh jobs`, `phh current`)
    # must not pay for the submit path's jsonschema and YAML loader
    from .submit import SubmitError

#: CLI action names (and API path segments) -> override action
ACTIONS: dict[str, str] = {
    "cancel": "cancel", "retry": "retry", "resume": "resume", "requeue": "requeue",
    "mark-failed": "mark_failed", "close": "close", "promote": "promote",
}


class InvalidLaunchTable(LookupFailed):
    """Submit refused the Launch Table: every problem, nothing written (HTTP 422)."""

    def __init__(self, exc: SubmitError) -> None:
        super().__init__(422, "Launch Table rejected, nothing was written")
        self.errors = [{"path": i.path, "message": i.message} for i in exc.issues]


def engine_serving(layout: Layout) -> bool:
    """Is any engine serving this root? (Each holds its runner's lock while it runs.)"""
    return any(lock_held(p) for p in layout.runners.glob("*/.engine.lock"))


# ----------------------------------------------------------------------------- submit
def submit_table(layout: Layout, source: Path | dict[str, Any], *,
                 dedupe: bool = False) -> dict[str, Any]:
    """`{batch_id, accepted_job_ids, existing}`; InvalidLaunchTable lists every error."""
    from .submit import SubmitError, submit

    try:
        res = submit(layout, source, dedupe=dedupe)
    except SubmitError as exc:
        raise InvalidLaunchTable(exc) from None
    return res.as_dict()


# ----------------------------------------------------------------------------- views
def load_meta(layout: Layout, batch_id: str) -> BatchMeta:
    valid_id(batch_id, "batch_id")
    meta = read_model(layout.batch_meta(batch_id), BatchMeta)
    if meta is None:
        raise missing(f"no batch {batch_id!r}")
    return meta


def check_step(layout: Layout, batch_id: str, job_id: str, step_id: str | None) -> BatchMeta:
    """404 unless the job (and step) exist in the batch's Launch Table."""
    valid_id(job_id, "job_id")
    if step_id is not None:
        valid_id(step_id, "step_id")
    meta = load_meta(layout, batch_id)
    job = next((j for j in meta.jobs if j.job_id == job_id), None)
    if job is None:
        raise missing(f"no job {job_id!r} in batch {batch_id}")
    if step_id is not None and all(s.step_id != step_id for s in job.steps):
        raise missing(f"no step {step_id!r} in {batch_id}/{job_id}")
    return meta


def derive_view(layout: Layout, batch_id: str | None = None
                ) -> tuple[BatchScoreboard | SystemScoreboard, str]:
    """The system view (or `batch_id`'s) derived from the store, as the engine shows it, and
    its `model_dump_json(indent=2)`. A settled store's is kept for the next reader
    (board_files.keep_board). 404 for an unknown batch."""
    started_ns = time.time_ns()
    now = utcnow()
    index = StoreIndex(layout, for_scoreboards=True)
    derive: Callable[[datetime], BatchScoreboard | SystemScoreboard]
    if batch_id is not None:
        valid_id(batch_id, "batch_id")
        batch = index.load_batch(batch_id)
        if batch is None:
            raise missing(f"no batch {batch_id!r}")

        def derive(at: datetime) -> BatchScoreboard | SystemScoreboard:
            return batch_scoreboard(batch, at)
    else:
        index.load()

        def derive(at: datetime) -> BatchScoreboard | SystemScoreboard:
            return system_scoreboard(index.batches.values(), at)

    replay_marks(layout, index.batches)  # mark-failed / close, as the engine shows them
    # start pauses of the root (a usage limit) show with no engine serving too, and so do
    # stray entries the index skipped (said once, never a crash)
    pauses = read_pauses(layout)
    stray = unexpected_notes(index)

    def noted(at: datetime) -> BatchScoreboard | SystemScoreboard:
        board = derive(at)
        notes = [*board.notes, *pause_notes(pauses, at), *stray]
        return board.model_copy(update={"notes": notes}) if notes else board

    board = noted(now)
    text = board.model_dump_json(indent=2)

    def clock_free() -> bool:
        """Nothing running, no backoff pending: the same view derived ten years later."""
        later = noted(now + timedelta(days=3650)).model_copy(update={"computed_at": now})
        return later.model_dump_json(indent=2) == text

    keep_board(layout.root, batch_id, list(index.batches),
               [*index.input_paths(index.batches), f"_system/{PAUSES_DIR}"],
               text, started_ns, clock_free)
    return board, text


def view_json(layout: Layout, batch_id: str | None = None) -> dict[str, Any]:
    """What a reader is shown (the API): the serving engine's fresh file (a few ms), else
    (system view) the catalog's rows when every batch is settled there, else the view a
    derivation kept while nothing it read has changed, else a new derivation."""
    if batch_id is not None:
        valid_id(batch_id, "batch_id")
    served = engine_board(layout.root, batch_id)
    if served is not None:
        return served[0]
    text = None
    if batch_id is None:  # every batch settled and verified: the catalog's rows
        from .history import system_view

        text = system_view(layout)
    text = text if text is not None else cached_board(layout.root, batch_id)
    board: dict[str, Any] = json.loads(
        text if text is not None else derive_view(layout, batch_id)[1])
    return board


def list_jobs(layout: Layout, batch_id: str) -> dict[str, Any]:
    """Jobs of a batch with each step's derived status (the scoreboard's step rows)."""
    sb = view_json(layout, batch_id)  # the engine's file or a kept view when there is one
    meta = load_meta(layout, batch_id)
    rows: dict[tuple[str, str], dict[str, Any]] = {
        (r["job_id"], r["step_id"]): _without_nulls(r) for r in sb["steps"]}
    jobs = []
    for job in meta.jobs:
        steps = []
        for s in job.steps:
            row = rows.get((job.job_id, s.step_id), {"status": "blocked"})
            row.pop("job_id", None)
            row["step_id"] = s.step_id
            row["depends_on"] = list(s.depends_on)
            steps.append(row)
        jobs.append({"job_id": job.job_id, "working_directory": job.working_directory,
                     "workspace_policy": job.workspace_policy, "steps": steps})
    return {"batch_id": batch_id, "closed": sb["closed"], "jobs": jobs}


def _without_nulls(obj: Any) -> Any:
    """`model_dump(exclude_none=True)` of a model's JSON."""
    if isinstance(obj, dict):
        return {k: _without_nulls(v) for k, v in obj.items() if v is not None}
    if isinstance(obj, list):
        return [_without_nulls(v) for v in obj]
    return obj


def current_index(layout: Layout, batch_id: str, job_id: str) -> dict[str, Any]:
    """`current.json` as on disk; before the job's first attempt, the (empty) index that
    `phh reindex` would build."""
    check_step(layout, batch_id, job_id, None)
    cur = read_model(layout.current(batch_id, job_id), CurrentIndex)
    if cur is None:
        cur = build_current(layout, batch_id, job_id, utcnow())
    return cur.model_dump(mode="json", exclude_none=True)


def list_attempts(layout: Layout, batch_id: str, job_id: str, step_id: str) -> dict[str, Any]:
    check_step(layout, batch_id, job_id, step_id)
    return {"batch_id": batch_id, "job_id": job_id, "step_id": step_id,
            "attempts": [attempt_summary(p) for p in
                         list_attempt_dirs(layout, batch_id, job_id, step_id)]}


# ----------------------------------------------------------------------------- actions
def check_promote(layout: Layout, batch_id: str, job_id: str, step_id: str,
                  run_id: str | None) -> None:
    """400 unless `run_id` names a candidate attempt of a best-of-N step (checked before any
    request is written; the engine checks the rest: finished, succeeded, not yet promoted)."""
    if not run_id:
        raise LookupFailed(400, "promote needs RUN: the run_id of one of the step's candidates")
    meta = load_meta(layout, batch_id)
    spec = next((s for j in meta.jobs if j.job_id == job_id for s in j.steps
                 if s.step_id == step_id), None)
    if spec is None or spec.candidates <= 1:
        raise LookupFailed(400, f"{job_id}.{step_id} is not a best-of-N step "
                           "(candidates: 1): there is nothing to promote")
    adir = layout.attempts_dir(batch_id, job_id, step_id)
    name = next((n for n in attempt_dir_names(adir) if run_id_of(n) == run_id), None)
    if name is None or read_marker(adir / name) is None:
        raise LookupFailed(400, f"run {run_id} is not a candidate of {job_id}.{step_id}")


def request_action(
    layout: Layout, action: str, batch_id: str, job_id: str | None = None,
    step_id: str | None = None, *, run_id: str | None = None, runner_id: str | None = None,
    prompt: str | None = None, reason: str | None = None, requested_by: str = "cli",
    wait: float = 15.0,
) -> dict[str, Any]:
    """Write one operator request and wait (up to `wait` s) for a serving engine's result.

    `status`: applied | rejected (the engine said no: a conflict) | queued (no engine runs;
    applies when one starts) | pending (no result within `wait`)."""
    op = ACTIONS.get(action, action)
    if op not in ACTIONS.values():
        raise LookupFailed(400, f"unknown action {action!r}; one of: {', '.join(ACTIONS)}")
    for value, what in ((run_id, "run_id"), (runner_id, "runner_id")):
        if value is not None:  # a malformed id is bad input (400) before any lookup (404)
            valid_id(value, what)
    try:  # argv text is not UTF-8-checked (surrogateescape): it could never be written
        check_tree({"prompt": prompt, "reason": reason})
    except DocumentError as exc:
        raise LookupFailed(400, str(exc)) from None
    if op == "close":
        load_meta(layout, batch_id)
    else:
        if job_id is None or step_id is None:
            raise LookupFailed(400, f"{action} needs a job_id and a step_id")
        check_step(layout, batch_id, job_id, step_id)
    if op == "resume" and not prompt:
        raise LookupFailed(400, "resume needs a prompt (the follow-up turn)")
    if op == "promote":
        assert job_id is not None and step_id is not None
        check_promote(layout, batch_id, job_id, step_id, run_id)
    try:
        req = make_request(layout, op, batch_id, job_id=job_id, step_id=step_id, run_id=run_id,
                           runner_id=runner_id, prompt=prompt, reason=reason,
                           requested_by=requested_by)
    except ValidationError as exc:
        raise LookupFailed(400, "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())) from None
    out: dict[str, Any] = {"nonce": req.nonce, "action": op}
    if not engine_serving(layout):
        out.update(status="queued",
                   message="no engine running: request queued; it applies when one starts")
        return out
    deadline = time.monotonic() + max(0.0, wait)
    res = read_result(layout, req.nonce)
    while res is None and time.monotonic() < deadline:
        time.sleep(0.05)
        res = read_result(layout, req.nonce)
    if res is None:
        out.update(status="pending", message=f"no result within {wait:g}s")
    else:
        out.update(status=res.outcome, message=res.message, run_id=res.run_id)
    return out
