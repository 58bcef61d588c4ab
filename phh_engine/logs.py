"""Raw attempt logs that GC may have compressed (SPEC §9): one way to read them, either form.

Retention compresses an old attempt's `codex.events.jsonl`, `stdout.log` and `stderr.log` into
`<name>.gz` (gzip from the standard library: no new dependency, and `zcat`/`zless` read it).
Every reader — tail, API artifact fetch, dashboard — goes through these helpers so a compressed
log reads exactly like the original:

    open_events(attempt_dir)            -> text stream of codex.events.jsonl (or its .gz)
    iter_events(attempt_dir)            -> parsed event dicts (malformed lines skipped)
    open_log(attempt_dir, name)         -> binary stream of any raw log (or its .gz)
    read_log_bytes(attempt_dir, name)   -> the whole original bytes
    log_path(attempt_dir, name)         -> the file that holds it now (plain, .gz, or None)

A log is only compressed once its attempt has ended, so a live tail only ever sees the plain
file; a reader that opened the plain file just before compression keeps a valid handle (the
compressor writes the .gz first, then unlinks the original).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from .paths import EVENTS, STDERR, STDOUT

#: Raw logs retention may compress or delete (never final.*, state.json, meta.json).
RAW_LOGS: tuple[str, ...] = (EVENTS, STDOUT, STDERR)
GZ_SUFFIX = ".gz"


def log_path(attempt_dir: Path | str, name: str = EVENTS) -> Path | None:
    """Where a raw log lives now: the plain file, else its `.gz`, else None."""
    base = Path(attempt_dir) / name
    if base.exists():
        return base
    gz = base.with_name(name + GZ_SUFFIX)
    return gz if gz.exists() else None


def is_compressed(attempt_dir: Path | str, name: str = EVENTS) -> bool:
    p = log_path(attempt_dir, name)
    return p is not None and p.name.endswith(GZ_SUFFIX)


def open_log(attempt_dir: Path | str, name: str = EVENTS) -> IO[bytes]:
    """Binary stream of a raw log's original bytes; FileNotFoundError when it is gone."""
    p = log_path(attempt_dir, name)
    if p is None:
        raise FileNotFoundError(str(Path(attempt_dir) / name))
    if p.name.endswith(GZ_SUFFIX):
        return gzip.open(p, "rb")
    return open(p, "rb")


def open_events(attempt_dir: Path | str) -> IO[str]:
    """Text stream (UTF-8, bad bytes replaced) of `codex.events.jsonl`, compressed or not."""
    return io.TextIOWrapper(open_log(attempt_dir, EVENTS), encoding="utf-8", errors="replace")


def read_log_bytes(attempt_dir: Path | str, name: str = EVENTS) -> bytes:
    with open_log(attempt_dir, name) as fh:
        return fh.read()


def iter_events(attempt_dir: Path | str) -> Iterator[dict[str, Any]]:
    """Parsed events in order; lines that are not a JSON object are skipped."""
    try:
        fh = open_events(attempt_dir)
    except FileNotFoundError:
        return
    with fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                continue
            if isinstance(obj, dict):
                yield obj


def compress_log(path: Path, level: int = 6) -> tuple[int, int]:
    """gzip `path` into `path.gz` atomically, then remove `path`. Returns (bytes before, after).

    The `.gz` is written to a temp name, fsynced and renamed, so a reader sees either the plain
    file or a complete `.gz` (for a moment both; `log_path` prefers the plain one). The original
    mtime is kept on the `.gz`, so age-based retention still counts from the attempt's logs.
    """
    gz = path.with_name(path.name + GZ_SUFFIX)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.gz.tmp")
    st = path.stat()
    try:
        with open(path, "rb") as src, open(tmp, "wb") as raw:
            with gzip.GzipFile(filename=path.name, mode="wb", fileobj=raw, compresslevel=level,
                               mtime=int(st.st_mtime)) as out:
                shutil.copyfileobj(src, out, 1 << 20)
            raw.flush()
            os.fsync(raw.fileno())
        os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        os.replace(tmp, gz)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    path.unlink()
    return st.st_size, gz.stat().st_size
