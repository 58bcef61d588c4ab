"""Attempt (moved from local.py)."""

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
