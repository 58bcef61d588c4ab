"""Hostile files at phh's document doors (tester findings F1, F2, F8, F9): a nonce that
names a path elsewhere or another file, /dev/zero or a FIFO where a document should be, and a
symlink loop as the Codex config. Each is refused with a sentence naming the file and the
reason (exit 2 at the CLI); nothing hangs, nothing is read without bound, nothing is written
outside the store."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import Harness, final, step

from phh_engine.store.docread import DocumentReadError, read_document_bytes
from phh_engine.store.overrides import (
    OverrideRequest,
    claim,
    is_claimed,
    overrides_dir,
    read_request,
    read_result,
    result_path,
)
from phh_engine.store.paths import Layout

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")


def phh(root: Path, *args: str, timeout: float = 180,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHH, "--root", str(root), *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


REQ = {"action": "retry", "batch_id": "b1", "job_id": "j1", "step_id": "s1",
       "requested_at": "2026-11-29T15:35:41Z", "requested_by": "cli"}


# ------------------------------------------------------------------ F1: nonce as a path
@pytest.mark.codex
def test_engine_refuses_nonce_escaping_or_differing_from_file(harness: Harness) -> None:
    harness.submit([{"job_id": "j1", "steps": [step("s1", final())]}])
    d = overrides_dir(harness.layout)
    d.mkdir(parents=True, exist_ok=True)
    (d / "h12.json").write_text(json.dumps({"nonce": "../../../escape", **REQ}))
    (d / "h13.json").write_text(json.dumps({"nonce": "h13-other", **REQ}))
    os.symlink("/dev/zero", d / "h20.json")  # F2: must be refused before any read
    out = phh(harness.root, "run", "--no-ui", "--until-idle")
    assert out.returncode == 0, out.stderr
    for escaped in (harness.root / "escape.result.json",
                    harness.root.parent / "escape.result.json",
                    harness.layout.runs / "escape.result.json"):
        assert not escaped.exists()
    assert not list(harness.root.parent.rglob("escape*"))
    assert not (d / "h13-other.result.json").exists()
    # answered under the FILE's stem, saying why
    h12 = json.loads((d / "h12.result.json").read_text())
    assert h12["outcome"] == "rejected" and h12["nonce"] == "h12"
    assert "nonce" in h12["message"] and "invalid id" in h12["message"]
    h13 = json.loads((d / "h13.result.json").read_text())
    assert h13["outcome"] == "rejected" and h13["nonce"] == "h13"
    assert "'h13-other' differs from the file name's 'h13'" in h13["message"]
    assert not (d / "h20.result.json").exists()  # names no action: listed, not answered
    assert "h20.json" in out.stderr and "symlink" in out.stderr


def test_nonce_paths_refuse_invalid_nonces(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    overrides_dir(layout).mkdir(parents=True)
    for bad in ("../../../escape", "a/b", ".hidden", ".."):
        with pytest.raises(ValueError, match="invalid id"):
            claim(layout, bad)
        with pytest.raises(ValueError, match="invalid id"):
            result_path(layout, bad)
        with pytest.raises(ValueError):
            OverrideRequest.model_validate({"nonce": bad, **REQ})
        assert read_result(layout, bad) is None
        assert not is_claimed(layout, bad)
    assert not list(tmp_path.rglob("*escape*"))
    p = overrides_dir(layout) / "h13.json"
    p.write_text(json.dumps({"nonce": "h13-other", **REQ}))
    assert read_request(p) is None
    p.write_text(json.dumps({"nonce": "h13", **REQ}))
    assert read_request(p) is not None


# ------------------------------------------------------------------ F2: bounded reads
def test_read_document_bytes_refuses_devices_fifos_dirs_and_big_files(tmp_path: Path) -> None:
    z = tmp_path / "z.json"
    os.symlink("/dev/zero", z)
    with pytest.raises(DocumentReadError, match="character device, not a regular file"):
        read_document_bytes(z, max_bytes=1 << 20, what="Launch Table")
    with pytest.raises(DocumentReadError, match="is a symlink"):
        read_document_bytes(z, max_bytes=1 << 20, what="override request",
                            follow_symlinks=False)
    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)
    with pytest.raises(DocumentReadError, match="FIFO"):
        read_document_bytes(fifo, max_bytes=10, what="Launch Table")
    with pytest.raises(DocumentReadError, match="directory"):
        read_document_bytes(tmp_path, max_bytes=10, what="Launch Table")
    big = tmp_path / "big.json"
    big.write_bytes(b" " * 11)
    with pytest.raises(DocumentReadError, match="over the 10 bytes limit"):
        read_document_bytes(big, max_bytes=10, what="Launch Table")
    with pytest.raises(FileNotFoundError):
        read_document_bytes(tmp_path / "nope", max_bytes=10, what="Launch Table")
    assert read_document_bytes(big, max_bytes=11, what="Launch Table") == b" " * 11


def test_submit_check_refuses_dev_zero_and_fifo(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    z = tmp_path / "zero.json"
    os.symlink("/dev/zero", z)  # the finding was `phh submit --check /dev/zero`
    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)
    for path, why in ((z, "is a character device, not a regular file"),
                      (fifo, "is a FIFO (named pipe), not a regular file")):
        for args in (("submit", "--check", str(path)), ("submit", str(path))):
            out = phh(root, *args, timeout=60)
            assert out.returncode == 2, (args, out.stdout, out.stderr)
            text = out.stdout + out.stderr
            assert f"Launch Table {path}: {why}" in text, text
            assert "Traceback" not in text and "MemoryError" not in text
    assert not (root / "runs").exists() or not [
        p for p in (root / "runs").iterdir() if not p.name.startswith("_")]


def test_submit_check_directory_gives_fifo_and_loop_a_verdict(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    tables = tmp_path / "tables"
    tables.mkdir()
    os.mkfifo(tables / "x.json")
    os.symlink(tables / "loopB.yaml", tables / "loopA.yaml")
    os.symlink(tables / "loopA.yaml", tables / "loopB.yaml")
    out = phh(root, "submit", "--check", str(tables), "--json", timeout=60)
    assert out.returncode == 2, out.stderr
    verdicts = {Path(v["file"]).name: v for v in json.loads(out.stdout)["files"]}
    assert set(verdicts) == {"x.json", "loopA.yaml", "loopB.yaml"}
    assert all(v["verdict"] == "rejected" for v in verdicts.values())
    assert "FIFO" in verdicts["x.json"]["errors"][0]["message"]
    assert "symlink loop" in verdicts["loopA.yaml"]["errors"][0]["message"]


# ------------------------------------------------------------------ F8: Codex config loop
@pytest.mark.codex
def test_codex_config_symlink_loop_is_a_codex_config_error(harness: Harness,
                                                           tmp_path: Path) -> None:
    loop_a, loop_b = tmp_path / "loopA", tmp_path / "loopB"
    os.symlink(loop_b, loop_a)
    os.symlink(loop_a, loop_b)
    env = {"PHH_CODEX_CONFIG": str(loop_a)}
    out = phh(harness.root, "run", "--no-ui", "--until-idle", env=env)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert f"Codex config {loop_a}: cannot be resolved: symlink loop" in out.stderr
    assert "Traceback" not in out.stderr
    doc = phh(harness.root, "doctor", "--json", env=env)
    rows = {r["name"]: r for r in json.loads(doc.stdout)["checks"]}
    row = rows["codex config"]
    assert row["status"] == "fail" and "symlink loop" in row["found"], row
    assert "raised" not in row["found"] and "PHH_CODEX_CONFIG" in row["fix"], row


# ------------------------------------------------------------------ F2: phh_config.json
def test_harness_config_dev_zero_is_refused(harness: Harness) -> None:
    harness.layout.settings_path.unlink()
    os.symlink("/dev/zero", harness.layout.settings_path)
    out = phh(harness.root, "submit", "--check", str(harness.root / "none.json"), timeout=60)
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert (f"harness config {harness.layout.settings_path}: is a character device, not a "
            "regular file") in out.stderr
    assert "Traceback" not in out.stderr and "MemoryError" not in out.stderr


# ------------------------------------------------------------------ F9: FIFO as an event log
@pytest.mark.codex
def test_tail_and_artifact_refuse_a_fifo_event_log(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final())]}])
    harness.run()
    (attempt,) = harness.attempts(bid, "j1", "s1")
    events = attempt / "codex.events.jsonl"
    events.unlink()
    os.mkfifo(events)
    for args in (("tail", bid, "j1", "s1"), ("tail", bid, "j1", "s1", "-n", "2"),
                 ("artifact", bid, "j1", "s1", "codex.events.jsonl")):
        out = phh(harness.root, *args, timeout=60)  # a hang fails here on the timeout
        assert out.returncode == 2, (args, out.stdout, out.stderr)
        assert "codex.events.jsonl" in out.stderr and "not a regular file" in out.stderr
        assert "Traceback" not in out.stderr


def test_api_launch_table_ref_refuses_dev_zero_and_fifo(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from phh_engine.interfaces.api import Auth, create_app

    layout = Layout(tmp_path / "root")
    layout.root.mkdir()
    z = tmp_path / "zero.json"
    os.symlink("/dev/zero", z)
    fifo = tmp_path / "x.json"
    os.mkfifo(fifo)
    with TestClient(create_app(layout, Auth("none")), base_url="http://127.0.0.1",
                    client=("127.0.0.1", 5555)) as c:
        for path, why in ((z, "character device"), (fifo, "FIFO")):
            r = c.post("/v1/batches", json={"launch_table_ref": str(path)})
            assert r.status_code == 422, r.text
            assert str(path) in r.text and why in r.text and "not a regular file" in r.text
        assert c.post("/v1/batches", json={"launch_table_ref": str(tmp_path / "no.json")}
                      ).status_code == 404
    assert not layout.runs.exists() or not [
        p for p in layout.runs.iterdir() if not p.name.startswith("_")]
