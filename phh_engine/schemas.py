"""JSON Schemas of every phh file, generated from the pydantic models (the single source).

Why generated: hand-written schemas drift from the code. `--write` refreshes `schemas/` (for
people and other tools) and the packaged Run Report schema (an installed phh passes it to Codex
as `--output-schema`, so it cannot live only in the repository); `--check` fails on drift.

    python -m phh_engine.schemas --write | --check
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaValue
from pydantic_core import core_schema

from .models import (
    ID_PATTERN,
    AttemptMeta,
    AttemptState,
    BatchMeta,
    BatchScoreboard,
    CandidateBase,
    CatalogFileRecord,
    CurrentIndex,
    HarnessConfig,
    LaunchTable,
    Promotion,
    RunnerHealth,
    RunReport,
    SystemScoreboard,
    check_id,
)
from .models.pause import StartPause
from .runners.credentials import CredentialPause

DRAFT = "https://json-schema.org/draft/2020-12/schema"
REPO_SCHEMAS_DIR = Path(__file__).resolve().parents[1] / "schemas"
PACKAGE_DATA_DIR = Path(__file__).resolve().parent / "data"
RUN_REPORT_FILE = "run_report.schema.json"

#: file name -> model; the file names are part of the public surface (docs/statuses.md#success,
# docs/interfaces.md#cli).
MODELS: dict[str, type[BaseModel]] = {
    "launch_table.schema.json": LaunchTable,
    "harness_config.schema.json": HarnessConfig,
    "batch_meta.schema.json": BatchMeta,
    "meta.schema.json": AttemptMeta,
    "state.schema.json": AttemptState,
    "current.schema.json": CurrentIndex,
    RUN_REPORT_FILE: RunReport,
    "runner_health.schema.json": RunnerHealth,
    "catalog_file.schema.json": CatalogFileRecord,
    "pause.schema.json": StartPause,
    "scoreboard.batch.schema.json": BatchScoreboard,
    "scoreboard.system.schema.json": SystemScoreboard,
    "credential_pause.schema.json": CredentialPause,
    "promotion.schema.json": Promotion,
    "candidate_base.schema.json": CandidateBase,
}

# Keywords OpenAI strict structured output accepts; anything else makes Codex's request fail.
_STRICT_KEYWORDS = frozenset(
    {"type", "properties", "required", "additionalProperties", "items", "enum", "const",
     "anyOf", "description", "title"}
)
_SUBSCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties", "dependentSchemas")
_SUBSCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SUBSCHEMA_ONE = ("items", "additionalProperties", "not", "contains", "if", "then", "else",
                  "propertyNames", "unevaluatedProperties", "unevaluatedItems")


class _PhhJsonSchema(GenerateJsonSchema):
    """Pydantic's generator, plus the id pattern that an AfterValidator alone cannot express."""

    def function_after_schema(
        self, schema: core_schema.AfterValidatorFunctionSchema
    ) -> JsonSchemaValue:
        if schema["function"].get("function") is check_id:
            return {"type": "string", "pattern": ID_PATTERN}
        return super().function_after_schema(schema)


def _walk(node: Any, fn: Callable[[dict[str, Any]], None]) -> None:
    """Apply `fn` to every subschema (not to property names or `default`/`enum` data)."""
    if not isinstance(node, dict):
        return
    fn(node)
    for key in _SUBSCHEMA_MAPS:
        sub = node.get(key)
        if isinstance(sub, dict):
            for child in sub.values():
                _walk(child, fn)
    for key in _SUBSCHEMA_LISTS:
        for child in node.get(key) or []:
            _walk(child, fn)
    for key in _SUBSCHEMA_ONE:
        _walk(node.get(key), fn)


def _drop_titles(node: dict[str, Any]) -> None:
    node.pop("title", None)


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    """Replace local `$ref`s by their definitions (the Run Report has no recursion)."""
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            target = copy.deepcopy(defs[ref.removeprefix("#/$defs/")])
            extra = {k: v for k, v in node.items() if k != "$ref"}
            return _inline_refs({**target, **extra}, defs)
        return {k: _inline_refs(v, defs) for k, v in node.items() if k != "$defs"}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _make_strict(node: dict[str, Any]) -> None:
    """Strict structured output: every property required, no extra keys, no defaults."""
    node.pop("default", None)
    if node.get("type") == "object" or "properties" in node:
        props = node.setdefault("properties", {})
        node["required"] = list(props)
        node["additionalProperties"] = False
    unsupported = sorted(set(node) - _STRICT_KEYWORDS)
    if unsupported:
        raise ValueError(f"Run Report schema uses {unsupported}: not allowed in strict mode")


def run_report_schema(model: type[BaseModel] = RunReport) -> dict[str, Any]:
    """The Run Report schema in the exact shape Codex's `--output-schema` (strict) accepts."""
    raw = model.model_json_schema(schema_generator=_PhhJsonSchema)
    schema: dict[str, Any] = _inline_refs(raw, raw.get("$defs", {}))
    title = schema.get("title")
    _walk(schema, _drop_titles)
    _walk(schema, _make_strict)
    if title:
        schema["title"] = title
    return schema


def model_schema(model: type[BaseModel]) -> dict[str, Any]:
    """A file's schema: what phh accepts when it reads that file (pydantic validation mode)."""
    schema = model.model_json_schema(schema_generator=_PhhJsonSchema)
    title = schema.get("title")
    _walk(schema, _drop_titles)  # "Batch Id" on batch_id is noise; $defs keys name the types
    if title:
        schema["title"] = title
    return {"$schema": DRAFT, **schema}


def generate() -> dict[str, dict[str, Any]]:
    """Every schema, by file name."""
    return {
        name: run_report_schema(model) if name == RUN_REPORT_FILE else model_schema(model)
        for name, model in MODELS.items()
    }


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def expected_files(
    repo_dir: Path | None = None, package_dir: Path | None = None
) -> dict[Path, str]:
    """Every file --write produces, with its exact text (the packaged Run Report included)."""
    texts = {name: render(schema) for name, schema in generate().items()}
    files = {(repo_dir or REPO_SCHEMAS_DIR) / name: text for name, text in texts.items()}
    files[(package_dir or PACKAGE_DATA_DIR) / RUN_REPORT_FILE] = texts[RUN_REPORT_FILE]
    return files


def default_run_report_schema_path() -> Path:
    """The packaged Run Report schema: present in any install, unlike the repo's schemas/."""
    return PACKAGE_DATA_DIR / RUN_REPORT_FILE


def drifted(files: dict[Path, str] | None = None) -> list[Path]:
    """Files whose content on disk differs from what the models generate (or that are missing)."""
    out: list[Path] = []
    for path, text in (files or expected_files()).items():
        try:
            on_disk = path.read_text(encoding="utf-8")
        except OSError:
            on_disk = None
        if on_disk != text:
            out.append(path)
    return out


def write(files: dict[Path, str] | None = None) -> list[Path]:
    """Write changed files only (so mtimes mean something); returns what was written."""
    files = files or expected_files()
    changed = drifted(files)
    for path in changed:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(files[path], encoding="utf-8")
        tmp.replace(path)
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m phh_engine.schemas", description="Generate or check phh JSON Schemas."
    )
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--write", action="store_true", help="regenerate the schema files")
    group.add_argument("--check", action="store_true", help="exit 1 if any file drifted")
    args = parser.parse_args(argv)
    if args.write:
        for path in write():
            print(f"wrote {path}")
        return 0
    stale = drifted()
    for path in stale:
        print(f"drifted: {path} (run `python -m phh_engine.schemas --write`)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
