"""Verified results (docs/verification.md): a step's verifier, best-of-N candidates and repair
turns as the operator writes them, and what a verifier run recorded in state.json."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Literal

from pydantic import Field, field_validator

from .common import MAX_SECONDS, Record, Strict

#: Bounds checked at submit (docs/verification.md#limits).
MAX_CANDIDATES = 16
MAX_REPAIR_TURNS = 10
DEFAULT_VERIFY_TIMEOUT_SECONDS = 600.0
#: Repairs of a schema-invalid report when neither the step nor the batch says
#: (docs/verification.md#repair-turns).
DEFAULT_REPAIR_TURNS = 1


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class VerifySpec(Strict):
    """`verify`: a shell command (`/bin/sh -c`) phh runs in the attempt's working directory
    after a turn that would succeed. Exit 0 passes; anything else ends the attempt `failed` /
    `verify_failed`. `score_pattern` is a regular expression searched in the output; its group
    `score` (or its first group, or the whole match) is parsed as a float."""

    command: str = Field(min_length=1, max_length=16_384)
    timeout_seconds: float = Field(default=DEFAULT_VERIFY_TIMEOUT_SECONDS, gt=0,
                                   le=MAX_SECONDS)
    env: dict[str, str] = Field(default_factory=dict)
    score_pattern: str | None = Field(default=None, max_length=4_096)

    @field_validator("command")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the verifier command is empty")
        if "\0" in v:
            raise ValueError("the verifier command contains a NUL character")
        return v

    @field_validator("env")
    @classmethod
    def _env_names(cls, v: dict[str, str]) -> dict[str, str]:
        # what execve accepts: a name without '=' or NUL (a shell could not even read
        # other names), a value without NUL
        for key, value in v.items():
            if not _ENV_NAME.fullmatch(key):
                raise ValueError(f"env: {key!r} is not an environment variable name "
                                 "(letters, digits and '_', not starting with a digit)")
            if "\0" in value:
                raise ValueError(f"env: the value of {key} contains a NUL character")
        return v

    @field_validator("score_pattern")
    @classmethod
    def _compiles(cls, v: str | None) -> str | None:
        if v is not None:
            if not v or "\0" in v:
                raise ValueError("score_pattern is empty or contains a NUL character")
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"score_pattern does not compile: {e}") from None
        return v


class CandidateOverride(Strict):
    """What differs for candidate k (list index k-1 of `candidate_overrides`)."""

    model: str | None = Field(default=None, min_length=1)
    model_reasoning_effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None
    prompt_suffix: str | None = Field(default=None, max_length=65_536)


class VerifyResult(Record):
    """state.json `verify`: one verifier run of this attempt (docs/verification.md#record).
    The output's last lines are in `verify.log` beside state.json."""

    started_at: datetime
    duration_seconds: float = Field(ge=0)
    exit_code: int | None = Field(default=None,
                                  description="None when it was killed (timeout, cancel)")
    timed_out: bool = False
    passed: bool
    score: float | None = None
