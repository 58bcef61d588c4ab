"""The named vocabularies (models/common.py) hold every value the engine writes or emits.

mypy --strict (make lint) checks typed call sites; these tests cover what it cannot see:
values written through `model_copy(update={...})` (an untyped dict, and pydantic does not
validate it) and a state.json whose value is outside the vocabulary.
"""

from __future__ import annotations

import ast
from datetime import UTC, datetime
from pathlib import Path
from typing import get_args

import pytest
from pydantic import ValidationError

from phh_engine.models import (
    TERMINAL_STATUSES,
    AttemptState,
    AttemptStatus,
    EventKind,
    FailureClass,
    TerminationReason,
    Trigger,
    as_terminal,
)

ENGINE = Path(__file__).resolve().parent.parent / "phh_engine"
VOCABULARY: dict[str, tuple[str, ...]] = {
    "status": get_args(AttemptStatus),
    "termination_reason": get_args(TerminationReason),
    "failure_class": get_args(FailureClass),
    "trigger": get_args(Trigger),
}


def _sources() -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted(ENGINE.rglob("*.py"))]


def test_terminal_statuses_are_the_four_an_attempt_never_leaves() -> None:
    assert set(TERMINAL_STATUSES) == {"succeeded", "failed", "canceled", "needs_attention"}
    assert set(TERMINAL_STATUSES) < set(get_args(AttemptStatus))
    assert [as_terminal(s) for s in get_args(AttemptStatus)] == [
        None, None, "succeeded", "failed", "canceled", "needs_attention"]
    assert as_terminal("finished") is None


def test_state_updates_write_only_vocabulary_values() -> None:
    """Every literal written through `model_copy(update={...})` is in its Literal: such a
    state.json would be written unchecked and refused by every reader afterwards."""
    seen: dict[str, set[str]] = {key: set() for key in VOCABULARY}
    for path, tree in _sources():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                    and node.func.attr == "model_copy"):
                continue
            for kw in node.keywords:
                if kw.arg != "update" or not isinstance(kw.value, ast.Dict):
                    continue
                for k, v in zip(kw.value.keys, kw.value.values, strict=True):
                    if (isinstance(k, ast.Constant) and k.value in VOCABULARY
                            and isinstance(v, ast.Constant) and isinstance(v.value, str)):
                        where = f"{path.relative_to(ENGINE.parent)}:{v.lineno}"
                        assert v.value in VOCABULARY[k.value], (where, k.value, v.value)
                        seen[k.value].add(v.value)
    # the scan found the writes it is there for (a refactor that hides them fails here)
    assert {"runner_lost", "spawn_failed", "internal_error"} <= seen["termination_reason"]
    assert {"running", "failed", "canceled"} <= seen["status"]


def test_every_engine_event_kind_is_named() -> None:
    kinds: set[str] = set()
    for path, tree in _sources():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                    and node.func.id == "EngineEvent"):
                arg = node.args[0] if node.args else next(
                    (k.value for k in node.keywords if k.arg == "kind"), None)
                assert isinstance(arg, ast.Constant), f"{path}:{node.lineno}: kind not literal"
                kinds.add(arg.value)
    assert kinds == set(get_args(EventKind))


def test_a_state_with_an_unknown_termination_reason_is_refused_naming_the_field() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    base = {"batch_id": "b", "job_id": "j", "step_id": "s", "run_id": "r", "runner_id": "x",
            "status": "failed", "updated_at": now}
    assert AttemptState.model_validate(
        {**base, "termination_reason": "credential_changed"}).termination_reason == (
        "credential_changed")
    with pytest.raises(ValidationError) as exc:
        AttemptState.model_validate({**base, "termination_reason": "exploded"})
    assert exc.value.errors()[0]["loc"] == ("termination_reason",)
