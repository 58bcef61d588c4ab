"""Durations and counts people give are bounded at the door, and readers saturate instead
of overflowing on a store written before the bounds (docs/safety.md#documents).

Found by trying siblings of issue 11 B2: `retries.backoff_seconds: 1e308` was accepted, and
the first failed attempt made every reader of the root (scoreboard, jobs, run) raise
OverflowError adding the backoff to a datetime."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_input_documents import batch_dirs, phh, table

from phh_engine.derive.readiness import _after, retry_delay_seconds
from phh_engine.models import RetryPolicy
from phh_engine.store.paths import Layout
from phh_engine.store.pauses import MAX_RESET, parse_reset


@pytest.mark.parametrize(("where", "raw"), [
    ("retries.backoff_seconds", 1e308),
    ("retries.backoff_max_seconds", 1e300),
    ("retries.max_attempts", 10**12),
    ("jobs[0].steps[0].timeout_seconds", 2.5e11),
    ("jobs[0].steps[0].retry_policy.backoff_seconds", 1e20),
])
def test_out_of_range_durations_are_refused_at_submit(tmp_path: Path, where: str,
                                                      raw: float) -> None:
    root = tmp_path / "root"
    assert phh(root, "init").returncode == 0
    doc = table(tmp_path)
    if where.startswith("retries."):
        doc["retries"] = {where.split(".")[1]: raw}
    elif where.endswith("retry_policy.backoff_seconds"):
        doc["jobs"][0]["steps"][0]["retry_policy"] = {"backoff_seconds": raw}
    else:
        doc["jobs"][0]["steps"][0]["timeout_seconds"] = raw
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(doc))
    res = phh(root, "submit", str(lt))
    assert res.returncode == 2, res
    assert where in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert batch_dirs(Layout(root)) == []


def test_out_of_range_backoff_in_the_harness_config_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    assert phh(root, "init").returncode == 0
    cfg = root / "phh_config.json"
    data = json.loads(cfg.read_text())
    data.setdefault("defaults", {})["retries"] = {"backoff_seconds": 1e300}
    cfg.write_text(json.dumps(data))
    res = phh(root, "run", "--no-ui", "--until-idle")
    assert res.returncode == 2, res
    assert "backoff_seconds" in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_readers_saturate_on_a_store_written_before_the_bounds() -> None:
    now = datetime(2026, 11, 29, tzinfo=UTC)
    huge = RetryPolicy.model_construct(backoff_seconds=1e308, backoff_factor=2.0,
                                       backoff_max_seconds=1e308)
    wait = retry_delay_seconds(huge, 3, "model_error")
    assert _after(now, wait) > now + timedelta(days=365)  # far away, and no OverflowError
    assert _after(datetime.max.replace(tzinfo=UTC) - timedelta(days=1), 1e9).year == 9999


@pytest.mark.parametrize("text", [
    '{"error":{"type":"usage_limit_reached","resets_in_seconds":1e20}}',
    '{"error":{"type":"usage_limit_reached","resets_at":99999999999}}',
    "You've hit your usage limit. Try again in 99999999999999d.",
])
def test_a_usage_limit_reset_from_the_server_is_bounded(text: str) -> None:
    now = datetime(2026, 11, 29, tzinfo=UTC)
    at = parse_reset(text, now)
    assert at is not None and now < at <= now + MAX_RESET
