"""Read Launch Tables written for the reference harness (ParallelHassnes) as phh's own.

The reference harness implements the same contract with a few different spellings. Tables
written for it should run unchanged, so at submit every door (CLI file, drop folder, HTTP
API, `phh submit --check`) passes the parsed document through `translate` before validation:

| reference spelling                          | phh's canonical form                 |
|---------------------------------------------|--------------------------------------|
| `execution_policy.web_search_enabled`       | `execution_policy.web_search`        |
| `execution_policy.capture_events_jsonl`     | `execution_policy.capture_events`    |
| `timeouts.step_timeout_seconds`             | `timeouts.step_seconds`              |
| `execution_policy.capture_codex_thread_id`  | dropped: phh always records it       |
| `workspace_policy: {"mode": M}` (batch/job) | `workspace_policy: M`                |

and a batch `concurrency` above the harness's `limits.global_concurrency` is capped to it.

Every translation is reported as a `Note` (never an error); a key given in both spellings
with different values is an error naming both paths. `translate` is pure: it never mutates
its input (changed mappings are shallow copies that keep their class and attributes, so the
loader's duplicate-key bookkeeping survives) and never touches the disk.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from ..models.common import MAX_SAFE_INT

#: the reference's spelling -> phh's, per section of the Launch Table (top level only).
RENAMED_KEYS: dict[str, dict[str, str]] = {
    "execution_policy": {
        "web_search_enabled": "web_search",
        "capture_events_jsonl": "capture_events",
    },
    "timeouts": {
        "step_timeout_seconds": "step_seconds",
    },
}
#: keys phh accepts and drops because the behaviour they switch is always on in phh.
DROPPED_KEYS: dict[str, tuple[str, ...]] = {
    "execution_policy": ("capture_codex_thread_id",),
}
WORKSPACE_MODES: tuple[str, ...] = ("shared", "isolated")
LIMIT_NAME = "limits.global_concurrency"
#: at most this many other paths are named when one translation happened in many places.
_SHOWN_PATHS = 3


@dataclass(frozen=True)
class Note:
    """One translation (or, in `Translation.errors`, one problem) at a JSON path such as
    `jobs[2].workspace_policy`; `message` is a sentence for an operator."""

    path: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"path": self.path, "message": self.message}

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class Translation:
    """`table`: the document in phh's canonical spelling (the input itself when nothing
    changed). `notes`: one per kind of translation, in document order. `errors`: conflicts
    and unreadable reference forms, each naming the JSON path(s) involved."""

    table: dict[str, Any]
    notes: list[Note] = field(default_factory=list)
    errors: list[Note] = field(default_factory=list)
    #: canonical path -> the path as written, for every renamed key
    renamed: dict[str, str] = field(default_factory=dict)

    def written_path(self, path: str) -> str:
        """A JSON path of `table` as the author wrote it, so an error found after the
        translation (say a non-boolean `web_search_enabled`) names the key in their file."""
        for canonical, written in self.renamed.items():
            if path == canonical or path.startswith((canonical + ".", canonical + "[")):
                return written + path[len(canonical):]
        return path


def _same(a: Any, b: Any) -> bool:
    """Equal as JSON values: `true` is not `1`, but `600` is `600.0`."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    return bool(a == b)


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)


class _Translator:
    def __init__(self, concurrency_limit: int | None) -> None:
        self.limit = concurrency_limit
        self.errors: list[Note] = []
        self.renamed: dict[str, str] = {}
        # kind -> (message, paths): one note per kind, however many places it happened
        self._notes: dict[str, tuple[str, list[str]]] = {}

    def note(self, kind: str, path: str, message: str) -> None:
        entry = self._notes.setdefault(kind, (message, []))
        entry[1].append(path)

    def notes(self) -> list[Note]:
        out: list[Note] = []
        for message, paths in self._notes.values():
            first, rest = paths[0], paths[1:]
            if rest:
                shown = ", ".join(rest[:_SHOWN_PATHS])
                more = len(rest) - _SHOWN_PATHS
                message += f" (also at {shown}{f' and {more} more' if more > 0 else ''})"
            out.append(Note(first, message))
        return out

    def section(self, name: str, section: Any) -> Any:
        """Rename and drop keys in one top-level mapping (`execution_policy`, `timeouts`)."""
        if not isinstance(section, dict):
            return section
        renames = RENAMED_KEYS.get(name, {})
        dropped = DROPPED_KEYS.get(name, ())
        if not any(k in section for k in (*renames, *dropped)):
            return section
        out = copy.copy(section)  # keeps the loader's mapping class and duplicate_keys
        out.clear()
        for key, value in section.items():
            path = f"{name}.{key}"
            if key in dropped:
                self.dropped(path, value)
                continue
            canonical = renames.get(key)
            if canonical is None:
                out[key] = value
                continue
            cpath = f"{name}.{canonical}"
            if canonical in section:
                if _same(section[canonical], value):
                    self.note(f"both:{path}", path, f"same value as {cpath} (the reference "
                              f"harness's spelling of it); {cpath} is used")
                else:
                    self.errors.append(Note(path, (
                        f"{path} = {_show(value)} (the reference harness's spelling of "
                        f"{cpath}) conflicts with {cpath} = {_show(section[canonical])}: "
                        "give one of the two")))
                continue
            out[canonical] = value
            self.renamed[cpath] = path
            self.note(f"rename:{path}", path,
                      f"read as {cpath} (the reference harness's spelling)")
        return out

    def dropped(self, path: str, value: Any) -> None:
        if not isinstance(value, bool):
            self.errors.append(Note(path, f"must be true or false, not {_show(value)} (the "
                                          "reference harness's switch; phh always records "
                                          "the Codex thread id)"))
        elif value:
            self.note(f"drop:{path}:true", path, "accepted and ignored: phh always records "
                      "each attempt's Codex thread id")
        else:
            self.note(f"drop:{path}:false", path, "false has no effect: phh always records "
                      "each attempt's Codex thread id (resume_from, `phh resume` and "
                      "current.json need it)")

    def workspace_policy(self, path: str, value: Any) -> Any:
        """`{"mode": "shared"}` -> `"shared"`; any other mapping is an error."""
        if not isinstance(value, dict):
            return value
        mode = value.get("mode")
        others = sorted(str(k) for k in value if k != "mode")
        # on an error the mapping is dropped, so the model does not report it a second time
        if others:
            self.errors.append(Note(f"{path}.{others[0]}", (
                f"{', '.join(others)}: not supported in {path}; phh reads only "
                f'{{"mode": "shared"}} or {{"mode": "isolated"}} (or the plain string)')))
            return None
        if mode not in WORKSPACE_MODES:
            shown = "missing" if "mode" not in value else _show(mode)
            self.errors.append(Note(f"{path}.mode", (
                f"is {shown}; it must be \"shared\" or \"isolated\"")))
            return None
        self.note(f"workspace:{mode}", path, f'{{"mode": "{mode}"}} read as "{mode}" (the '
                  "reference harness's spelling)")
        return mode

    def concurrency(self, value: Any) -> Any:
        limit = self.limit
        # an integer of no sane size is left for validation to refuse, not capped
        if limit is None or isinstance(value, bool) or not isinstance(value, int) or \
                value <= limit or value > MAX_SAFE_INT:
            return value
        self.note("concurrency", "concurrency",
                  f"{value} is above the harness limit {LIMIT_NAME} = {limit}: this batch "
                  f"runs at most {limit} attempts at once (to allow more, raise "
                  f"{LIMIT_NAME} in phh_config.json, then submit again)")
        return limit

    def table(self, raw: dict[str, Any]) -> dict[str, Any]:
        changed: dict[str, Any] = {}
        for name in raw:
            if name in RENAMED_KEYS or name in DROPPED_KEYS:
                new = self.section(name, raw[name])
                if new is not raw[name]:
                    changed[name] = new
        if "workspace_policy" in raw:
            new = self.workspace_policy("workspace_policy", raw["workspace_policy"])
            if new is not raw["workspace_policy"]:
                changed["workspace_policy"] = new
        if "concurrency" in raw:
            new = self.concurrency(raw["concurrency"])
            if new is not raw["concurrency"]:
                changed["concurrency"] = new
        jobs = raw.get("jobs")
        if isinstance(jobs, list):
            new_jobs = [self.job(ji, job) for ji, job in enumerate(jobs)]
            if any(a is not b for a, b in zip(new_jobs, jobs, strict=True)):
                changed["jobs"] = new_jobs
        if not changed:
            return raw
        out = copy.copy(raw)
        out.update(changed)
        return out

    def job(self, ji: int, job: Any) -> Any:
        if not isinstance(job, dict) or not isinstance(job.get("workspace_policy"), dict):
            return job
        new = self.workspace_policy(f"jobs[{ji}].workspace_policy", job["workspace_policy"])
        if new is job["workspace_policy"]:
            return job
        out = copy.copy(job)
        out["workspace_policy"] = new
        return out


def translate(raw: dict[str, Any], *, concurrency_limit: int | None = None) -> Translation:
    """The Launch Table `raw` in phh's canonical spelling, with a note per translation.

    `concurrency_limit` is the harness's `limits.global_concurrency`; a larger batch
    `concurrency` is capped to it (None: not capped). Values are not validated here beyond
    what a translation needs: the pydantic models and submit's checks do that afterwards,
    on the translated table, so their errors name phh's canonical paths.
    """
    tr = _Translator(concurrency_limit)
    table = tr.table(raw)
    # notes in document order, like errors are
    order = {key: i for i, key in enumerate(table)}
    notes = sorted(tr.notes(), key=lambda n: order.get(n.path.split(".")[0].split("[")[0], 0))
    return Translation(table, notes, tr.errors, tr.renamed)
