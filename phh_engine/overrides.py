"""Operator actions as files (SPEC §7.6): any process can ask, the engine applies each once.

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
from typing import Literal

from pydantic import Field, ValidationError

from .documents import DocumentError, loads_json
from .models import utcnow
from .models.common import Id, Record
from .paths import Layout
from .store import atomic_write_json, read_model, write_once_json
from .views import BatchView, StepView

Action = Literal["cancel", "retry", "resume", "requeue", "mark_failed", "close"]
ACTIONS: tuple[str, ...] = ("cancel", "retry", "resume", "requeue", "mark_failed", "close")


class OverrideRequest(Record):
    nonce: str
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
    nonce: str
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


def request_problem(path: Path) -> str:
    """Why the request file at `path` cannot be applied, naming the JSON path at fault (for
    a request `read_model` refused: hand-written, hostile or from another version)."""
    try:
        data = loads_json(path.read_bytes())
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
    return "$: unreadable"


def new_nonce() -> str:
    """Monotonic across processes on one host (ns clock) and unique (random suffix)."""
    return f"{time.time_ns():020d}-{secrets.token_hex(3)}"


def write_request(layout: Layout, req: OverrideRequest) -> Path:
    path = overrides_dir(layout) / f"{req.nonce}.json"
    atomic_write_json(path, req)
    return path


def make_request(layout: Layout, action: str, batch_id: str, **kw: object) -> OverrideRequest:
    # validated like a request file: the action and ids arrive from the CLI, API and dashboard
    req = OverrideRequest.model_validate({"nonce": new_nonce(), "action": action,
                                          "batch_id": batch_id, "requested_at": utcnow(), **kw})
    write_request(layout, req)
    return req


def claim(layout: Layout, nonce: str) -> bool:
    """Exclusive: exactly one engine applies a request."""
    try:
        fd = os.open(overrides_dir(layout) / f"{nonce}.claim",
                     os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    os.write(fd, str(os.getpid()).encode())
    os.close(fd)
    return True


def result_path(layout: Layout, nonce: str) -> Path:
    return overrides_dir(layout) / f"{nonce}.result.json"


def write_result(layout: Layout, res: OverrideResult) -> None:
    with contextlib.suppress(FileExistsError):  # already recorded: exactly once
        write_once_json(result_path(layout, res.nonce), res)


def read_result(layout: Layout, nonce: str) -> OverrideResult | None:
    return read_model(result_path(layout, nonce), OverrideResult)


def list_requests(layout: Layout) -> list[OverrideRequest]:
    d = overrides_dir(layout)
    if not d.is_dir():
        return []
    out = []
    for p in sorted(d.glob("*.json")):
        if p.name.endswith(".result.json") or p.name.startswith("."):
            continue
        req = read_model(p, OverrideRequest)
        if req is not None:
            out.append(req)
    return out


def list_results(layout: Layout) -> list[OverrideResult]:
    d = overrides_dir(layout)
    if not d.is_dir():
        return []
    return [r for p in sorted(d.glob("*.result.json"))
            if (r := read_model(p, OverrideResult)) is not None]


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
    return (overrides_dir(layout) / f"{nonce}.claim").exists()
