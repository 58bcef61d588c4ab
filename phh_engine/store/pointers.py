"""current.json: the per-job index, always rebuildable from attempt directories
(docs/layout.md#currentjson)."""

from __future__ import annotations

import logging
import os
from datetime import datetime

from ..models import (
    AttemptIndexEntry,
    AttemptPointer,
    AttemptState,
    CurrentIndex,
    StepPointers,
    utcnow,
)
from ..models.promotion import CANDIDATES_DIR, PROMOTION_FILE, Promotion
from .files import atomic_write_json, job_lock, read_model
from .paths import CODEX_HOME, STATE, Layout, attempt_dir_names, run_id_of

log = logging.getLogger(__name__)


def _scan_step(attempts_dir: str) -> list[tuple[str, str, AttemptState | None]]:
    """(dir name, path, state) of each attempt, in start order (strings: ~20 joins a call)."""
    names = attempt_dir_names(attempts_dir)  # [] for no attempts yet, or not a directory
    return [(n, p, read_model(f"{p}/{STATE}", AttemptState))
            for n in names for p in (f"{attempts_dir}/{n}",)]


def _pointer(run_id: str, path: str, st: AttemptState | None) -> AttemptPointer:
    return AttemptPointer(
        run_id=run_id,
        attempt_dir=path,
        resume_base_dir=f"{path}/{CODEX_HOME}",
        codex_thread_id=st.codex_thread_id if st else None,
        status=st.status if st else "queued",
    )


def build_current(layout: Layout, batch_id: str, job_id: str, now: datetime) -> CurrentIndex:
    """Derive current.json for one job from its attempt directories: O(that job)."""
    steps_root = f"{layout.job_dir(batch_id, job_id)}/steps"
    steps: dict[str, StepPointers] = {}
    try:
        step_ids = sorted(os.listdir(steps_root))
    except (FileNotFoundError, NotADirectoryError):
        step_ids = []
    for step_id in step_ids:
        rows = _scan_step(f"{steps_root}/{step_id}/attempts")  # = layout.attempts_dir
        if not rows:
            continue
        by_run: dict[str, AttemptIndexEntry] = {}
        best: tuple[datetime, str, str, AttemptState] | None = None
        for name, path, st in rows:
            run_id = run_id_of(name)
            by_run[run_id] = AttemptIndexEntry(
                attempt_dir=path,
                resume_base_dir=f"{path}/{CODEX_HOME}",
                status=st.status if st else "queued",
                started_at=st.started_at if st else None,
                ended_at=st.ended_at if st else None,
                codex_thread_id=st.codex_thread_id if st else None,
            )
            if st is not None and st.status == "succeeded":
                key = st.ended_at or st.updated_at
                if best is None or key >= best[0]:
                    best = (key, run_id, path, st)
        if os.path.isdir(f"{steps_root}/{step_id}/{CANDIDATES_DIR}"):
            # best-of-N: the promoted candidate, once applied (docs/verification.md#promotion)
            best = None
            promo = read_model(f"{steps_root}/{step_id}/{PROMOTION_FILE}", Promotion)
            for n, p, s in rows:
                if promo is not None and promo.state == "applied" and s is not None and \
                        s.status == "succeeded" and run_id_of(n) == promo.winner_run_id:
                    best = (s.ended_at or s.updated_at, run_id_of(n), p, s)
        name, path, st = rows[-1]
        steps[step_id] = StepPointers(
            latest=_pointer(run_id_of(name), path, st),
            latest_successful=_pointer(best[1], best[2], best[3]) if best else None,
            by_run_id=by_run,
        )
    return CurrentIndex(batch_id=batch_id, job_id=job_id, updated_at=now, steps=steps)


def update_current(layout: Layout, batch_id: str, job_id: str, *, locked: bool = False) -> None:
    """Rewrite one job's current.json under the job lock (or inside a caller's lock)."""
    if locked:
        # not fsynced: an index, and the engine rebuilds any current.json that disagrees with
        # the attempt directories when it starts (engine/recovery.py, Recovery.repair_pointers)
        atomic_write_json(
            layout.current(batch_id, job_id), build_current(layout, batch_id, job_id, utcnow()),
            durable=False,
        )
        return
    with job_lock(layout.job_lock(batch_id, job_id)):
        update_current(layout, batch_id, job_id, locked=True)


def reindex(layout: Layout) -> int:
    """Rebuild every current.json from attempt directories; returns jobs written."""
    count = 0
    if not layout.runs.is_dir():
        return 0
    for batch_dir in sorted(layout.runs.iterdir()):
        if batch_dir.name.startswith(("_", ".")) or not (batch_dir / "batch_meta.json").exists():
            continue
        for job_dir in sorted(batch_dir.iterdir()):
            if job_dir.is_dir() and not job_dir.name.startswith(("_", ".")) and \
                    (job_dir / "steps").is_dir():
                try:
                    update_current(layout, batch_dir.name, job_dir.name)
                except OSError as exc:  # e.g. a stray directory named current.json
                    log.warning("reindex: %s/%s skipped: %s", batch_dir.name, job_dir.name,
                                exc.strerror or exc)
                    continue
                count += 1
    return count
