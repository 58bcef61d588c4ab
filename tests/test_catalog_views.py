"""Views served from the catalog (issue 14): `phh scoreboard --json` cold from the catalog when
every batch is settled there (equal to a derivation from the files; no model imported), a
derivation otherwise; `GET /v1/batches/{b}` paged with limit/cursor, unchanged without them;
cold CLI reads import no heavy module. Real engine, real SQLite file, real processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Harness
from fastapi.testclient import TestClient

from phh_engine.interfaces.api import Auth, create_app
from phh_engine.interfaces.history import system_view
from phh_engine.store.catalog import catalog_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
from scoreboard import fill_batch

pytestmark = pytest.mark.codex
REPO = Path(__file__).resolve().parents[1]
PY = str(REPO / ".venv" / "bin" / "python")
JOBS = 20
HEAVY = ("pydantic", "textual", "fastapi", "starlette", "jsonschema", "yaml", "ray", "rich",
         "phh_engine.models", "phh_engine.engine", "phh_engine.runners", "watchfiles")


def two_step_jobs(n: int) -> list[dict[str, Any]]:
    return [{"job_id": f"job_{i:05d}", "steps": [
        {"step_id": "step1", "prompt": "p"},
        {"step_id": "step2", "prompt": "p", "resume_from": {"step_id": "step1"}}]}
        for i in range(n)]


def settled(harness: Harness) -> str:
    """A finished 40-step batch (a few failed, retried, needing attention), recorded settled
    in the catalog by the engine."""
    bid = harness.submit(two_step_jobs(JOBS))
    fill_batch(harness.root, bid, JOBS)
    harness.run()
    t = time.time() - 3600  # job directories outside the fingerprint's racy window
    for e in os.scandir(harness.layout.batch_dir(bid)):
        if e.is_dir() and not e.name.startswith(("_", ".")):
            os.utime(e.path, (t, t))
    harness.run()
    return bid


def phh(root: Path, *argv: str) -> tuple[str, list[str]]:
    """`phh ARGV` in a fresh process: (stdout, the HEAVY modules it imported)."""
    code = ("import sys, io, contextlib\n"
            "from phh_tui.cli import main\n"
            "buf = io.StringIO()\n"
            "with contextlib.redirect_stdout(buf):\n"
            f"    rc = main({['--root', str(root), *argv]!r})\n"
            f"heavy = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print(json.dumps({'rc': rc, 'out': buf.getvalue(), 'heavy': heavy}))\n")
    out = subprocess.run([PY, "-c", "import json\n" + code], capture_output=True, text=True,
                         check=True, timeout=120)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["rc"] == 0, res
    return res["out"], res["heavy"]


def board(text: str) -> dict[str, Any]:
    obj = json.loads(text)
    obj.pop("computed_at")
    return obj


def test_scoreboard_json_cold_from_the_catalog_and_its_fallbacks(harness: Harness) -> None:
    bid = settled(harness)
    assert system_view(harness.layout) is not None  # every batch settled: the catalog answers
    out, heavy = phh(harness.root, "scoreboard", "--json")
    assert heavy == []  # no model, no attempt read
    derived, _ = phh(harness.root, "scoreboard", "--json", "--recompute")
    assert board(out) == board(derived)
    assert [r["batch_id"] for r in board(out)["batches"]] == [bid]
    assert board(out)["batches"][0]["counts"]["needs_attention"] == 1  # job 7's step2

    # a batch that is not settled (just submitted): the view is derived from the files
    new = harness.submit(two_step_jobs(2))
    assert system_view(harness.layout) is None
    out, heavy = phh(harness.root, "scoreboard", "--json")
    assert "pydantic" in heavy
    assert {r["batch_id"] for r in board(out)["batches"]} == {bid, new}
    derived, _ = phh(harness.root, "scoreboard", "--json", "--recompute")
    assert board(out) == board(derived)

    # a damaged catalog is rebuilt, never trusted: the answer stays the files' own
    (harness.layout.batch_dir(new) / "batch_meta.json").unlink()  # (no longer a batch)
    os.rename(harness.layout.batch_dir(new), harness.root / "gone")
    path = catalog_path(harness.layout)
    with open(path, "r+b") as fh:
        fh.truncate(4096)
    out, _ = phh(harness.root, "scoreboard", "--json")
    derived, _ = phh(harness.root, "scoreboard", "--json", "--recompute")
    assert board(out) == board(derived) and [r["batch_id"] for r in board(out)["batches"]] \
        == [bid]
    assert system_view(harness.layout) is not None  # derived again, settled again

    # a start pause (its note needs the models): derived
    pauses = harness.layout.system / "pauses"
    pauses.mkdir(parents=True, exist_ok=True)
    (pauses / "x.json").write_text("{}")
    assert system_view(harness.layout) is None


def test_cold_reads_import_no_heavy_module(harness: Harness) -> None:
    bid = settled(harness)
    phh(harness.root, "history", "retries", "--json")  # (the catalog is current after this)
    for argv in (["history", "retries", "--json"], ["history", "attempts", "--limit", "5",
                                                     "--json"],
                 ["jobs", bid, "--limit", "5", "--json"],
                 ["attempts", bid, "job_00003", "step1", "--limit", "5", "--json"],
                 ["scoreboard", "--json"]):
        out, heavy = phh(harness.root, *argv)
        assert heavy == [], (argv, heavy)
        assert json.loads(out)


def test_batch_view_paged(harness: Harness) -> None:
    bid = settled(harness)
    app = create_app(harness.layout, Auth("none"))
    with TestClient(app, base_url="http://127.0.0.1", client=("127.0.0.1", 5555)) as c:
        whole = c.get(f"/v1/batches/{bid}")
        assert whole.status_code == 200
        assert "next_cursor" not in whole.json() and len(whole.json()["steps"]) == 2 * JOBS
        seen: list[tuple[str, str]] = []
        cursor = None
        while True:
            params: dict[str, Any] = {"limit": 7}
            if cursor:
                params["cursor"] = cursor
            r = c.get(f"/v1/batches/{bid}", params=params)
            assert r.status_code == 200, r.text
            page = r.json()
            assert page["batch_id"] == bid and page["total"] == 2 * JOBS
            assert page["batch"]["steps_total"] == 2 * JOBS
            assert page["batch"]["counts"] == whole.json()["counts"]
            assert len(page["steps"]) <= 7
            seen += [(s["job_id"], s["step_id"]) for s in page["steps"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert seen == [(s["job_id"], s["step_id"]) for s in whole.json()["steps"]]
        assert c.get(f"/v1/batches/{bid}", params={"cursor": "!!"}).status_code == 400
        assert c.get(f"/v1/batches/{bid}", params={"limit": 0}).status_code in (400, 422)
        assert c.get("/v1/batches/nope", params={"limit": 5}).status_code == 404
