"""The serving engine keeps writing the catalog readers read: the catalog's file deleted,
replaced (a reader rebuilt it), truncated or found damaged under a running engine is noticed
at the next board write (`Catalog.moved`: one stat), reopened (a damaged file moved aside, as
readers do) and given again everything the engine holds in memory, so that once its batches
end the file equals a from-scratch rebuild (docs/catalog.md#how-it-is-kept-current)."""

from __future__ import annotations

import logging
import sqlite3
from typing import TYPE_CHECKING

from ..models import CatalogFileRecord
from ..store.catalog import Catalog, CatalogError, _discard, file_id
from ..store.files import atomic_write_json

if TYPE_CHECKING:
    from .loop import Engine

log = logging.getLogger(__name__)


def keep_catalog_file(eng: Engine) -> None:
    """Reopen the engine's catalog when its file moved under it; the board writer calls this
    before each write (the loop's thread). Settled batches left on disk that the new file
    does not hold settled are derived into it from their files; every batch in memory is
    written in full (attempts included) by the board write that follows. A catalog that
    cannot be reopened (unwritable) is retried at the next board write; the engine goes on."""
    cat = eng.catalog
    if cat is None:
        return
    why = cat.moved()
    if why is None:
        return
    quiet = why.startswith("damaged (cannot reopen")  # said once already
    if not quiet:
        log.warning("catalog %s %s under the serving engine: reopening it and writing what "
                    "the engine holds again", cat.path, why)
    old_id = cat.file_id
    cat.close()
    try:
        if (cat.damaged is not None or why.startswith("truncated")) and \
                file_id(cat.path) == old_id:
            _discard(cat.path)  # the same damaged file: moved aside, as readers do
        new = Catalog.open(eng.layout, cat.path, thorough=True)
    except CatalogError as exc:
        if not quiet:
            log.warning("catalog %s cannot be reopened (%s); the engine goes on and tries "
                        "again at each board write", cat.path, exc)
        cat.damaged = f"cannot reopen: {exc}"
        if not quiet:
            record_catalog_file(eng, f"cannot reopen it: {exc}")
        return
    try:
        rep = new.verify()
        for bid in sorted(eng.index.skip - rep.settled):  # settled, not in memory: files
            new.index_batch(bid)
    except sqlite3.Error as exc:  # the next board write tries again (new.damaged...)
        log.warning("catalog %s: reindexing settled batches failed (%s)", new.path, exc)
    eng.catalog = new
    eng.index.catalog = new
    eng.boards.catalog_full.update(eng.index.batches)
    eng.boards.dirty.update(eng.index.batches)
    record_catalog_file(eng)
    log.warning("catalog %s reopened; %d batch(es) in memory written to it again", new.path,
                len(eng.index.batches))


def record_catalog_file(eng: Engine, problem: str | None = None) -> None:
    """`runners/<id>/catalog_file.json`: the catalog file this engine writes (path and
    (st_dev, st_ino)) and, when it cannot, why; `phh doctor` compares it with the file at
    the path, so it never calls "ok" a catalog the serving engine does not write."""
    cat = eng.catalog
    if cat is None:
        return
    try:
        rec = CatalogFileRecord(path=str(cat.path), problem=problem,
                                file_id=list(cat.file_id) if cat.file_id else None)
        atomic_write_json(eng.layout.runners / eng.runner_id / "catalog_file.json",
                          rec.model_dump(mode="json"), durable=False)
    except OSError as exc:  # a full disk: doctor then cannot tell; the engine goes on
        log.warning("cannot record the catalog file this engine writes: %s", exc)
