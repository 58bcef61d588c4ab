"""Which directories of the runs tree the dashboard watches: a bounded set, never agent files.

A recursive inotify watch costs one watch per directory below it, and agents create
directories (an isolated `_workspace/` is inside the job directory; `codex_home/` inside
each attempt), so a recursive watch on `runs/` grows with what agents do and can exhaust
the per-user inotify limit (8192 on many systems) for every tool of that user. Instead
each directory of the store's own layout is watched non-recursively:

    runs/                                   new batches (and `_system/`)
    runs/_system/, runs/_system/overrides/   override results (observer only)
    runs/<batch>/                           batch_meta.json, closed.json, new job dirs
    runs/<batch>/<job>/                     `steps/` appearing (not `_workspace/`'s contents)
    runs/<batch>/<job>/steps/[<step>/]      new step dirs, `attempts/` appearing
    runs/<batch>/<job>/steps/<step>/attempts/             new attempt dirs
    .../attempts/<attempt>/   while the attempt is not terminal: state/meta/final.json

So the count is 1 + batches + 2·jobs + 2·steps + live attempts (+2), whatever agents do.
"""

from __future__ import annotations

import os
from pathlib import Path

from phh_engine.models.promotion import PROMOTION_FILE
from phh_engine.store.index import CLOSED_MARKER
from phh_engine.store.paths import FINAL_JSON, META, STATE

ATTEMPT_FILES = frozenset({STATE, META, FINAL_JSON})
SYSTEM = "_system"
OVERRIDES = "overrides"


def _hidden(name: str) -> bool:
    return name.startswith(".")


def is_layout_dir(parts: tuple[str, ...], observer: bool) -> bool:
    """Is `runs/<parts...>` a directory of the store's layout worth a watch (by name and
    depth only; the caller checks it is a directory)?"""
    d = len(parts)
    if d == 0 or _hidden(parts[-1]):
        return False
    if parts[0] == SYSTEM:
        return observer and (d == 1 or (d == 2 and parts[1] == OVERRIDES))
    name = parts[-1]
    if d == 6:  # an attempt dir is `<stamp>_<run_id>`; anything else there is stray
        return "_" in name and bool(name.split("_", 1)[1])
    if d == 1 or d == 4:  # batch, step
        return True
    if d == 2:  # job (batch-level names phh writes start with `_` or end in .json)
        return not name.startswith("_")
    if d == 3:
        return name == "steps"
    if d == 5:
        return name == "attempts"
    return False


def is_interesting(parts: tuple[str, ...], observer: bool) -> bool:
    """Does a change at `runs/<parts...>` matter: a layout directory appearing or going, or
    one of the files the index reads?"""
    d = len(parts)
    if d == 0:
        return False
    name = parts[-1]
    if parts[0] == SYSTEM:
        return observer and ((d == 3 and name.endswith(".result.json"))
                             or is_layout_dir(parts, observer))
    if d == 2 and name in ("batch_meta.json", CLOSED_MARKER):
        return True
    if d == 7:
        return name in ATTEMPT_FILES
    if d == 5 and name == PROMOTION_FILE:  # best-of-N: the promoted candidate changed
        return True
    return is_layout_dir(parts, observer)


class WatchSet:
    """The directories to watch under one `runs/` (absolute paths), kept incrementally:
    `grow` on a change, `drop` when an attempt ends. Only `initial` walks the tree."""

    def __init__(self, runs: Path, observer: bool) -> None:
        self.runs = runs
        self.observer = observer
        self.dirs: set[Path] = set()

    def parts(self, path: Path | str) -> tuple[str, ...] | None:
        try:
            return Path(path).relative_to(self.runs).parts
        except ValueError:
            return None

    def initial(self, terminal: set[Path], skip: set[str] | frozenset[str] = frozenset()
                ) -> None:
        """Walk the layout (not agent dirs): every layout directory that exists, except the
        attempt dirs in `terminal` (they do not change any more) and the batches in `skip`
        (settled: not in memory, docs/catalog.md#bounded-start-up; walking and watching
        them would make opening the dashboard O(history))."""
        self.dirs = {self.runs}
        self._walk(self.runs, (), terminal | {self.runs / b for b in skip})

    def _walk(self, path: Path, parts: tuple[str, ...], terminal: set[Path]) -> list[Path]:
        """Add the layout dirs below `path` (not `path` itself); returns the ones added."""
        added: list[Path] = []
        if len(parts) >= 6:  # an attempt dir: its children are files and codex_home/
            return added
        try:
            with os.scandir(path) as it:
                children = [e.name for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return added
        for name in children:
            sub = (*parts, name)
            child = path / name
            if not is_layout_dir(sub, self.observer) or child in terminal:
                continue
            if child not in self.dirs:
                self.dirs.add(child)
                added.append(child)
            added += self._walk(child, sub, terminal)
        return added

    def grow(self, path: Path) -> list[Path]:
        """A change at `path`: if it is a new layout directory, watch it and the layout dirs
        already below it (made before a watch could see them). Returns the dirs added."""
        parts = self.parts(path)
        if parts is None or path in self.dirs or not is_layout_dir(parts, self.observer):
            return []
        if not path.is_dir() or path.is_symlink():
            return []
        self.dirs.add(path)
        return [path, *self._walk(path, parts, set())]

    def drop(self, path: Path) -> None:
        """Stop wanting `path` and everything below it (gone, or an attempt that ended)."""
        if path not in self.dirs:
            return
        self.dirs.discard(path)
        prefix = str(path) + os.sep
        if len(self.parts(path) or ()) < 6:
            self.dirs = {d for d in self.dirs if not str(d).startswith(prefix)}
