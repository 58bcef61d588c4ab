"""The filesystem queue (docs/interfaces.md): drop a Launch Table into `<queue_root>/incoming/`.

Outcome, per dropped file `NAME`:
- accepted: the file moves to `accepted/NAME`, beside it `accepted/NAME.ack.json` with
  `batch_id`, `accepted_job_ids`, `sha256`, `duplicate` (true when these exact bytes were
  submitted before: the ack then names the existing batch, no second batch is created),
  `notes` (`{path, message}`: how the table was read, see `dialect`);
- rejected: the file moves to `rejected/NAME`, beside it `rejected/NAME.error.json` listing
  every validation error (`path`, `message`).
If `NAME` is already taken in accepted/ or rejected/ (a name dropped twice), the file lands
as `NAME~2`, `NAME~3`, ... (with its ack/error named after that); acks carry
`dropped_name` and `sha256` so a dropper can match.

Ignored until renamed into place: dotfiles, `*.tmp`, `*.part`, `*~` and directories. Write a
Launch Table as `.NAME` or `NAME.tmp` and rename it: a rename is atomic, so a reader never
sees half a file.

Crash safety (never lose a file, never make two batches of one drop). Each step leaves a
state the next scan completes:
1. claim: `incoming/NAME` is renamed to `incoming/.phh-ingest~NAME` (same directory, so a
   `prompt_ref` relative to the Launch Table still resolves; the dot hides it from step 1 of
   the next scan; a new drop of the same NAME cannot overwrite it).
2. intent: `.phh/intents/NAME.json` records `sha256`, a random `drop_id`, and the `batch_id`
   chosen (the table's own, else a fresh one) BEFORE anything is created.
3. submit with that batch_id (`dedupe=True`: a re-drop finds the first batch). After a crash
   here, the intent's batch_id is looked up: when `runs/<batch_id>/batch_meta.json` exists
   with the same `launch_table_sha256`, the batch is ours and is not created again.
4. ledger: `.phh/ledger/<sha256>.json` (write-once) maps the bytes to their batch: every later
   drop of the same bytes is a duplicate (`drop_id` tells the first drop from later ones).
5. ack (atomic), then the file is renamed next to it, then the intent is removed.
Every scan first finishes any `incoming/.phh-ingest~*` left by a crash. One scanner at a time
per queue (`.phh/queue.lock`, released by the OS if its holder dies).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from ..models import BatchMeta, HarnessConfig, check_id, utcnow
from ..store.crash import crashpoint
from ..store.files import atomic_write_json, read_json, read_model, write_once_json
from ..store.harness_config import ConfigError
from ..store.paths import Layout, new_batch_id
from .dialect import translate
from .submit import Issue, SubmitError, load_launch_table, submit

log = logging.getLogger(__name__)

CLAIM_PREFIX = ".phh-ingest~"
IGNORED_SUFFIXES = (".tmp", ".part", ".partial", ".swp", "~")
TABLE_SUFFIXES = (".json", ".yaml", ".yml")
#: a Launch Table larger than this is refused without being read
MAX_TABLE_BYTES = 64 << 20


@dataclass(slots=True)
class QueueOutcome:
    """What one scan did with one dropped file."""

    name: str
    status: Literal["accepted", "rejected"]
    file: Path
    record: Path
    batch_id: str | None = None
    accepted_job_ids: list[str] = field(default_factory=list)
    duplicate: bool = False
    errors: list[dict[str, str]] = field(default_factory=list)
    notes: list[dict[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "file": str(self.file),
                               "record": str(self.record)}
        if self.status == "accepted":
            out.update(batch_id=self.batch_id, accepted_job_ids=self.accepted_job_ids,
                       duplicate=self.duplicate, notes=self.notes)
        else:
            out["errors"] = self.errors
        return out


def ignored(name: str) -> bool:
    """Temp/partial names a writer renames into place later."""
    return name.startswith(".") or name.endswith(IGNORED_SUFFIXES) or (
        name.startswith("#") and name.endswith("#"))


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class DropQueue:
    """One queue root. `scan()` is idempotent and safe to call from any thread or process;
    concurrent scans of the same queue serialise on a file lock (`.phh/queue.lock`)."""

    def __init__(self, layout: Layout, config: HarnessConfig, root: Path | None = None) -> None:
        self.layout = layout
        self.config = config
        q = root or Path(config.interfaces.filesystem_queue_mode.queue_root)
        self.root = q if q.is_absolute() else layout.root / q
        self.incoming = self.root / "incoming"
        self.accepted = self.root / "accepted"
        self.rejected = self.root / "rejected"
        self.private = self.root / ".phh"
        self.intents = self.private / "intents"
        self.ledger = self.private / "ledger"
        self.lock_timeout = 60.0

    @classmethod
    def from_config(cls, layout: Layout, config: HarnessConfig) -> DropQueue | None:
        """The queue the harness config enables, or None when it is switched off."""
        if not config.interfaces.filesystem_queue_mode.enabled:
            return None
        return cls(layout, config)

    def ensure_dirs(self) -> None:
        for d in (self.incoming, self.accepted, self.rejected, self.intents, self.ledger):
            d.mkdir(parents=True, exist_ok=True)

    # ------------------------------------------------------------------ scanning
    def pending(self) -> list[str]:
        """Names in incoming/ a scan would take now (oldest drop first)."""
        try:
            entries = list(os.scandir(self.incoming))
        except FileNotFoundError:
            return []
        rows: list[tuple[float, str]] = []
        for e in entries:
            if ignored(e.name):
                continue
            try:
                st = e.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(st.st_mode):
                continue
            rows.append((st.st_mtime, e.name))
        return [n for _, n in sorted(rows)]

    def scan(self) -> list[QueueOutcome]:
        """Finish interrupted ingests, then ingest every dropped file once."""
        self.ensure_dirs()
        lock = FileLock(str(self.private / "queue.lock"), thread_local=False)
        try:
            # wait for a concurrent scanner, then look again: a file that arrived while it
            # was listing is ours to take
            lock.acquire(timeout=self.lock_timeout)
        except Timeout:
            return []
        try:
            out: list[QueueOutcome] = []
            for name in self._claimed():
                res = self._process(name)
                if res is not None:
                    out.append(res)
            for name in self.pending():
                claimed = self.incoming / (CLAIM_PREFIX + name)
                if claimed.exists() or claimed.is_symlink():
                    continue  # an unfinished claim of the same name: the next scan
                try:
                    os.rename(self.incoming / name, claimed)
                except FileNotFoundError:
                    continue
                crashpoint("queue.after_claim")
                res = self._process(name)
                if res is not None:
                    out.append(res)
            self._drop_stale_intents()
            return out
        finally:
            lock.release()

    def _claimed(self) -> list[str]:
        try:
            names = os.listdir(self.incoming)
        except FileNotFoundError:
            return []
        return sorted(n[len(CLAIM_PREFIX):] for n in names if n.startswith(CLAIM_PREFIX))

    def _drop_stale_intents(self) -> None:
        """An intent whose claimed file is gone (moved, then crash before cleanup)."""
        with contextlib.suppress(FileNotFoundError):
            for n in os.listdir(self.intents):
                if n.startswith("."):
                    continue
                name = n.removesuffix(".json")
                if not (self.incoming / (CLAIM_PREFIX + name)).exists():
                    (self.intents / n).unlink(missing_ok=True)

    # ------------------------------------------------------------------ one file
    def _process(self, name: str) -> QueueOutcome | None:
        claimed = self.incoming / (CLAIM_PREFIX + name)
        try:
            return self._ingest(name, claimed)
        except (OSError, ConfigError) as exc:
            # not the file's fault (disk full, unreadable config): it stays claimed and the
            # next scan tries again; nothing is lost
            log.warning("queue: %s stays queued: %s", name, exc)
            return None
        except Exception as exc:  # one drop must never stop the queue
            # a drop phh could not even judge: rejected with the cause, and the drops after
            # it are still processed
            log.exception("queue: %s could not be ingested", name)
            intent = read_json(self.intents / f"{name}.json")
            if not isinstance(intent, dict) or not isinstance(intent.get("drop_id"), str):
                intent = {"drop_id": secrets.token_hex(8)}
            try:
                return self._reject(name, claimed, None, intent, [Issue(
                    "$", f"phh could not read this drop ({type(exc).__name__}: {exc})")])
            except OSError:
                return None

    def _ingest(self, name: str, claimed: Path) -> QueueOutcome | None:
        try:
            st = os.lstat(claimed)
        except FileNotFoundError:
            return None
        intent_path = self.intents / f"{name}.json"
        intent = read_json(intent_path)
        if not isinstance(intent, dict) or not isinstance(intent.get("drop_id"), str):
            intent = {"drop_id": secrets.token_hex(8), "dropped_name": name,
                      "claimed_at": utcnow().isoformat(), "sha256": None, "batch_id": None}
            atomic_write_json(intent_path, intent)
        if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
            return self._reject(name, claimed, None, intent, [Issue(
                "$", "not a regular file (symlinks are refused): drop the Launch Table itself")])
        if st.st_size > MAX_TABLE_BYTES:
            return self._reject(name, claimed, None, intent, [Issue(
                "$", f"{st.st_size} bytes exceed the queue's limit of {MAX_TABLE_BYTES} bytes")])
        if not name.lower().endswith(TABLE_SUFFIXES):
            return self._reject(name, claimed, None, intent, [Issue(
                "$", f"{name!r} is not a Launch Table name: use .json, .yaml or .yml")])
        sha = _sha256(claimed.read_bytes())
        if intent.get("sha256") != sha:  # first look (or the bytes changed): no batch yet
            intent.update(sha256=sha, batch_id=None)
        ledger = read_json(self.ledger / f"{sha}.json")
        if not isinstance(ledger, dict):
            try:
                ledger = self._submit(name, claimed, sha, intent, intent_path)
            except SubmitError as exc:
                return self._reject(name, claimed, sha, intent, exc.issues)
        dup = ledger.get("drop_id") != intent["drop_id"]
        return self._accept(name, claimed, sha, intent, ledger, dup)

    def _submit(self, name: str, claimed: Path, sha: str, intent: dict[str, Any],
                intent_path: Path) -> dict[str, Any]:
        raw, _ = load_launch_table(claimed)  # SubmitError (parse) -> rejected
        own = raw.get("batch_id") if isinstance(raw, dict) else None
        batch_id = own if isinstance(own, str) else intent.get("batch_id")
        if not isinstance(batch_id, str):
            batch_id = new_batch_id(utcnow())
        intent["batch_id"] = batch_id
        atomic_write_json(intent_path, intent)  # the id is fixed BEFORE the batch exists
        crashpoint("queue.after_intent")
        mine = self._published(batch_id, sha)
        existing = False
        if mine is not None:  # a crash hit after the batch was created: it is ours
            jobs = mine
            limit = self.config.limits.global_concurrency
            notes = [n.as_dict() for n in translate(raw, concurrency_limit=limit).notes]
        else:
            res = submit(self.layout, claimed, dedupe=True,
                         batch_id=None if isinstance(own, str) else batch_id)
            crashpoint("queue.after_submit")
            batch_id, jobs, existing = res.batch_id, res.accepted_job_ids, res.existing
            notes = [n.as_dict() for n in res.notes]
        entry = {"batch_id": batch_id, "accepted_job_ids": jobs, "sha256": sha,
                 "drop_id": "(earlier submit)" if existing else intent["drop_id"],
                 "dropped_name": name, "recorded_at": utcnow().isoformat(), "notes": notes}
        with contextlib.suppress(FileExistsError):
            write_once_json(self.ledger / f"{sha}.json", entry)
        crashpoint("queue.after_ledger")
        stored = read_json(self.ledger / f"{sha}.json")
        return stored if isinstance(stored, dict) else entry

    def _published(self, batch_id: str, sha: str) -> list[str] | None:
        try:
            check_id(batch_id)
        except ValueError:
            return None
        meta = read_model(self.layout.batch_meta(batch_id), BatchMeta)
        if meta is None or meta.launch_table_sha256 != sha:
            return None
        return [j.job_id for j in meta.jobs]

    # ------------------------------------------------------------------ outcomes
    def _slot(self, directory: Path, name: str, suffix: str, drop_id: str | None) -> str:
        """A free name in accepted/ or rejected/ (`NAME`, `NAME~2`, ...); a record left by
        this very drop (crash between record and move) is reused."""
        k = 1
        while True:
            cand = name if k == 1 else f"{name}~{k}"
            record = directory / (cand + suffix)
            if not (directory / cand).exists():
                if not record.exists():
                    return cand
                rec = read_json(record)
                if drop_id and isinstance(rec, dict) and rec.get("drop_id") == drop_id:
                    return cand
            k += 1

    def _accept(self, name: str, claimed: Path, sha: str, intent: dict[str, Any],
                ledger: dict[str, Any], duplicate: bool) -> QueueOutcome:
        slot = self._slot(self.accepted, name, ".ack.json", intent["drop_id"])
        ack = {
            "batch_id": ledger["batch_id"],
            "accepted_job_ids": list(ledger.get("accepted_job_ids") or []),
            "duplicate": duplicate,
            "notes": list(ledger.get("notes") or []),
            "sha256": sha,
            "dropped_name": name,
            "accepted_file": f"accepted/{slot}",
            "drop_id": intent["drop_id"],
            "accepted_at": utcnow().isoformat(),
        }
        record = self.accepted / f"{slot}.ack.json"
        atomic_write_json(record, ack)
        crashpoint("queue.after_ack")
        os.rename(claimed, self.accepted / slot)
        crashpoint("queue.after_move")
        (self.intents / f"{name}.json").unlink(missing_ok=True)
        log.info("queue: accepted %s as %s%s", name, ack["batch_id"],
                 " (duplicate)" if duplicate else "")
        return QueueOutcome(name, "accepted", self.accepted / slot, record,
                            batch_id=ack["batch_id"], accepted_job_ids=ack["accepted_job_ids"],
                            duplicate=duplicate, notes=ack["notes"])

    def _reject(self, name: str, claimed: Path, sha: str | None, intent: dict[str, Any],
                issues: list[Issue]) -> QueueOutcome:
        drop_id = str(intent["drop_id"])
        slot = self._slot(self.rejected, name, ".error.json", drop_id)
        errors = [{"path": i.path, "message": i.message} for i in issues]
        record = self.rejected / f"{slot}.error.json"
        atomic_write_json(record, {
            "dropped_name": name, "sha256": sha, "rejected_file": f"rejected/{slot}",
            "drop_id": drop_id, "rejected_at": utcnow().isoformat(), "errors": errors,
        })
        crashpoint("queue.after_error")
        os.rename(claimed, self.rejected / slot)
        (self.intents / f"{name}.json").unlink(missing_ok=True)
        log.info("queue: rejected %s (%d error(s))", name, len(errors))
        return QueueOutcome(name, "rejected", self.rejected / slot, record, errors=errors)
