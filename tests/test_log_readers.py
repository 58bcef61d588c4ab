"""Issue 11 D: readers never get stuck on big or compressed attempt logs.

One 6 MB event line (a real agent message through the real Codex) used to stop `phh tail`,
`--json`, the API's offset paging, SSE and the dashboard at the line before it; a log GC
compressed was unreadable in the dashboard and `phh tail`. Every face reads through
phh_engine.store.logs now; each is checked here on the plain and on the compressed log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import Harness, step
from test_api import serving

from phh_engine.store import logs
from phh_engine.store.paths import EVENTS, STDERR
from phh_tui.cli import main
from phh_tui.eventlines import EventLog

pytestmark = pytest.mark.codex
BIG = 6_000_000


def on_disk_events(att: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in logs.read_log_bytes(att, EVENTS).splitlines() if x.strip()]


def page_all(c: httpx.Client, url: str) -> list[dict[str, Any]]:
    """Offset paging to the end: every page moves on, the last one says terminal."""
    got: list[dict[str, Any]] = []
    offset = 0
    while True:
        page = c.get(url, params={"offset": offset}).json()
        got += page["events"]
        if not page["events"]:
            assert page["terminal"] is True
            return got
        assert page["next_offset"] > offset, page["next_offset"]
        offset = page["next_offset"]


def sse_events(c: httpx.Client, url: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    events: list[dict[str, Any]] = []
    end: dict[str, Any] = {}
    with c.stream("GET", url, params={"follow": "true"}, timeout=120) as s:
        kind = ""
        for line in s.iter_lines():
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                if kind == "raw":
                    events.append({"raw": line[6:]})
                    continue
                data = json.loads(line[6:])
                if kind == "end":
                    end = data
                    break
                events.append(data)
    return events, end


def check_every_face(h: Harness, bid: str, att: Path, capsys: pytest.CaptureFixture[str]
                     ) -> None:
    want = on_disk_events(att)
    assert any(len(json.dumps(e)) > BIG for e in want)
    assert want[-1]["type"] == "turn.completed"  # the events after the big line
    url = f"/v1/batches/{bid}/jobs/j1/steps/s1/events"
    with serving(h.layout, h.settings) as c:
        assert [e["event"] for e in page_all(c, url)] == want
        events, end = sse_events(c, url)
        assert events == want and end["status"] == "succeeded"
        tail = c.get(url, params={"tail": 1}).json()["events"]
        assert [e["event"] for e in tail] == want[-1:]
        body = c.get(f"/v1/batches/{bid}/jobs/j1/steps/s1/artifacts/{EVENTS}")
        assert body.status_code == 200 and body.content == logs.read_log_bytes(att, EVENTS)
    capsys.readouterr()
    assert main(["--root", str(h.root), "tail", bid, "j1", "s1", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["event"] for x in lines] == want
    assert main(["--root", str(h.root), "tail", bid, "j1", "s1", "-n", "1"]) == 0
    assert capsys.readouterr().out.startswith("turn completed")
    assert main(["--root", str(h.root), "tail", bid, "j1", "s1", "-f"]) == 0
    followed = capsys.readouterr().out
    assert "turn completed" in followed and "ended: succeeded" in followed
    shown = [ln.text for ln in EventLog(att / EVENTS).read_new(final=True)]
    assert any(t.startswith("turn completed") for t in shown), shown
    assert any(t.startswith("message: ") for t in shown)
    assert len(list(logs.iter_events(att))) == len(want)


def test_a_6mb_event_line_plain_then_compressed(harness: Harness,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    bid = harness.submit([{"job_id": "j1", "steps": [
        step("s1", {"final": {"summary": "big"}, "pad_summary": BIG})]}])
    harness.run(timeout=180)
    (att,) = harness.attempts(bid, "j1", "s1")
    assert harness.state(att)["status"] == "succeeded", harness.state(att)
    check_every_face(harness, bid, att, capsys)
    # what GC's retention does to an old attempt's raw logs
    for name in logs.RAW_LOGS:
        if (att / name).exists():
            logs.compress_log(att / name)
    assert logs.is_compressed(att, EVENTS) and not (att / EVENTS).exists()
    check_every_face(harness, bid, att, capsys)


def test_a_line_past_the_limit_is_cut_with_a_marker(tmp_path: Path) -> None:
    first = json.dumps({"type": "turn.started"}).encode()
    huge = json.dumps({"type": "item.completed", "item": {"type": "agent_message",
                                                         "text": "y" * 3_000_000}}).encode()
    last = json.dumps({"type": "turn.completed"}).encode()
    (tmp_path / EVENTS).write_bytes(b"\n".join([first, huge, last]) + b"\n")
    for _ in range(2):  # plain, then compressed
        lines = logs.read_lines(tmp_path, EVENTS, 0, max_line=1 << 20)
        assert [ln.size for ln in lines] == [len(first), len(huge), len(last)]
        assert [ln.truncated for ln in lines] == [False, True, False]
        assert len(lines[1].data) == logs.CUT_KEEP_BYTES
        # paging one line at a time still moves past the big one
        offset, seen = 0, 0
        while page := logs.read_lines(tmp_path, EVENTS, offset, max_bytes=1, max_line=1 << 20):
            assert len(page) == 1 and page[0].offset > offset
            offset, seen = page[0].offset, seen + 1
        assert seen == 3
        assert [ln.size for ln in logs.last_lines(tmp_path, EVENTS, 2)] == [len(huge), len(last)]
        logs.compress_log(tmp_path / EVENTS) if (tmp_path / EVENTS).exists() else None


def test_unterminated_last_line_and_stderr_tail_of_a_compressed_log(tmp_path: Path) -> None:
    (tmp_path / EVENTS).write_bytes(b'{"type":"turn.started"}\n{"type":"turn.completed"}')
    assert len(logs.read_lines(tmp_path, EVENTS)) == 1
    assert len(logs.read_lines(tmp_path, EVENTS, final=True)) == 2
    (tmp_path / STDERR).write_bytes(b"".join(b"line %d\n" % i for i in range(100000)))
    logs.compress_log(tmp_path / STDERR)
    assert logs.read_log_tail(tmp_path, STDERR, 20).endswith(b"line 99999\n")


def test_hostile_event_lines_never_make_a_reader_fail(harness: Harness,
                                                       capsys: pytest.CaptureFixture[str]
                                                       ) -> None:
    """NaN, 1e400, nesting 50000 deep, invalid UTF-8: shown as raw lines (never a 5xx, a
    traceback or invalid JSON), and the events after them still arrive."""
    from phh_engine.models import utcnow
    from phh_engine.store.files import atomic_write_json

    bid = harness.submit([{"job_id": "j1", "steps": [step("s1")]}])
    now = utcnow()
    att = harness.layout.attempts_dir(bid, "j1", "s1") / f"{now:%Y%m%dT%H%M%SZ}_r000000hostile"
    att.mkdir(parents=True)
    atomic_write_json(att / "state.json", {
        "batch_id": bid, "job_id": "j1", "step_id": "s1",
        "run_id": "r000000hostile", "runner_id": "local", "status": "failed",
        "updated_at": now.isoformat(), "ended_at": now.isoformat()})
    hostile = [b'{"type": "x", "v": NaN}', b'{"type": "x", "v": 1e400}',
               b"[" * 50000 + b"]" * 50000, b'{"type": "\xff\xfe"}']
    last = b'{"type": "turn.completed"}'
    (att / EVENTS).write_bytes(b"\n".join([*hostile, last]) + b"\n")
    url = f"/v1/batches/{bid}/jobs/j1/steps/s1/events"
    with serving(harness.layout, harness.settings) as c:
        page = c.get(url)
        assert page.status_code == 200, page.text
        items = page.json()["events"]
        assert [i["event"] for i in items] == [None] * 4 + [{"type": "turn.completed"}]
        assert items[3]["raw"] == '{"type": "\ufffd\ufffd"}'
        events, end = sse_events(c, url)
        assert events[-1] == {"type": "turn.completed"} and end["status"] == "failed"
    assert main(["--root", str(harness.root), "tail", bid, "j1", "s1", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert lines[-1]["event"] == {"type": "turn.completed"} and len(lines) == 5
    shown = [ln.text for ln in EventLog(att / EVENTS).read_new(final=True)]
    assert shown[-1].startswith("turn completed")


def test_a_cursor_past_any_file_is_a_4xx_or_an_empty_page(harness: Harness,
                                                         capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    """Offsets no file reaches (found by trying siblings of issue 11 D1): the API answered
    500 (`seek` on 10**26) and `phh tail -n 10**23` printed an OverflowError traceback."""
    from phh_engine.models import utcnow
    from phh_engine.store.files import atomic_write_json
    from phh_engine.store.logs import MAX_OFFSET, read_lines

    bid = harness.submit([{"job_id": "j1", "steps": [step("s1")]}])
    now = utcnow()
    att = harness.layout.attempts_dir(bid, "j1", "s1") / f"{now:%Y%m%dT%H%M%SZ}_r000000cursor"
    att.mkdir(parents=True)
    atomic_write_json(att / "state.json", {
        "batch_id": bid, "job_id": "j1", "step_id": "s1",
        "run_id": "r000000cursor", "runner_id": "local", "status": "failed",
        "updated_at": now.isoformat(), "ended_at": now.isoformat()})
    (att / EVENTS).write_bytes(b'{"type": "turn.completed"}\n')
    assert list(read_lines(att, EVENTS, MAX_OFFSET)) == []
    url = f"/v1/batches/{bid}/jobs/j1/steps/s1/events"
    with serving(harness.layout, harness.settings) as c:
        for offset in ("99999999999999999999999999", "9223372036854775808"):
            res = c.get(url, params={"offset": offset})
            assert res.status_code in (400, 422), res.text
        res = c.get(url, params={"follow": "true"},
                    headers={"Last-Event-ID": "99999999999999999999999"})
        assert res.status_code == 400, res.text
        page = c.get(url, params={"offset": str(MAX_OFFSET)})
        assert page.status_code == 200 and page.json()["events"] == [], page.text
    for args in (["-n", "99999999999999999999999"], ["--offset", "9223372036854775808"]):
        with pytest.raises(SystemExit) as exc:
            main(["--root", str(harness.root), "tail", bid, "j1", "s1", *args])
        assert exc.value.code == 2
        assert "outside" in capsys.readouterr().err
