"""The catalog's routes of the HTTP API (interfaces/api.py adds them): a batch's steps in
pages, and history queries across batches (interfaces/history.py holds the queries, shared
with the CLI). Parameters are validated there: a malformed one is a 400 naming it; a query
parameter the route does not take is a 400 naming it too (`only`), as the CLI refuses an
option a history kind does not use."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query, Request
from fastapi import Path as FPath

from ..models import ID_PATTERN
from ..store.paths import Layout
from .history import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    Reader,
    attempts_page,
    per_hour,
    retry_rates,
    slowest_steps,
    steps_page,
    token_usage,
)

Limit = Annotated[int, Query(ge=1, le=MAX_LIMIT, description="rows per page")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page")]
Since = Annotated[str | None, Query(description="ISO 8601: attempts started at or after")]
Until = Annotated[str | None, Query(description="ISO 8601: attempts started before")]
OptId = Annotated[str | None, Query(pattern=ID_PATTERN)]


def only(request: Request, what: str, *allowed: str) -> None:
    """400 naming the first query parameter of `request` that is not in `allowed` (FastAPI
    ignores unknown ones: `/v1/history/hourly?status=bogus` would answer as if unfiltered)."""
    extra = sorted(set(request.query_params) - set(allowed))
    if extra:
        from .artifacts import LookupFailed

        takes = ", ".join(allowed) if allowed else "no parameters"
        raise LookupFailed(400, f"{extra[0]}: not a parameter of {what} (it takes: {takes})")


def add_routes(app: FastAPI, layout: Layout, errors: Any) -> Reader:
    """Register the routes on `app`; returns the catalog reader they share."""
    reader = Reader(layout)

    @app.get("/v1/batches/{batch_id}/steps", tags=["batches"], responses=errors(),
             summary="A batch's step rows, paged and filtered (from the catalog)")
    def steps(request: Request, batch_id: Annotated[str, FPath(pattern=ID_PATTERN)],
              status: str | None = None,
              failure_class: Annotated[str | None, Query(alias="class")] = None,
              cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT) -> dict[str, Any]:
        only(request, "/v1/batches/{b}/steps", "status", "class", "cursor", "limit")
        return reader.run(steps_page, batch_id=batch_id, status=status,
                          failure_class=failure_class, cursor=cursor, limit=limit)

    @app.get("/v1/history/attempts", tags=["history"], responses=errors(),
             summary="Attempts across batches by status, failure class, runner, time range")
    def attempts(request: Request, batch: OptId = None, job: OptId = None,
                 step: OptId = None, status: str | None = None,
                 failure_class: Annotated[str | None, Query(alias="class")] = None,
                 runner: OptId = None, since: Since = None, until: Until = None,
                 cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT) -> dict[str, Any]:
        only(request, "/v1/history/attempts", "batch", "job", "step", "status", "class",
             "runner", "since", "until", "cursor", "limit")
        return reader.run(attempts_page, batch_id=batch, job_id=job, step_id=step,
                          status=status, failure_class=failure_class, runner_id=runner,
                          since=since, until=until, cursor=cursor, limit=limit)

    @app.get("/v1/history/tokens", tags=["history"], responses=errors(),
             summary="Token usage per batch, per day or per model")
    def tokens(request: Request, by: str = "batch", since: Since = None,
               until: Until = None) -> dict[str, Any]:
        only(request, "/v1/history/tokens", "by", "since", "until")
        return reader.run(token_usage, by=by, since=since, until=until)

    @app.get("/v1/history/slowest", tags=["history"], responses=errors(),
             summary="The longest-running finished attempts")
    def slowest(request: Request, batch: OptId = None, since: Since = None,
                until: Until = None, limit: Limit = 20) -> dict[str, Any]:
        only(request, "/v1/history/slowest", "batch", "since", "until", "limit")
        return reader.run(slowest_steps, batch_id=batch, since=since, until=until, limit=limit)

    @app.get("/v1/history/retries", tags=["history"], responses=errors(),
             summary="Retry rates by failure class")
    def retries(request: Request, since: Since = None, until: Until = None) -> dict[str, Any]:
        only(request, "/v1/history/retries", "since", "until")
        return reader.run(retry_rates, since=since, until=until)

    @app.get("/v1/history/hourly", tags=["history"], responses=errors(),
             summary="Attempts and failures per hour")
    def hourly(request: Request, since: Since = None, until: Until = None) -> dict[str, Any]:
        only(request, "/v1/history/hourly", "since", "until")
        return reader.run(per_hour, since=since, until=until)

    return reader
