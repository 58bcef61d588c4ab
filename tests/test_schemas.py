"""Published JSON Schemas: in sync with the models, valid, and the Run Report strict-mode safe.

Why: other tools read `schemas/`, and Codex sends the Run Report schema to the model in strict
structured-output mode, which rejects the whole request if one object level is not strict.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from jsonschema import Draft202012Validator

from phh_engine import schemas
from phh_engine.models import RunReport

GENERATED = schemas.generate()


def _objects(node: Any, where: str = "$") -> list[tuple[str, dict[str, Any]]]:
    """Every object-typed subschema with its location."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node:
            found.append((where, node))
        for key, value in node.items():
            if key not in ("enum", "const", "default"):
                found += _objects(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _objects(value, f"{where}[{i}]")
    return found


def test_every_expected_file_is_generated() -> None:
    assert set(GENERATED) == {
        "launch_table.schema.json", "harness_config.schema.json", "batch_meta.schema.json",
        "meta.schema.json", "state.schema.json", "current.schema.json", "run_report.schema.json",
        "runner_health.schema.json", "pause.schema.json", "scoreboard.batch.schema.json",
        "scoreboard.system.schema.json", "credential_pause.schema.json",
        "promotion.schema.json", "candidate_base.schema.json", "catalog_file.schema.json",
    }


def test_files_on_disk_match_the_models() -> None:
    drift = schemas.drifted()
    assert not drift, f"run `python -m phh_engine.schemas --write`: {drift}"


def test_files_are_sorted_indented_with_trailing_newline() -> None:
    for path, text in schemas.expected_files().items():
        assert text.endswith("}\n")
        assert text == json.dumps(json.loads(text), indent=2, sort_keys=True,
                                  ensure_ascii=False) + "\n", path


def test_packaged_run_report_schema_is_the_same_file() -> None:
    packaged = schemas.default_run_report_schema_path()
    assert packaged.is_file() and packaged.parent.name == "data"
    assert packaged.read_text() == (schemas.REPO_SCHEMAS_DIR / "run_report.schema.json").read_text()


@pytest.mark.parametrize("name", sorted(GENERATED))
def test_schema_is_valid_json_schema(name: str) -> None:
    Draft202012Validator.check_schema(GENERATED[name])


def test_ids_carry_the_path_segment_pattern() -> None:
    props = GENERATED["state.schema.json"]["properties"]
    assert props["run_id"] == {"pattern": schemas.ID_PATTERN, "type": "string"}
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate("../x", props["run_id"])


def test_run_report_schema_is_strict_at_every_object_level() -> None:
    rr = GENERATED["run_report.schema.json"]
    objects = _objects(rr)
    assert len(objects) >= 2  # the report and its artifact items
    for where, node in objects:
        assert node.get("additionalProperties") is False, where
        assert sorted(node["required"]) == sorted(node["properties"]), where
    text = json.dumps(rr)
    for noise in ('"default"', '"$ref"', '"$defs"', '"$schema"'):
        assert noise not in text
    assert set(rr["required"]) == set(RunReport.model_fields)


def test_strictness_rewrite_makes_optional_fields_required_and_nullable() -> None:
    """A future optional field must still produce a schema Codex accepts."""
    from pydantic import BaseModel, ConfigDict

    class Report(BaseModel):
        model_config = ConfigDict(extra="forbid")
        summary: str
        note: str | None = None

    out = schemas.run_report_schema(Report)
    assert out["required"] == ["summary", "note"]
    assert out["properties"]["note"] == {"anyOf": [{"type": "string"}, {"type": "null"}]}


def test_strictness_rejects_keywords_strict_mode_does_not_support() -> None:
    from pydantic import BaseModel, Field

    class Report(BaseModel):
        tags: list[str] = Field(min_length=1)

    with pytest.raises(ValueError, match="minItems"):
        schemas.run_report_schema(Report)


GOOD_REPORT: dict[str, Any] = {
    "schema_version": "1.0.0",
    "status": "ok",
    "summary": "Fixed the flaky test.",
    "files_read": ["tests/test_pay.py"],
    "files_written": ["src/pay.py"],
    "artifacts": [{"path": "fix.patch", "kind": "patch", "description": "the change"}],
}


def test_sample_run_report_validates() -> None:
    schema = json.loads(schemas.default_run_report_schema_path().read_text())
    jsonschema.validate(GOOD_REPORT, schema)
    RunReport.model_validate(GOOD_REPORT)


@pytest.mark.parametrize("bad", [
    {k: v for k, v in GOOD_REPORT.items() if k != "summary"},
    {**GOOD_REPORT, "status": "done"},
    {**GOOD_REPORT, "extra": 1},
    {**GOOD_REPORT, "artifacts": [{"path": "x", "kind": "patch"}]},
    {**GOOD_REPORT, "artifacts": [{"path": "x", "kind": "zip", "description": "d"}]},
    {**GOOD_REPORT, "files_read": "a.py"},
])
def test_wrong_run_report_fails(bad: dict[str, Any]) -> None:
    schema = json.loads(schemas.default_run_report_schema_path().read_text())
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_check_and_write_cli(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    files = schemas.expected_files(tmp_path / "schemas", tmp_path / "data")
    assert sorted(p.name for p in schemas.drifted(files))[0] == "batch_meta.schema.json"
    written = schemas.write(files)
    assert len(written) == len(GENERATED) + 1 and schemas.drifted(files) == []
    (tmp_path / "schemas" / "state.schema.json").write_text("{}\n")
    assert schemas.drifted(files) == [tmp_path / "schemas" / "state.schema.json"]
    assert schemas.write(files) == [tmp_path / "schemas" / "state.schema.json"]

    monkeypatch.setattr(schemas, "REPO_SCHEMAS_DIR", tmp_path / "schemas")
    monkeypatch.setattr(schemas, "PACKAGE_DATA_DIR", tmp_path / "data")
    (tmp_path / "data" / "run_report.schema.json").unlink()
    assert schemas.main(["--check"]) == 1
    assert "data/run_report.schema.json" in capsys.readouterr().err
    assert schemas.main(["--write"]) == 0 and schemas.main(["--check"]) == 0
    # the real CLI against the real repo: no drift, exit 0
    proc = subprocess.run([sys.executable, "-m", "phh_engine.schemas", "--check"],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


def test_no_field_may_be_null_and_required() -> None:
    """Files are written without their null values (`store.files.to_bytes`): a field that
    may be null must therefore have a default, or the file it was left out of no longer
    reads back (a timed-out verifier's state.json read as `queued` forever)."""
    import importlib
    import inspect
    import pkgutil
    import typing

    from pydantic import BaseModel

    import phh_engine.models as models

    bad = []
    for info in pkgutil.iter_modules(models.__path__):
        mod = importlib.import_module(f"phh_engine.models.{info.name}")
        for name, obj in vars(mod).items():
            if inspect.isclass(obj) and issubclass(obj, BaseModel):
                for fname, f in obj.model_fields.items():
                    if f.is_required() and type(None) in typing.get_args(f.annotation):
                        bad.append(f"{name}.{fname}")
    assert bad == []
