"""One attempt's book-keeping, shared by the local runner's stages (runners/prepare.py,
runners/watch.py, runners/conclude.py) and the runner protocol (runners/base.py):
`AttemptPlan` (what the scheduler decided), `LiveAttempt` (a running attempt, for cancel),
`_Watch` (what monitoring and concluding need), and `RunnerCore`, the attributes and the
small helpers every stage uses (worker threads, the state factory, the change callback).
`LocalRunner.__init__` (runners/local.py) sets the attributes.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ..derive.readiness import ResumeResolution
from ..models import AttemptState, AttemptStatus, HarnessConfig, Trigger
from ..store.diskguard import WriteGuard
from ..store.paths import Layout
from ..store.views import AttemptView
from .codex_cli import CodexInfo

T = TypeVar("T")

#: Worker threads for the attempts' file work (start, end, current.json). Few on purpose:
#: every blocking call in them releases and retakes the GIL, and each extra thread contending
#: for it costs futex hand-offs and context switches. Measured (bench/README.md): 6 threads
#: (asyncio's default pool here) 4.1 ms of system CPU per attempt, 2 threads 3.0 ms, same
#: wall time. Two keep one file-system wait (an fsync) from stalling every start and end.
IO_THREADS = 2


@dataclass(slots=True)
class AttemptPlan:
    """What the scheduler decided: which step, why, and where a resume copies from."""

    batch_id: str
    job_id: str
    step_id: str
    runner_id: str
    trigger: Trigger = "scheduled"
    retry_of: AttemptView | None = None
    resume: ResumeResolution | None = None
    resume_same_thread: bool = False
    extra_prompt: str | None = None
    override_nonce: str | None = None
    #: best-of-N: the candidate index this attempt runs (runners/candidates.py)
    candidate: int | None = None
    #: the step's attempt directory names the decision was made on (None: not checked); a
    #: claim that finds another one on disk (another runner's) is refused, so a retry
    #: budget or a failure seen by one runner is never spent twice
    known_attempts: frozenset[str] | None = None


@dataclass(slots=True)
class LiveAttempt:
    """Book-keeping for one running attempt, for cancel and status queries."""

    plan: AttemptPlan
    run_id: str
    path: Path
    pid: int | None = None
    cancel_requested: asyncio.Event = field(default_factory=asyncio.Event)
    cancel_reason: str = "canceled"
    #: time.monotonic() of its last heartbeat (ages in this process ignore wall-clock jumps)
    beat_mono: float | None = None


@dataclass(slots=True)
class _Watch:
    """What monitoring and finalisation need, whether we spawned the process or adopted it."""

    events_path: Path
    expected_thread: str | None
    schema: dict[str, Any]
    workdir: Path
    timeout_seconds: float
    capture_git: bool
    artifacts_expected: list[str]
    #: the linked credential file and its fingerprint when Codex started (credentials.py)
    credential: tuple[Path, str | None] | None = None


class RunnerCore:
    """What the stages of the local runner share; set by `LocalRunner.__init__`."""

    layout: Layout
    config: HarnessConfig
    codex: CodexInfo
    runner_id: str
    default_schema: Path
    on_change: Callable[[str, str, str, AttemptView], None]
    codex_config_toml: Path | None
    live: dict[str, LiveAttempt]
    host: str
    _default_schema_obj: dict[str, Any]
    #: failed store writes (the engine shares its own guard here)
    writes: WriteGuard
    _pool: ThreadPoolExecutor | None
    #: the cluster node this runner's attempts run on (meta.json environment_snapshot.node);
    #: None on a single host. Set by the Ray node agent (runners/ray_node.py).
    node: str | None
    #: current.json is written by whoever schedules: this runner when it is the engine's
    #: own, the engine when this runner is a cluster node agent (the engine's single writer)
    writes_pointers: bool

    async def _in_io(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)` on the attempts' own worker threads (IO_THREADS)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(IO_THREADS, thread_name_prefix="phh-attempt-io")
        return await asyncio.get_running_loop().run_in_executor(
            self._pool, functools.partial(fn, *args, **kwargs))

    def _state(self, plan: AttemptPlan, run_id: str, status: AttemptStatus, now: datetime,
               **kw: Any) -> AttemptState:
        return AttemptState(
            batch_id=plan.batch_id, job_id=plan.job_id, step_id=plan.step_id, run_id=run_id,
            runner_id=self.runner_id, status=status, updated_at=now, **kw,
        )

    def _emit(self, plan: AttemptPlan, view: AttemptView) -> None:
        self.on_change(plan.batch_id, plan.job_id, plan.step_id, view)
