"""The HTTP API over real HTTP on loopback (uvicorn in a thread, httpx as the client): every
endpoint, the three auth modes, traversal attempts, a streaming tail of a running attempt,
JSON errors with the right status codes, and schemathesis against the served OpenAPI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import GOAL, Harness, final, step, wait_for

from phh_engine.interfaces import api as api_mod
from phh_engine.interfaces.api import ApiServer, Auth, ServeError, create_app, resolve_auth
from phh_engine.interfaces.submit import submit
from phh_engine.models import AttemptState, HarnessSettings, utcnow
from phh_engine.store.files import atomic_write_json
from phh_engine.store.harness_config import load_config, materialize
from phh_engine.store.paths import ARTIFACT_NAMES, Layout, run_id_of

VENV_BIN = Path(__file__).parents[1] / ".venv" / "bin"
TOKEN = "phh-test-token-" + "Q7" * 20
TOKEN_ENV = "PHH_TEST_API_TOKEN"


def write_settings(layout: Layout, settings: HarnessSettings) -> None:
    atomic_write_json(layout.settings_path, settings.model_dump(mode="json", exclude_none=True))
    materialize(layout, settings)


@contextmanager
def serving(layout: Layout, settings: HarnessSettings | None = None, *, auth_mode: str =
            "local_trust", uds: str | None = None, max_body: int = 16 << 20,
            headers: dict[str, str] | None = None) -> Iterator[httpx.Client]:
    settings = settings or HarnessSettings()
    settings.interfaces.api_mode.auth_mode = auth_mode  # type: ignore[assignment]
    settings.interfaces.api_mode.token_env = TOKEN_ENV
    write_settings(layout, settings)
    server = ApiServer(layout, load_config(layout), port=0, uds=uds, log_level="warning",
                       access_log=False, max_body_bytes=max_body).start()
    transport = httpx.HTTPTransport(uds=uds) if uds else None
    base = "http://localhost" if uds else server.url
    try:
        wait_for(lambda: server.server.started, 10, "uvicorn started")
        with httpx.Client(base_url=base, timeout=30, headers=headers or {},
                          transport=transport) as client:
            yield client
    finally:
        server.stop()


def table(root: Path, jobs: list[dict[str, Any]] | None = None, **kw: Any) -> dict[str, Any]:
    return {"batch_goal_summary": GOAL, "working_root": str(root),
            "jobs": jobs or [{"job_id": "j1", "steps": [{"step_id": "s1", "prompt": "hi"}]}],
            **kw}


def fake_attempt(layout: Layout, batch_id: str, job: str = "j1", step_id: str = "s1",
                 name: str = "20260101T000000Z_r1") -> Path:
    """An attempt directory with a few files, for tests that need no Codex run (with a
    state.json: a directory without one is not an attempt, docs/layout.md#durability)."""
    d = layout.attempts_dir(batch_id, job, step_id) / name
    d.mkdir(parents=True)
    atomic_write_json(d / "state.json", AttemptState(
        batch_id=batch_id, job_id=job, step_id=step_id, run_id=run_id_of(name),
        runner_id="local", status="succeeded", updated_at=utcnow()))
    (d / "final.txt").write_text("the final text\n")
    (d / "codex.events.jsonl").write_text(
        '{"type":"thread.started","thread_id":"t1"}\nnot json\n{"type":"turn.started"}\n')
    return d


@pytest.fixture
def plain(tmp_path: Path) -> Layout:
    """A phh root with one batch (no Codex needed)."""
    layout = Layout(tmp_path)
    write_settings(layout, HarnessSettings())
    src = tmp_path / "lt.json"
    src.write_text(json.dumps(table(tmp_path, batch_id="b1")))
    submit(layout, src)
    return layout


# ----------------------------------------------------------------------------- endpoints
@pytest.mark.codex
def test_submit_and_every_read_endpoint(harness: Harness) -> None:
    jobs = [{"job_id": "j1", "steps": [
        step("s1", {"shell": "echo hi > hi.txt"}, final("wrote hi", files_written=["hi.txt"])),
        step("s2", {"echo_thread": True}, resume_from={"step_id": "s1"}),
    ]}]
    lt = harness.table(jobs)
    with serving(harness.layout, harness.settings) as c:
        r = c.post("/v1/batches", json={"launch_table": lt, "dedupe": True})
        assert r.status_code == 201, r.text
        bid = r.json()["batch_id"]
        assert r.json()["accepted_job_ids"] == ["j1"] and r.json()["existing"] is False
        again = c.post("/v1/batches", json={"launch_table": lt, "dedupe": True})
        assert again.status_code == 200 and again.json()["batch_id"] == bid
        assert again.json()["existing"] is True
        ref = harness.root / "by_ref.json"
        ref.write_text(json.dumps(harness.table(
            [{"job_id": "k", "steps": [step("s1", final("by ref"), prompt="by ref")]}])))
        r = c.post("/v1/batches", json={"launch_table_ref": str(ref)})
        assert r.status_code == 201 and r.json()["accepted_job_ids"] == ["k"]
        ref_bid = r.json()["batch_id"]

        harness.run()

        assert c.get("/v1/health").json()["ok"] is True
        system = c.get("/v1/scoreboard").json()
        assert {b["batch_id"] for b in system["batches"]} == {bid, ref_bid}
        assert c.get("/v1/batches").json() == system["batches"]
        sb = c.get(f"/v1/batches/{bid}").json()
        assert sb["counts"]["succeeded"] == 2 and sb["batch_id"] == bid
        meta = c.get(f"/v1/batches/{bid}/meta").json()
        assert meta == json.loads(harness.layout.batch_meta(bid).read_text())
        listing = c.get(f"/v1/batches/{bid}/jobs").json()
        assert [(s["step_id"], s["status"]) for s in listing["jobs"][0]["steps"]] == [
            ("s1", "succeeded"), ("s2", "succeeded")]
        assert listing["jobs"][0]["steps"][1]["depends_on"] == ["s1"]
        cur = c.get(f"/v1/batches/{bid}/jobs/j1/current").json()
        assert cur == json.loads(harness.layout.current(bid, "j1").read_text())
        atts = c.get(f"/v1/batches/{bid}/jobs/j1/steps/s2/attempts").json()["attempts"]
        (a,) = atts
        assert a["status"] == "succeeded" and a["invocation"] == "resume"
        adir = Path(a["attempt_dir"])
        assert adir == harness.attempts(bid, "j1", "s2")[0]

        # every artifact by ids (latest and by run_id) and by attempt_dir
        base = f"/v1/batches/{bid}/jobs/j1/steps/s2/artifacts"
        for name in ARTIFACT_NAMES:
            by_ids = c.get(f"{base}/{name}")
            if not (adir / name).exists():
                assert by_ids.status_code == 404 and by_ids.json()["error"] == "not_found"
                continue
            assert by_ids.status_code == 200, (name, by_ids.text)
            assert by_ids.content == (adir / name).read_bytes(), name
            assert by_ids.headers["x-phh-run-id"] == a["run_id"]
            assert c.get(f"{base}/{name}", params={"run_id": a["run_id"]}).content == \
                by_ids.content
            for form in (str(adir), str(adir.relative_to(harness.root)),
                         str(adir.relative_to(harness.layout.runs))):
                r = c.get(f"/v1/attempt/artifacts/{name}", params={"attempt_dir": form})
                assert r.status_code == 200 and r.content == by_ids.content, (name, form)
        assert c.get(f"{base}/state.json").json()["status"] == "succeeded"
        assert c.get(f"{base}/final.json").headers["content-type"] == "application/json"

        # events: a page, a cursor, a tail, by attempt_dir
        ev = c.get(f"/v1/batches/{bid}/jobs/j1/steps/s2/events").json()
        lines = [x for x in (adir / "codex.events.jsonl").read_text().splitlines() if x.strip()]
        assert len(ev["events"]) == len(lines) and ev["terminal"] is True
        assert ev["events"][0]["event"]["type"] == "thread.started"
        assert ev["next_offset"] == (adir / "codex.events.jsonl").stat().st_size
        mid = ev["events"][1]["offset"]
        rest = c.get(f"/v1/batches/{bid}/jobs/j1/steps/s2/events", params={"offset": mid})
        assert rest.json()["events"] == ev["events"][2:]
        tail = c.get(f"/v1/batches/{bid}/jobs/j1/steps/s2/events", params={"tail": 2}).json()
        assert tail["events"] == ev["events"][-2:]
        by_dir = c.get("/v1/attempt/events", params={"attempt_dir": str(adir)}).json()
        assert by_dir["events"] == ev["events"]
        # follow on an ended attempt: the whole stream, then `end`
        with c.stream("GET", f"/v1/batches/{bid}/jobs/j1/steps/s2/events",
                      params={"follow": "true"}) as s:
            assert s.headers["content-type"].startswith("text/event-stream")
            body = "".join(s.iter_text())
        assert body.count("event: codex") == len(lines)
        assert 'event: end\ndata: {"status": "succeeded"' in body


@pytest.mark.codex
def test_actions_over_http(harness: Harness) -> None:
    bid = harness.submit([
        {"job_id": "fast", "steps": [step("s1", final("quick"), prompt="quick one")]},
        {"job_id": "slow", "steps": [step("s1", {"hang": 60}, prompt="slow one")]},
    ], retries={"max_attempts": 1})
    with serving(harness.layout, harness.settings) as c:
        base = f"/v1/batches/{bid}/jobs"
        # no engine yet: requests are queued (202) and applied when one starts
        r = c.post(f"{base}/fast/steps/s1/cancel", json={"reason": "nothing runs"})
        assert r.status_code == 202 and r.json()["status"] == "queued"
        eng = harness.start()
        wait_for(lambda: [p for p in harness.attempts(bid, "fast", "s1")
                          if harness.state(p)["status"] == "succeeded"], 60, "fast done")
        slow = wait_for(lambda: [p for p in harness.attempts(bid, "slow", "s1")
                                 if harness.state(p)["status"] == "running"], 60, "slow runs")
        r = c.post(f"{base}/fast/steps/s1/retry", json={})
        assert r.status_code == 409 and r.json()["status"] == "rejected"
        assert "already succeeded" in r.json()["message"]
        assert c.post(f"{base}/fast/steps/s1/cancel").status_code == 409  # nothing in flight
        r = c.post(f"{base}/slow/steps/s1/cancel", json={"reason": "too slow"})
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
        assert r.json()["run_id"] == harness.state(slow[0])["run_id"]
        wait_for(lambda: harness.state(slow[0])["status"] == "canceled", 30, "canceled")
        r = c.post(f"{base}/slow/steps/s1/requeue", json={})
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
        wait_for(lambda: len(harness.attempts(bid, "slow", "s1")) == 2, 30, "requeued attempt")
        r = c.post(f"{base}/slow/steps/s1/mark-failed", json={"reason": "give up"})
        assert r.status_code == 200 and r.json()["status"] == "applied"
        r = c.post(f"{base}/fast/steps/s1/resume", json={"prompt": "one more thing"})
        assert r.status_code == 200 and r.json()["status"] == "applied", r.text
        wait_for(lambda: len([p for p in harness.attempts(bid, "fast", "s1")
                              if harness.state(p)["status"] == "succeeded"]) == 2, 60,
                 "resumed attempt")
        r = c.post(f"/v1/batches/{bid}/close", json={"reason": "done"})
        assert r.status_code == 200 and r.json()["action"] == "close"
        assert c.post(f"/v1/batches/{bid}/close").status_code == 409
        r = c.post(f"{base}/slow/steps/s1/retry")
        assert r.status_code == 409 and "closed" in r.json()["message"]
        # malformed / unknown targets never reach the engine
        assert c.post(f"{base}/nope/steps/s1/cancel").status_code == 404
        assert c.post(f"{base}/fast/steps/nope/retry").status_code == 404
        assert c.post("/v1/batches/nobatch/close").status_code == 404
        assert c.post(f"{base}/fast/steps/s1/resume").status_code == 422  # prompt required
        assert c.post(f"{base}/fast/steps/s1/resume", json={"prompt": ""}).status_code == 422
        assert c.post(f"{base}/fast/steps/s1/cancel", json={"wait_seconds": True}
                      ).status_code == 422
        assert c.post(f"{base}/fast/steps/s1/cancel", json={"run_id": "../x"}
                      ).status_code == 422
        harness.stop(eng)


@pytest.mark.codex
def test_streaming_tail_follows_a_running_attempt(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"shell": "echo started"}, {"shell": "sleep 3"}, {"shell": "echo late"},
             final("slow done"), prompt="stream me"),
    ]}])
    with serving(harness.layout, harness.settings) as c:
        eng = harness.start()
        (att,) = wait_for(lambda: harness.attempts(bid, "j1", "s1"), 30, "attempt")
        seen: list[tuple[str, str, dict[str, Any]]] = []  # (state at receipt, id, event)
        end: dict[str, Any] | None = None
        with c.stream("GET", f"/v1/batches/{bid}/jobs/j1/steps/s1/events",
                      params={"follow": "true"}, timeout=90) as s:
            assert s.status_code == 200
            kind, ident = "", ""
            for line in s.iter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                elif line.startswith("id: "):
                    ident = line[4:]
                elif line.startswith("data: ") and kind == "codex":
                    seen.append((harness.state(att)["status"], ident, json.loads(line[6:])))
                elif line.startswith("data: ") and kind == "end":
                    end = json.loads(line[6:])
        harness.stop(eng)
    assert end is not None and end["status"] == "succeeded"
    live = [ev for st, _, ev in seen if st == "running"]
    assert live, "no event arrived while the attempt was running"
    assert any(e.get("type") == "thread.started" for _, _, e in seen)
    assert seen[-1][2]["type"] == "turn.completed"
    ids = [int(i) for _, i, _ in seen]
    assert ids == sorted(ids) and ids[-1] == end["next_offset"]
    # events received while running include the command that was still to come
    cmds = [e["item"].get("command", "") for _, _, e in seen
            if e.get("type") == "item.completed" and e.get("item", {}).get("type") ==
            "command_execution"]
    assert any("sleep 3" in x for x in cmds) and any("echo late" in x for x in cmds)
    # Last-Event-ID resumes the stream right after that event
    with serving(harness.layout, harness.settings) as c, c.stream(
            "GET", f"/v1/batches/{bid}/jobs/j1/steps/s1/events",
            params={"follow": "true"}, headers={"last-event-id": seen[1][1]}) as s:
        resumed = [json.loads(x[6:]) for x in s.iter_lines() if x.startswith("data: {\"")]
    assert [e for e in resumed if "type" in e] == [e for _, _, e in seen[2:]]


# ----------------------------------------------------------------------------- errors
def test_errors_are_json_with_the_right_status(plain: Layout, tmp_path: Path) -> None:
    fake_attempt(plain, "b1")
    with serving(plain, max_body=4096) as c:
        cases: list[tuple[str, str, Any, int]] = [
            ("GET", "/v1/batches/nope", None, 404),
            ("GET", "/v1/batches/b1/jobs/nope/current", None, 404),
            ("GET", "/v1/batches/b1/jobs/j1/steps/nope/attempts", None, 404),
            ("GET", "/v1/batches/a..b", None, 400),
            ("GET", "/v1/batches/-x/jobs", None, 400),
            ("GET", "/v1/batches/b1/jobs/j1/steps/s1/artifacts/handoff.json", None, 404),
            ("GET", "/v1/batches/b1/jobs/j1/steps/s1/artifacts/secret.txt", None, 400),
            ("GET", "/v1/batches/b1/jobs/j1/steps/s1/artifacts/final.txt?run_id=rnope",
             None, 404),
            ("GET", "/v1/batches/b1/jobs/j1/steps/s1/events?offset=-1", None, 400),
            ("GET", "/v1/batches/b1/jobs/j1/steps/s1/events?tail=0", None, 400),
            ("GET", "/v1/no/such/route", None, 404),
            ("DELETE", "/v1/batches/b1", None, 405),
            ("POST", "/v1/batches", {}, 400),  # neither inline nor reference
            ("POST", "/v1/batches", {"launch_table": {}, "launch_table_ref": "x"}, 400),
            ("POST", "/v1/batches", {"launch_table_ref": "no/such.json"}, 404),
            ("POST", "/v1/batches", {"launch_table": {"jobs": []}}, 422),
            ("POST", "/v1/batches", {"launch_table": {}, "typo": 1}, 422),
            ("POST", "/v1/batches", {"launch_table": table(tmp_path, batch_id="b1")}, 422),
        ]
        for method, url, body, status in cases:
            r = c.request(method, url, json=body)
            assert r.status_code == status, (method, url, r.status_code, r.text)
            assert r.headers["content-type"] == "application/json", url
            assert set(r.json()) >= {"error", "message"}, (url, r.text)
        r = c.post("/v1/batches", json={"launch_table": {"jobs": [], "x": 1}})
        paths = {e["path"] for e in r.json()["errors"]}
        assert {"batch_goal_summary", "x"} <= paths  # every error, not the first only
        bad = c.post("/v1/batches", content=b"{not json", headers={
            "content-type": "application/json"})
        assert bad.status_code == 400 and bad.json()["error"] == "bad_request"
        big = c.post("/v1/batches", content=b"{" + b" " * 5000 + b"}",
                     headers={"content-type": "application/json"})
        assert big.status_code == 413 and big.json()["error"] == "too_large"

        def chunks() -> Iterator[bytes]:
            for _ in range(10):
                yield b" " * 1000

        chunked = c.post("/v1/batches", content=chunks(),
                         headers={"content-type": "application/json"})
        assert chunked.status_code == 413


# ----------------------------------------------------------------------------- traversal
def test_traversal_attempts_are_refused(plain: Layout, tmp_path: Path) -> None:
    secret = tmp_path / "outside" / "secret.txt"
    secret.parent.mkdir()
    secret.write_text("TOPSECRET")
    (secret.parent / "state.json").write_text('{"TOPSECRET": 1}')
    att = fake_attempt(plain, "b1")
    (att / "codex_home").mkdir()
    os.symlink(secret, att / "codex_home" / "auth.json")
    os.symlink(secret, att / "stdout.log")  # a symlink under an allowed name
    linked = plain.attempts_dir("b1", "j1", "s1") / "20260101T000001Z_rlink"
    os.symlink(secret.parent, linked)  # an attempt dir that points out of the store
    base = "/v1/batches/b1/jobs/j1/steps/s1"
    probes = [
        f"{base}/artifacts/..%2F..%2F..%2F..%2F..%2Fbatch_meta.json",
        f"{base}/artifacts/%2E%2E%2Fstate.json",
        f"{base}/artifacts/..",
        f"{base}/artifacts/codex_home%2Fauth.json",
        f"{base}/artifacts/%2Fetc%2Fpasswd",
        f"{base}/artifacts/stdout.log",
        f"{base}/artifacts/stdout.log?run_id=r1",
        f"{base}/artifacts/state.json?run_id=rlink",
        f"{base}/artifacts/state.json?run_id=..%2F..%2Fx",
        f"{base}/events?run_id=rlink",
        "/v1/batches/..%2F..%2Foutside/jobs/j1/current",
        "/v1/attempt/artifacts/state.json?attempt_dir=" + str(secret.parent),
        "/v1/attempt/artifacts/state.json?attempt_dir=/etc",
        "/v1/attempt/artifacts/state.json?attempt_dir=" + str(linked),
        "/v1/attempt/artifacts/state.json?attempt_dir=runs/b1/j1/steps/s1/attempts/"
        "20260101T000001Z_rlink",
        "/v1/attempt/artifacts/final.txt?attempt_dir=" + str(att) + "/../../../../../outside",
        "/v1/attempt/artifacts/final.txt?attempt_dir=runs/b1/j1",
        "/v1/attempt/artifacts/final.txt?attempt_dir=",
        "/v1/attempt/events?attempt_dir=" + str(linked),
    ]
    with serving(plain) as c:
        real = c.get(f"{base}/artifacts/final.txt", params={"run_id": "r1"})
        assert real.text == "the final text\n"  # the real attempt is served
        for url in probes:
            r = c.get(url)
            assert r.status_code in (400, 404), (url, r.status_code, r.text)
            assert "TOPSECRET" not in r.text, url
            assert r.json()["error"] in ("bad_request", "not_found"), url
        sym = c.get(f"{base}/artifacts/stdout.log", params={"run_id": "r1"})
        assert sym.status_code == 400 and "not a regular file" in sym.json()["message"]
        assert c.get(f"{base}/artifacts/state.json", params={"run_id": "rlink"}
                     ).json()["message"].endswith("symlink; refused")


# ----------------------------------------------------------------------------- auth
def test_bind_rules_per_auth_mode(plain: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    def config(mode: str, token_file: str | None = None) -> Any:
        s = HarnessSettings()
        s.interfaces.api_mode.auth_mode = mode  # type: ignore[assignment]
        s.interfaces.api_mode.token_env = TOKEN_ENV
        s.interfaces.api_mode.token_file = token_file
        write_settings(plain, s)
        return load_config(plain)

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    for mode in ("none", "local_trust"):
        for host in ("0.0.0.0", "192.168.1.10", "::", "example.com"):
            with pytest.raises(ServeError, match="loopback"):
                resolve_auth(plain, config(mode), host)
        for host in ("127.0.0.1", "127.0.0.2", "localhost", "::1"):
            assert resolve_auth(plain, config(mode), host).mode == mode
        assert resolve_auth(plain, config(mode), None, uds="/tmp/x.sock").token is None
    with pytest.raises(ServeError, match="no token is set"):
        resolve_auth(plain, config("token"), "127.0.0.1")
    monkeypatch.setenv(TOKEN_ENV, "short")
    with pytest.raises(ServeError, match="shorter than"):
        resolve_auth(plain, config("token"), "127.0.0.1")
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    auth = resolve_auth(plain, config("token"), "0.0.0.0")  # token mode may bind anywhere
    assert auth.token == TOKEN.encode() and TOKEN not in repr(auth)
    monkeypatch.delenv(TOKEN_ENV)
    tf = plain.root.parent / "api.token"
    tf.write_text(TOKEN + "\n")
    assert resolve_auth(plain, config("token", str(tf)), "127.0.0.1").token == TOKEN.encode()
    # the CLI refuses the same way, exit 2, before binding anything
    config("none")
    out = subprocess.run([str(VENV_BIN / "phh"), "--root", str(plain.root), "serve", "--host",
                          "0.0.0.0", "--port", "0"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "loopback" in out.stderr


def test_token_mode_missing_wrong_right(plain: Layout, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    calls: list[tuple[int, int]] = []
    real = api_mod.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(api_mod.hmac, "compare_digest", spy)
    with serving(plain, auth_mode="token") as c:
        for headers in ({}, {"authorization": "Bearer"}, {"authorization": f"Basic {TOKEN}"},
                        {"authorization": "Bearer " + TOKEN[:-1] + "x"},
                        {"authorization": "Bearer " + TOKEN + "x"}):
            for url in ("/v1/health", "/v1/batches/b1", "/openapi.json"):
                r = c.get(url, headers=headers)
                assert r.status_code == 401, (headers, url)
                assert r.headers["www-authenticate"] == "Bearer"
                assert r.json()["error"] == "unauthorized"
        assert c.post("/v1/batches/b1/close").status_code == 401
        ok = {"authorization": f"Bearer {TOKEN}"}
        assert c.get("/v1/batches/b1", headers=ok).status_code == 200
        assert c.get("/openapi.json", headers=ok).status_code == 200
        # a token-mode server also takes requests with a foreign Host (e.g. via a name)
        assert c.get("/v1/health", headers={**ok, "host": "phh.internal"}).status_code == 200
    assert calls and all(b == len(TOKEN) for _, b in calls)  # every check: compare_digest
    cfg = plain.harness_config.read_text()
    assert TOKEN not in cfg and TOKEN_ENV in cfg


def test_token_is_never_logged_nor_stored(plain: Layout, tmp_path: Path) -> None:
    """A real `phh serve` process: right and wrong tokens go by; neither shows up in its
    output (access log included) nor in any file under the root."""
    s = HarnessSettings()
    s.interfaces.api_mode.auth_mode = "token"
    s.interfaces.api_mode.token_env = TOKEN_ENV
    write_settings(plain, s)
    wrong = "Wr0ng" * 8
    proc = subprocess.Popen(
        [str(VENV_BIN / "phh"), "--root", str(plain.root), "serve", "--port", "0"],
        env={**os.environ, TOKEN_ENV: TOKEN}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        url = first.split(" API on ")[1].split(" ")[0]
        with httpx.Client(base_url=url, timeout=30) as c:
            assert c.get("/v1/health", headers={"authorization": f"Bearer {TOKEN}"}
                         ).status_code == 200
            assert c.get("/v1/health", headers={"authorization": f"Bearer {wrong}"}
                         ).status_code == 401
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=30)
    log = first + out + err
    assert "GET /v1/health" in log  # the access log is on
    assert TOKEN not in log and wrong not in log
    for p in plain.root.rglob("*"):
        if p.is_file():
            data = p.read_bytes()
            assert TOKEN.encode() not in data and wrong.encode() not in data, p


def test_local_trust_over_a_unix_socket(plain: Layout, tmp_path: Path) -> None:
    sock = str(tmp_path / "phh.sock")
    with serving(plain, uds=sock) as c:
        assert c.get("/v1/batches/b1").json()["batch_id"] == "b1"
        assert (os.stat(sock).st_mode & 0o777) == 0o600


def test_local_modes_refuse_foreign_peers_hosts_and_origins(plain: Layout) -> None:
    for mode in ("none", "local_trust"):
        with serving(plain, auth_mode=mode) as c:
            assert c.get("/v1/health").json()["auth_mode"] == mode
            assert c.get("/v1/health", headers={"host": "evil.example"}).status_code == 403
            assert c.get("/v1/health", headers={"origin": "http://evil.example"}
                         ).status_code == 403
            assert c.post("/v1/batches/b1/close", headers={
                "origin": "https://evil.example", "content-type": "text/plain"},
                content=b"{}").status_code == 403
            assert c.get("/v1/health", headers={"sec-fetch-site": "cross-site"}
                         ).status_code == 403
            assert c.get("/v1/health", headers={"origin": "http://localhost:3000"}
                         ).status_code == 200
        # a non-loopback peer (in-process ASGI call: no network traffic)
        app = create_app(plain, Auth(mode))  # type: ignore[arg-type]
        transport = httpx.ASGITransport(app=app, client=("192.0.2.7", 5555))

        async def probe(transport: httpx.ASGITransport = transport) -> int:
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as ac:
                return (await ac.get("/v1/health")).status_code

        import asyncio

        assert asyncio.run(probe()) == 403


# ----------------------------------------------------------------------------- OpenAPI
def test_openapi_is_served_and_covers_every_operation(plain: Layout) -> None:
    with serving(plain) as c:
        spec = c.get("/openapi.json").json()
    paths = spec["paths"]
    ops = {(m.upper(), p) for p, item in paths.items() for m in item}
    step_path = "/v1/batches/{batch_id}/jobs/{job_id}/steps/{step_id}"
    for need in [("POST", "/v1/batches"), ("GET", "/v1/scoreboard"),
                 ("GET", "/v1/batches/{batch_id}"),
                 ("GET", "/v1/batches/{batch_id}/jobs/{job_id}/current"),
                 ("GET", step_path + "/artifacts/{name}"), ("GET", "/v1/attempt/artifacts/{name}"),
                 ("GET", step_path + "/events"), ("GET", "/v1/attempt/events"),
                 *[("POST", f"{step_path}/{a}")
                   for a in ("cancel", "retry", "resume", "requeue", "mark-failed")],
                 ("POST", "/v1/batches/{batch_id}/close")]:
        assert need in ops, need


def test_schemathesis_finds_no_server_error(plain: Layout, tmp_path: Path) -> None:
    """Property-based requests from the served OpenAPI (bounded: a few examples per
    operation, fixed seed); any 5xx or undocumented status/content type fails."""
    fake_attempt(plain, "b1")
    with serving(plain) as c:
        url = str(c.base_url).rstrip("/")
        t0 = time.monotonic()
        out = subprocess.run(
            [str(VENV_BIN / "schemathesis"), "run", f"{url}/openapi.json",
             "--checks", "not_a_server_error,status_code_conformance,"
                         "content_type_conformance,response_schema_conformance",
             "--phases", "examples,fuzzing", "--max-examples", "6", "--seed", "20261125",
             "--generation-database", "none", "--workers", "1", "--no-color",
             "--request-timeout", "20", "--report-dir", str(tmp_path / "st")],
            capture_output=True, text=True, timeout=240, cwd=tmp_path)
        took = time.monotonic() - t0
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-2000:]
    print(f"schemathesis took {took:.1f}s", file=sys.stderr)
