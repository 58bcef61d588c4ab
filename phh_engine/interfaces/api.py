"""HTTP API (`phh serve`, docs/interfaces.md): JSON over HTTP, OpenAPI at `/openapi.json`.

The API is a thin face over `api_ops` (shared with the CLI) and `artifacts` (safe attempt
file reads); it never touches the engine's memory, so it runs in its own process or beside an
engine (`phh run --api`) alike: operator actions are request files the engine applies.

Auth (`interfaces.api_mode.auth_mode` in the harness config):
- `none`: no credentials; binds loopback (127.0.0.0/8, ::1) or a Unix socket only.
- `local_trust`: same binding rule, and every request must come from a loopback peer or the
  Unix socket, with a loopback `Host` (defeats DNS rebinding) and no foreign `Origin`
  (defeats cross-site requests from a browser).
- `token`: `Authorization: Bearer <token>`, compared with `hmac.compare_digest`; the token is
  read from the environment variable `token_env` or the file `token_file` (outside runs/),
  never logged, never written anywhere by phh. Any bind address is allowed.
In every mode a request from a browser page of another origin is refused, and bodies are
limited (`max_body_bytes`, 413 beyond).

Errors are `{"error": <code>, "message": <text>[, "errors": [{path, message}]]}` with 400
(malformed request or id), 401 (token missing/wrong), 403 (peer/origin refused), 404
(unknown batch/job/step/attempt/artifact), 409 (the engine rejected an action), 413, 422
(invalid Launch Table or body); an unexpected failure is a 500 with no trace.
"""

# One file on purpose (~750 lines): it is the route table. Every route with its auth rule,
# request and response models and error mapping is declared here, so the OpenAPI document
# (/openapi.json) and the auth rules read in one place; what the routes do already lives in
# api_ops.py (shared with the CLI), api_history.py and artifacts.py.

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import json
import logging
import os
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from fastapi import Body, FastAPI, Header, Query, Request
from fastapi import Path as FPath
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import __version__
from ..models import ID_PATTERN, TERMINAL_STATUSES, BatchScoreboard, HarnessConfig, SystemScoreboard
from ..models.scoreboard import SystemRow
from ..store.documents import DocumentError, loads_json
from ..store.logs import MAX_OFFSET
from ..store.paths import ARTIFACT_NAMES, Layout
from .api_ops import (
    InvalidLaunchTable,
    current_index,
    engine_serving,
    list_attempts,
    list_jobs,
    load_meta,
    request_action,
    submit_table,
    view_json,
)
from .artifacts import (
    AttemptRef,
    EventLine,
    LookupFailed,
    attempt_from_dir,
    attempt_status,
    check_name,
    events_file,
    find_attempt,
    follow_lines,
    iter_artifact,
    last_lines,
    media_type,
    read_lines,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_BODY = 16 << 20
KEEPALIVE_SECONDS = 10.0
MIN_TOKEN_CHARS = 16
AuthMode = Literal["none", "local_trust", "token"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ServeError(Exception):
    """The API cannot start as configured (non-loopback bind without a token, no token...)."""


# ----------------------------------------------------------------------------- auth
@dataclass(frozen=True)
class Auth:
    mode: AuthMode
    token: bytes | None = None

    def __repr__(self) -> str:  # never show the token, even in a debugger or a log line
        return f"Auth(mode={self.mode!r}, token={'<set>' if self.token else None})"


def is_loopback_host(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def load_token(layout: Layout, config: HarnessConfig) -> bytes:
    """The bearer token from `token_env`, else `token_file`; ServeError when neither has one
    (the message names where to put it, never a value)."""
    api = config.interfaces.api_mode
    value = os.environ.get(api.token_env, "")
    source = f"environment variable {api.token_env}"
    if not value and api.token_file:
        path = (layout.root / Path(api.token_file).expanduser()).resolve()
        if path.is_relative_to(layout.runs):
            raise ServeError(f"token_file {path} is under runs/: keep it outside the store")
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ServeError(f"cannot read token_file {path}: {exc.strerror}") from None
        source = f"token_file {path}"
    if not value:
        raise ServeError(
            f"auth_mode is 'token' but no token is set: export {api.token_env}=<token> or set "
            "interfaces.api_mode.token_file to a file outside runs/")
    if len(value) < MIN_TOKEN_CHARS:
        raise ServeError(f"the API token from {source} is shorter than {MIN_TOKEN_CHARS} "
                         "characters; use a long random one (e.g. `openssl rand -hex 32`)")
    return value.encode("utf-8")


def resolve_auth(layout: Layout, config: HarnessConfig, host: str | None,
                 uds: str | None = None) -> Auth:
    """Check the bind against auth_mode (docs/interfaces.md) and load the token when needed."""
    mode: AuthMode = config.interfaces.api_mode.auth_mode
    if mode in ("none", "local_trust") and uds is None and not is_loopback_host(host or ""):
        raise ServeError(
            f"auth_mode {mode!r} serves loopback only; refusing to bind {host!r}. Bind "
            "127.0.0.1 (or a Unix socket), or set interfaces.api_mode.auth_mode to 'token'")
    return Auth(mode, load_token(layout, config) if mode == "token" else None)


async def _send_json(send: Send, status: int, body: dict[str, Any],
                     headers: list[tuple[bytes, bytes]] | None = None) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()),
        *(headers or [])]})
    await send({"type": "http.response.body", "body": data})


def hostile_body(body: bytes) -> DocumentError | None:
    """A JSON body phh refuses before any handler sees it (non-finite numbers, over-deep
    nesting: documents.loads_json's rules), or None. Not JSON at all is left to the
    handler's own 400."""
    if not body.strip():
        return None
    try:
        loads_json(body)
    except DocumentError as exc:
        return exc
    except ValueError:  # malformed JSON, not UTF-8: the handler says so
        return None
    return None


class Guard:
    """Pure ASGI middleware: peer/host/origin rules, bearer token, body size limit."""

    def __init__(self, app: ASGIApp, auth: Auth, max_body: int) -> None:
        self.app = app
        self.auth = auth
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, code, message = refusal
            extra = [(b"www-authenticate", b"Bearer")] if status == 401 else None
            await _send_json(send, status, {"error": code, "message": message}, extra)
            return
        length = headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                await _send_json(send, 400, {"error": "bad_request",
                                             "message": "invalid Content-Length"})
                return
            if int(length) > self.max_body:
                await self._too_large(send)
                return
        if scope.get("method") in ("POST", "PUT", "PATCH"):
            # buffer the (small, JSON) body so a chunked upload cannot exceed the limit
            body = bytearray()
            more = True
            while more:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    return
                body.extend(msg.get("body", b""))
                more = bool(msg.get("more_body"))
                if len(body) > self.max_body:
                    await self._too_large(send)
                    return
            data = bytes(body)
            # a big body is parsed off the event loop, which keeps serving the others
            problem = hostile_body(data) if len(data) < 65536 else \
                await asyncio.to_thread(hostile_body, data)
            if problem is not None:
                await _send_json(send, 400, {
                    "error": "bad_request", "message": f"request body refused: {problem}",
                    "errors": [{"path": problem.path, "message": problem.message}]})
                return
            sent = False

            async def replay() -> Message:
                nonlocal sent
                if not sent:
                    sent = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            await self.app(scope, replay, send)
            return
        await self.app(scope, receive, send)

    async def _too_large(self, send: Send) -> None:
        await _send_json(send, 413, {"error": "too_large", "message": (
            f"request body exceeds {self.max_body} bytes")})

    def _refusal(self, scope: Scope, headers: dict[str, str]) -> tuple[int, str, str] | None:
        origin = headers.get("origin")
        if origin and origin != "null":
            o_host = urlsplit(origin).hostname or ""
            if self.auth.mode != "token" and not is_loopback_host(o_host):
                return 403, "forbidden", "cross-origin requests are refused"
        if headers.get("sec-fetch-site") == "cross-site":
            return 403, "forbidden", "cross-site requests are refused"
        if self.auth.mode in ("none", "local_trust"):
            client = scope.get("client")
            if client and client[0] and not is_loopback_host(str(client[0])):
                return 403, "forbidden", "this API serves local clients only"
            host = headers.get("host", "")
            hostname = urlsplit(f"//{host}").hostname or ""
            if host and not is_loopback_host(hostname) and client:
                return 403, "forbidden", f"Host {hostname!r} is not a loopback name"
            return None
        given = headers.get("authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            return 401, "unauthorized", "missing bearer token (Authorization: Bearer <token>)"
        assert self.auth.token is not None
        if not hmac.compare_digest(value.strip().encode("utf-8"), self.auth.token):
            return 401, "unauthorized", "wrong bearer token"
        return None


# ----------------------------------------------------------------------------- models
class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


_ID_DOC = "an id: " + ID_PATTERN + " and no '..'"
BatchId = Annotated[str, FPath(pattern=ID_PATTERN, description=_ID_DOC)]
JobId = Annotated[str, FPath(pattern=ID_PATTERN, description=_ID_DOC)]
StepId = Annotated[str, FPath(pattern=ID_PATTERN, description=_ID_DOC)]
RunIdQuery = Annotated[str | None, Query(
    pattern=ID_PATTERN, description="run_id (default: the step's latest attempt)")]
ArtifactName = Annotated[str, FPath(description="attempt file name",
                                    json_schema_extra={"enum": list(ARTIFACT_NAMES)})]


class ErrorItem(BaseModel):
    path: str
    message: str


class ErrorBody(BaseModel):
    error: str = Field(description="short machine code: bad_request, not_found, conflict, ...")
    message: str
    errors: list[ErrorItem] | None = Field(default=None, description="every problem found")


class SubmitRequest(Strict):
    launch_table: dict[str, Any] | None = Field(
        default=None, description="the Launch Table itself (inline JSON)")
    launch_table_ref: str | None = Field(
        default=None, description="path of a Launch Table file on the server (JSON or YAML)")
    dedupe: bool = Field(default=False, description=(
        "return the existing batch when these exact bytes were submitted before with dedupe"))


class NoteItem(BaseModel):
    path: str = Field(description="JSON path in the Launch Table as written")
    message: str


class SubmitResponse(BaseModel):
    batch_id: str
    accepted_job_ids: list[str]
    existing: bool = False
    notes: list[NoteItem] = Field(default_factory=list, description=(
        "how the table was read: reference-harness spellings taken as phh's own, a batch "
        "concurrency capped to the harness limit (never errors)"))


class ActionBody(Strict):
    wait_seconds: float = Field(default=10.0, ge=0, le=60,
                                description="how long to wait for the engine's result")


class CancelBody(ActionBody):
    run_id: str | None = Field(default=None, pattern=ID_PATTERN,
                               description="default: the step's in-flight one")
    reason: str | None = None


class RetryBody(ActionBody):
    prompt: str | None = Field(default=None, description="extra prompt for the new attempt")


class ResumeBody(ActionBody):
    prompt: str = Field(min_length=1, description="the follow-up turn")
    run_id: str | None = Field(default=None, pattern=ID_PATTERN,
                               description="default: latest finished attempt")


class PromoteBody(ActionBody):
    run_id: str = Field(pattern=ID_PATTERN, description="the candidate run to promote")


class RequeueBody(ActionBody):
    runner_id: str | None = Field(default=None, pattern=ID_PATTERN,
                                  description="runner to run it on")


class ReasonBody(ActionBody):
    reason: str | None = None


class ActionResult(BaseModel):
    nonce: str
    action: str
    status: Literal["applied", "rejected", "queued", "pending"] = Field(description=(
        "applied (200) | rejected (409) | queued: no engine runs (202) | pending: no result "
        "within wait_seconds (202)"))
    message: str
    run_id: str | None = None


class BatchPage(BaseModel):
    """`GET /v1/batches/{b}?limit=&cursor=`: one page of a batch's step rows from the catalog
    (interfaces/history.py batch_page; docs/interfaces.md#http-api)."""

    batch_id: str
    batch: SystemRow | None = Field(description="the batch's system-view row")
    steps: list[dict[str, Any]] = Field(
        description="step rows (the batch view's `steps`, plus `failure_class`), Launch "
                    "Table order")
    total: int = Field(description="step rows in the batch")
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class Health(BaseModel):
    ok: bool
    version: str
    auth_mode: str
    engine_serving: bool


class EventItem(BaseModel):
    offset: int = Field(description="byte offset after this line: read again from here")
    event: dict[str, Any] | None
    raw: str | None = Field(default=None, description="the line when it is not JSON")
    truncated: bool | None = Field(
        default=None, description="true: the line was longer than phh hands out whole; `raw` "
        "holds its start and a marker")
    line_bytes: int | None = Field(default=None, description="a truncated line's real length")


class EventsPage(BaseModel):
    batch_id: str
    job_id: str
    step_id: str
    run_id: str
    attempt_dir: str
    file: str
    status: str
    terminal: bool
    next_offset: int
    events: list[EventItem]


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The error responses every operation may give (documented in the OpenAPI)."""
    return {c: {"model": ErrorBody} for c in sorted({400, 401, 403, 404, 413, 422, *codes})}


ARTIFACT_CONTENT: dict[str, dict[str, Any]] = {
    "application/json": {}, "text/plain": {}, "application/x-ndjson": {}}


# ----------------------------------------------------------------------------- app
def create_app(layout: Layout, auth: Auth, *, max_body_bytes: int = DEFAULT_MAX_BODY
               ) -> FastAPI:
    app = FastAPI(
        title="phh API",
        version=__version__,
        description="Run many Codex agents in parallel: submit Launch Tables, read scoreboards "
                    "and attempt files, follow events, act on steps. Mirrors the `phh` CLI.",
        docs_url=None, redoc_url=None,
    )

    @app.exception_handler(LookupFailed)
    async def _lookup(_: Request, exc: LookupFailed) -> JSONResponse:
        code = {400: "bad_request", 404: "not_found", 409: "conflict",
                422: "invalid", 503: "unavailable"}.get(exc.status, "error")
        body: dict[str, Any] = {"error": code, "message": exc.message}
        if isinstance(exc, InvalidLaunchTable):
            body["errors"] = exc.errors
        return JSONResponse(body, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        """A malformed request (bad JSON, bad query/path/header value) is a 400; a body
        that parses but does not fit the model is a 422."""
        items, malformed = [], False
        for e in exc.errors():
            loc = [str(p) for p in e.get("loc", ())]
            if e.get("type") == "json_invalid" or (loc and loc[0] != "body"):
                malformed = True
            items.append({"path": ".".join(loc) or "$", "message": str(e.get("msg", ""))})
        status = 400 if malformed else 422
        return JSONResponse({
            "error": "bad_request" if malformed else "invalid",
            "message": "malformed request" if malformed else "invalid request body",
            "errors": items}, status_code=status)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error")
        return JSONResponse({"error": code, "message": str(exc.detail)},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(Exception)
    async def _boom(_: Request, exc: Exception) -> JSONResponse:
        log.error("API request failed: %s", type(exc).__name__, exc_info=exc)
        return JSONResponse({"error": "internal", "message": (
            "internal error; details are in the server log")}, status_code=500)

    # -------------------------------------------------------------- system
    @app.get("/v1/health", response_model=Health, tags=["system"], responses=errors())
    def health() -> Health:
        return Health(ok=True, version=__version__, auth_mode=auth.mode,
                      engine_serving=engine_serving(layout))

    @app.get("/v1/scoreboard", response_model=SystemScoreboard, tags=["scoreboards"],
             responses=errors(), summary="System scoreboard: one row per batch")
    def scoreboard() -> Any:
        return view_json(layout)

    @app.get("/v1/batches", response_model=list[SystemRow], tags=["batches"],
             responses=errors(), summary="List batches (the system scoreboard's rows)")
    def batches() -> Any:
        return view_json(layout)["batches"]

    @app.post("/v1/batches", response_model=SubmitResponse, status_code=201, tags=["batches"],
              responses={200: {"model": SubmitResponse,
                               "description": "dedupe: these bytes were submitted before"},
                         **errors()},
              summary="Submit a Launch Table (inline or by reference)")
    def submit_batch(req: SubmitRequest) -> Any:
        if (req.launch_table is None) == (req.launch_table_ref is None):
            raise LookupFailed(400, "give exactly one of launch_table and launch_table_ref")
        source: Path | dict[str, Any]
        if req.launch_table_ref is not None:
            if "\x00" in req.launch_table_ref or not req.launch_table_ref.strip():
                raise LookupFailed(400, "launch_table_ref is not a usable path")
            path = Path(req.launch_table_ref).expanduser()
            source = path if path.is_absolute() else layout.root / path
            # a FIFO, a device or a symlink loop is refused by submit with its reason (422)
            if not os.path.lexists(source):
                raise LookupFailed(404, f"launch_table_ref {req.launch_table_ref!r}: no such "
                                        "file on the server")
        else:
            source = req.launch_table or {}
        res = submit_table(layout, source, dedupe=req.dedupe)
        return JSONResponse(res, status_code=200 if res.get("existing") else 201)

    # -------------------------------------------------------------- batches
    @app.get("/v1/batches/{batch_id}", response_model=BatchScoreboard | BatchPage,
             tags=["scoreboards"],
             responses=errors(), summary="Batch scoreboard (with limit/cursor: one page)",
             description="Without `limit` and `cursor`: the whole batch view. With either: "
             "`{batch_id, batch, steps, total, next_cursor}` from the catalog, one page of "
             "step rows (docs/interfaces.md#http-api).")
    def batch(request: Request, batch_id: BatchId,
              limit: Annotated[int | None, Query(ge=1, le=1000)] = None,
              cursor: Annotated[str | None, Query()] = None) -> Any:
        if limit is not None or cursor is not None:  # paged: O(page), from the catalog
            from .api_history import only
            from .history import batch_page

            only(request, "/v1/batches/{b}?limit=&cursor=", "limit", "cursor")

            return JSONResponse(catalog.run(batch_page, batch_id=batch_id, cursor=cursor,
                                            limit=limit))
        return view_json(layout, batch_id)

    @app.get("/v1/batches/{batch_id}/meta", tags=["batches"], responses=errors(),
             summary="batch_meta.json (write-once)")
    def batch_meta(batch_id: BatchId) -> dict[str, Any]:
        return load_meta(layout, batch_id).model_dump(mode="json", exclude_none=True)

    @app.get("/v1/batches/{batch_id}/jobs", tags=["batches"], responses=errors(),
             summary="Jobs of a batch with each step's derived status")
    def jobs(batch_id: BatchId) -> dict[str, Any]:
        return list_jobs(layout, batch_id)

    from .api_history import add_routes as add_catalog_routes

    catalog = add_catalog_routes(app, layout, errors)  # paged steps, /v1/history/*

    @app.get("/v1/batches/{batch_id}/jobs/{job_id}/current", tags=["batches"],
             responses=errors(), summary="current.json of a job")
    def current(batch_id: BatchId, job_id: JobId) -> dict[str, Any]:
        return current_index(layout, batch_id, job_id)

    @app.get("/v1/batches/{batch_id}/jobs/{job_id}/steps/{step_id}/attempts", tags=["attempts"],
             responses=errors(), summary="Attempts of a step, oldest first")
    def attempts(batch_id: BatchId, job_id: JobId, step_id: StepId) -> dict[str, Any]:
        return list_attempts(layout, batch_id, job_id, step_id)

    # -------------------------------------------------------------- artifacts
    def _artifact(ref: AttemptRef, name: str) -> Response:
        check_name(name)
        chunks, size = iter_artifact(ref, name)
        headers = {"x-phh-attempt-dir": str(ref.path), "x-phh-run-id": ref.run_id}
        if size is not None:
            headers["content-length"] = str(size)
        return StreamingResponse(chunks, media_type=media_type(name), headers=headers)

    artifact_doc = ("One attempt file by name: " + ", ".join(ARTIFACT_NAMES) +
                    ". The bytes as on disk (a log GC compressed: its original bytes).")

    @app.get("/v1/batches/{batch_id}/jobs/{job_id}/steps/{step_id}/artifacts/{name}",
             tags=["attempts"], response_class=Response, description=artifact_doc,
             responses={200: {"content": ARTIFACT_CONTENT}, **errors()},
             summary="An attempt file, by ids (default: the step's latest attempt)")
    def artifact(batch_id: BatchId, job_id: JobId, step_id: StepId, name: ArtifactName,
                 run_id: RunIdQuery = None) -> Response:
        return _artifact(find_attempt(layout, batch_id, job_id, step_id, run_id), name)

    @app.get("/v1/attempt/artifacts/{name}", tags=["attempts"], response_class=Response,
             description=artifact_doc, responses={200: {"content": ARTIFACT_CONTENT},
                                                  **errors()},
             summary="An attempt file, by attempt_dir")
    def artifact_by_dir(name: ArtifactName, attempt_dir: str = Query(
            description="as in current.json / scoreboards")) -> Response:
        return _artifact(attempt_from_dir(layout, attempt_dir), name)

    # -------------------------------------------------------------- events
    events_doc = (
        "Codex events of one attempt. Without `follow`: a JSON page of complete lines from "
        "`offset` (or the last `tail` lines). With `follow=true`: Server-Sent Events "
        "(`event: codex`, `id:` = byte offset, `data:` = the event JSON; `event: raw` for a "
        "non-JSON line; `: keepalive` comments) until the attempt ends, then `event: end` with "
        "`{status, next_offset}`. Reconnect with `Last-Event-ID` to continue.")

    def _events(ref: AttemptRef, offset: int, tail: int | None, follow: bool,
                last_event_id: str | None) -> Response:
        if last_event_id is not None and last_event_id.strip().isdigit():
            if len(last_event_id.strip()) > 19 or int(last_event_id) > MAX_OFFSET:
                raise StarletteHTTPException(400, f"Last-Event-ID: a byte offset, at most "
                                                  f"{MAX_OFFSET}")
            offset, tail = int(last_event_id.strip()), None
        name = events_file(ref)
        if not follow:
            lines = (last_lines(ref, name, tail) if tail is not None
                     else read_lines(ref, name, offset))
            status = attempt_status(ref)
            nxt = lines[-1].offset if lines else offset
            return JSONResponse(EventsPage(
                **ref.as_dict(), file=name, status=status,
                terminal=status in TERMINAL_STATUSES, next_offset=nxt,
                events=[EventItem(**ln.as_dict()) for ln in lines],
            ).model_dump(mode="json", exclude_unset=True))
        if tail is not None:
            last = last_lines(ref, name, tail + 1)
            offset = last[0].offset if len(last) > tail else 0
        return StreamingResponse(_sse(ref, offset), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache",
                                          "x-accel-buffering": "no"})

    async def _sse(ref: AttemptRef, offset: int) -> AsyncIterator[bytes]:
        yield b": following " + ref.run_id.encode() + b"\n\n"
        nxt = offset
        async for item in follow_lines(ref, offset, idle_timeout=KEEPALIVE_SECONDS):
            if isinstance(item, EventLine):
                nxt = item.offset
                if item.event is not None:
                    data = json.dumps(item.event, separators=(",", ":"))
                    yield f"id: {item.offset}\nevent: codex\ndata: {data}\n\n".encode()
                else:
                    raw = item.raw.replace("\n", " ")
                    yield f"id: {item.offset}\nevent: raw\ndata: {raw}\n\n".encode()
            elif item == "":
                yield b": keepalive\n\n"
            else:
                end = json.dumps({"status": item, "next_offset": nxt})
                yield f"event: end\ndata: {end}\n\n".encode()

    ev_params: dict[str, Any] = dict(
        tags=["attempts"], description=events_doc,
        responses={200: {"model": EventsPage, "content": {"text/event-stream": {}}},
                   **errors()})

    @app.get("/v1/batches/{batch_id}/jobs/{job_id}/steps/{step_id}/events",
             summary="Events of an attempt by ids; follow=true streams (SSE)", **ev_params)
    def events(batch_id: BatchId, job_id: JobId, step_id: StepId,
               run_id: RunIdQuery = None,
               offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
               tail: int | None = Query(
                   default=None, ge=1, le=100_000),
               follow: bool = Query(default=False),
               last_event_id: str | None = Header(default=None)) -> Response:
        ref = find_attempt(layout, batch_id, job_id, step_id, run_id)
        return _events(ref, offset, tail, follow, last_event_id)

    @app.get("/v1/attempt/events", summary="Events of an attempt by attempt_dir",
             **ev_params)
    def events_by_dir(attempt_dir: str = Query(),
                      offset: int = Query(default=0, ge=0, le=MAX_OFFSET),
                      tail: int | None = Query(default=None, ge=1, le=100_000),
                      follow: bool = Query(default=False),
                      last_event_id: str | None = Header(default=None)) -> Response:
        return _events(attempt_from_dir(layout, attempt_dir), offset, tail, follow,
                       last_event_id)

    # -------------------------------------------------------------- actions
    def _act(action: str, batch_id: str, job_id: str | None, step_id: str | None,
             body: ActionBody, **kw: Any) -> JSONResponse:
        out = request_action(layout, action, batch_id, job_id, step_id, requested_by="api",
                             wait=body.wait_seconds, **kw)
        code = {"applied": 200, "rejected": 409}.get(out["status"], 202)
        return JSONResponse(ActionResult(**out).model_dump(mode="json", exclude_none=True),
                            status_code=code)

    act_doc = {200: {"model": ActionResult, "description": "applied"},
               202: {"model": ActionResult, "description": "queued or pending"},
               409: {"model": ActionResult, "description": "rejected by the engine"},
               **errors()}
    step_path = "/v1/batches/{batch_id}/jobs/{job_id}/steps/{step_id}"

    @app.post(step_path + "/cancel", tags=["actions"], responses=act_doc,
              response_model=ActionResult, summary="Cancel the step's running attempt")
    def cancel(batch_id: BatchId, job_id: JobId, step_id: StepId,
               body: Annotated[CancelBody | None, Body()] = None) -> JSONResponse:
        b = body or CancelBody()
        return _act("cancel", batch_id, job_id, step_id, b, run_id=b.run_id, reason=b.reason)

    @app.post(step_path + "/retry", tags=["actions"], responses=act_doc,
              response_model=ActionResult,
              summary="Retry now (ignores backoff and max_attempts)")
    def retry(batch_id: BatchId, job_id: JobId, step_id: StepId,
              body: Annotated[RetryBody | None, Body()] = None) -> JSONResponse:
        b = body or RetryBody()
        return _act("retry", batch_id, job_id, step_id, b, prompt=b.prompt)

    @app.post(step_path + "/resume", tags=["actions"], responses=act_doc,
              response_model=ActionResult,
              summary="Continue a finished attempt's conversation with a follow-up prompt")
    def resume(batch_id: BatchId, job_id: JobId, step_id: StepId, body: ResumeBody) -> JSONResponse:
        return _act("resume", batch_id, job_id, step_id, body, prompt=body.prompt,
                    run_id=body.run_id)

    @app.post(step_path + "/requeue", tags=["actions"], responses=act_doc,
              response_model=ActionResult,
              summary="Cancel the step's attempt (if any) and run it again, maybe elsewhere")
    def requeue(batch_id: BatchId, job_id: JobId, step_id: StepId,
                body: Annotated[RequeueBody | None, Body()] = None) -> JSONResponse:
        b = body or RequeueBody()
        return _act("requeue", batch_id, job_id, step_id, b, runner_id=b.runner_id)

    @app.post(step_path + "/mark-failed", tags=["actions"], responses=act_doc,
              response_model=ActionResult,
              summary="Mark the step failed for good (dependants stay blocked)")
    def mark_failed(batch_id: BatchId, job_id: JobId, step_id: StepId,
                    body: Annotated[ReasonBody | None, Body()] = None) -> JSONResponse:
        b = body or ReasonBody()
        return _act("mark-failed", batch_id, job_id, step_id, b, reason=b.reason)

    @app.post(step_path + "/promote", tags=["actions"], responses=act_doc,
              response_model=ActionResult,
              summary="Promote a candidate of a best-of-N step (docs/verification.md)")
    def promote(batch_id: BatchId, job_id: JobId, step_id: StepId,
                body: PromoteBody) -> JSONResponse:
        return _act("promote", batch_id, job_id, step_id, body, run_id=body.run_id)

    @app.post("/v1/batches/{batch_id}/close", tags=["actions"], responses=act_doc,
              response_model=ActionResult, summary="Close a batch: no further attempts")
    def close(batch_id: BatchId, body: Annotated[ReasonBody | None, Body()] = None) -> JSONResponse:
        b = body or ReasonBody()
        return _act("close", batch_id, None, None, b, reason=b.reason)

    app.add_middleware(Guard, auth=auth, max_body=max_body_bytes)
    return app


# ----------------------------------------------------------------------------- serving
def bind_socket(host: str | None, port: int, uds: str | None) -> socket.socket:
    """Bind before uvicorn starts, so port 0 works and the real address is known."""
    if uds is not None:
        path = Path(uds)
        if path.is_socket():
            path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        os.chmod(path, 0o600)  # local_trust: only this user may connect
    else:
        assert host is not None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def describe_bind(sock: socket.socket) -> str:
    if sock.family == socket.AF_UNIX:
        return f"unix:{sock.getsockname()}"
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class ApiServer:
    """uvicorn on a pre-bound socket; `run()` blocks, `start()` runs it in a thread."""

    def __init__(self, layout: Layout, config: HarnessConfig, *, host: str | None = None,
                 port: int | None = None, uds: str | None = None, log_level: str = "info",
                 access_log: bool = True, max_body_bytes: int = DEFAULT_MAX_BODY) -> None:
        import uvicorn

        api = config.interfaces.api_mode
        host = host or api.host
        self.auth = resolve_auth(layout, config, host, uds)
        self.sock = bind_socket(host, api.port if port is None else port, uds)
        self.url = describe_bind(self.sock)
        self.app = create_app(layout, self.auth, max_body_bytes=max_body_bytes)
        self.server = uvicorn.Server(uvicorn.Config(
            self.app, log_level=log_level, access_log=access_log,
            timeout_graceful_shutdown=2, lifespan="off"))
        self._thread: threading.Thread | None = None

    def run(self) -> None:
        try:
            asyncio.run(self.server.serve(sockets=[self.sock]))
        finally:
            self.sock.close()

    def start(self) -> ApiServer:
        self._thread = threading.Thread(target=self.run, name="phh-api", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
