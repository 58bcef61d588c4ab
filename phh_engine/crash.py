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
