"""Values of the wrong JSON type or of no sane size are refused with their JSON path at every
door, never coerced: `true` or `"10"` where a count belongs, an integer of 301 digits, a
queue folder inside the run store (tester's F11). YAML numbers in exponent form still read
as numbers. (`null` for an optional key means "not set" and inherits the default:
docs/layout.md#launch-table.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_harness_config import write_settings
from test_input_scalars import phh, refused_everywhere, yaml_table

from phh_engine.store.harness_config import ConfigError, load_settings
from phh_engine.store.paths import Layout

HUGE = "1" + "0" * 300  # 10**300: far below the document's 1,000-digit limit


@pytest.mark.parametrize(("value", "words"), [
    ("true", "valid integer"), ('"10"', "valid integer"), (HUGE, "out of range"),
], ids=["true", "string-10", "10**300"])
def test_a_loose_concurrency_is_refused_at_every_door(tmp_path: Path, value: str,
                                                      words: str) -> None:
    docs = {"lt.yaml": yaml_table(tmp_path) + f"concurrency: {value}\n"}
    refused_everywhere(tmp_path, docs, {"lt.yaml": "concurrency"}, words)


def test_a_step_count_and_timeout_of_the_wrong_type_are_refused(tmp_path: Path) -> None:
    docs = {"lt.yaml": yaml_table(tmp_path) + "    timeout_seconds: \"600\"\n"}
    refused_everywhere(tmp_path, docs, {"lt.yaml": "jobs[0].steps[0].timeout_seconds"},
                       "valid number")


def test_yaml_numbers_in_exponent_form_are_numbers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert phh(root, "init").returncode == 0
    lt = tmp_path / "lt.yaml"
    lt.write_text(yaml_table(tmp_path) + "    timeout_seconds: 6e2\n", encoding="utf-8")
    res = phh(root, "submit", "--check", "--json", str(lt))
    assert res.returncode == 0, res
    lt.write_text(yaml_table(tmp_path) + "    timeout_seconds: 1e400\n", encoding="utf-8")
    res = phh(root, "submit", "--check", str(lt))
    out = res.stdout + res.stderr
    assert res.returncode == 2 and "jobs[0].steps[0].timeout_seconds: " in out, res
    assert "finite" in out


@pytest.mark.parametrize(("settings", "path"), [
    ({"limits": {"global_concurrency": 10**300}}, "limits.global_concurrency"),
    ({"limits": {"global_concurrency": "10"}}, "limits.global_concurrency"),
    ({"limits": {"global_concurrency": True}}, "limits.global_concurrency"),
    ({"interfaces": {"api_mode": {"port": 70000}}}, "interfaces.api_mode.port"),
    ({"interfaces": {"api_mode": {"enabled": None}}}, "interfaces.api_mode.enabled"),
    ({"runners": [{"runner_id": "local", "capacity": "4"}]}, "runners[0].capacity"),
    ({"interfaces": {"filesystem_queue_mode": {"queue_root": "runs"}}},
     "interfaces.filesystem_queue_mode.queue_root"),
    ({"interfaces": {"filesystem_queue_mode": {"queue_root": "runs/_system/q"}}},
     "interfaces.filesystem_queue_mode.queue_root"),
    ({"interfaces": {"filesystem_queue_mode": {"queue_root": ""}}},
     "interfaces.filesystem_queue_mode.queue_root"),
], ids=lambda v: json.dumps(v)[:60] if isinstance(v, dict) else v)
def test_loose_config_values_are_refused_with_their_path(tmp_path: Path, settings: object,
                                                         path: str) -> None:
    write_settings(tmp_path, settings)  # type: ignore[arg-type]
    with pytest.raises(ConfigError) as info:
        load_settings(Layout(tmp_path))
    assert path in info.value.paths, str(info.value)
    res = phh(tmp_path, "submit", "--check", str(tmp_path / "none.json"))
    assert res.returncode == 2 and path in res.stderr, res
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())
