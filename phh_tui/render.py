"""Rich renderables of the scoreboards, for `phh scoreboard` and the headless log.

Plain rich (no Textual) so the CLI stays fast to start and the output pipes cleanly. The
dashboard has its own widgets; the status colours live here so both look alike.
"""

from __future__ import annotations

from datetime import datetime

from rich import box
from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from phh_engine.derive.scoreboards import goal_preview
from phh_engine.models import STEP_STATUSES, BatchScoreboard, StatusCounts, SystemScoreboard
from phh_engine.models.scoreboard import ResumeView, StepRow, SystemNote

STATUS_STYLES: dict[str, str] = {
    "blocked": "yellow",
    "ready": "cyan",
    "running": "blue",
    "succeeded": "green",
    "failed": "red",
    "needs_attention": "magenta",
    "canceled": "bright_black",
    "stuck": "bold red",
    "queued": "cyan",
}


def duration(seconds: float | None) -> str:
    """Compact age: 42s, 12m03s, 3h07m, 2d04h."""
    if seconds is None:
        return "-"
    s = max(int(seconds), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def timestamp(value: datetime | None) -> str:
    return "-" if value is None else value.strftime("%Y-%m-%d %H:%M:%SZ")


def status_text(status: str) -> Text:
    return Text(status, style=STATUS_STYLES.get(status, ""))


def counts_text(counts: StatusCounts, total: int | None = None) -> Text:
    """`12/40 succeeded · 3 running · 1 failed`: zero counts are left out to stay short."""
    values = counts.model_dump()
    out = Text()
    if total is not None:
        out.append(f"{values['succeeded']}/{total} ", style="bold")
        out.append("succeeded", style=STATUS_STYLES["succeeded"])
    for status in STEP_STATUSES:
        n = values[status]
        if not n or (total is not None and status == "succeeded"):
            continue
        if out:
            out.append(" · ", style="dim")
        out.append(f"{n} ")
        out.append(status, style=STATUS_STYLES[status])
    return out


def _count(n: int, status: str) -> Text:
    return Text(str(n), style=STATUS_STYLES[status] if n else "dim")


def _resume(view: ResumeView | None) -> str:
    if view is None:
        return ""
    src = view.selected_run_id or f"({view.selector})"
    return f"⟲ {view.step_id}:{src}"


def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold", box=box.SIMPLE_HEAD,
                  show_edge=False, pad_edge=False)
    for col in columns:
        table.add_column(col, overflow="fold" if col in ("reasons", "detail", "summary")
                         else "ellipsis")
    return table


def render_system(sb: SystemScoreboard) -> RenderableType:
    """One row per batch, in the scoreboard's order (attention, running, newest)."""
    n = len(sb.batches)
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, expand=True,
                  title=f"phh · {n} batch{'es' if n != 1 else ''} · {timestamp(sb.computed_at)}",
                  title_justify="left", title_style="bold")
    id_width = max((len(r.batch_id) for r in sb.batches), default=5)
    table.add_column("batch", no_wrap=True, min_width=min(id_width, 40))
    table.add_column("submitted", no_wrap=True, min_width=11)
    done_width = max((len(f"{r.counts.succeeded}/{r.steps_total}") for r in sb.batches),
                     default=4)
    for name in ("done", "running", "attention", "blocked"):
        width = max(len(name), done_width) if name == "done" else len(name)
        table.add_column(name, justify="right", no_wrap=True, min_width=width)
    table.add_column("goal", ratio=1, overflow="ellipsis", no_wrap=True, min_width=12)
    for row in sb.batches:
        c = row.counts
        goal = Text()
        if row.closed:
            goal.append("[closed] ", style="dim italic")
        goal.append(row.batch_goal_summary_preview)
        table.add_row(
            Text(row.batch_id, style="dim" if row.closed else "bold"),
            row.submitted_at.strftime("%m-%d %H:%M"),
            Text(f"{c.succeeded}/{row.steps_total}",
                 style=STATUS_STYLES["succeeded"] if c.succeeded == row.steps_total else ""),
            _count(row.running_steps, "running"),
            Text(str(row.attention_steps), style="bold red" if row.attention_steps else "dim"),
            _count(c.blocked, "blocked"),
            goal,
        )
    notes = _notes(sb.notes)
    if not sb.batches:
        return Group(*notes, table, Text("no batches yet: `phh submit FILE`", style="dim"))
    return Group(*notes, table) if notes else table


def _notes(notes: list[SystemNote]) -> list[Text]:
    """System notes (start pauses, draining or blocked runners, lowered concurrency): one
    line each above the board, so `phh scoreboard` shows why nothing starts."""
    return [Text(f"! {n.message}", style="yellow") for n in notes]


def verify_text(passed: bool, exit_code: int | None, status: str) -> Text:
    """A candidate's verdict: `pass` / `fail (exit N)` when a verifier ran, else its status."""
    if exit_code is not None:
        return Text("pass" if passed else f"fail (exit {exit_code})",
                    style=STATUS_STYLES["succeeded" if passed else "failed"])
    return Text("pass" if passed else status, style=STATUS_STYLES.get(
        "succeeded" if passed else status, ""))


def candidates_table(rows: list[StepRow]) -> Table:
    """Best-of-N steps (docs/verification.md): each candidate, best first; ★ = promoted."""
    t = _table("Candidates", "step", "#", "run", "verify", "score", "tokens", "time", "")
    for row in rows:
        for c in row.candidates or []:
            t.add_row(f"{row.job_id}.{row.step_id}", str(c.candidate), c.run_id,
                      verify_text(c.passed, c.verify_exit_code, c.status),
                      "-" if c.score is None else f"{c.score:g}", f"{c.tokens:,}",
                      duration(c.duration_seconds),
                      Text("★ promoted", style="bold green") if c.promoted else "")
    return t


def render_batch(sb: BatchScoreboard) -> Group:
    """Header (goal, counts), then Attention / Running / Blocked / Failures; empty ones left out."""
    parts: list[RenderableType] = []
    head = Text()
    head.append(sb.batch_id, style="bold")
    if sb.closed:
        head.append(" [closed]", style="dim italic")
    head.append(f"  submitted {timestamp(sb.submitted_at)}", style="dim")
    head.append(f"  · {sb.jobs_total} jobs · {sb.steps_total} steps", style="dim")
    parts.append(head)
    parts.append(Text(goal_preview(sb.batch_goal_summary, 240), style="italic"))
    parts.append(counts_text(sb.counts, sb.steps_total))
    u = sb.usage
    if u.input_tokens or u.output_tokens:
        parts.append(Text(f"tokens: {u.input_tokens:,} in ({u.cached_input_tokens:,} cached)"
                          f" · {u.output_tokens:,} out", style="dim"))

    if sb.attention:
        t = _table("Attention", "kind", "step", "run", "silent", "detail")
        for a in sb.attention:
            t.add_row(status_text(a.kind), f"{a.job_id}.{a.step_id}", a.run_id or "-",
                      duration(a.seconds_since_last_heartbeat)
                      if a.seconds_since_last_heartbeat is not None else "",
                      a.detail or "")
        parts.append(t)
    if sb.running:
        t = _table("Running", "step", "run", "runner", "for", "heartbeat", "doing", "resume")
        for r in sb.running:
            beat = Text(duration(r.seconds_since_last_heartbeat),
                        style=STATUS_STYLES["stuck"] if r.stuck else "")
            step = Text(f"{r.job_id}.{r.step_id}")
            if r.stuck:
                step.append(" stuck", style=STATUS_STYLES["stuck"])
            elif r.state_status != "running":
                step.append(f" {r.state_status}", style=STATUS_STYLES.get(r.state_status, ""))
            t.add_row(step, r.run_id, r.runner_id or "-", duration(r.run_duration_seconds),
                      beat, r.current_item or "", _resume(r.resume_from))
        parts.append(t)
    best_of_n = [row for row in sb.steps if row.candidates]
    if best_of_n:
        parts.append(candidates_table(best_of_n))
    if sb.blocked:
        t = _table("Blocked", "step", "reasons", "resume")
        for b in sb.blocked:
            t.add_row(f"{b.job_id}.{b.step_id}", "; ".join(b.reasons), _resume(b.resume_from))
        parts.append(t)
    if sb.failures:
        t = _table("Failures", "step", "run", "state", "exit", "why", "agent", "summary")
        for f in sb.failures:
            why = f.failure_class or f.termination_reason or ""
            t.add_row(f"{f.job_id}.{f.step_id}", f.run_id, status_text(f.state_status),
                      "-" if f.exit_code is None else str(f.exit_code), why,
                      f.final_status or "-",
                      f.final_summary or ("; ".join(f.errors) if f.errors else ""))
        parts.append(t)
    return Group(*_notes(sb.notes), *parts)
