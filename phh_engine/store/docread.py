"""One bounded, regular-files-only read for every document phh takes from outside.

A path handed to phh (a Launch Table, phh_config.json, the Codex config, an override request
dropped into the store) may name a FIFO (open blocks forever), a device such as /dev/zero (a
read never ends) or a huge file: each of these would hang or kill the reader. So a document is
opened non-blocking, fstat()ed, refused unless it is a regular file within a size cap, and read
at most cap+1 bytes (a file that grows after the fstat is still caught).
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

#: Size caps in bytes, per kind of document.
LAUNCH_TABLE_MAX_BYTES = 64 << 20
OVERRIDE_REQUEST_MAX_BYTES = 1 << 20
HARNESS_CONFIG_MAX_BYTES = 16 << 20
CODEX_CONFIG_MAX_BYTES = 16 << 20

_KINDS: tuple[tuple[int, str], ...] = (
    (stat.S_IFDIR, "a directory"),
    (stat.S_IFIFO, "a FIFO (named pipe)"),
    (stat.S_IFCHR, "a character device"),
    (stat.S_IFBLK, "a block device"),
    (stat.S_IFSOCK, "a socket"),
    (stat.S_IFLNK, "a symlink"),
)


class DocumentReadError(OSError):
    """The document cannot be read safely. `str()` is one sentence naming `what`, the path
    and the reason; `reason` is the reason alone; `errno` is set (ENOENT when missing)."""

    def __init__(self, err: int, what: str, path: str | Path, reason: str) -> None:
        super().__init__(err, f"{what} {path}: {reason}")
        self.what = what
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.what} {self.path}: {self.reason}"


class DocumentMissing(DocumentReadError, FileNotFoundError):
    """The document does not exist (also a FileNotFoundError, for callers with a default)."""


def _kind(mode: int) -> str:
    for bits, name in _KINDS:
        if stat.S_IFMT(mode) == bits:
            return name
    return "not a regular file"


def _mib(n: int) -> str:
    return f"{n / (1 << 20):g} MiB" if n >= 1 << 20 else f"{n} bytes"


def read_document_bytes(path: str | Path, *, max_bytes: int, what: str,
                        follow_symlinks: bool = True) -> bytes:
    """The bytes of the regular file at `path`, at most `max_bytes` of them.

    `what` names the document in errors ("Launch Table", "override request", ...).
    `follow_symlinks=False` opens with O_NOFOLLOW (files inside the store, which nothing may
    redirect). Raises DocumentReadError (an OSError; FileNotFoundError's errno ENOENT when the
    file is missing) for: missing, unreadable, symlink loop, not a regular file (directory,
    FIFO, device, socket), or larger than `max_bytes`. Never blocks on a FIFO."""
    flags = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    if not follow_symlinks:
        flags |= os.O_NOFOLLOW
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        err = exc.errno or errno.EIO
        if err == errno.ELOOP:
            reason = ("is a symlink, which is not followed here" if not follow_symlinks
                      else "cannot be resolved: symlink loop")
        elif err == errno.ENOENT:
            reason = "does not exist"
        elif err == errno.ENXIO:  # a socket, or a FIFO with no writer on some systems
            reason = "is not a regular file"
        else:
            reason = f"cannot be read: {exc.strerror or exc}"
        cls = DocumentMissing if err == errno.ENOENT else DocumentReadError
        raise cls(err, what, path, reason) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DocumentReadError(errno.EINVAL, what, path,
                                    f"is {_kind(st.st_mode)}, not a regular file")
        if st.st_size > max_bytes:
            raise DocumentReadError(errno.EFBIG, what, path,
                                    f"is {st.st_size} bytes, over the {_mib(max_bytes)} limit")
        # a regular file never blocks: back to blocking reads for plain read() semantics
        os.set_blocking(fd, True)
        chunks: list[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > max_bytes:
            raise DocumentReadError(errno.EFBIG, what, path,
                                    f"is over the {_mib(max_bytes)} limit")
        return data
    except DocumentReadError:
        raise
    except OSError as exc:
        raise DocumentReadError(exc.errno or errno.EIO, what, path,
                                f"cannot be read: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
