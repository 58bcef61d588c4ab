"""The harness config (docs/layout.md#harness-config): operator defaults and limits, materialised
under runs/_system."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import Field, model_validator

from .common import MAX_SECONDS, Id, Strict
from .policies import ExecutionPolicy, RetentionPolicy, RetryPolicy, Timeouts

MIN_STALE_SECONDS = 1800

DEFAULT_ALLOWED_OVERRIDES: list[str] = [
    "concurrency",
    "execution_policy",
    "timeouts",
    "retries",
    "retention_policy",
    "workspace_policy",
    "allow_shared_directory_concurrency",
    "working_root",
]


class ApiMode(Strict):
    enabled: bool = False
    auth_mode: Literal["none", "local_trust", "token"] = "local_trust"
    host: str = "127.0.0.1"
    port: int = Field(default=8765, ge=1, le=65535)
    token_env: str = Field(default="PHH_API_TOKEN", description="env var holding the token")
    token_file: str | None = Field(default=None, description="file outside runs/ with the token")


class QueueMode(Strict):
    enabled: bool = True
    queue_root: str = "queue"


class Interfaces(Strict):
    api_mode: ApiMode = Field(default_factory=ApiMode)
    filesystem_queue_mode: QueueMode = Field(default_factory=QueueMode)


class Defaults(Strict):
    execution_policy: ExecutionPolicy = Field(default_factory=ExecutionPolicy)
    timeouts: Timeouts = Field(default_factory=Timeouts)
    retries: RetryPolicy = Field(default_factory=RetryPolicy)
    retention_policy: RetentionPolicy = Field(default_factory=RetentionPolicy)
    workspace_policy: Literal["shared", "isolated"] = "shared"


class StuckRemediation(Strict):
    enabled: bool = False
    action: Literal["cancel_retry", "resume", "requeue"] = "cancel_retry"
    max_per_step: int = Field(default=1, ge=0)


class ScoreboardDefaults(Strict):
    heartbeat_stale_after_seconds: float = Field(default=2700, ge=MIN_STALE_SECONDS,
                                                 le=MAX_SECONDS)
    stuck_auto_remediation: StuckRemediation = Field(default_factory=StuckRemediation)
    write_interval_seconds: float = Field(default=1.0, gt=0)


class RunnerSpec(Strict):
    runner_id: Id = "local"
    capacity: int = Field(default=4, ge=0)
    kind: Literal["local", "ray"] = Field(
        default="local", description="local: this host; ray: the nodes of a Ray cluster, "
        "one node agent per node (docs/scale-out.md)")
    address: str | None = Field(default=None, description="kind ray: the cluster address "
                                "as `ray.init(address=...)` takes it (HOST:PORT, ray://..., auto)")
    namespace: str | None = Field(default=None, description="kind ray: Ray namespace of the "
                                  "node agents; default derived from the runs root")
    slots_resource: str = Field(default="codex_slots", min_length=1, description="kind ray: "
                                "the custom node resource that counts Codex agents per node")
    node_labels: dict[str, str] = Field(default_factory=dict, description="kind ray: only "
                                        "nodes carrying all these labels run attempts")
    draining: bool = Field(
        default=False,
        description="static drain in the pool config; the runtime toggle is "
        "runners/<runner_id>/drain.json (`phh runner drain|undrain`)",
    )


class RunnerHealthSettings(Strict):
    """runners/<id>/health.json cadence, and when a runner counts as gone
    (docs/architecture.md#scheduling)."""

    interval_seconds: float = Field(default=5.0, gt=0, le=300)
    stale_after_seconds: float = Field(
        default=30.0, gt=0,
        description="a runner whose health.json is older than this takes no work and is "
        "skipped by schedulers; must exceed interval_seconds",
    )

    @model_validator(mode="after")
    def _stale_after_interval(self) -> RunnerHealthSettings:
        if self.stale_after_seconds <= self.interval_seconds:
            raise ValueError(
                f"stale_after_seconds ({self.stale_after_seconds:g}) must exceed "
                f"interval_seconds ({self.interval_seconds:g}), or every runner looks gone"
            )
        return self


class GcSettings(Strict):
    """Scheduled retention/GC inside the engine (docs/layout.md#retention); `phh gc` works
    regardless."""

    enabled: bool = False
    interval_seconds: float = Field(default=3600.0, ge=60)


class Limits(Strict):
    max_jobs_per_batch: int = Field(default=10000, ge=1)
    max_steps_per_job: int = Field(default=100, ge=1)
    max_prompt_bytes: int = Field(default=1_000_000, ge=1)
    global_concurrency: int = Field(default=8, ge=1)
    per_working_directory: int = Field(
        default=1, ge=1, description="max concurrent steps sharing a working dir (shared policy)"
    )
    min_free_disk_bytes: int = Field(default=1 << 30, ge=0)
    min_free_inodes: int = Field(
        default=20_000, ge=0,
        description="free inodes on the runs store below which no attempt starts (an attempt "
                    "takes about 90; ignored where the filesystem has no inode limit)")
    min_available_memory_bytes: int = Field(default=512 << 20, ge=0)
    usage_limit_pause_seconds: float = Field(
        default=60.0, gt=0, le=86400,
        description="first start pause after a usage limit whose reset time is not known; "
        "doubles on each further usage limit, up to usage_limit_pause_max_seconds")
    usage_limit_pause_max_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400)


class CodexSettings(Strict):
    bin: str | None = None
    config_toml: str | None = None
    credential_dir: str | None = Field(default=None, description="runner-local dir with auth.json")
    heartbeat_seconds: float = Field(default=30.0, gt=0, le=900)
    cancel_grace_seconds: float = Field(default=5.0, ge=0, le=3600)
    linger_grace_seconds: float = Field(
        default=10.0, ge=0, le=3600,
        description="seconds Codex may stay up after turn.completed with a valid final "
                    "message before phh ends its process group and records the attempt",
    )
    extra_args: list[str] = Field(default_factory=list)


class HarnessSettings(Strict):
    """What the operator edits (`<root>/phh_config.json`); everything has a default."""

    interfaces: Interfaces = Field(default_factory=Interfaces)
    defaults: Defaults = Field(default_factory=Defaults)
    scoreboard: ScoreboardDefaults = Field(default_factory=ScoreboardDefaults)
    runners: list[RunnerSpec] = Field(default_factory=lambda: [RunnerSpec()])
    limits: Limits = Field(default_factory=Limits)
    runner_health: RunnerHealthSettings = Field(default_factory=RunnerHealthSettings)
    gc: GcSettings = Field(default_factory=GcSettings)
    allowed_overrides: list[str] = Field(default_factory=lambda: list(DEFAULT_ALLOWED_OVERRIDES))
    codex: CodexSettings = Field(default_factory=CodexSettings)


class HarnessConfig(HarnessSettings):
    """The materialised snapshot: settings plus a content-derived version."""

    harness_config_version: str
    written_at: datetime = Field(strict=False)  # read back from JSON text
