"""Write errors on the runs store (full disk, no inodes left, quota): pause, never crash.

One `WriteGuard` per engine, shared with its runner. Any OSError from a store write (a
claim, a heartbeat, a state or scoreboard write) is reported here instead of ending the
loop that made it: the engine then starts nothing new (an admission reason and a scoreboard
note), every monitor keeps watching its Codex, and finalisation waits and retries
(`retry_writes`) until the write goes through. The health tick `probe`s the store; the
first successful probe clears the problem and work continues without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: errors that go away when an operator frees space: wait and retry rather than give up
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
RETRY_FIRST_SECONDS = 0.5
RETRY_MAX_SECONDS = 10.0
#: what must be free before a probe write counts as "space is back" (about one attempt)
PROBE_MIN_INODES = 100
PROBE_MIN_BYTES = 1 << 20


def is_space_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in SPACE_ERRNOS


def describe(exc: OSError) -> str:
    """`ENOSPC (No space left on device)`, or the exception's text without an errno."""
    name = errno.errorcode.get(exc.errno or 0)
    if name and exc.strerror:
        return f"{name} ({exc.strerror})"
    return f"{type(exc).__name__}: {exc}"


class WriteGuard:
    """The last store write that failed, until a write succeeds again. Thread-safe enough:
    one attribute assignment per report, read on the loop."""

    def __init__(self) -> None:
        self.problem: str | None = None
        self.since: float | None = None  # time.monotonic() of the first failure
        self.failures = 0

    def failed(self, exc: OSError, what: str) -> None:
        """Record a failed write (`what`: e.g. "the heartbeat of run r…")."""
        self.failures += 1
        if self.problem is None:
            self.since = time.monotonic()
            log.warning("write error on the runs store while writing %s: %s", what,
                        describe(exc))
        where = f" at {exc.filename}" if exc.filename else ""
        fix = ("free space or inodes: `phh gc`, or remove files" if is_space_error(exc)
               else "fix or remove what is in the way")
        self.problem = (f"write error on the runs store: {describe(exc)} writing {what}"
                        f"{where}; new attempts wait until writes succeed again ({fix})")

    def clear(self) -> None:
        if self.problem is not None:
            log.warning("writes to the runs store succeed again")
        self.problem = None
        self.since = None

    def probe(self, directory: Path) -> bool:
        """With room for about one attempt free (PROBE_MIN_*), try a small durable write (a
        new inode and a block) in `directory`; clear the problem on success. Blocking: call
        it off the loop."""
        if self.problem is None:
            return True
        try:  # one freed inode is not space: wait for room for an attempt or so
            vfs = os.statvfs(directory)
        except OSError:
            return False
        if (vfs.f_files > 0 and vfs.f_favail < PROBE_MIN_INODES) or \
                vfs.f_bavail * vfs.f_frsize < PROBE_MIN_BYTES:
            return False
        tmp = directory / f".phh-write-probe.{os.getpid()}.{secrets.token_hex(4)}"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, b"\0" * 4096)
                os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        self.clear()
        return True


async def retry_writes(guard: WriteGuard, what: str,
                       call: Callable[[], Awaitable[T]]) -> T:
    """`await call()`, again after a growing pause while it fails with a space error (the
    problem goes to `guard` meanwhile); any other exception propagates. Cancellation ends
    the wait."""
    delay = RETRY_FIRST_SECONDS
    while True:
        try:
            return await call()
        except OSError as exc:
            if not is_space_error(exc):
                raise
            guard.failed(exc, what)
        await asyncio.sleep(delay)
        delay = min(delay * 2, RETRY_MAX_SECONDS)
