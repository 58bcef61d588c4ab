"""What the engine tells its listeners (headless log lines, the dashboard), and the error it
raises when it cannot start. Its own module so the engine's collaborators (admission,
recovery, operator, boards, watch) emit events without importing the loop."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from ..models.common import EventKind


class EngineError(Exception):
    """The engine cannot start (e.g. its runner is already served by another engine)."""


@dataclass(slots=True)
class EngineEvent:
    """What headless logs and the dashboard hear about: one fact, already derived."""

    kind: EventKind
    at: datetime
    batch_id: str | None = None
    job_id: str | None = None
    step_id: str | None = None
    run_id: str | None = None
    status: str | None = None
    detail: str | None = None
    duration_seconds: float | None = None
    data: dict[str, Any] = field(default_factory=dict)
