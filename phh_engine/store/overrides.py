"""Operator actions as files (docs/operator-actions.md#rules): any process can ask, the engine
applies each once.

A request is `runs/_system/overrides/<nonce>.json`; the engine that takes it creates
`<nonce>.claim` exclusively (so two engines never both apply it) and publishes the outcome as
the write-once `<nonce>.result.json`. Applied results are also the durable record of
step marks (mark-failed, close), replayed when an index loads.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, ValidationError

from ..models import utcnow
from ..models.common import Id, Record, check_id
from .docread import OVERRIDE_REQUEST_MAX_BYTES, DocumentReadError, read_document_bytes
from .documents import DocumentError, loads_json
from .files import atomic_write_json, read_model, write_once_json
from .paths import Layout
from .views import BatchView, StepView

Action = Literal["cancel", "retry", "resume", "requeue", "mark_failed", "close", "promote"]
ACTIONS: tuple[str, ...] = ("cancel", "retry", "resume", "requeue", "mark_failed", "close",
                            "promote")


def check_nonce(value: str) -> str:
    """A nonce becomes file names in runs/_system/overrides/: it must be a valid id (no '/',
    no '..', no leading dot). ValueError says why."""
    return check_id(value, incoming=False)


#: A request's nonce: its file is `<nonce>.json`, its claim and result are named after it.
Nonce = Annotated[str, AfterValidator(check_nonce)]


class OverrideRequest(Record):
    nonce: Nonce
    action: Action
    batch_id: Id
    job_id: Id | None = None
    step_id: Id | None = None
    run_id: Id | None = None
    runner_id: Id | None = None
    prompt: str | None = Field(default=None, description="extra prompt for retry/resume")
    reason: str | None = None
    requested_at: datetime
    requested_by: str = Field(default="cli", description="cli | tui | api | engine")


OverrideOutcome = Literal["applied", "rejected"]


class OverrideResult(Record):
    nonce: Nonce
    action: Action
    batch_id: Id
    job_id: Id | None = None
    step_id: Id | None = None
    outcome: OverrideOutcome
    message: str
    applied_at: datetime
    applied_by: str
    run_id: Id | None = Field(default=None, description="attempt canceled or started")
    reason: str | None = None


def overrides_dir(layout: Layout) -> Path:
    return layout.system / "overrides"


def _nonce_file(layout: Layout, nonce: str, suffix: str) -> Path:
    """`runs/_system/overrides/<nonce><suffix>`; ValueError for a nonce that is no valid id
    (it would name a path elsewhere)."""
    return overrides_dir(layout) / f"{check_nonce(nonce)}{suffix}"


def _read_request_bytes(path: Path) -> bytes:
    # inside the store: never follow a symlink, never block on a FIFO, never read a device
    return read_document_bytes(path, max_bytes=OVERRIDE_REQUEST_MAX_BYTES,
                               what="override request", follow_symlinks=False)


def _stem(path: Path) -> str:
    return path.name[: -len(".json")] if path.name.endswith(".json") else path.name


def read_request(path: Path) -> OverrideRequest | None:
    """The request in `path` (a `<nonce>.json`), or None when it cannot be applied: not a
    regular file within 1 MiB, not a valid request, or its nonce is not the file's stem (the
    result is named after the file, so it must be found where the asker looks).
    `request_problem` says why."""
    try:
        req = OverrideRequest.model_validate_json(_read_request_bytes(path))
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None
    return req if req.nonce == _stem(path) else None


def request_problem(path: Path) -> str:
    """Why the request file at `path` cannot be applied, naming the JSON path at fault (for
    a request `read_request` refused: hand-written, hostile or from another version)."""
    try:
        data = loads_json(_read_request_bytes(path))
    except DocumentReadError as exc:
        return f"$: {exc.reason}"
    except DocumentError as exc:
        return f"{exc.path}: {exc.message}"
    except OSError as exc:
        return f"cannot read it: {exc.strerror or exc}"
    except ValueError as exc:
        return f"$: not valid JSON ({exc})"
    try:
        OverrideRequest.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err.get("loc", ())) or "$"
        return f"{where}: {err.get('msg', 'invalid')}"
    nonce = data.get("nonce") if isinstance(data, dict) else None
    if nonce != _stem(path):
        return (f"nonce: {nonce!r} differs from the file name's {_stem(path)!r} (a request "
                "is <nonce>.json)")
    return "$: unreadable"


def refuse_request(layout: Layout, path: Path, applied_by: str) -> str:
    """Refuse the request file at `path` and return why (see `request_problem`). When the
    file's stem is a valid nonce and the request names its action and batch, the refusal is
    also published as a `rejected` result under the FILE's stem (never a path taken from
    the content), so whoever dropped the file gets an answer."""
    why = request_problem(path)
    stem = _stem(path)
    try:
        check_nonce(stem)
        data = loads_json(_read_request_bytes(path))
        res = OverrideResult.model_validate({
            "nonce": stem, "action": data.get("action"), "batch_id": data.get("batch_id"),
            "job_id": data.get("job_id"), "step_id": data.get("step_id"),
            "outcome": "rejected", "message": f"request refused: {why}",
            "applied_at": utcnow(), "applied_by": applied_by})
    except (OSError, ValueError, AttributeError, DocumentError):
        return why
    write_result(layout, res)
    return why


def new_nonce() -> str:
    """Monotonic across processes on one host (ns clock) and unique (random suffix)."""
    return f"{time.time_ns():020d}-{secrets.token_hex(3)}"


def write_request(layout: Layout, req: OverrideRequest) -> Path:
    path = _nonce_file(layout, req.nonce, ".json")
    atomic_write_json(path, req)
    return path


def make_request(layout: Layout, action: str, batch_id: str, **kw: object) -> OverrideRequest:
    # validated like a request file: the action and ids arrive from the CLI, API and dashboard
    req = OverrideRequest.model_validate({"nonce": new_nonce(), "action": action,
                                          "batch_id": batch_id, "requested_at": utcnow(), **kw})
    write_request(layout, req)
    return req


def claim(layout: Layout, nonce: str) -> bool:
    """Exclusive: exactly one engine applies a request. ValueError for an invalid nonce."""
    try:
        fd = os.open(_nonce_file(layout, nonce, ".claim"),
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def result_path(layout: Layout, nonce: str) -> Path:
    """Where the result of `nonce` is published; ValueError for an invalid nonce."""
    return _nonce_file(layout, nonce, ".result.json")


def write_result(layout: Layout, res: OverrideResult) -> None:
    with contextlib.suppress(FileExistsError):  # already recorded: exactly once
        write_once_json(result_path(layout, res.nonce), res)


def read_result(layout: Layout, nonce: str) -> OverrideResult | None:
    """The published result, or None (none yet, unreadable, or an invalid nonce, which no
    result can have). A result whose nonce is not its file's is not this request's."""
    try:
        path = result_path(layout, nonce)
    except ValueError:
        return None
    res = read_model(path, OverrideResult)
    return res if res is not None and res.nonce == nonce else None


def list_requests(layout: Layout) -> list[OverrideRequest]:
    d = overrides_dir(layout)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        if p.name.endswith(".result.json") or p.name.startswith("."):
            continue
        req = read_request(p)
        if req is not None:
            out.append(req)
    return out


def list_results(layout: Layout) -> list[OverrideResult]:
    d = overrides_dir(layout)
    if not d.is_dir():
        return []
    # a result counts only under its own nonce's name (a hand-written one could claim another)
    return [r for p in sorted(d.glob("*.result.json"))
            if (r := read_model(p, OverrideResult)) is not None
            and p.name == f"{r.nonce}.result.json"]


def apply_marks(batches: Mapping[str, BatchView], res: OverrideResult) -> StepView | None:
    """Put the durable part of an applied result on the views: close, mark-failed, and a
    retry/requeue lifting a mark. Returns the step it names (None for close or unknown).
    Shared by the engine's replay and the dashboard's observer mode."""
    batch = batches.get(res.batch_id)
    if res.outcome != "applied" or batch is None:
        return None
    if res.action == "close":
        batch.closed = True
        return None
    job = batch.jobs.get(res.job_id or "")
    step = job.steps.get(res.step_id or "") if job else None
    if step is None:
        return None
    if res.action == "mark_failed":
        step.marks.marked_failed = res.reason or "marked failed by operator"
    elif res.action in ("retry", "requeue"):
        step.marks.marked_failed = None
    return step


def replay_marks(layout: Layout, batches: Mapping[str, BatchView]) -> None:
    """Every applied result onto freshly loaded views: what a reader without an engine
    (CLI recompute, API, observer dashboard) must do to show what the engine shows."""
    for res in list_results(layout):
        apply_marks(batches, res)


def is_claimed(layout: Layout, nonce: str) -> bool:
    """Whether an engine claimed `nonce`; False for an invalid nonce (nothing can claim it)."""
    try:
        return _nonce_file(layout, nonce, ".claim").exists()
    except ValueError:
        return False
