"""StoreIndex: the one reader of the runs tree. Loads once, then applies changes per attempt."""

from __future__ import annotations

import gc
import logging
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel

from ..models import AttemptMeta, AttemptState, BatchMeta, RunReport
from ..models.promotion import PROMOTION_FILE
from ..models.scoreboard import SystemNote
from .candidates import read_marker, read_promotion
from .files import read_model
from .overrides import overrides_dir
from .paths import (
    CODEX_HOME,
    FINAL_JSON,
    META,
    NOT_A_DIRECTORY,
    STATE,
    Layout,
    run_id_of,
    scan_attempts,
)
from .views import AttemptView, BatchView

log = logging.getLogger(__name__)
CLOSED_MARKER = "closed.json"

M = TypeVar("M", bound=BaseModel)


@contextmanager
def _bulk() -> Iterator[None]:
    """No cyclic GC while thousands of small models are made: they are all kept, so every
    collection pass would be wasted work (~15% of a load). Restores the previous setting."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _load(path: Path, name: str, p: str, meta: bool, report: bool) -> AttemptView:
    """One attempt from its directory (`p` is `str(path)`, `name` its last part)."""
    state = read_model(f"{p}/{STATE}", AttemptState)
    view = AttemptView(
        run_id=run_id_of(name),
        dir_name=name,
        path=path,
        meta=read_model(f"{p}/{META}", AttemptMeta) if meta else None,
        state=state,
    )
    if meta and view.meta is not None:
        view.candidate = view.meta.candidate
    if view.terminal:
        if report:
            view.report = read_model(f"{p}/{FINAL_JSON}", RunReport)
        view.resume_base_ready = os.path.isdir(f"{p}/{CODEX_HOME}/sessions")
    return view


def load_attempt(path: Path) -> AttemptView:
    view = _load(path, path.name, str(path), True, True)
    if view.candidate is None and view.meta is None:
        view.candidate = read_marker(path)  # claimed, meta.json not written yet
    return view


class StoreIndex:
    """`for_scoreboards=True` makes a read-only index for one derivation (the CLI): it reads
    every state.json, but meta.json only for each step's latest and unfinished attempts and
    final.json only for a latest attempt that ended without success, which is all that the
    scoreboards show. Other attempts then have `meta`/`report` None; the engine and anything
    that keeps the index, or selects resume sources from it, uses the default (everything)."""

    def __init__(self, layout: Layout, *, for_scoreboards: bool = False) -> None:
        self.layout = layout
        self.batches: dict[str, BatchView] = {}
        self.for_scoreboards = for_scoreboards
        #: entries of the tree that are not what phh writes there (path under runs/ ->
        #: what was skipped): shown as scoreboard notes, never a crash
        self.unexpected: dict[str, str] = {}
        #: batches left on disk (the engine's settled batches: the catalog answers for them)
        self.skip: set[str] = set()

    def _skipped(self, where: str, names: list[str]) -> None:
        """Record (and log once) entries of the tree that are not what phh writes there."""
        rel = os.path.relpath(where, self.layout.runs)
        if names == [NOT_A_DIRECTORY]:
            what = f"runs/{rel}: not a directory (a file stands on its path); skipped"
        else:
            shown = ", ".join(names[:5]) + (f" (+{len(names) - 5} more)" if len(names) > 5 else "")
            what = f"runs/{rel}: not attempt directories, skipped: {shown}"
        if self.unexpected.get(rel) != what:
            log.warning("store: %s", what)
        self.unexpected[rel] = what

    def _batch_names(self) -> list[str]:
        try:
            names = os.listdir(self.layout.runs)
        except (FileNotFoundError, NotADirectoryError):
            return []
        return [n for n in names if not n.startswith(("_", ".")) and n not in self.batches
                and n not in self.unexpected and n not in self.skip]

    def load(self) -> None:
        with _bulk():
            for name in sorted(self._batch_names()):
                self.load_batch(name)

    def scan_new_batches(self) -> list[str]:
        """Batches that appeared on disk since the last look (cheap: one listdir)."""
        added = []
        for name in self._batch_names():
            if self.load_batch(name) is not None:
                added.append(name)
        return added

    def load_batch(self, batch_id: str) -> BatchView | None:
        with _bulk():
            return self._load_batch(batch_id)

    def _load_batch(self, batch_id: str) -> BatchView | None:
        meta = read_model(self.layout.batch_meta(batch_id), BatchMeta)
        if meta is None:
            bdir = self.layout.batch_dir(batch_id)
            if not os.path.isdir(bdir) and os.path.lexists(bdir):
                self._skipped(str(bdir), [NOT_A_DIRECTORY])
            return None
        batch = BatchView.from_meta(meta)
        bdir = self.layout.batch_dir(batch_id)
        batch.closed = (bdir / CLOSED_MARKER).exists()
        full = not self.for_scoreboards
        bdir_s = str(bdir)
        for job in batch.jobs.values():
            # = layout.attempts_dir(batch_id, job_id, step_id), as strings (ids are single
            # path segments): pathlib costs ~10 us per join, and there are 4 per attempt
            steps_dir = f"{bdir_s}/{job.job_id}/steps"
            for step in job.steps.values():
                adir = f"{steps_dir}/{step.step_id}/attempts"
                names, stray = scan_attempts(adir)
                if stray:
                    self._skipped(adir, stray)
                if not names:
                    continue
                base = Path(adir)
                last = len(names) - 1
                attempts = []
                for i, n in enumerate(names):
                    p = f"{adir}/{n}"
                    if full:
                        attempts.append(_load(base / n, n, p, True, True))
                        continue
                    view = _load(base / n, n, p, False, False)
                    if i == last or not view.terminal:  # what the step's rows show
                        view.meta = read_model(f"{p}/{META}", AttemptMeta)
                    if i == last and view.terminal and view.status != "succeeded":
                        view.report = read_model(f"{p}/{FINAL_JSON}", RunReport)
                    attempts.append(view)
                if step.spec.candidates > 1:  # best-of-N (docs/verification.md)
                    for view in attempts:
                        if view.candidate is None:
                            view.candidate = read_marker(view.path)
                    step.promotion = read_promotion(self.layout, batch_id, job.job_id,
                                                    step.step_id)
                step.attempts = attempts
        self.batches[batch_id] = batch
        return batch

    def input_paths(self, batch_ids: Iterable[str]) -> list[str]:
        """What a scoreboard derivation from this index read, relative to runs/: the
        overrides, each batch's meta and closed marker, each step's attempts directory and
        each attempt's directory, state.json and resume base (the derivation's whole input
        for the kept views of phh_engine/store/board_files.py; same joins as `_load_batch`)."""
        out = [str(overrides_dir(self.layout).relative_to(self.layout.runs))]
        for bid in batch_ids:
            out += [f"{bid}/{self.layout.batch_meta(bid).name}", f"{bid}/{CLOSED_MARKER}"]
            for job in self.batches[bid].jobs.values():
                for step in job.steps.values():
                    adir = f"{bid}/{job.job_id}/steps/{step.step_id}/attempts"
                    out.append(adir)
                    if step.spec.candidates > 1:  # best-of-N: the promotion decides too
                        out.append(f"{bid}/{job.job_id}/steps/{step.step_id}/{PROMOTION_FILE}")
                    for a in step.attempts:
                        p = f"{adir}/{a.dir_name}"
                        out += [p, f"{p}/{STATE}", f"{p}/{CODEX_HOME}/sessions"]
        return out

    def put_attempt(self, batch_id: str, job_id: str, step_id: str, view: AttemptView) -> None:
        """Apply one attempt's new facts (own writes pass the object; O(attempts of step))."""
        batch = self.batches.get(batch_id)
        if batch is None:
            return
        step = batch.jobs[job_id].steps[step_id]
        for i, a in enumerate(step.attempts):
            if a.run_id == view.run_id:
                if view.candidate is None:  # a runner's own view may not carry it
                    view.candidate = a.candidate
                step.attempts[i] = view
                return
        step.add_attempt(view)

    def refresh_attempt(self, batch_id: str, job_id: str, step_id: str, dir_name: str) -> None:
        """Re-read one attempt after an external write (another process)."""
        path = self.layout.attempt_dir(batch_id, job_id, step_id, dir_name)
        if path.is_dir():
            self.put_attempt(batch_id, job_id, step_id, load_attempt(path))


def unexpected_notes(index: StoreIndex) -> list[SystemNote]:
    """Scoreboard notes for the entries `index` skipped (kind `unexpected_entry`)."""
    return [SystemNote(kind="unexpected_entry", message=m) for m in list(index.unexpected.values())]
