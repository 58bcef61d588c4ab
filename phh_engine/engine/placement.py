"""Steps held back because the runner has no node for them now (runners/base.Placing): a
cluster whose nodes are full, or none of which sees a resume's source
(docs/scale-out.md#placement).

The engine asks the runner before it claims, so a held step gets no attempt directory: it
stays `ready`, not runnable, with the runner's reason, until the hold's time is up or the
runner says its nodes changed (`wake`), and is then asked again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import cast

from ..derive.scheduler import ReadySet
from ..models import utcnow
from ..runners.attempt import AttemptPlan
from ..runners.base import Placing
from ..store.views import StepView


class PlacementGate:
    """The engine's side of placement: which steps wait, and why (their marks)."""

    def __init__(self) -> None:
        #: (batch, job, step) -> the held step (its marks carry the hold)
        self.held: dict[tuple[str, str, str], StepView] = {}
        #: runner type -> whether it places (a protocol isinstance check costs ~10 µs)
        self._placing: dict[type, bool] = {}

    def hold(self, runner: object, plan: AttemptPlan, step: StepView) -> bool:
        """True when the runner cannot place `plan` now: do not claim; the step's marks say
        why and until when. False (and any old hold cleared) when it can, or when the runner
        places nothing itself (a single host)."""
        placing = self._placing.get(type(runner))
        if placing is None:
            placing = self._placing[type(runner)] = isinstance(runner, Placing)
        if not placing:
            return False
        key = (plan.batch_id, plan.job_id, plan.step_id)
        why = cast(Placing, runner).place(plan)
        if why is None:
            if self.held.pop(key, None) is not None:
                step.marks.placement_hold = step.marks.placement_until = None
            return False
        step.marks.placement_hold = why.reason
        step.marks.placement_until = utcnow() + timedelta(seconds=why.retry_seconds)
        self.held[key] = step
        return True

    def wake(self, ready: ReadySet, poke: Callable[[], None],
             keys: set[tuple[str, str, str]]) -> None:
        """The runner may have a node for these held steps (batch, job, step) now: they are
        asked again at once."""
        woke = False
        for key in keys:
            step = self.held.pop(key, None)
            if step is not None:
                step.marks.placement_hold = step.marks.placement_until = None
                ready.touch(key[0], key[1])
                woke = True
        if woke:
            poke()
