"""The one way phh spawns git: never take a lock an agent's own git may want.

`git status` (and `diff`) refresh the index's stat cache and, to save that work next time,
write it back under `.git/index.lock`. An agent committing in the same repository at that
moment fails with "index.lock: File exists". `--no-optional-locks` (git >= 2.15, the
same as `GIT_OPTIONAL_LOCKS=0`) makes git skip those optional writes; we also set the
variable so any git that git itself runs inherits it.
"""

from __future__ import annotations

import os
from pathlib import Path


def git_argv(cwd: Path | str, *args: str) -> list[str]:
    """`git --no-optional-locks -C <cwd> <args...>` as an argv list."""
    return ["git", "--no-optional-locks", "-C", str(cwd), *args]


def git_env() -> dict[str, str]:
    """This process's environment plus `GIT_OPTIONAL_LOCKS=0`."""
    env = dict(os.environ)
    env["GIT_OPTIONAL_LOCKS"] = "0"
    return env
