"""A scripted stand-in for the OpenAI Responses API, so the real Codex CLI runs offline.

Why: engine tests (and the demo) must drive the *real* ``codex`` binary without a network or
an API key, with behaviour chosen per run: final answers, shell commands that really change
files, HTTP errors, broken streams, hangs. The server is stateless so many Codex processes can
share one: each request carries the whole conversation, and the script rides inside the prompt.

Script: the newest user message in ``input`` holds a line ``[[standin {"actions": [...]}]]``
(see :func:`script`). The number of tool outputs after that message says which action is next.
Actions (all accept ``"delay"``: seconds before the response headers, and ``"stream_delay"``:
seconds between SSE events):

- ``{"shell": "cmd", "yield_time_ms"?: int, "workdir"?: str}``: an ``exec_command`` call.
- ``{"apply_patch": "*** Begin Patch ..."}``: an ``apply_patch`` (free-form) tool call.
- ``{"final": {...}}``: an assistant message holding a valid Run Report (defaults merged).
- ``{"final_text": "raw"}``: an assistant message with exactly that text.
- ``{"final": {...}, "pad_summary": N}``: the report's summary padded with N more "x" (a
  message of megabytes without a prompt of megabytes).
- ``{"echo_thread": true}``: a final report whose summary counts the user messages seen.
- ``{"http_error": 500, "body"?: str | dict}``: that HTTP status with a JSON error body
  (a dict is sent as it is: e.g. 429 ``{"error": {"type": "usage_limit_reached",
  "resets_at": <unix time>}}`` for a usage limit, 400 ``{"error": {"type":
  "invalid_request_error", "code": "context_length_exceeded", ...}}``).
- ``{"stream_fail": "message"}``: ``response.created`` then ``response.failed``.
- ``{"hang": seconds}``: ``response.created``, silence, then a final (its ``final`` /
  ``final_text`` key if given, else the default report).

Past the end of ``actions`` the last action repeats if it is final-like (``final``,
``final_text``, ``echo_thread``); otherwise, and without any marker, the default report.
"""

# One file on purpose (~620 lines): test and demo tooling outside the layers, run as
# `python -m phh_engine.standin`. The script format, how a request picks its action and the
# SSE stream it answers with are read together when writing a test, so they stay together.

from __future__ import annotations

import argparse
import copy
import http.server
import json
import select
import socket
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

MARKER_PREFIX = "[[standin "
PROVIDER_ID = "phh_standin"
DEFAULT_MODEL = "gpt-5.5"
DEFAULT_REPORT: dict[str, Any] = {
    "schema_version": "1.0.0",
    "status": "ok",
    "summary": "stand-in finished",
    "files_read": [],
    "files_written": [],
    "artifacts": [],
}
TOOL_OUTPUT_TYPES = frozenset({"function_call_output", "custom_tool_call_output"})
FINAL_KINDS = frozenset({"final", "final_text", "echo_thread"})
# Codex prepends a user message with the environment; it is not a prompt.
_CONTEXT_PREFIXES = ("<environment_context>", "<user_instructions>", "# AGENTS.md")


def script(*actions: dict[str, Any]) -> str:
    """Return the marker line that makes the stand-in perform ``actions`` for this prompt."""
    return MARKER_PREFIX + json.dumps({"actions": list(actions)}, separators=(",", ":")) + "]]"


def parse_script(text: str) -> dict[str, Any] | None:
    """Return the LAST well-formed ``[[standin {...}]]`` object in ``text``, else None.

    Decoded with ``raw_decode`` rather than a regex so JSON containing ``]]`` still parses.
    """
    decoder = json.JSONDecoder()
    end = len(text)
    while True:
        start = text.rfind(MARKER_PREFIX, 0, end)
        if start < 0:
            return None
        pos = start + len(MARKER_PREFIX)
        while pos < len(text) and text[pos].isspace():
            pos += 1
        try:
            obj, after = decoder.raw_decode(text, pos)
        except ValueError:
            obj, after = None, pos
        if isinstance(obj, dict) and text.startswith("]]", after):
            return obj
        end = start


def _message_text(item: dict[str, Any]) -> str:
    """Join the text spans of a Responses ``message`` item (content may be a str or a list)."""
    content = item.get("content")
    if isinstance(content, str):
        return content
    parts: list[str] = []
    if isinstance(content, list):
        for span in content:
            if isinstance(span, dict) and isinstance(span.get("text"), str):
                parts.append(span["text"])
    return "\n".join(parts)


def _is_user_message(item: Any) -> bool:
    return (
        isinstance(item, dict)
        and item.get("type", "message") == "message"
        and item.get("role") == "user"
    )


def _is_prompt(text: str) -> bool:
    return not text.lstrip().startswith(_CONTEXT_PREFIXES)


def _tool_output_text(item: dict[str, Any]) -> str:
    out = item.get("output")
    if isinstance(out, str):
        return out
    if isinstance(out, list):
        return "\n".join(s.get("text", "") for s in out if isinstance(s, dict))
    if isinstance(out, dict):
        return str(out.get("content", ""))
    return json.dumps(out)


def choose_action(body: dict[str, Any]) -> tuple[int, dict[str, Any], dict[str, Any] | None]:
    """Pick the action for one request: ``(step, action, script)``; pure, for unit tests."""
    items = body.get("input")
    items = items if isinstance(items, list) else []
    last_user = -1
    for i, item in enumerate(items):
        if _is_user_message(item):
            last_user = i
    parsed = parse_script(_message_text(items[last_user])) if last_user >= 0 else None
    step = sum(
        1
        for item in items[last_user + 1 :]
        if isinstance(item, dict) and item.get("type") in TOOL_OUTPUT_TYPES
    )
    actions = parsed.get("actions") if parsed else None
    if not isinstance(actions, list) or not actions:
        return step, {"final": {}}, parsed
    if step < len(actions):
        action = actions[step]
    elif isinstance(actions[-1], dict) and FINAL_KINDS & actions[-1].keys():
        action = actions[-1]
    else:
        action = {"final": {}}
    if not isinstance(action, dict):
        action = {"final_text": json.dumps(action)}
    return step, action, parsed


def summarize(path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Condense one request for ``StandIn.requests`` (the full body is ~30 KB of prompt)."""
    items = body.get("input")
    items = items if isinstance(items, list) else []
    user_texts = [_message_text(it) for it in items if _is_user_message(it)]
    tool_outputs = [
        _tool_output_text(it)
        for it in items
        if isinstance(it, dict) and it.get("type") in TOOL_OUTPUT_TYPES
    ]
    tools = body.get("tools")
    tools = tools if isinstance(tools, list) else []
    text = body.get("text")
    return {
        "path": path,
        "model": body.get("model"),
        "n_input": len(items),
        "user_texts": user_texts,
        "prompts": [t for t in user_texts if _is_prompt(t)],
        "tool_outputs": tool_outputs,
        "tools": [t.get("name") or t.get("type") for t in tools if isinstance(t, dict)],
        "text_format": text.get("format") if isinstance(text, dict) else None,
    }


class _Stopped(Exception):
    """The client went away or the server is stopping: abandon this response."""


class _Handler(http.server.BaseHTTPRequestHandler):
    """Per-connection handler; all state lives on ``self.server.standin``."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        """Silence the per-request stderr log: test output stays readable."""

    def do_GET(self) -> None:
        self.server.standin._record({"path": self.path, "method": "GET"})
        self._send_json(404, {"error": {"message": f"no such route: {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw or b"{}")
            if not isinstance(body, dict):
                raise ValueError("body is not an object")
        except ValueError as exc:  # includes JSONDecodeError and UnicodeDecodeError
            self.server.standin._record({"path": self.path, "method": "POST", "bad_body": True})
            self._send_json(400, {"error": {"message": f"bad JSON body: {exc}"}})
            return
        if not self.path.rstrip("/").endswith("/responses"):
            self.server.standin._record({"method": "POST", **summarize(self.path, body)})
            self._send_json(404, {"error": {"message": f"no such route: {self.path}"}})
            return
        check = self.server.standin.auth_check
        if check is not None:
            auth = self.headers.get("Authorization") or ""
            token = auth[7:] if auth.startswith("Bearer ") else None
            if not check(token):
                self.server.standin._record({"method": "POST", "path": self.path,
                                             "unauthorized": True, "time": time.time()})
                self._send_json(401, {"error": {"message": "invalid or expired token",
                                                "type": "invalid_request_error",
                                                "code": "invalid_api_key", "param": None}})
                return
        step, action, parsed = choose_action(body)
        record = {"method": "POST", **summarize(self.path, body)}
        prompts = record.get("prompts") or [""]
        action = self.server.standin._limit(step, action, parsed, str(prompts[-1]))
        record.update(step=step, action=action, script=parsed, time=time.time())
        self.server.standin._record(record)
        try:
            self._perform(body, action)
        except (_Stopped, BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    # -- responses ---------------------------------------------------------------------------

    def _sleep(self, seconds: Any) -> None:
        """Wait, but give up early when the server stops or the client hangs up.

        Polling for the hang-up matters for ``hang``: a cancelled Codex would otherwise leave
        this thread asleep for the whole scripted duration.
        """
        try:
            secs = float(seconds or 0)
        except (TypeError, ValueError):
            secs = 0.0
        deadline = time.monotonic() + secs
        while (left := deadline - time.monotonic()) > 0:
            if self.server.standin._stopping.wait(min(left, 0.2)) or self._client_gone():
                raise _Stopped

    def _client_gone(self) -> bool:
        """True when the peer closed its end (readable socket with nothing left to read)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and not self.connection.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    def _send_json(self, status: int, payload: Any) -> None:
        data = json.dumps(payload).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _perform(self, body: dict[str, Any], action: dict[str, Any]) -> None:
        self._sleep(action.get("delay"))
        if "http_error" in action:
            self._http_error(action)
            return
        stream = _Stream(self, body, action.get("stream_delay"))
        stream.start()
        if "shell" in action:
            args: dict[str, Any] = {"cmd": str(action["shell"])}
            for key in ("yield_time_ms", "workdir"):
                if key in action:
                    args[key] = action[key]
            stream.function_call("exec_command", json.dumps(args))
        elif "apply_patch" in action:
            stream.custom_tool_call("apply_patch", str(action["apply_patch"]))
        elif "stream_fail" in action:
            stream.fail(str(action["stream_fail"]))
            return
        elif "hang" in action:
            self._sleep(action["hang"])
            stream.message(_final_text(body, action))
        else:
            stream.message(_final_text(body, action))
        stream.complete()

    def _http_error(self, action: dict[str, Any]) -> None:
        try:
            status = int(action["http_error"])
        except (TypeError, ValueError):
            status = 500
        body = action.get("body")
        if isinstance(body, dict):
            payload: Any = body
        else:
            message = body if isinstance(body, str) else f"stand-in scripted HTTP {status}"
            kind = "rate_limit_exceeded" if status == 429 else "server_error"
            payload = {"error": {"message": message, "type": kind, "code": kind, "param": None}}
        self._send_json(status, payload)


def _final_text(body: dict[str, Any], action: dict[str, Any]) -> str:
    """The assistant text for a final-like action (also the tail of a ``hang``)."""
    if isinstance(action.get("final_text"), str):
        return str(action["final_text"])
    report = copy.deepcopy(DEFAULT_REPORT)
    if isinstance(action.get("final"), dict):
        report.update(action["final"])
    if isinstance(action.get("pad_summary"), int):
        report["summary"] = str(report.get("summary", "")) + "x" * action["pad_summary"]
    if action.get("echo_thread"):
        summary = summarize("", body)
        n_users, n_prompts = len(summary["user_texts"]), len(summary["prompts"])
        report["summary"] = (
            f"stand-in saw {n_prompts} user prompts ({n_users} user messages) "
            f"and {len(summary['tool_outputs'])} tool outputs"
        )
    return json.dumps(report)


class _Stream:
    """Writes one Responses SSE stream; the shapes are the ones Codex 0.169 accepts."""

    def __init__(self, handler: _Handler, body: dict[str, Any], stream_delay: Any) -> None:
        self.h = handler
        self.delay = stream_delay
        self.model = str(body.get("model") or DEFAULT_MODEL)
        self.resp_id = "resp_" + uuid.uuid4().hex
        self.request_bytes = len(json.dumps(body.get("input", [])))
        self.output: list[dict[str, Any]] = []
        self.out_chars = 0
        self.seq = 0
        self.sent_any = False

    def start(self) -> None:
        h = self.h
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.send_header("Cache-Control", "no-cache")
        h.send_header("Connection", "close")  # no length: the body ends when we close
        h.end_headers()
        h.close_connection = True
        self.event("response.created", response=self._response("in_progress"))

    def event(self, kind: str, **fields: Any) -> None:
        if self.sent_any:
            self.h._sleep(self.delay)
        self.sent_any = True
        payload = {"type": kind, "sequence_number": self.seq, **fields}
        self.seq += 1
        self.h.wfile.write(f"event: {kind}\ndata: {json.dumps(payload)}\n\n".encode())
        self.h.wfile.flush()

    def _response(self, status: str, **extra: Any) -> dict[str, Any]:
        return {
            "id": self.resp_id,
            "object": "response",
            "created_at": int(time.time()),
            "status": status,
            "model": self.model,
            "output": list(self.output),
            **extra,
        }

    def message(self, text: str) -> None:
        index = len(self.output)
        item_id = "msg_" + uuid.uuid4().hex
        item: dict[str, Any] = {
            "type": "message",
            "id": item_id,
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }
        self.event("response.output_item.added", output_index=index, item=item)
        part = {"type": "output_text", "text": "", "annotations": []}
        self.event(
            "response.content_part.added",
            item_id=item_id,
            output_index=index,
            content_index=0,
            part=part,
        )
        for chunk in _chunks(text):
            self.event(
                "response.output_text.delta",
                item_id=item_id,
                output_index=index,
                content_index=0,
                delta=chunk,
            )
        done_part = {"type": "output_text", "text": text, "annotations": []}
        self.event(
            "response.output_text.done",
            item_id=item_id,
            output_index=index,
            content_index=0,
            text=text,
        )
        self.event(
            "response.content_part.done",
            item_id=item_id,
            output_index=index,
            content_index=0,
            part=done_part,
        )
        item = {**item, "status": "completed", "content": [done_part]}
        self.event("response.output_item.done", output_index=index, item=item)
        self.output.append(item)
        self.out_chars += len(text)

    def function_call(self, name: str, arguments: str) -> None:
        index = len(self.output)
        item: dict[str, Any] = {
            "type": "function_call",
            "id": "fc_" + uuid.uuid4().hex,
            "call_id": "call_" + uuid.uuid4().hex,
            "name": name,
            "arguments": "",
            "status": "in_progress",
        }
        self.event("response.output_item.added", output_index=index, item=item)
        self.event(
            "response.function_call_arguments.done",
            item_id=item["id"],
            output_index=index,
            arguments=arguments,
        )
        item = {**item, "arguments": arguments, "status": "completed"}
        self.event("response.output_item.done", output_index=index, item=item)
        self.output.append(item)
        self.out_chars += len(arguments)

    def custom_tool_call(self, name: str, text: str) -> None:
        index = len(self.output)
        item: dict[str, Any] = {
            "type": "custom_tool_call",
            "id": "ctc_" + uuid.uuid4().hex,
            "call_id": "call_" + uuid.uuid4().hex,
            "name": name,
            "input": "",
            "status": "in_progress",
        }
        self.event("response.output_item.added", output_index=index, item=item)
        item = {**item, "input": text, "status": "completed"}
        self.event("response.output_item.done", output_index=index, item=item)
        self.output.append(item)
        self.out_chars += len(text)

    def complete(self) -> None:
        input_tokens = max(1, self.request_bytes // 4)
        output_tokens = max(1, self.out_chars // 4)
        usage = {
            "input_tokens": input_tokens,
            "input_tokens_details": {"cached_tokens": input_tokens // 2},
            "output_tokens": output_tokens,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input_tokens + output_tokens,
        }
        self.event("response.completed", response=self._response("completed", usage=usage))

    def fail(self, message: str) -> None:
        error = {"code": "server_error", "message": message}
        self.event("response.failed", response=self._response("failed", error=error))


def _chunks(text: str, size: int = 24) -> list[str]:
    """Split text into deltas the way a real stream would (at least one, even if empty)."""
    return [text[i : i + size] for i in range(0, len(text), size)] or [""]


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    standin: StandIn


class StandIn:
    """The stand-in server; a context manager, or call :meth:`start` / :meth:`stop`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0,
                 auth_check: Callable[[str | None], bool] | None = None) -> None:
        """`auth_check(bearer_token_or_None)`: when given, a request it refuses is answered
        401 (a provider with `requires_openai_auth`, for credential tests)."""
        self.host = host
        self.auth_check = auth_check
        self.port = port
        self.base_url = ""
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._counters: dict[tuple[str, int], int] = {}
        self._stopping = threading.Event()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def _limit(
        self, step: int, action: dict[str, Any], parsed: dict[str, Any] | None,
        prompt: str = "",
    ) -> dict[str, Any]:
        """`{"times": N, "otherwise": {...}}` on an action: only the first N requests with
        the same prompt at the same step perform it (e.g. fail once, then succeed on retry).
        Keyed by the whole prompt, so tests sharing one server never share a counter; an
        action's `"key": "..."` counts across prompts instead (a retry whose prompt phh
        changed, e.g. a fresh start with a note appended)."""
        if "times" not in action:
            return action
        key = ("key:" + str(action["key"]) if "key" in action else
               prompt or json.dumps(parsed, sort_keys=True), step)
        with self._lock:
            seen = self._counters.get(key, 0)
            self._counters[key] = seen + 1
        if seen < int(action["times"]):
            return action
        other = action.get("otherwise")
        return other if isinstance(other, dict) else {"final": {}}

    def _record(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.requests.append(entry)

    def start(self) -> StandIn:
        """Bind (port 0 picks a free port) and serve from a daemon thread."""
        if self._server is not None:
            return self
        self._stopping.clear()
        server = _Server((self.host, self.port), _Handler)
        server.standin = self
        self._server = server
        self.port = int(server.server_address[1])
        self.base_url = f"http://{self.host}:{self.port}/v1"
        self._thread = threading.Thread(
            target=server.serve_forever, name=f"standin:{self.port}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving; hanging streams are released at once (their clients see EOF)."""
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> StandIn:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def config_toml(self, requires_openai_auth: bool = False) -> str:
        """A Codex ``config.toml`` pointing at this server, tuned for hermetic, fast runs.

        No ``env_key``: Codex then sends no Authorization header and needs no API key.
        Retries 0: a scripted failure fails at once instead of after ~24 s of backoff.
        `requires_openai_auth`: Codex sends the signed-in credential (auth.json) instead.
        A catalog model slug avoids the "Model metadata not found" error item.
        """
        if not self.base_url:
            raise RuntimeError("StandIn.start() first: the port is not known yet")
        return (
            f'model = "{DEFAULT_MODEL}"\n'
            f'model_provider = "{PROVIDER_ID}"\n'
            "check_for_update_on_startup = false\n"
            "\n"
            f"[model_providers.{PROVIDER_ID}]\n"
            'name = "phh stand-in"\n'
            f'base_url = "{self.base_url}"\n'
            'wire_api = "responses"\n'
            + ("requires_openai_auth = true\n" if requires_openai_auth else "")
            + "request_max_retries = 0\n"
            "stream_max_retries = 0\n"
            "\n"
            "[analytics]\n"
            "enabled = false\n"
            "\n"
            "[features]\n"
            "plugins = false\n"
        )

    def write_config(self, path: Path, requires_openai_auth: bool = False) -> Path:
        """Write :meth:`config_toml` to ``path`` (parents created) and return it."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.config_toml(requires_openai_auth))
        return path


def main(argv: list[str] | None = None) -> int:
    """Serve until interrupted: for the demo and for poking Codex by hand."""
    parser = argparse.ArgumentParser(
        prog="python -m phh_engine.standin", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--config-out", type=Path, help="also write a Codex config.toml here")
    args = parser.parse_args(argv)
    standin = StandIn(args.host, args.port).start()
    try:
        if args.config_out:
            standin.write_config(args.config_out)
        print(standin.base_url, flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        standin.stop()


if __name__ == "__main__":
    sys.exit(main())
