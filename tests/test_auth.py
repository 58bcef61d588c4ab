"""Fleets on a ChatGPT sign-in (issue 18): the real Codex against a local token server that
rotates single-use refresh tokens (tests/token_server.py) and a stand-in provider with
`requires_openai_auth` that answers 401 unless it sees a token that server issued.

The credential lives in a temporary HOME (`codex.credential_dir`), never the real ~/.codex.
"""

from __future__ import annotations

import base64
import json
import os
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, final, step, wait_for
from token_server import TokenServer, jwt

from phh_engine.models import HarnessSettings
from phh_engine.runners import credentials
from phh_engine.standin import StandIn
from phh_engine.store.files import atomic_write_json

N = 16
# Codex 0.169 does not serialise refreshes across processes: a slow token endpoint is what
# turns a wave of N agents into N refreshes racing for one single-use token.
SLOW_REFRESH = 8.0


@pytest.fixture
def tokens() -> Iterator[TokenServer]:
    with TokenServer() as ts:
        yield ts


@pytest.fixture
def chatgpt(tmp_path: Path, tmp_path_factory: pytest.TempPathFactory, tokens: TokenServer,
            codex_bin: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Harness, Path]]:
    """A root whose Codex signs in with ChatGPT: the credential in a temp HOME outside the
    root, refreshes sent to the token server, the provider checking the bearer token."""
    monkeypatch.setenv("CODEX_REFRESH_TOKEN_URL_OVERRIDE", tokens.url)
    home = tmp_path_factory.mktemp("home").resolve()
    monkeypatch.setenv("HOME", str(home))
    cred = home / ".codex" / "auth.json"
    cred.parent.mkdir()
    with StandIn(auth_check=tokens.valid_access) as provider:
        h = Harness(tmp_path.resolve() / "root", provider)
        h.codex_config = provider.write_config(h.root / "codex_config.toml",
                                               requires_openai_auth=True)
        h.settings.codex.credential_dir = str(cred.parent)
        h.settings.runners[0].capacity = N
        h.settings.limits.global_concurrency = N
        h.write_settings()
        yield h, cred
        for eng, t, _ in h._threads:
            if t.is_alive():
                eng.stop(cancel_running=True)
                t.join(60)


def _jobs(prefix: str = "j") -> list[dict[str, Any]]:
    return [{"job_id": f"{prefix}{i:02d}", "steps": [step("s", final(f"ok {i}"),
                                                          prompt=f"{prefix} job {i}")]}
            for i in range(N)]


def _states(h: Harness, bid: str) -> list[dict[str, Any]]:
    return [h.state(a) for i in range(N) for a in h.attempts(bid, f"j{i:02d}", "s")]


def _regular_auth_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("auth.json") if not p.is_symlink()]


def _assert_no_token_anywhere(tokens: TokenServer, root: Path, extra: list[str]) -> None:
    """No token string in any file under the root (links not followed) or in any log."""
    secrets = [t for t in tokens.all_tokens if t]
    for p in root.rglob("*"):
        if p.is_symlink() or not p.is_file():
            continue
        data = p.read_bytes()
        for t in secrets:
            assert t.encode() not in data, f"a token is written in {p}"
    for text in extra:
        for t in secrets:
            assert t not in text


def _write_login(cred: Path, tokens: TokenServer, **kw: Any) -> None:
    """What `codex login` leaves: a fresh credential file (a new inode)."""
    atomic_write_json(cred, tokens.auth_json(**kw))


def test_one_refresh_per_wave_with_a_slow_token_endpoint(
        chatgpt: tuple[Harness, Path], tokens: TokenServer) -> None:
    h, cred = chatgpt
    tokens.delay = SLOW_REFRESH
    _write_login(cred, tokens, expired=True)  # the access token expired an hour ago
    bid = h.submit(_jobs(), retries={"max_attempts": 1})
    eng = h.start()
    runs = h.layout.runs
    # "no regular auth.json ever appears under runs/": watched all the way, not only at the end
    wait_for(lambda: (_regular_auth_files(runs) and pytest.fail(
        f"regular auth.json under runs/: {_regular_auth_files(runs)}"))
        or sum(s["status"] == "succeeded" for s in _states(h, bid)) == N, 240, "16 successes")
    h.stop(eng)
    states = _states(h, bid)
    assert len(states) == N and all(s["status"] == "succeeded" for s in states)
    assert tokens.count() <= 2, tokens.requests  # not one per agent
    assert tokens.count("ok") == 1
    # Codex wrote through the link: the source holds the server's current token
    data = json.loads(cred.read_text())
    assert data["tokens"]["refresh_token"] == tokens.current_refresh
    assert not _regular_auth_files(h.root)
    for i in range(N):
        (att,) = h.attempts(bid, f"j{i:02d}", "s")
        assert (att / "codex_home" / "auth.json").is_symlink()
    # the wave waited for the refresh: the other starts came after the pilot's refresh
    starts = sorted(datetime.fromisoformat(s["started_at"]) for s in states)
    assert (starts[1] - starts[0]).total_seconds() >= SLOW_REFRESH * 0.9
    _assert_no_token_anywhere(tokens, h.root, [repr(e) for e in h.events])


def test_spent_refresh_token_pauses_new_starts_until_sign_in(
        chatgpt: tuple[Harness, Path], tokens: TokenServer) -> None:
    h, cred = chatgpt
    _write_login(cred, tokens, expired=True)
    tokens.spend_current()  # refreshed elsewhere: this file's refresh token is spent
    bid = h.submit(_jobs())  # default retry policy (2 attempts)
    eng = h.start()
    paused = wait_for(lambda: credentials.read_pause(h.layout, cred.resolve()), 120,
                      "the credential pause")
    assert "sign in again" in paused.reason or "already used" in paused.reason
    ended = wait_for(lambda: [s for s in _states(h, bid) if s["status"] == "failed"], 60,
                     "the failed attempt")
    assert all(s["failure_class"] == "auth" for s in ended)
    # the pause shows: scoreboard note, headless line (the admission_blocked event)
    note = wait_for(lambda: [n for n in json.loads(
        h.layout.system_scoreboard.read_text()).get("notes", [])
        if n["kind"] == "credential_paused"], 30, "the scoreboard note")
    assert "codex login" in note[0]["message"]
    ev = wait_for(lambda: [e for e in h.events if e.kind == "admission_blocked"], 30,
                  "admission_blocked")
    assert "codex login" in (ev[0].detail or "")
    # starts stay paused while the file is unchanged (give the scheduler several passes)
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        assert all(s["status"] in ("failed",) for s in _states(h, bid))
        time.sleep(0.2)
    n_failed = len(_states(h, bid))
    assert n_failed == 1  # the stale token's pilot; the other 15 never started on it
    assert tokens.count() <= 4  # Codex retries a refresh itself; no stampede of 16

    _write_login(cred, tokens, expired=False)  # the user signed in again
    wait_for(lambda: sum(s["status"] == "succeeded" for s in _states(h, bid)) == N - n_failed,
             180, "the others succeed once the file changes")
    wait_for(lambda: [e for e in h.events if e.kind == "admission_resumed"], 30, "resumed")
    assert credentials.read_pause(h.layout, cred.resolve()) is None
    h.stop(eng)
    states = _states(h, bid)
    assert len(states) == N  # no retry of the auth failures
    failed = [s for s in states if s["status"] != "succeeded"]
    assert len(failed) == n_failed and all(s["failure_class"] == "auth" for s in failed)
    board = json.loads(h.layout.batch_scoreboard(bid).read_text())
    rows = [a for a in board["attention"] if a["kind"] == "failed"]
    assert len(rows) == n_failed and all("codex login" in (a["detail"] or "") for a in rows)
    _assert_no_token_anywhere(tokens, h.root, [repr(e) for e in h.events])


def test_auth_failure_retried_at_once_when_the_credential_changed(
        harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Another process rewrote the credential while the attempt ran (here the agent itself,
    by a shell command, before the provider answers 401): retried at once, not counted.

    The linked file holds an API key: with a ChatGPT sign-in Codex 0.169 answers a provider
    401 by refreshing (which changes the file itself) and then ends "Fatal error: application
    network policy is unavailable", so a 401 as such is seen only with a key."""
    home = tmp_path_factory.mktemp("home2").resolve()
    cred = home / "auth.json"
    atomic_write_json(cred, {"OPENAI_API_KEY": "sk-phh-test-key"})
    harness.settings.codex.credential_dir = str(home)
    harness.write_settings()
    raced = [{"shell": f"touch {cred}"},
             {"http_error": 401, "body": "invalid or expired token", "times": 1,
              "otherwise": final("second time")}]
    same = [{"http_error": 401, "body": "invalid or expired token"}]
    retries = {"max_attempts": 1, "backoff_seconds": 300}
    bid = harness.submit([{"job_id": "raced", "steps": [step("s", *raced, prompt="auth-race")]}],
                         retries=retries)
    harness.run(timeout=120)
    first, second = harness.attempts(bid, "raced", "s")
    s1, s2 = harness.state(first), harness.state(second)
    assert s1["failure_class"] == "auth"
    assert s1["termination_reason"] == credentials.CREDENTIAL_CHANGED
    assert s2["status"] == "succeeded" and harness.meta(second)["trigger"] == "retry"
    gap = (datetime.fromisoformat(s2["started_at"]) -
           datetime.fromisoformat(s1["ended_at"])).total_seconds()
    assert gap < 60  # at once, not after the 300 s backoff; and max_attempts 1 not spent
    assert credentials.read_pause(harness.layout, cred) is None
    bid = harness.submit([{"job_id": "same", "steps": [step("s", *same, prompt="auth-same")]}],
                         retries=retries)
    harness.run(timeout=120)
    (only,) = harness.attempts(bid, "same", "s")
    st = harness.state(only)
    assert st["failure_class"] == "auth" and st["termination_reason"] != "credential_changed"
    assert any("codex login" in e for e in st["errors"])
    # that one paused the credential; `codex login` (a new file) lifts it
    assert credentials.read_pause(harness.layout, cred) is not None
    atomic_write_json(cred, {"OPENAI_API_KEY": "sk-phh-new-key"})
    assert credentials.lift_if_changed(harness.layout, cred) is None
    assert credentials.read_pause(harness.layout, cred) is None


# ------------------------------------------------------------------ the rule, and doctor
def _settings(cred_dir: Path) -> HarnessSettings:
    s = HarnessSettings()
    s.codex.credential_dir = str(cred_dir)
    return s


def test_staleness_follows_codex_rule(tmp_path: Path) -> None:
    now = datetime(2026, 1, 10, tzinfo=UTC)

    def auth(exp: datetime | None, last: datetime | None) -> dict[str, Any]:
        access = jwt({"exp": int(exp.timestamp())}) if exp else "opaque-token"
        return {"tokens": {"access_token": access, "refresh_token": "rt"},
                "last_refresh": last.isoformat() if last else None}

    assert credentials.staleness(auth(now - timedelta(hours=1), now), now)[0]
    assert credentials.staleness(auth(now + timedelta(minutes=4), now), now)[0]
    assert not credentials.staleness(auth(now + timedelta(minutes=6), now), now)[0]
    # exp readable wins over an old last_refresh
    assert not credentials.staleness(auth(now + timedelta(hours=1), now - timedelta(days=30)),
                                     now)[0]
    # exp unreadable: last_refresh older than 8 days
    assert credentials.staleness(auth(None, now - timedelta(days=8, minutes=1)), now)[0]
    assert not credentials.staleness(auth(None, now - timedelta(days=7)), now)[0]
    # Codex's own nanosecond timestamps parse
    nano = {"tokens": {"access_token": "x", "refresh_token": "rt"},
            "last_refresh": "2025-12-01T14:09:50.083326006Z"}
    assert credentials.staleness(nano, now)[0]


def test_credential_status_kinds_never_show_content(
        tmp_path: Path, tokens: TokenServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for key in credentials.SECRET_ENV:
        monkeypatch.delenv(key, raising=False)
    s = _settings(tmp_path)
    assert credentials.credential_status(s)[:2] == ("none", False)
    data = tokens.auth_json(expired=True)
    (tmp_path / "auth.json").write_text(json.dumps(data))
    kind, stale, detail = credentials.credential_status(s)
    assert (kind, stale) == ("chatgpt", True) and "expired" in detail
    for t in tokens.all_tokens:
        assert t not in detail
    (tmp_path / "auth.json").write_text(json.dumps(tokens.auth_json(expired=False)))
    assert credentials.credential_status(s)[:2] == ("chatgpt", False)
    (tmp_path / "auth.json").write_text(json.dumps({"OPENAI_API_KEY": "sk-test-secret"}))
    kind, stale, detail = credentials.credential_status(s)
    assert kind == "api_key" and "sk-test-secret" not in detail
    (tmp_path / "auth.json").write_text("not json")
    assert credentials.credential_status(s)[0] == "unreadable"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    kind, _, detail = credentials.credential_status(s)
    assert kind == "api_key_env" and "sk-env" not in detail
    assert os.environ["OPENAI_API_KEY"] == "sk-env"


def test_pause_recorded_by_another_engine_holds_headless_run_until_the_file_changes(
        harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> None:
    """The pause lives under runs/_system/: a fresh `phh run --no-ui` (another process) sees
    it, says so on its log, starts nothing; after a new sign-in it runs the step."""
    from test_cli_engine import phh

    home = tmp_path_factory.mktemp("home3").resolve()
    cred = home / "auth.json"
    atomic_write_json(cred, {"OPENAI_API_KEY": "sk-phh-old-key"})
    harness.settings.codex.credential_dir = str(home)
    harness.write_settings()
    fp = credentials.fingerprint(cred)
    assert fp is not None
    credentials.pause(harness.layout, cred, fp, "refresh token was already used")
    bid = harness.submit([{"job_id": "j1", "steps": [step("s", final("ran"))]}])
    out = phh(harness.root, "run", "--no-ui", "--until-idle")
    assert out.returncode == 0, out.stderr
    line = next(ln for ln in out.stdout.splitlines() if "admission_blocked" in ln)
    assert "sign in again: `codex login`" in line and str(cred) in line
    assert harness.attempts(bid, "j1", "s") == []
    assert "sk-phh-old-key" not in out.stdout + out.stderr
    board = json.loads(harness.layout.system_scoreboard.read_text())
    assert any(n["kind"] == "credential_paused" for n in board["notes"])

    atomic_write_json(cred, {"OPENAI_API_KEY": "sk-phh-new-key"})  # signed in again
    out = phh(harness.root, "run", "--no-ui", "--until-idle")
    assert out.returncode == 0, out.stderr
    assert "admission_blocked" not in out.stdout
    (att,) = harness.attempts(bid, "j1", "s")
    assert harness.state(att)["status"] == "succeeded"
    assert credentials.read_pause(harness.layout, cred) is None


async def test_dashboard_shows_the_credential_pause(
        harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> None:
    from test_tui_keys import SIZE, make_app, until

    home = tmp_path_factory.mktemp("home4").resolve()
    cred = home / "auth.json"
    atomic_write_json(cred, {"OPENAI_API_KEY": "sk-phh-old-key"})
    harness.settings.codex.credential_dir = str(home)
    harness.write_settings()
    fp = credentials.fingerprint(cred)
    assert fp is not None
    credentials.pause(harness.layout, cred, fp, "refresh token was already used")
    app = make_app(harness)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: any("codex login" in n.message
                                       for n in app._notifications), 60, "the pause banner")


def test_gate_one_pilot_per_file_version(tmp_path: Path, tokens: TokenServer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """A pilot that ends without refreshing (its provider may not use the sign-in) releases
    the wave, and the same stale file gets no second pilot: no fleet serialised for good."""
    for key in credentials.SECRET_ENV:
        monkeypatch.delenv(key, raising=False)
    from phh_engine.store.paths import Layout

    cred = tmp_path / "cred" / "auth.json"
    cred.parent.mkdir()
    atomic_write_json(cred, tokens.auth_json(expired=True))
    gate = credentials.CredentialGate(Layout(tmp_path / "root"), _settings(cred.parent))
    gate.poll()
    assert gate.admit(16) == 1
    gate.started("r1")
    gate.poll()
    assert gate.admit(15) == 0 and gate.holding_note()
    gate.ended("r1")
    gate.poll()
    assert gate.admit(15) == 15  # same file: released, no second pilot
    atomic_write_json(cred, tokens.auth_json(expired=True))  # a new (still stale) version
    gate.poll()
    assert gate.admit(15) == 1
    gate.started("r2")
    atomic_write_json(cred, tokens.auth_json(expired=False))  # r2 refreshed it
    gate.poll()
    assert gate.admit(14) == 14 and gate.pilot is None


REFRESH_MESSAGES = [  # Codex 0.169's own texts (codex-rs/login/src/auth/manager.rs)
    "Your access token could not be refreshed because your refresh token has expired. "
    "Please log out and sign in again.",
    "Your access token could not be refreshed because your refresh token was already used. "
    "Please log out and sign in again.",
    "Your access token could not be refreshed because your refresh token was revoked. "
    "Please log out and sign in again.",
    "Your access token could not be refreshed. Please log out and sign in again.",
    "unexpected status 401 Unauthorized: invalid or expired token, url: "
    "http://127.0.0.1:40345/v1/responses",
]


@pytest.mark.parametrize("message", REFRESH_MESSAGES)
def test_classify_auth(message: str) -> None:
    from phh_engine.runners.conclude import classify
    from phh_engine.store.events import EventFacts

    facts = EventFacts(turn_failed=message, errors=[message])
    out = classify(exit_code=1, facts=facts, report=None, report_error=None, canceled=False,
                   timed_out=False, thread_mismatch=None)
    assert out.failure_class == "auth"


def test_classify_not_auth_for_a_port_or_a_recovered_refresh_on_stderr() -> None:
    from phh_engine.runners.conclude import classify
    from phh_engine.store.events import EventFacts

    facts = EventFacts(turn_failed="unexpected status 500: server_error, url: "
                       "http://127.0.0.1:40123/v1/responses")
    out = classify(exit_code=1, facts=facts, report=None, report_error=None, canceled=False,
                   timed_out=False, thread_mismatch=None,
                   stderr_tail="ERROR codex_login::auth::manager: Failed to refresh token: "
                   + REFRESH_MESSAGES[1])
    assert out.failure_class == "model_error"


def test_hostile_auth_json_is_unreadable_not_a_crash(tmp_path: Path) -> None:
    """Issue 11 B2's kind at the credential reader: a file (or a JWT payload) nested 50000
    deep is read as unreadable, never a RecursionError in the engine's credential gate."""
    from phh_engine.runners.credentials import jwt_exp, status_of

    auth = tmp_path / "auth.json"
    auth.write_text("[" * 50000 + "]" * 50000)
    assert status_of(auth)[0] == "unreadable"
    payload = base64.urlsafe_b64encode(b"[" * 50000 + b"]" * 50000).decode().rstrip("=")
    assert jwt_exp(f"e30.{payload}.sig") is None
    auth.write_text('{"tokens": {"access_token": "a.b.c"}, "last_refresh": 1e400}')
    assert status_of(auth)[0] == "unreadable"
