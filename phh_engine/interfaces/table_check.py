"""`phh submit --check`: validate Launch Tables exactly as submit would, writing nothing.

Useful to migrate a folder of tables (e.g. ones written for the reference harness) in one
go: every file gets a verdict, every error and every note (`dialect.translate`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..models import HarnessConfig, utcnow
from ..store.paths import Layout
from .dialect import Note
from .submit import Issue, SubmitError, is_valid_id, load_launch_table, validate

#: what a directory given to --check contributes (directly in it; dotfiles skipped)
TABLE_SUFFIXES: tuple[str, ...] = (".json", ".yaml", ".yml")


@dataclass
class Verdict:
    """One file's verdict: `ok` with the batch it would create (`batch_id` is None when the
    harness would generate one), else every error; notes either way."""

    file: str
    ok: bool
    batch_id: str | None = None
    job_ids: list[str] = field(default_factory=list)
    errors: list[Issue] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """`{file, verdict: "ok"|"rejected", batch_id, job_ids, errors, notes}`; errors and
        notes are lists of `{path, message}`."""
        return {
            "file": self.file,
            "verdict": "ok" if self.ok else "rejected",
            "batch_id": self.batch_id,
            "job_ids": list(self.job_ids),
            "errors": [{"path": i.path, "message": i.message} for i in self.errors],
            "notes": [n.as_dict() for n in self.notes],
        }


def expand(paths: list[Path]) -> list[Path | Verdict]:
    """Files as given; a directory becomes its `*.json|*.yaml|*.yml` (sorted, not
    recursive); a missing path or an empty directory becomes a rejected Verdict."""
    out: list[Path | Verdict] = []
    for path in paths:
        if path.is_dir():
            try:
                names = sorted(os.listdir(path))
            except OSError as exc:
                out.append(Verdict(str(path), False, errors=[
                    Issue("$", f"cannot list directory {path}: {exc.strerror}")]))
                continue
            # not only regular files: a FIFO, a symlink loop or a device named like a table
            # gets its own verdict (load_launch_table says why) instead of a silent skip
            found = [path / n for n in names
                     if not n.startswith(".") and n.lower().endswith(TABLE_SUFFIXES)]
            if not found:
                out.append(Verdict(str(path), False, errors=[Issue(
                    "$", f"no Launch Tables ({', '.join(TABLE_SUFFIXES)}) in directory {path}")]))
            out.extend(found)
        elif os.path.lexists(path):  # a dangling or looping symlink: its verdict says which
            out.append(path)
        else:
            out.append(Verdict(str(path), False, errors=[Issue("$", f"no such file: {path}")]))
    return out


def check_file(layout: Layout, path: Path, config: HarnessConfig) -> Verdict:
    """The verdict `phh submit path` would reach now, without writing anything."""
    notes: list[Note] = []
    try:
        raw, data = load_launch_table(path)
        given = raw.get("batch_id")
        issues: list[Issue] = []
        if isinstance(given, str) and is_valid_id(given) and layout.batch_dir(given).exists():
            issues.append(Issue("batch_id", f"batch {given!r} already exists under "
                                            f"{layout.runs}"))
        try:
            meta = validate(raw, source_path=path, config=config, now=utcnow(),
                            raw_bytes=data, notes=notes)
        except SubmitError as exc:
            raise SubmitError([*exc.issues, *issues]) from None
        if issues:
            raise SubmitError(issues)
    except SubmitError as exc:
        return Verdict(str(path), False, errors=exc.issues, notes=notes)
    return Verdict(str(path), True, batch_id=given if isinstance(given, str) else None,
                   job_ids=[j.job_id for j in meta.jobs], notes=notes)


def check_paths(layout: Layout, paths: list[Path], config: HarnessConfig) -> list[Verdict]:
    """A verdict per Launch Table under `paths`; two passing tables naming the same
    `batch_id` fail the later one, since submitting both would fail it too."""
    verdicts: list[Verdict] = []
    claimed: dict[str, str] = {}
    for item in expand(paths):
        if isinstance(item, Verdict):
            verdicts.append(item)
            continue
        verdict = check_file(layout, item, config)
        if verdict.ok and verdict.batch_id is not None:
            first = claimed.setdefault(verdict.batch_id, verdict.file)
            if first != verdict.file:
                verdict.ok = False
                verdict.errors.append(Issue("batch_id", f"batch {verdict.batch_id!r} is also "
                                                        f"the batch_id of {first}"))
        verdicts.append(verdict)
    return verdicts
