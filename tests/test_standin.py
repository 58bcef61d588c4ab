"""The Responses API stand-in, checked against the real Codex CLI.

Why: every engine scenario test trusts the stand-in to speak the protocol the pinned Codex
accepts. If a Codex upgrade changes what it expects, these tests fail first and say where.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from phh_engine.models.run_report import RunReport
from phh_engine.standin import DEFAULT_REPORT, StandIn, choose_action, parse_script, script

REPO = Path(__file__).resolve().parents[1]
NATIVE_CODEX = (
    REPO / "node_modules/@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex"
)
CODEX_BIN = Path(os.environ.get("PHH_CODEX_BIN") or NATIVE_CODEX)

REPORT_FIELDS = list(DEFAULT_REPORT)
# Codex sends the schema with strict=true: every property required, no extra properties.
MINIMAL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": REPORT_FIELDS,
    "properties": {
        "schema_version": {"type": "string"},
        "status": {"type": "string", "enum": ["ok", "failed", "needs_attention"]},
        "summary": {"type": "string"},
        "files_read": {"type": "array", "items": {"type": "string"}},
        "files_written": {"type": "array", "items": {"type": "string"}},
        "artifacts": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["path", "kind", "description"],
                "properties": {
                    "path": {"type": "string"},
                    "kind": {
                        "type": "string",
                        "enum": ["file", "directory", "report", "patch", "log", "other"],
                    },
                    "description": {"type": "string"},
                },
            },
        },
    },
}

needs_codex = pytest.mark.skipif(
    not (CODEX_BIN.is_file() and os.access(CODEX_BIN, os.X_OK)),
    reason=f"codex binary not found at {CODEX_BIN}",
)


# -- pure parts: no Codex needed ------------------------------------------------------------


def _body(*items: dict[str, Any]) -> dict[str, Any]:
    return {"model": "gpt-5.5", "input": list(items)}


def _user(text: str) -> dict[str, Any]:
    return {"type": "message", "role": "user", "content": [{"type": "input_text", "text": text}]}


def _tool_out() -> dict[str, Any]:
    return {"type": "function_call_output", "call_id": "c", "output": "ok"}


def test_script_round_trips_even_with_brackets_in_json() -> None:
    actions = ({"final_text": "x}]] [[standin nope"}, {"final": {"summary": "]]"}})
    text = "do it\n" + script(*actions) + "\ntrailing words"
    assert parse_script(text) == {"actions": list(actions)}


def test_last_marker_wins_and_broken_markers_are_skipped() -> None:
    text = script({"final_text": "first"}) + "\n" + script({"final_text": "second"})
    assert parse_script(text + "\n[[standin {not json]]") == {"actions": [{"final_text": "second"}]}
    assert parse_script("no marker here") is None


def test_step_counts_tool_outputs_after_newest_user_message() -> None:
    marker = script({"shell": "a"}, {"shell": "b"}, {"final": {"summary": "done"}})
    old = _user(script({"final_text": "old"}))
    assert choose_action(_body(old, _tool_out(), _user(marker)))[1] == {"shell": "a"}
    assert choose_action(_body(_user(marker), _tool_out()))[1] == {"shell": "b"}
    step, action, _ = choose_action(_body(_user(marker), *[_tool_out()] * 5))
    assert (step, action) == (5, {"final": {"summary": "done"}})  # last final repeats


def test_defaults_without_marker_or_past_a_non_final_end() -> None:
    assert choose_action(_body(_user("plain prompt")))[1] == {"final": {}}
    marker = script({"shell": "a"})
    assert choose_action(_body(_user(marker), _tool_out()))[1] == {"final": {}}


# -- the real Codex binary ------------------------------------------------------------------


@dataclass
class Run:
    """One finished ``codex exec`` process and what it left behind."""

    returncode: int
    events: list[dict[str, Any]]
    stderr: str
    final: str | None
    workdir: Path
    home: Path
    seconds: float

    def types(self) -> list[str]:
        return [e.get("type", "") for e in self.events]

    def items(self, kind: str, event: str = "item.completed") -> list[dict[str, Any]]:
        return [
            e["item"]
            for e in self.events
            if e.get("type") == event and e.get("item", {}).get("type") == kind
        ]

    def thread_id(self) -> str:
        return next(e["thread_id"] for e in self.events if e.get("type") == "thread.started")


@pytest.fixture
def standin() -> Iterator[StandIn]:
    with StandIn() as server:
        yield server


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path.resolve() / "run_report.schema.json"
    path.write_text(json.dumps(MINIMAL_SCHEMA))
    return path


def codex_exec(
    standin: StandIn,
    root: Path,
    schema: Path,
    prompt: str,
    *,
    flags: tuple[str, ...] = (),
    resume: str | None = None,
    home: Path | None = None,
    timeout: float = 60,
) -> Run:
    """Run ``codex exec --json`` once under ``root`` (fresh home unless one is given)."""
    root = root.resolve()  # Codex refuses an -o path through a symlink
    root.mkdir(parents=True, exist_ok=True)
    home = home or root / "home"
    standin.write_config(home / "config.toml")
    workdir = root / "work"
    workdir.mkdir(exist_ok=True)
    final = root / "final.txt"
    final.unlink(missing_ok=True)
    cmd = [
        str(CODEX_BIN), "exec", "--json", "--skip-git-repo-check", "--color", "never",
        *flags, "-C", str(workdir), "--output-schema", str(schema), "-o", str(final),
    ]  # fmt: skip
    cmd += ["resume", resume, "-"] if resume else ["-"]
    env = {**os.environ, "CODEX_HOME": str(home)}
    started = time.monotonic()
    proc = subprocess.run(
        cmd, input=prompt, capture_output=True, text=True, env=env, timeout=timeout
    )
    seconds = time.monotonic() - started
    events = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    text = final.read_text() if final.exists() else None
    return Run(proc.returncode, events, proc.stderr, text, workdir, home, seconds)


def mine(standin: StandIn, tag: str) -> list[dict[str, Any]]:
    """The recorded requests whose newest prompt carries ``tag`` (the server is shared)."""
    return [r for r in standin.requests if r.get("prompts") and tag in r["prompts"][-1]]


pytestmark = [pytest.mark.codex]


@needs_codex
def test_default_final_is_a_valid_report(
    standin: StandIn, tmp_path: Path, schema_file: Path
) -> None:
    run = codex_exec(standin, tmp_path, schema_file, "Say hi. (default-final)")
    assert run.returncode == 0, run.stderr
    assert {"thread.started", "turn.completed"} <= set(run.types())
    assert "turn.failed" not in run.types()
    assert not run.items("error"), run.events  # a catalog model: no metadata warning
    assert run.final is not None
    assert json.loads(run.final) == DEFAULT_REPORT
    RunReport.model_validate_json(run.final)  # the engine's own model accepts it too
    usage = next(e["usage"] for e in run.events if e["type"] == "turn.completed")
    assert usage["input_tokens"] > 0 and usage["output_tokens"] > 0
    (req,) = mine(standin, "default-final")
    assert req["path"] == "/v1/responses" and req["model"] == "gpt-5.5"
    assert req["text_format"]["strict"] is True
    assert req["text_format"]["schema"] == MINIMAL_SCHEMA
    assert "exec_command" in req["tools"]


@needs_codex
def test_shell_action_really_runs_in_the_workdir(
    standin: StandIn, tmp_path: Path, schema_file: Path
) -> None:
    prompt = "Make a file.\n" + script(
        {"shell": "echo hello > made.txt"}, {"final": {"files_written": ["made.txt"]}}
    )
    run = codex_exec(standin, tmp_path, schema_file, prompt, flags=("--sandbox", "workspace-write"))
    assert run.returncode == 0, run.stderr
    assert (run.workdir / "made.txt").read_text() == "hello\n"
    (cmd,) = run.items("command_execution")
    assert "echo hello > made.txt" in cmd["command"] and cmd["exit_code"] == 0
    assert json.loads(run.final or "")["files_written"] == ["made.txt"]
    first, second = mine(standin, "Make a file.")
    assert (first["step"], second["step"]) == (0, 1)
    assert "Process exited with code 0" in second["tool_outputs"][0]


@needs_codex
def test_apply_patch_action_changes_files(
    standin: StandIn, tmp_path: Path, schema_file: Path
) -> None:
    patch = "*** Begin Patch\n*** Add File: p.txt\n+patched\n*** End Patch\n"
    prompt = "Patch.\n" + script({"apply_patch": patch}, {"final": {}})
    run = codex_exec(standin, tmp_path, schema_file, prompt, flags=("--sandbox", "workspace-write"))
    assert run.returncode == 0, run.stderr
    assert (run.workdir / "p.txt").read_text() == "patched\n"
    (change,) = run.items("file_change")
    assert change["status"] == "completed"


@needs_codex
def test_final_text_is_passed_through_verbatim(
    standin: StandIn, tmp_path: Path, schema_file: Path
) -> None:
    run = codex_exec(standin, tmp_path, schema_file, script({"final_text": "not json"}))
    assert run.returncode == 0, run.stderr  # Codex does not validate against the schema
    assert "turn.completed" in run.types()
    assert run.final == "not json"


@needs_codex
@pytest.mark.parametrize("status", [500, 429])
def test_http_error_fails_the_turn_fast(
    standin: StandIn, tmp_path: Path, schema_file: Path, status: int
) -> None:
    tag = f"http-{status}"
    run = codex_exec(standin, tmp_path, schema_file, tag + "\n" + script({"http_error": status}))
    assert run.returncode != 0
    assert "turn.failed" in run.types() and "turn.completed" not in run.types()
    assert run.final == ""  # a new -o file is left empty on failure
    assert len(mine(standin, tag)) == 1  # retries are off
    assert run.seconds < 5


@needs_codex
def test_stream_fail_fails_the_turn(standin: StandIn, tmp_path: Path, schema_file: Path) -> None:
    run = codex_exec(standin, tmp_path, schema_file, script({"stream_fail": "scripted boom"}))
    assert run.returncode != 0
    failed = [e for e in run.events if e["type"] == "turn.failed"]
    assert failed and "scripted boom" in failed[0]["error"]["message"]


@needs_codex
def test_resume_by_thread_id_in_a_home_holding_only_sessions(
    standin: StandIn, tmp_path: Path, schema_file: Path
) -> None:
    first = codex_exec(
        standin, tmp_path / "one", schema_file, "first prompt\n" + script({"final": {}})
    )
    assert first.returncode == 0, first.stderr
    thread_id = first.thread_id()
    home2 = tmp_path.resolve() / "two" / "home"
    shutil.copytree(first.home / "sessions", home2 / "sessions")
    second = codex_exec(
        standin,
        tmp_path / "two",
        schema_file,
        "second prompt\n" + script({"echo_thread": True}),
        resume=thread_id,
        home=home2,
    )
    assert second.returncode == 0, second.stderr
    assert second.thread_id() == thread_id
    (req,) = mine(standin, "second prompt")
    assert [p.split("\n")[0] for p in req["prompts"]] == ["first prompt", "second prompt"]
    assert "saw 2 user prompts" in json.loads(second.final or "")["summary"]


@needs_codex
def test_stop_during_hang_fails_the_turn_promptly(tmp_path: Path, schema_file: Path) -> None:
    server = StandIn().start()
    try:
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(
                codex_exec, server, tmp_path, schema_file, script({"hang": 60}), timeout=30
            )
            deadline = time.monotonic() + 20
            while not server.requests and time.monotonic() < deadline:
                time.sleep(0.05)
            assert server.requests, "codex never reached the stand-in"
            server.stop()
            run = fut.result()
    finally:
        server.stop()
    assert run.returncode != 0 and "turn.failed" in run.types()
    assert run.seconds < 15


@needs_codex
def test_many_codex_processes_share_one_server(
    standin: StandIn, tmp_path: Path, schema_file: Path
) -> None:
    def one(i: int) -> Run:
        prompt = f"agent {i}\n" + script(
            {"shell": f"echo {i} > out.txt", "stream_delay": 0.01},
            {"final": {"summary": f"agent {i} done"}},
        )
        flags = ("--sandbox", "workspace-write")
        return codex_exec(standin, tmp_path / f"a{i}", schema_file, prompt, flags=flags)

    with ThreadPoolExecutor(4) as pool:
        runs = list(pool.map(one, range(4)))
    for i, run in enumerate(runs):
        assert run.returncode == 0, run.stderr
        assert (run.workdir / "out.txt").read_text() == f"{i}\n"
        assert json.loads(run.final or "")["summary"] == f"agent {i} done"
