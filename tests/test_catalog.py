"""The catalog (issue 14): derived from the files, equal to a from-scratch rebuild after
random histories, damaged files, other processes' writes and kill -9; settled batches stay
on disk at engine start; pages stay stable under concurrent inserts; refusals are clear."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from conftest import rebuilt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from phh_engine.interfaces import history
from phh_engine.interfaces.artifacts import LookupFailed
from phh_engine.models import BatchMeta, utcnow
from phh_engine.store import catalog as catmod
from phh_engine.store.catalog import Catalog, CatalogError, open_for_reader
from phh_engine.store.files import read_model, to_bytes
from phh_engine.store.paths import Layout
from phh_engine.store.pointers import build_current
from phh_engine.store.views import AttemptView

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import submit_two_step_jobs  # noqa: E402
from scoreboard import StoreWriter  # noqa: E402

PHH = str(REPO / ".venv" / "bin" / "phh")
GOAL = "A synthetic batch for the catalog tests: " + "word " * 160


class Store:
    """A root with one batch of two-step jobs, and attempts written as the runner leaves them
    (phh's own models; bench/scoreboard.py's StoreWriter), each followed by the job's
    current.json, with job-directory mtimes set to distinct instants older than the racy
    window (so fingerprints are compared, not merely distrusted)."""

    def __init__(self, root: Path, jobs: int = 3) -> None:
        self.root = root
        self.layout = Layout(root)
        self.batches: list[str] = []
        self.writers: dict[str, StoreWriter] = {}
        self.parents: dict[tuple[str, int], Any] = {}
        self.tick = 0
        self.jobs = jobs
        submit_two_step_jobs(root, jobs, goal=GOAL, prompt="p\n")
        self._adopt_batches()

    def _adopt_batches(self) -> None:
        for bid in catmod.batch_dirs(self.layout):
            if bid not in self.writers:
                meta = read_model(self.layout.batch_meta(bid), BatchMeta)
                assert meta is not None
                self.writers[bid] = StoreWriter(self.layout, meta)
                self.batches.append(bid)

    def new_batch(self) -> None:
        path = self.root / "t.json"
        table = {"spec_version": "1.0.0", "batch_goal_summary": GOAL, "working_root": "work",
                 "allow_shared_directory_concurrency": True, "jobs": [
                     {"job_id": f"job_{i:05d}", "steps": [
                         {"step_id": "step1", "prompt": "p"},
                         {"step_id": "step2", "prompt": "p",
                          "resume_from": {"step_id": "step1"}}]}
                     for i in range(self.jobs)]}
        path.write_text(json.dumps(table))
        subprocess.run([PHH, "--root", str(self.root), "submit", str(path), "--json"],
                       check=True, capture_output=True)
        self._adopt_batches()

    def opening(self, bid: str) -> None:
        """What every phh writer does before it changes a batch's files (Engine._start,
        override processing): mark it open in the catalog, so no reader trusts it settled."""
        cat = Catalog.open(self.layout)
        cat.invalidate(bid)
        cat.close()

    def attempt(self, b: int, j: int, s: int, status: str) -> None:
        bid = self.batches[b % len(self.batches)]
        self.opening(bid)
        w = self.writers[bid]
        j %= self.jobs
        fc = {"failed": "nonzero_exit", "needs_attention": "agent_reported_failure"}.get(status)
        parent = self.parents.get((bid, j)) if s == 1 else None
        res = w.attempt(j, s, status, failure_class=fc, parent=parent,
                        report_status="ok" if status == "succeeded" else None)
        if s == 0 and status == "succeeded":
            self.parents[(bid, j)] = res
        job_id = w.batch.jobs[j].job_id
        (self.layout.current(bid, job_id)).write_bytes(
            to_bytes(build_current(self.layout, bid, job_id, utcnow())))
        self.touch(self.layout.job_dir(bid, job_id))

    def close(self, b: int) -> None:
        bid = self.batches[b % len(self.batches)]
        self.opening(bid)
        (self.layout.batch_dir(bid) / "closed.json").write_text("{}\n")

    def touch(self, path: Path) -> None:
        self.tick += 1
        t = utcnow().timestamp() - 3600 + self.tick / 1000
        os.utime(path, (t, t))



def reader_snapshot(layout: Layout) -> dict[str, Any]:
    cat = open_for_reader(layout)
    try:
        return cat.snapshot()
    finally:
        cat.close()


# ----------------------------------------------------------------------------- random histories
OPS = st.lists(st.one_of(
    st.tuples(st.just("attempt"), st.integers(0, 3), st.integers(0, 5), st.integers(0, 1),
              st.sampled_from(["succeeded", "failed", "needs_attention", "canceled"])),
    st.tuples(st.just("refresh")),
    st.tuples(st.just("close"), st.integers(0, 3)),
    st.tuples(st.just("new_batch")),
), min_size=1, max_size=14)


@settings(max_examples=12, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=OPS)
def test_catalog_equals_rebuild_after_random_histories(
        tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[Any, ...]]) -> None:
    tmp = tmp_path_factory.mktemp("hist")
    store = Store(tmp / "root")
    cat = open_for_reader(store.layout)  # kept open: refreshed incrementally, as a reader
    try:
        for op in ops:
            if op[0] == "attempt":
                store.attempt(op[1], op[2], op[3], op[4])
            elif op[0] == "close":
                store.close(op[1])
            elif op[0] == "new_batch":
                store.new_batch()
            else:
                cat.refresh_for_reader()
        cat.refresh_for_reader()
        assert cat.snapshot() == rebuilt(store.layout, tmp)
    finally:
        cat.close()


def test_unchanged_batch_is_not_read_again_and_a_changed_one_is(tmp_path: Path) -> None:
    store = Store(tmp_path / "root")
    store.attempt(0, 0, 0, "succeeded")
    cat = open_for_reader(store.layout)
    try:
        assert cat.refresh_for_reader().reindexed == []  # fingerprint matches: skipped
        store.attempt(0, 1, 0, "failed")
        rep = cat.refresh_for_reader()
        assert rep.reindexed == store.batches
        assert cat.snapshot() == rebuilt(store.layout, tmp_path)
    finally:
        cat.close()


# ----------------------------------------------------------------------------- damaged files
@pytest.mark.parametrize("damage", ["deleted", "truncated", "foreign", "garbage", "old_schema"])
def test_damaged_catalog_file_is_rebuilt_never_trusted(tmp_path: Path, damage: str) -> None:
    store = Store(tmp_path / "root", jobs=20)
    for j in range(20):
        store.attempt(0, j, 0, "succeeded" if j % 3 else "failed")
    want = rebuilt(store.layout, tmp_path)
    path = catmod.catalog_path(store.layout)
    assert reader_snapshot(store.layout) == want
    size = path.stat().st_size
    if damage == "deleted":
        path.unlink()
    elif damage == "truncated":
        with open(path, "r+b") as fh:
            fh.truncate(size // 2)
    elif damage == "foreign":
        path.unlink()
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE attempts (x)")
        conn.execute("INSERT INTO attempts VALUES ('not ours')")
        conn.commit()
        conn.close()
    elif damage == "garbage":
        path.write_bytes(b"SQLite format 3\0" + os.urandom(4096))
    else:
        conn = sqlite3.connect(path)
        conn.execute("PRAGMA user_version = 99")
        conn.commit()
        conn.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    assert reader_snapshot(store.layout) == want
    # the doctor now finds a healthy catalog that knows every batch
    out = subprocess.run([PHH, "--root", str(store.root), "doctor", "--json"],
                         capture_output=True, text=True)
    rows = [r for r in json.loads(out.stdout)["checks"] if r["name"] == "catalog"]
    assert rows and rows[0]["status"] == "ok", rows


def test_a_catalog_one_schema_version_old_is_upgraded_in_place(tmp_path: Path) -> None:
    """Version 1 lacked only the token usage indexes: its rows are kept (no rebuild of
    months of history), the indexes are added, and the sums use them."""
    store = Store(tmp_path / "root", jobs=6)
    for j in range(6):
        store.attempt(0, j, 0, "succeeded")
    want = rebuilt(store.layout, tmp_path)
    path = catmod.catalog_path(store.layout)
    assert reader_snapshot(store.layout) == want
    conn = sqlite3.connect(path)
    for name in ("attempts_tokens_by_day", "attempts_tokens_by_model",
                 "attempts_tokens_by_batch"):
        conn.execute(f"DROP INDEX {name}")
    conn.execute("INSERT INTO batches (batch_id, closed, finished) VALUES ('kept', 0, 0)")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    cat = Catalog.open(store.layout)
    try:
        assert cat.discarded is None
        assert cat.query("SELECT batch_id FROM batches WHERE batch_id = 'kept'")  # not rebuilt
        assert cat.query("PRAGMA user_version")[0][0] == catmod.SCHEMA_VERSION
        for by, index in (("day", "attempts_tokens_by_day"), ("model",
                          "attempts_tokens_by_model"), ("batch", "attempts_tokens_by_batch")):
            assert history.token_usage(cat, by=by)["rows"][0]["attempts"] == 6
            sql = cat.query("SELECT sql FROM sqlite_master WHERE name = ?", [index])
            assert sql, index
        plan = " ".join(str(tuple(r)) for r in cat.query(
            "EXPLAIN QUERY PLAN SELECT substr(coalesce(started_at, created_at), 1, 10) AS k, "
            "sum(input_tokens) FROM attempts GROUP BY k"))
        assert "attempts_tokens_by_day" in plan and "TEMP B-TREE" not in plan, plan
    finally:
        cat.close()


def test_catalog_damaged_in_the_middle_of_a_page_is_rebuilt(tmp_path: Path) -> None:
    """A truncation behind an open reader's back: the next answer is derived again."""
    store = Store(tmp_path / "root", jobs=40)
    for j in range(40):
        store.attempt(0, j, 0, "succeeded")
    reader = history.Reader(store.layout)
    first = reader.run(history.attempts_page, limit=5)
    path = catmod.catalog_path(store.layout)
    reader._cat.close()  # type: ignore[union-attr]
    with open(path, "r+b") as fh:
        fh.truncate(4096)
    reader._cat = Catalog(store.layout, path, sqlite3.connect(path, check_same_thread=False))
    reader._cat.conn.row_factory = sqlite3.Row
    again = reader.run(history.attempts_page, limit=5)
    assert again == first
    reader.close()


# ----------------------------------------------------------------------------- location
def test_network_filesystem_is_refused_with_how_to_move(tmp_path: Path) -> None:
    mounts = tmp_path / "mounts"
    mounts.write_text(f"server:/export {tmp_path} nfs4 rw,relatime 0 0\n/dev/sda1 / ext4 rw 0 0\n")
    with pytest.raises(CatalogError) as exc:
        catmod.check_location(tmp_path / "runs" / "_system" / "catalog.sqlite3", str(mounts))
    assert "nfs4" in str(exc.value) and catmod.ENV_PATH in str(exc.value)
    catmod.check_location(Path("/elsewhere/catalog.sqlite3"), str(mounts))  # ext4: fine


def test_catalog_location_is_configurable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    store = Store(tmp_path / "root")
    store.attempt(0, 0, 0, "succeeded")
    monkeypatch.setenv(catmod.ENV_PATH, str(tmp_path / "elsewhere" / "c.sqlite3"))
    out = subprocess.run([PHH, "--root", str(store.root), "history", "attempts", "--json"],
                         capture_output=True, text=True, env=dict(os.environ))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["total"] == 1
    assert (tmp_path / "elsewhere" / "c.sqlite3").is_file()
    assert not catmod.catalog_path(Layout(store.root)).is_relative_to(store.root)


# ----------------------------------------------------------------------------- paging
def test_attempt_pages_stable_under_concurrent_inserts(tmp_path: Path) -> None:
    store = Store(tmp_path / "root", jobs=30)
    for j in range(30):
        store.attempt(0, j, 0, "failed")
    cat = open_for_reader(store.layout)
    bid = store.batches[0]
    before = {r["run_id"] for r in cat.query("SELECT run_id FROM attempts")}
    seen: list[str] = []
    cursor = None
    n = 0
    while True:
        page = history.attempts_page(cat, cursor=cursor, limit=7)
        seen += [a["run_id"] for a in page["attempts"]]
        # another writer inserts rows that sort before and after the cursor meanwhile
        for name in (f"00000000T000000Z_rearly{n:04d}", f"99991231T235959Z_rlate{n:04d}"):
            cat.put_attempt(bid, "job_00000", "step1", AttemptView(
                run_id=name.split("_", 1)[1], dir_name=name, path=tmp_path / name))
        n += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(seen) == len(set(seen)), "a row was shown twice"
    assert before <= set(seen), "a row that existed before paging began was skipped"
    cat.close()


def test_step_pages_filter_and_stay_stable_while_statuses_change(tmp_path: Path) -> None:
    store = Store(tmp_path / "root", jobs=25)
    for j in range(25):
        store.attempt(0, j, 0, "succeeded" if j % 5 else "needs_attention")
    cat = open_for_reader(store.layout)
    bid = store.batches[0]
    failed = history.steps_page(cat, bid, status="needs_attention")
    assert failed["total"] == 5 and {s["job_id"] for s in failed["steps"]} == {
        f"job_{j:05d}" for j in range(0, 25, 5)}
    assert all(s["failure_class"] == "agent_reported_failure" for s in failed["steps"])
    assert history.steps_page(cat, bid, failure_class="agent_reported_failure")["total"] == 5
    assert history.steps_page(cat, bid, status="ready")["total"] == 20  # step2 of the rest
    keys: list[tuple[str, str]] = []
    cursor = None
    while True:
        page = history.steps_page(cat, bid, cursor=cursor, limit=8)
        keys += [(s["job_id"], s["step_id"]) for s in page["steps"]]
        store.attempt(0, len(keys) % 25, 1, "succeeded")  # statuses move between pages
        cat.refresh_for_reader()
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert len(keys) == 50 and len(set(keys)) == 50
    for bad, name in (({"status": "bogus"}, "status"), ({"cursor": "zz"}, "cursor"),
                      ({"limit": 0}, "limit")):
        with pytest.raises(LookupFailed) as exc:
            history.steps_page(cat, bid, **bad)
        assert exc.value.status == 400 and exc.value.message.startswith(name)
    with pytest.raises(LookupFailed) as exc:
        history.steps_page(cat, "batch_nope")
    assert exc.value.status == 404
    cat.close()


# ----------------------------------------------------------------------------- history
def test_history_queries_on_a_known_store(tmp_path: Path) -> None:
    store = Store(tmp_path / "root", jobs=4)
    store.attempt(0, 0, 0, "failed")
    w = store.writers[store.batches[0]]
    first = store.layout.attempts_dir(store.batches[0], "job_00000", "step1")
    run1 = sorted(os.listdir(first))[0].split("_", 1)[1]
    w.attempt(0, 0, "succeeded", retry_of=run1, number=2)
    store.attempt(0, 1, 0, "failed")
    store.attempt(0, 2, 0, "succeeded")
    cat = open_for_reader(store.layout)
    rates = {r["failure_class"]: r for r in history.retry_rates(cat)["rows"]}
    assert rates["nonzero_exit"]["failures"] == 2
    assert rates["nonzero_exit"]["retried"] == 1
    assert rates["nonzero_exit"]["retry_succeeded"] == 1
    assert rates["nonzero_exit"]["retry_rate"] == 0.5
    tokens = history.token_usage(cat, by="batch")["rows"]
    assert tokens == [{"key": store.batches[0], "attempts": 4, "input_tokens": 48000,
                       "cached_input_tokens": 32000, "output_tokens": 3600,
                       "reasoning_output_tokens": 0}]
    assert history.attempts_page(cat, status="failed", runner_id="local")["total"] == 2
    assert history.attempts_page(cat, runner_id="elsewhere")["total"] == 0
    assert history.attempts_page(cat, since="2999-01-01")["total"] == 0
    assert sum(r["attempts"] for r in history.per_hour(cat)["rows"]) == 4
    assert len(history.slowest_steps(cat, limit=2)["attempts"]) == 2
    with pytest.raises(LookupFailed) as exc:
        history.token_usage(cat, by="planet")
    assert exc.value.status == 400 and exc.value.message.startswith("by:")
    cat.close()
    out = subprocess.run([PHH, "--root", str(store.root), "history", "retries", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and json.loads(out.stdout)["rows"][0]["failures"] == 2
    bad = subprocess.run([PHH, "--root", str(store.root), "history", "attempts", "--until",
                          "soon", "--json"], capture_output=True, text=True)
    assert bad.returncode == 2 and "until" in json.loads(bad.stdout)["message"]
    page = subprocess.run([PHH, "--root", str(store.root), "jobs", store.batches[0],
                           "--status", "ready", "--class", "nonzero_exit", "--json"],
                          capture_output=True, text=True)  # a retry waiting for its turn
    assert page.returncode == 0
    assert [s["job_id"] for s in json.loads(page.stdout)["steps"]] == ["job_00001"]


# ----------------------------------------------------------------------------- other processes


def test_another_process_writes_are_picked_up(tmp_path: Path) -> None:
    store = Store(tmp_path / "root", jobs=5)
    store.attempt(0, 0, 0, "succeeded")
    cat = open_for_reader(store.layout)
    # another process: a second engine's worth of attempts through its own catalog
    # connection, and a plain writer that never touches the catalog (an older phh)
    code = (
        "import sys; sys.path[:0] = [sys.argv[2], sys.argv[3]]\n"
        "from pathlib import Path\n"
        "from phh_engine.store.catalog import Catalog\n"
        "from phh_engine.store.index import StoreIndex\n"
        "import test_catalog as t\n"
        "s = object.__new__(t.Store); s.root = Path(sys.argv[1]); s.layout = t.Layout(s.root)\n"
        "s.batches, s.writers, s.parents, s.tick, s.jobs = [], {}, {}, 500, 5\n"
        "s._adopt_batches()\n"
        "for j in range(1, 5): s.attempt(0, j, 0, 'failed' if j % 2 else 'succeeded')\n"
        "c = Catalog.open(s.layout); ix = StoreIndex(s.layout); b = ix.load_batch(s.batches[0])\n"
        "for job, st in b.steps():\n"
        "    for a in st.attempts: c.put_attempt(b.batch_id, job.job_id, st.step_id, a)\n"
        "c.close()\n"
    )
    subprocess.run([sys.executable, "-c", code, str(store.root), str(REPO / "tests"),
                    str(REPO / "bench")], check=True, cwd=REPO)
    cat.refresh_for_reader()
    assert cat.snapshot() == rebuilt(store.layout, tmp_path)
    cat.close()


# ----------------------------------------------------------------------------- dashboard
def test_history_screen_shows_hourly_bars_and_retry_rates(tmp_path: Path) -> None:
    import asyncio
    import time

    from textual.widgets import DataTable, Sparkline

    from phh_tui.app import PhhApp
    from phh_tui.backend import StoreBackend
    from phh_tui.history_screen import HistoryScreen

    store = Store(tmp_path / "root", jobs=6)
    for j in range(6):
        store.attempt(0, j, 0, "failed" if j < 2 else "succeeded")

    async def go() -> None:
        app = PhhApp(store.root, backend=StoreBackend(store.root), alerts="off")
        async with app.run_test(size=(160, 45)) as pilot:
            await pilot.press("H")
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                screen = app.screen
                if isinstance(screen, HistoryScreen) and \
                        screen.query_one("#hist-retries", DataTable).row_count:
                    break
                await pilot.pause(0.05)
            screen = app.screen
            assert isinstance(screen, HistoryScreen)
            assert sum(screen.query_one("#hist-attempts", Sparkline).data or []) == 6
            assert sum(screen.query_one("#hist-failed", Sparkline).data or []) == 2
            retries = screen.query_one("#hist-retries", DataTable)
            assert retries.row_count == 1
            assert retries.get_row_at(0)[:2] == ["nonzero_exit", "2"]
            await pilot.press("escape")
            assert not isinstance(app.screen, HistoryScreen)

    asyncio.run(go())


def test_a_read_outside_a_root_creates_nothing(tmp_path: Path) -> None:
    out = subprocess.run([PHH, "--root", str(tmp_path), "history", "tokens", "--json"],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "not a phh root" in json.loads(out.stdout)["message"]
    assert list(tmp_path.iterdir()) == []
