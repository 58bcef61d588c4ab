"""The Run Report (final.json, docs/statuses.md#success): the agent's structured answer and step
hand-off.

Every field is required and no extra keys are allowed, because Codex passes the schema to the
model in strict structured-output mode, which demands exactly that shape.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class ReportArtifact(BaseModel):
    model_config = ConfigDict(extra="forbid", title="ReportArtifact")

    path: str
    kind: Literal["file", "directory", "report", "patch", "log", "other"]
    description: str


class RunReport(BaseModel):
    model_config = ConfigDict(extra="forbid", title="RunReport")

    schema_version: str
    status: Literal["ok", "failed", "needs_attention"]
    summary: str
    files_read: list[str]
    files_written: list[str]
    artifacts: list[ReportArtifact]
