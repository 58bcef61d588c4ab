"""The three screens (system → batch → step) and what they share: crumbs, the filter bar,
j/k/g/G on the main table, and the operator actions (c r R m space l d s).

Screens draw data they are given (the app's `Board`, a step's view from `Backend.step`) and
post intents (`phh_tui.messages`: RunAction, OpenBatch, OpenStep) that the app handles; they
read attempt files only through `attempt_files`, on worker threads. Table rows are typed
NamedTuples that render their own cells."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Hashable, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar, cast

from rich.console import Group, RenderableType
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, RichLog, Static, TabbedContent, TabPane

from phh_engine.derive.scoreboards import goal_preview
from phh_engine.models import BatchScoreboard, StatusCounts
from phh_engine.models.scoreboard import ResumeView, StepRow, SystemRow
from phh_engine.store.paths import GIT_DIFF
from phh_engine.store.views import AttemptView, StepView
from phh_tui.attempt_files import AttemptTail, DiffText, read_diff, read_final_text, stderr_tail
from phh_tui.board import Board, Progress, live_runners
from phh_tui.candidates_panel import CandidatesPanel
from phh_tui.dialogs import ConfirmScreen, PromptScreen
from phh_tui.eventlines import Line, shell_command
from phh_tui.messages import ActionName, OpenBatch, OpenStep, RunAction, StepRef, StepTab
from phh_tui.nodes_view import NodeTable
from phh_tui.paging import MARGIN, TAB_STATUSES, ListPager, Pager, Window
from phh_tui.render import STATUS_STYLES, counts_text, duration, timestamp
from phh_tui.widgets import Cell, Column, Crumbs, KeyedTable, Row, Tabs

if TYPE_CHECKING:
    from phh_tui.app import PhhApp

MAX_CELL = 120
TAIL_POLL_SECONDS = 0.25
MAX_LOG_LINES = 20000


def clip(text: str | None, limit: int = MAX_CELL) -> str:
    if not text:
        return ""
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def styled(text: str, status: str) -> Text:
    return Text(text, style=STATUS_STYLES.get(status, ""))


RowT = TypeVar("RowT", bound=tuple[Any, ...])


def typed(cls: type[RowT], cells: Callable[[RowT], Sequence[Cell]]
          ) -> Callable[[str, Hashable], Sequence[Cell]]:
    """A KeyedTable renderer for rows whose `sig` is the NamedTuple `cls`."""
    def render(key: str, sig: Hashable) -> Sequence[Cell]:
        assert isinstance(sig, cls), sig
        return cells(sig)
    return render


def resume_label(view: ResumeView | None) -> str:
    if view is None:
        return ""
    return f"⟲ {view.step_id}:{view.selected_run_id or '(' + view.selector + ')'}"


def doing(item: str | None, limit: int = 60) -> str:
    """The current item, without the shell wrapper Codex puts around commands."""
    if item and item.startswith("$ "):
        item = "$ " + shell_command(item[2:])
    return clip(item, limit)


def step_key(job_id: str, step_id: str) -> str:
    return f"{job_id}/{step_id}"


def split_key(key: str) -> StepRef:
    job, _, step = key.partition("/")
    return StepRef(job, step)


def tokens(inp: int, cached: int, out: int) -> str:
    if not (inp or out):
        return "-"
    return f"{inp:,} in ({cached:,} cached) · {out:,} out"


def _since(seconds: float | None, sb: BatchScoreboard, now: datetime | None) -> float | None:
    """An age computed at `sb.computed_at`, carried forward to `now`."""
    if seconds is None or now is None:
        return seconds
    return seconds + (now - sb.computed_at).total_seconds()


def progress_text(p: Progress, width: int = 30, later: float = 0.0) -> Text:
    frac = p.done / p.total if p.total else 0.0
    full = int(frac * width)
    bar = Text()
    bar.append("█" * full, style="green")
    bar.append("░" * (width - full), style="dim")
    out = Text()
    out.append(f"{p.done}/{p.total} done ", style="bold")
    out.append_text(bar)
    out.append(f" {frac:4.0%}")
    if p.finished:
        out.append(" · finished", style="bold green")
    elif p.eta_seconds is not None:
        out.append(f" · ETA {duration(max(p.eta_seconds - later, 0))}")
    else:
        out.append(" · ETA -", style="dim")
    if p.elapsed_seconds is not None:
        out.append(f" · took {duration(p.elapsed_seconds)}" if p.finished else
                   f" · running for {duration(p.elapsed_seconds + later)}", style="dim")
    return out


class PhhScreen(Screen[None]):
    """Crumbs on top, the screen's body, a filter bar (hidden), the footer."""

    BINDINGS = [
        Binding("j", "cursor_down", "Down", show=False),
        Binding("k", "cursor_up", "Up", show=False),
        Binding("g", "top", "Top", show=False),
        Binding("G", "bottom", "Bottom", show=False),
        Binding("enter", "open", "Open"),
        Binding("escape", "back", "Back"),
        Binding("slash", "filter", "Filter"),
    ]
    batch_id: str | None = None

    @property
    def phh(self) -> PhhApp:
        return cast("PhhApp", self.app)

    def compose(self) -> ComposeResult:
        yield Crumbs(id="crumbs")
        yield from self.body()
        yield Input(placeholder="filter: type to narrow the rows · enter keeps · esc clears",
                    id="filter")
        yield Footer()

    def body(self) -> ComposeResult:
        yield from ()

    def crumbs(self) -> list[str]:
        return []

    def on_mount(self) -> None:
        self.refresh_crumbs()
        if self.phh.board is not None:
            self.show(self.phh.board)

    def on_screen_resume(self) -> None:
        self.refresh_crumbs()
        if self.phh.board is not None:
            self.show(self.phh.board)

    def refresh_crumbs(self) -> None:
        self.query_one(Crumbs).show(self.crumbs(), self.phh.status_line())

    def show(self, board: Board) -> None:
        """Draw the newest board (called at most ~10 times a second)."""

    def tick(self, now: datetime) -> None:
        """Once a second: redraw what only time changes (ages, durations), from the rows
        already computed, without recomputing any scoreboard."""

    # ------------------------------------------------------------ tables & movement
    def table(self) -> KeyedTable | None:
        focused = self.focused
        if isinstance(focused, KeyedTable):
            return focused
        tables = [t for t in self.query(KeyedTable) if t.display and t.region.height]
        return tables[0] if tables else None

    def action_cursor_down(self) -> None:
        if t := self.table():
            t.action_cursor_down()

    def action_cursor_up(self) -> None:
        if t := self.table():
            t.action_cursor_up()

    def action_top(self) -> None:
        if t := self.table():
            t.action_scroll_top()

    def action_bottom(self) -> None:
        if t := self.table():
            t.action_scroll_bottom()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        """Drill down from the row under the cursor."""

    # ------------------------------------------------------------ filter
    @property
    def filter_input(self) -> Input:
        return self.query_one("#filter", Input)

    def action_filter(self) -> None:
        self.add_class("filtering")
        self.filter_input.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id != "filter":
            return
        for t in self.query(KeyedTable):
            t.set_filter(event.value)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id != "filter":
            return
        event.stop()
        if not event.value:
            self.remove_class("filtering")
        if t := self.table():
            t.focus()

    def action_back(self) -> None:
        if self.has_class("filtering"):
            self.filter_input.value = ""
            self.remove_class("filtering")
            if t := self.table():
                t.focus()
            return
        if len(self.app.screen_stack) > 1:
            self.app.pop_screen()

    # ------------------------------------------------------------ operator actions
    def action_targets(self) -> list[StepRef]:
        """The steps the next action applies to."""
        return []

    def request(self, action: ActionName, batch_id: str, targets: list[StepRef],
                **options: Any) -> None:
        """Ask the app to apply `action` (it reports the outcome); bulk marks clear."""
        self.post_message(RunAction(action, batch_id, targets, options))
        self.after_action()

    def _confirm_then(self, action: ActionName, title: str, detail: str, **kw: Any) -> None:
        targets = self.action_targets()
        if not targets or self.batch_id is None:
            self.notify("no step selected", severity="warning")
            return
        bid = self.batch_id

        def done(ok: bool | None) -> None:
            if ok:
                self.request(action, bid, targets, **kw)

        names = ", ".join(f"{j}.{s}" for j, s in targets[:5])
        more = f" and {len(targets) - 5} more" if len(targets) > 5 else ""
        self.app.push_screen(ConfirmScreen(title.format(n=len(targets), names=names + more),
                                           detail), done)

    def action_cancel_step(self) -> None:
        self._confirm_then(
            "cancel", "Cancel the running attempt of {names}?",
            "The Codex process group gets SIGTERM, then SIGKILL after the grace period; the "
            "attempt ends canceled and keeps its partial logs.", reason="canceled from the TUI")

    def action_mark_failed(self) -> None:
        self._confirm_then(
            "mark_failed", "Mark {names} failed for good?",
            "A running attempt is canceled; steps that depend on it stay blocked. `r` undoes "
            "it.", reason="marked failed from the TUI")

    def action_retry(self) -> None:
        targets = self.action_targets()
        if not targets or self.batch_id is None:
            self.notify("no step selected", severity="warning")
            return
        self.request("retry", self.batch_id, targets)

    def resume_run_id(self) -> str | None:
        return None

    def action_resume(self) -> None:
        targets = self.action_targets()
        if not targets or self.batch_id is None:
            self.notify("no step selected", severity="warning")
            return
        bid, run_id = self.batch_id, self.resume_run_id()
        names = ", ".join(f"{j}.{s}" for j, s in targets[:5])

        def done(prompt: str | None) -> None:
            if prompt:
                kw: dict[str, Any] = {"prompt": prompt}
                if run_id:
                    kw["run_id"] = run_id
                self.request("resume", bid, targets, **kw)

        self.app.push_screen(PromptScreen(
            f"Resume {names}" + (f" from {run_id}" if run_id else ""),
            "A new attempt continues the conversation (codex exec resume) with this prompt.",
            placeholder="e.g. the tests still fail on CI; fix that too"), done)

    def after_action(self) -> None:
        """Bulk actions clear the marks."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        # nothing to go back to on the first screen: hide `esc` from the footer
        return not (action == "back" and len(self.app.screen_stack) <= 1
                    and not self.has_class("filtering"))


# ====================================================================== system
SYSTEM_COLUMNS = (
    Column("batch", "batch"), Column("submitted", "submitted"), Column("state", "state"),
    Column("jobs", "jobs"), Column("steps", "steps"), Column("done", "done"),
    Column("running", "running"), Column("ready", "ready"), Column("blocked", "blocked"),
    Column("attention", "attention"), Column("goal", "goal", 90),
)


class BatchListRow(NamedTuple):
    """One batch on the system screen."""

    batch_id: str
    submitted: str
    state: str  # running | finished | closed | waiting
    jobs: int
    steps: int
    done: int
    running: int
    ready: int
    blocked: int
    attention: int
    goal: str

    def cells(self) -> Sequence[Cell]:
        state_style = {"running": STATUS_STYLES["running"], "finished": "green",
                       "closed": "dim", "waiting": "cyan"}[self.state]

        def num(n: int, status: str) -> Text:
            return Text(str(n), style=STATUS_STYLES[status] if n else "dim")

        return (
            Text(self.batch_id, style="bold"), self.submitted,
            Text(self.state, style=state_style), str(self.jobs), str(self.steps),
            Text(f"{self.done}/{self.steps}", style="green" if self.done == self.steps else ""),
            num(self.running, "running"), num(self.ready, "ready"),
            num(self.blocked, "blocked"),
            Text(str(self.attention), style="bold red" if self.attention else "dim"),
            clip(self.goal, 70),
        )


class SystemScreen(PhhScreen):
    """One row per batch (docs/statuses.md#step-statuses system view): attention first, then
    running, newest."""

    def body(self) -> ComposeResult:
        yield Static(id="totals")
        yield NodeTable(id="nodes")  # a cluster runner's nodes (nodes_view.py)
        yield KeyedTable(SYSTEM_COLUMNS, typed(BatchListRow, BatchListRow.cells), id="batches")

    def on_mount(self) -> None:  # (Textual also runs PhhScreen.on_mount, after this)
        self.query_one("#batches", KeyedTable).focus()

    def table(self) -> KeyedTable | None:
        return self.query_one("#batches", KeyedTable)  # never the nodes table

    def show(self, board: Board) -> None:
        sysb = board.system
        if sysb is None:
            return
        rows = []
        for r in sysb.batches:
            prog = board.progress.get(r.batch_id)
            c = r.counts
            done = prog.finished if prog else (  # settled (from the catalog): no progress
                r.steps_total > 0 and c.running == 0 and c.ready == 0)
            state = ("running" if r.running_steps else "finished" if done else
                     "closed" if r.closed else "waiting")
            sig = BatchListRow(r.batch_id, r.submitted_at.strftime("%m-%d %H:%M"), state,
                               r.jobs_total, r.steps_total, c.succeeded, c.running, c.ready,
                               c.blocked, r.attention_steps, r.batch_goal_summary_preview)
            rows.append(Row(r.batch_id, sig, f"{r.batch_id} {state} "
                                             f"{r.batch_goal_summary_preview}"))
        self.query_one("#batches", KeyedTable).sync(rows)
        self.query_one("#totals", Static).update(self._totals(board))
        self.query_one("#nodes", NodeTable).show_nodes(
            live_runners(board.runners, board.computed_at), board.computed_at)
        self.refresh_crumbs()

    def _totals(self, board: Board) -> Text:
        assert board.system is not None
        rows = board.system.batches
        steps = sum(r.steps_total for r in rows)
        out = Text()
        out.append(f"{len(rows)} batch{'es' if len(rows) != 1 else ''}", style="bold")
        out.append(f" · {steps:,} steps · ")
        agg: dict[str, int] = {}
        for r in rows:
            for k, v in r.counts.model_dump().items():
                agg[k] = agg.get(k, 0) + v
        out.append_text(counts_text(StatusCounts(**agg), steps) if rows else
                        Text("no batches yet: `phh submit FILE` adds one", style="yellow"))
        attention = sum(r.attention_steps for r in rows)
        out.append(" · ")
        out.append(f"{attention} attention", style="bold red" if attention else "dim")
        out.append(f" · {board.steps_per_minute:.1f} steps/min", style="dim")
        live = live_runners(board.runners, board.computed_at)
        out.append(" · runners: ", style="dim")
        if not live:
            out.append("none serving", style="yellow")
        for i, health in enumerate(live):
            out.append(", " if i else "", style="dim")
            out.append(f"{health.runner_id} {health.running}/{health.capacity}"
                       + (" draining" if health.draining else ""),
                       style="yellow" if health.draining else "")
            for j, n in enumerate(health.nodes):  # a cluster runner's nodes
                out.append(" [" if j == 0 else ", ", style="dim")
                out.append(f"{n.label} {n.slots_used}/{n.slots_total}"
                           + ("" if n.alive else " lost"),
                           style="" if n.alive else "bold red")
                if j == len(health.nodes) - 1:
                    out.append("]", style="dim")
        return out

    def action_open(self) -> None:
        key = self.query_one("#batches", KeyedTable).current_key
        if key:
            self.post_message(OpenBatch(key))


# ====================================================================== batch
TABS = ("attention", "running", "blocked", "failures", "steps")
TAB_TITLES = {"attention": "Attention", "running": "Running", "blocked": "Blocked",
              "failures": "Failures", "steps": "All steps"}
TAB_COLUMNS: dict[str, tuple[Column, ...]] = {
    "attention": (Column("step", "step"), Column("kind", "kind"), Column("run", "run"),
                  Column("silent", "silent"), Column("detail", "detail", 100)),
    "running": (Column("step", "step"), Column("status", "status"), Column("run", "run"),
                Column("runner", "runner"), Column("for", "for"),
                Column("heartbeat", "heartbeat"), Column("doing", "doing"),
                Column("resume", "resume from")),
    "blocked": (Column("step", "step"), Column("reasons", "reasons", 100),
                Column("resume", "resume from")),
    "failures": (Column("step", "step"), Column("run", "run"), Column("state", "state"),
                 Column("exit", "exit"), Column("why", "why"), Column("agent", "agent"),
                 Column("summary", "summary / errors", 100)),
    "steps": (Column("step", "step"), Column("status", "status"), Column("attempts", "#"),
              Column("run", "run"), Column("detail", "reasons / resume from", 100)),
}


class AttentionTabRow(NamedTuple):
    step: str
    kind: str
    run: str
    silent: str
    detail: str

    def cells(self) -> Sequence[Cell]:
        return (self.step, styled(self.kind, self.kind), self.run, self.silent, self.detail)


class RunningTabRow(NamedTuple):
    step: str
    status: str  # the state's status, or "stuck"
    run: str
    runner: str
    took: str
    heartbeat: str
    doing: str
    resume: str

    def cells(self) -> Sequence[Cell]:
        beat: Cell = (Text(self.heartbeat, style=STATUS_STYLES["stuck"])
                      if self.status == "stuck" else self.heartbeat)
        return (self.step, styled(self.status, self.status), self.run, self.runner, self.took,
                beat, self.doing, self.resume)


class BlockedTabRow(NamedTuple):
    step: str
    reasons: str
    resume: str

    def cells(self) -> Sequence[Cell]:
        return tuple(self)


class FailureTabRow(NamedTuple):
    step: str
    run: str
    state: str
    exit: str
    why: str
    agent: str
    summary: str

    def cells(self) -> Sequence[Cell]:
        return (self.step, self.run, styled(self.state, self.state), self.exit, self.why,
                self.agent, self.summary)


class StepTabRow(NamedTuple):
    step: str
    status: str  # the step's status, or "stuck"
    attempts: int
    run: str
    detail: str

    def cells(self) -> Sequence[Cell]:
        return (self.step, styled(self.status, self.status), str(self.attempts), self.run,
                self.detail)


def _rows_attention(sb: BatchScoreboard, now: datetime | None = None) -> list[Row]:
    out = []
    for a in sb.attention:
        silent = (duration(_since(a.seconds_since_last_heartbeat, sb, now))
                  if a.seconds_since_last_heartbeat is not None else "")
        sig = AttentionTabRow(f"{a.job_id}.{a.step_id}", a.kind, a.run_id or "-", silent,
                              clip(a.detail))
        out.append(Row(step_key(a.job_id, a.step_id), sig, " ".join(map(str, sig))))
    return out


def _rows_running(sb: BatchScoreboard, now: datetime | None = None) -> list[Row]:
    out = []
    for r in sb.running:
        status = "stuck" if r.stuck else r.state_status
        sig = RunningTabRow(f"{r.job_id}.{r.step_id}", status, r.run_id, r.runner_id or "-",
                            duration(_since(r.run_duration_seconds, sb, now)),
                            duration(_since(r.seconds_since_last_heartbeat, sb, now)),
                            doing(r.current_item), resume_label(r.resume_from))
        out.append(Row(step_key(r.job_id, r.step_id), sig, " ".join(map(str, sig))))
    return out


def _rows_blocked(sb: BatchScoreboard, now: datetime | None = None) -> list[Row]:
    out = []
    for b in sb.blocked:
        sig = BlockedTabRow(f"{b.job_id}.{b.step_id}", clip("; ".join(b.reasons), 160),
                            resume_label(b.resume_from))
        out.append(Row(step_key(b.job_id, b.step_id), sig, " ".join(sig)))
    return out


def _rows_failures(sb: BatchScoreboard, now: datetime | None = None) -> list[Row]:
    out = []
    for f in sb.failures:
        sig = FailureTabRow(f"{f.job_id}.{f.step_id}", f.run_id, f.state_status,
                            "-" if f.exit_code is None else str(f.exit_code),
                            f.failure_class or f.termination_reason or "",
                            f.final_status or "-", clip(f.final_summary or "; ".join(f.errors)))
        out.append(Row(step_key(f.job_id, f.step_id), sig, " ".join(sig)))
    return out


def _rows_steps(sb: BatchScoreboard, now: datetime | None = None) -> list[Row]:
    out = []
    for s in sb.steps:
        detail = "; ".join(s.reasons)
        if s.resume_from is not None:
            detail = (detail + "  " if detail else "") + resume_label(s.resume_from)
        sig = StepTabRow(f"{s.job_id}.{s.step_id}", "stuck" if s.stuck else s.status,
                         s.attempts, s.run_id or "-", clip(detail))
        out.append(Row(step_key(s.job_id, s.step_id), sig, f"{sig.step} {sig.status} "
                                                           f"{sig.run} {sig.detail}"))
    return out


RowBuilder = Callable[[BatchScoreboard, "datetime | None"], list[Row]]
ROW_BUILDERS: dict[str, RowBuilder] = {"attention": _rows_attention, "running": _rows_running,
                "blocked": _rows_blocked, "failures": _rows_failures, "steps": _rows_steps}
TAB_COUNTS: dict[str, Callable[[BatchScoreboard], int]] = {
    "attention": lambda sb: len(sb.attention), "running": lambda sb: len(sb.running),
    "blocked": lambda sb: len(sb.blocked), "failures": lambda sb: len(sb.failures),
    "steps": lambda sb: sb.steps_total}


def _resume_of(d: dict[str, Any]) -> str:
    r = d.get("resume_from")
    if not r:
        return ""
    return f"⟲ {r['step_id']}:{r.get('selected_run_id') or '(' + r['selector'] + ')'}"


def _page_row(tab: str, d: dict[str, Any]) -> Row:
    """A paged list's row (phh_tui/paging.py: a step row as a dict, with the latest
    attempt's `failure_class`, `exit_code`, `report_status`, `report_summary`) as `tab`
    draws it; a settled batch's tabs are status-filtered lists of its steps."""
    step = f"{d['job_id']}.{d['step_id']}"
    status = "stuck" if d.get("stuck") else d["status"]
    run = d.get("run_id") or "-"
    reasons = "; ".join(d.get("reasons") or ())
    sig: tuple[Any, ...]
    if tab == "attention":
        sig = AttentionTabRow(step, status, run, "", clip(reasons or d.get("report_summary")))
    elif tab == "running":
        sig = RunningTabRow(step, status, run, "-", "-", "-", "", _resume_of(d))
    elif tab == "blocked":
        sig = BlockedTabRow(step, clip(reasons, 160), _resume_of(d))
    elif tab == "failures":
        code = d.get("exit_code")
        sig = FailureTabRow(step, run, status, "-" if code is None else str(code),
                            d.get("failure_class") or "", d.get("report_status") or "-",
                            clip(d.get("report_summary") or reasons))
    else:
        detail = reasons
        if d.get("resume_from"):
            detail = (detail + "  " if detail else "") + _resume_of(d)
        sig = StepTabRow(step, status, d.get("attempts", 0), run, clip(detail))
    return Row(step_key(d["job_id"], d["step_id"]), sig, "")


TAB_RENDER: dict[str, Callable[[str, Hashable], Sequence[Cell]]] = {
    "attention": typed(AttentionTabRow, AttentionTabRow.cells),
    "running": typed(RunningTabRow, RunningTabRow.cells),
    "blocked": typed(BlockedTabRow, BlockedTabRow.cells),
    "failures": typed(FailureTabRow, FailureTabRow.cells),
    "steps": typed(StepTabRow, StepTabRow.cells),
}


def batch_title(batch_id: str, closed: bool, submitted_at: datetime, jobs: int, steps: int,
                tail: str = "") -> Text:
    """The batch screen's first line: id, [closed], submitted time, sizes (+ `tail`)."""
    head = Text()
    head.append(batch_id, style="bold")
    if closed:
        head.append(" [closed]", style="dim italic")
    head.append(f"  submitted {timestamp(submitted_at)} · {jobs} jobs · {steps} steps{tail}",
                style="dim")
    return head


class BatchScreen(PhhScreen):
    """Header (goal, counts, tokens, progress with ETA) and the five lists."""

    BINDINGS = [
        Binding("c", "cancel_step", "Cancel"),
        Binding("r", "retry", "Retry"),
        Binding("R", "resume", "Resume"),
        Binding("m", "mark_failed", "Mark failed"),
        Binding("space", "mark", "Mark"),
        Binding("l", "logs", "Logs"),
        Binding("d", "diff", "Diff"),
        *[Binding(str(i + 1), f"tab('{t}')", TAB_TITLES[t], show=False)
          for i, t in enumerate(TABS)],
    ]

    def __init__(self, batch_id: str) -> None:
        super().__init__()
        self.batch_id = batch_id
        self.sb: BatchScoreboard | None = None
        self.prog: Progress | None = None
        #: the batch is not in memory (settled, docs/catalog.md): its system row; its lists
        #: page from the catalog
        self.settled: SystemRow | None = None
        #: what each paged list shows (phh_tui/paging.py); the filter text they were read with
        self.windows: dict[str, Window] = {}
        self.filter_text = ""
        self._list: ListPager | None = None

    def crumbs(self) -> list[str]:
        return [self.batch_id or ""]

    def body(self) -> ComposeResult:
        yield Static(id="batch-head")
        yield Static(id="progress")
        with Tabs(initial=self.initial_tab, id="tabs"):
            for tab in TABS:
                with TabPane(TAB_TITLES[tab], id=tab):
                    yield KeyedTable(TAB_COLUMNS[tab], TAB_RENDER[tab], markable=True,
                                     id=f"t-{tab}")

    @property
    def initial_tab(self) -> str:
        """Attention when anything needs it, else Running, else All steps."""
        board = self.phh.board
        sb = board.batches.get(self.batch_id or "") if board else None
        if sb is None or sb.attention:
            return "attention"
        return "running" if sb.running else "steps"

    def on_mount(self) -> None:
        # focus the initial tab's own table: focusing another pane's widget would switch tabs
        tab = self.query_one(TabbedContent).active or self.initial_tab
        self.query_one(f"#t-{tab}", KeyedTable).focus()

    def active_tab(self) -> str:
        return self.query_one(TabbedContent).active or "attention"

    def active_table(self) -> KeyedTable:
        return self.query_one(f"#t-{self.active_tab()}", KeyedTable)

    def table(self) -> KeyedTable | None:
        return self.active_table()

    def show(self, board: Board) -> None:
        assert self.batch_id is not None
        sb = board.batches.get(self.batch_id)
        settled = None if sb is not None or board.system is None else next(
            (r for r in board.system.batches if r.batch_id == self.batch_id), None)
        if sb is None and settled is None:
            self.query_one("#batch-head", Static).update(
                Text(f"batch {self.batch_id} is not in the runs store", style="bold red"))
            return
        if (sb is None) != (self.sb is None):
            self.windows.clear()  # in memory <-> settled: the lists change source
        self.sb, self.settled = sb, settled
        tabs = self.query_one(TabbedContent)
        if sb is not None:
            self.query_one("#batch-head", Static).update(self._head(sb))
            self.prog = board.progress.get(self.batch_id)
            if self.prog is not None:
                self.query_one("#progress", Static).update(progress_text(self.prog))
            counts = {tab: TAB_COUNTS[tab](sb) for tab in TABS}
        else:
            assert settled is not None
            self.query_one("#batch-head", Static).update(self._settled_head(settled))
            c = settled.counts.model_dump()
            self.prog = None
            done = sum(c[k] for k in ("succeeded", "failed", "needs_attention", "canceled"))
            self.query_one("#progress", Static).update(progress_text(Progress(
                done, settled.steps_total, True, None, None)))
            counts = {tab: sum(c[k] for k in TAB_STATUSES[tab]) if TAB_STATUSES[tab]
                      else settled.steps_total for tab in TABS}
        for tab in TABS:
            n = counts[tab]
            label = Text(f"{TAB_TITLES[tab]} {n}")
            if tab == "attention" and n:
                label.stylize("bold red", len(TAB_TITLES[tab]) + 1)
            tabs.get_tab(tab).label = label
        self._sync(self.active_tab())
        self.refresh_crumbs()

    # ------------------------------------------------------------ paged lists
    def pager(self, tab: str) -> Pager | None:
        """Where a paged list's rows come from; None: the tab shows the board's rows whole.
        All steps always pages (from the board while the batch is in memory); every list
        of a settled batch pages from the catalog."""
        if self.sb is not None:
            if tab != "steps":
                return None
            if self._list is None or self._list.sb is not self.sb:
                self._list = ListPager(self.sb)
            return self._list
        return self.phh.backend.pages if self.settled is not None else None

    def _sync(self, tab: str, now: datetime | None = None) -> None:
        table = self.query_one(f"#t-{tab}", KeyedTable)
        pager = self.pager(tab)
        if pager is None:
            if self.sb is not None:
                table.filter_text = self.filter_text
                table.sync(ROW_BUILDERS[tab](self.sb, now))
            return
        w = self.windows.get(tab)
        if w is None or w.text != self.filter_text:
            statuses = TAB_STATUSES[tab] if self.sb is None else ()
            w = pager.first(Window(self.batch_id or "", statuses, self.filter_text))
        else:
            w = pager.again(w)
        self._show_window(tab, w)

    def _show_window(self, tab: str, w: Window, cursor: str | None = None) -> None:
        self.windows[tab] = w
        table = self.query_one(f"#t-{tab}", KeyedTable)
        table.filter_text = ""  # filtered where the rows come from
        table.sync([_page_row(tab, d) for d in w.rows])
        if cursor is not None:
            table.select_key(cursor)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        """The cursor near a paged list's edge fetches the next (previous) page."""
        tid = event.data_table.id or ""
        tab = tid[2:] if tid.startswith("t-") else ""
        w = self.windows.get(tab)
        pager = self.pager(tab)
        key = event.row_key.value
        table = event.data_table
        if w is None or pager is None or key is None or event.cursor_row != table.cursor_row:
            return  # not a paged list, or a stale event (a sync moved the cursor since)
        if event.cursor_row >= table.row_count - MARGIN and w.more_after:
            self._show_window(tab, pager.after(w), key)
        elif event.cursor_row < MARGIN and w.more_before:
            self._show_window(tab, pager.before(w), key)

    def _jump(self, last: bool) -> bool:
        """g / G on a paged list: its first (last) rows; False: not a paged list."""
        tab = self.active_tab()
        w, pager = self.windows.get(tab), self.pager(tab)
        if w is None or pager is None:
            return False
        if last and w.more_after:
            self._show_window(tab, pager.last(w))
        elif not last and w.more_before:
            self._show_window(tab, pager.first(w))
        return True

    def action_top(self) -> None:
        self._jump(False)
        super().action_top()

    def action_bottom(self) -> None:
        self._jump(True)
        super().action_bottom()

    def on_input_changed(self, event: Input.Changed) -> None:
        """Filtering: a paged list is read again with the text (in SQL, or over the board's
        rows), the others filter the rows they hold."""
        if event.input.id != "filter":
            return
        event.prevent_default()  # not PhhScreen's: it would filter a window's rows again
        self.filter_text = event.value
        self._sync(self.active_tab())

    def tick(self, now: datetime) -> None:
        if self.sb is None:
            return
        tab = self.active_tab()
        if tab in ("attention", "running"):
            self._sync(tab, now)
        if self.prog is not None and not self.prog.finished:
            later = (now - self.sb.computed_at).total_seconds()
            self.query_one("#progress", Static).update(progress_text(self.prog, later=later))

    def _settled_head(self, row: SystemRow) -> Group:
        head = batch_title(row.batch_id, row.closed, row.submitted_at, row.jobs_total,
                           row.steps_total, " · settled: read from the catalog")
        return Group(head, Text(row.batch_goal_summary_preview, style="italic"),
                     counts_text(row.counts, row.steps_total))

    def _head(self, sb: BatchScoreboard) -> Group:
        head = batch_title(sb.batch_id, sb.closed, sb.submitted_at, sb.jobs_total,
                           sb.steps_total)
        u = sb.usage
        usage = Text("tokens: " + tokens(u.input_tokens, u.cached_input_tokens,
                                         u.output_tokens), style="dim")
        return Group(head, Text(goal_preview(sb.batch_goal_summary, 300), style="italic"),
                     counts_text(sb.counts, sb.steps_total), usage)

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        tab = event.pane.id or "attention"
        self._sync(tab)
        self.query_one(f"#t-{tab}", KeyedTable).focus()

    def action_tab(self, tab: str) -> None:
        self.query_one(TabbedContent).active = tab

    def action_targets(self) -> list[StepRef]:
        return [split_key(k) for k in self.active_table().targets()]

    def action_mark(self) -> None:
        self.active_table().toggle_mark()

    def after_action(self) -> None:
        for t in self.query(KeyedTable):
            t.clear_marks()

    def _open_step(self, tab: StepTab) -> None:
        key = self.active_table().current_key
        if key and self.batch_id:
            job, step = split_key(key)
            self.post_message(OpenStep(self.batch_id, job, step, tab=tab))

    def action_open(self) -> None:
        self._open_step("events")

    def action_logs(self) -> None:
        self._open_step("events")

    def action_diff(self) -> None:
        self._open_step("diff")


# ====================================================================== step
ATTEMPT_COLUMNS = (
    Column("n", "#"), Column("run", "run"), Column("status", "status"),
    Column("how", "how"), Column("started", "started"), Column("took", "took"),
    Column("exit", "exit"), Column("why", "why"), Column("tokens", "tokens"),
    Column("link", "link", 60),
)
STEP_TABS = ("events", "report", "state", "diff")


class AttemptTabRow(NamedTuple):
    """One attempt in the step screen's history."""

    n: str
    run: str
    status: str
    how: str
    started: str
    took: str
    exit: str
    why: str
    tokens: str
    link: str

    def cells(self) -> Sequence[Cell]:
        return (self.n, self.run, styled(self.status, self.status), self.how, self.started,
                self.took, self.exit, self.why, self.tokens, self.link)


def _attempt_link(a: AttemptView) -> str:
    m = a.meta
    if m is None:
        return ""
    if m.resume_from is not None and m.parent_run_id:
        return f"⟲ resume of {m.resume_from.step_id}:{m.parent_run_id}"
    if m.retry_of:
        return f"↻ retry of {m.retry_of}"
    return ""


class StepScreen(PhhScreen):
    """Attempt history (retries/resumes linked), the selected attempt's event tail, report,
    state/meta and git diff."""

    BINDINGS = [
        Binding("c", "cancel_step", "Cancel"),
        Binding("r", "retry", "Retry"),
        Binding("R", "resume", "Resume"),
        Binding("m", "mark_failed", "Mark failed"),
        Binding("l", "logs", "Logs"),
        Binding("s", "autoscroll", "Autoscroll"),
        Binding("d", "diff", "Diff"),
        # best-of-N only (check_action hides them elsewhere): phh_tui/candidates_panel.py
        Binding("space", "mark_candidate", "Mark"),
        Binding("p", "promote", "Promote"),
    ]

    def __init__(self, batch_id: str, job_id: str, step_id: str, *, tab: StepTab = "events",
                 run_id: str | None = None) -> None:
        super().__init__()
        self.batch_id = batch_id
        self.job_id = job_id
        self.step_id = step_id
        self.initial_tab = tab
        self.run_id = run_id  # the attempt shown below the history; None: the latest
        self._tail: AttemptTail | None = None
        self._tail_run: str | None = None
        self._tail_done = False
        self._tail_busy = False
        self._shown: tuple[str | None, int, int] = (None, 0, 0)
        self._diff_for: str | None = None
        self.autoscroll = True
        self.log_lines = 0
        self.diff_text = ""
        self._newest: str | None = None

    def crumbs(self) -> list[str]:
        return [self.batch_id or "", f"{self.job_id}.{self.step_id}"]

    def body(self) -> ComposeResult:
        yield Static(id="step-head")
        yield KeyedTable(ATTEMPT_COLUMNS, typed(AttemptTabRow, AttemptTabRow.cells),
                         id="attempts")
        yield CandidatesPanel(self.phh.backend.root, self.batch_id or "", self.job_id,
                              self.step_id, id="candidates")  # best-of-N steps only
        with Tabs(initial=self.initial_tab, id="step-tabs"):
            with TabPane("Events", id="events"):
                yield RichLog(id="log", max_lines=MAX_LOG_LINES, wrap=False, markup=False,
                              highlight=False, auto_scroll=True)
            with TabPane("Report", id="report"), VerticalScroll():
                yield Static(id="report-body")
            with TabPane("State", id="state"), VerticalScroll():
                yield Static(id="state-body")
            with TabPane("Diff", id="diff"), VerticalScroll(id="diff-scroll"):
                yield Static(id="diff-body")

    def on_mount(self) -> None:
        self.query_one("#attempts", KeyedTable).focus()
        self.set_interval(TAIL_POLL_SECONDS, self.poll_tail)

    def step_view(self) -> StepView | None:
        return self.phh.backend.step(self.batch_id or "", self.job_id, self.step_id)

    def attempt(self) -> AttemptView | None:
        step = self.step_view()
        if step is None or not step.attempts:
            return None
        if self.run_id:
            found = step.find(self.run_id)
            if found is not None:
                return found
        return step.latest

    # ------------------------------------------------------------ drawing
    def tick(self, now: datetime) -> None:
        board = self.phh.board
        a = self.attempt()
        if board is not None and a is not None and not a.terminal:
            self.show(board, now)

    def show(self, board: Board, now: datetime | None = None) -> None:
        step = self.step_view()
        sb = board.batches.get(self.batch_id or "")
        row = next((r for r in sb.steps if r.job_id == self.job_id
                    and r.step_id == self.step_id), None) if sb else (
            self.phh.backend.pages.step_row(self.batch_id or "", self.job_id, self.step_id))
        head = self.query_one("#step-head", Static)
        if step is None or row is None:
            head.update(Text(f"step {self.job_id}.{self.step_id} is not in batch "
                             f"{self.batch_id}", style="bold red"))
            return
        head.update(self._head(step, row))
        self._show_candidates(row)
        rows = []
        for i, a in enumerate(step.attempts, 1):
            st = a.state
            took = None
            if a.started_at is not None:
                took = ((a.ended_at or now or board.computed_at) - a.started_at
                        ).total_seconds()
            how = (a.meta.trigger if a.meta else "?") + (
                " · resume" if a.meta and a.meta.invocation == "resume" else "")
            u = st.usage if st else None
            sig = AttemptTabRow(
                str(a.meta.attempt_number if a.meta else i), a.run_id, a.status, how,
                a.started_at.strftime("%H:%M:%S") if a.started_at else "-", duration(took),
                "-" if not st or st.exit_code is None else str(st.exit_code),
                (st.failure_class or st.termination_reason or "") if st else "",
                f"{u.input_tokens:,}/{u.output_tokens:,}" if u and u.input_tokens else "-",
                _attempt_link(a))
            rows.append(Row(a.run_id, sig, " ".join(sig)))
        rows.reverse()  # newest first
        table = self.query_one("#attempts", KeyedTable)
        # following the newest attempt (run_id None, cursor on the newest row): keep following
        # it when a new one starts; a cursor moved elsewhere is the user's choice
        following = self.run_id is None and table.current_key in (None, self._newest)
        table.sync(rows)
        if rows and following and table.current_key != rows[0].key:
            table.select_key(rows[0].key)
        self._newest = rows[0].key if rows else None
        self._show_attempt(self.attempt())
        self.refresh_crumbs()

    def _head(self, step: StepView, row: StepRow) -> Group:
        status = "stuck" if row.stuck else row.status
        line = Text()
        line.append(f"{self.job_id}.{self.step_id}", style="bold")
        line.append("  ")
        line.append(status, style=STATUS_STYLES.get(status, ""))
        line.append(f"  · {len(step.attempts)} attempt{'s' if len(step.attempts) != 1 else ''}",
                    style="dim")
        parts: list[RenderableType] = [line]
        spec = step.spec
        facts = Text(style="dim")
        if spec.depends_on:
            facts.append("depends on: " + ", ".join(spec.depends_on) + "  ")
        if row.resume_from is not None:
            facts.append("resume from: " + resume_label(row.resume_from) + "  ")
        inp = cached = out = 0
        for a in step.attempts:
            if a.state is not None:
                inp += a.state.usage.input_tokens
                cached += a.state.usage.cached_input_tokens
                out += a.state.usage.output_tokens
        facts.append("tokens: " + tokens(inp, cached, out))
        parts.append(facts)
        if row.reasons:
            parts.append(Text("; ".join(row.reasons), style=STATUS_STYLES.get(status, "")))
        return Group(*parts)

    def _show_attempt(self, a: AttemptView | None) -> None:
        """Re-render the panes of the selected attempt when it changed."""
        key = (a.run_id if a else None, id(a.state) if a else 0, id(a.report) if a else 0)
        if key == self._shown:
            return
        self._shown = key
        report = self.query_one("#report-body", Static)
        state = self.query_one("#state-body", Static)
        if a is None:
            report.update(Text("no attempt yet", style="dim"))
            state.update(Text("no attempt yet", style="dim"))
            self._set_tail(None)
            self.query_one("#diff-body", Static).update(Text("no attempt yet", style="dim"))
            return
        state.update(self._state(a))
        self._load_report(a, key)
        if self._tail_run != a.run_id:
            self._set_tail(a)
        if self._diff_for != a.run_id or (a.terminal and self._diff_for == a.run_id + "?"):
            self._show_diff(a)

    def _rel(self, path: str | Path | None) -> str:
        if path is None:
            return "-"
        try:
            return str(Path(path).relative_to(self.phh.backend.root))
        except ValueError:
            return str(path)

    def _load_report(self, a: AttemptView, shown: tuple[str | None, int, int]) -> None:
        """The report pane; without a Run Report it shows final.txt, read off the UI
        thread (drawn if the same attempt is still shown by then)."""
        if a.report is not None:
            self.query_one("#report-body", Static).update(self._report(a, None))
            return
        self.run_worker(self._read_report(a, shown), group="attempt-files",
                        exit_on_error=False)

    async def _read_report(self, a: AttemptView, shown: tuple[str | None, int, int]) -> None:
        final_text = await asyncio.to_thread(read_final_text, a.path)
        if self._shown == shown:
            with contextlib.suppress(NoMatches):  # the screen went meanwhile
                self.query_one("#report-body", Static).update(self._report(a, final_text))

    def _report(self, a: AttemptView, final_text: str | None) -> RenderableType:
        """`final_text`: the start of final.txt (None: there is none), shown when the
        attempt has no valid Run Report."""
        parts: list[RenderableType] = []
        rep = a.report
        if rep is not None:
            t = Table.grid(padding=(0, 2))
            t.add_column(style="bold")
            t.add_column()
            t.add_row("status", styled(rep.status, {"ok": "succeeded"}.get(rep.status,
                                                                          rep.status)))
            t.add_row("summary", rep.summary)
            t.add_row("files read", ", ".join(rep.files_read) or "-")
            t.add_row("files written", ", ".join(rep.files_written) or "-")
            for art in rep.artifacts:
                t.add_row("artifact", f"{art.path} ({art.kind}): {art.description}")
            parts.append(Text("Run Report (final.json)", style="bold underline"))
            parts.append(t)
        if rep is None and final_text is not None:
            parts.append(Text("final.txt (not a valid Run Report)" if a.terminal else
                              "final.txt", style="bold underline"))
            parts.append(Text(final_text))
        if not parts:
            parts.append(Text("no Run Report yet" if not a.terminal else
                              "this attempt left no Run Report", style="dim"))
        if a.state and a.state.errors:
            parts.append(Text("\nerrors", style="bold red underline"))
            for e in a.state.errors:
                parts.append(Text("• " + e, style="red"))
        return Group(*parts)

    def _state(self, a: AttemptView) -> RenderableType:
        t = Table.grid(padding=(0, 2))
        t.add_column(style="bold", no_wrap=True)
        t.add_column()
        st, m = a.state, a.meta
        t.add_row("attempt dir", self._rel(a.path))
        if st is not None:
            t.add_row("status", styled(st.status, st.status))
            t.add_row("runner", st.runner_id)
            t.add_row("started", timestamp(st.started_at))
            t.add_row("ended", timestamp(st.ended_at))
            t.add_row("heartbeat", timestamp(st.last_heartbeat_at))
            t.add_row("doing", doing(st.current_item, 400) or "-")
            t.add_row("exit", "-" if st.exit_code is None else str(st.exit_code))
            t.add_row("reason", " · ".join(x for x in (st.termination_reason, st.failure_class)
                                           if x) or "-")
            t.add_row("thread", st.codex_thread_id or "-")
            u = st.usage
            t.add_row("tokens", tokens(u.input_tokens, u.cached_input_tokens, u.output_tokens)
                      + (f" · {u.reasoning_output_tokens:,} reasoning"
                         if u.reasoning_output_tokens else ""))
        if m is not None:
            t.add_row("", "")
            t.add_row("attempt #", str(m.attempt_number))
            t.add_row("trigger", m.trigger)
            t.add_row("invocation", m.invocation)
            if m.retry_of:
                t.add_row("retry of", m.retry_of)
            if m.resume_from is not None:
                t.add_row("resume from", f"{m.resume_from.step_id} ({m.resume_from.selector}) "
                          f"→ {m.resume_from.selected_run_id}")
                t.add_row("resume base", self._rel(m.resume_base_copied_from))
            env = m.environment_snapshot
            t.add_row("workspace", f"{self._rel(env.working_directory)} "
                      f"({env.workspace_policy})")
            t.add_row("codex", env.codex_cli_version or "-")
            ps = m.policy_snapshot
            t.add_row("sandbox", ps.execution_policy.sandbox)
            t.add_row("timeout", f"{ps.timeout_seconds:g}s")
            t.add_row("retries", f"max {ps.retry_policy.max_attempts} · "
                      f"{ps.retry_policy.mode}")
            t.add_row("command", " ".join(self._rel(c) if c.startswith("/") else c
                                          for c in m.command))
        return t

    def _show_diff(self, a: AttemptView) -> None:
        """Read the attempt's git diff off the UI thread, then draw it (if it is still the
        diff wanted: `_diff_for` names it; a live attempt's ends in "?")."""
        self._diff_for = a.run_id if a.terminal else a.run_id + "?"
        self.run_worker(self._read_diff(a, self._diff_for), group="attempt-files",
                        exit_on_error=False)

    async def _read_diff(self, a: AttemptView, wanted: str) -> None:
        diff = await asyncio.to_thread(read_diff, a.path)
        if self._diff_for != wanted:
            return
        with contextlib.suppress(NoMatches):  # the screen went meanwhile
            self._draw_diff(a, diff)

    def _draw_diff(self, a: AttemptView, diff: DiffText) -> None:
        body = self.query_one("#diff-body", Static)
        if diff.missing:
            body.update(Text("the git diff is captured when the attempt ends" if not a.terminal
                             else "no git diff (the workspace is not a git repository, or "
                             "capture_git_artifacts is off)", style="dim"))
            return
        if diff.error is not None:
            body.update(Text(f"cannot read {GIT_DIFF}: {diff.error}", style="red"))
            return
        lines = diff.lines
        if not lines:
            body.update(Text("no changes in the workspace", style="dim"))
            return
        self.diff_text = "\n".join(lines)
        note = ""
        if diff.more:
            note = f"\n… {diff.more} more lines in {self._rel(a.path / GIT_DIFF)}"
        body.update(Group(Syntax("\n".join(lines), "diff", theme="ansi_dark",
                                 word_wrap=False, background_color="default"),
                          Text(note, style="dim")))

    # ------------------------------------------------------------ event tail
    def _set_tail(self, a: AttemptView | None) -> None:
        log = self.query_one("#log", RichLog)
        log.clear()
        self.log_lines = 0
        self._tail_done = False
        self._tail_run = a.run_id if a else None
        self._tail = None
        if a is None:
            log.write(Text("no attempt yet", style="dim"))
            return
        # plain or GC-compressed alike; stdout.log when events were off (chosen on its thread)
        self._tail = AttemptTail(a.path)
        self.poll_tail()

    def poll_tail(self) -> None:
        """Read new events on a worker thread (a log can be megabytes, or compressed), then
        write them here on the UI thread; one read at a time."""
        if self._tail is None or self._tail_done or self._tail_busy:
            return
        a = self.attempt()
        final = a is not None and a.terminal and a.run_id == self._tail_run
        self._tail_busy = True
        self.run_worker(self._poll_tail(self._tail, a, final), group="tail",
                        exit_on_error=False)

    async def _poll_tail(self, tail: AttemptTail, a: AttemptView | None, final: bool) -> None:
        try:
            lines = await asyncio.to_thread(tail.read_new, final)
            if final and a is not None and a.status != "succeeded":
                stderr = await asyncio.to_thread(stderr_tail, a.path)
                if stderr:
                    lines += [Line("stderr (last lines):", "bold red"), *stderr]
        finally:
            self._tail_busy = False
        if tail is not self._tail:
            return  # another attempt is shown now
        if final:
            self._tail_done = True
        if lines:
            self._write(lines)

    def _write(self, lines: list[Line]) -> None:
        text = Text()
        for i, ln in enumerate(lines):
            if i:
                text.append("\n")
            text.append(ln.text, style=ln.style)
        log = self.query_one("#log", RichLog)
        log.write(text, scroll_end=self.autoscroll)
        self.log_lines += len(lines)

    # ------------------------------------------------------------ keys
    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id != "attempts" or event.row_key.value is None:
            return
        step = self.step_view()
        newest = step.latest.run_id if step and step.latest else None
        # following the newest attempt (None) keeps following it as new attempts start
        self.run_id = None if event.row_key.value == newest else event.row_key.value
        self._show_attempt(self.attempt())

    def action_open(self) -> None:
        """Follow the selected attempt's link: a resume opens its source step, a retry moves
        to the attempt it retried."""
        a = self.attempt()
        if a is None or a.meta is None:
            return
        m = a.meta
        if m.resume_from is not None and m.parent_run_id and self.batch_id:
            self.post_message(OpenStep(self.batch_id, self.job_id, m.resume_from.step_id,
                                       run_id=m.parent_run_id))
        elif m.retry_of:
            self.query_one("#attempts", KeyedTable).select_key(m.retry_of)

    def action_targets(self) -> list[StepRef]:
        return [StepRef(self.job_id, self.step_id)]

    def resume_run_id(self) -> str | None:
        a = self.attempt()
        return a.run_id if a is not None and self.run_id and a.terminal else None

    def action_logs(self) -> None:
        self.query_one("#step-tabs", TabbedContent).active = "events"

    def action_diff(self) -> None:
        if self.query_one(CandidatesPanel).diff_marked():  # two marked candidates
            return
        self.query_one("#step-tabs", TabbedContent).active = "diff"

    # ------------------------------------------------------------ best-of-N candidates
    def _show_candidates(self, row: StepRow) -> None:
        panel = self.query_one(CandidatesPanel)
        was = panel.has_class("best-of-n")
        panel.show_rows(row.candidates)
        if was != panel.has_class("best-of-n"):
            self.refresh_bindings()

    def action_mark_candidate(self) -> None:
        self.query_one(CandidatesPanel).table.toggle_mark()

    def action_promote(self) -> None:
        """`p`: promote the candidate under the cursor (after a confirmation)."""
        panel = self.query_one(CandidatesPanel)
        run_id = panel.current_run()
        row = panel.rows.get(run_id or "")
        if row is None or self.batch_id is None:
            self.notify("no candidate selected", severity="warning")
            return
        bid, target = self.batch_id, [StepRef(self.job_id, self.step_id)]

        def done(ok: bool | None) -> None:
            if ok:
                self.request("promote", bid, target, run_id=row.run_id)

        self.app.push_screen(ConfirmScreen(
            f"Promote candidate {row.candidate} ({row.run_id}) of {self.job_id}.{self.step_id}?",
            "Its work replaces the promoted candidate's in the job's workspace, and steps "
            "that resume from this step continue its thread. Refused once a dependent step "
            "has started."), done)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in ("mark_candidate", "promote"):
            with contextlib.suppress(NoMatches):
                return self.query_one(CandidatesPanel).has_class("best-of-n")
            return False
        return super().check_action(action, parameters)

    def action_autoscroll(self) -> None:
        self.autoscroll = not self.autoscroll
        log = self.query_one("#log", RichLog)
        log.auto_scroll = self.autoscroll
        if self.autoscroll:
            log.scroll_end(animate=False)
        tab = self.query_one("#step-tabs", TabbedContent).get_tab("events")
        tab.label = Text("Events" if self.autoscroll else "Events (paused)")
        self.notify(f"autoscroll {'on' if self.autoscroll else 'off'}", timeout=2)

    def table(self) -> KeyedTable | None:
        return self.query_one("#attempts", KeyedTable)

