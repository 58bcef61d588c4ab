"""The catalog's paged views and history queries: inputs and results at every entry point
(`phh history *`, `phh jobs|attempts --limit`, `/v1/history/*`, `/v1/batches/{b}/steps`,
`/v1/batches/{b}?limit&cursor`), with the values of the tester's report (t24, findings
4-11): a moved root, out-of-range times and cursors, cursors of another query, a
hand-dropped closed.json, unknown failure classes and options, `--limit 0`, a closed
stdout, a paged listing of an unknown job. Real files, real SQLite, real `phh` processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import get_args

import pytest
from fastapi.testclient import TestClient
from test_catalog import PHH, Store

from phh_engine.interfaces import history
from phh_engine.interfaces.api import Auth, create_app
from phh_engine.models.common import FailureClass
from phh_engine.store.catalog import open_for_reader
from phh_engine.store.paths import Layout
from phh_tui.paging import CatalogPages

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
from common import submit_two_step_jobs  # noqa: E402

BIG_INT = "Wzk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5XQ"  # [99999999999999999999999]
NOT_OURS = "cursor: not a cursor this query handed out"


def phh(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHH, "--root", str(root), *argv], capture_output=True, text=True,
                          timeout=120)


def finished_store(root: Path, jobs: int = 3) -> Store:
    """A batch whose every step succeeded (job 0's step1 failed first and was retried)."""
    store = Store(root, jobs=jobs)
    store.attempt(0, 0, 0, "failed")
    for j in range(jobs):
        store.attempt(0, j, 0, "succeeded")
        store.attempt(0, j, 1, "succeeded")
    return store


def client(root: Path) -> TestClient:
    return TestClient(create_app(Layout(root), Auth("none")), base_url="http://127.0.0.1",
                      client=("127.0.0.1", 5555))


def test_constants_match_the_models() -> None:
    assert set(history.FAILURE_CLASSES) == set(get_args(FailureClass))
    assert len(history.FAILURE_CLASSES) == len(get_args(FailureClass))


# ----------------------------------------------------------------------------- finding 4
def test_a_moved_root_pages_its_own_attempt_directories(tmp_path: Path) -> None:
    store = finished_store(tmp_path / "R")
    bid = store.batches[0]
    first = json.loads(phh(store.root, "jobs", bid, "--limit", "1", "--json").stdout)
    assert first["steps"][0]["attempt_dir"].startswith(f"{store.root}/runs/")
    # the report's move: `cp -a $R /tmp/c && mv /tmp/c /tmp/c2` (the catalog goes along,
    # and names and mtimes, all its fingerprint covers, are kept)
    subprocess.run(["cp", "-a", str(store.root), str(tmp_path / "c")], check=True)
    subprocess.run(["mv", str(tmp_path / "c"), str(tmp_path / "c2")], check=True)
    moved = tmp_path / "c2"
    whole = json.loads(phh(moved, "jobs", bid, "--json").stdout)
    unpaged = {(j["job_id"], s["step_id"]): s for j in whole["jobs"] for s in j["steps"]}
    out = phh(moved, "jobs", bid, "--limit", "1", "--json")
    assert out.returncode == 0, out.stderr
    row = json.loads(out.stdout)["steps"][0]
    assert row["attempt_dir"].startswith(f"{moved}/runs/{bid}/")
    assert row["attempt_dir"] == unpaged[(row["job_id"], row["step_id"])]["attempt_dir"]
    page = json.loads(phh(moved, "jobs", bid, "--limit", "1000", "--json").stdout)["steps"]
    for s in page:
        u = unpaged[(s["job_id"], s["step_id"])]
        assert s["attempt_dir"] == u["attempt_dir"]
        rf, urf = s.get("resume_from") or {}, u.get("resume_from") or {}
        assert rf.get("resume_base_dir") == urf.get("resume_base_dir")
    art = phh(moved, "artifact", "--attempt-dir", row["attempt_dir"], "meta.json")
    assert art.returncode == 0, art.stderr
    # attempts, paged (CLI and history) as unpaged
    listed = json.loads(phh(moved, "attempts", bid, "job_00000", "step1", "--json").stdout)
    paged = json.loads(phh(moved, "attempts", bid, "job_00000", "step1", "--limit", "5",
                           "--json").stdout)
    assert [a["attempt_dir"] for a in paged["attempts"]] == \
        [a["attempt_dir"] for a in listed["attempts"]]
    assert len(listed["attempts"]) == 2
    hist = json.loads(phh(moved, "history", "attempts", "--json").stdout)["attempts"]
    slow = json.loads(phh(moved, "history", "slowest", "--json").stdout)["attempts"]
    assert all(a["attempt_dir"].startswith(f"{moved}/runs/") for a in hist + slow)
    with client(moved) as c:
        for url in (f"/v1/batches/{bid}/steps?limit=1000", f"/v1/batches/{bid}?limit=1000"):
            r = c.get(url)
            assert r.status_code == 200, r.text
            assert [s["attempt_dir"] for s in r.json()["steps"]] == \
                [s["attempt_dir"] for s in page]
    # the dashboard's window and its step row for a settled batch
    cat = open_for_reader(Layout(moved))
    try:
        rows = history.step_window(cat, bid, limit=1000)
    finally:
        cat.close()
    assert [r["attempt_dir"] for r in rows] == [s["attempt_dir"] for s in page]
    pages = CatalogPages(Layout(moved))
    try:
        one = pages.step_row(bid, "job_00001", "step2")
    finally:
        pages.close()
    assert one is not None and one.attempt_dir == unpaged[("job_00001", "step2")]["attempt_dir"]


# ----------------------------------------------------------------------------- finding 5, 6
@pytest.mark.parametrize("argv,name", [
    (["history", "attempts", "--since", "9999-12-31T23:59:59-05:00"], "since:"),
    (["history", "attempts", "--since", "0001-01-01T00:00:00+05:00"], "since:"),
    (["history", "hourly", "--until", "0001-01-01T00:00:00+00:01"], "until:"),
    (["history", "retries", "--since", "9999-12-31T23:59:59.999999-00:01"], "since:"),
    (["history", "slowest", "--until", "9999-12-31T23:59:59-01:00"], "until:"),
    (["history", "tokens", "--since", "9999-12-31T23:59:59-05:00"], "since:"),
    (["jobs", "{b}", "--limit", "2", "--cursor", BIG_INT], NOT_OURS),
    (["attempts", "{b}", "job_00000", "step1", "--limit", "2", "--cursor", BIG_INT], NOT_OURS),
    (["history", "attempts", "--cursor",
      "WyJhIiwiYiIsImMiLDk5OTk5OTk5OTk5OTk5OTk5OTk5OTk5XQ"], NOT_OURS),
    (["jobs", "{b}", "--limit", "2", "--cursor", "WyJ4Il0"], NOT_OURS),  # ["x"]
    (["jobs", "{b}", "--limit", "2", "--cursor", "Wy0xXQ"], NOT_OURS),  # [-1]
    (["jobs", "{b}", "--limit", "2", "--cursor", "W3RydWVd"], NOT_OURS),  # [true]
    (["history", "attempts", "--cursor", "WzEsMiwzLDRd"], NOT_OURS),  # [1,2,3,4]
])
def test_out_of_range_and_foreign_inputs_exit_2_naming_them(
        tmp_path: Path, argv: list[str], name: str) -> None:
    store = finished_store(tmp_path / "R", jobs=2)
    bid = store.batches[0]
    out = phh(store.root, *[a.replace("{b}", bid) for a in argv], "--json")
    assert out.returncode == 2, (out.stdout, out.stderr)
    assert "Traceback" not in out.stderr
    assert json.loads(out.stdout)["message"].startswith(name), out.stdout


def test_api_refuses_out_of_range_and_foreign_inputs_with_400(tmp_path: Path) -> None:
    store = finished_store(tmp_path / "R", jobs=4)
    bid = store.batches[0]
    with client(store.root) as c:
        good = c.get(f"/v1/batches/{bid}/steps", params={"limit": 2}).json()["next_cursor"]
        good_attempt = c.get("/v1/history/attempts",
                             params={"limit": 2}).json()["next_cursor"]
        for url, name in (
                ("/v1/history/attempts?since=9999-12-31T23:59:59-05:00", "since:"),
                ("/v1/history/hourly?until=0001-01-01T00:00:00%2B00:01", "until:"),
                ("/v1/history/retries?since=9999-12-31T23:59:59.999999-00:01", "since:"),
                ("/v1/history/slowest?until=9999-12-31T23:59:59-01:00", "until:"),
                (f"/v1/batches/{bid}/steps?cursor={BIG_INT}==", NOT_OURS),
                (f"/v1/batches/{bid}?cursor={BIG_INT}==", NOT_OURS),
                (f"/v1/batches/{bid}/steps?limit=2&cursor=WyJ4Il0", NOT_OURS),
                (f"/v1/batches/{bid}/steps?limit=2&cursor=Wy0xXQ", NOT_OURS),
                ("/v1/history/attempts?cursor=WzEsMiwzLDRd", NOT_OURS),
                # one query's cursor is not another's
                (f"/v1/batches/{bid}/steps?cursor={good_attempt}", NOT_OURS),
                (f"/v1/history/attempts?cursor={good}", NOT_OURS)):
            r = c.get(url)
            assert r.status_code == 400, (url, r.status_code, r.text)
            assert r.json()["message"].startswith(name), (url, r.text)
        assert c.get(f"/v1/batches/{bid}/steps", params={"cursor": good}).status_code == 200


# ----------------------------------------------------------------------------- finding 7
def test_a_hand_dropped_closed_json_is_seen_by_the_paged_batch_view(tmp_path: Path) -> None:
    store = finished_store(tmp_path / "R")
    bid = store.batches[0]
    cat = open_for_reader(store.layout)
    settled = cat.query("SELECT finished, fingerprint, closed FROM batches")[0]
    cat.close()
    assert settled["finished"] and settled["fingerprint"] and not settled["closed"]
    with client(store.root) as c:
        assert c.get(f"/v1/batches/{bid}?limit=1").json()["batch"]["closed"] is False
        (store.layout.batch_dir(bid) / "closed.json").write_text("{}\n")  # no engine, no phh
        assert c.get(f"/v1/batches/{bid}?limit=1").json()["batch"]["closed"] is True
        assert c.get(f"/v1/batches/{bid}").json()["closed"] is True
        assert [b["closed"] for b in c.get("/v1/batches").json()] == [True]
    board = json.loads(phh(store.root, "scoreboard", "--json").stdout)
    assert [b["closed"] for b in board["batches"]] == [True]


# ----------------------------------------------------------------------------- finding 8, 9
@pytest.mark.parametrize("argv,name", [
    (["history", "attempts", "--class", "bogus_class"], "class:"),
    (["jobs", "{b}", "--class", "bogus"], "class:"),
    (["history", "hourly", "--status", "bogus"], "--status:"),
    (["history", "retries", "--class", "bogus_class"], "--class:"),
    (["history", "tokens", "--batch", "nonexist"], "--batch:"),
    (["history", "slowest", "--cursor", "WzEsMiwzLDRd"], "--cursor:"),
    (["history", "attempts", "--by", "day"], "--by:"),
    (["history", "slowest", "--limit", "0"], "limit:"),
    (["history", "slowest", "--limit", "-1"], "limit:"),
    (["history", "attempts", "--limit", "0"], "limit:"),
    (["jobs", "{b}", "--limit", "0"], "limit:"),
    (["attempts", "{b}", "job_00000", "step1", "--limit", "0"], "limit:"),
])
def test_unknown_classes_unused_options_and_limit_0_exit_2(
        tmp_path: Path, argv: list[str], name: str) -> None:
    store = finished_store(tmp_path / "R", jobs=2)
    bid = store.batches[0]
    out = phh(store.root, *[a.replace("{b}", bid) for a in argv], "--json")
    assert out.returncode == 2, (out.stdout, out.stderr)
    message = json.loads(out.stdout)["message"]
    assert message.startswith(name), message
    if name == "class:":
        assert "nonzero_exit" in message and "verify_failed" in message  # the valid ones
    if name.startswith("--"):
        assert argv[1] in message  # the kind


def test_api_refuses_unknown_classes_unused_parameters_and_limit_0(tmp_path: Path) -> None:
    store = finished_store(tmp_path / "R", jobs=2)
    bid = store.batches[0]
    with client(store.root) as c:
        for url, name in (("/v1/history/attempts?class=bogus", "class:"),
                          (f"/v1/batches/{bid}/steps?class=bogus", "class:"),
                          ("/v1/history/hourly?status=bogus", "status:"),
                          ("/v1/history/retries?class=bogus_class", "class:"),
                          ("/v1/history/tokens?batch=nonexist", "batch:"),
                          (f"/v1/batches/{bid}?limit=1&status=failed", "status:")):
            r = c.get(url)
            assert r.status_code == 400, (url, r.text)
            assert r.json()["message"].startswith(name), (url, r.text)
        assert c.get("/v1/history/slowest?limit=0").status_code == 400
        ok = c.get("/v1/history/attempts?class=nonzero_exit").json()
        assert ok["total"] == 1  # job 0's first step1


# ----------------------------------------------------------------------------- finding 10
COMMANDS = [
    ["history", "attempts"], ["history", "attempts", "--json"], ["history", "hourly"],
    ["history", "tokens"], ["jobs", "{b}"], ["jobs", "{b}", "--json"],
    ["jobs", "{b}", "--limit", "300"], ["attempts", "{b}", "job_00000", "step1"],
    ["scoreboard"], ["scoreboard", "--json"], ["--help"], ["current", "{b}", "job_00000"],
    ["artifact", "{b}", "job_00000", "step1", "meta.json"],
    ["tail", "{b}", "job_00000", "step1"],
]


def test_a_closed_stdout_ends_every_command_quietly(tmp_path: Path) -> None:
    store = finished_store(tmp_path / "R", jobs=3)
    bid = store.batches[0]
    for argv in COMMANDS:
        read, write = os.pipe()
        os.close(read)  # the reader went away before the first line (`| head -0`)
        try:
            out = subprocess.run([PHH, "--root", str(store.root),
                                  *[a.replace("{b}", bid) for a in argv]],
                                 stdout=write, stderr=subprocess.PIPE, text=True, timeout=120)
        finally:
            os.close(write)
        # 141 = 128 + SIGPIPE; rich's console (the scoreboard for people) ends such a
        # write itself, as quietly, with 1; argparse's help ignores a failed write
        want = {"scoreboard": 1, "--help": 0}.get(" ".join(argv), 141)
        assert out.returncode == want, (argv, out.returncode, out.stderr)
        assert out.stderr == "", (argv, out.stderr)


def test_head_1_of_a_long_listing(tmp_path: Path) -> None:
    """The report's pipe, `phh jobs B | head -1`, over more than a pipe's buffer (3,000
    lines): head exits after its line while phh still writes."""
    root = tmp_path / "R"
    bid = submit_two_step_jobs(root, 1500, goal="word " * 160, prompt="p")["batch_id"]
    out = subprocess.run(
        ["bash", "-c", f"{PHH} --root {root} jobs {bid} 2>{tmp_path}/err | head -1; "
         "echo ${PIPESTATUS[0]}"], capture_output=True, text=True, timeout=120)
    first, status = out.stdout.splitlines()
    assert first.split()[:3] == ["job_00000", "step1", "ready"] and status == "141", out.stdout
    assert (tmp_path / "err").read_text() == ""


# ----------------------------------------------------------------------------- finding 11
@pytest.mark.parametrize("job,step", [("nojob", "step1"), ("job_00000", "nostep")])
def test_a_paged_listing_of_an_unknown_step_fails_like_the_unpaged_one(
        tmp_path: Path, job: str, step: str) -> None:
    store = finished_store(tmp_path / "R", jobs=2)
    bid = store.batches[0]
    unpaged = phh(store.root, "attempts", bid, job, step, "--json")
    paged = phh(store.root, "attempts", bid, job, step, "--limit", "5", "--json")
    assert unpaged.returncode == paged.returncode == 1, (unpaged.stdout, paged.stdout)
    assert json.loads(paged.stdout) == json.loads(unpaged.stdout)
    want = f"no job {job!r}" if job == "nojob" else f"no step {step!r}"
    assert json.loads(paged.stdout)["message"].startswith(want)
    with client(store.root) as c:
        a = c.get(f"/v1/batches/{bid}/jobs/{job}/steps/{step}/attempts")
        b = c.get("/v1/history/attempts", params={"batch": bid, "job": job, "step": step,
                                                   "limit": 5})
        assert a.status_code == b.status_code == 404 and a.json() == b.json()
