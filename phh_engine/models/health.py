"""runners/<runner_id>/health.json (docs/architecture.md#scheduling) and
runners/<runner_id>/drain.json."""

from __future__ import annotations

from datetime import datetime

from pydantic import Field

from .common import Id, Record


class RunnerNode(Record):
    """One node of a cluster runner (Ray, docs/scale-out.md), as its engine last saw it."""

    label: str = Field(description="the node's phh-node label, else its node id's prefix")
    node_id: str | None = None
    alive: bool = Field(description="false once the cluster reports the node dead")
    slots_total: int = Field(description="its codex_slots resource")
    slots_used: int = Field(description="attempts this engine runs there")
    agents_running: int = Field(description="attempts its node agent reported holding")
    last_seen_at: datetime | None = Field(default=None, description="its agent's last answer")
    error: str | None = Field(default=None, description="why its agent did not answer")


class RunnerHealth(Record):
    runner_id: Id
    host: str
    pid: int
    started_at: datetime
    last_seen_at: datetime
    capacity: int
    effective_capacity: int | None = Field(
        default=None, description="what it fills now: capacity lowered by AIMD after HTTP 429 "
        "rate limits (halved per 429, +1 per success, 1..capacity)")
    running: int
    draining: bool
    disk_free_bytes: int | None = None
    disk_free_inodes: int | None = Field(
        default=None, description="free inodes on the runs store (null: no inode limit)")
    memory_available_bytes: int | None = None
    load_1m: float | None = None
    codex_cli_version: str | None = None
    phh_version: str
    drain_reason: str | None = Field(default=None, description="why it is draining, if it is")
    accepting_work: bool = Field(
        default=True,
        description="false while draining, stopping, or low on disk/memory: starts nothing new",
    )
    problems: list[str] = Field(
        default_factory=list,
        description="why it takes no new work besides draining (e.g. low disk), one line each",
    )
    interval_seconds: float | None = Field(default=None, description="how often it is written")
    stopped_at: datetime | None = Field(
        default=None, description="set by the last write of an engine that stopped cleanly"
    )
    nodes: list[RunnerNode] = Field(
        default_factory=list, description="a cluster runner's nodes (empty on a single host)")


class DrainRequest(Record):
    """runners/<runner_id>/drain.json: written by any process (`phh runner drain`), read by the
    runner's engine on every health tick and on change. Absent (or draining=false) = accepting.
    """

    runner_id: Id
    draining: bool
    reason: str | None = None
    requested_at: datetime
    requested_by: str = "cli"


class CatalogFileRecord(Record):
    """runners/<runner_id>/catalog_file.json: the catalog file this runner's engine writes,
    rewritten when it opens or reopens one. `phh doctor` compares it with the file at the
    path, so it never calls a catalog "ok" that the serving engine does not write
    (docs/catalog.md#how-it-is-kept-current)."""

    path: str = Field(description="the catalog file's path as the engine opened it")
    file_id: list[int] | None = Field(
        default=None, min_length=2, max_length=2,
        description="(st_dev, st_ino) of the file the engine holds open")
    problem: str | None = Field(
        default=None, description="why the engine cannot write a catalog now, if it cannot")
