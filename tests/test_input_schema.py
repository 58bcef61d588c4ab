"""Issue 11 B3: an output schema the model API refuses in strict mode is refused at submit,
naming the JSON pointer that breaks the rules."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import GOAL
from test_api import serving

from phh_engine.interfaces.strict_schema import strict_problems
from phh_engine.interfaces.submit import submit
from phh_engine.schemas import default_run_report_schema_path, run_report_schema
from phh_engine.store.paths import Layout

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")
EXAMPLE = {"type": "object", "properties": {"summary": {"type": "string"}}}
SCHEMA_PATH = "jobs[0].steps[0].output_schema_ref"


def table(root: Path, schema: Path) -> dict[str, Any]:
    return {"batch_goal_summary": GOAL, "working_root": str(root),
            "jobs": [{"job_id": "j1", "steps": [{"step_id": "s1", "prompt": "hi",
                                                 "output_schema_ref": str(schema)}]}]}


def batch_dirs(layout: Layout) -> list[str]:
    if not layout.runs.is_dir():
        return []
    return sorted(n for n in os.listdir(layout.runs) if not n.startswith(("_", ".")))


def test_the_issue_example_is_refused_at_submit_naming_the_pointer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    schema = tmp_path / "summary.schema.json"
    schema.write_text(json.dumps(EXAMPLE, separators=(",", ":")))
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(table(tmp_path, schema)))
    res = subprocess.run([PHH, "--root", str(root), "submit", str(lt)], capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 2, res
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith(SCHEMA_PATH + ":")]
    assert any('at #: every object needs "additionalProperties": false' in ln for ln in lines)
    assert any("at #: every property must be listed in required" in ln and "summary" in ln
               for ln in lines), res.stderr
    assert batch_dirs(Layout(root)) == []
    with serving(Layout(root)) as client:
        r = client.post("/v1/batches", json={"launch_table": table(tmp_path, schema)})
        assert r.status_code == 422, r.text
        errors = r.json()["errors"]
        assert errors and all(e["path"] == SCHEMA_PATH for e in errors)
        assert "strict" in errors[0]["message"]
    assert batch_dirs(Layout(root)) == []


@pytest.mark.parametrize(("schema", "pointer", "words"), [
    ({"type": "array", "items": {"type": "string"}}, "", "root must be an object"),
    ({"anyOf": [{"type": "object", "properties": {}, "required": [],
                 "additionalProperties": False}]}, "/anyOf", "root schema cannot be anyOf"),
    ({"type": "object", "additionalProperties": True, "properties": {}, "required": []},
     "/additionalProperties", "additionalProperties"),
    ({"type": "object", "additionalProperties": False, "required": ["a"],
      "properties": {"a": {"type": "object", "properties": {"b": {"type": "string"}},
                           "required": ["b"]}}}, "/properties/a", "additionalProperties"),
    ({"type": "object", "additionalProperties": False, "required": ["a"],
      "properties": {"a": {"type": "array", "items": {
          "type": "object", "properties": {"x/y": {"type": "string"}, "z": {"type": "string"}},
          "required": ["x/y"], "additionalProperties": False}}}},
     "/properties/a/items/required", "missing: z"),
    ({"type": "object", "additionalProperties": False, "required": ["a"],
      "properties": {"a": {"type": "string", "minLength": 1}}},
     "/properties/a/minLength", "not supported"),
    ({"type": "object", "additionalProperties": False, "required": ["a"],
      "properties": {"a": {"oneOf": [{"type": "string"}, {"type": "null"}]}}},
     "/properties/a/oneOf", "not supported"),
    ({"type": "object", "additionalProperties": False, "required": ["a"],
      "properties": {"a": {"type": "string", "format": "uri"}}},
     "/properties/a/format", "not supported"),
    ({"type": "object", "additionalProperties": False, "required": ["a"],
      "properties": {"a": {"type": "string", "default": "x"}}},
     "/properties/a/default", "not supported"),
    ({"type": "object", "additionalProperties": False, "required": ["a", "ghost"],
      "properties": {"a": {"type": "string"}}}, "/required", "ghost"),
    ({"type": "object", "additionalProperties": False, "required": ["a"],
      "properties": {"a": {"$ref": "#/$defs/missing"}}}, "/properties/a/$ref", "inside"),
])
def test_strict_mode_rules_name_the_pointer(tmp_path: Path, schema: dict[str, Any],
                                            pointer: str, words: str) -> None:
    problems = strict_problems(schema)
    assert any(p == pointer and words in m for p, m in problems), problems
    path = tmp_path / "s.json"
    path.write_text(json.dumps(schema))
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(table(tmp_path, path)))
    from phh_engine.interfaces.submit import SubmitError

    with pytest.raises(SubmitError) as err:
        submit(Layout(tmp_path / "root"), lt)
    assert any(i.path == SCHEMA_PATH and f"at #{pointer}: " in i.message
               for i in err.value.issues), err.value.issues


def test_nesting_and_size_limits() -> None:
    inner: dict[str, Any] = {"type": "string"}
    for _ in range(11):
        inner = {"type": "object", "properties": {"x": inner}, "required": ["x"],
                 "additionalProperties": False}
    assert any("nested more than 10" in m for _, m in strict_problems(inner))
    wide = {"type": "object", "additionalProperties": False, "required": ["e"],
            "properties": {"e": {"type": "string", "enum": [str(i) for i in range(1001)]}}}
    assert any("1001 enum values" in m for _, m in strict_problems(wide))


def test_valid_strict_schemas_pass_including_the_bundled_run_report(tmp_path: Path) -> None:
    bundled = json.loads(default_run_report_schema_path().read_text())
    assert strict_problems(bundled) == []
    assert strict_problems(run_report_schema()) == []
    good = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object", "additionalProperties": False, "required": ["summary", "items", "n"],
        "properties": {
            "summary": {"type": ["string", "null"], "description": "optional: may be null"},
            "items": {"type": "array", "minItems": 0, "items": {"$ref": "#/$defs/item"}},
            "n": {"anyOf": [{"type": "integer", "minimum": 0}, {"type": "null"}]},
        },
        "$defs": {"item": {"type": "object", "additionalProperties": False,
                           "required": ["id"], "properties": {"id": {"type": "string",
                                                                     "format": "uuid"}}}},
    }
    assert strict_problems(good) == []
    path = tmp_path / "good.json"
    path.write_text(json.dumps(good))
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(table(tmp_path, path)))
    res = submit(Layout(tmp_path / "root"), lt)
    assert res.accepted_job_ids == ["j1"]
