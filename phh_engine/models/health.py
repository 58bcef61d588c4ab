"""runners/<runner_id>/health.json (SPEC §6.7)."""

from __future__ import annotations

from datetime import datetime

from .common import Id, Record


class RunnerHealth(Record):
    runner_id: Id
    host: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    capacity: int
    running: int
    draining: bool
    disk_free_bytes: int | None = None
    memory_available_bytes: int | None = None
    load_1m: float | None = None
    codex_cli_version: str | None = None
    phh_version: str
