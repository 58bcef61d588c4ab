"""Submit: every rule reported at once, nothing written on failure, atomic batch creation.

Why: an operator launching hundreds of agents must see all mistakes in one pass, a typo must
never be silently ignored, and a batch is either fully on disk or absent
(docs/layout.md#launch-table, docs/layout.md#batch_metajson).
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from phh_engine.interfaces.submit import (
    SubmitError,
    load_launch_table,
    submission_marker,
    submit,
    validate,
)
from phh_engine.models import BatchMeta, HarnessConfig, HarnessSettings
from phh_engine.store.harness_config import materialize
from phh_engine.store.paths import Layout

NOW = datetime(2026, 1, 14, 17, 30, tzinfo=UTC)
SCHEMA = {
    "type": "object",
    "properties": {"answer": {"type": "string"}},
    "required": ["answer"],
    "additionalProperties": False,
}


def goal(n: int) -> str:
    """A batch_goal_summary of exactly n whitespace-separated words."""
    return " ".join(f"word{i}" for i in range(n))


def tree(path: Path) -> dict[str, bytes]:
    """Every file and directory under `path` (with file bytes), to prove nothing changed."""
    if not path.exists():
        return {}
    return {
        str(p.relative_to(path)): (p.read_bytes() if p.is_file() else b"<dir>")
        for p in path.rglob("*")
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A directory holding Launch Tables, prompt and schema files, and a project to work on."""
    src = tmp_path / "tables"
    (src / "prompts").mkdir(parents=True)
    (src / "prompts" / "diagnose.md").write_text("Diagnose the failing test.", encoding="utf-8")
    (src / "schemas").mkdir()
    (src / "schemas" / "answer.json").write_text(json.dumps(SCHEMA), encoding="utf-8")
    (src / "schemas" / "broken.json").write_text('{"type": 12}', encoding="utf-8")
    (src / "project").mkdir()
    return src


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    return Layout(tmp_path / "root")


@pytest.fixture
def config(layout: Layout) -> HarnessConfig:
    return materialize(layout)


def config_with(layout: Layout, **settings: Any) -> HarnessConfig:
    return materialize(layout, HarnessSettings.model_validate(settings))


def resume_table() -> dict[str, Any]:
    """A valid two-step resume batch: step2 continues step1's conversation."""
    return {
        "spec_version": "1.0.0",
        "batch_goal_summary": goal(151),
        "labels": ["nightly"],
        "tags": ["repo-a"],
        "working_root": "project",
        "execution_policy": {"model": "gpt-5.5"},
        "timeouts": {"step_seconds": 120},
        "retries": {"max_attempts": 5},
        "packs": {"house": "Follow the house rules."},
        "jobs": [
            {
                "working_directory": "svc",
                "steps": [
                    {
                        "step_id": "step1",
                        "prompt_ref": "prompts/diagnose.md",
                        "pack_id": "house",
                        "output_schema_ref": "schemas/answer.json",
                    },
                    {
                        "step_id": "step2",
                        "prompt": "Implement the fix.",
                        "append_prompt": "Keep the diff small.",
                        "resume_from": {"step_id": "step1"},
                        "retry_policy": {"backoff_seconds": 1},
                        "timeout_seconds": 60,
                    },
                ],
            }
        ],
    }


def write_table(directory: Path, table: dict[str, Any], name: str = "batch.json") -> Path:
    path = directory / name
    path.write_text(json.dumps(table, indent=2), encoding="utf-8")
    return path


def refused(layout: Layout, source: Path | dict[str, Any], **kwargs: Any) -> SubmitError:
    """Submit expecting refusal; also proves the runs/ tree was left byte-for-byte unchanged."""
    before = tree(layout.runs)
    with pytest.raises(SubmitError) as info:
        submit(layout, source, now=NOW, **kwargs)
    assert tree(layout.runs) == before
    assert str(info.value) == "\n".join(f"{i.path}: {i.message}" for i in info.value.issues)
    return info.value


# --------------------------------------------------------------------------- the valid case
def test_valid_resume_batch_normalizes(
    workdir: Path, layout: Layout, config: HarnessConfig
) -> None:
    path = write_table(workdir, resume_table())
    result = submit(layout, path, config=config, now=NOW)
    assert result.accepted_job_ids == ["job_001"] and not result.existing
    assert result.batch_id.startswith("batch_20260114T173000Z_")

    meta = BatchMeta.model_validate_json(layout.batch_meta(result.batch_id).read_bytes())
    assert meta.submitted_at == NOW
    assert meta.launch_table_ref == str(path.resolve())
    assert meta.launch_table_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert meta.labels == ["nightly", "repo-a"]
    assert meta.working_root == str((workdir / "project").resolve())

    version_file = layout.harness_config_versions / f"{meta.harness_config_version}.json"
    assert meta.harness_config_version == config.harness_config_version
    assert json.loads(version_file.read_text())["harness_config_version"] == (
        meta.harness_config_version
    )

    (job,) = meta.jobs
    assert job.working_directory == str((workdir / "project" / "svc").resolve())
    assert job.workspace_policy == "shared"
    step1, step2 = job.steps
    assert step1.prompt == "Follow the house rules.\n\nDiagnose the failing test."
    assert step1.prompt_sha256 == hashlib.sha256(step1.prompt.encode()).hexdigest()
    assert step1.prompt_ref == str((workdir / "prompts" / "diagnose.md").resolve())
    assert step1.output_schema == SCHEMA
    assert step1.depends_on == []
    assert step1.timeout_seconds == 120
    assert step1.retry_policy.max_attempts == 5 and step1.retry_policy.backoff_seconds == 30

    assert step2.depends_on == ["step1"]  # implied by resume_from
    assert step2.prompt == "Implement the fix."
    assert step2.append_prompt == "Keep the diff small."  # kept apart: the runner appends it
    assert step2.timeout_seconds == 60
    assert step2.retry_policy.max_attempts == 5 and step2.retry_policy.backoff_seconds == 1
    assert step2.resume_from is not None and step2.resume_from.selector == "latest_successful"

    eff = meta.effective_defaults
    assert eff.execution_policy.model == "gpt-5.5"
    assert eff.execution_policy.sandbox == config.defaults.execution_policy.sandbox
    assert eff.timeouts.step_seconds == 120
    assert eff.retries.max_attempts == 5 and eff.retries.mode == "fresh"
    assert eff.retention_policy == config.defaults.retention_policy
    assert eff.heartbeat_stale_after_seconds == 2700
    assert not any(p.name.startswith(".tmp-") for p in layout.runs.iterdir())


def test_dict_source_resolves_from_cwd_and_hashes_canonical_json(
    workdir: Path, layout: Layout, config: HarnessConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(workdir)
    table = resume_table()
    table["batch_id"] = "b1"
    result = submit(layout, table, config=config, now=NOW)
    meta = BatchMeta.model_validate_json(layout.batch_meta("b1").read_bytes())
    assert result.batch_id == "b1" and meta.launch_table_ref is None
    canonical = json.dumps(table, sort_keys=True, separators=(",", ":")).encode()
    assert meta.launch_table_sha256 == hashlib.sha256(canonical).hexdigest()
    assert meta.working_root == str((workdir / "project").resolve())


def test_explicit_dependency_kept_first_and_not_duplicated(
    workdir: Path, config: HarnessConfig
) -> None:
    table = resume_table()
    steps = table["jobs"][0]["steps"]
    steps.insert(0, {"step_id": "step0", "prompt": "prepare"})
    steps[2]["depends_on"] = ["step0", "step1", "step0"]
    meta = validate(table, source_path=write_table(workdir, table), config=config, now=NOW)
    assert meta.jobs[0].steps[2].depends_on == ["step0", "step1"]


def test_yaml_launch_table_accepted(
    workdir: Path, layout: Layout, config: HarnessConfig
) -> None:
    path = workdir / "batch.yaml"
    path.write_text(yaml.safe_dump(resume_table()), encoding="utf-8")
    raw, data = load_launch_table(path)
    assert data == path.read_bytes() and raw["packs"] == {"house": "Follow the house rules."}
    result = submit(layout, path, config=config, now=NOW)
    assert layout.batch_meta(result.batch_id).exists()


def test_yaml_syntax_error_names_line_and_column(workdir: Path, layout: Layout) -> None:
    path = workdir / "batch.yml"
    path.write_text("jobs:\n  - steps: [\n", encoding="utf-8")
    error = refused(layout, path)
    assert "invalid YAML at line" in str(error) and "column" in str(error)


def test_dedupe_returns_the_existing_batch(
    workdir: Path, layout: Layout, config: HarnessConfig
) -> None:
    path = write_table(workdir, resume_table())
    first = submit(layout, path, config=config, dedupe=True, now=NOW)
    before = tree(layout.runs)
    second = submit(layout, path, config=config, dedupe=True, now=NOW)
    assert second.existing and second.batch_id == first.batch_id
    assert second.accepted_job_ids == first.accepted_job_ids
    assert tree(layout.runs) == before  # nothing created
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    marker = json.loads(submission_marker(layout, sha).read_text())
    assert marker["batch_id"] == first.batch_id
    # Without dedupe an identical table is simply a new batch.
    third = submit(layout, path, config=config, now=NOW)
    assert third.batch_id != first.batch_id


def test_existing_batch_id_is_an_issue(
    workdir: Path, layout: Layout, config: HarnessConfig
) -> None:
    table = resume_table()
    table["batch_id"] = "b1"
    path = write_table(workdir, table)
    submit(layout, path, config=config, now=NOW)
    error = refused(layout, path, config=config)
    assert [i.path for i in error.issues] == ["batch_id"]
    assert "already exists" in str(error)


# --------------------------------------------------------------------------- invalid classes
Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    def mutate(table: dict[str, Any]) -> None:
        *parents, last = path.split("/")
        node: Any = table
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value
    return mutate


def _delete(key: str) -> Mutation:
    def mutate(table: dict[str, Any]) -> None:
        del table[key]
    return mutate


def _second_job(job_id: str | None) -> Mutation:
    def mutate(table: dict[str, Any]) -> None:
        table["jobs"][0]["job_id"] = "j1"
        extra = copy.deepcopy(table["jobs"][0])
        extra["job_id"] = job_id
        table["jobs"].append(extra)
    return mutate


def _id_clash(table: dict[str, Any]) -> None:
    """jobs[1] has no id and would be job_002, which jobs[0] names explicitly."""
    _second_job(None)(table)
    table["jobs"][0]["job_id"] = "job_002"
    del table["jobs"][1]["job_id"]


INVALID: list[tuple[str, Mutation, str, str]] = [
    ("missing goal", _delete("batch_goal_summary"),
     "batch_goal_summary", "required key 'batch_goal_summary' is missing"),
    ("short goal", _set("batch_goal_summary", goal(150)),
     "batch_goal_summary", "has 150 words; it must have more than 150"),
    ("unknown dependency", _set("jobs/0/steps/1/depends_on", ["stepX"]),
     "jobs[0].steps[1].depends_on[0]", "unknown step 'stepX'"),
    ("self dependency", _set("jobs/0/steps/0/depends_on", ["step1"]),
     "jobs[0].steps[0].depends_on[0]", "cannot depend on itself"),
    ("unknown resume source", _set("jobs/0/steps/1/resume_from", {"step_id": "stp1"}),
     "jobs[0].steps[1].resume_from.step_id", "did you mean 'step1'?"),
    ("cycle", _set("jobs/0/steps/0/depends_on", ["step2"]),
     "jobs[0].steps", "cycle: step1 -> step2 -> step1"),
    ("bad id", _set("jobs/0/steps/0/step_id", "../x"),
     "jobs[0].steps[0].step_id", "invalid id '../x'"),
    ("duplicate job ids", _second_job("j1"),
     "jobs[1].job_id", "duplicate job_id 'j1'"),
    ("duplicate step ids", _set("jobs/0/steps/1/step_id", "step1"),
     "jobs[0].steps[1].step_id", "duplicate step_id 'step1'"),
    ("missing prompt file", _set("jobs/0/steps/0/prompt_ref", "prompts/nope.md"),
     "jobs[0].steps[0].prompt_ref", "prompt file not found"),
    ("invalid output schema", _set("jobs/0/steps/0/output_schema_ref", "schemas/broken.json"),
     "jobs[0].steps[0].output_schema_ref", "not a valid JSON Schema"),
    ("missing output schema", _set("jobs/0/steps/0/output_schema_ref", "schemas/none.json"),
     "jobs[0].steps[0].output_schema_ref", "output schema file not found"),
    ("unknown key", _set("jobs/0/steps/1/depnds_on", ["step1"]),
     "jobs[0].steps[1].depnds_on", "unknown key 'depnds_on' in jobs[0].steps[1] "
     "(did you mean 'depends_on'?)"),
    ("unknown pack", _set("jobs/0/steps/0/pack_id", "hose"),
     "jobs[0].steps[0].pack_id", "unknown pack 'hose'"),
    ("both prompts", _set("jobs/0/steps/1/prompt_ref", "prompts/diagnose.md"),
     "jobs[0].steps[1]", "exactly one of 'prompt' or 'prompt_ref'"),
    ("generated id clash", _id_clash, "jobs[1]", "would get 'job_002'"),
    ("unknown runner", _set("jobs/0/steps/0/runner_affinity", {"runner_id": "r9"}),
     "jobs[0].steps[0].runner_affinity.runner_id", "unknown runner 'r9'"),
]


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [pytest.param(m, p, msg, id=name) for name, m, p, msg in INVALID],
)
def test_each_invalid_class_is_refused(
    workdir: Path, layout: Layout, config: HarnessConfig,
    mutate: Mutation, path: str, message: str,
) -> None:
    table = resume_table()
    mutate(table)
    error = refused(layout, write_table(workdir, table), config=config)
    hits = [i for i in error.issues if i.path == path and message in i.message]
    assert hits, f"no issue at {path} containing {message!r} in:\n{error}"


def test_bad_json_names_line_and_column(workdir: Path, layout: Layout) -> None:
    path = workdir / "batch.json"
    path.write_text('{\n  "batch_goal_summary": "x",\n  "jobs": [,]\n}\n', encoding="utf-8")
    error = refused(layout, path)
    assert [i.path for i in error.issues] == ["$"]
    assert "invalid JSON at line 3, column 12" in str(error)


def test_duplicate_json_key_is_not_silently_dropped(
    workdir: Path, layout: Layout, config: HarnessConfig
) -> None:
    text = json.dumps(resume_table()).replace(
        '"step_id": "step2"', '"step_id": "step2", "prompt": "first"', 1
    )
    path = workdir / "batch.json"
    path.write_text(text, encoding="utf-8")
    error = refused(layout, path, config=config)
    assert any(i.path == "jobs[0].steps[1].prompt" and "more than once" in i.message
               for i in error.issues)


def test_disallowed_override_named(workdir: Path, layout: Layout) -> None:
    config = config_with(layout, allowed_overrides=["working_root", "execution_policy.model"])
    table = resume_table()
    table["execution_policy"] = {"model": "gpt-5.5", "sandbox": "danger-full-access"}
    table["concurrency"] = 4
    error = refused(layout, write_table(workdir, table), config=config)
    paths = {i.path for i in error.issues}
    assert paths == {
        "execution_policy.sandbox", "timeouts", "retries", "concurrency",
        "jobs[0].steps[1].retry_policy.backoff_seconds", "jobs[0].steps[1].timeout_seconds",
    }
    assert "override of 'concurrency' is not allowed" in str(error)


@pytest.mark.parametrize(
    ("limits", "path", "message"),
    [
        ({"max_jobs_per_batch": 1}, "jobs", "limits.max_jobs_per_batch = 1"),
        ({"max_steps_per_job": 1}, "jobs[0].steps", "limits.max_steps_per_job = 1"),
        ({"max_prompt_bytes": 20}, "jobs[0].steps[0].prompt_ref", "limits.max_prompt_bytes = 20"),
    ],
)
def test_limit_exceeded(
    workdir: Path, layout: Layout, limits: dict[str, int], path: str, message: str
) -> None:
    config = config_with(layout, limits=limits)
    table = resume_table()
    table["jobs"].append(copy.deepcopy(table["jobs"][0]))
    table["jobs"][0]["job_id"], table["jobs"][1]["job_id"] = "a", "b"
    error = refused(layout, write_table(workdir, table), config=config)
    assert any(i.path == path and message in i.message for i in error.issues), str(error)


def test_every_problem_of_one_file_reported_together(workdir: Path, layout: Layout) -> None:
    config = config_with(layout, allowed_overrides=["working_root", "timeouts", "retries"])
    table = resume_table()
    table["batch_goal_summary"] = goal(12)
    table["concurrency"] = 2
    table["colour"] = "blue"
    job = table["jobs"][0]
    job["steps"][0]["depends_on"] = ["step2"]
    job["steps"][0]["prompt_ref"] = "prompts/missing.md"
    job["steps"][0]["output_schema_ref"] = "schemas/broken.json"
    job["steps"][1]["depnds_on"] = []
    job["steps"].append({"step_id": "../x", "prompt": "p", "depends_on": ["ghost"]})
    job["steps"].append({"step_id": "step1", "prompt": "dup"})
    table["jobs"].append({"job_id": "twin", "steps": [{"step_id": "s", "prompt": "p"}]})
    table["jobs"].append({"job_id": "twin", "steps": [{"step_id": "s", "prompt": "p"}]})
    error = refused(layout, write_table(workdir, table), config=config)
    paths = [i.path for i in error.issues]
    for expected in [
        "batch_goal_summary", "concurrency", "colour", "execution_policy",
        "jobs[0].steps[0].prompt_ref", "jobs[0].steps[0].output_schema_ref",
        "jobs[0].steps[1].depnds_on", "jobs[0].steps[2].step_id",
        "jobs[0].steps[2].depends_on[0]", "jobs[0].steps[3].step_id", "jobs[0].steps",
        "jobs[2].job_id",
    ]:
        assert expected in paths, f"{expected} missing from:\n{error}"
    assert "has 12 words" in str(error)
    assert "did you mean" in str(error)
    assert layout.runs.exists()  # created by materialize, but holds no batch
    assert sorted(p.name for p in layout.runs.iterdir()) == ["_system"]


def test_nothing_written_when_runs_absent(workdir: Path, tmp_path: Path) -> None:
    layout = Layout(tmp_path / "fresh")
    config = HarnessConfig.model_validate(
        {**HarnessSettings().model_dump(), "harness_config_version": "hc_test",
         "written_at": NOW}
    )
    table = resume_table()
    table["jobs"][0]["steps"][0]["depends_on"] = ["nope"]
    refused(layout, write_table(workdir, table), config=config)
    assert not layout.root.exists()


def test_nothing_written_without_config_on_a_fresh_root(workdir: Path, tmp_path: Path) -> None:
    """Even the harness config snapshot waits until the Launch Table is accepted."""
    layout = Layout(tmp_path / "fresh")
    table = resume_table()
    table["batch_goal_summary"] = goal(3)
    refused(layout, write_table(workdir, table))
    assert not layout.root.exists()
    result = submit(layout, write_table(workdir, resume_table()), now=NOW)
    meta = BatchMeta.model_validate_json(layout.batch_meta(result.batch_id).read_bytes())
    snapshot = json.loads(layout.harness_config.read_text())
    assert snapshot["harness_config_version"] == meta.harness_config_version
    assert (layout.harness_config_versions / f"{meta.harness_config_version}.json").exists()


def test_yaml_merge_keys_are_not_duplicates_but_repeated_keys_are(
    workdir: Path, layout: Layout, config: HarnessConfig
) -> None:
    path = workdir / "batch.yaml"
    text = (
        "x-step: &step {step_id: s, prompt: shared}\n"
        f"batch_goal_summary: {goal(151)}\n"
        "jobs:\n"
        "  - steps:\n"
        "      - {<<: *step, step_id: a}\n"
        "      - {<<: *step, step_id: b, step_id: c}\n"
    )
    path.write_text(text, encoding="utf-8")
    raw, _ = load_launch_table(path)
    error = refused(layout, path, config=config)
    paths = [i.path for i in error.issues]
    assert raw["jobs"][0]["steps"][0] == {"step_id": "a", "prompt": "shared"}
    assert "jobs[0].steps[1].step_id" in paths  # written twice in one mapping
    assert "jobs[0].steps[0].step_id" not in paths  # overriding a merged key is fine
    assert '["x-step"]' in paths  # and the anchor holder is an unknown key


def test_concurrent_identical_dedupe_submits_create_one_batch(
    workdir: Path, layout: Layout, config: HarnessConfig
) -> None:
    """The marker check and batch creation happen under one lock, so racing submits agree."""
    path = write_table(workdir, resume_table())
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda _: submit(layout, path, config=config, dedupe=True, now=NOW), range(16)
        ))
    assert len({r.batch_id for r in results}) == 1
    assert sum(not r.existing for r in results) == 1
    assert [p.name for p in layout.runs.iterdir() if p.name.startswith("batch_")] == [
        results[0].batch_id
    ]
