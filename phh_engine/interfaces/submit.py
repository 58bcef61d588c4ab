"""Submit a Launch Table (docs/layout.md#launch-table, docs/layout.md#batch_metajson): validate
everything, then create the batch atomically.

Why all-at-once validation: an operator preparing hundreds of jobs must see every mistake in
one pass, and a half-created batch must never exist. `validate` only reads; `submit` publishes
`runs/<batch_id>/batch_meta.json` by renaming a fully written temp directory into place.
"""

# One file on purpose (~800 lines): validation reports every mistake in one pass with its
# JSON path, so loading (duplicate keys, YAML), the raw-data checks (`_Checker`) and the
# normalisation into batch_meta.json share one Issue list and one path vocabulary, and a
# Launch Table field's check sits next to its default. If it grows further, `_Checker` is
# the seam: it could move to its own module with `Issue`.

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import secrets
import shutil
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import jsonschema
import yaml
from pydantic import BaseModel, ValidationError

from ..models import (
    BatchMeta,
    EffectiveDefaults,
    HarnessConfig,
    LaunchTable,
    NormalizedJob,
    NormalizedStep,
    RetryPolicy,
    check_id,
    incoming_ids,
    utcnow,
)
from ..models.harness_config import DEFAULT_ALLOWED_OVERRIDES
from ..models.launch_table import GOAL_MIN_WORDS, JobSpec, StepSpec
from ..models.verification import DEFAULT_REPAIR_TURNS
from ..store.docread import LAUNCH_TABLE_MAX_BYTES, DocumentMissing, read_document_bytes
from ..store.documents import DocumentError, check_tree, loads_json, loads_yaml
from ..store.files import job_lock, read_json, write_once_json
from ..store.harness_config import (
    describe_validation_error,
    did_you_mean,
    ensure_version_file,
    join_path,
    load_config,
    publish_config,
)
from ..store.paths import Layout, new_batch_id
from .dialect import Note, translate
from .strict_schema import describe as describe_strict
from .strict_schema import strict_problems

P = TypeVar("P", bound=BaseModel)

#: Launch Table keys that override a harness default (allowed per `allowed_overrides`).
OVERRIDABLE_KEYS: tuple[str, ...] = tuple(DEFAULT_ALLOWED_OVERRIDES)


@dataclass
class Issue:
    """One validation problem; `path` is a JSON path like `jobs[3].steps[0].depends_on[1]`."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class SubmitError(Exception):
    """The Launch Table was refused; carries every problem found, nothing was written."""

    def __init__(self, issues: list[Issue]) -> None:
        self.issues = list(issues)
        super().__init__("\n".join(str(i) for i in self.issues))


@dataclass
class SubmitResult:
    batch_id: str
    accepted_job_ids: list[str]
    existing: bool = False
    #: how the table was read (reference-harness spellings, a capped concurrency): never errors
    notes: list[Note] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """The documented submit result `{batch_id, accepted_job_ids, existing, notes}`;
        `notes` is a list of `{path, message}`."""
        return {
            "batch_id": self.batch_id,
            "accepted_job_ids": list(self.accepted_job_ids),
            "existing": self.existing,
            "notes": [n.as_dict() for n in self.notes],
        }


# --------------------------------------------------------------------------- loading
class _Object(dict[str, Any]):
    """A parsed mapping that remembers keys given twice (JSON/YAML silently keep the last)."""

    duplicate_keys: list[str]

    def __init__(self, pairs: list[tuple[Any, Any]]) -> None:
        super().__init__()
        self.duplicate_keys = []
        for key, value in pairs:
            if key in self:
                self.duplicate_keys.append(str(key))
            self[key] = value


class _YamlLoader(yaml.SafeLoader):
    """Safe YAML whose mappings are `_Object`s, so duplicate keys are reported, not dropped."""


def _construct_mapping(loader: _YamlLoader, node: yaml.MappingNode) -> _Object:
    own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
    loader.flatten_mapping(node)  # prepends `<<: *anchor` entries, which own keys may override
    pairs = [
        (loader.construct_object(k, deep=True), loader.construct_object(v, deep=True))
        for k, v in node.value
    ]
    split = len(pairs) - own
    result = _Object([])
    result.update(pairs[:split])
    mine = _Object(pairs[split:])  # only keys written twice in this very mapping are duplicates
    result.update(mine)
    result.duplicate_keys = mine.duplicate_keys
    return result


_YamlLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)
# YAML 1.1 (PyYAML) reads `1e3` as the string "1e3"; YAML 1.2 and every operator read a
# number. Field types are strict, so the string would be refused as "not a number".
_YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def load_launch_table(path: Path) -> tuple[dict[str, Any], bytes]:
    """Parse JSON (YAML for .yaml/.yml); a parse error names line and column. Only a
    regular file of at most docread.LAUNCH_TABLE_MAX_BYTES is read (a FIFO, a device or a
    symlink loop is refused by name, never waited on or read without bound)."""
    try:
        data = read_document_bytes(path, max_bytes=LAUNCH_TABLE_MAX_BYTES, what="Launch Table")
    except OSError as exc:
        raise SubmitError([Issue("$", str(exc))]) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SubmitError(
            [Issue("$", f"{path} is not UTF-8 (byte offset {exc.start})")]
        ) from None
    parsed: Any
    if Path(path).suffix.lower() in (".yaml", ".yml"):
        try:
            parsed = loads_yaml(text, _YamlLoader)
        except DocumentError as exc:
            raise SubmitError([Issue(exc.path, exc.message)]) from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(exc, "problem", None) or str(exc)
            raise SubmitError([Issue("$", f"invalid YAML{where}: {problem}")]) from None
    else:
        try:
            parsed = loads_json(text, object_pairs_hook=_Object)
        except DocumentError as exc:
            raise SubmitError([Issue(exc.path, exc.message)]) from None
        except json.JSONDecodeError as exc:
            raise SubmitError(
                [Issue("$", f"invalid JSON at line {exc.lineno}, column {exc.colno}: {exc.msg}")]
            ) from None
    if not isinstance(parsed, dict):
        raise SubmitError(
            [Issue("$", f"a Launch Table must be an object, not {type(parsed).__name__}")]
        )
    return parsed, data


def canonical_bytes(raw: dict[str, Any]) -> bytes:
    """What a dict source is hashed as: sorted, compact JSON."""
    return json.dumps(raw, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str).encode()


# --------------------------------------------------------------------------- helpers
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _duplicate_key_issues(data: Any, path: str = "") -> list[Issue]:
    issues: list[Issue] = []
    if isinstance(data, dict):
        for key in getattr(data, "duplicate_keys", []):
            issues.append(Issue(join_path(path, key),
                                f"key {key!r} is given more than once (only one is kept)"))
        for key, value in data.items():
            issues.extend(_duplicate_key_issues(value, join_path(path, str(key))))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            issues.extend(_duplicate_key_issues(value, join_path(path, i)))
    return issues


def generated_job_id(index: int, total: int) -> str:
    """Positional id for a job without one: job_001, job_002, ... (stable across re-submits)."""
    return f"job_{index + 1:0{max(3, len(str(total)))}d}"


def _resolve(base: Path, ref: str) -> Path:
    return (base / Path(ref).expanduser()).resolve()


def _merge(base: P, override: BaseModel | None) -> P:
    """Field-by-field: a set override field wins; dict fields (config_overrides) merge by key."""
    if override is None:
        return base
    merged = base.model_dump()
    for key, value in override.model_dump(exclude_none=True).items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return type(base).model_validate(merged)


def _allowed(parts: list[str], allowed: list[str]) -> bool:
    dotted = ".".join(parts)
    return any(dotted == entry or dotted.startswith(entry + ".") for entry in allowed)


def _override_issues(
    value: Any, parts: list[str], path: str, allowed: list[str]
) -> list[Issue]:
    """A present override must be allowed whole, or (for mappings) sub-key by sub-key."""
    if value is None or _allowed(parts, allowed):
        return []
    prefix = ".".join(parts) + "."
    if isinstance(value, dict) and any(entry.startswith(prefix) for entry in allowed):
        issues: list[Issue] = []
        for key, sub in value.items():
            issues.extend(
                _override_issues(sub, [*parts, str(key)], join_path(path, str(key)), allowed)
            )
        return issues
    shown = ", ".join(allowed) if allowed else "none"
    return [Issue(path, f"override of {'.'.join(parts)!r} is not allowed by the harness config "
                        f"(allowed_overrides: {shown})")]


# --------------------------------------------------------------------------- checks on raw data
class _Checker:
    """Semantic rules run on the raw document, so they report even when pydantic also fails."""

    def __init__(self, raw: dict[str, Any], base: Path, config: HarnessConfig) -> None:
        self.raw = raw
        self.base = base
        self.config = config
        self.issues: list[Issue] = []
        #: resolved prompt text and inlined schema per (job index, step index), on success.
        self.prompts: dict[tuple[int, int], str] = {}
        self.schemas: dict[tuple[int, int], dict[str, Any]] = {}

    def add(self, path: str, message: str) -> None:
        self.issues.append(Issue(path, message))

    def run(self) -> list[Issue]:
        self.goal()
        self.overrides()
        jobs = _as_list(self.raw.get("jobs"))
        limits = self.config.limits
        if len(jobs) > limits.max_jobs_per_batch:
            self.add("jobs", f"{len(jobs)} jobs exceed limits.max_jobs_per_batch = "
                             f"{limits.max_jobs_per_batch} (split the batch, or raise the "
                             "limit in the harness config)")
        self.job_ids(jobs)
        for ji, job in enumerate(jobs):
            if isinstance(job, dict):
                self.job(ji, job)
        return self.issues

    def goal(self) -> None:
        goal = self.raw.get("batch_goal_summary")
        if isinstance(goal, str):
            words = len(goal.split())
            if words <= GOAL_MIN_WORDS:
                self.add("batch_goal_summary",
                         f"has {words} words; it must have more than {GOAL_MIN_WORDS} "
                         "(whitespace-separated) so scoreboards say what the batch is for")

    def overrides(self) -> None:
        allowed = self.config.allowed_overrides
        for key in OVERRIDABLE_KEYS:
            if key in self.raw:
                self.issues.extend(_override_issues(self.raw[key], [key], key, allowed))
        # Job/step-level settings override the same defaults; refusing them closes a bypass.
        for ji, job in enumerate(_as_list(self.raw.get("jobs"))):
            if not isinstance(job, dict):
                continue
            jpath = f"jobs[{ji}]"
            self.issues.extend(_override_issues(
                job.get("workspace_policy"), ["workspace_policy"],
                f"{jpath}.workspace_policy", allowed))
            self.issues.extend(_override_issues(
                job.get("retention_policy"), ["retention_policy"],
                f"{jpath}.retention_policy", allowed))
            for si, step in enumerate(_as_list(job.get("steps"))):
                if not isinstance(step, dict):
                    continue
                spath = f"{jpath}.steps[{si}]"
                self.issues.extend(_override_issues(
                    step.get("timeout_seconds"), ["timeouts", "step_seconds"],
                    f"{spath}.timeout_seconds", allowed))
                retry = step.get("retry_policy")
                if isinstance(retry, dict):
                    for key, sub in retry.items():
                        self.issues.extend(_override_issues(
                            sub, ["retries", str(key)], f"{spath}.retry_policy.{key}", allowed))

    def job_ids(self, jobs: list[Any]) -> None:
        explicit = {
            job["job_id"]: ji for ji, job in enumerate(jobs)
            if isinstance(job, dict) and isinstance(job.get("job_id"), str)
        }
        first: dict[str, int] = {}
        for ji, job in enumerate(jobs):
            if not isinstance(job, dict):
                continue
            job_id = job.get("job_id")
            if job_id is None:
                generated = generated_job_id(ji, len(jobs))
                if generated in explicit:
                    self.add(f"jobs[{ji}]",
                             f"this job has no job_id and would get {generated!r}, which "
                             f"jobs[{explicit[generated]}] already uses; give it a job_id")
                continue
            if not isinstance(job_id, str):
                continue
            if job_id in first:
                self.add(f"jobs[{ji}].job_id",
                         f"duplicate job_id {job_id!r} (also jobs[{first[job_id]}])")
            else:
                first[job_id] = ji

    def job(self, ji: int, job: dict[str, Any]) -> None:
        jpath = f"jobs[{ji}]"
        steps = _as_list(job.get("steps"))
        limit = self.config.limits.max_steps_per_job
        if len(steps) > limit:
            self.add(f"{jpath}.steps",
                     f"{len(steps)} steps exceed limits.max_steps_per_job = {limit} (split "
                     "the job, or raise the limit in the harness config)")
        ids: dict[str, int] = {}
        for si, step in enumerate(steps):
            if isinstance(step, dict) and isinstance(step.get("step_id"), str):
                sid = step["step_id"]
                if sid in ids:
                    self.add(f"{jpath}.steps[{si}].step_id",
                             f"duplicate step_id {sid!r} in this job (also steps[{ids[sid]}])")
                else:
                    ids[sid] = si
        graph: dict[str, list[str]] = {}
        for si, step in enumerate(steps):
            if isinstance(step, dict):
                deps = self.references(f"{jpath}.steps[{si}]", step, ids)
                sid = step.get("step_id")
                if isinstance(sid, str):
                    edges = graph.setdefault(sid, [])
                    edges.extend(d for d in dict.fromkeys(deps) if d not in edges)
                self.prompt(ji, si, step)
                self.schema(ji, si, step)
                self.candidates(f"{jpath}.steps[{si}]", job, step)
        for cycle in _cycles(graph):
            self.add(f"{jpath}.steps", "cycle: " + " -> ".join(cycle)
                     + " (each step waits for the next; remove one depends_on/resume_from)")

    def candidates(self, spath: str, job: dict[str, Any], step: dict[str, Any]) -> None:
        """Best-of-N (docs/verification.md#candidates-best-of-n): each candidate needs its
        own checkout, so `candidates > 1` needs the job's workspace_policy `isolated`; at most
        one override per candidate."""
        n = step.get("candidates", 1)
        if not isinstance(n, int) or isinstance(n, bool):
            return
        policy = job.get("workspace_policy") or self.raw.get("workspace_policy") or \
            self.config.defaults.workspace_policy
        if n > 1 and policy != "isolated":
            self.add(f"{spath}.candidates",
                     f"candidates: {n} needs a workspace each candidate can have its own copy "
                     f"of, but the job's workspace_policy is {policy!r}: set "
                     "\"workspace_policy\": \"isolated\" on the job (or the batch)")
        overrides = step.get("candidate_overrides")
        if isinstance(overrides, list) and overrides and n <= 1:
            self.add(f"{spath}.candidate_overrides",
                     "candidate_overrides apply to a best-of-N step only: set candidates "
                     f"to 2 or more, or drop them ({len(overrides)} given, none would be used)")
        elif isinstance(overrides, list) and len(overrides) > max(n, 1):
            self.add(f"{spath}.candidate_overrides",
                     f"{len(overrides)} overrides for {n} candidate(s): at most one per "
                     "candidate")

    def references(self, spath: str, step: dict[str, Any], ids: dict[str, int]) -> list[str]:
        """Check step references; return the known dependencies (depends_on + resume_from)."""
        sid = step.get("step_id")
        known = ", ".join(ids) or "none"

        def check(path: str, target: Any, what: str) -> bool:
            if not isinstance(target, str):
                return False
            if target == sid:
                self.add(path, f"step {sid!r} cannot {what} itself")
                return False
            if target not in ids:
                self.add(path, f"unknown step {target!r} (steps in this job: {known})"
                         + did_you_mean(target, list(ids)))
                return False
            return True

        deps: list[str] = []
        for k, dep in enumerate(_as_list(step.get("depends_on"))):
            if check(f"{spath}.depends_on[{k}]", dep, "depend on"):
                deps.append(dep)
        resume = _as_dict(step.get("resume_from")).get("step_id")
        if isinstance(resume, str) and check(f"{spath}.resume_from.step_id", resume,
                                             "resume from"):
            deps.append(resume)
        affinity = _as_dict(step.get("runner_affinity"))
        check(f"{spath}.runner_affinity.same_runner_as", affinity.get("same_runner_as"),
              "share a runner with")
        runner_id = affinity.get("runner_id")
        runners = [r.runner_id for r in self.config.runners]
        if isinstance(runner_id, str) and runner_id not in runners:
            self.add(f"{spath}.runner_affinity.runner_id",
                     f"unknown runner {runner_id!r} (harness config runners: "
                     f"{', '.join(runners) or 'none'})" + did_you_mean(runner_id, runners))
        return deps

    def prompt(self, ji: int, si: int, step: dict[str, Any]) -> None:
        spath = f"jobs[{ji}].steps[{si}]"
        packs = _as_dict(self.raw.get("packs"))
        pack_text = ""
        pack_id = step.get("pack_id")
        if isinstance(pack_id, str):
            if pack_id not in packs:
                self.add(f"{spath}.pack_id", f"unknown pack {pack_id!r} (packs: "
                         f"{', '.join(map(str, packs)) or 'none'})" + did_you_mean(
                             pack_id, [str(p) for p in packs]))
                return
            pack_text = packs[pack_id] if isinstance(packs[pack_id], str) else ""
        limit = self.config.limits.max_prompt_bytes
        text = step.get("prompt")
        ref = step.get("prompt_ref")
        if isinstance(ref, str) and text is None:
            path = _resolve(self.base, ref)
            try:
                if path.stat().st_size > limit:
                    self.add(f"{spath}.prompt_ref", f"prompt file {path} is "
                             f"{path.stat().st_size} bytes, over limits.max_prompt_bytes = {limit}")
                    return
                # regular files only: a FIFO (size 0) would block, a device never end
                text = read_document_bytes(path, max_bytes=limit,
                                           what="prompt file").decode("utf-8")
            except FileNotFoundError:
                self.add(f"{spath}.prompt_ref", f"prompt file not found: {path}")
                return
            except UnicodeDecodeError:
                self.add(f"{spath}.prompt_ref", f"prompt file is not UTF-8 text: {path}")
                return
            except OSError as exc:
                self.add(f"{spath}.prompt_ref", f"cannot read prompt file {path}: "
                         f"{getattr(exc, 'reason', None) or exc.strerror}")
                return
        if not isinstance(text, str):
            return
        if not text.strip():
            self.add(f"{spath}.prompt_ref" if ref else f"{spath}.prompt", "prompt is empty")
            return
        resolved = f"{pack_text}\n\n{text}" if pack_text else text
        append = step.get("append_prompt")
        sent = f"{resolved}\n\n{append}" if isinstance(append, str) and append else resolved
        size = len(sent.encode("utf-8"))
        if size > limit:
            self.add(f"{spath}.prompt_ref" if ref else f"{spath}.prompt",
                     f"resolved prompt (pack + prompt + append_prompt) is {size} bytes, over "
                     f"limits.max_prompt_bytes = {limit}")
            return
        self.prompts[(ji, si)] = resolved

    def schema(self, ji: int, si: int, step: dict[str, Any]) -> None:
        ref = step.get("output_schema_ref")
        if not isinstance(ref, str):
            return
        spath = f"jobs[{ji}].steps[{si}].output_schema_ref"
        path = _resolve(self.base, ref)
        try:
            schema = loads_json(read_document_bytes(
                path, max_bytes=LAUNCH_TABLE_MAX_BYTES, what="output schema").decode("utf-8"))
        except DocumentError as exc:
            self.add(spath, f"output schema {path} is refused at {exc.path}: {exc.message}")
            return
        except DocumentMissing:
            self.add(spath, f"output schema file not found: {path}")
            return
        except (OSError, UnicodeDecodeError) as exc:
            self.add(spath, f"cannot read output schema {path}: {exc}")
            return
        except json.JSONDecodeError as exc:
            self.add(spath, f"output schema {path} is not valid JSON: {exc.msg} at line "
                            f"{exc.lineno}, column {exc.colno}")
            return
        if not isinstance(schema, dict):
            self.add(spath, f"output schema {path} must be a JSON object")
            return
        try:
            jsonschema.validators.validator_for(schema).check_schema(schema)
        except jsonschema.SchemaError as exc:
            where = "/" + "/".join(str(p) for p in exc.absolute_path)
            self.add(spath, f"output schema {path} is not a valid JSON Schema (at {where}): "
                            f"{exc.message}")
            return
        # Codex sends it with strict: true; the API would refuse every attempt with a 400
        problems = strict_problems(schema)
        for line in describe_strict(problems):
            self.add(spath, f"output schema {path} would be refused by the model API "
                            f"(strict structured output) at {line}")
        if problems:
            return
        self.schemas[(ji, si)] = schema


def _cycles(graph: dict[str, list[str]]) -> list[list[str]]:
    """Every distinct cycle found by DFS over step -> dependency edges, as a closed path."""
    state: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for dep in graph.get(node, []):
            if state.get(dep) == 1:
                cycle = stack[stack.index(dep):]
                pivot = cycle.index(min(cycle))
                key = tuple(cycle[pivot:] + cycle[:pivot])
                if key not in seen:
                    seen.add(key)
                    found.append([*cycle, dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node)
    return found


# --------------------------------------------------------------------------- validate
def _path_key(issue: Issue) -> list[tuple[int, int | str]]:
    """Natural order, so jobs[2] sorts before jobs[10] and a job's issues stay together."""
    return [(0, int(p)) if p.isdigit() else (1, p) for p in re.split(r"(\d+)", issue.path)]


def validate(
    raw: dict[str, Any],
    *,
    source_path: Path | None,
    config: HarnessConfig,
    now: datetime,
    batch_id: str | None = None,
    raw_bytes: bytes | None = None,
    notes: list[Note] | None = None,
) -> BatchMeta:
    """Every rule, every issue collected, one SubmitError; reads files, never writes.

    `raw_bytes` are the file's exact bytes (hashed as launch_table_sha256); without them the
    canonical JSON of `raw` is hashed. The reference harness's spellings are read as phh's
    (`dialect.translate`, whose notes are appended to `notes` when given); the returned
    BatchMeta holds only the canonical form.
    """
    if not isinstance(raw, dict):
        raise SubmitError([Issue("$", "a Launch Table must be an object")])
    try:
        check_tree(raw)  # a dict from a caller (the API) never went through our parser
    except DocumentError as exc:
        raise SubmitError([Issue(exc.path, exc.message)]) from None
    source = Path(source_path).resolve() if source_path is not None else None
    base = source.parent if source is not None else Path.cwd().resolve()
    issues = _duplicate_key_issues(raw)
    as_written = raw
    translated = translate(raw, concurrency_limit=config.limits.global_concurrency)
    raw = translated.table
    issues.extend(Issue(e.path, e.message) for e in translated.errors)
    if notes is not None:
        notes.extend(translated.notes)
    table: LaunchTable | None = None
    try:
        with incoming_ids():
            table = LaunchTable.model_validate(raw)
    except ValidationError as exc:
        issues.extend(Issue(translated.written_path(p), m)
                      for p, m in describe_validation_error(LaunchTable, exc))
    checker = _Checker(raw, base, config)
    issues.extend(Issue(translated.written_path(i.path), i.message) for i in checker.run())
    given = raw.get("batch_id")
    if batch_id is not None:
        try:
            check_id(batch_id, incoming=True)
        except ValueError as exc:
            issues.append(Issue("batch_id", str(exc)))
        if isinstance(given, str) and given != batch_id:
            issues.append(Issue("batch_id", f"the Launch Table says {given!r} but the caller "
                                            f"asked for {batch_id!r}"))
    if issues or table is None:
        issues.sort(key=_path_key)  # stable: one location's issues stay in rule order
        raise SubmitError(issues or [Issue("$", "invalid Launch Table")])

    submitted_at = now if now.tzinfo else now.replace(tzinfo=UTC)
    defaults = config.defaults
    effective = EffectiveDefaults(
        execution_policy=_merge(defaults.execution_policy, table.execution_policy),
        timeouts=_merge(defaults.timeouts, table.timeouts),
        retries=_merge(defaults.retries, table.retries),
        retention_policy=_merge(defaults.retention_policy, table.retention_policy),
        workspace_policy=table.workspace_policy or defaults.workspace_policy,
        concurrency=table.concurrency,
        allow_shared_directory_concurrency=bool(table.allow_shared_directory_concurrency),
        heartbeat_stale_after_seconds=config.scoreboard.heartbeat_stale_after_seconds,
    )
    working_root = _resolve(base, table.working_root) if table.working_root else base
    jobs = [
        _normalize_job(ji, job, len(table.jobs), working_root, effective, checker, base,
                       table)
        for ji, job in enumerate(table.jobs)
    ]
    return BatchMeta(
        batch_id=table.batch_id or batch_id or new_batch_id(submitted_at),
        spec_version=table.spec_version,
        submitted_at=submitted_at,
        harness_config_version=config.harness_config_version,
        batch_goal_summary=table.batch_goal_summary,
        labels=list(dict.fromkeys([*table.labels, *table.tags])),
        launch_table_ref=str(source) if source is not None else None,
        launch_table_sha256=_sha256(
            raw_bytes if raw_bytes is not None else canonical_bytes(as_written)),
        working_root=str(working_root),
        jobs=jobs,
        effective_defaults=effective,
    )


def _normalize_job(
    ji: int, job: JobSpec, total: int, working_root: Path, effective: EffectiveDefaults,
    checker: _Checker, base: Path, table: LaunchTable,
) -> NormalizedJob:
    return NormalizedJob(
        job_id=job.job_id or generated_job_id(ji, total),
        labels=job.labels,
        working_directory=str(_resolve(working_root, job.working_directory)),
        workspace_policy=job.workspace_policy or effective.workspace_policy,
        retention_policy=(_merge(effective.retention_policy, job.retention_policy)
                          if job.retention_policy is not None else None),
        steps=[
            _normalize_step(step, checker.prompts[(ji, si)], checker.schemas.get((ji, si)),
                            effective, base, table)
            for si, step in enumerate(job.steps)
        ],
    )


def _normalize_step(
    step: StepSpec, prompt: str, schema: dict[str, Any] | None, effective: EffectiveDefaults,
    base: Path, table: LaunchTable,
) -> NormalizedStep:
    depends_on = list(dict.fromkeys(step.depends_on))
    if step.resume_from is not None and step.resume_from.step_id not in depends_on:
        depends_on.append(step.resume_from.step_id)
    retry: RetryPolicy = _merge(effective.retries, step.retry_policy)
    return NormalizedStep(
        step_id=step.step_id,
        prompt=prompt,
        prompt_sha256=_sha256(prompt.encode("utf-8")),
        prompt_ref=str(_resolve(base, step.prompt_ref)) if step.prompt_ref else None,
        append_prompt=step.append_prompt,
        pack_id=step.pack_id,
        output_schema_ref=(
            str(_resolve(base, step.output_schema_ref)) if step.output_schema_ref else None
        ),
        output_schema=schema,
        depends_on=depends_on,
        resume_from=step.resume_from,
        timeout_seconds=step.timeout_seconds or effective.timeouts.step_seconds,
        retry_policy=retry,
        runner_affinity=step.runner_affinity,
        artifacts_expected=step.artifacts_expected,
        # docs/verification.md#limits: the step's verifier wins wholesale over the batch's
        verify=step.verify or table.verify,
        repair_turns=_first(step.repair_turns, table.repair_turns, DEFAULT_REPAIR_TURNS),
        candidates=step.candidates,  # best-of-N (docs/verification.md)
        candidate_overrides=step.candidate_overrides,
    )


def _first(*values: int | None) -> int:
    """The first value that is set (0 included: `repair_turns: 0` turns repairs off)."""
    return next(v for v in values if v is not None)


# --------------------------------------------------------------------------- submit
def submission_marker(layout: Layout, sha256: str) -> Path:
    return layout.system / "submissions" / f"{sha256}.json"


def _existing(marker: Path) -> SubmitResult | None:
    data = read_json(marker)
    if isinstance(data, dict) and isinstance(data.get("batch_id"), str):
        return SubmitResult(data["batch_id"], list(data.get("accepted_job_ids") or []), True)
    return None


def is_valid_id(value: str) -> bool:
    """Whether `value` is a well-formed id (docs/README.md#identifiers), without saying why not."""
    try:
        check_id(value)
    except ValueError:
        return False
    return True


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _publish(layout: Layout, meta: BatchMeta) -> None:
    """Write batch_meta.json in a temp dir and rename it to runs/<batch_id>: all or nothing."""
    target = layout.batch_dir(meta.batch_id)
    layout.runs.mkdir(parents=True, exist_ok=True)
    tmp = layout.runs / f".tmp-{meta.batch_id}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        write_once_json(tmp / "batch_meta.json", meta)
        _fsync_dir(tmp)
        if target.exists():
            raise FileExistsError(target)
        os.rename(tmp, target)
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if target.exists():
            raise SubmitError([Issue("batch_id", f"batch {meta.batch_id!r} already exists "
                                                 f"under {layout.runs}")]) from None
        raise
    _fsync_dir(layout.runs)


def submit(
    layout: Layout,
    source: Path | dict[str, Any],
    *,
    config: HarnessConfig | None = None,
    dedupe: bool = False,
    now: datetime | None = None,
    batch_id: str | None = None,
) -> SubmitResult:
    """Validate, then create `runs/<batch_id>/` atomically; with `dedupe`, identical bytes
    submitted again return the first batch instead of creating a second one."""
    now = now or utcnow()
    if isinstance(source, dict):
        try:
            check_tree(source)  # before hashing: a lone surrogate or a huge int cannot encode
        except DocumentError as exc:
            raise SubmitError([Issue(exc.path, exc.message)]) from None
        raw, data, source_path = source, canonical_bytes(source), None
    else:
        raw, data = load_launch_table(Path(source))
        source_path = Path(source)
    sha = _sha256(data)
    marker = submission_marker(layout, sha)
    publish = config is None
    if config is None:
        config = load_config(layout, write=False)
    if dedupe and (found := _existing(marker)) is not None:
        # the batch exists; the answer still says how its table was read
        found.notes = translate(raw, concurrency_limit=config.limits.global_concurrency).notes
        return found

    issues: list[Issue] = []
    wanted = raw.get("batch_id") if isinstance(raw.get("batch_id"), str) else batch_id
    if wanted and is_valid_id(wanted) and layout.batch_dir(wanted).exists():
        issues.append(Issue("batch_id", f"batch {wanted!r} already exists under {layout.runs}"))
    notes: list[Note] = []
    try:
        meta = validate(raw, source_path=source_path, config=config, now=now,
                        batch_id=batch_id, raw_bytes=data, notes=notes)
    except SubmitError as exc:
        raise SubmitError([*exc.issues, *issues]) from None
    runs = layout.runs.resolve()
    for ji, job in enumerate(meta.jobs):
        if Path(job.working_directory).resolve().is_relative_to(runs):
            issues.append(Issue(
                f"jobs[{ji}].working_directory",
                f"{job.working_directory} is inside phh's store ({runs}): the agent would "
                "write among phh's own files; use a directory outside runs/"))
    if issues:
        raise SubmitError(issues)

    result = SubmitResult(meta.batch_id, [job.job_id for job in meta.jobs], notes=notes)
    if publish:
        publish_config(layout, config)
    else:
        ensure_version_file(layout, config)
    if not dedupe:
        _publish(layout, meta)
        return result
    # The lock makes "check marker, create batch, write marker" one step across processes.
    with job_lock(marker.with_suffix(".lock")):
        if (found := _existing(marker)) is not None:
            found.notes = notes
            return found
        _publish(layout, meta)
        write_once_json(marker, {
            "batch_id": result.batch_id,
            "accepted_job_ids": result.accepted_job_ids,
            "submitted_at": meta.submitted_at.isoformat(),
        })
    return result
