"""Paged views and history queries over the catalog (phh_engine/store/catalog.py), once, for the
CLI (`phh jobs|attempts --limit`, `phh history ... --json`), the API and the dashboard.

Every function returns plain JSON-able data or raises `LookupFailed` (400 for a malformed
parameter, naming it; 404 for an unknown batch). Pages are keyset pages: `next_cursor` names
the last row returned, so rows inserted meanwhile never shift a page (no row is repeated or
skipped); a cursor is opaque and only valid for the same query.

Times are UTC ISO 8601 strings (`2026-01-31T12:00:00Z`); durations are seconds; token
counts are Codex's `usage` fields summed over attempts.
"""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..store.catalog import Catalog, CatalogError, decode_cursor, encode_cursor, open_for_reader
from ..store.paths import Layout, rehome

if TYPE_CHECKING:
    from .artifacts import LookupFailed

# = models.common's (a test keeps them equal): importing the models would cost a CLI read
# ~0.3 s, ten times the query; artifacts.LookupFailed is imported only to raise one
ATTEMPT_STATUSES: tuple[str, ...] = (
    "queued", "running", "succeeded", "failed", "canceled", "needs_attention")
STEP_STATUSES: tuple[str, ...] = (
    "blocked", "ready", "running", "succeeded", "failed", "needs_attention", "canceled")
#: = models.common.FailureClass (a test keeps them equal)
FAILURE_CLASSES: tuple[str, ...] = (
    "model_error", "rate_limited", "timeout", "canceled", "runner_lost", "schema_invalid",
    "agent_reported_failure", "nonzero_exit", "spawn_failed", "thread_mismatch", "auth",
    "usage_limited", "context_exhausted", "invalid_request", "shutdown", "internal_error",
    "verify_failed")
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
GROUPS = ("batch", "day", "model")


def _bad(message: str) -> LookupFailed:
    from .artifacts import LookupFailed

    return LookupFailed(400, message)


def missing(message: str) -> LookupFailed:
    from .artifacts import LookupFailed

    return LookupFailed(404, message)


def valid_id(value: str, what: str) -> str:
    """The cheap check (models.common.ID_PATTERN); anything else gets the models' message."""
    if ID_RE.match(value) and ".." not in value:
        return value
    from .artifacts import valid_id as full

    return full(value, what)


def _limit(limit: int | None, default: int = DEFAULT_LIMIT) -> int:
    if limit is None:
        return default
    if not 1 <= limit <= MAX_LIMIT:
        raise _bad(f"limit: must be between 1 and {MAX_LIMIT}, got {limit}")
    return limit


def _time(value: str | None, name: str) -> str | None:
    """An ISO 8601 time (a date alone means its midnight UTC) as the catalog stores it."""
    if value is None or value == "":
        return None
    try:
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise _bad(f"{name}: not an ISO 8601 time: {value!r}") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    try:  # 9999-12-31T23:59:59-05:00 is a valid ISO time whose UTC is not a datetime
        utc = dt.astimezone(UTC)
    except OverflowError:
        raise _bad(f"{name}: {value!r} is out of range in UTC (years 1-9999)") from None
    return utc.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _one_of(value: str | None, allowed: tuple[str, ...], name: str) -> str | None:
    if value is None or value == "":
        return None
    if value not in allowed:
        raise _bad(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    return value


#: a cursor's positions, per kind of query: `seq` (a step's Launch Table index) or an
#: attempt's key (dir name, batch, job, step)
SEQ_CURSOR: tuple[str, ...] = ("seq",)
ATTEMPT_CURSOR: tuple[str, ...] = ("name", "id", "id", "id")
NOT_OURS = "cursor: not a cursor this query handed out"
_SQLITE_INT_MAX = 2**63 - 1


def _cursor(cursor: str | None, shape: tuple[str, ...]) -> list[Any] | None:
    """The key a cursor of this query carries, checked position by position (a cursor of
    another query, or a hand-made one, would page silently wrong or overflow SQLite)."""
    if cursor is None or cursor == "":
        return None
    try:
        key = decode_cursor(cursor, len(shape))
    except ValueError:
        raise _bad(NOT_OURS) from None
    for kind, value in zip(shape, key, strict=True):
        if kind == "seq":
            ok = type(value) is int and 0 <= value <= _SQLITE_INT_MAX
        elif kind == "id":
            ok = isinstance(value, str) and bool(ID_RE.match(value))
        else:
            ok = isinstance(value, str) and 0 < len(value) <= 512 and "/" not in value
        if not ok:
            raise _bad(NOT_OURS)
    return key


def _known_batch(cat: Catalog, batch_id: str) -> None:
    valid_id(batch_id, "batch_id")
    if not cat.query("SELECT 1 FROM batches WHERE batch_id = ?", (batch_id,)):
        raise missing(f"no batch {batch_id!r}")


def _known_step(cat: Catalog, batch_id: str, job_id: str | None, step_id: str | None) -> None:
    """404 unless the job (and step) are in the batch's Launch Table, as the unpaged
    `phh attempts` / `api_ops.check_step` answer (the steps table holds every step)."""
    if job_id:
        valid_id(job_id, "job_id")
        if not cat.query("SELECT 1 FROM steps WHERE batch_id = ? AND job_id = ? LIMIT 1",
                         (batch_id, job_id)):
            raise missing(f"no job {job_id!r} in batch {batch_id}")
    if job_id and step_id:
        valid_id(step_id, "step_id")
        if not cat.query("SELECT 1 FROM steps WHERE batch_id = ? AND job_id = ? AND "
                         "step_id = ? LIMIT 1", (batch_id, job_id, step_id)):
            raise missing(f"no step {step_id!r} in {batch_id}/{job_id}")


def _rehome(path: Any, layout: Layout, batch_id: str) -> Any:
    """A path the catalog recorded under the root that wrote it (attempt_dir,
    resume_base_dir), under `layout`'s root now (`store.paths.rehome`)."""
    return rehome(path, layout.runs, batch_id) if isinstance(path, str) else path


def step_row_here(d: dict[str, Any], layout: Layout, batch_id: str) -> dict[str, Any]:
    """A step row (StepRow JSON) from the catalog with its attempt directories under the
    current root (`_rehome`): `attempt_dir`, each candidate's, `resume_from.resume_base_dir`."""
    if "attempt_dir" in d:
        d["attempt_dir"] = _rehome(d["attempt_dir"], layout, batch_id)
    for c in d.get("candidates") or ():
        if isinstance(c, dict) and "attempt_dir" in c:
            c["attempt_dir"] = _rehome(c["attempt_dir"], layout, batch_id)
    rf = d.get("resume_from")
    if isinstance(rf, dict) and "resume_base_dir" in rf:
        rf["resume_base_dir"] = _rehome(rf["resume_base_dir"], layout, batch_id)
    return d


def _one_class(value: str | None) -> str | None:
    return _one_of(value, FAILURE_CLASSES, "class")


# ----------------------------------------------------------------------------- pages
def steps_page(cat: Catalog, batch_id: str, *, status: str | None = None,
               failure_class: str | None = None, cursor: str | None = None,
               limit: int | None = None) -> dict[str, Any]:
    """One page of a batch's step rows (the scoreboard's `steps` rows, plus the latest
    attempt's `failure_class`) in Launch Table order: `{batch_id, steps, total,
    next_cursor}`; `total` counts the rows matching the filters."""
    _known_batch(cat, batch_id)
    status = _one_of(status, STEP_STATUSES, "status")
    failure_class = _one_class(failure_class)
    n = _limit(limit)
    after = _cursor(cursor, SEQ_CURSOR)
    where, args = _equals(("batch_id", batch_id), ("status", status),
                          ("failure_class", failure_class))
    total = cat.query(f"SELECT count(*) FROM steps WHERE {' AND '.join(where)}", args)[0][0]
    if after is not None:
        where.append("seq > ?")
        args.append(after[0])
    rows = cat.query(f"SELECT seq, row, failure_class FROM steps WHERE {' AND '.join(where)} "
                     "ORDER BY seq LIMIT ?", [*args, n + 1])
    out = []
    for r in rows[:n]:
        d = step_row_here(json.loads(r["row"]), cat.layout, batch_id)
        if r["failure_class"]:
            d["failure_class"] = r["failure_class"]
        out.append(d)
    nxt = encode_cursor([rows[n - 1]["seq"]]) if len(rows) > n else None
    return {"batch_id": batch_id, "steps": out, "total": total, "next_cursor": nxt}


#: what a dashboard list's filter text matches in a step row: "job.step status run class"
#: or its reasons (the in-memory lists match the same fields); lower-cased, substring. The
#: reasons are parsed out of the row's JSON only for rows that have any (a minority): that
#: keeps a filter over 20,000 rows to a plain scan
STEP_SEARCH = ("(instr(lower(s.job_id || '.' || s.step_id || ' ' || s.status || ' ' || "
               "coalesce(s.run_id, '-') || ' ' || coalesce(s.failure_class, '')), ?) > 0 OR "
               "(instr(s.row, '\"reasons\":[]') = 0 AND "
               "instr(lower(json_extract(s.row, '$.reasons')), ?) > 0))")


def step_window(cat: Catalog, batch_id: str, *, statuses: tuple[str, ...] = (),
                text: str = "", after: int | None = None, before: int | None = None,
                limit: int = DEFAULT_LIMIT) -> list[dict[str, Any]]:
    """Up to `limit` step rows of a batch in Launch Table order (keyset: `seq` > `after`, or
    the last `limit` rows with `seq` < `before`, still returned in order; neither: the first
    rows; `before=-1`: the last rows), filtered by status and by `text` (a lower-cased
    substring of `STEP_SEARCH`). Each row is the scoreboard's step row (StepRow JSON fields)
    plus `seq`, the latest attempt's `failure_class`, `exit_code`, `report_status` and
    `report_summary`. For the dashboard's lists (phh_tui/paging.py); O(limit) with an index,
    O(steps of the batch) with `text`."""
    where: list[str] = ["s.batch_id = ?"]
    args: list[Any] = [batch_id]
    if statuses:
        where.append(f"s.status IN ({', '.join('?' * len(statuses))})")
        args.extend(statuses)
    if text:
        where.append(STEP_SEARCH)
        args.extend([text.lower()] * 2)
    order = "ASC"
    if after is not None:
        where.append("s.seq > ?")
        args.append(after)
    elif before is not None:
        order = "DESC"
        if before >= 0:
            where.append("s.seq < ?")
            args.append(before)
    rows = cat.query(
        "SELECT s.seq AS seq, s.row AS row, s.failure_class AS failure_class, a.exit_code AS "
        "exit_code, a.report_status AS report_status, a.report_summary AS report_summary "
        "FROM steps s LEFT JOIN attempts a ON a.batch_id = s.batch_id AND a.job_id = s.job_id "
        "AND a.step_id = s.step_id AND a.run_id = s.run_id "
        f"WHERE {' AND '.join(where)} ORDER BY s.seq {order} LIMIT ?", [*args, limit])
    out = []
    for r in rows:
        d = step_row_here(json.loads(r["row"]), cat.layout, batch_id)
        d.update(seq=r["seq"], failure_class=r["failure_class"], exit_code=r["exit_code"],
                 report_status=r["report_status"], report_summary=r["report_summary"])
        out.append(d)
    if order == "DESC":
        out.reverse()
    return out


def step_counts(cat: Catalog, batch_id: str, text: str = "") -> dict[str, int]:
    """{status: steps} of a batch (with `text`: of the rows it matches, as `step_window`)."""
    where: list[str] = ["s.batch_id = ?"]
    args: list[Any] = [batch_id]
    if text:
        where.append(STEP_SEARCH)
        args.extend([text.lower()] * 2)
    return {r[0]: r[1] for r in cat.query(
        f"SELECT s.status, count(*) FROM steps s WHERE {' AND '.join(where)} "
        "GROUP BY s.status", args)}


def batch_page(cat: Catalog, batch_id: str, *, status: str | None = None,
               failure_class: str | None = None, cursor: str | None = None,
               limit: int | None = None) -> dict[str, Any]:
    """`GET /v1/batches/{b}?limit=&cursor=` (docs/interfaces.md#http-api): the batch's
    system-view row (`batch`: counts, totals, goal preview, closed, running and attention
    steps) and one page of its step rows, as `steps_page`: `{batch_id, batch, steps, total,
    next_cursor}`. O(page)."""
    page = steps_page(cat, batch_id, status=status, failure_class=failure_class,
                      cursor=cursor, limit=limit)
    row = cat.query("SELECT system_row FROM batches WHERE batch_id = ?", (batch_id,))
    text = row[0]["system_row"] if row else None
    return {"batch_id": batch_id, "batch": json.loads(text) if text else None,
            **{k: v for k, v in page.items() if k != "batch_id"}}


def _equals(*pairs: tuple[str, Any]) -> tuple[list[str], list[Any]]:
    """`column = ?` clauses and their arguments, in order, for each pair whose value is set
    (the filters every page and history query share)."""
    where = [f"{col} = ?" for col, val in pairs if val]
    return where, [val for _, val in pairs if val]


def _attempt_filters(batch_id: str | None, job_id: str | None, step_id: str | None,
                     status: str | None, failure_class: str | None, runner_id: str | None,
                     since: str | None, until: str | None) -> tuple[list[str], list[Any]]:
    for col, val in (("batch_id", batch_id), ("job_id", job_id), ("step_id", step_id),
                     ("runner_id", runner_id)):
        if val:
            valid_id(val, col)
    st = _one_of(status, ATTEMPT_STATUSES, "status")
    failure_class = _one_class(failure_class)
    where, args = _equals(("batch_id", batch_id), ("job_id", job_id), ("step_id", step_id),
                          ("runner_id", runner_id), ("status", st),
                          ("failure_class", failure_class))
    lo, hi = _time(since, "since"), _time(until, "until")
    if lo and hi and lo > hi:
        raise _bad(f"since: {since} is after until: {until}")
    if lo:
        where.append("coalesce(started_at, created_at) >= ?")
        args.append(lo)
    if hi:
        where.append("coalesce(started_at, created_at) < ?")
        args.append(hi)
    return where, args


def _attempt_json(r: Any, layout: Layout) -> dict[str, Any]:
    """An attempts row without nulls, plus its `attempt_dir` under the current root (as the
    unpaged listing gives it: computed from the ids, never recorded)."""
    d = {k: v for k, v in dict(r).items() if v is not None}
    d["attempt_dir"] = str(layout.attempt_dir(r["batch_id"], r["job_id"], r["step_id"],
                                              r["dir_name"]))
    return d


def attempts_page(cat: Catalog, *, batch_id: str | None = None, job_id: str | None = None,
                  step_id: str | None = None, status: str | None = None,
                  failure_class: str | None = None, runner_id: str | None = None,
                  since: str | None = None, until: str | None = None,
                  cursor: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """Attempts across batches (or within one batch/job/step), oldest start first, filtered
    by status, failure class, runner and start-time range [since, until):
    `{attempts, total, next_cursor}`; each attempt is its catalog row without nulls."""
    if batch_id:
        _known_batch(cat, batch_id)
        _known_step(cat, batch_id, job_id, step_id)
    n = _limit(limit)
    where, args = _attempt_filters(batch_id, job_id, step_id, status, failure_class,
                                   runner_id, since, until)
    after = _cursor(cursor, ATTEMPT_CURSOR)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    total = cat.query(f"SELECT count(*) FROM attempts {cond}", args)[0][0]
    if after is not None:
        where.append("(dir_name, batch_id, job_id, step_id) > (?, ?, ?, ?)")
        args.extend(after)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    rows = cat.query(f"SELECT * FROM attempts {cond} ORDER BY dir_name, batch_id, job_id, "
                     "step_id LIMIT ?", [*args, n + 1])
    nxt = None
    if len(rows) > n:
        last = rows[n - 1]
        nxt = encode_cursor([last["dir_name"], last["batch_id"], last["job_id"],
                             last["step_id"]])
    return {"attempts": [_attempt_json(r, cat.layout) for r in rows[:n]], "total": total,
            "next_cursor": nxt}


# ----------------------------------------------------------------------------- history
def token_usage(cat: Catalog, *, by: str = "batch", since: str | None = None,
                until: str | None = None) -> dict[str, Any]:
    """Token usage summed per batch, per day (UTC, by start) or per model (the model named
    on Codex's command line; `(default)` when none was): `{by, rows: [{key, attempts,
    input_tokens, cached_input_tokens, output_tokens, reasoning_output_tokens}]}`."""
    group = _one_of(by, GROUPS, "by") or "batch"
    key = {"batch": "batch_id", "day": "substr(coalesce(started_at, created_at), 1, 10)",
           "model": "coalesce(model, '(default)')"}[group]
    where, args = _attempt_filters(None, None, None, None, None, None, since, until)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    rows = cat.query(
        f"SELECT {key} AS key, count(*) AS attempts, sum(input_tokens) AS input_tokens, "
        "sum(cached_input_tokens) AS cached_input_tokens, sum(output_tokens) AS "
        "output_tokens, sum(reasoning_output_tokens) AS reasoning_output_tokens "
        f"FROM attempts {cond} GROUP BY key ORDER BY key", args)
    return {"by": group, "rows": [dict(r) for r in rows]}


def slowest_steps(cat: Catalog, *, batch_id: str | None = None, since: str | None = None,
                  until: str | None = None, limit: int | None = None) -> dict[str, Any]:
    """The longest-running finished attempts (duration = ended_at - started_at, seconds),
    longest first: `{attempts: [...]}`."""
    if batch_id:
        _known_batch(cat, batch_id)
    n = _limit(limit, 20)
    where, args = _attempt_filters(batch_id, None, None, None, None, None, since, until)
    where.append("duration_seconds IS NOT NULL")
    rows = cat.query(f"SELECT * FROM attempts WHERE {' AND '.join(where)} "
                     "ORDER BY duration_seconds DESC, dir_name LIMIT ?", [*args, n])
    return {"attempts": [_attempt_json(r, cat.layout) for r in rows]}


def retry_rates(cat: Catalog, *, since: str | None = None,
                until: str | None = None) -> dict[str, Any]:
    """Per failure class: attempts that failed with it, how many were retried (another
    attempt names it in `retry_of`), how many of those retries succeeded, and the rates:
    `{rows: [{failure_class, failures, retried, retry_succeeded, retry_rate,
    retry_success_rate}]}`, most failures first."""
    where, args = _attempt_filters(None, None, None, None, None, None, since, until)
    where = [w.replace("coalesce(started_at", "coalesce(a.started_at").replace(
        "created_at)", "a.created_at)") for w in where]
    where.append("a.failure_class IS NOT NULL")
    rows = cat.query(
        "SELECT a.failure_class AS failure_class, count(*) AS failures, "
        "count(r.run_id) AS retried, coalesce(sum(r.status = 'succeeded'), 0) AS "
        "retry_succeeded FROM attempts a LEFT JOIN attempts r ON r.batch_id = a.batch_id "
        "AND r.job_id = a.job_id AND r.step_id = a.step_id AND r.retry_of = a.run_id "
        f"WHERE {' AND '.join(where)} GROUP BY a.failure_class "
        "ORDER BY failures DESC, a.failure_class", args)
    out = []
    for r in rows:
        d = dict(r)
        d["retry_rate"] = round(d["retried"] / d["failures"], 4) if d["failures"] else 0.0
        d["retry_success_rate"] = (round(d["retry_succeeded"] / d["retried"], 4)
                                   if d["retried"] else None)
        out.append(d)
    return {"rows": out}


def per_hour(cat: Catalog, *, since: str | None = None,
             until: str | None = None) -> dict[str, Any]:
    """Attempts started and attempts failed per UTC hour (the dashboard's bars):
    `{rows: [{hour: "2026-01-31T12", attempts, failed}]}`, oldest first."""
    where, args = _attempt_filters(None, None, None, None, None, None, since, until)
    cond = f"WHERE {' AND '.join(where)}" if where else ""
    rows = cat.query(
        "SELECT substr(coalesce(started_at, created_at), 1, 13) AS hour, count(*) AS "
        "attempts, coalesce(sum(status IN ('failed', 'needs_attention')), 0) AS failed "
        f"FROM attempts {cond} GROUP BY hour ORDER BY hour", args)
    return {"rows": [dict(r) for r in rows if r["hour"] is not None]}


def system_view(layout: Layout) -> str | None:
    """The system scoreboard (SPEC's `GET /v1/scoreboard` shape, as `derive_view` prints it:
    `model_dump_json(indent=2)`) from the catalog alone, when it can answer for the whole
    root: every batch on disk settled in the catalog (finished, fingerprint recorded) and
    trusted as `Catalog.refresh_for_reader` trusts it (phh's writers mark a batch open
    before they change it; the engine's start verifies the fingerprints; the refresh
    re-derives a batch closed by hand with a `closed.json`), no start-pause file (its
    notes need the models) and no stray entry in runs/ (a note too). None otherwise: the
    caller derives the view from the files. O(batches) stats, no attempt read, whatever
    the jobs per batch (docs/catalog.md#the-scoreboard-from-the-catalog). A cold `phh
    scoreboard --json` then imports no model and reads no attempt."""
    import os

    from ..store.catalog import batch_dirs

    if not layout.runs.is_dir():
        return None
    try:
        with os.scandir(layout.runs) as it:
            if any(not e.name.startswith(("_", ".")) and not e.is_dir() for e in it):
                return None  # a stray file where a batch would be: derive (it is noted)
        if any(n.endswith(".json") for n in os.listdir(layout.system / "pauses")):
            return None
    except FileNotFoundError:
        pass
    except OSError:
        return None
    try:
        cat = open_for_reader(layout)
    except (CatalogError, sqlite3.Error):
        return None
    try:
        rows = cat.query("SELECT batch_id, finished, fingerprint, system_row FROM batches")
    except sqlite3.Error:
        return None
    finally:
        cat.close()
    known = {r["batch_id"]: r for r in rows}
    on_disk = batch_dirs(layout)
    if set(known) != set(on_disk) or any(
            not r["finished"] or r["fingerprint"] is None or r["system_row"] is None
            for r in rows):
        return None
    out = [json.loads(r["system_row"]) for r in rows]
    # = derive.scoreboards.system_scoreboard's order: attention first, then running, then
    # newest submitted first, ties by batch id
    out.sort(key=lambda r: r["batch_id"])
    out.sort(key=lambda r: (r["attention_steps"] == 0, r["running_steps"] == 0,
                            -datetime.fromisoformat(r["submitted_at"].replace(
                                "Z", "+00:00")).timestamp()))
    now = datetime.now(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    return json.dumps({"computed_at": now, "batches": out, "notes": []}, indent=2,
                      ensure_ascii=False)


QUERIES = {
    "attempts": attempts_page, "tokens": token_usage, "slowest": slowest_steps,
    "retries": retry_rates, "hourly": per_hour,
}


class Reader:
    """A reader's catalog (the API server, the dashboard): opened once, refreshed from the
    files before each answer (the batch a query names; everything at most every
    `full_every` seconds), rebuilt when found damaged. Thread-safe."""

    def __init__(self, layout: Layout, full_every: float = 2.0) -> None:
        self.layout = layout
        self.full_every = full_every
        self._cat: Catalog | None = None
        self._lock = threading.Lock()
        self._full_at = float("-inf")

    def run(self, fn: Callable[..., dict[str, Any]], *, batch_id: str | None = None,
            **kw: Any) -> dict[str, Any]:
        """`fn(catalog, **kw)` (with `batch_id` passed on when given) on a fresh catalog;
        LookupFailed(409) when the catalog cannot be used where it is configured (a network
        filesystem, PHH_CATALOG a directory), LookupFailed(503) when it cannot be written
        now (read-only, immutable, no permission) or cannot be used now: the message names
        the catalog's path and what to do (docs/catalog.md#location). Never moves a healthy
        file aside."""
        if batch_id is not None:
            valid_id(batch_id, "batch_id")
            kw["batch_id"] = batch_id
        from ..store.catalog import CatalogUnwritable, is_damage, unwritable_cause

        with self._lock:
            for attempt in range(2):
                try:
                    try:
                        cat = self._fresh(batch_id)
                        return fn(cat, **kw)
                    except sqlite3.DatabaseError as exc:
                        path = self._cat.path if self._cat is not None else None
                        if attempt or not is_damage(exc) or path is None:
                            self._drop()
                            err = unwritable_cause(path, exc) if path is not None else None
                            if err is not None:
                                raise err from None
                            raise CatalogUnwritable(
                                f"the catalog {path} cannot be used now ({exc}); try again, "
                                "or `phh reindex` rebuilds it") from None
                        self._reset()  # damaged under us: discard, derive again, answer
                except CatalogError as exc:
                    from .artifacts import LookupFailed

                    self._drop()
                    # unwritable / unusable now: 503, the server's state; a location that
                    # can never work (network filesystem, a directory): 409 as before
                    raise LookupFailed(503 if isinstance(exc, CatalogUnwritable) else 409,
                                       str(exc)) from None
        raise AssertionError("unreachable")

    def _drop(self) -> None:
        if self._cat is not None:
            self._cat.close()
        self._cat = None

    def _fresh(self, batch_id: str | None) -> Catalog:
        if self._cat is not None and self._cat.moved() is not None:
            # deleted or replaced under this reader (the engine or another reader rebuilt
            # it): never answer from a file nobody writes any more
            self._cat.close()
            self._cat = None
        if self._cat is None:
            self._cat = open_for_reader(self.layout)
            self._full_at = time.monotonic()
            return self._cat
        if batch_id is not None:
            self._cat.refresh_for_reader([batch_id])
        elif time.monotonic() - self._full_at >= self.full_every:
            self._cat.refresh_for_reader()
            self._full_at = time.monotonic()
        return self._cat

    def _reset(self) -> None:
        from ..store.catalog import _discard

        if self._cat is not None:
            self._cat.close()
            _discard(self._cat.path)
        self._cat = None

    def close(self) -> None:
        with self._lock:
            if self._cat is not None:
                self._cat.close()
                self._cat = None
