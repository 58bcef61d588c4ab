"""The filesystem queue: good, bad, duplicate and partial drops; crash at every step of an
ingest (a real SIGKILL of a `phh ingest` process) and the next scan finishing it; the engine
ingesting drops at start and while it runs."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest
from conftest import GOAL, Harness, final, step, wait_for

from phh_engine.interfaces.queue import CLAIM_PREFIX, DropQueue
from phh_engine.interfaces.submit import submit
from phh_engine.models import HarnessSettings
from phh_engine.store.harness_config import load_config, materialize
from phh_engine.store.paths import Layout

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")


def table(root: Path, **kw: Any) -> dict[str, Any]:
    return {"batch_goal_summary": GOAL, "working_root": str(root),
            "jobs": [{"job_id": "j1", "steps": [{"step_id": "s1", "prompt": "hi"}]}], **kw}


@pytest.fixture
def queue(tmp_path: Path) -> DropQueue:
    layout = Layout(tmp_path)
    materialize(layout, HarnessSettings())
    q = DropQueue(layout, load_config(layout))
    q.ensure_dirs()
    return q


def drop(q: DropQueue, name: str, content: dict[str, Any] | str) -> Path:
    """Drop like a well-behaved writer: a dotfile, then an atomic rename into place."""
    tmp = q.incoming / f".{name}.writing"
    tmp.write_text(content if isinstance(content, str) else json.dumps(content))
    os.rename(tmp, q.incoming / name)
    return q.incoming / name


def batches(q: DropQueue) -> list[str]:
    return sorted(p.name for p in q.layout.runs.iterdir()
                  if (p / "batch_meta.json").is_file())


def ack(q: DropQueue, name: str) -> dict[str, Any]:
    return json.loads((q.accepted / f"{name}.ack.json").read_text())


def leftovers(q: DropQueue) -> list[str]:
    """Anything still in flight: claimed files, intents, pending drops."""
    return sorted([*os.listdir(q.incoming), *os.listdir(q.intents)])


def test_good_drop_is_accepted_with_ack(queue: DropQueue) -> None:
    drop(queue, "good.json", table(queue.layout.root))
    (res,) = queue.scan()
    assert res.status == "accepted" and not res.duplicate
    a = ack(queue, "good.json")
    assert a["batch_id"] == res.batch_id and a["accepted_job_ids"] == ["j1"]
    assert a["duplicate"] is False and a["accepted_file"] == "accepted/good.json"
    assert (queue.accepted / "good.json").is_file()
    assert batches(queue) == [res.batch_id]
    meta = json.loads(queue.layout.batch_meta(res.batch_id).read_text())
    assert meta["launch_table_sha256"] == a["sha256"]
    assert leftovers(queue) == []
    assert queue.scan() == []  # idempotent: nothing left to do


def test_yaml_drop_and_prompt_ref_relative_to_the_table(queue: DropQueue) -> None:
    (queue.incoming / "prompts").mkdir()
    (queue.incoming / "prompts" / "p.md").write_text("prompt from a file")
    doc = (f"batch_goal_summary: {GOAL}\nworking_root: {queue.layout.root}\njobs:\n"
           "  - job_id: j1\n    steps:\n      - step_id: s1\n        prompt_ref: prompts/p.md\n")
    drop(queue, "t.yaml", doc)
    (res,) = queue.scan()
    assert res.status == "accepted", res.errors
    meta = json.loads(queue.layout.batch_meta(res.batch_id).read_text())
    assert meta["jobs"][0]["steps"][0]["prompt"] == "prompt from a file"


def test_bad_drop_is_rejected_with_every_error(queue: DropQueue) -> None:
    bad = {"batch_goal_summary": "short", "jobs": [{"job_id": "../x", "steps": [
        {"step_id": "a", "prompt": "p", "depends_on": ["nope"]}]}], "typo_key": 1}
    drop(queue, "bad.json", bad)
    drop(queue, "broken.json", '{"jobs": [')
    out = {r.name: r for r in queue.scan()}
    assert {r.status for r in out.values()} == {"rejected"}
    err = json.loads((queue.rejected / "bad.json.error.json").read_text())
    text = json.dumps(err["errors"])
    for needle in ("150", "../x", "nope", "typo_key"):
        assert needle in text, needle
    assert len(err["errors"]) >= 4 and err["dropped_name"] == "bad.json"
    assert (queue.rejected / "bad.json").read_text() == json.dumps(bad)  # kept as dropped
    broken = json.loads((queue.rejected / "broken.json.error.json").read_text())
    assert "line 1" in broken["errors"][0]["message"]
    assert batches(queue) == [] and leftovers(queue) == []


def test_odd_files_are_rejected_not_lost(queue: DropQueue, tmp_path: Path) -> None:
    outside = tmp_path / "secret.json"
    outside.write_text(json.dumps(table(queue.layout.root)))
    os.symlink(outside, queue.incoming / "link.json")
    drop(queue, "notes.txt", "hello")
    out = {r.name: r for r in queue.scan()}
    assert out["link.json"].status == "rejected"
    assert "symlink" in out["link.json"].errors[0]["message"]
    assert (queue.rejected / "link.json").is_symlink()  # moved, never followed
    assert out["notes.txt"].status == "rejected"
    assert ".json, .yaml or .yml" in out["notes.txt"].errors[0]["message"]
    assert batches(queue) == []


def test_duplicate_drop_returns_the_existing_batch(queue: DropQueue) -> None:
    doc = table(queue.layout.root)
    drop(queue, "first.json", doc)
    (first,) = queue.scan()
    drop(queue, "again.json", doc)
    drop(queue, "first.json", doc)  # the same name again: lands beside the first
    out = {r.file.name: r for r in queue.scan()}
    assert set(out) == {"again.json", "first.json~2"}
    for r in out.values():
        assert r.status == "accepted" and r.duplicate and r.batch_id == first.batch_id
    assert ack(queue, "again.json")["duplicate"] is True
    assert ack(queue, "first.json")["duplicate"] is False  # the first ack is untouched
    assert ack(queue, "first.json~2")["batch_id"] == first.batch_id
    assert batches(queue) == [first.batch_id]
    # a CLI `phh submit --dedupe` of the same bytes finds the same batch
    assert submit(queue.layout, queue.accepted / "again.json", dedupe=True).batch_id == \
        first.batch_id


def test_changed_bytes_are_a_new_batch(queue: DropQueue) -> None:
    drop(queue, "a.json", table(queue.layout.root))
    drop(queue, "b.json", table(queue.layout.root, labels=["other"]))
    ids = {r.batch_id for r in queue.scan()}
    assert len(ids) == 2 and batches(queue) == sorted(ids)


def test_partial_and_temp_files_wait_until_renamed(queue: DropQueue) -> None:
    body = json.dumps(table(queue.layout.root))
    half = body[: len(body) // 2]
    (queue.incoming / ".hidden.json").write_text(half)
    (queue.incoming / "big.json.tmp").write_text(half)
    (queue.incoming / "big.json.part").write_text(half)
    (queue.incoming / "editor.json~").write_text(half)
    (queue.incoming / "subdir").mkdir()
    assert queue.pending() == [] and queue.scan() == []
    assert sorted(os.listdir(queue.incoming)) == [
        ".hidden.json", "big.json.part", "big.json.tmp", "editor.json~", "subdir"]
    # the writer finishes and renames: now it is taken
    (queue.incoming / "big.json.tmp").write_text(body)
    os.rename(queue.incoming / "big.json.tmp", queue.incoming / "big.json")
    (res,) = queue.scan()
    assert res.name == "big.json" and res.status == "accepted"
    assert (queue.incoming / ".hidden.json").read_text() == half  # never touched


def test_two_scanners_at_once_ingest_each_file_once(queue: DropQueue) -> None:
    for i in range(12):
        drop(queue, f"t{i:02d}.json", table(queue.layout.root, labels=[f"n{i}"]))
    procs = [subprocess.Popen([PHH, "--root", str(queue.layout.root), "ingest", "--json"],
                              stdout=subprocess.PIPE, text=True) for _ in range(3)]
    results = [json.loads(p.communicate(timeout=120)[0]) for p in procs]
    queue.scan()  # a scanner that found the lock busy returned at once: finish
    names = [o["name"] for r in results for o in r["outcomes"]]
    assert len(names) == len(set(names))
    assert len(batches(queue)) == 12
    assert sorted(n for n in os.listdir(queue.accepted) if n.endswith(".ack.json")) == [
        f"t{i:02d}.json.ack.json" for i in range(12)]
    assert leftovers(queue) == []


# ----------------------------------------------------------------------------- crashes
ACCEPT_POINTS = ["queue.after_claim", "queue.after_intent", "queue.after_submit",
                 "queue.after_ledger", "queue.after_ack", "queue.after_move"]


def ingest_and_die(q: DropQueue, point: str) -> None:
    env = {**os.environ, "PHH_CRASH_AT": point}
    out = subprocess.run([PHH, "--root", str(q.layout.root), "ingest", "--json"], env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == -9, (point, out.returncode, out.stderr)  # SIGKILLed mid-ingest


@pytest.mark.parametrize("point", ACCEPT_POINTS)
def test_crash_mid_ingest_of_a_good_drop(queue: DropQueue, point: str) -> None:
    doc = table(queue.layout.root)
    drop(queue, "job.json", doc)
    ingest_and_die(queue, point)
    assert any(n.endswith("job.json") for n in
               [*os.listdir(queue.incoming), *os.listdir(queue.accepted)]), "file lost"
    res = queue.scan()
    assert [r.name for r in res] == ([] if point == "queue.after_move" else ["job.json"])
    (bid,) = batches(queue)  # exactly one batch, whatever the crash point
    a = ack(queue, "job.json")
    assert a["batch_id"] == bid and a["duplicate"] is False
    assert (queue.accepted / "job.json").read_text() == json.dumps(doc)
    assert sorted(os.listdir(queue.accepted)) == ["job.json", "job.json.ack.json"]
    assert leftovers(queue) == []
    # and the sha256 record holds: a re-drop is a duplicate of that batch
    drop(queue, "job.json", doc)
    (again,) = queue.scan()
    assert again.duplicate and again.batch_id == bid and batches(queue) == [bid]


def test_crash_mid_ingest_of_a_bad_drop(queue: DropQueue) -> None:
    drop(queue, "bad.json", {"jobs": []})
    ingest_and_die(queue, "queue.after_error")
    assert (queue.incoming / f"{CLAIM_PREFIX}bad.json").exists()
    (res,) = queue.scan()
    assert res.status == "rejected" and res.file.name == "bad.json"
    assert sorted(os.listdir(queue.rejected)) == ["bad.json", "bad.json.error.json"]
    assert leftovers(queue) == [] and batches(queue) == []


def test_crash_between_batch_creation_and_its_records(queue: DropQueue) -> None:
    """The window inside submit (batch published, dedupe marker not yet written): leave
    exactly that on-disk state and prove the next scan adopts the batch, not a second one."""
    doc = table(queue.layout.root)
    claimed = drop(queue, "w.json", doc).rename(queue.incoming / f"{CLAIM_PREFIX}w.json")
    import hashlib

    sha = hashlib.sha256(claimed.read_bytes()).hexdigest()
    (queue.intents / "w.json.json").write_text(json.dumps(
        {"drop_id": "d1", "dropped_name": "w.json", "sha256": sha, "batch_id": "b_crash"}))
    submit(queue.layout, claimed, batch_id="b_crash")  # no dedupe marker, no ledger, no ack
    (res,) = queue.scan()
    assert res.status == "accepted" and res.batch_id == "b_crash" and not res.duplicate
    assert batches(queue) == ["b_crash"] and leftovers(queue) == []


def test_same_batch_id_from_another_table_is_rejected(queue: DropQueue) -> None:
    drop(queue, "a.json", table(queue.layout.root, batch_id="fixed"))
    drop(queue, "b.json", table(queue.layout.root, batch_id="fixed", labels=["x"]))
    out = {r.name: r for r in queue.scan()}
    assert out["a.json"].status == "accepted" and out["a.json"].batch_id == "fixed"
    assert out["b.json"].status == "rejected"
    assert "already exists" in json.dumps(out["b.json"].errors)


# ----------------------------------------------------------------------------- engine
@pytest.mark.codex
def test_engine_ingests_drops_at_start_and_while_running(harness: Harness) -> None:
    q = DropQueue(harness.layout, load_config(harness.layout))
    q.ensure_dirs()
    first = harness.table([{"job_id": "j1", "steps": [step("s1", final("from queue"))]}])
    drop(q, "first.json", first)
    eng = harness.start()
    a1 = wait_for(lambda: (q.accepted / "first.json.ack.json").exists() and
                  ack(q, "first.json"), 30, "scan at start")
    second = harness.table([{"job_id": "j2", "steps": [step("s1", final("dropped live"))]}])
    (q.incoming / "second.json.tmp").write_text(json.dumps(second))
    os.rename(q.incoming / "second.json.tmp", q.incoming / "second.json")
    a2 = wait_for(lambda: (q.accepted / "second.json.ack.json").exists() and
                  ack(q, "second.json"), 30, "watched drop")
    for a, job in ((a1, "j1"), (a2, "j2")):
        wait_for(lambda a=a, job=job: [p for p in harness.attempts(a["batch_id"], job, "s1")
                                       if harness.state(p)["status"] == "succeeded"],
                 90, f"{job} ran")
    harness.stop(eng)
    kinds = [(e.kind, e.status) for e in harness.events if e.kind == "queue"]
    assert kinds == [("queue", "accepted"), ("queue", "accepted")]


def test_scan_is_thread_safe_in_process(queue: DropQueue) -> None:
    for i in range(6):
        drop(queue, f"p{i}.json", table(queue.layout.root, labels=[f"p{i}"]))
    threads = [threading.Thread(target=queue.scan) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    queue.scan()
    assert len(batches(queue)) == 6 and leftovers(queue) == []
