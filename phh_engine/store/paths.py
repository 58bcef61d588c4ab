"""Where every file of the runs store lives, derived from ids alone (docs/layout.md#durability)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
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
#: The verifier's last lines of output, and its sandbox's own CODEX_HOME and scratch
#: directory (docs/verification.md#the-verifier).
VERIFY_LOG = "verify.log"
VERIFY_HOME = "verify_home"

#: Every name phh itself writes in a store, with where: an id (batch, job, step, run or
#: runner) becomes a directory name beside or below these, so an id equal to one of them
#: (compared case-insensitively, for case-folding filesystems) would make phh read its own
#: file as a directory, or a directory as its own file. One set for every id kind, so that
#: a reader that matches names anywhere in the tree (the dashboard's watcher) is never fooled.
STORE_NAMES: dict[str, str] = {
    "runs": "<root>/runs/", "runners": "<root>/runners/", "queue": "<root>/queue/",
    "phh_config.json": "<root>/phh_config.json",
    "_system": "runs/_system/", "harness_config.json": "runs/_system/harness_config.json",
    "harness_config_versions": "runs/_system/harness_config_versions/",
    "scoreboard.system.json": "runs/_system/scoreboard.system.json",
    "overrides": "runs/_system/overrides/", "cache": "runs/_system/cache/",
    "submissions": "runs/_system/submissions/", "locks": "runs/_system/locks/",
    "gc_log.jsonl": "runs/_system/gc_log.jsonl", "gc.lock": "runs/_system/gc.lock",
    "pauses": "runs/_system/pauses/", "credential_pauses": "runs/_system/credential_pauses/",
    **{name: f"runs/_system/{name}" for name in (
        "catalog.sqlite3", "catalog.sqlite3-wal", "catalog.sqlite3-shm",
        "catalog.sqlite3-journal")},
    "batch_meta.json": "runs/<batch>/batch_meta.json",
    "scoreboard.batch.json": "runs/<batch>/scoreboard.batch.json",
    "closed.json": "runs/<batch>/closed.json", "_overrides": "runs/<batch>/_overrides/",
    "current.json": "runs/<batch>/<job>/current.json",
    "_workspace": "runs/<batch>/<job>/_workspace/",
    "workspace.json": "runs/<batch>/<job>/workspace.json",
    "steps": "runs/<batch>/<job>/steps/", "attempts": "runs/<batch>/<job>/steps/<step>/attempts/",
    "health.json": "runners/<runner>/health.json", "drain.json": "runners/<runner>/drain.json",
    "headless.log": "runners/<runner>/headless.log",
    "catalog_file.json": "runners/<runner>/catalog_file.json",
    "incoming": "queue/incoming/", "accepted": "queue/accepted/", "rejected": "queue/rejected/",
    **{name: f"runs/<batch>/<job>/steps/<step>/attempts/<attempt>/{name}" for name in (
        META, STATE, FINAL_JSON, FINAL_TXT, HANDOFF, EVENTS, STDOUT, STDERR, EXIT_CODE,
        CODEX_HOME, OUTPUT_SCHEMA, GIT_HEAD, GIT_STATUS, GIT_DIFF, FILES_TOUCHED, "prompt.txt",
        "internal_error.log", VERIFY_LOG, VERIFY_HOME)},
}
_STORE_NAMES_FOLDED: dict[str, str] = {k.casefold(): k for k in STORE_NAMES}


def store_name_clash(value: str) -> str | None:
    """Why `value` cannot be an id (it is a name phh writes in its store), or None."""
    name = _STORE_NAMES_FOLDED.get(value.casefold())
    if name is None:
        return None
    return (f"it is a name phh writes in its own store ({STORE_NAMES[name]}), so it "
            "would clash with it: choose another id")


#: Attempt files an interface may hand out by name (never a path the caller chooses).
ARTIFACT_NAMES: tuple[str, ...] = (
    META, STATE, FINAL_JSON, FINAL_TXT, HANDOFF, EVENTS, STDOUT, STDERR,
    GIT_HEAD, GIT_STATUS, GIT_DIFF, FILES_TOUCHED, INTERNAL_LOG, VERIFY_LOG,
)


def new_run_id(now: datetime | None = None) -> str:
    """`r` + microseconds within the second + random: attempt directories that start in the
    same second (the dir name's resolution) still sort by start time, and never collide."""
    micros = now.microsecond if now is not None else 0
    import secrets  # here: it loads OpenSSL (~10 ms), which a catalog read never needs

    return f"r{micros:06d}{secrets.token_hex(4)}"


def new_batch_id(now: datetime) -> str:
    import secrets

    return f"batch_{now:%Y%m%dT%H%M%SZ}_{secrets.token_hex(2)}"


def run_dir_name(started: datetime, run_id: str) -> str:
    """Sorts by start time and carries the run_id, so no JSON is needed to find an attempt."""
    return f"{started:%Y%m%dT%H%M%SZ}_{run_id}"


def dir_name_time(dir_name: str) -> datetime | None:
    """The start time a run dir name encodes (second from the name, microseconds from the
    run id), or None for a name not of this form."""
    try:
        stamp, run_id = dir_name.split("_", 1)
        at = datetime.strptime(stamp, "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        return at.replace(microsecond=int(run_id[1:7]))
    except ValueError:
        return None


def claim_time(now: datetime, existing: Iterable[str]) -> datetime:
    """The time to name a new attempt dir by: `now`, or just after the newest existing
    attempt of the step when the wall clock stepped back since it was claimed. Names then
    sort in claim order (the per-step sequence every reader orders by: `latest`, current.json,
    views, GC), whatever the clock did; the real times are in state.json."""
    newest = max((t for t in map(dir_name_time, existing) if t is not None), default=None)
    if newest is not None and now <= newest:
        return newest + timedelta(microseconds=1)
    return now


def run_id_of(dir_name: str) -> str:
    return dir_name.split("_", 1)[1]


def is_attempt_dir_name(name: str) -> bool:
    """A name `run_dir_name` could have made (`<stamp>_<run_id>`, not hidden): anything else
    in an attempts directory is not an attempt and is skipped by every reader."""
    return not name.startswith(".") and "_" in name and bool(name.split("_", 1)[1])


#: `scan_attempts`' stray entry for a path that is not a directory (or has a file on it).
NOT_A_DIRECTORY = "."


def scan_attempts(attempts_dir: str | Path) -> tuple[list[str], list[str]]:
    """(attempt directory names oldest first, other entries skipped) of one attempts
    directory. Stray files, names `run_dir_name` would not make and directories without a
    state.json are skipped (hidden ones silently: temp files and claims being made). An
    attempt directory is born with its state.json (the claim renames it into place), so one
    without is not an attempt of phh's. A missing directory gives ([], []), a file where
    the directory or one of its parents should be ([], [NOT_A_DIRECTORY]). One scandir and
    one stat per attempt directory."""
    names: list[str] = []
    stray: list[str] = []
    try:
        with os.scandir(attempts_dir) as it:
            for e in it:
                if is_attempt_dir_name(e.name) and e.is_dir() and \
                        os.path.isfile(f"{e.path}/{STATE}"):
                    names.append(e.name)
                elif not e.name.startswith("."):
                    stray.append(e.name)
    except FileNotFoundError:
        return [], []
    except NotADirectoryError:
        return [], [NOT_A_DIRECTORY]
    names.sort()
    return names, stray


def attempt_dir_names(attempts_dir: str | Path) -> list[str]:
    """`scan_attempts` without the strays."""
    return scan_attempts(attempts_dir)[0]


def rehome(path: str, runs: str | Path, batch_id: str) -> str:
    """A path phh recorded under the runs directory that wrote it (an attempt directory, a
    resume base: `<old root>/runs/<batch>/...`) as it lies under `runs` now: a root moved or
    copied keeps its recorded paths (meta.json, the catalog's rows). Unchanged when it does
    not lie under a `runs/<batch_id>/` (docs/catalog.md#paged-filtered-views)."""
    mark = f"{os.sep}runs{os.sep}{batch_id}{os.sep}"
    at = path.rfind(mark)  # the last: no id below a batch may be `runs` (a store name)
    if at < 0:
        return path
    return f"{runs}{os.sep}{batch_id}{os.sep}{path[at + len(mark):]}"


def is_phh_root(layout: Layout) -> bool:
    """A directory `phh init` (or `phh demo`) made: it has runs/ or phh_config.json."""
    return layout.runs.is_dir() or layout.settings_path.is_file()


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
