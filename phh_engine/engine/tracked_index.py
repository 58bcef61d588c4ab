"""The engine's StoreIndex: it also tells the scheduler's ReadySet which job changed and
keeps the catalog's attempt rows current, whoever changed the index."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..derive.scheduler import ReadySet
from ..store.catalog import Catalog
from ..store.index import StoreIndex
from ..store.views import AttemptView, BatchView

if TYPE_CHECKING:
    from .foreign import ForeignAttempts


class TrackedIndex(StoreIndex):
    """The engine's index tells its ReadySet which job changed, whoever changed it (own
    attempts, the dashboard's watcher in the same process, GC refreshes)."""

    ready: ReadySet | None = None
    catalog: Catalog | None = None
    #: other runners' in-flight attempts, followed until they end (engine/foreign.py)
    foreign: ForeignAttempts | None = None

    def put_attempt(self, batch_id: str, job_id: str, step_id: str, view: AttemptView) -> None:
        super().put_attempt(batch_id, job_id, step_id, view)
        if self.ready is not None:
            self.ready.touch(batch_id, job_id)
        if self.catalog is not None and batch_id in self.batches:
            self.catalog.put_attempt(batch_id, job_id, step_id, view)
        if self.foreign is not None:
            self.foreign.note(batch_id, job_id, step_id, view)

    def load_batch(self, batch_id: str) -> BatchView | None:
        """A settled batch left on disk is loaded when something names it (an operator
        action): with the marks its applied overrides left, as at start."""
        lazy = batch_id in self.skip
        self.skip.discard(batch_id)
        batch = super().load_batch(batch_id)
        if batch is not None and self.foreign is not None:
            # another runner may already run some of its steps (it saw the batch first)
            for job, step in batch.steps():
                for att in step.attempts:  # best-of-N: several candidates at once
                    if not att.terminal:
                        self.foreign.note(batch_id, job.job_id, step.step_id, att)
        if lazy and batch is not None:
            from ..store.overrides import apply_marks, list_results

            for res in list_results(self.layout):
                if res.batch_id == batch_id:
                    apply_marks(self.batches, res)
            if self.ready is not None:
                self.ready.touch_all()
        return batch
