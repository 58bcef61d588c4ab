"""`phh doctor`, and the refusals before any attempt starts (issue 16; issue 11 B4): a Codex
config that is missing or not TOML, a missing Codex binary or credential."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, final, step
from token_server import jwt

from phh_engine.engine.loop import Engine
from phh_engine.runners.codex_cli import PINNED_CODEX_VERSION
from phh_engine.runners.doctor import PreflightError, serving_runners, startup_error_line
from phh_tui.cli import main

BROKEN_TOML = 'model_provider = "x\n'  # an unterminated string
HINT = f"npm install -g @openai/codex@{PINNED_CODEX_VERSION}"


def doctor(capsys: pytest.CaptureFixture[str], root: Path) -> tuple[int, dict[str, Any]]:
    capsys.readouterr()
    code = main(["--root", str(root), "doctor", "--json"])
    out = json.loads(capsys.readouterr().out)
    return code, {r["name"]: r for r in out["checks"]}


def phh(capsys: pytest.CaptureFixture[str], root: Path, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["--root", str(root), *argv])
    return code, capsys.readouterr().err


def no_attempts(h: Harness, batch_id: str) -> bool:
    return not any(h.layout.batch_dir(batch_id).rglob("attempts/*"))


@pytest.fixture
def isolated_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME without ~/.codex/auth.json, so the machine's own login cannot count."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    return home


# ------------------------------------------------------------------------------ doctor
def test_doctor_healthy_setup(harness: Harness, capsys: pytest.CaptureFixture[str],
                              codex_bin: str) -> None:
    code, rows = doctor(capsys, harness.root)
    assert code == 0, rows
    assert not [r for r in rows.values() if r["status"] == "fail"], rows
    assert rows["codex binary"]["status"] == "ok"
    assert f"codex {PINNED_CODEX_VERSION} at {codex_bin}" in rows["codex binary"]["found"]
    assert rows["codex config"]["status"] == "ok"
    assert str(harness.codex_config) in rows["codex config"]["found"]
    assert rows["credentials"]["status"] == "ok"  # the stand-in's provider has no env_key
    for name in ("phh root", "git", "disk", "inodes", "inotify watches", "engine"):
        assert name in rows, name
    assert rows["engine"]["found"] == "none serving this root"

    eng = harness.start()
    try:
        code, rows = doctor(capsys, harness.root)
        assert rows["engine"]["found"] == "serving this root (runner local)"
    finally:
        harness.stop(eng)
    # the people's table: one row per check, exit 0
    capsys.readouterr()
    assert main(["--root", str(harness.root), "doctor"]) == 0
    table = capsys.readouterr().out
    assert "codex binary" in table and "inotify watches" in table


def test_doctor_missing_binary(harness: Harness, capsys: pytest.CaptureFixture[str],
                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PHH_CODEX_BIN", str(harness.root / "no-such-codex"))
    code, rows = doctor(capsys, harness.root)
    assert code == 1
    row = rows["codex binary"]
    assert row["status"] == "fail" and "no-such-codex" in row["found"]
    assert HINT in row["fix"]
    # the same from the harness config's codex.bin, with the variable unset
    monkeypatch.delenv("PHH_CODEX_BIN")
    harness.settings.codex.bin = str(harness.root / "gone" / "codex")
    harness.write_settings()
    code, rows = doctor(capsys, harness.root)
    assert code == 1 and "codex.bin=" in rows["codex binary"]["found"]


@pytest.mark.parametrize("case", ["missing", "invalid_toml", "unknown_provider"])
def test_doctor_broken_config(harness: Harness, capsys: pytest.CaptureFixture[str],
                              monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    cfg = harness.root / "broken.toml"
    if case == "invalid_toml":
        cfg.write_text(BROKEN_TOML)
    elif case == "unknown_provider":
        cfg.write_text('model_provider = "nope"\n')
    monkeypatch.setenv("PHH_CODEX_CONFIG", str(cfg))
    code, rows = doctor(capsys, harness.root)
    assert code == 1
    row = rows["codex config"]
    assert row["status"] == "fail" and str(cfg) in row["found"], row
    expect = {"missing": "does not exist", "invalid_toml": "not valid TOML",
              "unknown_provider": "'nope'"}[case]
    assert expect in row["found"], row


def test_doctor_config_without_provider_warns(harness: Harness, isolated_home: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = harness.root / "plain.toml"
    cfg.write_text('model = "gpt-5.5"\n')
    monkeypatch.setenv("PHH_CODEX_CONFIG", str(cfg))
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-real-key")
    code, rows = doctor(capsys, harness.root)
    assert code == 0
    assert rows["codex config"]["status"] == "warn"
    assert "default provider (OpenAI)" in rows["codex config"]["found"]


def test_doctor_missing_credential(harness: Harness, isolated_home: Path,
                                   capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    # a provider that reads its key from a variable that is not set
    cfg = harness.root / "keyed.toml"
    cfg.write_text('model_provider = "corp"\n[model_providers.corp]\n'
                   'base_url = "http://127.0.0.1:9/v1"\nenv_key = "PHH_TEST_CORP_KEY"\n')
    monkeypatch.setenv("PHH_CODEX_CONFIG", str(cfg))
    monkeypatch.delenv("PHH_TEST_CORP_KEY", raising=False)
    code, rows = doctor(capsys, harness.root)
    assert code == 1
    assert rows["credentials"]["status"] == "fail"
    assert "$PHH_TEST_CORP_KEY" in rows["credentials"]["found"]
    secret = "corp-secret-value-12345"
    monkeypatch.setenv("PHH_TEST_CORP_KEY", secret)
    capsys.readouterr()
    assert main(["--root", str(harness.root), "doctor", "--json"]) == 0
    assert secret not in capsys.readouterr().out

    # the default provider: an API key variable, or an auth.json (never printed)
    cfg.write_text('model = "gpt-5.5"\n')
    code, rows = doctor(capsys, harness.root)
    assert code == 1 and rows["credentials"]["status"] == "fail"
    assert str(isolated_home / ".codex" / "auth.json") in rows["credentials"]["found"]
    auth = isolated_home / ".codex" / "auth.json"
    auth.parent.mkdir()
    auth.write_text(json.dumps({"OPENAI_API_KEY": secret}))
    capsys.readouterr()
    assert main(["--root", str(harness.root), "doctor", "--json"]) == 0
    out = capsys.readouterr().out
    assert secret not in out and str(auth) in out


def test_doctor_outside_a_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, rows = doctor(capsys, tmp_path)
    assert rows["phh root"]["status"] == "warn" and "phh init" in rows["phh root"]["fix"]
    assert not list(tmp_path.iterdir())  # the doctor writes nothing


# ------------------------------------------------------------- refusals before attempts
@pytest.mark.parametrize("case", ["missing", "invalid_toml"])
@pytest.mark.parametrize("source", ["env", "phh_config"])
def test_run_refuses_a_broken_codex_config(harness: Harness,
                                           capsys: pytest.CaptureFixture[str],
                                           monkeypatch: pytest.MonkeyPatch, case: str,
                                           source: str) -> None:
    """Issue 11 B4: PHH_CODEX_CONFIG (or codex.config_toml) naming a missing file made Codex
    fall back to its default provider; invalid TOML failed every attempt in 0 s. Now
    `phh run` (headless, dashboard, with the API) and bare `phh` refuse with exit 2 naming
    the file and the TOML error, before any attempt starts."""
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final())]}])
    cfg = harness.root / "codex_broken.toml"
    if case == "invalid_toml":
        cfg.write_text(BROKEN_TOML)
    if source == "env":
        monkeypatch.setenv("PHH_CODEX_CONFIG", str(cfg))
    else:
        harness.settings.codex.config_toml = str(cfg)
        harness.write_settings()
    want = "does not exist" if case == "missing" else "is not valid TOML: Illegal character"
    for argv in (["run", "--no-ui", "--until-idle"], ["run", "--no-ui", "--api"], ["run"],
                 []):
        code, err = phh(capsys, harness.root, *argv)
        assert code == 2, (argv, err)
        assert str(cfg) in err and want in err, (argv, err)
        assert "Traceback" not in err
    assert no_attempts(harness, bid)
    assert not serving_runners(harness.layout)

    # an engine started in code (the dashboard's, the demo's) refuses the same way, and
    # lets go of its runner lock
    eng = Engine(harness.root, until_idle=True)
    with pytest.raises(PreflightError, match=r"codex_broken\.toml"):
        eng.setup()
    assert no_attempts(harness, bid)
    code, rows = doctor(capsys, harness.root)
    assert code == 1 and str(cfg) in rows["codex config"]["found"]


def test_run_refuses_a_missing_credential(harness: Harness, isolated_home: Path,
                                          capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final())]}])
    cfg = harness.root / "keyed.toml"
    cfg.write_text(harness.codex_config.read_text().replace(
        'wire_api = "responses"', 'wire_api = "responses"\nenv_key = "PHH_TEST_CORP_KEY"'))
    monkeypatch.setenv("PHH_CODEX_CONFIG", str(cfg))
    monkeypatch.delenv("PHH_TEST_CORP_KEY", raising=False)
    code, err = phh(capsys, harness.root, "run", "--no-ui", "--until-idle")
    assert code == 2 and "$PHH_TEST_CORP_KEY, which is not set" in err, err
    assert no_attempts(harness, bid)


def test_bare_phh_outside_a_root(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = phh(capsys, tmp_path)
    assert code == 2
    assert f"{tmp_path.resolve()} is not a phh root" in err
    assert "phh init" in err and "phh demo" in err
    assert not list(tmp_path.iterdir())


def test_codex_startup_failure_line_lands_in_state_errors(harness: Harness) -> None:
    """The config passes the engine's check, then breaks before an attempt: Codex exits at
    start-up and its stderr's error line is in state.json `errors`, not only in stderr.log."""
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final())]}],
                         retries={"max_attempts": 1})
    eng = harness.engine()
    harness.codex_config.write_text(BROKEN_TOML)
    asyncio.run(asyncio.wait_for(eng.serve(), 120))
    (att,) = harness.attempts(bid, "j1", "s1")
    state = harness.state(att)
    assert state["status"] == "failed", state
    line = next((e for e in state["errors"] if e.startswith("codex start-up failed:")), None)
    assert line is not None, state["errors"]
    assert "Error loading config.toml" in line and "invalid basic string" in line, line


def test_startup_error_line() -> None:
    tail = ("WARNING: proceeding, even though we could not create PATH aliases\n"
            "Error loading config.toml:\n/x/config.toml:1:20: invalid basic string\n  |\n")
    assert startup_error_line(tail) == (
        "Error loading config.toml: /x/config.toml:1:20: invalid basic string")
    assert startup_error_line("error: unexpected argument '--bogus' found\n\n  tip: ...") == (
        "error: unexpected argument '--bogus' found")
    assert startup_error_line("WARNING: nothing wrong\n") is None



def test_doctor_reports_a_stale_chatgpt_sign_in(harness: Harness, isolated_home: Path,
                                                capsys: pytest.CaptureFixture[str],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 18.3: the kind of credential and whether its token is stale, never its content."""
    cfg = harness.root / "openai.toml"
    cfg.write_text('model = "gpt-5.5"\n')
    monkeypatch.setenv("PHH_CODEX_CONFIG", str(cfg))
    for key in ("OPENAI_API_KEY", "CODEX_API_KEY"):
        monkeypatch.delenv(key, raising=False)
    auth = isolated_home / ".codex" / "auth.json"
    auth.parent.mkdir()
    access = jwt({"exp": 1_000_000_000, "sub": "user"})  # 2001: long expired
    secret = "rt-doctor-secret-0123456789"
    auth.write_text(json.dumps({"tokens": {"access_token": access, "refresh_token": secret,
                                           "id_token": access},
                                "last_refresh": "2001-01-01T00:00:00Z"}))
    code, rows = doctor(capsys, harness.root)
    assert code == 0  # a stale token is a warning: the first attempt refreshes it
    assert rows["credentials"]["status"] == "warn", rows["credentials"]
    assert "ChatGPT sign-in" in rows["credentials"]["found"]
    assert "stale" in rows["credentials"]["found"]
    capsys.readouterr()
    main(["--root", str(harness.root), "doctor", "--json"])
    out = capsys.readouterr().out
    assert secret not in out and access not in out
