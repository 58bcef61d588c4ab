"""The harness config (docs/layout.md#harness-config): load operator settings, refuse secrets,
materialise versions.

Why a content-hash version: a batch records the `harness_config_version` it was submitted
under, and `runs/_system/harness_config_versions/<version>.json` must let anyone reread exactly
those settings later. Identical settings always give the identical version, so re-materialising
unchanged settings never creates a new version file.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import json
import re
import types
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from ..models import HarnessConfig, HarnessSettings, LaunchTable, incoming_ids, utcnow
from ..models.harness_config import DEFAULT_ALLOWED_OVERRIDES, MIN_STALE_SECONDS
from .docread import HARNESS_CONFIG_MAX_BYTES, DocumentReadError, read_document_bytes
from .documents import DocumentError, loads_json
from .files import atomic_write_json, read_model, write_once_json
from .paths import Layout

VERSION_PREFIX = "hc_"

#: Config keys whose NAME matches a secret pattern but whose value only says WHERE the secret
#: lives (an environment variable name, a file outside runs/). Exact JSON paths, not a name
#: pattern: a new `*token*` field anywhere else is refused until someone consciously adds it
#: here (fails closed). Their values are still checked for secret-looking content, and
#: `_check_references` verifies they really are a variable name / a path outside runs/.
SECRET_SOURCE_PATHS: frozenset[str] = frozenset(
    {"interfaces.api_mode.token_env", "interfaces.api_mode.token_file"}
)

_SECRET_KEY_PARTS: tuple[str, ...] = (
    "token", "secret", "api_key", "apikey", "password", "passwd", "private_key", "privatekey",
)

_SECRET_VALUE_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"(?<![A-Za-z0-9_])sk-[A-Za-z0-9_-]{10,}"), "an API key (sk-...)"),
    (re.compile(r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----"), "a PEM private key block"),
    (re.compile(r"(?<![A-Za-z0-9])Bearer\s+[A-Za-z0-9._~+/=-]{8,}"), "a bearer token"),
    (re.compile(r"(?<![A-Za-z0-9])(?:gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,})"),
     "a GitHub token"),
    (re.compile(r"(?<![A-Za-z0-9])AKIA[0-9A-Z]{16}(?![A-Za-z0-9])"), "an AWS access key id"),
    (re.compile(r"(?<![A-Za-z0-9])xox[abprs]-[A-Za-z0-9-]{10,}"), "a Slack token"),
)

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class ConfigError(Exception):
    """The harness config is unusable; the message names every offending key (never a secret)."""

    def __init__(self, message: str, paths: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.paths: list[str] = list(paths)


# --------------------------------------------------------------------------- JSON paths
def join_path(base: str, key: str | int) -> str:
    """`jobs[3].steps[0]`-style paths; odd keys are quoted so a dotted key stays one key."""
    if isinstance(key, int):
        return f"{base}[{key}]"
    if _IDENT.match(key):
        return f"{base}.{key}" if base else key
    return f"{base}[{json.dumps(key)}]"


def loc_to_path(loc: Sequence[str | int]) -> str:
    path = ""
    for part in loc:
        path = join_path(path, part)
    return path or "$"


def _strip_type(tp: Any) -> Any:
    """Annotated[X, ...] / X | None -> X, so the model behind a field can be found."""
    while True:
        origin = get_origin(tp)
        if origin is Annotated:
            tp = get_args(tp)[0]
        elif origin in (Union, types.UnionType):
            args = [a for a in get_args(tp) if a is not type(None)]
            models = [a for a in args if isinstance(a, type) and issubclass(a, BaseModel)]
            if len(args) == 1:
                tp = args[0]
            elif models:
                tp = models[0]
            else:
                return tp
        else:
            return tp


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, BaseModel)


def type_at(model: type[BaseModel], loc: Sequence[str | int]) -> Any:
    """The (stripped) type found at `loc` inside `model`, or None when the path leaves it."""
    tp: Any = model
    for part in loc:
        tp = _strip_type(tp)
        if _is_model(tp):
            if not isinstance(part, str):
                return None
            field = tp.model_fields.get(part)
            if field is None:
                return None
            tp = field.annotation
            continue
        origin = get_origin(tp)
        args = get_args(tp)
        if origin in (list, tuple, set, frozenset) and isinstance(part, int) and args:
            tp = args[0]
        elif origin is dict and len(args) == 2:
            tp = args[1]
        else:
            return None
    return _strip_type(tp)


def field_names_at(model: type[BaseModel], loc: Sequence[str | int]) -> list[str]:
    tp = type_at(model, loc)
    return list(tp.model_fields) if _is_model(tp) else []


def did_you_mean(word: str, candidates: Sequence[str]) -> str:
    """' (did you mean 'x'?)' for the closest candidate, or '' when nothing is close."""
    close = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def describe_validation_error(
    model: type[BaseModel], exc: ValidationError
) -> list[tuple[str, str]]:
    """Pydantic errors as (json path, readable message); unknown keys get a 'did you mean'."""
    out: list[tuple[str, str]] = []
    for err in exc.errors():
        loc: tuple[str | int, ...] = tuple(err["loc"])
        path = loc_to_path(loc)
        kind = err["type"]
        if kind == "extra_forbidden" and loc:
            key = str(loc[-1])
            allowed = field_names_at(model, loc[:-1])
            where = loc_to_path(loc[:-1])
            msg = f"unknown key {key!r} in {'the top level' if where == '$' else where}"
            out.append((path, msg + did_you_mean(key, allowed)))
        elif kind == "missing" and loc:
            out.append((path, f"required key {str(loc[-1])!r} is missing"))
        else:
            msg = str(err["msg"]).removeprefix("Value error, ")
            if kind not in ("value_error", "assertion_error") and "input" in err:
                shown = repr(err["input"])
                msg += f" (got {shown if len(shown) <= 60 else shown[:57] + '...'})"
            out.append((path, msg))
    return out


# --------------------------------------------------------------------------- secrets
def _secret_key(key: str) -> bool:
    norm = key.lower().replace("-", "_")
    return any(part in norm for part in _SECRET_KEY_PARTS)


def _secret_value(value: str) -> str | None:
    for pattern, what in _SECRET_VALUE_PATTERNS:
        if pattern.search(value):
            return what
    return None


def secret_findings(data: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, why) for everything that looks like a secret; the value itself is never echoed.

    A secret-named key only counts when its value could carry a credential (a non-empty string
    or container): `model_auto_compact_token_limit: 200000` is a Codex setting, not a secret.
    """
    found: list[tuple[str, str]] = []
    if isinstance(data, dict):
        for key, value in data.items():
            key_s = str(key)
            sub = join_path(path, key_s)
            if _secret_value(key_s):
                found.append((sub, "key looks like a secret"))
            elif (
                sub not in SECRET_SOURCE_PATHS
                and _secret_key(key_s)
                and isinstance(value, str | dict | list)
                and value
            ):
                found.append((sub, f"key {key_s!r} names a secret"))
            found.extend(secret_findings(value, sub))
    elif isinstance(data, list | tuple):
        for i, value in enumerate(data):
            found.extend(secret_findings(value, join_path(path, i)))
    elif isinstance(data, str):
        what = _secret_value(data)
        if what:
            found.append((path or "$", f"value looks like {what}"))
    return found


def find_secrets(data: Any, path: str = "") -> list[str]:
    """JSON paths of keys or values that look like secrets (see `secret_findings`)."""
    return [p for p, _ in secret_findings(data, path)]


def _refuse_secrets(data: Any, where: str) -> None:
    findings = secret_findings(data)
    if findings:
        lines = "\n".join(f"  - {p}: {why}" for p, why in findings)
        raise ConfigError(
            f"{where} must never contain secrets (API keys, tokens, private keys); "
            f"{len(findings)} found:\n{lines}\n"
            "Give the API token through interfaces.api_mode.token_env (an environment variable "
            "name) or token_file (a file outside runs/).",
            [p for p, _ in findings],
        )


# --------------------------------------------------------------------------- validation
_STALE_PATH = "scoreboard.heartbeat_stale_after_seconds"


def _validate_settings(data: Any, where: str) -> HarnessSettings:
    try:
        with incoming_ids():  # runner ids name runners/<id>/: no store name
            return HarnessSettings.model_validate(data)
    except ValidationError as exc:
        problems = describe_validation_error(HarnessSettings, exc)
    for i, (path, message) in enumerate(problems):
        if path == _STALE_PATH and "greater than or equal" in message:
            board = data.get("scoreboard") if isinstance(data, dict) else None
            got = board.get("heartbeat_stale_after_seconds") if isinstance(board, dict) else "?"
            problems[i] = (path, (
                f"{got} is too low: it must be at least {MIN_STALE_SECONDS} seconds (30 minutes) "
                "so that slow but healthy runs are not reported stale"
            ))
    lines = "\n".join(f"  - {p}: {m}" for p, m in problems)
    raise ConfigError(f"{where} is invalid:\n{lines}", [p for p, _ in problems])


def _override_problem(entry: str) -> str | None:
    """An allowed_overrides entry must name an overridable Launch Table key (or a sub-key)."""
    parts = entry.split(".")
    if parts[0] not in DEFAULT_ALLOWED_OVERRIDES:
        return f"{entry!r} is not an overridable key" + did_you_mean(
            parts[0], DEFAULT_ALLOWED_OVERRIDES
        ) + f"; overridable: {', '.join(DEFAULT_ALLOWED_OVERRIDES)}"
    for depth in range(1, len(parts)):
        tp = type_at(LaunchTable, parts[:depth])
        if _is_model(tp) and parts[depth] not in tp.model_fields:
            return f"{entry!r}: {parts[depth]!r} is not a key of {'.'.join(parts[:depth])}" + (
                did_you_mean(parts[depth], list(tp.model_fields))
            )
        if not _is_model(tp) and get_origin(tp) is not dict:
            return f"{entry!r}: {'.'.join(parts[:depth])} has no sub-keys"
    return None


def _outside_runs(layout: Layout, value: str) -> bool:
    try:
        path = (layout.root / Path(value).expanduser()).resolve()
    except (OSError, RuntimeError):  # a symlink loop: it cannot lead into runs/ either
        return True
    return not path.is_relative_to(layout.runs)


def _check_settings(layout: Layout, settings: HarnessSettings) -> None:
    """Rules pydantic cannot express: references, runner ids, override names."""
    problems: list[tuple[str, str]] = []
    api = settings.interfaces.api_mode
    if not _ENV_NAME.match(api.token_env):
        problems.append(("interfaces.api_mode.token_env",
                         "must be the NAME of an environment variable (letters, digits, '_'), "
                         "not the token itself"))
    if api.token_file and not _outside_runs(layout, api.token_file):
        problems.append(("interfaces.api_mode.token_file",
                         f"must be a file outside {layout.runs} (everything under runs/ is "
                         "readable through phh)"))
    queue_root = settings.interfaces.filesystem_queue_mode.queue_root
    if not queue_root.strip():
        problems.append(("interfaces.filesystem_queue_mode.queue_root", "must not be empty"))
    elif not _outside_runs(layout, queue_root):
        problems.append(("interfaces.filesystem_queue_mode.queue_root",
                         f"must be outside {layout.runs} (the run store: a queue there would "
                         "mix dropped Launch Tables with batches)"))
    if settings.codex.credential_dir and not _outside_runs(layout, settings.codex.credential_dir):
        problems.append(("codex.credential_dir", f"must be outside {layout.runs}"))
    seen: set[str] = set()
    for i, runner in enumerate(settings.runners):
        if runner.runner_id in seen:
            problems.append((f"runners[{i}].runner_id",
                             f"duplicate runner_id {runner.runner_id!r}"))
        seen.add(runner.runner_id)
        if runner.kind == "ray" and not (runner.address or "").strip():
            problems.append((f"runners[{i}].address",
                             "required for a runner of kind 'ray' (e.g. \"10.0.0.5:6379\")"))
    for i, entry in enumerate(settings.allowed_overrides):
        problem = _override_problem(entry)
        if problem:
            problems.append((f"allowed_overrides[{i}]", problem))
    if problems:
        lines = "\n".join(f"  - {p}: {m}" for p, m in problems)
        raise ConfigError(f"harness config is invalid:\n{lines}", [p for p, _ in problems])


# --------------------------------------------------------------------------- public API
def load_settings(layout: Layout) -> HarnessSettings:
    """`<root>/phh_config.json` when present, else all defaults; every problem is a ConfigError."""
    path = layout.settings_path
    try:
        # regular files only, bounded: a FIFO would hang every command, /dev/zero never end
        text = read_document_bytes(path, max_bytes=HARNESS_CONFIG_MAX_BYTES,
                                   what="harness config").decode("utf-8")
    except FileNotFoundError:
        return HarnessSettings()
    except DocumentReadError as exc:
        raise ConfigError(f"cannot read {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read {path}: {exc}") from None
    try:
        data = loads_json(text)
    except DocumentError as exc:
        raise ConfigError(f"{path} is invalid:\n  - {exc.path}: {exc.message}",
                          [exc.path]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            f"{path} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must contain a JSON object, not {type(data).__name__}")
    _refuse_secrets(data, str(path))
    settings = _validate_settings(data, str(path))
    _check_settings(layout, settings)
    return settings


def _settings_payload(settings: HarnessSettings) -> dict[str, Any]:
    data = settings.model_dump(mode="json")
    data.pop("harness_config_version", None)
    data.pop("written_at", None)
    return data


def config_version(settings: HarnessSettings) -> str:
    """Content hash of the settings (a HarnessConfig's own version/written_at are ignored)."""
    canonical = json.dumps(
        _settings_payload(settings), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return VERSION_PREFIX + hashlib.sha256(canonical.encode()).hexdigest()[:16]


def version_path(layout: Layout, version: str) -> Path:
    return layout.harness_config_versions / f"{version}.json"


def ensure_version_file(layout: Layout, config: HarnessConfig) -> Path:
    """Write-once copy of this version; an existing copy is kept as the first record of it."""
    path = version_path(layout, config.harness_config_version)
    if not path.exists():
        with contextlib.suppress(FileExistsError):  # a concurrent writer published it first
            write_once_json(path, config)
    return path


def build_config(layout: Layout, settings: HarnessSettings | None = None) -> HarnessConfig:
    """Validate, refuse secrets and version the settings, without writing anything."""
    if settings is None:
        settings = load_settings(layout)
    payload = _settings_payload(settings)
    _refuse_secrets(payload, "the harness config")
    # Re-validate: models are not validated on attribute assignment.
    settings = _validate_settings(payload, "the harness config")
    _check_settings(layout, settings)
    return HarnessConfig.model_validate(
        {**payload, "harness_config_version": config_version(settings), "written_at": utcnow()}
    )


def materialize(layout: Layout, settings: HarnessSettings | None = None) -> HarnessConfig:
    """Validate, refuse secrets, then publish the snapshot and the write-once version copy."""
    config = build_config(layout, settings)
    ensure_version_file(layout, config)
    atomic_write_json(layout.harness_config, config)
    return config


def _current_snapshot(layout: Layout, version: str) -> HarnessConfig | None:
    snapshot = read_model(layout.harness_config, HarnessConfig)
    if (
        snapshot is not None
        and snapshot.harness_config_version == version
        and config_version(snapshot) == version
    ):
        return snapshot
    return None


def publish_config(layout: Layout, config: HarnessConfig) -> None:
    """Make `config` the materialised one (version file + snapshot) unless it already is."""
    ensure_version_file(layout, config)
    if _current_snapshot(layout, config.harness_config_version) is None:
        atomic_write_json(layout.harness_config, config)


def load_config(layout: Layout, *, write: bool = True) -> HarnessConfig:
    """The snapshot when it is valid and still matches the current settings, else materialise.

    Comparing versions means an edited phh_config.json takes effect at the next load instead
    of being masked by an old snapshot. `write=False` never touches the disk (submit uses it
    so that a refused Launch Table leaves runs/ untouched, then calls `publish_config`).
    """
    settings = load_settings(layout)
    snapshot = _current_snapshot(layout, config_version(settings))
    if snapshot is not None:
        if write:
            ensure_version_file(layout, snapshot)
        return snapshot
    return materialize(layout, settings) if write else build_config(layout, settings)
