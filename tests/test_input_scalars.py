"""Scalars and keys a parser accepts but phh cannot carry are refused with a JSON path at
every door (CLI submit and --check, API inline and launch_table_ref, the drop folder):
YAML integers past 1,000 digits in any notation (F4), YAML keys that are not strings (F5)
and strings holding a lone surrogate escape (F6). Nothing is written, nothing crashes."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import GOAL
from test_api import serving

from phh_engine.interfaces.queue import DropQueue
from phh_engine.interfaces.submit import SubmitError, load_launch_table, submit
from phh_engine.runners.credentials import read_auth
from phh_engine.store.documents import DocumentError, check_tree, loads_json, loads_yaml
from phh_engine.store.harness_config import load_config
from phh_engine.store.paths import Layout

PHH = str(Path(__file__).parents[1] / ".venv" / "bin" / "phh")


def phh(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PHH, "--root", str(root), *args], capture_output=True, text=True,
                          timeout=120)


def yaml_table(root: Path) -> str:
    return (f"batch_goal_summary: {GOAL}\nworking_root: {root}\njobs:\n- job_id: j1\n"
            "  steps:\n  - step_id: s1\n    prompt: hi\n")


def json_table(root: Path) -> dict[str, Any]:
    return {"batch_goal_summary": GOAL, "working_root": str(root),
            "jobs": [{"job_id": "j1", "steps": [{"step_id": "s1", "prompt": "hi"}]}]}


def batch_dirs(layout: Layout) -> list[str]:
    if not layout.runs.is_dir():
        return []
    return sorted(p.name for p in layout.runs.iterdir() if not p.name.startswith(("_", ".")))


def refused_everywhere(tmp_path: Path, docs: dict[str, str], paths: dict[str, str],
                       words: str) -> None:
    """Each named document (file name -> text) is refused with its expected path (file name
    -> JSON path) and `words` in the message by `phh submit`, `phh submit --check`, the API's
    launch_table_ref and the drop folder (`phh ingest`); nothing is written anywhere."""
    root = tmp_path / "root"
    assert phh(root, "init").returncode == 0
    layout = Layout(root)
    src = tmp_path / "src"
    src.mkdir()
    for name, text in docs.items():
        lt = src / name
        lt.write_text(text, encoding="utf-8")
        for args in (("submit", str(lt)), ("submit", "--check", str(lt))):
            res = phh(root, *args)
            assert res.returncode == 2, (name, args, res)
            assert f"{paths[name]}: " in res.stderr + res.stdout, (name, args, res)
            assert words in res.stderr + res.stdout, (name, args, res)
            assert "Traceback" not in res.stderr, (name, args, res.stderr[-2000:])
    with serving(layout) as client:
        for name in docs:
            r = client.post("/v1/batches", json={"launch_table_ref": str(src / name)})
            assert r.status_code == 422, (name, r.text)
            assert r.json()["errors"][0]["path"] == paths[name], (name, r.text)
            assert words in r.json()["errors"][0]["message"], (name, r.text)
        assert client.get("/v1/health").status_code == 200
    queue = DropQueue(layout, load_config(layout))
    queue.ensure_dirs()
    for name, text in docs.items():
        (queue.incoming / name).write_text(text, encoding="utf-8")
    res = phh(root, "ingest", "--json")
    assert res.returncode == 1, res  # rejected drops: exit 1, like any rejected ingest
    assert "Traceback" not in res.stderr, res.stderr[-2000:]
    outcomes = {o["name"]: o for o in json.loads(res.stdout)["outcomes"]}
    assert set(outcomes) == set(docs)
    for name, o in outcomes.items():
        assert o["status"] == "rejected", o
        assert o["errors"][0]["path"] == paths[name], o
        assert words in o["errors"][0]["message"], o
    assert batch_dirs(layout) == []


# ------------------------------------------------------------------ F4: huge YAML integers
HUGE = {
    "decimal.yaml": "9" * 5000,
    "hex.yaml": "0x" + "f" * 5000,
    "sexagesimal.yaml": "1" + ":59" * 3000,
}


def test_f4_yaml_integers_past_1000_digits_are_refused_at_every_door(tmp_path: Path) -> None:
    docs = {name: yaml_table(tmp_path) + f"concurrency: {value}\n"
            for name, value in HUGE.items()}
    refused_everywhere(tmp_path, docs, dict.fromkeys(docs, "concurrency"), "1000 digits")


@pytest.mark.parametrize(("value", "ok"), [
    ("9" * 1000, True), ("9" * 1001, False), ("-" + "9" * 1001, False), ("1_000", True),
    ("0x" + "f" * 830, True), ("0x" + "f" * 831, False), ("0b" + "1" * 3321, True),
    ("0b" + "1" * 3322, False), ("1" + ":59" * 600, False), ("1:59:59", True),
], ids=lambda v: v[:12] + f"..{len(v)}" if isinstance(v, str) else str(v))
def test_f4_the_yaml_integer_limit_is_on_the_value_in_every_notation(value: str,
                                                                     ok: bool) -> None:
    if ok:
        assert isinstance(loads_yaml(f"a:\n- {value}\n")["a"][0], int)
    else:
        with pytest.raises(DocumentError) as err:
            loads_yaml(f"a:\n- {value}\n")
        assert err.value.path == "a[0]" and "1000 digits" in err.value.message


@pytest.mark.parametrize("text", ["a: !!int abc", "a: !!float abc", "a: !!bool maybe",
                                  "a: !!int 0x1g", 'a: !!int ""', 'a: !!float ""',
                                  'a: !!int "-"'])
def test_a_tagged_yaml_scalar_its_constructor_cannot_read_is_refused(text: str) -> None:
    with pytest.raises(DocumentError) as err:
        loads_yaml(text)
    assert err.value.path == "a" and "not a" in err.value.message


def test_f4_huge_integers_in_api_bodies_and_dicts_are_refused(tmp_path: Path) -> None:
    with pytest.raises(DocumentError) as err:
        check_tree({"a": [1, int("f" * 1000, 16)]})
    assert err.value.path == "a[1]"
    check_tree({"a": [10 ** 999, -(10 ** 999)]})
    layout = Layout(tmp_path)
    with pytest.raises(SubmitError) as serr:
        submit(layout, {**json_table(tmp_path), "concurrency": int("f" * 5000, 16)})
    assert serr.value.issues[0].path == "concurrency"
    with serving(layout) as client:
        body = json.dumps({"launch_table": {**json_table(tmp_path), "concurrency": "X"}})
        r = client.post("/v1/batches", content=body.replace('"X"', "9" * 5000),
                        headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text
        assert r.json()["errors"][0]["path"] == "launch_table.concurrency"
    assert batch_dirs(layout) == []


@pytest.mark.parametrize(("text", "tag"), [
    ("a: !!timestamp abc", "!!timestamp"), ("a: 2020-01-01", "!!timestamp"),
    ("a: !!binary aGk=", "!!binary"), ("a: !!set {b, c}", "!!set"),
    ("a: !!omap [{b: 1}]", "!!omap"), ("a: !foo x", "!foo"),
])
def test_yaml_values_that_are_not_json_data_are_refused(text: str, tag: str) -> None:
    with pytest.raises(DocumentError) as err:
        loads_yaml(text)
    assert err.value.path == "a" and f"a YAML {tag} value" in err.value.message
    assert loads_yaml('a: !!str 2020-01-01\nb: "aGk="\n') == {"a": "2020-01-01", "b": "aGk="}


def test_a_yaml_binary_prompt_is_refused_at_every_door(tmp_path: Path) -> None:
    """`prompt: !!binary aGk=` (bytes b"hi") passed pydantic and crashed --check and submit
    with a KeyError; a date passed as far as pydantic's "not a string"."""
    docs = {"binary.yaml": yaml_table(tmp_path).replace("prompt: hi", "prompt: !!binary aGk="),
            "date.yaml": yaml_table(tmp_path).replace("prompt: hi", "prompt: 2020-01-01")}
    refused_everywhere(tmp_path, docs, dict.fromkeys(docs, "jobs[0].steps[0].prompt"),
                       "is not JSON data")


# ------------------------------------------------------------------ F5: keys that are not strings
def test_f5_a_complex_yaml_key_is_refused_at_every_door(tmp_path: Path) -> None:
    docs = {"complex.yaml": yaml_table(tmp_path) + "? [a, b]\n: 3\n",
            "nested.yaml": yaml_table(tmp_path) + "    ? {a: 1}\n    : 3\n"}
    paths = {"complex.yaml": "$", "nested.yaml": "jobs[0].steps[0]"}
    refused_everywhere(tmp_path, docs, paths, "a mapping key must be a string")


@pytest.mark.parametrize(("text", "shape"), [
    ("a:\n  1: x\n", "(read as int)"), ("a:\n  yes: x\n", "(read as bool)"),
    ("a:\n  ~: x\n", "(read as null)"), ("a:\n  ? [1]\n  : x\n", "a sequence"),
    ("a:\n  ? {b: 1}\n  : x\n", "a mapping"), ("a:\n  ? !!binary aGk=\n  : x\n", "binary"),
])
def test_f5_every_yaml_key_that_is_not_a_string_is_refused(text: str, shape: str) -> None:
    with pytest.raises(DocumentError) as err:
        loads_yaml(text)
    assert err.value.path == "a" and shape in err.value.message, err.value


def test_f5_string_keys_and_merge_keys_still_load(tmp_path: Path) -> None:
    assert loads_yaml('base: &b {x: 1}\nc:\n  <<: *b\n  "1": y\n  !!str 2: z\n') == {
        "base": {"x": 1}, "c": {"x": 1, "1": "y", "2": "z"}}
    lt = tmp_path / "merge.yaml"
    lt.write_text(f"defaults: &d\n  prompt: hi\nbatch_goal_summary: {GOAL}\n"
                  f"working_root: {tmp_path}\njobs:\n- job_id: j1\n  steps:\n"
                  "  - step_id: s1\n    <<: *d\n")
    raw, _ = load_launch_table(lt)
    assert raw["jobs"][0]["steps"][0] == {"step_id": "s1", "prompt": "hi"}


# ------------------------------------------------------------------ F6: lone surrogates
SURROGATES = ["\\ud800", "\\udc80"]
SURROGATE_PATHS = {"prompt": "jobs[0].steps[0].prompt", "goal": "batch_goal_summary",
                   "job_id": "jobs[0].job_id", "step_id": "jobs[0].steps[0].step_id"}


def with_surrogate(root: Path, where: str, escape: str) -> str:
    """JSON text of a valid table with `escape` (JSON escape text) inside one string."""
    doc = json_table(root)
    marker = "MARK"
    if where == "prompt":
        doc["jobs"][0]["steps"][0]["prompt"] = f"a{marker}b"
    elif where == "goal":
        doc["batch_goal_summary"] = f"{GOAL} {marker}"
    elif where == "job_id":
        doc["jobs"][0]["job_id"] = f"j{marker}"
    else:
        doc["jobs"][0]["steps"][0]["step_id"] = f"s{marker}"
    return json.dumps(doc).replace(marker, escape)


def test_f6_lone_surrogates_are_refused_at_every_door(tmp_path: Path) -> None:
    docs: dict[str, str] = {}
    paths: dict[str, str] = {}
    for where, path in SURROGATE_PATHS.items():
        for n, escape in enumerate(SURROGATES):
            docs[f"{where}{n}.json"] = with_surrogate(tmp_path, where, escape)
            paths[f"{where}{n}.json"] = path
    # YAML's double-quoted "\ud800" is the same lone surrogate
    docs["yaml0.yaml"] = yaml_table(tmp_path).replace("prompt: hi", 'prompt: "a\\ud800b"')
    docs["yaml1.yaml"] = yaml_table(tmp_path) + '"k\\udc80": 1\n'
    paths["yaml0.yaml"] = "jobs[0].steps[0].prompt"
    paths["yaml1.yaml"] = '["k\\udc80"]'
    refused_everywhere(tmp_path, docs, paths, "lone surrogate")


def test_f6_inline_api_bodies_with_lone_surrogates_are_refused(tmp_path: Path) -> None:
    layout = Layout(tmp_path)
    with serving(layout) as client:
        for where, path in SURROGATE_PATHS.items():
            for escape in SURROGATES:
                body = '{"launch_table": ' + with_surrogate(tmp_path, where, escape) + "}"
                r = client.post("/v1/batches", content=body,
                                headers={"content-type": "application/json"})
                assert r.status_code == 400, r.text
                assert r.json()["errors"][0]["path"] == f"launch_table.{path}", r.text
                assert "lone surrogate" in r.json()["errors"][0]["message"]
        assert client.get("/v1/health").status_code == 200
    # a dict handed to submit() directly never went through the parser: the same rule
    doc = json_table(tmp_path)
    doc["jobs"][0]["steps"][0]["prompt"] = "a\ud800b"
    with pytest.raises(SubmitError) as err:
        submit(layout, doc)
    assert err.value.issues[0].path == "jobs[0].steps[0].prompt"
    assert batch_dirs(layout) == []


def test_f6_paired_surrogates_are_text_and_codex_files_stay_lenient(tmp_path: Path) -> None:
    assert loads_json('{"a": "\\ud83d\\ude00"}') == {"a": "\U0001F600"}
    with pytest.raises(DocumentError) as err:
        loads_json('{"a": {"\\ud800": 1}}')
    assert err.value.path == 'a["\\ud800"]'
    assert loads_json('{"a": "\\ud800"}', allow_surrogates=True) == {"a": "\ud800"}
    auth = tmp_path / "auth.json"
    auth.write_text('{"OPENAI_API_KEY": "sk-x", "note": "\\ud800"}')
    assert read_auth(auth) == {"OPENAI_API_KEY": "sk-x", "note": "\ud800"}


def test_f6_command_line_text_that_is_not_utf8_is_refused(tmp_path: Path) -> None:
    """argv bytes that are not UTF-8 arrive as lone surrogates (surrogateescape): a reason or
    prompt holding one is refused (exit 2) instead of crashing when the request is written."""
    root = tmp_path / "root"
    assert phh(root, "init").returncode == 0
    lt = tmp_path / "lt.json"
    lt.write_text(json.dumps(json_table(tmp_path)))
    res = phh(root, "submit", "--json", str(lt))
    assert res.returncode == 0, res
    bid = json.loads(res.stdout)["batch_id"]
    layout = Layout(root)
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    for args in (("mark-failed", bid, "j1", "s1", "--reason", "bad\udc80"),
                 ("retry", bid, "j1", "s1", "--prompt", "bad\udc80"),
                 ("close", bid, "--reason", "bad\udc80"),
                 ("runner", "drain", "local", "--reason", "bad\udc80")):
        res = phh(root, *args, "--wait", "0") if args[0] != "runner" else phh(root, *args)
        assert res.returncode == 2, (args, res)
        assert "lone surrogate U+DC80" in res.stderr and "Traceback" not in res.stderr, res
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before
    assert batch_dirs(layout) == [bid]
