"""The dashboard's reads from the catalog (phh_engine/store/catalog.py, docs/catalog.md): the
rows of settled batches for the system screen, windows of a batch's step lists for the batch
screen, and one step of a batch that is not in memory for the step screen. No Textual here.

A list never holds a whole batch: a `Window` is up to `WINDOW` rows around the cursor, moved
by keyset pages (`phh_engine.interfaces.history.step_window`) as the operator scrolls, and
re-queried from its first row when the board changes or the filter text changes. Every call
is O(window), or O(steps of the batch) inside SQLite when filtering by text.

Reads go through a read-only connection of the dashboard's own (WAL: never blocked by the
engine's writer, never blocking it); the engine in this process keeps the catalog current.
A batch in memory (open) is windowed from the board instead (`ListPager`): its rows move with
the board at the dashboard's clock, while the catalog's follow the engine's board writes.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import sqlite3
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from phh_engine.interfaces.history import step_counts, step_window
from phh_engine.store.catalog import BUSY_TIMEOUT_MS, Catalog, CatalogError, catalog_path
from phh_engine.store.paths import Layout

if TYPE_CHECKING:
    from phh_engine.models import BatchScoreboard
    from phh_engine.models.scoreboard import StepRow
    from phh_engine.store.views import StepView

log = logging.getLogger(__name__)

#: rows a list holds at most (a few screens); PAGE rows are fetched at a time (a jump to the
#: first or last rows reads one page)
WINDOW = 300
PAGE = 100
#: the cursor this close to the window's edge fetches the next page
MARGIN = 10
#: which step statuses each batch-screen tab lists when it pages (a settled batch: nothing
#: runs, so attention = failures)
TAB_STATUSES: dict[str, tuple[str, ...]] = {
    "attention": ("failed", "needs_attention"), "running": ("running",),
    "blocked": ("blocked",), "failures": ("failed", "needs_attention"), "steps": (),
}


@dataclass(slots=True)
class Window:
    """What one paged list shows: rows (step-row dicts with `seq`) in Launch Table order,
    whether more exist before / after them, and the query that made them."""

    batch_id: str
    statuses: tuple[str, ...] = ()
    text: str = ""
    rows: list[dict[str, Any]] = field(default_factory=list)
    more_before: bool = False
    more_after: bool = False

    @property
    def first(self) -> int | None:
        return self.rows[0]["seq"] if self.rows else None

    @property
    def last(self) -> int | None:
        return self.rows[-1]["seq"] if self.rows else None


class Pager:
    """Keyset windows over one batch's step rows; subclasses give `_window`."""

    def first(self, w: Window, limit: int = PAGE) -> Window:
        """The first rows of `w`'s query."""
        return self._fill(w, self._window(w, None, None, limit + 1), limit, top=True)

    def last(self, w: Window, limit: int = PAGE) -> Window:
        """The last rows of `w`'s query."""
        return self._fill(w, self._window(w, None, -1, limit + 1), limit, top=False)

    def again(self, w: Window) -> Window:
        """`w` re-read from its first row (the board changed): same start, same size."""
        if w.first is None:
            return self.first(w)
        size = max(len(w.rows), PAGE)
        out = self._fill(w, self._window(w, w.first - 1, None, size + 1), size, top=True)
        out.more_before = w.more_before
        return out

    def after(self, w: Window) -> Window:
        """The next PAGE rows appended; rows beyond WINDOW dropped from the top."""
        if not w.more_after or w.last is None:
            return w
        rows = self._window(w, w.last, None, PAGE + 1)
        merged = w.rows + rows[:PAGE]
        cut = max(0, len(merged) - WINDOW)
        return Window(w.batch_id, w.statuses, w.text, merged[cut:], w.more_before or cut > 0,
                      len(rows) > PAGE)

    def before(self, w: Window) -> Window:
        """The previous PAGE rows prepended; rows beyond WINDOW dropped from the bottom."""
        if not w.more_before or w.first is None:
            return w
        rows = self._window(w, None, w.first, PAGE + 1)
        merged = rows[-PAGE:] + w.rows
        return Window(w.batch_id, w.statuses, w.text, merged[:WINDOW], len(rows) > PAGE,
                      w.more_after or len(merged) > WINDOW)

    def _window(self, w: Window, after: int | None, before: int | None,
                limit: int) -> list[dict[str, Any]]:
        """Up to `limit` rows of `w`'s query: `seq` > `after`, or the last ones with `seq` <
        `before` (-1: the very last), or the first; in order (= history.step_window)."""
        raise NotImplementedError

    @staticmethod
    def _fill(w: Window, rows: list[dict[str, Any]], limit: int, *, top: bool) -> Window:
        more = len(rows) > limit
        if top:
            return Window(w.batch_id, w.statuses, w.text, rows[:limit], False, more)
        return Window(w.batch_id, w.statuses, w.text, rows[-limit:] if more else rows, more,
                      False)


class ListPager(Pager):
    """Windows over a batch scoreboard in memory (an open batch: its rows move with the
    board, at the dashboard's clock). `seq` is the row's index in the board's steps (Launch
    Table order, as the catalog's). O(window) per call; a text filter scans the batch's rows
    once per board and query."""

    def __init__(self, sb: BatchScoreboard) -> None:
        self.sb = sb
        self._search: list[str] | None = None
        self._hits: dict[tuple[tuple[str, ...], str], list[int]] = {}

    def _indices(self, statuses: tuple[str, ...], text: str) -> list[int] | range:
        steps = self.sb.steps
        if not statuses and not text:
            return range(len(steps))
        key = (statuses, text.lower())
        hit = self._hits.get(key)
        if hit is None:
            if text and self._search is None:
                self._search = [f"{r.job_id}.{r.step_id} {'stuck' if r.stuck else r.status} "
                                f"{r.run_id or '-'} {'; '.join(r.reasons)}".lower()
                                for r in steps]
            needle = key[1]
            search = self._search
            hit = [i for i, r in enumerate(steps)
                   if (not statuses or r.status in statuses)
                   and (not needle or (search is not None and needle in search[i]))]
            if len(self._hits) > 16:
                self._hits.clear()
            self._hits[key] = hit
        return hit

    def _window(self, w: Window, after: int | None, before: int | None,
                limit: int) -> list[dict[str, Any]]:
        idx = self._indices(w.statuses, w.text)
        if after is not None:
            start = bisect.bisect_right(idx, after)
            sel = idx[start:start + limit]
        elif before is not None:
            end = len(idx) if before < 0 else bisect.bisect_left(idx, before)
            sel = idx[max(0, end - limit):end]
        else:
            sel = idx[:limit]
        steps = self.sb.steps
        return [{**steps[i].model_dump(mode="json", exclude_none=True), "seq": i}
                for i in sel]


class CatalogPages(Pager):
    """One per dashboard backend. Thread-safe (the catalog's lock); never raises for a
    catalog that cannot be used: lists are then empty and `error` says why."""

    def __init__(self, layout: Layout) -> None:
        self.layout = layout
        self.error: str | None = None
        self._cat: Catalog | None = None
        self._lock = threading.Lock()
        self._metas: dict[str, dict[Any, Any]] = {}  # batch id -> its raw jobs by id
        self._steps: dict[tuple[str, str, str], StepView] = {}
        self.queries = 0  # for tests and the bench: reads made

    # ------------------------------------------------------------ the connection
    def catalog(self) -> Catalog | None:
        """The catalog, opened read-only on first use; None until the engine created it (or
        when it cannot be used: `error` says why)."""
        with self._lock:
            if self._cat is None:
                try:
                    self._cat = self._open()
                except (CatalogError, sqlite3.Error) as exc:
                    self.error = str(exc)
                    self._drop()
            return self._cat

    def _open(self) -> Catalog | None:
        path = catalog_path(self.layout)
        if not path.is_file():  # the engine has not created it (yet, or runs without one)
            return None
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                               timeout=BUSY_TIMEOUT_MS / 1000)
        conn.row_factory = sqlite3.Row
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        return Catalog(self.layout, path, conn)

    def _drop(self) -> None:
        if self._cat is not None:
            self._cat.close()
        self._cat = None

    def _read(self, fn: Any, *args: Any, **kw: Any) -> Any:
        if self._cat is not None and self._cat.moved() is not None:
            with self._lock:  # deleted or replaced under us: read the file the engine writes
                self._drop()
        cat = self._cat or self.catalog()
        if cat is None:
            return None
        try:
            self.queries += 1
            return fn(cat, *args, **kw)
        except sqlite3.Error as exc:  # replaced under us (reindex, repair): open again
            self.error = str(exc)
            with self._lock:
                self._drop()
            return None

    def close(self) -> None:
        with self._lock:
            self._drop()

    def _window(self, w: Window, after: int | None, before: int | None,
                limit: int) -> list[dict[str, Any]]:
        rows = self._read(step_window, w.batch_id, statuses=w.statuses, text=w.text,
                          after=after, before=before, limit=limit)
        return rows or []

    # ------------------------------------------------------------ reads
    def settled_batches(self) -> set[str]:
        """Batches the catalog recorded settled whose directory fingerprint still holds (as
        an engine's start verifies): an observing dashboard leaves them on disk. Empty
        without a catalog."""
        from phh_engine.store.catalog import fingerprint

        rows = self._read(lambda c: c.query(
            "SELECT batch_id, fingerprint FROM batches WHERE finished = 1 AND fingerprint "
            "IS NOT NULL"))
        return {r[0] for r in rows or () if fingerprint(self.layout, r[0]) == r[1]}

    def system_rows(self, exclude: set[str]) -> list[str]:
        """SystemRow JSON of the batches the catalog has and `exclude` (in memory) lacks."""
        rows = self._read(lambda c: c.system_rows(exclude=exclude))
        return rows or []

    def counts(self, batch_id: str, text: str = "") -> dict[str, int]:
        return self._read(step_counts, batch_id, text) or {}

    def step_row(self, batch_id: str, job_id: str, step_id: str) -> StepRow | None:
        """One step's scoreboard row as the catalog recorded it."""
        import json

        from phh_engine.interfaces.history import step_row_here
        from phh_engine.models.scoreboard import StepRow

        rows = self._read(lambda c: c.query(
            "SELECT row FROM steps WHERE batch_id = ? AND job_id = ? AND step_id = ?",
            (batch_id, job_id, step_id)))
        if not rows:
            return None  # (its attempt directories: under this root, wherever it was written)
        return StepRow.model_validate(step_row_here(json.loads(rows[0]["row"]), self.layout,
                                                    batch_id))

    def load_step(self, batch_id: str, job_id: str, step_id: str) -> StepView | None:
        """One step of a batch that is not in memory (settled), read from its files: its
        spec and every attempt. Cached (a settled batch does not change; an operator action
        on it loads it into the engine, whose views then win)."""
        key = (batch_id, job_id, step_id)
        if key in self._steps:
            return self._steps[key]
        from phh_engine.models import NormalizedJob
        from phh_engine.store.files import read_json
        from phh_engine.store.index import load_attempt
        from phh_engine.store.paths import scan_attempts
        from phh_engine.store.views import StepView

        jobs = self._metas.get(batch_id)
        if jobs is None:
            # the raw jobs, validated one job at a time: a 10,000-job batch_meta.json is
            # megabytes, and validating it whole would stall the screen for a second
            raw = read_json(self.layout.batch_meta(batch_id))
            if not isinstance(raw, dict) or not isinstance(raw.get("jobs"), list):
                return None
            jobs = {j.get("job_id"): j for j in raw["jobs"] if isinstance(j, dict)}
            self._metas = {batch_id: jobs}  # one batch at a time
        try:
            job = NormalizedJob.model_validate(jobs[job_id]) if job_id in jobs else None
        except ValueError:  # not a job phh wrote: nothing to show
            return None
        spec = next((s for s in job.steps if s.step_id == step_id), None) if job else None
        if spec is None:
            return None
        view = StepView(spec=spec)
        adir = self.layout.attempts_dir(batch_id, job_id, step_id)
        names, _ = scan_attempts(adir)
        for name in names:
            with contextlib.suppress(OSError):
                view.add_attempt(load_attempt(adir / name))
        if len(self._steps) > 64:
            self._steps.clear()
        self._steps[key] = view
        return view
