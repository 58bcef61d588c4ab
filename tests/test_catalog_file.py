"""The catalog's file (docs/catalog.md#location, #how-it-is-kept-current): deleted, replaced
or truncated under a serving engine (the engine reopens it and the file ends equal to a
rebuild), not writable (read-only mount, immutable file or directory: a clear error, never a
traceback nor a healthy file moved aside), PHH_CATALOG naming a directory (refused, exit 2)
or relative (resolved against the root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness, as_left, final, rebuilt, step, wait_for
from fastapi.testclient import TestClient

from phh_engine.interfaces.api import Auth, create_app
from phh_engine.runners.doctor import check_catalog, context_for
from phh_engine.store import catalog as catmod
from phh_engine.store.catalog import CatalogConfigError, open_for_reader
from phh_engine.store.paths import Layout

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")
EXAMPLE = Path(__file__).parents[1] / "examples" / "two_step.json"


def phh(root: Path, *args: str, env: dict[str, str] | None = None,
        cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != catmod.ENV_PATH}
    full.update(env or {})
    return subprocess.run([PHH, "--root", str(root), *args], capture_output=True, text=True,
                          timeout=120, env=full, cwd=cwd)




@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A phh root with one submitted batch (no engine needed: readers index it)."""
    r = tmp_path / "root"
    assert phh(r, "init").returncode == 0
    out = phh(r, "submit", str(EXAMPLE), "--json")
    assert out.returncode == 0, out.stderr
    return r


def batch_of(root: Path) -> str:
    return next(n for n in os.listdir(root / "runs") if not n.startswith(("_", ".")))


# ----------------------------------------------------------------- finding 3: a directory
@pytest.mark.parametrize("suffix", ["", "/"])
def test_phh_catalog_naming_a_directory_is_refused_never_renamed(root: Path, tmp_path: Path,
                                                                suffix: str) -> None:
    d = tmp_path / "d"
    (d / "important").mkdir(parents=True)
    (d / "important" / "data.txt").write_text("x\n")
    env = {catmod.ENV_PATH: f"{d}{suffix}"}
    out = phh(root, "history", "retries", "--json", env=env)
    assert out.returncode == 2, out.stderr
    assert "is a directory" in json.loads(out.stdout)["message"]
    assert "Traceback" not in out.stderr
    for args in (["jobs", batch_of(root), "--limit", "2"], ["reindex"]):
        bad = phh(root, *args, env=env)
        assert bad.returncode == 2 and "PHH_CATALOG" in bad.stderr, bad.stderr
    doc = phh(root, "doctor", "--json", env=env)
    assert "is a directory" in doc.stdout
    with pytest.MonkeyPatch.context() as mp:  # the API: 409, as any unusable location
        mp.setenv(catmod.ENV_PATH, f"{d}{suffix}")
        app = create_app(Layout(root), Auth("none"))
        with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 5)) as c:
            r = c.get("/v1/history/retries")
            assert r.status_code == 409 and "is a directory" in r.json()["message"], r.text
    assert (d / "important" / "data.txt").read_text() == "x\n"
    assert not (tmp_path / "d.discarded").exists()
    with pytest.raises(CatalogConfigError):  # _discard never moves a directory
        catmod._discard(d)
    assert d.is_dir() and not (tmp_path / "d.discarded").exists()


# ----------------------------------------------------------------- finding 12: relative
def test_relative_phh_catalog_resolves_against_the_root(root: Path, tmp_path: Path) -> None:
    env = {catmod.ENV_PATH: "relcat.sqlite3"}
    for where in ("a", "b"):
        cwd = tmp_path / where
        cwd.mkdir()
        out = phh(root, "history", "attempts", "--json", env=env, cwd=cwd)
        assert out.returncode == 0, out.stderr
        assert not (cwd / "relcat.sqlite3").exists()
    assert (root / "relcat.sqlite3").is_file()
    assert not (root / "runs" / "_system" / "catalog.sqlite3").exists()


# ----------------------------------------------------------------- finding 2: unwritable
@pytest.fixture
def ro_view(root: Path, tmp_path: Path) -> Iterator[Path]:
    """The root through a read-only bind mount (as the tester's `mount -o remount,ro`)."""
    assert phh(root, "history", "retries").returncode == 0  # a healthy catalog, built
    view = tmp_path / "ro"
    view.mkdir()
    if shutil.which("mount") is None or subprocess.run(
            ["mount", "--bind", str(root), str(view)], capture_output=True).returncode != 0:
        pytest.skip("cannot bind-mount here (needs root)")
    try:
        if subprocess.run(["mount", "-o", "remount,ro,bind", str(view)],
                          capture_output=True).returncode != 0:
            pytest.skip("cannot remount read-only here")
        yield view
    finally:
        subprocess.run(["umount", str(view)], capture_output=True)


def assert_clear(out: subprocess.CompletedProcess[str], path: Path) -> None:
    assert out.returncode == 1, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.startswith("phh:")]
    assert any(str(path) in ln and "cannot be written" in ln and "PHH_CATALOG" in ln
               for ln in lines), out.stderr


def test_read_only_mount_clear_errors_and_the_scoreboard_from_files(root: Path,
                                                                     ro_view: Path) -> None:
    cat = ro_view / "runs" / "_system" / "catalog.sqlite3"
    before = sorted(os.listdir(root / "runs" / "_system"))
    b = batch_of(root)
    for args in (["scoreboard"], ["scoreboard", "--json"]):
        out = phh(ro_view, *args)
        assert out.returncode == 0 and "Traceback" not in out.stderr, out.stderr
    assert json.loads(phh(ro_view, "scoreboard", "--json").stdout)["batches"][0][
        "batch_id"] == b
    for args in (["history", "retries"], ["history", "attempts", "--json"],
                 ["jobs", b, "--limit", "2"], ["attempts", b, "j1", "s1", "--limit", "2"],
                 ["reindex"]):
        assert_clear(phh(ro_view, *args), cat)
    doc = phh(ro_view, "doctor", "--json")
    row = next(c for c in json.loads(doc.stdout)["checks"] if c["name"] == "catalog")
    assert row["status"] == "fail" and "cannot be written" in row["found"]
    assert "corrupt" not in doc.stdout
    app = create_app(Layout(ro_view), Auth("none"))
    with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 5555)) as c:
        for url in ("/v1/history/retries", f"/v1/batches/{b}/steps?limit=2",
                    f"/v1/batches/{b}?limit=2"):
            r = c.get(url)
            assert r.status_code == 503, (url, r.text)
            assert r.json()["error"] == "unavailable" and str(cat) in r.json()["message"]
    assert sorted(os.listdir(root / "runs" / "_system")) == before  # nothing moved aside


@pytest.fixture
def immutable() -> Iterator[list[Path]]:
    """`chattr +i` paths, undone afterwards (skips where chattr does not work)."""
    done: list[Path] = []
    yield done
    for p in done:
        subprocess.run(["chattr", "-i", str(p)], capture_output=True)


def chattr(p: Path, done: list[Path]) -> None:
    if shutil.which("chattr") is None or subprocess.run(
            ["chattr", "+i", str(p)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i does not work here")
    done.append(p)


def test_immutable_directory_and_file(root: Path, immutable: list[Path]) -> None:
    system = root / "runs" / "_system"
    cat = system / "catalog.sqlite3"
    assert phh(root, "history", "retries").returncode == 0
    for side in ("-wal", "-shm"):  # as after a clean close: no -wal file
        Path(f"{cat}{side}").unlink(missing_ok=True)
    chattr(system, immutable)
    for args in (["history", "retries"], ["jobs", batch_of(root), "--limit", "2"]):
        assert_clear(phh(root, *args), cat)
    assert phh(root, "scoreboard", "--json").returncode == 0
    subprocess.run(["chattr", "-i", str(system)], check=True)
    # the engine (or a reader) added a batch, then the file was made immutable
    assert phh(root, "history", "retries").returncode == 0
    assert phh(root, "submit", str(EXAMPLE)).returncode == 0
    for side in ("-wal", "-shm"):
        Path(f"{cat}{side}").unlink(missing_ok=True)
    chattr(cat, immutable)
    for args in (["history", "retries"], ["reindex"], ["history", "attempts"]):
        assert_clear(phh(root, *args), cat)
    assert not Path(f"{cat}.discarded").exists()
    assert phh(root, "scoreboard").returncode == 0


# ----------------------------------------------------------------- finding 1: under an engine
def slow_batch(harness: Harness, n: int = 8) -> str:
    return harness.submit([{"job_id": f"j{i}", "steps": [
        step("s1", {"shell": "sleep 1"}, final(f"n{i}"))]} for i in range(n)], concurrency=2)


def succeeded(harness: Harness, bid: str, n: int) -> int:
    return sum(1 for i in range(n) for a in harness.attempts(bid, f"j{i}", "s1")
               if harness.state(a)["status"] == "succeeded")


def damage(path: Path, how: str) -> None:
    if how in ("truncate", "scribble"):
        # as in the tester's run, the file holds the tables (its WAL checkpointed, as SQLite
        # does by itself every 1000 pages); then cut to the tester's 8192 bytes
        import sqlite3

        conn = sqlite3.connect(path)
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        assert path.stat().st_size > 8192
        if how == "scribble":  # damaged in place: same inode, same size
            with open(path, "r+b") as fh:
                fh.seek(4096)
                fh.write(b"\xff" * (path.stat().st_size - 4096))
            return
        os.truncate(path, 8192)
        return
    for side in ("", "-wal", "-shm"):
        Path(f"{path}{side}").unlink(missing_ok=True)


@pytest.mark.codex
@pytest.mark.parametrize("how", ["delete", "delete_then_read", "truncate",
                                 "truncate_then_read", "scribble"])
def test_catalog_damaged_under_a_serving_engine_is_reopened(harness: Harness, how: str) -> None:
    bid = slow_batch(harness)
    eng = harness.start()
    path = catmod.catalog_path(harness.layout)
    wait_for(lambda: succeeded(harness, bid, 8) >= 2, 120, "two attempts done")
    first = eng.catalog
    assert first is not None
    damage(path, how.removesuffix("_then_read"))
    if how.endswith("_then_read"):  # a reader rebuilds a new file first
        r = open_for_reader(harness.layout)
        assert {row[0] for row in r.snapshot()["batches"]} == {bid}
        r.close()
    # the engine notices at its next board write and writes to the file at the path again
    wait_for(lambda: eng.catalog is not first and eng.catalog is not None
             and eng.catalog.file_id == catmod.file_id(path), 60, "the engine reopening")
    wait_for(lambda: succeeded(harness, bid, 8) == 8, 180, "the batch")
    wait_for(lambda: as_left(harness.layout) == rebuilt(harness.layout, harness.root), 60,
             "the catalog equal to a rebuild while the engine serves")
    out = phh(harness.root, "history", "attempts", "--batch", bid, "--json")
    assert json.loads(out.stdout)["total"] == 8
    jobs = json.loads(phh(harness.root, "jobs", bid, "--limit", "1000", "--json").stdout)
    assert [s["status"] for s in jobs["steps"]] == ["succeeded"] * 8
    harness.stop(eng)
    assert as_left(harness.layout) == rebuilt(harness.layout, harness.root)


@pytest.mark.codex
def test_doctor_and_readers_never_trust_a_file_the_engine_does_not_write(
        harness: Harness) -> None:
    harness.settings.scoreboard.write_interval_seconds = 600  # no board write but ours
    harness.write_settings()
    bid = harness.submit([{"job_id": "j0", "steps": [step("s1", final("x"))]}])
    eng = harness.start()
    wait_for(lambda: succeeded(harness, bid, 1) == 1, 120, "the attempt")
    reader_app = create_app(harness.layout, Auth("none"))

    def doctor() -> tuple[str, str]:
        rows = list(check_catalog(context_for(harness.layout)))
        return rows[0].status, rows[0].found

    with TestClient(reader_app, base_url="http://127.0.0.1", client=("127.0.0.1", 5)) as c:
        assert c.get("/v1/history/attempts").json()["total"] == 1
        path = catmod.catalog_path(harness.layout)
        damage(path, "delete")
        assert doctor()[0] != "ok"  # the engine still writes the deleted file
        # a long-lived reader (the API) does not answer from the deleted file either
        assert c.get("/v1/history/attempts").json()["total"] == 1
        st, detail = doctor()
        assert st == "warn" and "another" in detail, detail  # the reader's new file
        harness.call(eng, _board_write(eng))
        assert doctor()[0] == "ok", doctor()
        assert eng.catalog is not None and eng.catalog.file_id == catmod.file_id(path)
    harness.stop(eng)
    assert as_left(harness.layout) == rebuilt(harness.layout, harness.root)


async def _board_write(eng: Any) -> None:
    eng.write_scoreboards(all_batches=False)


@pytest.mark.codex
def test_engine_refuses_a_phh_catalog_directory_with_exit_2(harness: Harness,
                                                             tmp_path: Path) -> None:
    d = tmp_path / "d"
    (d / "important").mkdir(parents=True)
    harness.submit([{"job_id": "j0", "steps": [step("s1", final("x"))]}])
    for suffix in ("", "/"):
        out = phh(harness.root, "run", "--no-ui", "--until-idle",
                  env={catmod.ENV_PATH: f"{d}{suffix}"})
        assert out.returncode == 2 and "is a directory" in out.stderr, out.stderr
    assert (d / "important").is_dir() and not (tmp_path / "d.discarded").exists()


def test_long_lived_readers_reopen_a_file_deleted_under_them(root: Path) -> None:
    """The API's reader and the dashboard's pages never answer from a deleted file."""
    from phh_engine.interfaces.history import Reader, attempts_page
    from phh_tui.paging import CatalogPages

    layout = Layout(root)
    first = batch_of(root)
    reader = Reader(layout)
    pages = CatalogPages(layout)
    try:
        assert reader.run(attempts_page)["total"] == 0
        assert [json.loads(r)["batch_id"] for r in pages.system_rows(set())] == [first]
        for side in ("", "-wal", "-shm"):
            Path(f"{catmod.catalog_path(layout)}{side}").unlink(missing_ok=True)
        assert phh(root, "submit", str(EXAMPLE)).returncode == 0
        fresh = open_for_reader(layout)  # another process's rebuild: a new file
        fresh.close()
        assert len(pages.system_rows(set())) == 2  # the new file, not the deleted one
        assert reader.run(lambda c: {"n": len(c.system_rows())})["n"] == 2
    finally:
        reader.close()
        pages.close()
