"""Named crash points for the kill -9 test matrix.

`PHH_CRASH_AT=<name>` makes the engine SIGKILL itself when it reaches that point, so tests
can prove every intermediate on-disk state is recoverable. Unset, it costs one dict lookup.
"""

from __future__ import annotations

import os
import signal

_POINT = os.environ.get("PHH_CRASH_AT")


def crashpoint(name: str) -> None:
    if _POINT is not None and name == _POINT:
        os.kill(os.getpid(), signal.SIGKILL)


class InjectedFault(RuntimeError):
    """Raised by `faultpoint` at a point named in PHH_FAULT_AT (tests only)."""


def faultpoint(name: str) -> None:
    """`PHH_FAULT_AT=<name>[,<name>...]` makes the engine raise InjectedFault at those points,
    so tests can prove any exception while starting, monitoring or concluding an attempt
    still ends it in a terminal state. Read at each call (tests set it per engine)."""
    points = os.environ.get("PHH_FAULT_AT")
    if points and name in points.split(","):
        raise InjectedFault(f"injected fault at {name}")
