"""The only place that writes the runs store: atomic snapshots, write-once files, state guard.

Readers never see partial JSON because every snapshot is written to a temp file in the same
directory, fsynced and renamed into place; write-once files are published with `link()`, which
fails instead of overwriting.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar

from filelock import FileLock, Timeout
from pydantic import BaseModel

from ..models import TERMINAL_STATUSES, AttemptState, AttemptStatus

M = TypeVar("M", bound=BaseModel)

_ALLOWED: dict[AttemptStatus | None, frozenset[AttemptStatus]] = {
    None: frozenset({"queued", "running", "canceled"}),
    "queued": frozenset({"queued", "running", "canceled"}),
    "running": frozenset({"running", *TERMINAL_STATUSES}),
}


class StoreError(Exception):
    """A store operation that must not happen (e.g. rewriting a write-once file)."""


class TerminalStateError(StoreError):
    """A write tried to change an attempt whose status is already terminal."""


def to_bytes(obj: BaseModel | dict[str, Any] | list[Any]) -> bytes:
    if isinstance(obj, BaseModel):
        return obj.model_dump_json(indent=2, exclude_none=True).encode() + b"\n"
    return json.dumps(obj, indent=2, sort_keys=False, default=str).encode() + b"\n"


def _write_temp(path: str, data: bytes, durable: bool = True) -> str:
    """A complete temp file next to `path` (strings throughout: this runs ~8 times per
    attempt, and pathlib's joins and conversions were a quarter of the worker threads' CPU)."""
    directory, name = os.path.split(path)
    directory = directory or "."  # a bare file name: the temp file goes beside it too
    tmp = f"{directory}/.{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileNotFoundError:  # first file of its directory: make it (rare, so not up front)
        os.makedirs(directory, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        if durable:
            os.fsync(fd)
    except BaseException:  # e.g. ENOSPC: leave no half-written temp file taking space
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    os.close(fd)
    return tmp


def atomic_write_bytes(path: str | Path, data: bytes, durable: bool = True) -> None:
    """`durable=False` skips the fsync: only for derived files a restart rebuilds (the
    rename still means a reader never sees a partial file while the machine is up)."""
    path = os.fspath(path)
    tmp = _write_temp(path, data, durable)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | Path, obj: BaseModel | dict[str, Any] | list[Any],
                      durable: bool = True) -> None:
    atomic_write_bytes(path, to_bytes(obj), durable)


def write_once_bytes(path: str | Path, data: bytes) -> None:
    """Publish a complete file that must never be replaced; FileExistsError if it exists."""
    path = os.fspath(path)
    tmp = _write_temp(path, data)
    try:
        os.link(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def write_once_json(path: str | Path, obj: BaseModel | dict[str, Any] | list[Any]) -> None:
    write_once_bytes(path, to_bytes(obj))


def read_json(path: Path) -> Any | None:
    """Missing or unparsable means 'not there yet', never an exception."""
    try:
        with open(path, "rb") as fh:
            return json.loads(fh.read())
    except (OSError, ValueError, RecursionError):  # RecursionError: hostile nesting
        return None


def read_model(path: str | Path, model: type[M]) -> M | None:
    """`read_json`'s contract (missing, unparsable or invalid -> None), but the bytes go
    straight to pydantic's JSON validator: no json.loads + validate_python round trip."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
        return model.model_validate_json(data)
    except (OSError, ValueError):  # pydantic's ValidationError is a ValueError
        return None


def check_transition(old: AttemptStatus | None, new: AttemptStatus) -> None:
    if old in TERMINAL_STATUSES:
        if old == new:
            raise TerminalStateError(f"attempt already {old}; a terminal state never changes")
        raise TerminalStateError(f"refusing {old} -> {new}: terminal states never change")
    if new not in _ALLOWED[old]:
        raise StoreError(f"illegal state transition {old} -> {new}")


def write_state(path: Path, state: AttemptState) -> None:
    """Guarded state.json write: the on-disk status decides what may follow it."""
    current = read_json(path)
    old = current.get("status") if isinstance(current, dict) else None
    check_transition(old, state.status)
    atomic_write_json(path, state)


@contextlib.contextmanager
def job_lock(lock_path: Path, timeout: float = 60.0) -> Iterator[None]:
    """Cross-process lock for one job: claims, finalisation and current.json updates.

    A bare flock on a fresh descriptor (so threads of one process exclude each other too):
    taken several times per attempt, where FileLock's realpath and bookkeeping cost more than
    the lock. Uncontended is one open + one flock; contended waits with a short backoff and
    raises filelock.Timeout after `timeout` seconds."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except FileNotFoundError:
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + timeout
        delay = 0.001
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise Timeout(str(lock_path)) from None
                time.sleep(delay)  # held for a few file writes by another thread/process
                delay = min(delay * 2, 0.05)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


def lock_held(lock_path: Path) -> bool:
    """Does another process hold this lock? (Probe: acquire without waiting, release.)"""
    lock = FileLock(str(lock_path), timeout=0, thread_local=False)
    try:
        lock.acquire()
    except Timeout:
        return True
    lock.release()
    return False


def append_line(path: Path, line: str) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(line if line.endswith("\n") else line + "\n")
