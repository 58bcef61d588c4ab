"""An attempt's Codex process: the exit-code wrapper it runs under, handles to wait on it
(our own child, or one a previous engine left running), and signalling its process tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess

import psutil

# `trap :` keeps the wrapper alive through SIGINT/SIGTERM (the child still gets them, as
# caught handlers reset on exec) so it can record the exit code; only SIGKILL loses it.
# The code is one write of a few bytes by the printf builtin, not temp + `mv`: a reader
# sees no file, an empty one (treated as "not recorded", like none) or the whole number,
# and the wrapper spawns no process of its own.
_WRAPPER = 'trap : INT TERM HUP; "$@"; rc=$?; printf "%s\\n" "$rc" > "$0"; exit "$rc"'



def kill_group(pid: int, sig: int) -> None:
    """Signal the process group an attempt's wrapper leads (its pid: a new session)."""
    if pid <= 1:  # never signal our own group (killpg(0)) or init
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


def kill_tree(pid: int, sig: int) -> None:
    """Signal a process group and every descendant found by walking the tree: agent commands
    can run in their own session, outside the group (docs/codex.md)."""
    if pid <= 1:  # no walk of init's tree or ours (kill_group refuses those too)
        return
    victims: list[psutil.Process] = []
    with contextlib.suppress(psutil.Error):
        victims = psutil.Process(pid).children(recursive=True)
    kill_group(pid, sig)
    for p in victims:
        with contextlib.suppress(psutil.Error):
            p.send_signal(sig)


class _Handle:
    pid: int

    async def wait(self) -> int | None:
        raise NotImplementedError


class _ChildHandle(_Handle):
    """Our own child, waited on through a pidfd on the loop: Python 3.11's default asyncio
    child watcher costs a thread per child, which dominated the engine's CPU per attempt."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.proc = proc
        self.pid = proc.pid
        self._rc: int | None = None
        self._done: asyncio.Future[int | None] | None = None

    async def wait(self) -> int | None:
        if self._done is None:
            self._done = asyncio.ensure_future(self._wait())
        return await asyncio.shield(self._done)

    async def _wait(self) -> int | None:
        try:
            fd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):  # no pidfds: wait in a worker thread
            return await asyncio.to_thread(self.proc.wait)
        await _exited(fd)
        return self.proc.wait()  # exited: reaps at once


class _AdoptedHandle(_Handle):
    """A process we did not spawn (left by a previous engine): no waitpid, so watch a pidfd
    (readable when it exits); fall back to polling where pidfds are unavailable."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    async def wait(self) -> int | None:
        if self.pid <= 0:
            return None  # it already ended (its exit code is on disk)
        try:
            fd = os.pidfd_open(self.pid)
        except (OSError, AttributeError):
            while _pid_running(self.pid):
                await asyncio.sleep(0.5)
            return None
        await _exited(fd)
        return None


async def _exited(pidfd: int) -> None:
    """Wait on the loop until a pidfd is readable (its process exited); closes it."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, wake)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _pid_running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False
