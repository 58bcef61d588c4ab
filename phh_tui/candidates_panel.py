"""The step screen's candidate panel (docs/verification.md#candidates-best-of-n): a best-of-N
step's candidates side by side, best first, the promoted one starred; below them the verifier
log of the candidate under the cursor, or the diff of two marked candidates (`space` marks,
`d` diffs). Files and git are read off the UI thread (phh_tui/attempt_files.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import NamedTuple

from rich.console import Group, RenderableType
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical, VerticalScroll
from textual.css.query import NoMatches
from textual.widgets import DataTable, Static

from phh_engine.models.scoreboard import CandidateRow
from phh_tui.attempt_files import read_candidates_diff, read_verify_log
from phh_tui.render import duration, verify_text
from phh_tui.widgets import Cell, Column, KeyedTable, Row

CANDIDATE_COLUMNS = (
    Column("#", "#"), Column("rank", "rank"), Column("run", "run"), Column("verify", "verify"),
    Column("score", "score"), Column("tokens", "tokens"), Column("time", "time"),
    Column("promoted", "promoted"),
)


NO_VERIFY_LOG = "no verifier ran for this candidate"


class CandidateTabRow(NamedTuple):
    n: int
    rank: int
    run: str
    status: str
    passed: bool
    exit_code: int | None
    score: float | None
    tokens: int
    took: float | None
    promoted: bool

    def cells(self) -> Sequence[Cell]:
        return (str(self.n), str(self.rank), self.run,
                verify_text(self.passed, self.exit_code, self.status),
                "-" if self.score is None else f"{self.score:g}", f"{self.tokens:,}",
                duration(self.took),
                Text("★ promoted", style="bold green") if self.promoted else "")


def _render(key: str, sig: Hashable) -> Sequence[Cell]:
    assert isinstance(sig, CandidateTabRow), sig
    return sig.cells()


class CandidatesPanel(Vertical):
    """Hidden for a plain step. `rows` come from the step's scoreboard row."""

    DEFAULT_CSS = """
    CandidatesPanel { height: auto; max-height: 16; display: none; }
    CandidatesPanel.best-of-n { display: block; }
    CandidatesPanel #cand-table { height: auto; max-height: 8; }
    CandidatesPanel #cand-info-scroll { height: auto; max-height: 8; }
    """

    def __init__(self, root: Path, batch_id: str, job_id: str, step_id: str,
                 *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.root = root
        self.batch_id = batch_id
        self.job_id = job_id
        self.step_id = step_id
        self.rows: dict[str, CandidateRow] = {}
        self._info_for: str | None = None
        self._last: list[CandidateRow] | None = None
        #: what the info pane shows now: "log:<run>" or "diff:<a>:<b>" (tests read it)
        self.info_text = ""

    def compose(self) -> ComposeResult:
        yield KeyedTable(CANDIDATE_COLUMNS, _render, markable=True, id="cand-table")
        with VerticalScroll(id="cand-info-scroll"):
            yield Static(id="cand-info")

    @property
    def table(self) -> KeyedTable:
        return self.query_one("#cand-table", KeyedTable)

    def show_rows(self, rows: list[CandidateRow] | None) -> None:
        """Draw the candidates (None: a plain step, the panel hides)."""
        self.set_class(rows is not None, "best-of-n")
        self._last = rows
        if rows is None:
            return
        self.rows = {r.run_id: r for r in rows}
        try:
            table = self.table
        except NoMatches:  # drawn before the panel composed: on_mount draws them
            return
        table.sync([
            Row(r.run_id, CandidateTabRow(r.candidate, r.rank, r.run_id, r.status, r.passed,
                                          r.verify_exit_code, r.score, r.tokens,
                                          r.duration_seconds, r.promoted),
                f"{r.candidate} {r.run_id} {r.status}")
            for r in rows])
        if self._info_for is None and rows:
            self.show_log(table.current_key or rows[0].run_id)

    def on_mount(self) -> None:
        if self._last is not None:
            self.show_rows(self._last)

    def current_run(self) -> str | None:
        return self.table.current_key

    def marked_runs(self) -> list[str]:
        return [k for k in self.table.keys if k in self.table.marked]

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "cand-table" and event.row_key.value is not None:
            event.stop()  # the step screen's attempt table must not follow it
            if len(self.marked_runs()) != 2:  # two marked: their diff stays shown
                self.show_log(event.row_key.value)

    # ------------------------------------------------------------ info pane
    def show_log(self, run_id: str) -> None:
        row = self.rows.get(run_id)
        if row is None:
            return
        self._info_for = f"log:{run_id}"
        self.run_worker(self._read_log(Path(row.attempt_dir), row, self._info_for),
                        group="candidate-files", exit_on_error=False)

    async def _read_log(self, path: Path, row: CandidateRow, wanted: str) -> None:
        text = await asyncio.to_thread(read_verify_log, path)
        if self._info_for != wanted:
            return
        head = Text(f"verify.log of candidate {row.candidate} ({row.run_id})",
                    style="bold underline")
        text = text or NO_VERIFY_LOG
        self._draw(Group(head, Text(text, style="" if text != NO_VERIFY_LOG else "dim")), text)

    def diff_marked(self) -> bool:
        """`d`: the diff of the two marked candidates' work; False when not exactly two are
        marked (the step screen then shows its own diff tab)."""
        marked = self.marked_runs()
        if len(marked) != 2 or not all(m in self.rows for m in marked):
            return False
        a, b = (self.rows[m].candidate for m in marked)
        a, b = min(a, b), max(a, b)
        self._info_for = f"diff:{a}:{b}"
        self.run_worker(self._read_diff(a, b, self._info_for), group="candidate-files",
                        exit_on_error=False)
        return True

    async def _read_diff(self, a: int, b: int, wanted: str) -> None:
        text = await asyncio.to_thread(read_candidates_diff, self.root, self.batch_id,
                                       self.job_id, self.step_id, a, b)
        if self._info_for != wanted:
            return
        head = Text(f"candidate {a} → candidate {b}  (unmark one with space to see verify "
                    "logs again)", style="bold underline")
        self._draw(Group(head, Syntax(text, "diff", theme="ansi_dark", word_wrap=False,
                                      background_color="default")), text)

    def _draw(self, renderable: RenderableType, text: str) -> None:
        self.info_text = text
        with contextlib.suppress(NoMatches):
            self.query_one("#cand-info", Static).update(renderable)
