"""The Runner protocol: what the engine needs from wherever attempts execute.

The engine stays the only scheduler: it decides which step starts, and the runner's `claim`
(under the job lock) is the only way an attempt directory comes to exist. A runner then starts
the claimed attempt (`run`), stops it (`cancel`), takes over one a previous engine left
running (`adopt`), and reports its capacity (`slots`) and per-node health (`nodes`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from ..store.diskguard import WriteGuard
    from ..store.views import AttemptView, BatchView, JobView, StepView
    from .attempt import AttemptPlan, LiveAttempt


@dataclass(slots=True)
class NodeStatus:
    """One node of a cluster runner, as `phh runner list` and the system screen show it.

    `slots_total` comes from the node's `codex_slots` resource; `last_seen` is when the
    engine last heard from the node's agent (None: never)."""

    runner_id: str
    label: str
    alive: bool
    slots_total: int
    slots_used: int
    agents_running: int
    last_seen: datetime | None = None
    node_id: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "runner_id": self.runner_id, "label": self.label, "alive": self.alive,
            "slots_total": self.slots_total, "slots_used": self.slots_used,
            "agents_running": self.agents_running, "node_id": self.node_id,
            "last_seen": self.last_seen.isoformat() if self.last_seen else None,
            "error": self.error,
        }


@dataclass(frozen=True, slots=True)
class Hold:
    """Why a runner cannot place an attempt now (`Placing.place`): the step is not claimed
    and waits, showing `reason`, for at most `retry_seconds` before it is asked again (the
    runner's `on_placement` callback may end the wait sooner)."""

    reason: str
    retry_seconds: float


@runtime_checkable
class Placing(Protocol):
    """A runner that chooses a node per attempt and may have none for it now (a cluster:
    every node full, or none can see a resume's source). The engine asks before it claims,
    so a step with no node never gets an attempt directory."""

    def place(self, plan: AttemptPlan) -> Hold | None:
        """None: `run` of this plan, if called before the next `place`, has a node (the node
        is reserved for it); else why not (docs/scale-out.md#placement)."""
        ...


@runtime_checkable
class Runner(Protocol):
    """What the engine calls. All methods run on the engine's loop thread except `close`."""

    runner_id: str
    #: run_id -> book-keeping of the attempts this runner currently watches
    live: dict[str, LiveAttempt]
    #: the engine's record of failed store writes (a full disk pauses starts, docs/safety.md)
    writes: WriteGuard

    def claim(self, plan: AttemptPlan) -> tuple[str, Path] | None:
        """Create the attempt directory (queued) under the job lock, exactly once per step;
        None when another attempt of the step is in flight or it already succeeded."""
        ...

    async def run(self, plan: AttemptPlan, batch: BatchView, job: JobView, step: StepView,
                  claimed: tuple[str, Path]) -> AttemptView:
        """Start a claimed attempt and return its terminal view when it ends."""
        ...

    def cancel(self, run_id: str, reason: str = "canceled") -> bool:
        """Ask a live attempt to stop (SIGINT to its process group, SIGKILL after the
        grace); False when this runner does not hold it."""
        ...

    async def adopt(self, plan: AttemptPlan, view: AttemptView, spec_artifacts: list[str]
                    ) -> AttemptView:
        """Watch an attempt a previous engine left running to its end; its terminal view."""
        ...

    def beat_ages(self) -> dict[str, float]:
        """{run_id: seconds since its last heartbeat} on the monotonic clock, for attempts
        this process watches itself (empty when it cannot know)."""
        ...

    def slots(self) -> int | None:
        """Attempts it can hold at once now (a cluster: free + used codex_slots of live
        nodes); None: the harness config's runner capacity applies."""
        ...

    def nodes(self) -> list[NodeStatus]:
        """Per-node status (empty for a single host)."""
        ...

    def close(self) -> None:
        """Release threads and connections; blocking, called off the loop."""
        ...
