"""StoreIndex: the one reader of the runs tree. Loads once, then applies changes per attempt."""

from __future__ import annotations

import logging
from pathlib import Path

from .models import AttemptMeta, AttemptState, BatchMeta, RunReport
from .paths import CODEX_HOME, FINAL_JSON, META, STATE, Layout, run_id_of
from .store import read_model
from .views import AttemptView, BatchView

log = logging.getLogger(__name__)
CLOSED_MARKER = "closed.json"


def load_attempt(path: Path) -> AttemptView:
    state = read_model(path / STATE, AttemptState)
    view = AttemptView(
        run_id=run_id_of(path.name),
        dir_name=path.name,
        path=path,
        meta=read_model(path / META, AttemptMeta),
        state=state,
    )
    if view.terminal:
        view.report = read_model(path / FINAL_JSON, RunReport)
        view.resume_base_ready = (path / CODEX_HOME / "sessions").is_dir()
    return view


class StoreIndex:
    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.batches: dict[str, BatchView] = {}

    def load(self) -> None:
        if not self.layout.runs.is_dir():
            return
        for d in sorted(self.layout.runs.iterdir()):
            if d.name.startswith(("_", ".")) or d.name in self.batches:
                continue
            self.load_batch(d.name)

    def scan_new_batches(self) -> list[str]:
        """Batches that appeared on disk since the last look (cheap: one listdir)."""
        if not self.layout.runs.is_dir():
            return []
        added = []
        for d in self.layout.runs.iterdir():
            if d.name.startswith(("_", ".")) or d.name in self.batches:
                continue
            if self.load_batch(d.name) is not None:
                added.append(d.name)
        return added

    def load_batch(self, batch_id: str) -> BatchView | None:
        meta = read_model(self.layout.batch_meta(batch_id), BatchMeta)
        if meta is None:
            return None
        batch = BatchView.from_meta(meta)
        batch.closed = (self.layout.batch_dir(batch_id) / CLOSED_MARKER).exists()
        for job in batch.jobs.values():
            for step in job.steps.values():
                adir = self.layout.attempts_dir(batch_id, job.job_id, step.step_id)
                try:
                    names = sorted(p.name for p in adir.iterdir() if not p.name.startswith("."))
                except FileNotFoundError:
                    continue
                step.attempts = [load_attempt(adir / n) for n in names]
        self.batches[batch_id] = batch
        return batch

    def put_attempt(self, batch_id: str, job_id: str, step_id: str, view: AttemptView) -> None:
        """Apply one attempt's new facts (own writes pass the object; O(attempts of step))."""
        batch = self.batches.get(batch_id)
        if batch is None:
            return
        step = batch.jobs[job_id].steps[step_id]
        for i, a in enumerate(step.attempts):
            if a.run_id == view.run_id:
                step.attempts[i] = view
                return
        step.add_attempt(view)

    def refresh_attempt(self, batch_id: str, job_id: str, step_id: str, dir_name: str) -> None:
        """Re-read one attempt after an external write (another process)."""
        path = self.layout.attempt_dir(batch_id, job_id, step_id, dir_name)
        if path.is_dir():
            self.put_attempt(batch_id, job_id, step_id, load_attempt(path))
