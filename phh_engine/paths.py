"""Where every file of the runs store lives, derived from ids alone (SPEC §5)."""

from __future__ import annotations

import secrets
from datetime import datetime
from pathlib import Path

META = "meta.json"
STATE = "state.json"
FINAL_JSON = "final.json"
FINAL_TXT = "final.txt"
HANDOFF = "handoff.json"
EVENTS = "codex.events.jsonl"
STDOUT = "stdout.log"
STDERR = "stderr.log"
EXIT_CODE = "exit_code"
CODEX_HOME = "codex_home"
OUTPUT_SCHEMA = "output_schema.json"
GIT_HEAD = "git_head.txt"
GIT_STATUS = "git_status.txt"
GIT_DIFF = "git_diff.patch"
FILES_TOUCHED = "files_touched.json"
#: Traceback of an exception phh itself raised while running the attempt (internal_error).
INTERNAL_LOG = "internal_error.log"

#: Attempt files an interface may hand out by name (never a path the caller chooses).
ARTIFACT_NAMES: tuple[str, ...] = (
    META, STATE, FINAL_JSON, FINAL_TXT, HANDOFF, EVENTS, STDOUT, STDERR,
    GIT_HEAD, GIT_STATUS, GIT_DIFF, FILES_TOUCHED, INTERNAL_LOG,
)


def new_run_id(now: datetime | None = None) -> str:
    """`r` + microseconds within the second + random: attempt directories that start in the
    same second (the dir name's resolution) still sort by start time, and never collide."""
    micros = now.microsecond if now is not None else 0
    return f"r{micros:06d}{secrets.token_hex(4)}"


def new_batch_id(now: datetime) -> str:
    return f"batch_{now:%Y%m%dT%H%M%SZ}_{secrets.token_hex(2)}"


def run_dir_name(started: datetime, run_id: str) -> str:
    """Sorts by start time and carries the run_id, so no JSON is needed to find an attempt."""
    return f"{started:%Y%m%dT%H%M%SZ}_{run_id}"


def run_id_of(dir_name: str) -> str:
    return dir_name.split("_", 1)[1]


class Layout:
    """Path arithmetic over one phh root. Performs no I/O except `find_attempt_dir`."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).resolve()
        self.runs = self.root / "runs"
        self.runners = self.root / "runners"
        self.system = self.runs / "_system"
        self.settings_path = self.root / "phh_config.json"

    # system
    @property
    def harness_config(self) -> Path:
        return self.system / "harness_config.json"

    @property
    def harness_config_versions(self) -> Path:
        return self.system / "harness_config_versions"

    @property
    def system_scoreboard(self) -> Path:
        return self.system / "scoreboard.system.json"

    def runner_health(self, runner_id: str) -> Path:
        return self.runners / runner_id / "health.json"

    # batch / job / step
    def batch_dir(self, batch_id: str) -> Path:
        return self.runs / batch_id

    def batch_meta(self, batch_id: str) -> Path:
        return self.runs / batch_id / "batch_meta.json"

    def batch_scoreboard(self, batch_id: str) -> Path:
        return self.runs / batch_id / "scoreboard.batch.json"

    def overrides_dir(self, batch_id: str) -> Path:
        return self.runs / batch_id / "_overrides"

    def job_dir(self, batch_id: str, job_id: str) -> Path:
        return self.runs / batch_id / job_id

    def current(self, batch_id: str, job_id: str) -> Path:
        return self.job_dir(batch_id, job_id) / "current.json"

    def job_lock(self, batch_id: str, job_id: str) -> Path:
        return self.job_dir(batch_id, job_id) / ".job.lock"

    def workspace(self, batch_id: str, job_id: str) -> Path:
        return self.job_dir(batch_id, job_id) / "_workspace"

    def attempts_dir(self, batch_id: str, job_id: str, step_id: str) -> Path:
        return self.job_dir(batch_id, job_id) / "steps" / step_id / "attempts"

    def attempt_dir(self, batch_id: str, job_id: str, step_id: str, dir_name: str) -> Path:
        return self.attempts_dir(batch_id, job_id, step_id) / dir_name

    def find_attempt_dir(
        self, batch_id: str, job_id: str, step_id: str, run_id: str
    ) -> Path | None:
        """Locate an attempt by ids alone: one glob, no JSON opened."""
        hits = sorted(self.attempts_dir(batch_id, job_id, step_id).glob(f"*_{run_id}"))
        return hits[-1] if hits else None
