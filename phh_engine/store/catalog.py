"""The catalog: an embedded SQLite database derived from the runs store, for views and history.

The files under runs/ stay the source of truth. The catalog holds, per attempt and per step,
what views and history queries need (ids, status, failure class, exit code, times, durations,
thread id, resume parent, runner, model, token usage, final report status/summary), so that
closed or finished batches need not be read from disk again, and pages and queries cost
O(page) instead of O(history).

Kept current by every phh engine as it writes the files (one writer connection per engine,
WAL, `busy_timeout`), and repaired from the files where it may disagree with them:

* at start, `verify` compares each settled batch's directory fingerprint (`fingerprint`)
  with the one recorded when it settled; a mismatch, an attempt recorded in flight, or a
  batch the catalog does not know means that batch is read from its files again;
* a reader without an engine (`refresh_for_reader`) re-indexes each batch whose fingerprint
  changed since it was indexed;
* `rebuild` (`phh reindex`) derives everything from scratch.

A catalog file that is not ours (another application id or schema version), truncated or
corrupt is moved aside and rebuilt, never trusted. SQLite's locking is unsafe on network
filesystems, so a catalog there is refused (`CatalogError`) with how to move it.
"""

# One file on purpose (~700 lines): the SQL schema, the writers that keep it current and the
# readers share the column lists, the schema version and one connection policy (WAL,
# busy_timeout, refusing network filesystems); a column added in one half of a split and not
# the other would only show as a failing reader. The history queries live in
# interfaces/history.py.

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .crash import crashpoint
from .paths import Layout

if TYPE_CHECKING:  # at run time imported where used: a catalog read (a CLI process) must
    # not pay for pydantic's models (~0.3 s), which only a derivation from files needs
    from ..models import BatchScoreboard
    from .views import AttemptView, BatchView

log = logging.getLogger(__name__)

#: `PRAGMA application_id` of a phh catalog ("phhc"): another SQLite file is foreign
APP_ID = 0x70686863
#: `PRAGMA user_version`: a different one is rebuilt (the catalog is derived), except
#: those in UPGRADES_FROM, whose tables are the same: the schema's idempotent script then
#: only adds what they lack (indexes) in place, without a rebuild of months of history
SCHEMA_VERSION = 2
UPGRADES_FROM = frozenset({1})
ENV_PATH = "PHH_CATALOG"
DEFAULT_NAME = "catalog.sqlite3"
BUSY_TIMEOUT_MS = 10_000
#: = models.TERMINAL_STATUSES (a test keeps them equal; not imported, see above)
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "canceled", "needs_attention")
#: filesystem types (/proc/mounts) on which SQLite's locks are not reliable
NETWORK_FS = frozenset({
    "nfs", "nfs4", "cifs", "smb", "smb2", "smb3", "smbfs", "fuse.sshfs", "sshfs", "9p",
    "afs", "ceph", "fuse.ceph", "glusterfs", "fuse.glusterfs", "lustre", "davfs",
    "fuse.davfs2", "fuse.s3fs", "fuse.rclone", "gpfs", "ocfs2", "gfs2", "fuse.gcsfuse",
    "fuse.juicefs", "beegfs", "virtiofs",
})

_SCHEMA = """
CREATE TABLE IF NOT EXISTS batches (
    batch_id TEXT PRIMARY KEY,
    submitted_at TEXT,
    closed INTEGER NOT NULL DEFAULT 0,
    finished INTEGER NOT NULL DEFAULT 0,
    fingerprint TEXT,
    steps_total INTEGER NOT NULL DEFAULT 0,
    system_row TEXT
);
CREATE TABLE IF NOT EXISTS steps (
    batch_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    job_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    status TEXT NOT NULL,
    failure_class TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_id TEXT,
    row TEXT NOT NULL,
    PRIMARY KEY (batch_id, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS steps_by_status ON steps (batch_id, status, seq);
CREATE TABLE IF NOT EXISTS attempts (
    batch_id TEXT NOT NULL,
    job_id TEXT NOT NULL,
    step_id TEXT NOT NULL,
    run_id TEXT NOT NULL,
    dir_name TEXT NOT NULL,
    attempt_number INTEGER,
    trigger TEXT,
    invocation TEXT,
    status TEXT NOT NULL,
    failure_class TEXT,
    termination_reason TEXT,
    exit_code INTEGER,
    created_at TEXT,
    started_at TEXT,
    ended_at TEXT,
    duration_seconds REAL,
    thread_id TEXT,
    parent_run_id TEXT,
    retry_of TEXT,
    runner_id TEXT,
    model TEXT,
    input_tokens INTEGER NOT NULL DEFAULT 0,
    cached_input_tokens INTEGER NOT NULL DEFAULT 0,
    output_tokens INTEGER NOT NULL DEFAULT 0,
    reasoning_output_tokens INTEGER NOT NULL DEFAULT 0,
    report_status TEXT,
    report_summary TEXT,
    PRIMARY KEY (batch_id, job_id, step_id, run_id)
);
CREATE INDEX IF NOT EXISTS attempts_by_dir ON attempts (dir_name, batch_id, job_id, step_id);
CREATE INDEX IF NOT EXISTS attempts_by_status ON attempts (status, failure_class);
CREATE INDEX IF NOT EXISTS attempts_by_end ON attempts (ended_at);
-- covering indexes of the token usage sums (interfaces/history.token_usage): a GROUP BY
-- reads these narrow rows in order instead of the table through a temporary B-tree
-- (102,500 attempts: per day 65 -> 17 ms, per model 51 -> 17 ms)
CREATE INDEX IF NOT EXISTS attempts_tokens_by_day ON attempts (
    substr(coalesce(started_at, created_at), 1, 10), input_tokens, cached_input_tokens,
    output_tokens, reasoning_output_tokens);
CREATE INDEX IF NOT EXISTS attempts_tokens_by_model ON attempts (
    coalesce(model, '(default)'), input_tokens, cached_input_tokens, output_tokens,
    reasoning_output_tokens);
CREATE INDEX IF NOT EXISTS attempts_tokens_by_batch ON attempts (
    batch_id, input_tokens, cached_input_tokens, output_tokens, reasoning_output_tokens);
"""

#: attempts columns, in table order (a row of `attempt_row`)
ATTEMPT_COLUMNS: tuple[str, ...] = (
    "batch_id", "job_id", "step_id", "run_id", "dir_name", "attempt_number", "trigger",
    "invocation", "status", "failure_class", "termination_reason", "exit_code", "created_at",
    "started_at", "ended_at", "duration_seconds", "thread_id", "parent_run_id", "retry_of",
    "runner_id", "model", "input_tokens", "cached_input_tokens", "output_tokens",
    "reasoning_output_tokens", "report_status", "report_summary",
)
_UPSERT_ATTEMPT = (
    f"INSERT OR REPLACE INTO attempts ({', '.join(ATTEMPT_COLUMNS)}) "
    f"VALUES ({', '.join('?' * len(ATTEMPT_COLUMNS))})"
)
_UPSERT_STEP = ("INSERT OR REPLACE INTO steps (batch_id, seq, job_id, step_id, status, "
                "failure_class, attempts, run_id, row) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)")
_UPSERT_BATCH = ("INSERT OR REPLACE INTO batches (batch_id, submitted_at, closed, finished, "
                 "fingerprint, steps_total, system_row) VALUES (?, ?, ?, ?, ?, ?, ?)")


class CatalogError(Exception):
    """The catalog cannot be used where it is (e.g. on a network filesystem)."""


class CatalogConfigError(CatalogError):
    """`PHH_CATALOG` names something that cannot be the catalog's file (a directory): bad
    configuration (CLI exit 2), never renamed or moved aside."""


class CatalogUnwritable(CatalogError):
    """The catalog's file or directory cannot be written (read-only mount, immutable file or
    directory, no permission). A healthy file there is not called damaged nor moved aside;
    a reader says so (or answers from the files where it can) instead of a traceback."""


# ----------------------------------------------------------------------------- location
def catalog_path(layout: Layout) -> Path:
    """`$PHH_CATALOG` when set (a file path; relative to the root, not the current
    directory, so every command on a root finds the same file), else
    `runs/_system/catalog.sqlite3`. CatalogConfigError when it names a directory (or ends
    in `/`): the operator's directory is never renamed (docs/catalog.md#location)."""
    env = os.environ.get(ENV_PATH)
    if not env:
        return layout.system / DEFAULT_NAME
    path = Path(env).expanduser()
    if not path.is_absolute():
        path = Path(layout.root).absolute() / path
    path = path.resolve()
    if env.endswith(("/", os.sep)) or path.is_dir():
        raise CatalogConfigError(
            f"{ENV_PATH}={env} is a directory; it must name the catalog's file, e.g. "
            f"{ENV_PATH}={path / 'phh-catalog.sqlite3'}")
    return path


def unwritable(path: Path) -> str | None:
    """Why the catalog at `path` could not be written (None: it can): its directory (SQLite
    creates `-wal`/`-shm` files beside it) or the file or its `-wal`/`-shm`. `os.access`
    sees a read-only mount (EROFS) and an immutable file or directory even for root."""
    parent = path.parent
    if parent.is_dir() and not os.access(parent, os.W_OK | os.X_OK):
        return f"its directory {parent} is not writable"
    for suffix in ("", "-wal", "-shm"):
        p = Path(f"{path}{suffix}")
        if p.exists() and not os.access(p, os.W_OK):
            return f"{p} is not writable"
    return None


def unwritable_error(path: Path, why: str) -> CatalogUnwritable:
    return CatalogUnwritable(
        f"the catalog {path} cannot be written ({why}); make it writable, or set "
        f"{ENV_PATH} to a writable local path (it is rebuilt there from runs/); "
        "`phh scoreboard --recompute` and unpaged `phh jobs B` read the files alone")


def unwritable_cause(path: Path, exc: BaseException) -> CatalogUnwritable | None:
    """For a SQLite error that is not damage (`is_damage`): the catalog cannot be written
    when its path says so (`unwritable`) or SQLite answered "readonly"; None otherwise."""
    why = unwritable(path)
    if why is None and "readonly" not in str(exc):
        return None
    return unwritable_error(path, why or str(exc))


def is_damage(exc: BaseException) -> bool:
    """A SQLite error that means the file is damaged (corrupt, truncated, not a database),
    not that it cannot be opened or written (read-only, locked, busy, permissions): only
    damage is a reason to move a file aside and rebuild it."""
    if not isinstance(exc, sqlite3.DatabaseError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB)
    return type(exc) is sqlite3.DatabaseError


def file_id(path: Path) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the file at `path` now; None when there is none."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def fs_type(path: Path, mounts: str = "/proc/mounts") -> str | None:
    """The filesystem type of the mount holding `path` (longest mount point that is a prefix
    of it), from /proc/mounts; None when that cannot be read (not Linux)."""
    try:
        with open(mounts, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return None
    target = str(path)
    best, kind = -1, None
    for line in lines:
        parts = line.split()
        if len(parts) < 3:
            continue
        point = parts[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), parts[2]
    return kind


def check_location(path: Path, mounts: str = "/proc/mounts") -> None:
    """CatalogError when `path` lies on a network filesystem (SQLite locking unsafe there)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    kind = fs_type(probe.resolve(), mounts)
    if kind is not None and (kind in NETWORK_FS or kind.startswith(("nfs", "fuse.sshfs"))):
        raise CatalogError(
            f"the catalog {path} would be on a network filesystem ({kind}), where SQLite's "
            f"locking is unsafe; set {ENV_PATH}=/a/local/disk/phh-catalog.sqlite3 (any local "
            "path; the catalog is derived from runs/ and rebuilt there on first use)")


# ----------------------------------------------------------------------------- rows
def _ts(dt: datetime | None) -> str | None:
    """UTC, fixed width, so text order is time order and substr() gives day / hour."""
    if dt is None:
        return None
    if dt.tzinfo is not None:
        dt = dt.astimezone(UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def model_of(command: Sequence[str]) -> str | None:
    """The model named on Codex's command line (`-m X`, `--model X`, `-c model=X`)."""
    for i, arg in enumerate(command):
        nxt = command[i + 1] if i + 1 < len(command) else None
        if arg in ("-m", "--model") and nxt:
            return nxt
        if arg.startswith("--model="):
            return arg.split("=", 1)[1]
        if arg in ("-c", "--config") and nxt and nxt.startswith("model="):
            return nxt.split("=", 1)[1].strip().strip("\"'")
    return None


def attempt_row(batch_id: str, job_id: str, step_id: str, a: AttemptView) -> tuple[Any, ...]:
    """One attempts-table row from an attempt's files as loaded (`ATTEMPT_COLUMNS` order)."""
    st, meta, rep = a.state, a.meta, a.report
    started = st.started_at if st else None
    ended = st.ended_at if st else None
    duration = (ended - started).total_seconds() if started and ended else None
    usage = st.usage if st else None
    return (
        batch_id, job_id, step_id, a.run_id, a.dir_name,
        meta.attempt_number if meta else None,
        meta.trigger if meta else None,
        meta.invocation if meta else None,
        a.status,
        st.failure_class if st else None,
        st.termination_reason if st else None,
        st.exit_code if st else None,
        _ts(meta.created_at) if meta else None,
        _ts(started), _ts(ended), duration,
        a.thread_id,
        meta.parent_run_id if meta else None,
        meta.retry_of if meta else None,
        a.runner_id,
        model_of(meta.command) if meta else None,
        usage.input_tokens if usage else 0,
        usage.cached_input_tokens if usage else 0,
        usage.output_tokens if usage else 0,
        usage.reasoning_output_tokens if usage else 0,
        rep.status if rep else None,
        rep.summary if rep else None,
    )


#: a directory changed this recently may change again within the same mtime tick (the
#: kernel's coarse clock): its fingerprint is not trusted ("racily clean", as git does)
RACY_NS = 2_000_000_000


def fingerprint(layout: Layout, batch_id: str) -> str | None:
    """A cheap digest of what changes when any attempt of the batch changes: the closed
    marker, and each job directory's name and mtime (every claim and every end rewrites the
    job's current.json by rename, which moves its directory's mtime). One scandir and one
    stat per job. None (never equal to a recorded one) for a batch directory that is gone,
    or one with a job directory changed within the last RACY_NS."""
    bdir = layout.batch_dir(batch_id)
    h = hashlib.blake2b(digest_size=16)
    racy = time.time_ns() - RACY_NS
    try:
        with os.scandir(bdir) as it:
            entries = sorted(it, key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return None
    for e in entries:
        if e.name == "closed.json" or e.name == "batch_meta.json":
            h.update(e.name.encode() + b"\0")
            continue
        if e.name.startswith((".", "_")):
            continue
        try:
            if not e.is_dir(follow_symlinks=False):
                continue
            mtime = e.stat(follow_symlinks=False).st_mtime_ns
        except OSError:
            continue
        if mtime >= racy:
            return None
        h.update(f"{e.name}\0{mtime}\0".encode())
    return h.hexdigest()


def engine_serving(layout: Layout) -> bool:
    """= api_ops.engine_serving (an engine holds its runner's .engine.lock), with a bare
    flock probe: that module's imports would cost a catalog read more than the read."""
    import fcntl

    try:
        names = os.listdir(layout.runners)
    except (FileNotFoundError, NotADirectoryError):
        return False
    for name in names:
        try:
            fd = os.open(layout.runners / name / ".engine.lock", os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        except OSError:
            continue
        finally:
            os.close(fd)  # releases the probe's lock, if it got it
    return False


def batch_dirs(layout: Layout) -> list[str]:
    """Batch ids on disk (the same rule as StoreIndex: no `_` or `.` names)."""
    try:
        names = os.listdir(layout.runs)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n for n in names if not n.startswith(("_", ".")))


def is_finished(batch: BatchView, board: BatchScoreboard) -> bool:
    """Nothing of the batch can change without a new request: closed, or nothing running,
    ready, or waiting (a retry backoff or a running attempt would show in the board)."""
    if any(not a.terminal for _, s in batch.steps() for a in s.attempts):
        return False
    # a retry waiting for its backoff counts as ready (readiness.step_readiness)
    return batch.closed or (board.counts.running == 0 and board.counts.ready == 0)


# ----------------------------------------------------------------------------- cursors
def encode_cursor(key: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(key)).encode()).decode().rstrip("=")


def decode_cursor(cursor: str, size: int) -> list[Any]:
    """ValueError naming the problem for anything that is not one of our cursors."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        key = json.loads(raw)
    except (ValueError, TypeError):
        raise ValueError("cursor: not a cursor this server handed out") from None
    if not isinstance(key, list) or len(key) != size or not all(
            isinstance(k, (str, int)) for k in key):
        raise ValueError("cursor: not a cursor this server handed out")
    return key


# ----------------------------------------------------------------------------- the catalog
@dataclass(slots=True)
class VerifyReport:
    settled: set[str] = field(default_factory=set)  # trusted: not loaded into memory
    reindexed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rebuilt_file: str | None = None  # why the file was discarded (corrupt, foreign, ...)


class Catalog:
    """One connection (thread-safe by a lock; the engine's writer). Open with `open`."""

    def __init__(self, layout: Layout, path: Path, conn: sqlite3.Connection,
                 discarded: str | None = None) -> None:
        self.layout = layout
        self.path = path
        self.conn = conn
        self.discarded = discarded
        self._lock = threading.RLock()
        self._finished: dict[str, bool] = {}
        self.broken: str | None = None  # a write failed: the files still hold the truth
        #: the file this connection writes, as (st_dev, st_ino) when opened, and the largest
        #: size seen (a catalog never shrinks: no VACUUM): `moved` compares them
        self.file_id = file_id(path)
        self._size = _size(path)
        #: a write met a damaged file (corrupt, truncated): `moved` reports it
        self.damaged: str | None = None

    # -------------------------------------------------------------- opening
    @classmethod
    def open(cls, layout: Layout, path: Path | None = None, *,
             thorough: bool = False) -> Catalog:
        """Open (creating or rebuilding the file as needed). CatalogError on a network
        filesystem or an unusable location. A file that is not a healthy phh catalog of this
        schema is moved aside (`<name>.discarded`) and started afresh: the next `verify` or
        `refresh_for_reader` fills it from the files. `thorough` (engine start, doctor)
        also runs SQLite's quick_check over the whole file; a reader checks the header and
        meets any other damage as a DatabaseError (`open_for_reader` then starts afresh)."""
        path = path or catalog_path(layout)
        check_location(path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CatalogError(f"cannot create {path.parent}: {exc.strerror or exc}; set "
                               f"{ENV_PATH} to a writable local path") from None
        if path.is_dir():  # never renamed: see catalog_path
            raise CatalogConfigError(f"the catalog {path} is a directory; set {ENV_PATH} to "
                                     "a file path")
        # before judging the file: one that cannot be opened read-write is not damaged
        why = unwritable(path)
        if why is not None:
            raise unwritable_error(path, why)
        problem = _inspect(path, thorough)
        if problem is not None:
            _discard(path)
        try:
            conn = _connect(path)
        except sqlite3.Error as exc:
            if not is_damage(exc) and (err := unwritable_cause(path, exc)) is not None:
                raise err from None
            raise CatalogError(f"cannot open the catalog {path}: {exc}") from None
        return cls(layout, path, conn, problem)

    def moved(self) -> str | None:
        """Why this connection no longer writes the catalog readers read (None: it does):
        the file at the path was deleted or replaced (another inode), shrank (truncated:
        SQLite may not notice until it reads the lost pages), or a write met a damaged file.
        One stat; the engine asks at every board write (docs/catalog.md#how-it-is-kept-current)."""
        if self.damaged is not None:
            return f"damaged ({self.damaged})"
        now = file_id(self.path)
        if now is None:
            return "deleted"
        if now != self.file_id:
            return "replaced"
        size = _size(self.path)
        if size < self._size:
            return f"truncated ({self._size} -> {size} bytes)"
        self._size = size
        return None

    def close(self) -> None:
        with self._lock, contextlib.suppress(sqlite3.Error):
            self.conn.close()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self.conn
            except BaseException:
                # the write's own error is the one to report (a damaged file: see `moved`)
                with contextlib.suppress(sqlite3.Error):
                    self.conn.execute("ROLLBACK")
                raise
            crashpoint("catalog.before_commit")
            self.conn.execute("COMMIT")

    def _safe(self, what: str, fn: Any, *args: Any) -> Any:
        """Engine-side writes: a catalog failure must never stop the engine (the files hold
        the truth; the next start repairs the catalog from them)."""
        try:
            return fn(*args)
        except sqlite3.Error as exc:
            if is_damage(exc):  # the engine reopens it at its next board write (`moved`)
                self.damaged = str(exc)
            if self.broken is None:
                log.warning("catalog %s failed (%s); it is repaired from the files (a "
                            "damaged file: reopened at the next board write; else at the "
                            "next start)", what, exc)
            self.broken = f"{what}: {exc}"
            with contextlib.suppress(sqlite3.Error):
                self.mark_open_raw(args[0] if args and isinstance(args[0], str) else None)
            return None

    # -------------------------------------------------------------- engine writes
    def put_attempt(self, batch_id: str, job_id: str, step_id: str, view: AttemptView) -> None:
        """Record one attempt's current facts (after its files were written)."""
        self._safe("attempt write", self._put_attempt, batch_id, job_id, step_id, view)

    def _put_attempt(self, batch_id: str, job_id: str, step_id: str, view: AttemptView) -> None:
        with self._tx() as c:
            if view.status not in TERMINAL:  # in flight: never settled (see invalidate)
                c.execute("UPDATE batches SET finished = 0, fingerprint = NULL "
                          "WHERE batch_id = ? AND finished = 1", (batch_id,))
                self._finished[batch_id] = False
            c.execute(_UPSERT_ATTEMPT, attempt_row(batch_id, job_id, step_id, view))

    def invalidate(self, batch_id: str) -> None:
        """Before writing files that may change a settled batch (a claim, an override):
        the next start then reads it from the files whatever happens in between. Always
        written (one small transaction per claim): another engine sharing the catalog may
        have recorded the batch settled since this one last looked."""
        self._safe("invalidate", self.mark_open_raw, batch_id)

    def mark_open_raw(self, batch_id: str | None) -> None:
        if batch_id is None:
            return
        with self._tx() as c:  # no fingerprint either: a reader derives it again too
            c.execute("UPDATE batches SET finished = 0, fingerprint = NULL WHERE batch_id = ?",
                      (batch_id,))
        self._finished[batch_id] = False

    def put_batch(self, batch: BatchView, board: BatchScoreboard,
                  old: BatchScoreboard | None = None, *, attempts: bool = False) -> bool:
        """Record a batch's board (its step rows, changed ones only when `old` is given) and,
        with `attempts`, every attempt of the loaded batch; a batch that is finished gets the
        fingerprint that `verify` compares at the next start. True when the batch is now
        settled (finished, with a fingerprint outside the racy window): the catalog can
        answer for it alone."""
        return bool(self._safe("batch write", self._put_batch, batch, board, old, attempts))

    def _put_batch(self, batch: BatchView, board: BatchScoreboard,
                   old: BatchScoreboard | None, attempts: bool) -> bool:
        bid = batch.batch_id
        finished = is_finished(batch, board)
        fp = fingerprint(self.layout, bid) if finished else None
        from ..derive.scoreboards import _system_row

        srow = _system_row(batch, board).model_dump_json()
        latest = {(j.job_id, s.step_id): s.latest for j, s in batch.steps()}
        old_rows = ({(r.job_id, r.step_id): r for r in old.steps} if old is not None
                    else None)
        step_rows = []
        for seq, r in enumerate(board.steps):
            if old_rows is not None and old_rows.get((r.job_id, r.step_id)) == r:
                continue
            la = latest.get((r.job_id, r.step_id))
            fc = la.state.failure_class if la is not None and la.state else None
            step_rows.append((bid, seq, r.job_id, r.step_id, r.status, fc, r.attempts,
                              r.run_id, r.model_dump_json(exclude_none=True)))
        with self._tx() as c:
            if attempts:
                c.execute("DELETE FROM attempts WHERE batch_id = ?", (bid,))
                c.executemany(_UPSERT_ATTEMPT, (
                    attempt_row(bid, j.job_id, s.step_id, a)
                    for j, s in batch.steps() for a in s.attempts))
            if old_rows is None:
                c.execute("DELETE FROM steps WHERE batch_id = ?", (bid,))
            c.executemany(_UPSERT_STEP, step_rows)
            c.execute(_UPSERT_BATCH, (bid, _ts(board.submitted_at), int(batch.closed),
                                      int(finished), fp, board.steps_total, srow))
        self._finished[bid] = finished
        return finished and fp is not None

    def remove_batch(self, batch_id: str) -> None:
        with self._tx() as c:
            for table in ("attempts", "steps", "batches"):
                c.execute(f"DELETE FROM {table} WHERE batch_id = ?", (batch_id,))
        self._finished.pop(batch_id, None)

    # -------------------------------------------------------------- derivation from files
    def index_batch(self, batch_id: str) -> bool:
        """(Re)derive one batch from its files, alone in memory; False when it is gone."""
        from ..derive.scoreboards import batch_scoreboard
        from .index import StoreIndex
        from .overrides import apply_marks, list_results

        index = StoreIndex(self.layout)
        batch = index.load_batch(batch_id)
        if batch is None:
            self.remove_batch(batch_id)
            return False
        for res in _results_for(self.layout, batch_id, list_results):
            apply_marks(index.batches, res)
        board = batch_scoreboard(batch, datetime.now(UTC))
        self._put_batch(batch, board, None, True)
        if not self._finished.get(batch_id):  # reader: remember what it read, to compare
            with self._tx() as c:
                c.execute("UPDATE batches SET fingerprint = ? WHERE batch_id = ?",
                          (fingerprint(self.layout, batch_id), batch_id))
        return True

    def verify(self, *, reindex_open: bool = False) -> VerifyReport:
        """Start-up check (O(batches) + one stat per job of each settled batch): returns the
        settled batches whose fingerprint still matches (trusted, not to be loaded). Batches
        gone from disk are dropped; others are left to the caller (`reindex_open`: derive
        them here, as a reader does)."""
        rep = VerifyReport(rebuilt_file=self.discarded)
        on_disk = set(batch_dirs(self.layout))
        with self._lock:
            known = {r[0]: (r[1], r[2]) for r in self.conn.execute(
                "SELECT batch_id, finished, fingerprint FROM batches")}
            in_flight = {r[0] for r in self.conn.execute(
                "SELECT DISTINCT batch_id FROM attempts WHERE status NOT IN "
                f"({', '.join('?' * len(TERMINAL))})", TERMINAL)}
        for bid in sorted(set(known) - on_disk):
            self.remove_batch(bid)
            rep.removed.append(bid)
        for bid in sorted(on_disk):
            finished, fp = known.get(bid, (0, None))
            if finished and bid not in in_flight and fp is not None and \
                    fp == fingerprint(self.layout, bid):
                rep.settled.add(bid)
                self._finished[bid] = True
                continue
            if reindex_open:
                self.index_batch(bid)
                rep.reindexed.append(bid)
        return rep

    def refresh_for_reader(self, batch_ids: Iterable[str] | None = None) -> VerifyReport:
        """What a reader without an engine does before answering from the catalog: new
        batches and batches whose fingerprint moved since they were indexed are derived from
        their files. While an engine serves the root it keeps the catalog current itself, so
        only batches the catalog has never seen are derived. Settled batches are trusted
        here (a phh writer marks a batch open before it changes one: `invalidate`); the
        engine's start verifies their fingerprints. `batch_ids`: only those."""
        rep = VerifyReport(rebuilt_file=self.discarded)
        if batch_ids is None:
            on_disk = set(batch_dirs(self.layout))
        else:
            on_disk = {b for b in batch_ids if self.layout.batch_meta(b).is_file()}
        with self._lock:
            known = {r[0]: r[1] for r in self.conn.execute(
                "SELECT batch_id, fingerprint FROM batches")}
            settled = {r[0] for r in self.conn.execute(
                "SELECT batch_id FROM batches WHERE finished = 1 AND fingerprint IS NOT NULL")}
            open_rows = {r[0] for r in self.conn.execute(
                "SELECT batch_id FROM batches WHERE closed = 0")}
        # an operator may close a settled batch by hand (SPEC's closed.json, no phh writer
        # marks it open first): one stat per batch, not the fingerprint's one per job
        closed_by_hand = {b for b in settled & open_rows & on_disk if os.path.exists(
            os.path.join(self.layout.batch_dir(b), "closed.json"))}
        serving = engine_serving(self.layout)
        gone = set(known) - on_disk if batch_ids is None else set(batch_ids) - on_disk
        for bid in sorted(gone & set(known)):
            self.remove_batch(bid)
            rep.removed.append(bid)
        for bid in sorted(on_disk):
            if bid not in closed_by_hand and (bid in settled or (bid in known and (serving or (
                    known[bid] is not None and known[bid] == fingerprint(self.layout, bid))))):
                continue
            if self.index_batch(bid):
                rep.reindexed.append(bid)
        return rep

    def rebuild(self) -> int:
        """Everything from the files, one batch in memory at a time; returns batches."""
        with self._tx() as c:
            for table in ("attempts", "steps", "batches"):
                c.execute(f"DELETE FROM {table}")
        self._finished.clear()
        n = 0
        for bid in batch_dirs(self.layout):
            n += self.index_batch(bid)
        return n

    # -------------------------------------------------------------- reads
    def query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return list(self.conn.execute(sql, tuple(args)))

    def system_rows(self, exclude: Iterable[str] = ()) -> list[str]:
        """Each batch's system-view row (SystemRow JSON) as last recorded."""
        skip = set(exclude)
        return [r[1] for r in self.query("SELECT batch_id, system_row FROM batches "
                                         "WHERE system_row IS NOT NULL")
                if r[0] not in skip]

    def snapshot(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row that is a function of the files alone (tests compare a catalog with a
        from-scratch rebuild): attempts, step statuses and batch flags."""
        return {
            "attempts": [tuple(r) for r in self.query(
                f"SELECT {', '.join(ATTEMPT_COLUMNS)} FROM attempts "
                "ORDER BY batch_id, job_id, step_id, run_id")],
            "steps": [tuple(r) for r in self.query(
                "SELECT batch_id, seq, job_id, step_id, status, failure_class, attempts, "
                "run_id FROM steps ORDER BY batch_id, seq")],
            "batches": [tuple(r) for r in self.query(
                "SELECT batch_id, submitted_at, closed, finished, steps_total FROM batches "
                "ORDER BY batch_id")],
        }

    def health(self) -> tuple[bool, str]:
        """(ok, detail) for `phh doctor`: integrity and schema of the file as it is."""
        try:
            with self._lock:
                ok = self.conn.execute("PRAGMA quick_check").fetchone()[0]
                n = self.conn.execute("SELECT count(*) FROM attempts").fetchone()[0]
                b = self.conn.execute("SELECT count(*) FROM batches").fetchone()[0]
        except sqlite3.Error as exc:
            return False, str(exc)
        if ok != "ok":
            return False, f"integrity check: {ok}"
        return True, f"{b} batch(es), {n} attempt(s)"


def open_for_reader(layout: Layout) -> Catalog:
    """A catalog brought up to date for a reader (CLI, API without an engine): opened,
    refreshed from the files where they moved; a file found damaged on the way is discarded
    and derived again (never trusted). CatalogError as `Catalog.open`, and for a directory
    that is not a phh root (a read must not create runs/ there)."""
    if not layout.runs.is_dir():
        raise CatalogError(f"{layout.root} is not a phh root (no runs/); `phh init` makes one, "
                           "or pass --root")
    cat = Catalog.open(layout)
    try:
        cat.refresh_for_reader()
        return cat
    except sqlite3.DatabaseError as exc:
        cat.close()
        if not is_damage(exc):  # read-only, locked...: the file is not to blame
            raise unwritable_cause(cat.path, exc) or CatalogError(
                f"the catalog {cat.path} cannot be used now: {exc}") from None
        log.warning("catalog %s damaged (%s): rebuilding it from the files", cat.path, exc)
        _discard(cat.path)
        cat = Catalog.open(layout)
        cat.discarded = f"corrupt: {exc}"
        cat.refresh_for_reader()
        return cat


def _results_for(layout: Layout, batch_id: str, list_results: Any) -> list[Any]:
    return [r for r in list_results(layout) if r.batch_id == batch_id]


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000,
                           isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA journal_mode = WAL")
    # NORMAL in WAL mode: a power loss may lose the last commits, never corrupt the file;
    # the catalog is derived, and verify() repairs what was lost from the files
    conn.execute("PRAGMA synchronous = NORMAL")
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] != SCHEMA_VERSION:
            # idempotent (IF NOT EXISTS), so two processes creating it at once both succeed
            conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA application_id = {APP_ID};"
                               f" PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        conn.close()
        raise
    return conn


def _inspect(path: Path, thorough: bool) -> str | None:
    """Why an existing file must not be trusted (None: missing, or a healthy catalog)."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return None
    if size == 0:
        return None  # sqlite makes an empty file a fresh database
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as exc:
        if not is_damage(exc):  # cannot be opened (permissions...): not a reason to discard
            return None
        return f"unreadable: {exc}"
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        ver = conn.execute("PRAGMA user_version").fetchone()[0]
        if app != APP_ID:
            return f"not a phh catalog (application_id {app:#x})"
        if ver != SCHEMA_VERSION and ver not in UPGRADES_FROM:
            return f"schema version {ver}, expected {SCHEMA_VERSION}"
        if thorough:
            check = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if check != "ok":
                return f"corrupt: {check}"
        conn.execute("SELECT count(*) FROM batches").fetchone()
    except sqlite3.Error as exc:
        if not is_damage(exc):  # locked, busy, cannot open the WAL read-only: not damage
            return None
        return f"corrupt: {exc}"
    finally:
        conn.close()
    return None


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


def _discard(path: Path) -> None:
    """Move a catalog file that must not be trusted (and its WAL) out of the way. Never a
    directory (CatalogConfigError: an operator's directory is not ours to move);
    CatalogUnwritable when the move is refused (read-only, immutable)."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        p = Path(f"{path}{suffix}")
        if p.is_dir() and not p.is_symlink():
            raise CatalogConfigError(f"{p} is a directory, not a catalog file; set {ENV_PATH} "
                                     "to a file path")
        try:
            os.replace(p, f"{path}.discarded{suffix}")
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise unwritable_error(path, f"cannot move the damaged file aside: "
                                   f"{exc.strerror or exc}") from None
