"""Raw attempt logs that GC may have compressed (docs/layout.md#retention): one way to read them,
either form.

Retention compresses an old attempt's `codex.events.jsonl`, `stdout.log` and `stderr.log` into
`<name>.gz` (gzip from the standard library: no new dependency, and `zcat`/`zless` read it).
Every reader — tail, API artifact fetch, dashboard — goes through these helpers so a compressed
log reads exactly like the original:

    open_events(attempt_dir)            -> text stream of codex.events.jsonl (or its .gz)
    iter_events(attempt_dir)            -> parsed event dicts (malformed lines skipped)
    open_log(attempt_dir, name)         -> binary stream of any raw log (or its .gz)
    read_log_bytes(attempt_dir, name)   -> the whole original bytes
    read_log_tail(attempt_dir, name, n) -> its last n bytes
    log_path(attempt_dir, name)         -> the file that holds it now (plain, .gz, or None)
    read_lines(attempt_dir, name, off)  -> a page of complete lines from a byte offset
    last_lines(attempt_dir, name, n)    -> the last n complete lines
    LogFollower(attempt_dir, name)      -> new complete lines since the last call

Lines are handed out whole up to MAX_LINE_BYTES (a 6 MB agent message is one line); a longer
one is cut to CUT_KEEP_BYTES with `size` saying its real length, so a reader always pages
past it: no line, however long, stops a reader at the line before it.

A log is only compressed once its attempt has ended, so a live tail only ever sees the plain
file; a reader that opened the plain file just before compression keeps a valid handle (the
compressor writes the .gz first, then unlinks the original).
"""

from __future__ import annotations

import errno
import gzip
import io
import os
import shutil
import stat
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .events import parse_event_line
from .paths import EVENTS, STDERR, STDOUT

#: Raw logs retention may compress or delete (never final.*, state.json, meta.json).
RAW_LOGS: tuple[str, ...] = (EVENTS, STDOUT, STDERR)
GZ_SUFFIX = ".gz"
#: one page of `read_lines` (bytes of complete lines; a single longer line still comes whole)
MAX_PAGE_BYTES = 4 << 20
#: lines up to this are handed out whole; longer ones are cut (memory per reader is bounded)
MAX_LINE_BYTES = 16 << 20
#: Largest byte offset a cursor may name (a signed 63-bit file offset; anything larger is
#: past every log's end, and seek() would raise on it).
MAX_OFFSET = 2**62
#: what is kept of a cut line
CUT_KEEP_BYTES = 64 << 10
CHUNK = 256 << 10


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


#: An open raw log: the plain file, or a decompressing reader of its `.gz`.
LogStream = io.BufferedReader | gzip.GzipFile


def open_log(attempt_dir: Path | str, name: str = EVENTS) -> LogStream:
    """Binary stream of a raw log's original bytes; FileNotFoundError when it is gone.
    Never follows a symlink and opens only regular files (OSError otherwise): what an
    agent writes must not make a reader hand out another file."""
    p = log_path(attempt_dir, name)
    if p is None:
        raise FileNotFoundError(str(Path(attempt_dir) / name))
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer forever,
    # before the regular-file check below could refuse it
    fd = os.open(p, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(p))
    os.set_blocking(fd, True)
    raw = os.fdopen(fd, "rb")
    if p.name.endswith(GZ_SUFFIX):
        return gzip.GzipFile(fileobj=raw, mode="rb")
    return raw


def open_events(attempt_dir: Path | str) -> IO[str]:
    """Text stream (UTF-8, bad bytes replaced) of `codex.events.jsonl`, compressed or not."""
    return io.TextIOWrapper(open_log(attempt_dir, EVENTS), encoding="utf-8", errors="replace")


def read_log_bytes(attempt_dir: Path | str, name: str = EVENTS) -> bytes:
    with open_log(attempt_dir, name) as fh:
        return fh.read()


def read_log_tail(attempt_dir: Path | str, name: str, limit: int) -> bytes:
    """The last `limit` bytes of a raw log ("" when it is missing or unreadable)."""
    try:
        with open_log(attempt_dir, name) as fh:
            if isinstance(fh, gzip.GzipFile):
                keep: deque[bytes] = deque()
                kept = 0
                while block := fh.read(CHUNK):
                    keep.append(block)
                    kept += len(block)
                    while kept - len(keep[0]) >= limit:
                        kept -= len(keep.popleft())
                return b"".join(keep)[-limit:]
            size = os.fstat(fh.fileno()).st_size
            fh.seek(max(0, size - limit))
            return fh.read(limit)
    except OSError:
        return b""


def iter_events(attempt_dir: Path | str) -> Iterator[dict[str, Any]]:
    """Parsed events in order; lines that are not a JSON object (or are hostile: nested too
    deep, invalid UTF-8) are skipped; a line past MAX_LINE_BYTES is skipped too."""
    try:
        fh = open_log(attempt_dir, EVENTS)
    except FileNotFoundError:
        return
    with fh:
        for line in _iter_lines(fh, 0, MAX_LINE_BYTES, final=True):
            if not line.truncated:
                ev = parse_event_line(line.data)
                if ev is not None:
                    yield ev


@dataclass(slots=True)
class RawLine:
    """One line of a raw log. `offset`: the byte offset just after it and its newline (a
    cursor: reading from it continues with the next line). `data`: its bytes without the
    newline, cut to CUT_KEEP_BYTES when the line is longer than the reader's limit.
    `size`: the line's real length in bytes."""

    offset: int
    data: bytes
    size: int

    @property
    def truncated(self) -> bool:
        return len(self.data) < self.size


def _iter_lines(fh: LogStream, offset: int, max_line: int, final: bool) -> Iterator[RawLine]:
    """Lines from `offset` on; blank lines are skipped (their bytes still advance the
    cursor). An unterminated last line is yielded only when `final` (the writer is done)."""
    if not 0 <= offset <= MAX_OFFSET:  # a cursor no log reaches: nothing from there
        return
    try:
        fh.seek(offset)
    except (OSError, ValueError, OverflowError):  # beyond what the filesystem can hold
        return
    if fh.tell() < offset:  # past the end (gzip stops at its end)
        return
    pos = offset
    buf = bytearray()
    size = 0
    while chunk := fh.read(CHUNK):
        start = 0
        while True:
            nl = chunk.find(b"\n", start)
            end = nl if nl >= 0 else len(chunk)
            if len(buf) <= max_line:
                buf += chunk[start:min(end, start + max_line + 1 - len(buf))]
            size += end - start
            if nl < 0:
                break
            pos += size + 1
            if buf.strip():
                yield _line(pos, buf, size, max_line)
            buf, size, start = bytearray(), 0, nl + 1
    if final and buf.strip():
        yield _line(pos + size, buf, size, max_line)


def _line(pos: int, buf: bytearray, size: int, max_line: int) -> RawLine:
    data = bytes(buf[:CUT_KEEP_BYTES]) if size > max_line else bytes(buf)
    return RawLine(pos, data.rstrip(b"\r") if size <= max_line else data, size)


def read_lines(attempt_dir: Path | str, name: str = EVENTS, offset: int = 0, *,
               max_bytes: int = MAX_PAGE_BYTES, max_line: int = MAX_LINE_BYTES,
               final: bool = False) -> list[RawLine]:
    """A page of complete lines from byte `offset` (of the original, uncompressed bytes):
    lines until `max_bytes` are reached, at least one whatever its length. A partial last
    line waits for the next read unless `final`. [] when the log does not exist (yet);
    other OSErrors (a symlink, not a regular file) propagate."""
    if offset < 0:
        raise ValueError("offset must be >= 0")
    try:
        fh = open_log(attempt_dir, name)
    except FileNotFoundError:
        return []
    out: list[RawLine] = []
    used = 0
    with fh:
        for line in _iter_lines(fh, offset, max_line, final):
            out.append(line)
            used += line.size + 1
            if used >= max_bytes:
                break
    return out


def last_lines(attempt_dir: Path | str, name: str = EVENTS, n: int = 20, *,
               max_line: int = MAX_LINE_BYTES, final: bool = False) -> list[RawLine]:
    """The last `n` complete lines. A plain log is scanned backwards for newlines only (cheap
    on huge logs, whatever the lines' length); a compressed one is streamed once."""
    if n <= 0:
        return []
    try:
        fh = open_log(attempt_dir, name)
    except FileNotFoundError:
        return []
    with fh:
        if isinstance(fh, gzip.GzipFile):
            return list(deque(_iter_lines(fh, 0, max_line, final), maxlen=n))
        start = _start_of_last(fh, n + 1)  # one spare: blank lines are not handed out
        return list(deque(_iter_lines(fh, start, max_line, final), maxlen=n))


def _start_of_last(fh: LogStream, n: int) -> int:
    """Byte offset where the last `n` complete lines begin (0 if there are fewer)."""
    end = os.fstat(fh.fileno()).st_size
    pos, seen, first = end, 0, True
    while pos > 0:
        new = max(0, pos - CHUNK)
        fh.seek(new)
        block = fh.read(pos - new)
        i = len(block)
        while (i := block.rfind(b"\n", 0, i)) >= 0:
            if first and new + i == end - 1:
                first = False  # the newline ending the last line starts no line
                continue
            first = False
            seen += 1
            if seen == n:
                return new + i + 1
        first = False
        pos = new
    return 0


class LogFollower:
    """New complete lines of one raw log since the last call (a cursor kept in bytes), in
    either form: a live attempt's plain file or, once GC compressed it, its .gz."""

    def __init__(self, attempt_dir: Path | str, name: str = EVENTS) -> None:
        self.attempt_dir = Path(attempt_dir)
        self.name = name
        self.offset = 0

    def read_new(self, final: bool = False, max_bytes: int = MAX_PAGE_BYTES) -> list[RawLine]:
        """At most about `max_bytes` of new lines (call again for more); with `final`, an
        unterminated last line too. Unreadable logs read as nothing new."""
        try:
            lines = read_lines(self.attempt_dir, self.name, self.offset, max_bytes=max_bytes,
                               final=final)
        except OSError:
            return []
        if lines:
            self.offset = lines[-1].offset
        return lines


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
