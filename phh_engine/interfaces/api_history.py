"""The catalog's routes of the HTTP API (interfaces/api.py adds them): a batch's steps in
pages, and history queries across batches (interfaces/history.py holds the queries, shared
with the CLI). Parameters are validated there: a malformed one is a 400 naming it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query
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


def add_routes(app: FastAPI, layout: Layout, errors: Any) -> Reader:
    """Register the routes on `app`; returns the catalog reader they share."""
    reader = Reader(layout)

    @app.get("/v1/batches/{batch_id}/steps", tags=["batches"], responses=errors(),
             summary="A batch's step rows, paged and filtered (from the catalog)")
    def steps(batch_id: Annotated[str, FPath(pattern=ID_PATTERN)],
              status: str | None = None,
              failure_class: Annotated[str | None, Query(alias="class")] = None,
              cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT) -> dict[str, Any]:
        return reader.run(steps_page, batch_id=batch_id, status=status,
                          failure_class=failure_class, cursor=cursor, limit=limit)

    @app.get("/v1/history/attempts", tags=["history"], responses=errors(),
             summary="Attempts across batches by status, failure class, runner, time range")
    def attempts(batch: OptId = None, job: OptId = None, step: OptId = None,
                 status: str | None = None,
                 failure_class: Annotated[str | None, Query(alias="class")] = None,
                 runner: OptId = None, since: Since = None, until: Until = None,
                 cursor: Cursor = None, limit: Limit = DEFAULT_LIMIT) -> dict[str, Any]:
        return reader.run(attempts_page, batch_id=batch, job_id=job, step_id=step,
                          status=status, failure_class=failure_class, runner_id=runner,
                          since=since, until=until, cursor=cursor, limit=limit)

    @app.get("/v1/history/tokens", tags=["history"], responses=errors(),
             summary="Token usage per batch, per day or per model")
    def tokens(by: str = "batch", since: Since = None, until: Until = None) -> dict[str, Any]:
        return reader.run(token_usage, by=by, since=since, until=until)

    @app.get("/v1/history/slowest", tags=["history"], responses=errors(),
             summary="The longest-running finished attempts")
    def slowest(batch: OptId = None, since: Since = None, until: Until = None,
                limit: Limit = 20) -> dict[str, Any]:
        return reader.run(slowest_steps, batch_id=batch, since=since, until=until, limit=limit)

    @app.get("/v1/history/retries", tags=["history"], responses=errors(),
             summary="Retry rates by failure class")
    def retries(since: Since = None, until: Until = None) -> dict[str, Any]:
        return reader.run(retry_rates, since=since, until=until)

    @app.get("/v1/history/hourly", tags=["history"], responses=errors(),
             summary="Attempts and failures per hour")
    def hourly(since: Since = None, until: Until = None) -> dict[str, Any]:
        return reader.run(per_hour, since=since, until=until)

    return reader
