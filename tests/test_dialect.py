"""Launch Tables written for the reference harness (ParallelHassnes) run unchanged (issue 17).

Why: the reference's users already have Launch Tables; six spellings made phh refuse 26 of
27 real ones. Each spelling must be read as phh's canonical key through every door (file,
drop folder, API), recorded canonically in batch_meta.json, reported once as a note (never
an error); the same key in both spellings with different values is an error naming both;
a batch concurrency above the harness limit is capped with a note. `phh submit --check`
validates a folder of tables at once without writing anything.

The fixtures are written here in the reference's shape (top-level `spec_version`,
`batch_id`, `concurrency`, `execution_policy`, `timeouts`, `workspace_policy`; jobs with
`working_directory`; steps with `prompt`/`prompt_ref`, `append_prompt`, `timeout_seconds`,
`resume_from` with `selector`).
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import GOAL, Harness, final, step
from test_api import serving

from phh_engine.interfaces.dialect import translate
from phh_engine.interfaces.queue import DropQueue
from phh_engine.interfaces.submit import SubmitError, canonical_bytes, submit
from phh_engine.models import HarnessSettings
from phh_engine.store.files import atomic_write_json
from phh_engine.store.harness_config import load_config, materialize
from phh_engine.store.paths import Layout
from phh_tui.cli import main

#: every reference spelling this issue is about, as found in their tables
REFERENCE_KEYS = (
    "execution_policy.web_search_enabled",
    "execution_policy.capture_events_jsonl",
    "execution_policy.capture_codex_thread_id",
    "timeouts.step_timeout_seconds",
    "workspace_policy",
    "concurrency",
)


def reference_table(root: Path, *, batch_id: str | None = "ref_batch_1",
                    **top: Any) -> dict[str, Any]:
    """A Launch Table as the reference harness's users write them, with phh's spellings
    only (each test adds the reference spellings it is about)."""
    lt: dict[str, Any] = {
        "spec_version": "1.0.0",
        "batch_goal_summary": GOAL,
        "working_root": str(root),
        "concurrency": 2,
        "execution_policy": {"approval_policy": "never", "model_reasoning_effort": "high",
                             "sandbox": "read-only", "skip_git_repo_check": False},
        "retries": {"max_attempts": 1},
        "jobs": [{
            "job_id": "agent_01_audit",
            "working_directory": ".",
            "steps": [
                {"step_id": "run", "timeout_seconds": 300,
                 "prompt": "Audit the module and write a Run Report."},
                {"step_id": "followup", "prompt_ref": "prompts/followup.md",
                 "append_prompt": "Keep the report short.",
                 "resume_from": {"step_id": "run", "selector": "latest_successful"}},
            ],
        }],
    }
    if batch_id is not None:
        lt["batch_id"] = batch_id
    lt.update(top)
    return lt


def with_reference_spellings(lt: dict[str, Any], *keys: str) -> dict[str, Any]:
    """`lt` with the given reference spellings set (the way their tables set them)."""
    lt = copy.deepcopy(lt)
    ep, to = lt.setdefault("execution_policy", {}), lt.setdefault("timeouts", {})
    for key in keys or REFERENCE_KEYS:
        if key == "execution_policy.web_search_enabled":
            ep["web_search_enabled"] = True
        elif key == "execution_policy.capture_events_jsonl":
            ep["capture_events_jsonl"] = True
        elif key == "execution_policy.capture_codex_thread_id":
            ep["capture_codex_thread_id"] = True
        elif key == "timeouts.step_timeout_seconds":
            to["step_timeout_seconds"] = 600
        elif key == "workspace_policy":
            lt["workspace_policy"] = {"mode": "isolated"}
        elif key == "concurrency":
            lt["concurrency"] = 10
    if not to:
        del lt["timeouts"]
    return lt


#: where each spelling lands in batch_meta.json's effective_defaults, and its value there
CANONICAL: dict[str, tuple[tuple[str, ...], Any]] = {
    "execution_policy.web_search_enabled": (("execution_policy", "web_search"), True),
    "execution_policy.capture_events_jsonl": (("execution_policy", "capture_events"), True),
    "execution_policy.capture_codex_thread_id": (("execution_policy",), None),
    "timeouts.step_timeout_seconds": (("timeouts", "step_seconds"), 600),
    "workspace_policy": (("workspace_policy",), "isolated"),
    "concurrency": (("concurrency",), 8),
}
REFERENCE_WORDS = ("web_search_enabled", "capture_events_jsonl", "capture_codex_thread_id",
                   "step_timeout_seconds")


@pytest.fixture
def layout(tmp_path: Path) -> Layout:
    """A phh root whose harness limit is the default `limits.global_concurrency` = 8."""
    lay = Layout(tmp_path / "root")
    atomic_write_json(lay.settings_path, HarnessSettings().model_dump(mode="json"))
    config = materialize(lay, HarnessSettings())
    assert config.limits.global_concurrency == 8
    return lay


@pytest.fixture
def tables(tmp_path: Path) -> Path:
    """Where the operator keeps tables, with the prompt file their `prompt_ref` names."""
    d = tmp_path / "tables"
    (d / "prompts").mkdir(parents=True)
    (d / "prompts" / "followup.md").write_text("Follow up on your audit.", encoding="utf-8")
    return d


def write(path: Path, lt: dict[str, Any]) -> Path:
    if path.suffix in (".yaml", ".yml"):
        path.write_text(yaml.safe_dump(lt, sort_keys=False), encoding="utf-8")
    else:
        path.write_text(json.dumps(lt, indent=2), encoding="utf-8")
    return path


def meta_text(layout: Layout, batch_id: str) -> str:
    return layout.batch_meta(batch_id).read_text(encoding="utf-8")


def dig(obj: Any, keys: tuple[str, ...]) -> Any:
    for k in keys:
        obj = obj[k]
    return obj


def tree(path: Path) -> dict[str, bytes]:
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): p.read_bytes() if p.is_file() else b"<dir>"
            for p in path.rglob("*")}


def note_paths(notes: list[dict[str, str]]) -> list[str]:
    return [n["path"] for n in notes]


# ----------------------------------------------------------------------------- the function
def test_translate_is_pure_and_every_spelling_is_reported_once(tables: Path) -> None:
    raw = with_reference_spellings(reference_table(tables))
    raw["jobs"].append({"job_id": "agent_02", "workspace_policy": {"mode": "shared"},
                        "steps": [{"step_id": "run", "prompt": "p"}]})
    raw["jobs"].append({"job_id": "agent_03", "workspace_policy": {"mode": "shared"},
                        "steps": [{"step_id": "run", "prompt": "p"}]})
    before = copy.deepcopy(raw)
    tr = translate(raw, concurrency_limit=8)
    assert raw == before  # the caller's document is never changed
    assert tr.errors == []
    assert tr.table["execution_policy"] == {
        "approval_policy": "never", "model_reasoning_effort": "high", "sandbox": "read-only",
        "skip_git_repo_check": False, "web_search": True, "capture_events": True}
    assert tr.table["timeouts"] == {"step_seconds": 600}
    assert tr.table["workspace_policy"] == "isolated" and tr.table["concurrency"] == 8
    assert [j.get("workspace_policy") for j in tr.table["jobs"]] == [None, "shared", "shared"]
    paths = [n.path for n in tr.notes]
    # in document order (these fixtures add timeouts and workspace_policy after jobs)
    assert paths == ["concurrency", *REFERENCE_KEYS[:3], "jobs[1].workspace_policy",
                     "timeouts.step_timeout_seconds", "workspace_policy"]
    # the same translation in two jobs is one note naming both places
    assert "also at jobs[2].workspace_policy" in tr.notes[4].message
    # canonical input: nothing to say, the very same object back
    canon = {"execution_policy": {"web_search": True}, "concurrency": 3, "jobs": []}
    again = translate(canon, concurrency_limit=8)
    assert again.table is canon and again.notes == [] and again.errors == []


# ----------------------------------------------------------------------------- file door
@pytest.mark.parametrize("key", REFERENCE_KEYS)
def test_each_spelling_alone_through_a_file(layout: Layout, tables: Path, key: str) -> None:
    path = write(tables / "lt.json", with_reference_spellings(reference_table(tables), key))
    res = submit(layout, path)
    assert [n.path for n in res.notes] == [key], res.notes
    text = meta_text(layout, res.batch_id)
    meta = json.loads(text)
    where, value = CANONICAL[key]
    if value is not None:
        assert dig(meta["effective_defaults"], where) == value
    for word in REFERENCE_WORDS:
        assert word not in text, word  # batch_meta.json holds only the canonical form
    # the original file's bytes are what is hashed, as for any other table
    assert meta["launch_table_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_deduplicated_submit_answers_the_same_notes(layout: Layout, tables: Path) -> None:
    path = write(tables / "lt.json", with_reference_spellings(reference_table(tables)))
    first = submit(layout, path, dedupe=True)
    again = submit(layout, path, dedupe=True)
    assert again.existing and again.batch_id == first.batch_id
    assert again.notes == first.notes and len(first.notes) == len(REFERENCE_KEYS)


def test_capture_codex_thread_id_false_is_accepted_with_a_note(layout: Layout,
                                                               tables: Path) -> None:
    lt = reference_table(tables)
    lt["execution_policy"]["capture_codex_thread_id"] = False
    res = submit(layout, write(tables / "lt.json", lt))
    (note,) = res.notes
    assert note.path == "execution_policy.capture_codex_thread_id"
    assert "no effect" in note.message and "always records" in note.message


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_all_together_through_the_cli(layout: Layout, tables: Path, suffix: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tables / f"lt{suffix}", with_reference_spellings(reference_table(tables)))
    capsys.readouterr()
    assert main(["--root", str(layout.root), "submit", str(path), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert sorted(note_paths(out["notes"])) == sorted(REFERENCE_KEYS)
    assert out["batch_id"] == "ref_batch_1"
    meta = json.loads(meta_text(layout, "ref_batch_1"))
    eff = meta["effective_defaults"]
    assert eff["execution_policy"]["web_search"] is True
    assert eff["execution_policy"]["capture_events"] is True
    assert eff["timeouts"]["step_seconds"] == 600
    assert eff["workspace_policy"] == "isolated" and eff["concurrency"] == 8
    assert meta["jobs"][0]["workspace_policy"] == "isolated"
    assert meta["jobs"][0]["steps"][1]["prompt"] == "Follow up on your audit."
    assert meta["launch_table_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()

    # the human form: the answer line, then one note line per translation
    other = write(tables / f"again{suffix}",
                  with_reference_spellings(reference_table(tables, batch_id="ref_batch_2")))
    assert main(["--root", str(layout.root), "submit", str(other)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "submitted ref_batch_2: 1 job(s)"
    assert sorted(": ".join(line.split(": ")[:2]) for line in lines[1:]) == sorted(
        f"note: {k}" for k in REFERENCE_KEYS)


@pytest.mark.parametrize(("section", "ref", "canon", "ref_value", "canon_value"), [
    ("execution_policy", "web_search_enabled", "web_search", True, False),
    ("execution_policy", "capture_events_jsonl", "capture_events", False, True),
    ("timeouts", "step_timeout_seconds", "step_seconds", 600, 900),
])
def test_both_spellings_with_different_values_is_an_error_naming_both(
        layout: Layout, tables: Path, capsys: pytest.CaptureFixture[str], section: str,
        ref: str, canon: str, ref_value: Any, canon_value: Any) -> None:
    lt = reference_table(tables)
    lt.setdefault(section, {}).update({ref: ref_value, canon: canon_value})
    path = write(tables / "lt.json", lt)
    before = tree(layout.root)
    with pytest.raises(SubmitError) as caught:
        submit(layout, path)
    (issue,) = caught.value.issues
    assert issue.path == f"{section}.{ref}"
    assert f"{section}.{canon}" in issue.message and "conflicts" in issue.message
    assert tree(layout.root) == before  # nothing half-written
    capsys.readouterr()
    assert main(["--root", str(layout.root), "submit", str(path)]) == 2
    assert f"{section}.{ref}" in capsys.readouterr().err

    # the same value in both spellings is fine: one note, phh's key is used
    lt[section][ref] = canon_value
    res = submit(layout, write(tables / "same.json", lt))
    (note,) = res.notes
    assert note.path == f"{section}.{ref}" and "same value" in note.message
    meta = json.loads(meta_text(layout, res.batch_id))
    assert meta["effective_defaults"][section][canon] == canon_value


def test_unreadable_reference_forms_are_errors(layout: Layout, tables: Path) -> None:
    lt = reference_table(tables)
    lt["workspace_policy"] = {"mode": "isolated", "allow_isolated_copy_fallback": True}
    lt["jobs"][0]["workspace_policy"] = {"mode": "sandboxed"}
    lt["execution_policy"]["capture_codex_thread_id"] = "yes"
    before = tree(layout.root)
    with pytest.raises(SubmitError) as caught:
        submit(layout, write(tables / "lt.json", lt))
    got = {i.path: i.message for i in caught.value.issues}
    assert set(got) == {"workspace_policy.allow_isolated_copy_fallback",
                        "jobs[0].workspace_policy.mode",
                        "execution_policy.capture_codex_thread_id"}, got
    assert '"shared" or "isolated"' in got["jobs[0].workspace_policy.mode"]
    assert tree(layout.root) == before


def test_a_bad_value_under_a_reference_key_is_reported_at_that_key(layout: Layout,
                                                                   tables: Path) -> None:
    lt = reference_table(tables)
    lt["execution_policy"]["web_search_enabled"] = "maybe"
    lt["timeouts"] = {"step_timeout_seconds": -5}
    with pytest.raises(SubmitError) as caught:
        submit(layout, write(tables / "lt.json", lt))
    got = {i.path: i.message for i in caught.value.issues}
    assert set(got) == {"execution_policy.web_search_enabled",
                        "timeouts.step_timeout_seconds"}, got
    assert "boolean" in got["execution_policy.web_search_enabled"]


def test_concurrency_over_the_limit_is_capped_with_a_note(layout: Layout,
                                                          tables: Path) -> None:
    res = submit(layout, write(tables / "lt.json", reference_table(tables, concurrency=10)))
    (note,) = res.notes
    assert note.path == "concurrency"
    for needle in ("10", "limits.global_concurrency = 8", "at most 8", "phh_config.json"):
        assert needle in note.message, needle
    meta = json.loads(meta_text(layout, res.batch_id))
    assert meta["effective_defaults"]["concurrency"] == 8
    # at the limit: nothing to say
    res = submit(layout, write(tables / "at.json",
                               reference_table(tables, batch_id="b8", concurrency=8)))
    assert res.notes == []


# ----------------------------------------------------------------------------- drop folder
def test_drop_folder_reads_the_dialect_and_acks_the_notes(layout: Layout, tables: Path) -> None:
    q = DropQueue(layout, load_config(layout))
    q.ensure_dirs()
    (q.incoming / "prompts").mkdir()
    (q.incoming / "prompts" / "followup.md").write_text("Follow up.", encoding="utf-8")
    good = with_reference_spellings(reference_table(tables))
    bad = reference_table(tables, batch_id="ref_conflict")
    bad["execution_policy"].update(web_search_enabled=True, web_search=False)
    for name, lt in (("good.json", good), ("bad.yaml", bad)):
        tmp = q.incoming / f".{name}.part"
        write(tmp.with_suffix(Path(name).suffix), lt).rename(q.incoming / name)
    out = {r.name: r for r in q.scan()}
    assert out["good.json"].status == "accepted", out["good.json"].errors
    ack = json.loads((q.accepted / "good.json.ack.json").read_text())
    assert sorted(note_paths(ack["notes"])) == sorted(REFERENCE_KEYS)
    assert ack["sha256"] == hashlib.sha256((q.accepted / "good.json").read_bytes()).hexdigest()
    text = meta_text(layout, ack["batch_id"])
    assert json.loads(text)["launch_table_sha256"] == ack["sha256"]
    for word in REFERENCE_WORDS:
        assert word not in text, word
    assert out["bad.yaml"].status == "rejected"
    err = json.loads((q.rejected / "bad.yaml.error.json").read_text())
    (e,) = err["errors"]
    assert e["path"] == "execution_policy.web_search_enabled"
    assert "execution_policy.web_search " in e["message"]
    assert not layout.batch_dir("ref_conflict").exists()

    # the same bytes again: a duplicate, acked with the same notes
    tmp = q.incoming / ".again.json.part"
    tmp.write_bytes((q.accepted / "good.json").read_bytes())
    tmp.rename(q.incoming / "again.json")
    (dup,) = q.scan()
    assert dup.duplicate and dup.batch_id == ack["batch_id"]
    again = json.loads((q.accepted / "again.json.ack.json").read_text())
    assert again["notes"] == ack["notes"]


# ----------------------------------------------------------------------------- API
def inline(lt: dict[str, Any]) -> dict[str, Any]:
    """`lt` with its prompt file inlined (an inline table has no directory of its own)."""
    lt["jobs"][0]["steps"][1] = {"step_id": "followup", "prompt": "Follow up.",
                                 "resume_from": {"step_id": "run", "selector": "latest"}}
    return lt


def test_api_reads_the_dialect_and_answers_notes(layout: Layout, tables: Path) -> None:
    table = inline(with_reference_spellings(reference_table(tables)))
    conflict = inline(reference_table(tables, batch_id="ref_conflict"))
    conflict["timeouts"] = {"step_timeout_seconds": 600, "step_seconds": 60}
    by_ref = write(tables / "by_ref.json",
                   with_reference_spellings(reference_table(tables, batch_id="ref_by_ref"),
                                            "workspace_policy", "concurrency"))
    with serving(layout) as c:
        r = c.post("/v1/batches", json={"launch_table": table})
        assert r.status_code == 201, r.text
        body = r.json()
        assert sorted(note_paths(body["notes"])) == sorted(REFERENCE_KEYS)
        meta = c.get(f"/v1/batches/{body['batch_id']}/meta").json()
        assert meta["effective_defaults"]["timeouts"]["step_seconds"] == 600
        assert meta["effective_defaults"]["concurrency"] == 8
        # an inline table is hashed as written (sorted compact JSON), as before
        assert meta["launch_table_sha256"] == hashlib.sha256(canonical_bytes(table)).hexdigest()

        r = c.post("/v1/batches", json={"launch_table": conflict})
        assert r.status_code == 422, r.text
        (e,) = r.json()["errors"]
        assert e["path"] == "timeouts.step_timeout_seconds"
        assert "timeouts.step_seconds = 60" in e["message"]
        assert not layout.batch_dir("ref_conflict").exists()

        r = c.post("/v1/batches", json={"launch_table_ref": str(by_ref)})
        assert r.status_code == 201, r.text
        assert note_paths(r.json()["notes"]) == ["concurrency", "workspace_policy"]
        schema = c.get("/openapi.json").json()["components"]["schemas"]
        assert "notes" in schema["SubmitResponse"]["properties"]


# ----------------------------------------------------------------------------- --check
def test_check_a_directory_with_one_bad_table(layout: Layout, tables: Path,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    write(tables / "a_reference.json", with_reference_spellings(reference_table(tables)))
    write(tables / "b_native.yaml", reference_table(tables, batch_id="native_1"))
    bad = reference_table(tables, batch_id="bad_1", batch_goal_summary="fourteen words " * 7)
    bad["execution_policy"].update(capture_events_jsonl=True, capture_events=False)
    write(tables / "c_bad.json", bad)
    (tables / "notes.md").write_text("not a table")  # other files in the folder are skipped
    (tables / ".hidden.json").write_text("{")
    before_root, before_tables = tree(layout.root), tree(tables)

    capsys.readouterr()
    assert main(["--root", str(layout.root), "submit", "--check", str(tables), "--json"]) == 2
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] is False and (out["passed"], out["failed"]) == (2, 1)
    files = {Path(f["file"]).name: f for f in out["files"]}
    assert list(files) == ["a_reference.json", "b_native.yaml", "c_bad.json"]
    assert files["a_reference.json"]["verdict"] == "ok"
    assert files["a_reference.json"]["batch_id"] == "ref_batch_1"
    assert sorted(note_paths(files["a_reference.json"]["notes"])) == sorted(REFERENCE_KEYS)
    assert files["b_native.yaml"] == {
        "file": str(tables / "b_native.yaml"), "verdict": "ok", "batch_id": "native_1",
        "job_ids": ["agent_01_audit"], "errors": [], "notes": []}
    assert files["c_bad.json"]["verdict"] == "rejected"
    assert {e["path"] for e in files["c_bad.json"]["errors"]} == {
        "batch_goal_summary", "execution_policy.capture_events_jsonl"}
    assert tree(layout.root) == before_root and tree(tables) == before_tables

    # the human form: a verdict line per file, its errors and notes, a summary
    assert main(["--root", str(layout.root), "submit", "--check", str(tables)]) == 2
    text = capsys.readouterr().out
    assert f"rejected  {tables / 'c_bad.json'}: 2 error(s)" in text
    assert "  error: execution_policy.capture_events_jsonl: " in text
    assert "  note: timeouts.step_timeout_seconds: read as timeouts.step_seconds" in text
    assert text.rstrip().endswith("2 of 3 Launch Table(s) pass; nothing was written")

    # only the good ones: exit 0; nothing written even to a root never initialised
    fresh = layout.root.parent / "never_initialised"
    good = [str(tables / "a_reference.json"), str(tables / "b_native.yaml")]
    assert main(["--root", str(fresh), "submit", "--check", *good]) == 0
    assert not fresh.exists()
    assert tree(tables) == before_tables


def test_check_reports_what_submit_would_refuse(layout: Layout, tables: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    submit(layout, write(tables / "first.json", reference_table(tables, batch_id="taken")))
    write(tables / "again.json", reference_table(tables, batch_id="taken"))
    write(tables / "twin_a.json", reference_table(tables, batch_id="twin"))
    write(tables / "twin_b.json", reference_table(tables, batch_id="twin"))
    capsys.readouterr()
    code = main(["--root", str(layout.root), "submit", "--check", str(tables / "again.json"),
                 str(tables / "twin_a.json"), str(tables / "twin_b.json"),
                 str(tables / "missing.json"), "--json"])
    assert code == 2
    files = {Path(f["file"]).name: f for f in json.loads(capsys.readouterr().out)["files"]}
    assert "already exists" in files["again.json"]["errors"][0]["message"]
    assert files["twin_a.json"]["verdict"] == "ok"
    assert "twin_a.json" in files["twin_b.json"]["errors"][0]["message"]
    assert "no such file" in files["missing.json"]["errors"][0]["message"]
    assert main(["--root", str(layout.root), "submit", "a.json", "b.json"]) == 2


# ----------------------------------------------------------------------------- it runs
@pytest.mark.codex
def test_a_reference_table_runs_unchanged(harness: Harness) -> None:
    """Submitted as written for the reference harness, it runs: resume included."""
    lt = with_reference_spellings(harness.table([{
        "job_id": "agent_01", "working_directory": ".",
        "steps": [step("run", final("first")),
                  step("followup", {"echo_thread": True}, timeout_seconds=120,
                       append_prompt="Keep it short.",
                       resume_from={"step_id": "run", "selector": "latest_successful"})],
    }], spec_version="1.0.0", batch_id="ref_run"))
    lt["workspace_policy"] = {"mode": "shared"}
    path = write(harness.root / "lt_ref.json", lt)
    res = submit(harness.layout, path)
    assert "workspace_policy" in [n.path for n in res.notes]
    harness.run()
    for sid in ("run", "followup"):
        (attempt,) = harness.attempts("ref_run", "agent_01", sid)
        assert harness.state(attempt)["status"] == "succeeded", sid
    policies = [harness.meta(harness.attempts("ref_run", "agent_01", sid)[0])["policy_snapshot"]
                for sid in ("run", "followup")]
    assert [p["execution_policy"]["web_search"] for p in policies] == [True, True]
    assert [p["timeout_seconds"] for p in policies] == [600, 120]
