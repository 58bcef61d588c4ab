"""CLI parity with the HTTP API: every `--json` output parses and equals the API's answer for
the same operation; errors carry the same body and documented exit codes; `phh tail
--follow` follows a live attempt."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, final, step, wait_for
from test_api import serving

from phh_engine.store.paths import ARTIFACT_NAMES
from phh_tui.cli import main

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")

pytestmark = pytest.mark.codex


def cli(capsys: pytest.CaptureFixture[str], root: Path, *args: str) -> tuple[int, Any]:
    """Run `phh --root ROOT ARGS` in-process; (exit code, parsed JSON stdout)."""
    capsys.readouterr()
    code = main(["--root", str(root), *args])
    out = capsys.readouterr().out
    return code, json.loads(out) if out.strip() else None


def volatile(obj: Any) -> Any:
    """Drop what changes between two reads of an unchanged store (the time of computing)."""
    if isinstance(obj, dict):
        return {k: volatile(v) for k, v in obj.items() if k not in ("computed_at", "updated_at")}
    if isinstance(obj, list):
        return [volatile(v) for v in obj]
    return obj


@pytest.fixture
def ran(harness: Harness) -> tuple[Harness, str]:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "echo one > one.txt"}, final("first", files_written=["one.txt"])),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"}),
    ]}])
    harness.run()
    return harness, bid


def test_json_outputs_match_the_api(ran: tuple[Harness, str],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    h, bid = ran
    root = h.root
    with serving(h.layout, h.settings) as c:
        pairs: list[tuple[list[str], str]] = [
            (["scoreboard", "--json"], "/v1/scoreboard"),
            (["scoreboard", "--batch", bid, "--json"], f"/v1/batches/{bid}"),
            (["jobs", bid, "--json"], f"/v1/batches/{bid}/jobs"),
            (["current", bid, "j1", "--json"], f"/v1/batches/{bid}/jobs/j1/current"),
            (["attempts", bid, "j1", "s2", "--json"],
             f"/v1/batches/{bid}/jobs/j1/steps/s2/attempts"),
        ]
        for args, url in pairs:
            code, out = cli(capsys, root, *args)
            assert code == 0, args
            assert volatile(out) == volatile(c.get(url).json()), args

        # events: `phh tail --json` prints the API's event items, one per line
        capsys.readouterr()
        assert main(["--root", str(root), "tail", bid, "j1", "s2", "--json"]) == 0
        lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
        api_events = c.get(f"/v1/batches/{bid}/jobs/j1/steps/s2/events").json()["events"]
        assert lines == api_events and lines
        assert main(["--root", str(root), "tail", bid, "j1", "s2", "-n", "2", "--json"]) == 0
        assert [json.loads(x) for x in capsys.readouterr().out.splitlines()] == api_events[-2:]
        assert main(["--root", str(root), "tail", bid, "j1", "s2"]) == 0
        readable = capsys.readouterr().out
        assert readable.startswith("thread started ") and "turn completed" in readable

        # artifacts: the CLI prints the very bytes the API serves; --json wraps them
        (adir,) = h.attempts(bid, "j1", "s1")
        for name in ARTIFACT_NAMES:
            r = c.get(f"/v1/batches/{bid}/jobs/j1/steps/s1/artifacts/{name}")
            out = subprocess.run([PHH, "--root", str(root), "artifact", bid, "j1", "s1", name],
                                 capture_output=True, timeout=60)
            if r.status_code == 404:
                assert out.returncode == 1 and out.stdout == b"", name
                continue
            assert out.returncode == 0 and out.stdout == r.content, name
        code, wrapped = cli(capsys, root, "artifact", "--attempt-dir", str(adir), "state.json",
                            "--json")
        assert code == 0 and wrapped["content"] == c.get(
            "/v1/attempt/artifacts/state.json", params={"attempt_dir": str(adir)}).json()
        assert wrapped["attempt_dir"] == str(adir) and wrapped["name"] == "state.json"

        # submit: the same Launch Table through both faces, deduplicated -> the same batch
        lt = root / "lt_parity.json"
        lt.write_text(json.dumps(h.table([{"job_id": "p", "steps": [
            step("s1", final("x"), prompt="parity")]}])))
        code, sub = cli(capsys, root, "submit", str(lt), "--dedupe", "--json")
        assert code == 0
        r = c.post("/v1/batches", json={"launch_table_ref": str(lt), "dedupe": True})
        assert {k: r.json()[k] for k in sub} == sub

        # an action with no engine: both queue it, with the same answer
        code, act = cli(capsys, root, "cancel", bid, "j1", "s1", "--json")
        r = c.post(f"/v1/batches/{bid}/jobs/j1/steps/s1/cancel")
        assert code == 0 and r.status_code == 202
        assert {k: v for k, v in act.items() if k != "nonce"} == \
            {k: v for k, v in r.json().items() if k != "nonce"}

        # errors: same body; exit 1 for not found, 2 for malformed
        for args, url, exit_code, status in [
            (["current", "nope", "j1", "--json"], "/v1/batches/nope/jobs/j1/current", 1, 404),
            (["jobs", "a..b", "--json"], "/v1/batches/a..b/jobs", 2, 400),
            (["attempts", bid, "j1", "zz", "--json"],
             f"/v1/batches/{bid}/jobs/j1/steps/zz/attempts", 1, 404),
            (["artifact", bid, "j1", "s1", "secret.txt", "--json"],
             f"/v1/batches/{bid}/jobs/j1/steps/s1/artifacts/secret.txt", 2, 400),
            (["tail", bid, "j1", "s1", "--run", "rnope", "--json"],
             f"/v1/batches/{bid}/jobs/j1/steps/s1/events?run_id=rnope", 1, 404),
        ]:
            code, body = cli(capsys, root, *args)
            r = c.get(url)
            assert (code, r.status_code) == (exit_code, status), args
            assert body == r.json(), args


def test_action_exit_codes_match_api_statuses(ran: tuple[Harness, str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    h, bid = ran
    eng = h.start()
    with serving(h.layout, h.settings) as c:
        code, out = cli(capsys, h.root, "retry", bid, "j1", "s1", "--json")
        r = c.post(f"/v1/batches/{bid}/jobs/j1/steps/s1/retry")
        assert (code, out["status"]) == (1, "rejected") and r.status_code == 409
        assert out["message"] == r.json()["message"]
        code, out = cli(capsys, h.root, "close", bid, "--json")
        assert (code, out["status"]) == (0, "applied")
        r = c.post(f"/v1/batches/{bid}/close")
        assert r.status_code == 409 and r.json()["status"] == "rejected"
        assert main(["--root", str(h.root), "cancel", bid, "j1", "nostep"]) == 1
        assert main(["--root", str(h.root), "cancel", bid, "j1", "s1", "--run", "../x"]) == 2
    h.stop(eng)


def test_tail_follow_follows_a_live_attempt(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "echo begin"}, {"shell": "sleep 3"}, final("slow"),
             prompt="follow me"),
    ]}])
    eng = harness.start()
    (att,) = wait_for(lambda: harness.attempts(bid, "j1", "s1"), 30, "attempt")
    proc = subprocess.Popen([PHH, "--root", str(harness.root), "tail", bid, "j1", "s1",
                             "--follow", "--json"], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    got: list[tuple[str, dict[str, Any]]] = []
    for line in proc.stdout:
        got.append((harness.state(att)["status"], json.loads(line)))
    assert proc.wait(30) == 0
    harness.stop(eng)
    assert got[-1][1] == {"end": True, "status": "succeeded"}
    assert any(st == "running" for st, _ in got[:-1]), "nothing printed while it ran"
    events = [x for _, x in got[:-1]]
    on_disk = [json.loads(x) for x in (att / "codex.events.jsonl").read_text().splitlines()
               if x.strip()]
    assert [e["event"] for e in events] == on_disk  # every event, once, in order
    # readable form of a finished attempt ends with the end marker too
    t0 = time.monotonic()
    out = subprocess.run([PHH, "--root", str(harness.root), "tail", bid, "j1", "s1", "-f"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.rstrip().endswith("ended: succeeded")
    assert time.monotonic() - t0 < 30


def test_run_with_api_serves_beside_the_engine(harness: Harness) -> None:
    import socket

    import httpx

    with socket.socket() as s:  # a free loopback port for the harness config
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    harness.settings.interfaces.api_mode.port = port
    harness.write_settings()
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "sleep 2"}, final("done"), prompt="with api")]}])
    proc = subprocess.Popen([PHH, "--root", str(harness.root), "run", "--no-ui", "--until-idle",
                             "--api"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stderr is not None
    first = proc.stderr.readline()
    assert f"API on http://127.0.0.1:{port}" in first, first
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
        # the API answers before the engine has finished setting up: wait for it to serve
        health = wait_for(lambda: (h := c.get("/v1/health").json()).get("engine_serving")
                          and h, 60, "the engine serving behind the API")
        assert health["engine_serving"] is True
        running = wait_for(lambda: c.get(f"/v1/batches/{bid}").json()["running"], 60,
                           "a running step visible through the API")
        assert running[0]["job_id"] == "j1"
    assert proc.wait(120) == 0
    assert harness.state(harness.attempts(bid, "j1", "s1")[0])["status"] == "succeeded"
