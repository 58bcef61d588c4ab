"""Issue 11 B2: parser-hostile documents (non-finite numbers, nesting past a sane depth) are
refused with a JSON path at every door that reads one, and nothing is written."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import GOAL, Harness, final, step, wait_for
from test_api import serving

from phh_engine.interfaces.queue import DropQueue
from phh_engine.interfaces.submit import SubmitError, submit
from phh_engine.models import HarnessSettings
from phh_engine.store.documents import MAX_DEPTH, DocumentError, check_tree, loads_json, loads_yaml
from phh_engine.store.harness_config import ConfigError, load_config, load_settings, materialize
from phh_engine.store.overrides import make_request, overrides_dir, read_result
from phh_engine.store.paths import Layout

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")
DEEP = 50000


def phh(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHH, "--root", str(root), *args], capture_output=True, text=True,
                          timeout=120)


def table(root: Path, **step_kw: Any) -> dict[str, Any]:
    return {"batch_goal_summary": GOAL, "working_root": str(root),
            "jobs": [{"job_id": "j1", "steps": [{"step_id": "s1", "prompt": "hi", **step_kw}]}]}


def with_raw(doc: dict[str, Any], marker: str, raw: str) -> str:
    """JSON text of `doc` with the string `marker` replaced by raw JSON text."""
    return json.dumps(doc).replace(json.dumps(marker), raw)


def batch_dirs(layout: Layout) -> list[str]:
    if not layout.runs.is_dir():
        return []
    return sorted(n for n in os.listdir(layout.runs) if not n.startswith(("_", ".")))


TIMEOUT_PATH = "jobs[0].steps[0].timeout_seconds"


# ------------------------------------------------------------------ the issue's examples
def test_timeout_seconds_1e400_is_refused_not_written_as_null(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert phh(root, "init").returncode == 0
    lt_json = tmp_path / "lt.json"
    lt_json.write_text(with_raw(table(tmp_path, timeout_seconds="X"), "X", "1e400"))
    lt_yaml = tmp_path / "lt.yaml"
    lt_yaml.write_text(f"batch_goal_summary: {GOAL}\nworking_root: {tmp_path}\njobs:\n"
                       "- job_id: j1\n  steps:\n  - step_id: s1\n    prompt: hi\n"
                       "    timeout_seconds: 1e400\n")
    for lt in (lt_json, lt_yaml):
        res = phh(root, "submit", str(lt))
        assert res.returncode == 2, res
        assert f"{TIMEOUT_PATH}:" in res.stderr and "finite" in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
    assert batch_dirs(Layout(root)) == []


def test_launch_table_nested_50000_deep_is_refused_without_a_traceback(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert phh(root, "init").returncode == 0
    for name, text in (
        ("deep.json", with_raw(table(tmp_path), "hi", "[" * DEEP + "]" * DEEP)),
        ("deep.yaml", f"batch_goal_summary: {GOAL}\njobs:\n- job_id: j1\n  steps:\n"
                      f"  - step_id: s1\n    prompt: {'[' * DEEP}{']' * DEEP}\n"),
    ):
        lt = tmp_path / name
        lt.write_text(text)
        res = phh(root, "submit", str(lt))
        assert res.returncode == 2, res
        assert "Traceback" not in res.stderr and "RecursionError" not in res.stderr
        assert "jobs[0].steps[0].prompt[0][0]" in res.stderr, res.stderr[:500]
        assert f"nested deeper than {MAX_DEPTH}" in res.stderr
    assert batch_dirs(Layout(root)) == []


# ------------------------------------------------------------------ the loader's rules
@pytest.mark.parametrize(("raw", "why"), [
    ("1e400", "overflows"), ("-1e400", "overflows"), ("NaN", "NaN"), ("Infinity", "Infinity"),
    ("-Infinity", "-Infinity"), ("1" * 5000, "digits"),
])
def test_json_non_finite_and_huge_numbers_are_refused_with_their_path(raw: str, why: str) -> None:
    with pytest.raises(DocumentError) as err:
        loads_json('{"a": {"b": [1, 2, ' + raw + "]}}")
    assert err.value.path == "a.b[2]" and why in err.value.message


@pytest.mark.parametrize("raw", [".inf", "-.inf", ".nan", ".NaN"])
def test_yaml_non_finite_numbers_are_refused_with_their_path(raw: str) -> None:
    with pytest.raises(DocumentError) as err:
        loads_yaml(f"a:\n  b:\n  - 1\n  - {raw}\n")
    assert err.value.path == "a.b[1]"


def test_nesting_limit_is_exact_and_a_yaml_alias_bomb_is_refused() -> None:
    ok = "[" * MAX_DEPTH + "]" * MAX_DEPTH
    loads_json(ok)
    with pytest.raises(DocumentError, match="nested deeper"):
        loads_json("[" + ok + "]")
    with pytest.raises(DocumentError, match="nested deeper") as err:
        loads_json('{"k": {"odd key": ' + "[" * 3000 + "]" * 3000 + "}}")
    assert err.value.path.startswith('k["odd key"][0][0]')
    lol = "a: &a [1,1,1,1,1,1,1,1,1]\n" + "".join(
        f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n" for p, n in zip("abcdefg", "bcdefgh",
                                                                     strict=True))
    with pytest.raises(DocumentError, match="aliases"):
        loads_yaml(lol)
    with pytest.raises(DocumentError) as err:
        check_tree({"x": [float("nan")]})
    assert err.value.path == "x[0]"


# ------------------------------------------------------------------ other doors
def test_hostile_drop_is_rejected_and_the_queue_goes_on(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    materialize(layout, HarnessSettings())
    q = DropQueue(layout, load_config(layout))
    q.ensure_dirs()
    (q.incoming / "a_deep.json").write_text(
        with_raw(table(tmp_path), "hi", "[" * DEEP + "]" * DEEP))
    (q.incoming / "b_inf.json").write_text(
        with_raw(table(tmp_path, timeout_seconds="X"), "X", "1e400"))
    (q.incoming / "c_nan.yaml").write_text(
        f"batch_goal_summary: {GOAL}\njobs:\n- steps:\n  - step_id: s1\n    prompt: hi\n"
        "    timeout_seconds: .nan\n")
    (q.incoming / "d_good.json").write_text(json.dumps(table(tmp_path)))
    outcomes = {o.name: o for o in q.scan()}
    assert {n: o.status for n, o in outcomes.items()} == {
        "a_deep.json": "rejected", "b_inf.json": "rejected", "c_nan.yaml": "rejected",
        "d_good.json": "accepted"}
    assert outcomes["a_deep.json"].errors[0]["path"].startswith("jobs[0].steps[0].prompt[0]")
    assert outcomes["b_inf.json"].errors[0]["path"] == TIMEOUT_PATH
    assert outcomes["c_nan.yaml"].errors[0]["path"] == TIMEOUT_PATH
    assert batch_dirs(layout) == [outcomes["d_good.json"].batch_id]


def test_api_refuses_hostile_bodies_with_a_path(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    yaml_ref = tmp_path / "inf.yaml"
    yaml_ref.write_text(f"batch_goal_summary: {GOAL}\njobs:\n- steps:\n  - step_id: s1\n"
                        "    prompt: hi\n    timeout_seconds: 1e400\n")
    with serving(layout) as client:
        hdr = {"content-type": "application/json"}
        body = with_raw({"launch_table": table(tmp_path, timeout_seconds="X")}, "X", "1e400")
        r = client.post("/v1/batches", content=body, headers=hdr)
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["path"] == f"launch_table.{TIMEOUT_PATH}"
        body = with_raw({"launch_table": table(tmp_path)}, "hi", "[" * DEEP + "]" * DEEP)
        r = client.post("/v1/batches", content=body, headers=hdr)
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["path"].startswith("launch_table.jobs[0].steps[0].prompt[0]")
        r = client.post("/v1/batches", json={"launch_table_ref": str(yaml_ref)})
        assert r.status_code == 422, r.text
        assert r.json()["errors"][0]["path"] == TIMEOUT_PATH
        r = client.post("/v1/batches/b1/jobs/j1/steps/s1/cancel",
                        content='{"wait_seconds": NaN}', headers=hdr)
        assert r.status_code == 400 and r.json()["errors"][0]["path"] == "wait_seconds"
        r = client.get("/v1/health")
        assert r.status_code == 200  # the server is fine
    assert batch_dirs(layout) == []


def test_phh_config_with_hostile_numbers_is_refused_with_a_path(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    data = HarnessSettings().model_dump(mode="json", exclude_none=True)
    data["limits"]["global_concurrency"] = "X"
    layout.settings_path.write_text(with_raw(data, "X", "1e400"))
    with pytest.raises(ConfigError) as err:
        load_settings(layout)
    assert "limits.global_concurrency" in str(err.value)
    data["limits"]["global_concurrency"] = 4
    data["codex"]["cancel_grace_seconds"] = "X"
    layout.settings_path.write_text(with_raw(data, "X", "[" * DEEP + "]" * DEEP))
    with pytest.raises(ConfigError, match=r"codex\.cancel_grace_seconds\[0\]"):
        load_settings(layout)
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(table(tmp_path)))
    for args in (("submit", str(lt)), ("run", "--no-ui", "--until-idle")):
        res = phh(tmp_path, *args)
        assert res.returncode == 2, (args, res)
        assert "codex.cancel_grace_seconds[0]" in res.stderr and "Traceback" not in res.stderr
    assert batch_dirs(layout) == []


def test_output_schema_file_with_nan_is_refused(tmp_path: Path) -> None:
    schema = tmp_path / "schema.json"
    schema.write_text('{"type": "object", "properties": {"n": {"type": "number", '
                      '"maximum": NaN}}, "required": ["n"], "additionalProperties": false}')
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(table(tmp_path, output_schema_ref=str(schema))))
    with pytest.raises(SubmitError) as err:
        submit(Layout(tmp_path / "root"), lt)
    issue = err.value.issues[0]
    assert issue.path == "jobs[0].steps[0].output_schema_ref"
    assert "properties.n.maximum" in issue.message and "finite" in issue.message


@pytest.mark.codex
def test_engine_refuses_a_hostile_request_file_and_applies_the_next(harness: Harness) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [step("s1", final("ok"))]}])
    d = overrides_dir(harness.layout)
    d.mkdir(parents=True, exist_ok=True)
    head = '"action": "close", "batch_id": "' + bid + '", "requested_at": "2026-01-01T00:00:00Z"'
    (d / "00000000000000000001-aaaaaa.json").write_text(
        '{"nonce": "00000000000000000001-aaaaaa", ' + head + ', "reason": '
        + "[" * DEEP + "]" * DEEP + "}")
    (d / "00000000000000000002-bbbbbb.json").write_text(
        '{"nonce": "00000000000000000002-bbbbbb", ' + head + ', "wait": NaN}')
    eng = harness.start()
    try:
        good = make_request(harness.layout, "mark_failed", bid, job_id="j1", step_id="s1",
                            reason="operator")
        wait_for(lambda: read_result(harness.layout, good.nonce), 60, "the good request")
        board = wait_for(lambda: (b := json.loads(harness.layout.batch_scoreboard(bid)
                                                  .read_text()))["notes"] and b, 60, "notes")
    finally:
        harness.stop(eng)
    notes = " | ".join(n["message"] for n in board["notes"])
    assert "00000000000000000001-aaaaaa.json: request refused: reason[0][0]" in notes, notes
    assert "00000000000000000002-bbbbbb.json: request refused: wait: " in notes, notes


@pytest.mark.parametrize("text", [
    with_raw(table(Path("/nonexistent"), timeout_seconds="X"), "X", "1e400"),
    with_raw(table(Path("/nonexistent"), timeout_seconds="X"), "X", "NaN"),
    with_raw(table(Path("/nonexistent")), "hi", "[" * DEEP + "]" * DEEP),
    with_raw(table(Path("/nonexistent")), "hi", "{\"a\": " * 100 + "1" + "}" * 100),
])
def test_a_hostile_table_writes_nothing_on_a_fresh_root(tmp_path: Path, text: str) -> None:
    layout = Layout(tmp_path / "fresh")
    lt = tmp_path / "lt.json"
    lt.write_text(text)
    with pytest.raises(SubmitError):
        submit(layout, lt)
    assert not layout.root.exists()
