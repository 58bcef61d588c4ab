"""Harness config: defaults, versions, secret refusal, readable errors
(docs/layout.md#harness-config).

Why: every batch pins the `harness_config_version` it was submitted under, so versions must be
stable content hashes, and the materialised config is readable by anyone, so it must never hold
a secret.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from phh_engine.models import HarnessConfig, HarnessSettings
from phh_engine.store.harness_config import (
    ConfigError,
    config_version,
    find_secrets,
    load_config,
    load_settings,
    materialize,
)
from phh_engine.store.paths import Layout


def write_settings(root: Path, data: dict[str, Any]) -> None:
    (root / "phh_config.json").write_text(json.dumps(data), encoding="utf-8")


def tree(path: Path) -> dict[str, bytes]:
    """Every file under `path` with its bytes, to prove nothing was written."""
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() for p in path.rglob("*") if p.is_file()}


def test_defaults_when_no_settings_file(tmp_path: Path) -> None:
    settings = load_settings(Layout(tmp_path))
    assert settings == HarnessSettings()
    assert settings.scoreboard.heartbeat_stale_after_seconds == 2700


def test_materialize_writes_snapshot_and_write_once_version(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    config = materialize(layout)
    assert config.harness_config_version.startswith("hc_")
    snapshot = HarnessConfig.model_validate_json(layout.harness_config.read_bytes())
    assert snapshot.harness_config_version == config.harness_config_version
    version_file = layout.harness_config_versions / f"{config.harness_config_version}.json"
    first_bytes = version_file.read_bytes()
    again = materialize(layout)
    assert again.harness_config_version == config.harness_config_version
    assert version_file.read_bytes() == first_bytes  # write-once: the first record is kept
    assert [p.name for p in layout.harness_config_versions.iterdir()] == [version_file.name]


def test_version_stable_and_changes_with_a_setting(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    v1 = config_version(HarnessSettings())
    assert v1 == config_version(HarnessSettings())
    assert v1 == config_version(load_settings(layout))
    assert v1 == config_version(materialize(layout))  # a HarnessConfig hashes as its settings
    write_settings(tmp_path, {})
    assert config_version(load_settings(layout)) == v1  # explicit {} is the same as defaults
    write_settings(tmp_path, {"limits": {"max_jobs_per_batch": 5}})
    v2 = config_version(load_settings(layout))
    assert v2 != v1
    materialize(layout)
    names = sorted(p.stem for p in layout.harness_config_versions.iterdir())
    assert names == sorted([v1, v2])  # old versions stay for batches that reference them


def test_unknown_key_names_key_path_and_close_match(tmp_path: Path) -> None:
    write_settings(tmp_path, {"limts": {}, "interfaces": {"api_mode": {"enabeld": True}}})
    with pytest.raises(ConfigError) as info:
        load_settings(Layout(tmp_path))
    text = str(info.value)
    assert "unknown key 'limts'" in text and "did you mean 'limits'?" in text
    assert "interfaces.api_mode.enabeld" in text and "did you mean 'enabled'?" in text
    assert str(tmp_path / "phh_config.json") in text
    assert set(info.value.paths) == {"limts", "interfaces.api_mode.enabeld"}


def test_bad_json_names_line_and_column(tmp_path: Path) -> None:
    (tmp_path / "phh_config.json").write_text('{\n  "limits": {,}\n}\n', encoding="utf-8")
    with pytest.raises(ConfigError, match="line 2, column"):
        load_settings(Layout(tmp_path))


def test_stale_threshold_below_1800_refused(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_settings(tmp_path, {"scoreboard": {"heartbeat_stale_after_seconds": 1799}})
    with pytest.raises(ConfigError) as info:
        load_settings(layout)
    assert "scoreboard.heartbeat_stale_after_seconds" in str(info.value)
    assert "1799 is too low" in str(info.value) and "at least 1800" in str(info.value)
    # Also when the model was mutated in code (pydantic does not validate assignments).
    settings = HarnessSettings()
    settings.scoreboard.heartbeat_stale_after_seconds = 1799
    with pytest.raises(ConfigError, match="at least 1800"):
        materialize(layout, settings)
    assert tree(layout.runs) == {}
    write_settings(tmp_path, {"scoreboard": {"heartbeat_stale_after_seconds": 1800}})
    assert load_settings(layout).scoreboard.heartbeat_stale_after_seconds == 1800


def test_secrets_refused_in_key_and_value_forms_with_every_path(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    pem = "-----BEGIN RSA PRIVATE KEY-----\nMIIE\n-----END RSA PRIVATE KEY-----"
    settings = HarnessSettings.model_validate({
        "defaults": {"execution_policy": {"config_overrides": {
            "openai_api_key": "hunter2-not-a-pattern",
            "model_providers.x.http_headers.Authorization": "Bearer abcdefgh12345678",
        }}},
        "codex": {"extra_args": ["--key", "sk-proj-abcdefghijklmnop123", pem]},
    })
    with pytest.raises(ConfigError) as info:
        materialize(layout, settings)
    expected = {
        "defaults.execution_policy.config_overrides.openai_api_key",
        'defaults.execution_policy.config_overrides["model_providers.x.http_headers.Authorization"]',
        "codex.extra_args[1]",
        "codex.extra_args[2]",
    }
    assert set(info.value.paths) == expected
    for path in expected:
        assert path in str(info.value)
    assert "hunter2" not in str(info.value) and "sk-proj" not in str(info.value)
    assert tree(layout.runs) == {}


def test_secret_in_settings_file_refused_before_anything_else(tmp_path: Path) -> None:
    write_settings(tmp_path, {"interfaces": {"api_mode": {"auth_mode": "token", "token": "x1"}}})
    with pytest.raises(ConfigError) as info:
        load_settings(Layout(tmp_path))
    assert info.value.paths == ["interfaces.api_mode.token"]
    assert "secret" in str(info.value)


def test_find_secrets_allow_lists_only_keys_naming_a_secret_source() -> None:
    data = {
        "interfaces": {"api_mode": {"token_env": "PHH_API_TOKEN", "token_file": "/etc/phh/tok"}},
        "defaults": {"execution_policy": {"config_overrides": {
            "model_auto_compact_token_limit": 200000,  # a number cannot carry a credential
        }}},
        "codex": {"extra_args": ["--task", "risk-assessment-for-sk-learn"]},
    }
    assert find_secrets(data) == []
    assert find_secrets({"other": {"token_env": "X"}}) == ["other.token_env"]
    pasted = {"interfaces": {"api_mode": {"token_env": "sk-abcdefghijklmnopqrstu"}}}
    assert find_secrets(pasted) == ["interfaces.api_mode.token_env"]
    assert find_secrets({"password": ""}) == []
    assert find_secrets({"client_secret": "s"}) == ["client_secret"]
    assert find_secrets({"auth": {"ApiKey": {"v": 1}}}) == ["auth.ApiKey"]


def test_token_references_checked(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    write_settings(tmp_path, {"interfaces": {"api_mode": {
        "token_env": "not a var name", "token_file": "runs/_system/token.txt"}}})
    with pytest.raises(ConfigError) as info:
        load_settings(layout)
    assert set(info.value.paths) == {
        "interfaces.api_mode.token_env", "interfaces.api_mode.token_file"
    }


def test_allowed_overrides_entries_must_name_overridable_keys(tmp_path: Path) -> None:
    write_settings(tmp_path, {"allowed_overrides": [
        "timeouts", "execution_policy.model", "concurency", "execution_policy.modle"]})
    with pytest.raises(ConfigError) as info:
        load_settings(Layout(tmp_path))
    text = str(info.value)
    assert info.value.paths == ["allowed_overrides[2]", "allowed_overrides[3]"]
    assert "did you mean 'concurrency'?" in text and "did you mean 'model'?" in text


def test_load_config_reuses_snapshot_until_settings_change(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    first = load_config(layout)
    snapshot_bytes = layout.harness_config.read_bytes()
    again = load_config(layout)
    assert again == first
    assert layout.harness_config.read_bytes() == snapshot_bytes  # no churn
    write_settings(tmp_path, {"limits": {"global_concurrency": 3}})
    changed = load_config(layout)
    assert changed.limits.global_concurrency == 3
    assert changed.harness_config_version != first.harness_config_version
    layout.harness_config.write_text("{ torn", encoding="utf-8")
    assert load_config(layout).harness_config_version == changed.harness_config_version
