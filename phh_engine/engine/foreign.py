"""Attempts another runner runs on this root (docs/architecture.md#concurrency-model: several
engines may share a root). The engine learns of another runner's attempt when a claim finds
it on disk (the claim re-reads the step under the job lock) or a batch is loaded with it;
from then on it must also learn when that attempt moves on (running, ended), or it would
keep the step `running` in its index forever: its dependants never become ready here, its
scoreboards stay stale, and `--until-idle` would stop while the other runner still works.

Each followed attempt is re-read when its state.json changes (one `stat` per poll, a read
only on change), every POLL_INTERVAL seconds while any is followed, not at all otherwise:
O(other runners' live attempts) per poll, bounded by their concurrency, never by history.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..store.paths import STATE
from ..store.views import AttemptView

if TYPE_CHECKING:
    from .loop import Engine

log = logging.getLogger(__name__)

#: seconds between looks at other runners' live attempts (only while there are some)
POLL_INTERVAL = 0.25


@dataclass(slots=True)
class _Foreign:
    batch_id: str
    job_id: str
    step_id: str
    dir_name: str
    runner_id: str
    #: (inode, mtime_ns, size) of its state.json when last read: state writes replace the
    #: file (atomic rename), so any write changes it
    sig: tuple[int, int, int] | None


def _sig(path: str) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns, st.st_size


class ForeignAttempts:
    """The in-flight attempts of other runners that this engine's index holds (run_id ->
    where it is). `note` is called for every attempt the index takes in; `run` polls."""

    def __init__(self, eng: Engine) -> None:
        self.eng = eng
        self.live: dict[str, _Foreign] = {}
        #: set when the first attempt is followed (made on the engine's loop, in `run`)
        self._some: asyncio.Event | None = None

    def is_foreign(self, view: AttemptView) -> bool:
        """Another runner's attempt that no task of this engine watches (an adopted attempt
        of a gone runner is watched here, so it is not foreign)."""
        rid = view.runner_id
        return rid is not None and rid != self.eng.runner_id and view.run_id not in self.eng.tasks

    def note(self, batch_id: str, job_id: str, step_id: str, view: AttemptView) -> None:
        """The index took in `view`: follow it while it is another runner's and in flight."""
        if view.terminal or not self.is_foreign(view):
            self.live.pop(view.run_id, None)
            return
        if view.run_id in self.live:
            return
        path = os.path.join(view.path, STATE)
        self.live[view.run_id] = _Foreign(batch_id, job_id, step_id, view.dir_name,
                                          view.runner_id or "", _sig(path))
        if self._some is not None:
            self._some.set()

    @property
    def running(self) -> int:
        """How many in-flight attempts of other runners this engine waits for."""
        return len(self.live)

    def poll(self) -> bool:
        """Re-read every followed attempt whose state.json changed (or vanished). True when
        one changed; the scheduler and the boards are told."""
        changed = False
        index = self.eng.index
        for run_id, f in list(self.live.items()):
            if run_id in self.eng.tasks:  # adopted here meanwhile: our own task reports it
                self.live.pop(run_id, None)
                continue
            adir = self.eng.layout.attempt_dir(f.batch_id, f.job_id, f.step_id, f.dir_name)
            sig = _sig(os.path.join(adir, STATE))
            if sig == f.sig and sig is not None:
                continue
            f.sig = sig
            changed = True
            if sig is None and not adir.is_dir():  # removed (gc, an operator): forget it
                self.live.pop(run_id, None)
                continue
            # put_attempt (TrackedIndex) calls `note`, which drops it once it ended
            index.refresh_attempt(f.batch_id, f.job_id, f.step_id, f.dir_name)
            self.eng.boards.dirty.add(f.batch_id)
        return changed

    def owners_gone(self) -> bool:
        """Does some followed attempt belong to a runner no engine serves any more? Its
        attempts are orphans now, which the scheduler's sweep ends or adopts."""
        owners = {f.runner_id for f in self.live.values()}
        return any(not self.eng.recovery.is_served(rid) for rid in owners)

    async def run(self) -> None:
        """Poll while other runners' attempts are followed; sleep on an event otherwise."""
        self._some = asyncio.Event()
        while True:
            if not self.live:
                self._some.clear()
                await self._some.wait()
                continue
            await asyncio.sleep(POLL_INTERVAL)
            try:
                changed = self.poll()
                # a gone runner's attempts are orphans: the scheduler's sweep (run when this
                # engine has nothing of its own to wait for) ends or adopts them
                if self.live and not self.eng.tasks and self.owners_gone():
                    changed = True
            except Exception:  # a fault here must not stop the engine; the next poll retries
                log.exception("following other runners' attempts failed")
                continue
            if changed:
                self.eng.poke()
